//! Operating the gateway: the admin listener (`/metrics`, health, `POST /reload`), process
//! signals, reload triggers; room for the session API and the console.

pub mod admin;
pub mod reload;
pub mod shutdown;
