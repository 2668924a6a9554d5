//! Operating the gateway: the admin listener (`/metrics`, health, `POST /reload`), the status
//! page and session API (and its live watch of sessions), process signals, reload triggers, automatic certificates (ACME).

pub mod acme;
pub mod admin;
pub mod api;
pub mod config_view;
pub mod reload;
pub mod shutdown;
pub mod watch;
