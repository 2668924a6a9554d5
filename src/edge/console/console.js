// wsgate console: pick a route, open a WebSocket, send text or hex, log what comes back.
// Served as a separate file so the page's Content-Security-Policy needs no inline script.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $('state'), route: $('route'), url: $('url'), protocols: $('protocols'),
    token: $('token'), tokenMode: $('token-mode'), tokenParam: $('token-param'),
    tokenParamLabel: $('token-param-label'), connect: $('connect'), disconnect: $('disconnect'),
    closeCode: $('close-code'), message: $('message'), send: $('send'), clear: $('clear'),
    log: $('log'),
  };
  const MAX_LOG_LINES = 500;
  const PREVIEW_BYTES = 256;
  let ws = null;
  // Send times not yet matched by a reply: an echo-like backend answers in order.
  let pending = [];

  const wsBase = () => (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host;

  function setState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
    const open = state === 'open';
    ui.connect.disabled = open || state === 'connecting';
    ui.disconnect.disabled = !(open || state === 'connecting');
    ui.send.disabled = !open;
  }

  function stamp() {
    const d = new Date();
    const pad = (n, w) => String(n).padStart(w, '0');
    return `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(d.getMilliseconds(), 3)}`;
  }

  function log(kind, text, rttMs) {
    const li = document.createElement('li');
    li.className = kind;
    const t = document.createElement('span');
    t.className = 'time';
    t.textContent = stamp();
    li.append(t, document.createTextNode(text));
    if (rttMs !== undefined) {
      const r = document.createElement('span');
      r.className = 'rtt';
      r.textContent = `rtt ${rttMs.toFixed(1)} ms`;
      li.append(r);
    }
    ui.log.append(li);
    while (ui.log.childElementCount > MAX_LOG_LINES) ui.log.firstElementChild.remove();
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');

  function describeBytes(bytes) {
    const shown = bytes.subarray(0, PREVIEW_BYTES);
    const more = bytes.length > shown.length ? ' …' : '';
    const text = new TextDecoder('utf-8', { fatal: false }).decode(shown);
    // Printable text is shown as text too: most TCP apps speak lines.
    const printable = /^[\x20-\x7e\t\r\n\u00a0-\uffff]*$/.test(text) && !text.includes('\ufffd');
    return `${hex(shown)}${more}` + (printable ? `  "${text.replace(/\r?\n$/, '')}"${more}` : '');
  }

  function parseHex(s) {
    const digits = s.replace(/0x/gi, '').replace(/[\s,:]/g, '');
    if (digits.length % 2 !== 0 || /[^0-9a-f]/i.test(digits)) return null;
    const out = new Uint8Array(digits.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.substr(i * 2, 2), 16);
    return out;
  }

  function targetUrl() {
    let url = ui.url.value.trim();
    const token = ui.token.value;
    if (token && ui.tokenMode.value === 'query') {
      const u = new URL(url, location.href);
      u.searchParams.set(ui.tokenParam.value.trim() || 'access_token', token);
      url = u.toString();
    }
    return url;
  }

  function protocols() {
    const list = ui.protocols.value.split(',').map((p) => p.trim()).filter(Boolean);
    if (ui.token.value && ui.tokenMode.value === 'subprotocol') {
      // The gateway never selects a bearer.* entry, and Chromium fails a handshake whose
      // offer gets no subprotocol back: offer the routes' default one as well.
      if (!list.length) {
        list.push('binary');
        log('info', 'also offering subprotocol "binary": bearer.<token> is never selected');
      }
      list.push('bearer.' + ui.token.value);
    }
    return list;
  }

  function connect() {
    if (ws) return;
    let socket;
    try {
      socket = new WebSocket(targetUrl(), protocols());
    } catch (e) {
      log('err', `cannot connect: ${e.message}`);
      return;
    }
    ws = socket;
    pending = [];
    socket.binaryType = 'arraybuffer';
    const opened = performance.now();
    setState('connecting', 'connecting');
    log('info', `connecting to ${ui.url.value.trim()}`);
    socket.onopen = () => {
      const proto = socket.protocol && !socket.protocol.startsWith('bearer.') ? `, subprotocol ${socket.protocol}` : '';
      setState('open', 'open');
      log('info', `open${proto}`, performance.now() - opened);
    };
    socket.onmessage = (e) => {
      const rtt = pending.length ? performance.now() - pending.shift() : undefined;
      if (typeof e.data === 'string') {
        log('in', `← text ${new TextEncoder().encode(e.data).length} B  ${e.data}`, rtt);
      } else {
        const bytes = new Uint8Array(e.data);
        log('in', `← binary ${bytes.length} B  ${describeBytes(bytes)}`, rtt);
      }
    };
    socket.onerror = () => log('err', 'error (the browser gives no detail; see the close code)');
    socket.onclose = (e) => {
      ui.state.dataset.closeCode = String(e.code);
      ui.state.dataset.closeReason = e.reason;
      const reason = e.reason ? ` "${e.reason}"` : '';
      setState('closed', `closed ${e.code}${reason}`);
      log('close', `closed: code ${e.code}${reason}${e.wasClean ? '' : ' (not clean)'}`);
      if (ws === socket) ws = null;
    };
  }

  function disconnect() {
    if (!ws) return;
    const code = Number(ui.closeCode.value) || 1000;
    try {
      ws.close(code, 'closed from the console');
      log('info', `closing with ${code}`);
    } catch (e) {
      log('err', `cannot close with ${code}: ${e.message}`);
    }
  }

  function send() {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const format = document.querySelector('input[name=format]:checked').value;
    if (format === 'hex') {
      const bytes = parseHex(ui.message.value);
      if (!bytes) {
        log('err', 'not hex: use pairs of hex digits, spaces allowed');
        return;
      }
      ws.send(bytes);
      log('out', `→ binary ${bytes.length} B  ${describeBytes(bytes)}`);
    } else {
      ws.send(ui.message.value);
      log('out', `→ text ${new TextEncoder().encode(ui.message.value).length} B  ${ui.message.value}`);
    }
    pending.push(performance.now());
  }

  function chooseRoute() {
    if (ui.route.value !== '') ui.url.value = wsBase() + ui.route.value;
  }

  async function loadRoutes() {
    ui.url.value = wsBase() + '/';
    try {
      const res = await fetch('/_wsgate/routes.json', { cache: 'no-store' });
      const routes = await res.json();
      ui.route.textContent = '';
      for (const r of routes) {
        const o = document.createElement('option');
        o.value = r.path;
        o.textContent = r.prefix ? `${r.path} (prefix)` : r.path;
        ui.route.append(o);
      }
      if (!routes.length) {
        const o = document.createElement('option');
        o.value = '';
        o.textContent = '(no routes)';
        ui.route.append(o);
      }
      chooseRoute();
    } catch (e) {
      log('err', `cannot load the route list: ${e.message}`);
    }
  }

  function showTokenParam() {
    ui.tokenParamLabel.hidden = ui.tokenMode.value !== 'query';
  }

  ui.route.addEventListener('change', chooseRoute);
  ui.connect.addEventListener('click', connect);
  ui.disconnect.addEventListener('click', disconnect);
  ui.send.addEventListener('click', send);
  ui.clear.addEventListener('click', () => ui.log.replaceChildren());
  ui.tokenMode.addEventListener('change', showTokenParam);
  ui.message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) send();
  });
  showTokenParam();
  setState('idle', 'not connected');
  loadRoutes();
})();
