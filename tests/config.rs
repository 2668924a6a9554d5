//! Config files as shipped and as mistyped: every example under `deploy/` and the embedded
//! default must load; every fixture under `tests/fixtures/invalid/` must be rejected with
//! an error that names the offending key (the fixture's first line: `# expect: SUBSTRING`).

use std::path::{Path, PathBuf};
use std::process::Command;

use wsgate::{Config, Snapshot};

mod support;

use support::free_port;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `*.toml` files directly in `dir`, sorted, relative to the repository root.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .map(|p| p.strip_prefix(repo()).expect("under the repo").to_owned())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.toml files in {dir}");
    files
}

/// The substring a fixture's error must contain, from its first line.
fn expectation(fixture: &Path) -> String {
    let text = std::fs::read_to_string(repo().join(fixture)).expect("reading fixture");
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("# expect:")
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{}: first line must be `# expect: SUBSTRING`",
                fixture.display()
            )
        })
}

/// An error message with the file's own path blanked out, so that a fixture named
/// after the key it breaks cannot satisfy its own expectation.
fn without_path(message: &str, file: &Path) -> String {
    message
        .replace(&repo().join(file).display().to_string(), "<file>")
        .replace(&file.display().to_string(), "<file>")
}

#[test]
fn deploy_examples_load() {
    for file in toml_files("deploy") {
        if let Err(e) = Config::load(&repo().join(&file)) {
            panic!("{}: {e:#}", file.display());
        }
    }
}

/// After the drain deadline wsgate waits up to this long for what is left, then exits.
const HARD_STOP_SECS: f64 = 2.0;

/// The number after `key` on the first line that holds it (`TimeoutStopSec=40`,
/// `terminationGracePeriodSeconds: 40`, `command: ["sleep", "5"]`).
fn number_after(text: &str, key: &str) -> f64 {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.starts_with('#') && l.contains(key))
        .unwrap_or_else(|| panic!("no line with {key:?}"));
    let rest = &line[line.find(key).unwrap() + key.len()..];
    let digits: String = rest
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key:?} in {line:?}"))
}

#[test]
fn production_example_and_systemd_unit_agree() {
    let c = Config::load(&repo().join("deploy/wsgate.toml")).expect("deploy/wsgate.toml");
    let tls = c.listeners[0].tls.as_ref().expect("a wss listener");
    assert!(tls.cert_file.starts_with("/etc/wsgate/tls/"));
    assert!(tls.key_file.starts_with("/etc/wsgate/tls/"));
    assert_eq!(c.admin, Some("127.0.0.1:9089".parse().unwrap()));

    let unit = std::fs::read_to_string(repo().join("deploy/wsgate.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/wsgate --config /etc/wsgate/wsgate.toml"));
    let stop = number_after(&unit, "TimeoutStopSec=");
    let drain = c.shutdown_grace.as_secs_f64() + HARD_STOP_SECS;
    assert!(
        stop > drain,
        "TimeoutStopSec={stop} must exceed the drain ({drain} s)"
    );
}

/// The TOML inside the Kubernetes ConfigMap (the `wsgate.toml: |` block).
fn kubernetes_configmap_toml(yaml: &str) -> String {
    let mut lines = yaml.lines();
    let key_indent = lines
        .by_ref()
        .find_map(|l| (l.trim() == "wsgate.toml: |").then(|| l.len() - l.trim_start().len()))
        .expect("a `wsgate.toml: |` block in deploy/kubernetes.yaml");
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("a non-empty block");
    block
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect()
}

#[test]
fn kubernetes_configmap_loads_and_fits_the_grace_period() {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes.yaml")).unwrap();
    let toml = kubernetes_configmap_toml(&yaml);
    let c = Config::from_toml(&toml).unwrap_or_else(|e| panic!("ConfigMap: {e:#}\n{toml}"));
    // Probes and Prometheus reach the pod IP: the admin listener must not be loopback.
    let admin = c.admin.expect("an [admin] listener for the probes");
    assert!(admin.ip().is_unspecified(), "admin binds {admin}");
    assert_eq!(admin.port(), 9089);
    assert!(yaml.contains("prometheus.io/port: \"9089\""));

    let grace = number_after(&yaml, "terminationGracePeriodSeconds:");
    let pre_stop = number_after(&yaml, "command: [\"sleep\",");
    let drain = pre_stop + c.shutdown_grace.as_secs_f64() + HARD_STOP_SECS;
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds={grace} must exceed preStop + drain ({drain} s)"
    );

    // The autoscaler adds pods before one reaches its connection limit.
    let sessions_per_pod = number_after(&yaml, "averageValue:");
    let limit = c.limits.max_connections as f64;
    assert!(
        sessions_per_pod < limit,
        "HorizontalPodAutoscaler target {sessions_per_pod} sessions per pod >= max_connections {limit}"
    );
}

