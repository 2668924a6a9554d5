//! The command line and config loading as an operator meets them, through the real binary:
//! relative paths follow the config file's folder on start and on reload (never the working
//! directory), `wsgate reload` asks the gateway and reports what it said, `config
//! --from-flags` prints only what `check` accepts, every backend URL form is documented, quick
//! mode serves clients that offer a subprotocol, and every row of README.md's websockify
//! migration table runs as written.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use serde_json::json;
use support::*;
use tokio::process::{Child, Command};
use tokio::time::timeout;
use tokio_tungstenite::Connector;

const RIGHT_SECRET: &[u8] = b"the secret in the config file's folder, 32+ bytes";
const PLANTED_SECRET: &[u8] = b"a secret planted in the working directory, 32+ bytes";

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// A running `wsgate` process and the start-up lines it printed.
struct Running {
    child: Child,
    lines: Vec<String>,
}

impl Running {
    /// The address of the first printed URL with this scheme (`ws`, `wss`).
    fn addr(&self, scheme: &str) -> SocketAddr {
        let prefix = format!("wsgate: {scheme}://");
        let line = self
            .lines
            .iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {scheme}:// line in {:?}", self.lines));
        line[prefix.len()..]
            .split('/')
            .next()
            .expect("authority")
            .parse()
            .expect("IP:PORT")
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Start the binary in `cwd` with `args`; read stdout until a line contains `until`.
async fn start_in(cwd: &Path, args: &[&str], until: &str) -> Running {
    let (child, lines) = start_binary(Some(cwd), args, until).await;
    Running { child, lines }
}

/// Run the binary in `cwd` to completion (bounded): exit code, stdout, stderr.
async fn run_in(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = timeout(
        Duration::from_secs(20),
        Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("wsgate finishes")
    .expect("wsgate runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Write `text` to `path`, creating its folder.
fn write(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("a folder")).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A certificate for 127.0.0.1 signed by a CA named `name`, as `tls/cert.pem` and
/// `tls/key.pem` under `dir`, the CA as `tls/ca.pem`. Returns the CA.
fn server_certificate(dir: &Path, name: &str) -> CertificateDer<'static> {
    let ca = test_ca(name);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    write(&dir.join("tls/cert.pem"), cert.pem());
    write(&dir.join("tls/key.pem"), key.serialize_pem());
    write(&dir.join("tls/ca.pem"), ca.pem());
    ca.der().clone()
}

/// The files a config names, under `dir`: a certificate (returns its CA), a token file
/// whose one token is `name`, a JWT secret, a web root whose page says `name`.
fn files_named(dir: &Path, name: &str, echo: SocketAddr, secret: &[u8]) -> CertificateDer<'static> {
    let ca = server_certificate(dir, name);
    write(&dir.join("tokens.cfg"), format!("{name}: {echo}\n"));
    write(&dir.join("hs.secret"), secret);
    write(&dir.join("www/index.html"), format!("<p>{name} page</p>\n"));
    ca
}

/// A gateway with a plain and a TLS listener, a token-file route, a JWT route and a web
/// root; its file paths relative (`folder` = "") or absolute under `folder`.
fn config_naming_files(folder: &str, echo: SocketAddr, admin: u16) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:{admin}\"\n\
         [reload]\nwatch = false\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\
         [listener.tls]\ncert_file = \"{folder}tls/cert.pem\"\nkey_file = \"{folder}tls/key.pem\"\n\
         [[route]]\nname = \"tokens\"\npath = \"/tokens\"\n\
         [route.target]\ntoken_file = \"{folder}tokens.cfg\"\n\
         [[route]]\nname = \"jwt\"\npath = \"/jwt\"\nbackend = \"tcp://{echo}\"\n\
         [route.auth.jwt]\nalgorithm = \"HS256\"\nsecret_file = \"{folder}hs.secret\"\n\
         [web]\nroot = \"{folder}www\"\n"
    )
}

fn trusting(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    wsgate::tls::install_crypto_provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The gateway serves the files of the config's folder ("right"), none of the same-named
/// files planted in its working directory: certificate, token file, JWT secret, web root.
async fn assert_serves_the_config_folders_files(
    ws: SocketAddr,
    wss: SocketAddr,
    right_ca: &CertificateDer<'static>,
    planted_ca: &CertificateDer<'static>,
) {
    let mut client = ws_client(&format!("ws://{ws}/tokens?token=right")).await;
    assert_echoes(&mut client, b"token from the config's folder").await;
    let (status, _) = upgrade_with(ws, "/tokens?token=planted", &[]).await;
    assert_ne!(
        status, 101,
        "a token from the working directory's file let in"
    );

    let claims = json!({ "sub": "alice", "exp": unix_now() + 600 });
    let right = format!("Bearer {}", jwt_hs256(RIGHT_SECRET, &claims));
    let planted = format!("Bearer {}", jwt_hs256(PLANTED_SECRET, &claims));
    let (status, answer) = upgrade_with(ws, "/jwt", &[("Authorization", &right)]).await;
    assert_eq!(status, 101, "a token signed with the checked key: {answer}");
    let (status, _) = upgrade_with(ws, "/jwt", &[("Authorization", &planted)]).await;
    assert_eq!(status, 401, "a token signed with the planted key");

    let (status, page) =
        raw_http(ws, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("right page"), "{page}");

    let url = format!("wss://{wss}/tokens?token=right");
    let (mut client, _) = tokio_tungstenite::connect_async_tls_with_config(
        &url,
        None,
        false,
        Some(Connector::Rustls(trusting(right_ca))),
    )
    .await
    .expect("the certificate of the config's folder");
    assert_echoes(&mut client, b"over tls").await;
    let planted = tokio_tungstenite::connect_async_tls_with_config(
        &url,
        None,
        false,
        Some(Connector::Rustls(trusting(planted_ca))),
    )
    .await;
    assert!(planted.is_err(), "the planted certificate was served");
}

/// The "right" files in `root/etc` beside the config, same-named "planted" ones in `root/cwd`.
struct TwoFolders {
    _root: tempfile::TempDir,
    etc: PathBuf,
    cwd: PathBuf,
    right_ca: CertificateDer<'static>,
    planted_ca: CertificateDer<'static>,
}

fn two_folders(echo: SocketAddr) -> TwoFolders {
    let root = tempfile::tempdir().unwrap();
    let (etc, cwd) = (root.path().join("etc"), root.path().join("cwd"));
    let right_ca = files_named(&etc, "right", echo, RIGHT_SECRET);
    let planted_ca = files_named(&cwd, "planted", echo, PLANTED_SECRET);
    TwoFolders {
        _root: root,
        etc,
        cwd,
        right_ca,
        planted_ca,
    }
}

// ---------------------------------------------------------------------------------------------
// Relative paths.

/// Regression: `check` resolved relative paths against the config file's folder, a start
/// against the working directory, so whoever could place a same-named file there chose the
/// certificate, the token table and the JWT key (and a service started in `/` failed).
#[tokio::test]
async fn relative_paths_follow_the_config_folder_not_the_working_directory_at_start() {
    let echo = tcp_echo_backend().await;
    let f = two_folders(echo);
    let file = f.etc.join("wsgate.toml");
    write(&file, config_naming_files("", echo, free_port()));
    let file = file.display().to_string();

    let (code, out, err) = run_in(&f.cwd, &["check", &file]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let gw = start_in(&f.cwd, &["--config", &file], "wss://").await;
    assert_serves_the_config_folders_files(
        gw.addr("ws"),
        gw.addr("wss"),
        &f.right_ca,
        &f.planted_ca,
    )
    .await;
    gw.stop().await;
}

/// Regression: a reload read relative paths against the gateway's working directory, so a
/// reload swapped in the planted certificate, token table and JWT key.
#[tokio::test]
async fn relative_paths_follow_the_config_folder_not_the_working_directory_on_reload() {
    let echo = tcp_echo_backend().await;
    let f = two_folders(echo);
    let admin = free_port();
    let file = f.etc.join("wsgate.toml");
    let absolute = format!("{}/", f.etc.display());
    write(&file, config_naming_files(&absolute, echo, admin));
    let file = file.display().to_string();
    let gw = start_in(&f.cwd, &["--config", &file], "wss://").await;
    let (ws, wss) = (gw.addr("ws"), gw.addr("wss"));
    assert_serves_the_config_folders_files(ws, wss, &f.right_ca, &f.planted_ca).await;

    write(
        &f.etc.join("wsgate.toml"),
        config_naming_files("", echo, admin),
    );
    let (code, out, err) = run_in(&f.cwd, &["reload", "-c", &file]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("reloaded:"), "{out}");
    assert_serves_the_config_folders_files(ws, wss, &f.right_ca, &f.planted_ca).await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// `wsgate reload`.

/// Regression: `wsgate reload -c FILE` with an invalid file exited 2 without asking the
/// gateway (the docs say exit 1 and why), and the 200 answer left out the keys that wait
/// for a restart, which only the log named.
#[tokio::test]
async fn reload_of_an_invalid_file_exits_1_and_the_answer_names_restart_only_keys() {
    let echo = tcp_echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let base = format!(
        "[admin]\naddress = \"{admin}\"\n[reload]\nwatch = false\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\nname = \"echo\"\npath = \"/echo\"\nbackend = \"tcp://{echo}\"\n"
    );
    let file = dir.path().join("wsgate.toml");
    write(&file, &base);
    let file = file.display().to_string();
    let gw = start_in(dir.path(), &["--config", &file], "admin http://").await;

    write(Path::new(&file), format!("{base}[limits]\nbogus = 1\n"));
    let (code, out, err) = run_in(dir.path(), &["reload", "-c", &file]).await;
    assert_eq!(code, Some(1), "refused: exit 1\n{out}{err}");
    assert!(format!("{out}{err}").contains("bogus"), "why: {out}{err}");
    // The gateway was asked, refused, and keeps serving.
    expect_metric(admin, r#"wsgate_config_reloads_total{result="error"}"#, 1.0).await;
    let mut ws = ws_client(&format!("ws://{}/echo", gw.addr("ws"))).await;
    assert_echoes(&mut ws, b"still serving").await;

    write(
        Path::new(&file),
        format!("{base}[limits]\nmax_connections = 500\n[log]\nlevel = \"debug\"\n"),
    );
    let (code, out, err) = run_in(dir.path(), &["reload", "-c", &file]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("applies only after a restart"), "{out}");
    for key in ["limits.max_connections", "log"] {
        assert!(out.contains(key), "the answer lacks {key}: {out}");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// `config --from-flags`.

/// Regression: `wsgate config --from-flags` printed configs that `check` refused (two
/// `--route /=…` → exit 0, the file refused because both routes match path `/`).
#[tokio::test]
async fn config_from_flags_refuses_what_check_refuses() {
    let dir = tempfile::tempdir().unwrap();
    for (args, why) in [
        (
            vec![
                "--route",
                "/=tcp://127.0.0.1:1",
                "--route",
                "/=tcp://127.0.0.1:2",
            ],
            "both match any host",
        ),
        (
            vec!["--cert", "missing.pem", "6080", "localhost:5900"],
            "missing.pem",
        ),
        (vec!["6080", "sctp://127.0.0.1:1"], "unknown scheme"),
    ] {
        let mut command = vec!["config", "--from-flags"];
        command.extend(&args);
        let (code, out, err) = run_in(dir.path(), &command).await;
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?} printed a file: {out}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    // A relative path is printed absolute: the file names the same file wherever it is saved.
    let echo = tcp_echo_backend().await.to_string();
    write(&dir.path().join("tokens.cfg"), format!("t: {echo}\n"));
    let (code, toml, err) = run_in(
        dir.path(),
        &[
            "config",
            "--from-flags",
            "--target-config",
            "tokens.cfg",
            "6080",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let absolute = dir.path().join("tokens.cfg").display().to_string();
    assert!(
        toml.contains(&format!("token_file = {absolute:?}")),
        "{toml}"
    );
}

// ---------------------------------------------------------------------------------------------
// Backend URL forms.

/// The code spans of the first column of the first table after the heading `heading`.
fn first_column_of_table_after(markdown: &str, heading: &str) -> Vec<String> {
    let mut in_heading = false;
    let mut after_heading = false;
    let (mut in_body, mut cell, mut spans) = (false, 0, Vec::new());
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => in_heading = true,
            Event::End(TagEnd::Heading(_)) => in_heading = false,
            Event::Text(t) if in_heading => after_heading = t.as_ref() == heading,
            Event::Start(Tag::TableRow) if after_heading => (in_body, cell) = (true, 0),
            Event::End(TagEnd::TableCell) => cell += 1,
            Event::Code(code) if after_heading && in_body && cell == 0 => {
                spans.push(code.to_string())
            }
            Event::End(TagEnd::Table) if after_heading => return spans,
            _ => {}
        }
    }
    spans
}

/// Regression: `unix:` backends were missing from `--help`, from configuration.md's backend
/// URL table and from the unknown-scheme error (`(tcp, ws, wss)`). The list is the parser's.
#[tokio::test]
async fn every_backend_url_form_is_in_help_the_url_table_and_the_error() {
    let forms = wsgate::config::BACKEND_URL_FORMS;
    let (code, help, _) = run_in(&repo(), &["--help"]).await;
    assert_eq!(code, Some(0));
    let page = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    let table = first_column_of_table_after(&page, "Backend URLs");
    assert!(!table.is_empty(), "no table under ## Backend URLs");
    let (_, _, error) = run_in(
        &repo(),
        &["config", "--from-flags", "6080", "sctp://127.0.0.1:1"],
    )
    .await;
    for form in forms {
        assert!(help.contains(form), "--help lacks {form}:\n{help}");
        assert!(
            table.iter().any(|row| row.starts_with(form)),
            "configuration.md's backend URL table lacks {form}: {table:?}"
        );
        assert!(
            error.contains(form),
            "the unknown-scheme error lacks {form}: {error}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Subprotocols in quick mode.

/// Regression: quick mode's routes accepted only `binary`, so MQTT.js (which offers `mqtt`)
/// failed its handshake and needed a config file.
#[tokio::test]
async fn quick_mode_subprotocol_flag_serves_a_client_offering_mqtt() {
    let echo = tcp_echo_backend().await;
    let route = format!("/mqtt=tcp://{echo}");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--route",
        &route,
        "--subprotocol",
        "mqtt",
    ];
    let gw = start_in(&repo(), &args, "ws://").await;
    let (mut ws, chosen) =
        ws_client_offering(&format!("ws://{}/mqtt", gw.addr("ws")), "mqtt").await;
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    assert_echoes(&mut ws, b"\x10\x0c\x00\x04MQTT").await;
    gw.stop().await;

    let mut command = vec!["config", "--from-flags"];
    command.extend(&args);
    let (code, toml, err) = run_in(&repo(), &command).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(toml.contains("subprotocols = [\"mqtt\"]"), "{toml}");
}

// ---------------------------------------------------------------------------------------------
// The websockify migration table.

/// A row of README.md's "Coming from websockify" table: the code spans of its first two
/// columns and the text of its second.
#[derive(Debug, Default)]
struct MigrationRow {
    websockify: Vec<String>,
    wsgate: Vec<String>,
    wsgate_text: String,
}

fn migration_table() -> Vec<MigrationRow> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut in_heading = false;
    let mut after_heading = false;
    let mut cell = 0;
    let mut rows = Vec::new();
    let mut row = MigrationRow::default();
    for event in Parser::new_ext(&readme, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => in_heading = true,
            Event::End(TagEnd::Heading(_)) => in_heading = false,
            Event::Text(t) if in_heading => after_heading = t.as_ref() == "Coming from websockify",
            Event::Start(Tag::TableRow) => (row, cell) = (MigrationRow::default(), 0),
            // Header cells are not in a row: only body rows end here.
            Event::End(TagEnd::TableRow) if after_heading => rows.push(std::mem::take(&mut row)),
            Event::End(TagEnd::TableCell) => cell += 1,
            Event::Code(code) if cell == 0 => row.websockify.push(code.to_string()),
            Event::Code(code) if cell == 1 => row.wsgate.push(code.to_string()),
            Event::Text(t) if cell == 1 => row.wsgate_text.push_str(&t),
            Event::End(TagEnd::Table) if after_heading => return rows,
            _ => {}
        }
    }
    rows
}

/// Every way to write `form`: each `[...]` group present or absent (`[HOST:]PORT`,
/// `[--key FILE]`; the table's forms hold no IPv6 literal).
fn with_and_without_optional_parts(form: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (form.find('['), form.find(']')) else {
        return vec![form.to_owned()];
    };
    let (before, inner, after) = (&form[..open], &form[open + 1..close], &form[close + 1..]);
    let mut forms = with_and_without_optional_parts(&format!("{before}{after}"));
    forms.extend(with_and_without_optional_parts(&format!(
        "{before}{inner}{after}"
    )));
    forms
}

/// Files the table's placeholders stand for.
struct Placeholders {
    _dir: tempfile::TempDir,
    cert: String,
    key: String,
    ca: String,
    tokens: String,
    dir: String,
    other: String,
}

fn placeholders() -> Placeholders {
    let dir = tempfile::tempdir().unwrap();
    server_certificate(dir.path(), "migration table");
    // websockify's usual `--cert`: the chain and the key in one file.
    let combined = [
        std::fs::read(dir.path().join("tls/cert.pem")).unwrap(),
        std::fs::read(dir.path().join("tls/key.pem")).unwrap(),
    ]
    .concat();
    write(&dir.path().join("tls/combined.pem"), combined);
    write(&dir.path().join("tokens.cfg"), "t: 127.0.0.1:5900\n");
    write(&dir.path().join("www/index.html"), "<p>page</p>\n");
    let s = |p: &str| dir.path().join(p).display().to_string();
    Placeholders {
        cert: s("tls/combined.pem"),
        key: s("tls/key.pem"),
        ca: s("tls/ca.pem"),
        tokens: s("tokens.cfg"),
        dir: s("www"),
        other: s("other.file"),
        _dir: dir,
    }
}

/// `form` as arguments: placeholders filled in (a `FILE` by the flag before it), and, for a
/// flag alone, websockify's positional arguments after it. Unknown placeholders fail.
fn arguments(form: &str, p: &Placeholders) -> Vec<String> {
    let words: Vec<&str> = form.split_whitespace().collect();
    let mut args: Vec<String> = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let before = if i > 0 { words[i - 1] } else { "" };
        let value = match *word {
            "FILE" => match before {
                "--cert" | "--tls-cert" => p.cert.clone(),
                "--key" | "--tls-key" => p.key.clone(),
                "--cafile" => p.ca.clone(),
                "--token-source" | "--target-config" => p.tokens.clone(),
                "--unix-target" => "/run/wsgate-migration-test.sock".to_owned(),
                _ => p.other.clone(),
            },
            "DIR" => p.dir.clone(),
            "SECS" => "5".to_owned(),
            "PORT" => "6080".to_owned(),
            "HOST:PORT" => "localhost:5900".to_owned(),
            w if w.len() > 1
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c == ':') =>
            {
                panic!("unknown placeholder {w:?} in the migration table's {form:?}")
            }
            w => w.to_owned(),
        };
        args.push(value);
    }
    if args.first().map(String::as_str) == Some("websockify") {
        args.remove(0);
    } else {
        let chooses_target = ["--token-plugin", "--target-config", "--unix-target"]
            .iter()
            .any(|flag| words.contains(flag));
        args.push("6080".to_owned());
        if !chooses_target {
            args.push("localhost:5900".to_owned());
        }
    }
    args
}

/// Regression: the table's `-6` row failed as written (`--listen [::1]:6082 localhost:5900`
/// → "the listen address is given twice"; `--prefer-ipv6` unknown) and it called
/// `--unix-target` unsupported. Every "the same" form, in websockify's spelling and in any
/// wsgate spelling beside it, is accepted as written (and checked as `check` would); every
/// other websockify flag in the table is refused by name, so the table cannot claim less
/// than the binary does either.
#[tokio::test]
async fn every_row_of_the_websockify_migration_table_runs_as_written() {
    let rows = migration_table();
    assert!(rows.len() >= 10, "the table was not found: {rows:?}");
    let p = placeholders();
    for row in &rows {
        let same = row.wsgate_text.trim_start().starts_with("the same");
        let forms: Vec<&String> = if same {
            row.websockify.iter().chain(&row.wsgate).collect()
        } else {
            row.websockify.iter().collect()
        };
        for form in forms {
            for variant in with_and_without_optional_parts(form) {
                let args = arguments(&variant, &p);
                let mut command = vec!["config".to_owned(), "--from-flags".to_owned()];
                command.extend(args.iter().cloned());
                let command: Vec<&str> = command.iter().map(String::as_str).collect();
                let (code, out, err) = run_in(&repo(), &command).await;
                if same {
                    assert_eq!(
                        code,
                        Some(0),
                        "{variant:?} ({args:?}) is \"the same\": {err}"
                    );
                    assert!(out.contains("[[route]]"), "{variant:?}: {out}");
                } else {
                    assert_eq!(
                        code,
                        Some(2),
                        "{variant:?} ({args:?}) says {:?}: {out}{err}",
                        row.wsgate_text
                    );
                    let flag = variant.split_whitespace().next().unwrap_or_default();
                    assert!(
                        err.contains(&format!("'{flag}'")),
                        "{variant:?} refused, not by name: {err}"
                    );
                }
            }
        }
    }
    // The form the old table's `-6` row led to: an IPv6 listen address as the first
    // argument, with the target after it.
    let (code, out, err) = run_in(
        &repo(),
        &["config", "--from-flags", "[::1]:6082", "localhost:5900"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("address = \"[::1]:6082\""), "{out}");
    let (code, out, err) = run_in(
        &repo(),
        &["config", "--from-flags", "-6", "6082", "localhost:5900"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("address = \"[::]:6082\""), "{out}");
}
