//! `[route.target]` and `[egress]` as written in the file; `policy::targets` compiles them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[route.target]`: a per-session target instead of a fixed `backend`. Exactly one of
/// `token_file` and `jwt_claim`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A websockify token file: `token: host:port` lines, `#` comments. The token comes from
    /// the `token_param` query parameter (noVNC: `path=websockify?token=…`). Re-read when
    /// its mtime changes (checked at most every 2 s); a broken edit keeps the last good table.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The query parameter holding the token-file token. Default `token`.
    #[serde(default = "default_token_param")]
    pub token_param: String,
    /// A claim of the route's verified JWT naming `host:port`. Needs `[route.auth.jwt]`.
    #[serde(default)]
    pub jwt_claim: Option<String>,
}

fn default_token_param() -> String {
    "token".to_owned()
}

/// `[egress]`: where the gateway may connect. Once present, every backend dial (fixed
/// `tcp://`, `ws://`, `wss://` backends included; the built-in echo service excepted)
/// must land on an allowed address and port; everything else is refused with 403.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// `CIDR` or `IP`, optionally with `:PORT` or `:LOW-HIGH` (IPv6 in brackets when a
    /// port follows): `"127.0.0.0/8"`, `"10.1.2.0/24:5900-5999"`, `"[::1]:22"`, `"fd00::/8"`.
    /// Required, non-empty.
    pub allow: Vec<String>,
}