#[test]
fn container_config_fits_docker_stop() {
    let c = Config::load(&repo().join("deploy/container.toml")).expect("deploy/container.toml");
    for l in &c.listeners {
        assert!(
            l.address.ip().is_unspecified(),
            "listener binds {}",
            l.address
        );
    }
    assert_eq!(c.listeners[0].address.port(), 8080);
    assert_eq!(c.admin.map(|a| a.port()), Some(9089));
    // `docker stop` sends SIGKILL 10 s after SIGTERM unless told otherwise.
    let drain = c.shutdown_grace.as_secs_f64() + HARD_STOP_SECS;
    assert!(drain < 10.0, "drain {drain} s >= docker stop's 10 s");

    // The image's HEALTHCHECK asks this admin listener for /readyz.
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let healthcheck_port = number_after(&dockerfile, "/dev/tcp/127.0.0.1/");
    assert_eq!(c.admin.map(|a| f64::from(a.port())), Some(healthcheck_port));
}

#[test]
fn embedded_default_loads() {
    let c = Config::from_toml(wsgate::config::DEFAULT_CONFIG).expect("embedded default");
    assert!(!c.listeners.is_empty());
    assert!(!c.routes.is_empty());
    // `cargo run` then http://127.0.0.1:8080/ shows the console against the built-in echo.
    assert!(
        c.listeners[0].console,
        "the embedded default serves the console"
    );
}

#[test]
fn invalid_fixtures_are_rejected_naming_the_key() {
    for file in toml_files("tests/fixtures/invalid") {
        let expect = expectation(&file);
        // As `wsgate check` and a start do: validate the file, then compile it.
        match Config::load(&repo().join(&file)).and_then(|c| Snapshot::build(c, None)) {
            Ok(_) => panic!("{}: loaded, but it should fail", file.display()),
            Err(e) => {
                let message = without_path(&format!("{e:#}"), &file);
                assert!(
                    message.contains(&expect),
                    "{}: error does not contain {expect:?}:\n{message}",
                    file.display()
                );
            }
        }
    }
}

fn wsgate_check(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("check")
        .arg(file)
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .output()
        .expect("running wsgate check")
}

/// The production example with its `/etc/wsgate/tls/` files replaced by a certificate and
/// key made for the test: `check` reads and matches them, as a start would.
#[test]
fn binary_check_accepts_the_production_example() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("writing cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("writing key");
    let text = std::fs::read_to_string(repo().join("deploy/wsgate.toml"))
        .expect("deploy/wsgate.toml")
        .replace(
            "/etc/wsgate/tls/fullchain.pem",
            &cert_file.display().to_string(),
        )
        .replace(
            "/etc/wsgate/tls/privkey.pem",
            &key_file.display().to_string(),
        );
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, text).expect("writing config");
    let out = wsgate_check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wsgate check {}: {:?}\nstdout: {stdout}\nstderr: {}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn binary_check_rejects_invalid_fixtures_naming_the_key() {
    for file in toml_files("tests/fixtures/invalid") {
        let expect = expectation(&file);
        let out = wsgate_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "wsgate check {} succeeded",
            file.display()
        );
        let message = without_path(&stderr, &file);
        assert!(
            message.contains(&expect),
            "wsgate check {}: stderr does not contain {expect:?}:\n{stderr}",
            file.display()
        );
    }
}

/// A fresh self-signed certificate and its key, as PEM.
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

/// A config with one wss listener on `cert_file`/`key_file` (TOML values as written).
fn wss_config(cert_file: &str, key_file: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {cert_file:?}\n\
         key_file = {key_file:?}\n\n[[route]]\nname = \"echo\"\npath = \"/echo\"\nbackend = \"builtin:echo\"\n"
    )
}

