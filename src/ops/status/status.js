// wsgate status page: polls /api/status once a second and draws it, chart included; a
// session's "watch" button shows its live output (read-only, in xterm.js) below the list.
// A separate file so the page's Content-Security-Policy needs no inline script.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 1000;

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function duration(secs) {
    secs = Math.floor(secs);
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60, s = secs % 60;
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
  }

  // Replace a table body's rows; cells are text only (never HTML from the API).
  function rows(tbody, list, cells) {
    tbody.replaceChildren(...list.map((item) => {
      const tr = document.createElement('tr');
      for (const c of cells(item)) {
        const td = document.createElement('td');
        if (c && typeof c === 'object' && c.button) {
          const b = document.createElement('button');
          b.type = 'button';
          b.textContent = c.button;
          b.className = c.className || '';
          b.addEventListener('click', c.onClick);
          td.append(b);
        } else if (c && typeof c === 'object') {
          td.textContent = c.text;
          if (c.className) td.className = c.className;
        } else {
          td.textContent = c === null || c === undefined ? '' : String(c);
        }
        tr.append(td);
      }
      if (item.id !== undefined) tr.dataset.sessionId = String(item.id);
      return tr;
    }));
  }

  function drawChart(history) {
    const canvas = $('chart');
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * ratio;
    canvas.height = h * ratio;
    const g = canvas.getContext('2d');
    g.scale(ratio, ratio);
    g.clearRect(0, 0, w, h);
    const style = getComputedStyle(document.documentElement);
    g.strokeStyle = '#eef0f3';
    g.lineWidth = 1;
    for (let i = 1; i < 4; i++) {
      g.beginPath(); g.moveTo(0, (h * i) / 4); g.lineTo(w, (h * i) / 4); g.stroke();
    }
    if (history.length < 2) return;
    const span = Math.max(1, history[history.length - 1].t - history[0].t);
    const x = (p) => ((p.t - history[0].t) / span) * (w - 2) + 1;
    const series = [
      { key: 'sessions', color: style.getPropertyValue('--sessions').trim() || '#1f6feb' },
      { key: 'bytes_per_sec', color: style.getPropertyValue('--rate').trim() || '#bf8700' },
    ];
    g.font = '11px system-ui, sans-serif';
    series.forEach((s, i) => {
      const max = Math.max(1, ...history.map((p) => p[s.key]));
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      history.forEach((p, j) => {
        const y = h - 4 - (p[s.key] / max) * (h - 16);
        if (j === 0) g.moveTo(x(p), y); else g.lineTo(x(p), y);
      });
      g.stroke();
      g.fillStyle = s.color;
      const label = s.key === 'sessions' ? `max ${max}` : `max ${bytes(max)}/s`;
      g.fillText(label, 4 + i * 120, 11);
    });
  }

  // What handshakes found: wsgate does not probe backends, so "unknown" until a client tries.
  function backendCell(b) {
    if (b.state === 'unknown') return { text: 'no dial yet', className: 'muted' };
    if (b.state === 'ok') return { text: `ok (${duration(b.last_ok_secs_ago)} ago)`, className: 'ok' };
    return {
      text: `failing: ${b.last_error} ×${b.consecutive_failures} (${duration(b.last_error_secs_ago)} ago)`,
      className: 'draining',
    };
  }

  function render(s) {
    $('version').textContent = `v${s.version}`;
    $('uptime').textContent = `up ${duration(s.uptime_secs)}`;
    $('sessions').textContent = String(s.sessions);
    $('rate-up').textContent = `${bytes(s.bytes_per_sec.to_backend)}/s`;
    $('rate-down').textContent = `${bytes(s.bytes_per_sec.to_client)}/s`;
    $('bytes-total').textContent = bytes(s.bytes.to_backend + s.bytes.to_client);
    rows($('routes'), s.routes, (r) => [
      r.name, r.path, r.sessions,
      r.draining ? { text: 'draining', className: 'draining' } : 'open',
      backendCell(r.backend),
    ]);
    rows($('session-rows'), s.session_list, (x) => [
      x.id, x.route, x.client, x.backend, x.subprotocol,
      bytes(x.bytes_to_backend), bytes(x.bytes_to_client), duration(x.age_secs),
      x.watchable
        ? { button: 'watch', className: 'watch', onClick: () => watch(x) }
        : { text: '', className: 'muted' },
    ]);
    $('sessions-note').textContent = s.session_list.length < s.sessions
      ? `(first ${s.session_list.length} of ${s.sessions}; all in /api/sessions)` : '';
    rows($('close-codes'), Object.entries(s.closes_by_code), ([code, n]) => [code, n]);
    rows($('recent-closes'), s.recent_closes, (c) => [
      new Date(c.at_unix_ms).toLocaleTimeString(), c.id, c.route, c.code,
    ]);
    drawChart(s.history);
  }

  // Live watch: a read-only WebSocket to /api/sessions/{id}/watch drawn by xterm.js (vendored,
  // /assets/vendor/xterm.js), which interprets the escape sequences and decodes the UTF-8
  // itself. The terminal takes no input: nothing is ever sent on the socket.
  const WATCH_COLS = 100, WATCH_ROWS = 30, WATCH_SCROLLBACK = 5000;
  let watching = null;

  function stopWatch(note) {
    if (watching) {
      if (watching.socket) {
        watching.socket.onclose = null;
        watching.socket.close(1000);
      }
      watching.term.dispose();
      watching = null;
      window.wsgateWatchTerminal = null;
    }
    if (note) $('watch-state').textContent = note;
  }

  function watch(session) {
    stopWatch();
    const panel = $('watch-panel');
    const screen = $('watch-terminal');
    panel.hidden = false;
    $('watch-title').textContent = `session ${session.id} (${session.route}, ${session.client})`;
    screen.replaceChildren();
    if (typeof Terminal !== 'function') {
      $('watch-state').textContent = 'cannot watch: /assets/vendor/xterm.js did not load';
      return;
    }
    const term = new Terminal({
      cols: WATCH_COLS, rows: WATCH_ROWS, scrollback: WATCH_SCROLLBACK,
      disableStdin: true, cursorBlink: false, convertEol: false,
    });
    term.open(screen);
    // For tests and the curious: the open watch's xterm.js Terminal (its buffer, its options).
    window.wsgateWatchTerminal = term;
    $('watch-state').textContent = 'connecting…';
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}/api/sessions/${session.id}/watch`);
    socket.binaryType = 'arraybuffer';
    watching = { socket, term, id: session.id };
    socket.onopen = () => { $('watch-state').textContent = 'watching (read-only)'; };
    socket.onmessage = (ev) => {
      term.write(typeof ev.data === 'string' ? ev.data : new Uint8Array(ev.data));
    };
    socket.onclose = (ev) => {
      // The terminal keeps what it showed until the panel is closed or another watch opens.
      if (watching && watching.term === term) watching.socket = null;
      $('watch-state').textContent = `ended: ${ev.code}${ev.reason ? ` ${ev.reason}` : ''}`;
    };
  }

  $('watch-close').addEventListener('click', () => {
    stopWatch('closed');
    $('watch-panel').hidden = true;
  });

  async function poll() {
    try {
      const res = await fetch('/api/status', { cache: 'no-store', credentials: 'same-origin' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      render(await res.json());
      $('poll').dataset.ok = 'true';
      $('poll').textContent = 'live';
    } catch (e) {
      $('poll').dataset.ok = 'false';
      $('poll').textContent = `not updating: ${e.message}`;
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
