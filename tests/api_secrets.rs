//! No secret of the config reaches the admin API: `GET /api/config`, `/api/status` and
//! `/api/sessions` are read with the admin token from a gateway whose config holds every kind
//! of secret wsgate reads (the admin token's digest, route bearer digests, a JWT key file, a
//! token file, a backend URL's query), and none of them, nor the tokens behind the digests,
//! may appear. The config view serialises the config's own types, with secrets marked by
//! their type (`config::Secret`), so this guards every key added later too.

mod support;

use std::path::Path;

use support::*;

const ADMIN_TOKEN: &str = "admin-token-0123456789";
const ROUTE_TOKEN: &str = "route-token-0123456789";
const JWT_SECRET: &str = "jwt-secret-0123456789-0123456789-0123456789";
const FILE_TOKEN: &str = "file-token-0123456789";
const URL_SECRET: &str = "url-secret-0123456789";

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn no_secret_of_the_config_appears_in_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let jwt_key = dir.path().join("jwt-secret");
    std::fs::write(&jwt_key, format!("{JWT_SECRET}\n")).unwrap();
    let tokens = dir.path().join("tokens.cfg");
    std::fs::write(&tokens, format!("{FILE_TOKEN}: 127.0.0.1:9\n")).unwrap();
    let toml = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\nbearer_sha256 = \"{admin_digest}\"\n\n\
         [[route]]\nname = \"bearer\"\npath = \"/bearer\"\nbackend = \"tcp://127.0.0.1:9\"\n\
         [route.auth]\nbearer_sha256 = [\"{route_digest}\"]\n\n\
         [[route]]\nname = \"jwt\"\npath = \"/jwt\"\nbackend = \"tcp://127.0.0.1:9\"\n\
         [route.auth.jwt]\nalgorithm = \"HS256\"\nsecret_file = {jwt_key}\n\n\
         [[route]]\nname = \"tokens\"\npath = \"/tokens\"\n\
         [route.target]\ntoken_file = {tokens}\n\n\
         [[route]]\nname = \"feed\"\npath = \"/feed\"\n\
         backend = \"ws://127.0.0.1:9/feed?api_key={URL_SECRET}\"\n",
        admin_digest = sha256_hex(ADMIN_TOKEN),
        route_digest = sha256_hex(ROUTE_TOKEN),
        jwt_key = toml_path(&jwt_key),
        tokens = toml_path(&tokens),
    );
    let gw = spawn_gateway(&toml).await;
    let admin = gw.admin.expect("admin listener");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let secrets = [
        ADMIN_TOKEN.to_owned(),
        sha256_hex(ADMIN_TOKEN),
        ROUTE_TOKEN.to_owned(),
        sha256_hex(ROUTE_TOKEN),
        JWT_SECRET.to_owned(),
        FILE_TOKEN.to_owned(),
        URL_SECRET.to_owned(),
    ];
    for path in ["/api/config", "/api/status", "/api/sessions"] {
        let (status, answer) =
            admin_request(admin, "GET", path, &[("Authorization", &bearer)]).await;
        assert_eq!(status, 200, "GET {path}: {answer}");
        for secret in &secrets {
            assert!(
                !answer.contains(secret.as_str()),
                "{secret} in {path}: {answer}"
            );
        }
    }
    let (_, answer) =
        admin_request(admin, "GET", "/api/config", &[("Authorization", &bearer)]).await;
    let config: serde_json::Value = serde_json::from_str(answer_body(&answer)).unwrap();
    assert_eq!(config["admin"]["bearer_sha256"], "<redacted>", "{config}");
    assert_eq!(config["route"][0]["auth"]["bearer_sha256"], "<redacted>");
    // Paths are not secrets: the operator sees which files hold them.
    assert_eq!(
        config["route"][1]["auth"]["jwt"]["secret_file"],
        jwt_key.display().to_string()
    );
    assert_eq!(
        config["route"][3]["backend"],
        "ws://127.0.0.1:9/feed?api_key=<redacted>"
    );
    gw.stop().await.unwrap();
}