/// Regression (issue 9 item 12): `wsgate check` said `ok` for a listener whose certificate
/// or key file was missing or did not match, so `ExecStartPre=wsgate check` passed a config
/// that then failed to start. `check` builds the snapshot: it reads and matches them, and the
/// error names the listener's key.
#[test]
fn binary_check_reads_and_matches_the_listener_certificate_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    let other_key_file = dir.path().join("other-key.pem");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&other_key_file, other_key).unwrap();
    let missing = dir.path().join("missing.pem");
    let path = |p: &Path| p.display().to_string();
    for (name, cert_file, key_file, needle) in [
        (
            "missing-cert.toml",
            path(&missing),
            path(&key_file),
            "missing.pem",
        ),
        (
            "missing-key.toml",
            path(&cert_file),
            path(&missing),
            "missing.pem",
        ),
        (
            "mismatch.toml",
            path(&cert_file),
            path(&other_key_file),
            "does not match",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, wss_config(&cert_file, &key_file)).unwrap();
        let out = wsgate_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: check passed");
        assert!(
            stderr.contains("listener[0].tls") && stderr.contains(needle),
            "{name}: {stderr}"
        );
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, wss_config(&path(&cert_file), &path(&key_file))).unwrap();
    let out = wsgate_check(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression (issue 9 item 14): relative paths in a config file were resolved against the
/// working directory, so `check` passed in the config's folder and the service failed under
/// systemd (cwd `/`). They resolve against the config file's folder.
#[test]
fn relative_paths_resolve_against_the_config_files_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    let (cert, key) = self_signed();
    std::fs::write(etc.join("tls/cert.pem"), &cert).unwrap();
    std::fs::write(etc.join("tls/key.pem"), key).unwrap();
    std::fs::write(etc.join("tls/ca.pem"), &cert).unwrap();
    std::fs::write(etc.join("tokens.cfg"), "vnc: 127.0.0.1:5900\n").unwrap();
    std::fs::write(
        etc.join("jwt-secret"),
        "a shared secret of at least 32 bytes, for tests",
    )
    .unwrap();
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\n\
        cert_file = \"tls/cert.pem\"\nkey_file = \"./tls/key.pem\"\nclient_ca_file = \"tls/ca.pem\"\n\
        client_auth = \"optional\"\n\n\
        [[route]]\nname = \"vnc\"\npath = \"/websockify\"\n[route.target]\ntoken_file = \"tokens.cfg\"\n\n\
        [[route]]\nname = \"jwt\"\npath = \"/jwt\"\nbackend = \"wss://127.0.0.1:9443/\"\n\
        tls_ca_file = \"tls/ca.pem\"\n[route.auth.jwt]\nalgorithm = \"HS256\"\nsecret_file = \"jwt-secret\"\n";
    let file = etc.join("wsgate.toml");
    std::fs::write(&file, text).unwrap();

    // From another folder, as systemd runs it (`Command::current_dir` is the repository).
    let out = wsgate_check(&file);
    assert!(
        out.status.success(),
        "check from another cwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And from its own folder, named without one (`wsgate check wsgate.toml`).
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "wsgate.toml"])
        .current_dir(&etc)
        .env_remove("RUST_LOG")
        .output()
        .expect("running wsgate check");
    assert!(
        out.status.success(),
        "check wsgate.toml in its folder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Config::load(&file).expect("loads from another cwd");
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, etc.join("tls/cert.pem"));
    assert_eq!(tls.key_file, etc.join("tls/key.pem"));
    Snapshot::build(c, None).expect("every file is found from the config's folder");

    // Absolute paths stay as they are; a missing relative file names the resolved path.
    std::fs::remove_file(etc.join("tokens.cfg")).unwrap();
    let out = wsgate_check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&etc.join("tokens.cfg").display().to_string()),
        "{stderr}"
    );
}

/// Regression (issue 9 item 15): quick mode named routes from their paths, so
/// `--route /ws=… --route /ws/=…` failed with a duplicate name the user never chose.
#[test]
fn quick_mode_route_names_are_unique() {
    let quick = wsgate::config::QuickMode {
        routes: [
            "/ws=tcp://127.0.0.1:1",
            "/ws/=tcp://127.0.0.1:2",
            "/ws.=tcp://127.0.0.1:3",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let c = quick
        .to_file_config()
        .and_then(|f| f.validate())
        .expect("quick mode with /ws and /ws/ is valid");
    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(names[0], "ws", "{names:?}");
    let unique: std::collections::HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), 3, "{names:?}");

    // The real binary, as a user runs it: it starts and serves both routes.
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--route",
            "/ws=tcp://127.0.0.1:1",
            "--route",
            "/ws/=tcp://127.0.0.1:2",
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting wsgate");
    let started = std::time::Instant::now();
    let mut up = false;
    while started.elapsed() < std::time::Duration::from_secs(10) {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "wsgate exited {status}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "wsgate never listened on {port}");
}
