// wsgate resume client: a WebSocket-like object whose session survives a dropped connection.
// Speaks wsgate.resume.v1 (docs/resume.md). Served by wsgate at /.wsgate/resume.js.
//
//   const ws = new ResumableWebSocket("wss://host/vnc");   // instead of new WebSocket(url)
//   const rfb = new RFB(target, ws);                       // noVNC >= 1.3 takes it as is
//   term.loadAddon(new AttachAddon(ws));                   // so does xterm.js's attach addon
//
// While the connection is being resumed the object stays OPEN, keeps what is sent, and fires
// `resuming` then `resumed`; `close` fires only when the session really ended.
(function (root) {
  "use strict";

  var SUBPROTOCOL = "wsgate.resume.v1";
  var HELLO = 1, WELCOME = 2, DATA = 3, ACK = 4, PING = 5, PONG = 6, END = 7;
  // Close codes after which resuming cannot help (docs/resume.md, "Close codes").
  var FINAL = { 4400: 1, 4404: 1, 4409: 1, 4412: 1, 4416: 1, 4429: 1 };
  var ACK_EVERY = 32 * 1024;
  var ACK_DELAY_MS = 200;

  function newId() {
    var b = new Uint8Array(16);
    root.crypto.getRandomValues(b);
    var s = "";
    for (var i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return root.btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function numbered(type, n) {
    var m = new Uint8Array(9);
    m[0] = type;
    new DataView(m.buffer).setBigUint64(1, BigInt(n));
    return m;
  }

  function closeEvent(code, reason, wasClean) {
    if (typeof root.CloseEvent === "function") {
      return new root.CloseEvent("close", { code: code, reason: reason, wasClean: wasClean });
    }
    var e = new Event("close");
    e.code = code;
    e.reason = reason;
    e.wasClean = wasClean;
    return e;
  }

  function messageEvent(data) {
    if (typeof root.MessageEvent === "function") return new root.MessageEvent("message", { data: data });
    var e = new Event("message");
    e.data = data;
    return e;
  }

  /** A WebSocket-like object over a resumable wsgate session. `options.graceMs` caps how
   *  long resuming is tried (default: the gateway's grace period). */
  function ResumableWebSocket(url, protocols, options) {
    var target = new EventTarget();
    // EventTarget's methods, bound, as own properties: the immediate prototype stays ours.
    this.addEventListener = target.addEventListener.bind(target);
    this.removeEventListener = target.removeEventListener.bind(target);
    this.dispatchEvent = target.dispatchEvent.bind(target);
    this.url = url;
    this.binaryType = "blob";
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.onresuming = null;
    this.onresumed = null;
    this.readyState = 0;
    var asked = typeof protocols === "string" ? [protocols] : protocols || [];
    // The byte stream is what the `binary` subprotocol carries.
    this.protocol = asked.length ? asked[0] : "binary";
    this.extensions = "";
    this.resumes = 0;
    this._options = options || {};
    this._id = newId();
    this._token = null;
    this._received = 0; // gateway→client stream bytes received
    this._acked = 0; // client→gateway bytes the gateway acknowledged
    this._sent = 0; // client→gateway bytes handed to send()
    this._kept = []; // Uint8Array chunks from _acked on, for replay
    this._lastAck = 0;
    this._ackTimer = null;
    this._heartbeatMs = 5000;
    this._graceMs = 60000;
    this._heard = 0;
    this._beat = null;
    this._ws = null;
    this._live = false; // a WELCOME arrived on the current connection
    this._lostAt = 0;
    this._retry = null;
    this._ending = false;
    this._closeCode = 1000;
    this._closeReason = "";
    this._connect(false);
  }

  ResumableWebSocket.CONNECTING = 0;
  ResumableWebSocket.OPEN = 1;
  ResumableWebSocket.CLOSING = 2;
  ResumableWebSocket.CLOSED = 3;

  var proto = ResumableWebSocket.prototype;
  proto.CONNECTING = 0;
  proto.OPEN = 1;
  proto.CLOSING = 2;
  proto.CLOSED = 3;

  Object.defineProperty(proto, "bufferedAmount", {
    get: function () {
      return this._ws && this._live ? this._ws.bufferedAmount : this._sent - this._acked;
    },
  });

  proto._fire = function (type, event) {
    var handler = this["on" + type];
    if (typeof handler === "function") handler.call(this, event);
    this.dispatchEvent(event);
  };

  proto._connect = function (resume) {
    var self = this;
    var sep = this.url.indexOf("?") < 0 ? "?" : "&";
    var url = this.url + sep + "wsgate_session=" + this._id + (resume ? "&wsgate_resume=1" : "");
    var ws;
    try {
      ws = new root.WebSocket(url, [SUBPROTOCOL]);
    } catch (e) {
      return this._lost(1006);
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._live = false;
    ws.onopen = function () {
      if (ws !== self._ws) return;
      if (ws.protocol !== SUBPROTOCOL) {
        // The route does not resume: this is not the session we asked for.
        self._detach(ws);
        return self._finish(1002, "the gateway did not agree to wsgate.resume.v1", false);
      }
      var hello = new Uint8Array(resume ? 41 : 9);
      hello.set(numbered(HELLO, self._received));
      if (resume) hello.set(self._token, 9);
      ws.send(hello);
    };
    ws.onmessage = function (e) {
      if (ws === self._ws) self._onMessage(new Uint8Array(e.data));
    };
    ws.onclose = function (e) {
      if (ws === self._ws) self._onClose(e.code, e.reason);
    };
    ws.onerror = function () {};
  };

  proto._detach = function (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close();
    } catch (e) {}
    if (this._ws === ws) this._ws = null;
  };

  proto._onMessage = function (m) {
    this._heard = Date.now();
    var view = new DataView(m.buffer, m.byteOffset, m.byteLength);
    switch (m[0]) {
      case WELCOME:
        return this._onWelcome(view, m);
      case DATA:
        this._received += m.length - 1;
        this._scheduleAck();
        var payload = m.slice(1);
        if (this.readyState === 1 || this.readyState === 2) {
          var data = this.binaryType === "blob" ? new Blob([payload]) : payload.buffer;
          this._fire("message", messageEvent(data));
        }
        return;
      case ACK:
        return this._release(Number(view.getBigUint64(1)));
      case PING:
        m[0] = PONG;
        return this._ws && this._ws.send(m);
      case PONG:
        return;
      case END:
        this._ending = true;
        return;
      default:
        this._detach(this._ws);
        return this._finish(4400, "unknown message type", false);
    }
  };

  proto._onWelcome = function (view, m) {
    var received = Number(view.getBigUint64(1));
    this._heartbeatMs = view.getUint32(9) || 5000;
    this._graceMs = view.getUint32(13);
    this._token = m.slice(17, 49);
    if (received < this._acked || received > this._sent) {
      this._detach(this._ws);
      return this._finish(4400, "WELCOME offset outside the kept bytes", false);
    }
    this._release(received);
    this._live = true;
    this._lostAt = 0;
    this._heard = Date.now();
    this._startHeartbeat();
    // What the gateway does not have yet: everything kept, in order.
    for (var i = 0; i < this._kept.length; i++) this._sendData(this._kept[i]);
    if (this.readyState === 0) {
      this.readyState = 1;
      this._fire("open", new Event("open"));
    } else {
      this.resumes++;
      this._fire("resumed", new Event("resumed"));
    }
  };

  proto._release = function (offset) {
    while (this._acked < offset && this._kept.length) {
      var first = this._kept[0];
      var n = offset - this._acked;
      if (first.length <= n) {
        this._kept.shift();
        this._acked += first.length;
      } else {
        this._kept[0] = first.subarray(n);
        this._acked += n;
      }
    }
  };

  proto._sendData = function (bytes) {
    var m = new Uint8Array(bytes.length + 1);
    m[0] = DATA;
    m.set(bytes, 1);
    this._ws.send(m);
  };

  proto._scheduleAck = function () {
    var self = this;
    if (this._received - this._lastAck >= ACK_EVERY) return this._sendAck();
    if (!this._ackTimer) {
      this._ackTimer = setTimeout(function () {
        self._ackTimer = null;
        self._sendAck();
      }, ACK_DELAY_MS);
    }
  };

  proto._sendAck = function () {
    if (!this._ws || !this._live || this._lastAck === this._received) return;
    this._lastAck = this._received;
    this._ws.send(numbered(ACK, this._received));
  };

  proto._startHeartbeat = function () {
    var self = this;
    clearInterval(this._beat);
    var n = 0;
    this._beat = setInterval(function () {
      if (!self._ws || !self._live) return;
      if (Date.now() - self._heard > 3 * self._heartbeatMs) {
        // Silent for three heartbeats: treat it as dropped and resume.
        self._detach(self._ws);
        return self._lost(1006);
      }
      self._ws.send(numbered(PING, ++n));
    }, this._heartbeatMs);
  };

  proto._onClose = function (code, reason) {
    var ws = this._ws;
    if (ws) this._detach(ws);
    if (this._ending || this.readyState === 2) return this._finish(code, reason, true);
    if (FINAL[code]) {
      this._fire("error", new Event("error"));
      return this._finish(code, reason, false);
    }
    this._lost(code);
  };

  /** The connection dropped without END: resume while the grace period lasts. */
  proto._lost = function (code) {
    var self = this;
    this._live = false;
    clearInterval(this._beat);
    if (this.readyState === 0 && !this._token) {
      // The first connection never opened: nothing to resume.
      this._fire("error", new Event("error"));
      return this._finish(code, "", false);
    }
    if (!this._lostAt) {
      this._lostAt = Date.now();
      this._delay = 100;
      this._fire("resuming", new Event("resuming"));
    }
    var patience = Math.min(this._options.graceMs || this._graceMs, this._graceMs);
    if (Date.now() - this._lostAt > patience) {
      this._fire("error", new Event("error"));
      return this._finish(1006, "resuming failed", false);
    }
    clearTimeout(this._retry);
    this._retry = setTimeout(function () {
      self._connect(true);
    }, this._delay);
    this._delay = Math.min(this._delay * 2, 2000);
  };

  proto._finish = function (code, reason, clean) {
    if (this.readyState === 3) return;
    clearInterval(this._beat);
    clearTimeout(this._retry);
    clearTimeout(this._ackTimer);
    this.readyState = 3;
    this._fire("close", closeEvent(code, reason || "", clean));
  };

  /** Send bytes (ArrayBuffer, a typed array or DataView) or a string (as UTF-8). The bytes
   *  are copied: the caller may reuse its buffer. */
  proto.send = function (data) {
    if (this.readyState === 0) {
      throw new DOMException("still connecting", "InvalidStateError");
    }
    if (this.readyState !== 1) return;
    var bytes;
    if (typeof data === "string") bytes = new TextEncoder().encode(data);
    else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data.slice(0));
    else if (ArrayBuffer.isView(data))
      bytes = new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
    else throw new TypeError("send() takes an ArrayBuffer, a typed array or a string");
    if (!bytes.length) return;
    this._kept.push(bytes);
    this._sent += bytes.length;
    if (this._ws && this._live) this._sendData(bytes);
  };

  /** End the session: the gateway closes the backend connection. */
  proto.close = function (code, reason) {
    if (this.readyState >= 2) return;
    this.readyState = 2;
    this._closeCode = code || 1000;
    this._closeReason = reason || "";
    if (this._ws && this._live) {
      this._ws.send(new Uint8Array([END]));
    } else {
      if (this._ws) this._detach(this._ws);
      this._finish(this._closeCode, this._closeReason, false);
    }
  };

  root.ResumableWebSocket = ResumableWebSocket;
  if (typeof module === "object" && module.exports) module.exports = ResumableWebSocket;
})(typeof globalThis !== "undefined" ? globalThis : this);
