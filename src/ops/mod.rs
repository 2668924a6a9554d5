//! Operating the gateway: the admin listener (`/metrics`, health), process signals; room for
//! reload, the session API and the console.

pub mod admin;
pub mod shutdown;
