//! wsgate: a WebSocket-to-TCP reverse proxy gateway.
//!
//! # Layout
//! ```text
//! main.rs      CLI, tracing, load config, run until SIGINT/SIGTERM
//! config.rs    serde/toml, defaults, validate -> resolved Config (default.toml embedded)
//! server.rs    bind, accept loop with permits, per-connection span, TLS + hyper, drain
//! tls.rs       PEM -> rustls ServerConfig, client-certificate verifier (mTLS)
//! http.rs      one request: route (404), upgrade checks (400/426), access, limits (429/503),
//!              dial (502/504), 101, spawn session
//! access.rs    [route.origin], [route.auth]: Origin allowlist, client certificate and bearer
//!              token checks; tokens kept out of backend handshakes and logs
//! jwt.rs       [route.auth.jwt]: keys, claim checks; ring as jsonwebtoken's crypto
//! targets.rs   [route.target], [egress]: token files, JWT-claim targets, egress allowlist
//! io.rs        upgraded streams: plain TCP split without a lock, bytes read early kept, frame halves
//! route.rs     path -> route, subprotocol choice (pure)
//! backend.rs   dial TCP / WebSocket (ws, wss) backends under a timeout; the built-in echo service
//! bridge.rs    the two-direction pump, control frames, close handshake, counts
//! reader.rs    frame reader: every per-frame rule of RFC 6455 §5, no buffer held between frames
//! relay.rs     WebSocket ↔ WebSocket frame relay: two hops, close codes end to end
//! keepalive.rs ping schedule and missed-pong state (pure)
//! limits.rs    admission (session caps, handshake rate → 429/503) and the bandwidth pacer
//! frames.rs    message rules shared by both bridges (sequencing, UTF-8, size) and guarded writes
//! utf8.rs      incremental UTF-8 checks for fragmented text
//! metrics.rs   metric names, descriptions, recorder, per-session handles
//! admin.rs     /metrics, /healthz, /readyz on the admin listener
//! error.rs     the pre-upgrade error (status, label) and close codes
//! shutdown.rs  signals -> cancellation token
//! ```
//!
//! # Data flow
//! accept → TLS (client certificate verified when the listener asks) → HTTP (431, header
//! timeout) → route (404) → upgrade checks (400/426) → origin (403) → credentials (401
//! missing/invalid, 403 not allowed) → target (token file: 404 unknown token; claim: 403)
//! → limits (429/503) → egress check after DNS (403) → dial backend (502/504) → `101`
//! → bridge → close (1000 normal, 1001 shutdown/keepalive, 1002 protocol, 1007 bad UTF-8,
//! 1009 too big, 1011 backend error, 1014 bad gateway), with metrics alongside every stage.

pub mod access;
pub mod admin;
pub mod backend;
pub mod bridge;
pub mod config;
pub mod error;
pub mod frames;
pub mod http;
pub mod io;
pub mod jwt;
pub mod keepalive;
pub mod limits;
pub mod metrics;
pub mod reader;
pub mod relay;
pub mod route;
pub mod server;
pub mod shutdown;
// Until the layout commit (issue 8) lands: the registry already sits where it will live.
#[path = "ops/api.rs"]
pub mod api;
#[path = "edge/console.rs"]
pub mod console;
#[path = "session/registry.rs"]
pub mod registry;
pub mod targets;
pub mod tls;
pub mod utf8;

pub use config::Config;
pub use server::Gateway;
