//! wsgate: a WebSocket-to-TCP reverse proxy gateway.
//!
//! # Layout
//! One folder per stage of the pipeline; dependencies point down this list only (checked by
//! `tests/layout.rs`, which also prints the graph: `cargo test --test layout -- --nocapture`).
//! ```text
//! main.rs      the binary: logging, config, runtime → gateway, until a signal; its command
//!              line is cli/ (args.rs: clap; commands.rs: check, config, replay, reload, man)
//! gateway.rs   build the snapshot, bind, serve edge and ops (edge on the per-core workers
//!              when `[runtime] mode = "per-core"`), apply reloads (swap the snapshot,
//!              bind/close listeners on every worker), drain on shutdown; gateway/start.rs:
//!              the start-up steps, gateway/reconfigure.rs: a reload applied
//! edge/        listener.rs: accept with permits, per-connection span, PROXY header, TLS, hyper
//!              proxy_protocol.rs: PROXY v1/v2 from trusted load balancers only
//!              h2.rs: HTTP/2 connections (ALPN h2, h2c) on the h2 crate, extended
//!              CONNECT enabled, GOAWAY when unused (first request, idle timeout); a
//!              CONNECT's stream handed to the session after its 200
//!              graceful.rs: an HTTP/1.1 connection's graceful end at shutdown
//!              http.rs: one request as named stages: route (400/404) → forwarded client →
//!              upgrade checks (400/426) → check_open (503) → authorize (429/403/401/404)
//!              → admit (429/503) → dial (403/502/504) → accept (101, h2: 200), which hands
//!              over to session::start — the one session item edge imports;
//!              http/dial.rs: the dial and the backend's handshake (forwarded headers);
//!              http/handover.rs: the 101 and the task that starts or joins the session;
//!              http/matched.rs: what the stages after routing know about the request
//!              upgrade.rs: what makes a request an upgrade, the 101/200, the client stream
//!              extended_connect.rs: the RFC 8441 checks (426/501) and the 200
//!              console.rs: the browser console (plain GETs on listeners that serve it)
//!              web.rs: static files (`[web] root`)
//!              workers.rs: the per-core mode's threads, one single-threaded runtime each,
//!              each accepting on its own SO_REUSEPORT socket of every listener
//! ops/         admin.rs: /metrics, /healthz, /readyz, POST /reload; api.rs: status page and
//!              session API (list, close, drain, config; api/sessions.rs, api/status.rs);
//!              config_view.rs: the config as
//!              GET /api/config shows it (its own types, secrets redacted by their type);
//!              watch.rs: a session's read-only watch WebSocket (/api/sessions/{id}/watch);
//!              shutdown.rs: signals → one token;
//!              reload.rs: SIGHUP, file watch, POST /reload → one reload at a time;
//!              acme.rs: [acme] certificates ordered (TLS-ALPN-01), stored and renewed
//! snapshot/    the immutable value the running gateway reads: routes with compiled policy
//!              and their SessionSettings (compiled once, read by the pumps as they are),
//!              router (path rules, host and path → route, 421 for a host the connection's
//!              SNI would not have led to, subprotocol choice), listener TLS and
//!              trust, admission, dialer, pools; held in an ArcSwap: connections and requests
//!              take the current one
//! session/     after the 101: start.rs, the front door (a client side joined to a backend
//!              side, the pump chosen by the backend's kind, access log, close metrics);
//!              settings (SessionSettings), keepalive, pacer, io (client streams → frame
//!              halves), h2_stream (an HTTP/2 stream as a client side, within h2's flow
//!              control), bridge (WS ↔ bytes), relay (WS ↔ WS), udp (WS ↔ datagrams,
//!              one message per datagram, drops instead of queues; udp/readers.rs,
//!              udp/writer.rs), resume (core.rs, core/session.rs: the loop), registry (live
//!              sessions and each one's close request; sessions only)
//! backend/     dial TCP / unix / WebSocket (ws, wss) backends under a timeout, socket
//!              options, PROXY v2 to backends, the subprotocol a backend answers; pool.rs:
//!              pools, ejection, active checks; health.rs: each route's backend health as
//!              handshakes see it, and route drains; udp.rs: a connected UDP socket per
//!              session under `[udp] max_sessions`; the built-in echo
//! policy/      access (origin, bearer, JWT, client certificates), jwks (key sets from
//!              OpenID providers: discovery, refresh, rotation; jwks/documents.rs),
//!              provider_client (HTTP exchanges with a provider), sealed and signin (browser
//!              sign-in: cookies, the authorization code flow in signin/flow.rs), identity (ConnInfo,
//!              targets (token files, JWT claims, egress), admission (session caps, connections
//!              per address, handshake rate), auth_failures (budget of failed credentials per
//!              address), descriptors (RLIMIT_NOFILE budget, accept back-off on EMFILE)
//! tls.rs       PEM → rustls server configs (certificates by SNI, ACME's, mTLS) and backend
//!              client configs
//! config/      the file format only: serde structs (file.rs, file/listener.rs,
//!              file/limits.rs, file/route.rs, …), defaults, validation once at load
//!              (validate/, validate/route.rs), secrets as Secret<T> (secret.rs), quick
//!              mode, the embedded default (default.toml); imports nothing of ours
//! error.rs     the boundary error: status and label before the upgrade, close codes after
//! http_util.rs the gateway's own answers (Body, text, JSON), query values, header tokens,
//!              URIs made safe for logs
//! logsafe.rs   client-controlled text escaped for log lines
//! record/      session recording: asciicast and raw formats, the bounded writer (files as
//!              .part, 0600, metadata, caps, retention sweep), replay (print, TCP, WebSocket);
//!              watch.rs: a session's output fanned out to live watchers (bounded queues,
//!              the terminal backlog, slow watchers dropped)
//! metrics.rs   metric names, the recorder, one-off events; metrics/registration.rs:
//!              descriptions, series at zero; metrics/handles.rs: per-route and
//!              per-session handles
//! ws/          the WebSocket protocol, a leaf that knows no route, backend or session:
//!              reader (RFC 6455 §5 per frame), writer (frames out, RSV1), frames (message
//!              rules, guarded writes), utf8, extensions (permessage-deflate negotiation),
//!              deflate (its codec); close codes
//! ```
//!
//! # Data flow
//! accept → PROXY header (trusted balancers; else closed) → TLS (certificate by SNI; client
//! certificate verified when the listener asks) → HTTP (431, header timeout) → path rules
//! (400) → host against SNI (421) → route by host and path (404) → client from forwarded
//! headers (trusted balancers) → upgrade checks (400/426) → origin (403) → credentials (401
//! missing/invalid, 403 not allowed; a spent failure budget 429) → target (token file: 404
//! unknown token; claim: 403) → limits (429/503) → egress check after DNS (403) → dial
//! backend, the next pool member on failure (502/504) → `101` → bridge, relay or udp →
//! close (1000 normal, 1001 shutdown/keepalive, 1002 protocol, 1003 text on a udp:// route,
//! 1007 bad UTF-8, 1009 too big, 1011 backend error, 1014 bad gateway), with metrics
//! alongside every stage.

pub mod backend;
pub mod config;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod http_util;
pub mod logsafe;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod record;
pub mod session;
pub mod snapshot;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use gateway::Gateway;
pub use snapshot::Snapshot;
