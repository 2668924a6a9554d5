//! A real browser for end-to-end tests: Debian's Chromium, headless, driven through WebDriver
//! (Debian's chromedriver), found on `PATH` or named by `WSGATE_CHROMIUM` and
//! `WSGATE_CHROMEDRIVER`. Without them a test prints why and passes, except under `CI`, where
//! it fails: `.ci/run` installs both. Test files add their page-specific steps in their own
//! `impl Browser`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use serde_json::json;

use super::gateway::{free_port, wait_for_listener};

/// A headless Chromium session, its chromedriver and its throw-away profile; all end on drop.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Chromium flags: no GPU, no sandbox (containers), nothing that phones home or updates itself.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
];

/// `name` on `PATH`, or the file `env` names.
pub fn find_tool(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Browser {
    /// Start chromedriver and a fresh Chromium. `trusted_spki` is the base64 SHA-256 of a
    /// server key Chromium should accept without a trusted root (the test CA's leaf). `None`
    /// when the tools are missing outside CI (the caller skips).
    pub async fn start(test: &str, trusted_spki: Option<&str>) -> Option<Browser> {
        Self::start_with(test, trusted_spki, &[]).await
    }

    /// [`Browser::start`] with more Chromium flags (`--host-resolver-rules=...`).
    pub async fn start_with(
        test: &str,
        trusted_spki: Option<&str>,
        extra_args: &[String],
    ) -> Option<Browser> {
        let chromium = find_tool("WSGATE_CHROMIUM", "chromium");
        let driver = find_tool("WSGATE_CHROMEDRIVER", "chromedriver");
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let msg = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {msg}; CI must run the browser tests");
            }
            // Straight to stderr: libtest hides what a passing test prints with `eprintln!`.
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {msg}");
            return None;
        };
        let port = free_port();
        let driver = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            client: None,
            driver,
            _profile: profile,
        };
        wait_for_listener(([127, 0, 0, 1], port).into()).await;

        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        if let Some(spki) = trusted_spki {
            args.push(format!("--ignore-certificate-errors-spki-list={spki}"));
        }
        args.extend(extra_args.iter().cloned());
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": chromium, "args": args }),
        );
        // One retry: a chromedriver that just opened its port has reset the first session
        // request on a busy machine.
        let mut attempt = 0;
        let client = loop {
            attempt += 1;
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let session = tokio::time::timeout(
                Duration::from_secs(60),
                ClientBuilder::new(connector)
                    .capabilities(caps.clone())
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .await
            .expect("chromium starts within 60 s");
            match session {
                Ok(client) => break client,
                Err(e) if attempt < 2 => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{test}: WebDriver session: {e}; once more"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("WebDriver session: {e}"),
            }
        };
        browser.client = Some(client);
        Some(browser)
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Save a PNG of the page as `<target>/browser-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("screenshot written");
    }

    /// Evaluate `script` (a function body; `arguments[0]` is `arg`) until it returns a truthy
    /// value, for up to 15 s; returns that value.
    pub async fn eventually(
        &self,
        what: &str,
        script: &str,
        arg: serde_json::Value,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let value = self
                .client()
                .execute(script, vec![arg.clone()])
                .await
                .expect("script runs");
            let truthy = !matches!(
                &value,
                serde_json::Value::Null | serde_json::Value::Bool(false)
            ) && value != json!("")
                && value != json!(0);
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("browser: {what} did not happen within 15 s (last value {value})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// End the WebDriver session (closes Chromium), then chromedriver.
    pub async fn quit(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `<target>/browser-screenshots`, found from the test binary (`<target>/debug/deps/…`), so
/// `CARGO_TARGET_DIR` is honoured.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("browser-screenshots")
}
