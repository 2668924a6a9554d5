//! Hitless reload, the trigger side: SIGHUP, a change of a watched file (config, certificates,
//! keys; debounced), `POST /reload` on the admin listener. Requests are served one at a time by
//! [`run`], which asks the gateway to [`Apply`] the config again and records the result: a log
//! line, `wsgate_config_reloads_total{result}`, and on success the running config's hash and
//! the files to watch next. What a reload changes is the gateway's business (src/gateway.rs).
//!
//! A file change reloads only a complete file: after the quiet time the watched files are
//! read, and read again one quiet time later; the reload runs when both reads agree. And a
//! reload a file change triggered may not take access control away ([`access_removed`]): a
//! file cut short before its `[route.auth]` is still valid TOML, so a slow writer would
//! otherwise open a route for a moment. Such a reload is refused and logged; SIGHUP,
//! `wsgate reload` and `POST /reload` say the operator meant it, and apply it.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics;

/// What asked for a reload (the `trigger` field of its log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload`, `kill -HUP`).
    Signal,
    /// A watched file changed.
    FileChange,
    /// `POST /reload` on the admin listener (`wsgate reload`).
    Admin,
    /// A library caller ([`ReloadHandle::reload`]).
    Api,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Self::Signal => "sighup",
            Self::FileChange => "file_change",
            Self::Admin => "admin",
            Self::Api => "api",
        }
    }
}

/// What a config load that took effect leaves behind.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The running config's hash (see [`config_hash`]).
    pub hash: String,
    /// Files whose change should trigger the next reload: the config file, certificates, keys.
    pub files: Vec<PathBuf>,
    /// `None`: do not watch files; else the quiet time to wait after the last change.
    pub watch: Option<Duration>,
    /// One line for the log and for `POST /reload`'s answer.
    pub summary: String,
}

/// The gateway side of a reload: read the config again and, if it is valid, switch to it.
/// On error nothing has changed. `trigger` says who asked: a [`Trigger::FileChange`] must
/// not remove access control ([`access_removed`]).
pub trait Apply: Send {
    fn apply(&mut self, trigger: Trigger) -> impl Future<Output = anyhow::Result<Applied>> + Send;
}

/// What `new` takes away of `old`'s access control, one line each: a route (by name) that
/// had `[route.auth]`, `[route.origin]` or `[route.target]` and lost it, moved to another
/// path or is gone (its requests may now match an open route); a listener that asked for
/// client certificates and no longer does; the admin token. Empty: nothing removed.
pub fn access_removed(old: &crate::config::Config, new: &crate::config::Config) -> Vec<String> {
    let mut removed = Vec::new();
    for r in &old.routes {
        let guarded = [
            ("auth", r.auth.is_some()),
            ("origin", r.origin.is_some()),
            ("target", r.target.is_some()),
        ];
        if guarded.iter().all(|(_, had)| !had) {
            continue;
        }
        let Some(n) = new.routes.iter().find(|n| n.name == r.name) else {
            removed.push(format!("route {:?} (with access control) is gone", r.name));
            continue;
        };
        if n.path != r.path {
            removed.push(format!(
                "route {:?} (with access control) moved from {:?}",
                r.name, r.path
            ));
        }
        let kept = [n.auth.is_some(), n.origin.is_some(), n.target.is_some()];
        for ((what, had), has) in guarded.iter().zip(kept) {
            if *had && !has {
                removed.push(format!("route {:?} loses [route.{what}]", r.name));
            }
        }
    }
    let asks_certs = |l: &crate::config::ListenerConfig| {
        l.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some())
    };
    for l in old.listeners.iter().filter(|l| asks_certs(l)) {
        let same = new.listeners.iter().find(|n| n.address == l.address);
        if same.is_some_and(|n| !asks_certs(n)) {
            removed.push(format!(
                "listener {} stops asking for client certificates",
                l.address
            ));
        }
    }
    if old.admin_bearer_sha256.is_some() && new.admin_bearer_sha256.is_none() && new.admin.is_some()
    {
        removed.push("the admin listener loses its token".to_owned());
    }
    removed
}

/// The first 16 hex digits of the SHA-256 of a config file's bytes: what
/// `wsgate_config_info{hash}` shows, comparable with `sha256sum`.
pub fn config_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A reload's answer: the summary, or why the new config was refused.
pub type ReloadResult = Result<String, String>;

struct Request {
    trigger: Trigger,
    reply: Option<oneshot::Sender<ReloadResult>>,
}

/// Asks the running gateway for reloads; cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Request>,
}

/// The receiving end of a [`ReloadHandle`], served by [`run`].
pub struct ReloadRequests(mpsc::Receiver<Request>);

/// Requests waiting at most; a full queue already holds a reload that will read the newest files.
const QUEUED_REQUESTS: usize = 4;

impl ReloadHandle {
    pub fn channel() -> (Self, ReloadRequests) {
        let (tx, rx) = mpsc::channel(QUEUED_REQUESTS);
        (Self { tx }, ReloadRequests(rx))
    }

    /// Ask for a reload without waiting for it. When the queue is full the request is
    /// dropped: a reload still queued reads the files after this request was made.
    pub fn request(&self, trigger: Trigger) {
        let _ = self.tx.try_send(Request {
            trigger,
            reply: None,
        });
    }

    /// Reload and wait for the result.
    pub async fn reload(&self, trigger: Trigger) -> ReloadResult {
        let (reply, answer) = oneshot::channel();
        let gone = || "the gateway is not running".to_owned();
        self.tx
            .send(Request {
                trigger,
                reply: Some(reply),
            })
            .await
            .map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Serve reload requests and file changes one at a time until `stop`. `initial` describes
/// the config the gateway started with (its hash is published, its files watched).
pub async fn run<A: Apply>(
    mut requests: ReloadRequests,
    mut target: A,
    initial: Applied,
    stop: CancellationToken,
) {
    metrics::config_reloaded_registered();
    metrics::config_running(&initial.hash, None);
    let mut running_hash = initial.hash.clone();
    let mut watch = FileWatch::new();
    watch.follow(&initial);
    // When the last file change of a burst was seen plus the quiet time: read the files then.
    let mut due: Option<Instant> = None;
    // What the files held at the last such read: the reload waits for two reads that agree.
    let mut seen: Option<String> = None;
    loop {
        let (trigger, reply) = tokio::select! {
            () = stop.cancelled() => break,
            r = requests.0.recv() => match r {
                Some(r) => (r.trigger, r.reply),
                None => break,
            },
            Some(()) = watch.events.recv() => {
                due = Some(Instant::now() + watch.debounce);
                continue;
            }
            () = sleep_until(due), if due.is_some() => {
                let now = watch.fingerprint().await;
                if seen.as_ref() != Some(&now) {
                    // Still being written, or first read of this burst: read again later.
                    seen = Some(now);
                    due = Some(Instant::now() + watch.debounce);
                    continue;
                }
                due = None;
                seen = None;
                (Trigger::FileChange, None)
            }
        };
        let result = match target.apply(trigger).await {
            Ok(applied) => {
                metrics::config_reloaded("success");
                metrics::config_running(&applied.hash, Some(&running_hash));
                info!(
                    event = "reload",
                    trigger = trigger.label(),
                    hash = %applied.hash,
                    "config reloaded: {}",
                    applied.summary
                );
                running_hash = applied.hash.clone();
                watch.follow(&applied);
                Ok(applied.summary)
            }
            Err(e) => {
                metrics::config_reloaded("error");
                let why = format!("{e:#}");
                error!(
                    event = "reload",
                    trigger = trigger.label(),
                    error = %why,
                    hash = %running_hash,
                    "config reload refused; the running config stays"
                );
                Err(why)
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// SIGHUP, registered: from the moment this exists SIGHUP no longer kills the process.
pub struct Sighup(#[cfg(unix)] tokio::signal::unix::Signal);

impl Sighup {
    /// Register now, before the config is read, so no SIGHUP is lost or fatal during start.
    pub fn register() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self(signal(SignalKind::hangup())?))
        }
        #[cfg(not(unix))]
        Ok(Self())
    }

    /// Turn each SIGHUP into a reload request until `stop`.
    pub async fn forward(self, handle: ReloadHandle, stop: CancellationToken) {
        #[cfg(unix)]
        {
            let mut hup = self.0;
            loop {
                tokio::select! {
                    r = hup.recv() => {
                        if r.is_none() { break }
                        info!(event = "reload", "SIGHUP received: reloading the config");
                        handle.request(Trigger::Signal);
                    }
                    () = stop.cancelled() => break,
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = handle;
            stop.cancelled().await;
        }
    }
}

/// The watched files. Their folders are watched, not the files: editors, certbot and
/// Kubernetes replace a file by renaming another over it (Kubernetes swaps a `..data`
/// symlink), which a watch on the old file would never see.
struct FileWatch {
    watcher: Option<RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
    files: Arc<Mutex<HashSet<PathBuf>>>,
    debounce: Duration,
    /// One pending wake-up is enough: the reload reads every file anyway.
    events: mpsc::Receiver<()>,
    sender: mpsc::Sender<()>,
}

impl FileWatch {
    fn new() -> Self {
        let (sender, events) = mpsc::channel(1);
        Self {
            watcher: None,
            dirs: HashSet::new(),
            files: Arc::default(),
            debounce: Duration::ZERO,
            events,
            sender,
        }
    }

    /// Watch what `applied` names (or nothing, when it turns watching off).
    fn follow(&mut self, applied: &Applied) {
        let Some(debounce) = applied.watch else {
            self.watcher = None;
            self.dirs.clear();
            return;
        };
        self.debounce = debounce;
        let files: HashSet<PathBuf> = applied
            .files
            .iter()
            .filter_map(|f| std::path::absolute(f).ok())
            .collect();
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files;
        if self.watcher.is_none() {
            match self.start() {
                Ok(w) => self.watcher = Some(w),
                Err(e) => {
                    warn!(error = %e, "cannot watch the config files; reload with SIGHUP or POST /reload");
                    return;
                }
            }
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "cannot watch this folder for changes");
            }
        }
        self.dirs = dirs;
    }

    /// The watched files' contents, hashed together (a missing file counts as such).
    async fn fingerprint(&self) -> String {
        let mut files: Vec<PathBuf> = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        files.sort();
        let mut all = Vec::new();
        for f in files {
            all.extend_from_slice(f.as_os_str().as_encoded_bytes());
            match tokio::fs::read(&f).await {
                Ok(bytes) => {
                    all.extend_from_slice(config_hash(&bytes).as_bytes());
                    all.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                }
                Err(e) => all.extend_from_slice(format!("unreadable: {e}").as_bytes()),
            }
        }
        config_hash(&all)
    }

    fn start(&self) -> notify::Result<RecommendedWatcher> {
        let files = self.files.clone();
        let wake = self.sender.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let files = files.lock().unwrap_or_else(|e| e.into_inner());
            if is_change_of(&event, &files) {
                let _ = wake.try_send(());
            }
        })
    }
}

/// Whether `event` in a watched folder changes one of `files` (or swaps a Kubernetes
/// `..data` link, behind which every file of a ConfigMap or Secret volume lives).
fn is_change_of(event: &notify::Event, files: &HashSet<PathBuf>) -> bool {
    // Reading the files (our own reload among others) is not a change: counting it would
    // make every reload trigger the next.
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        files.contains(p)
            || p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".."))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload reads the files it watches: the read must not count as a change, or each
    /// reload would trigger the next one forever.
    #[test]
    fn reads_are_not_changes_and_only_watched_files_count() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        let files = HashSet::from([PathBuf::from("/etc/wsgate/wsgate.toml")]);
        let event = |kind, path: &str| notify::Event::new(kind).add_path(PathBuf::from(path));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!is_change_of(
            &event(read, "/etc/wsgate/wsgate.toml"),
            &files
        ));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(is_change_of(
            &event(renamed, "/etc/wsgate/wsgate.toml"),
            &files
        ));
        let written = EventKind::Modify(ModifyKind::Any);
        assert!(!is_change_of(
            &event(written, "/etc/wsgate/other.toml"),
            &files
        ));
        let swapped = EventKind::Create(CreateKind::Any);
        assert!(is_change_of(&event(swapped, "/etc/wsgate/..data"), &files));
    }

    #[test]
    fn hash_is_sha256_prefix() {
        // sha256("") = e3b0c44298fc1c14...
        assert_eq!(config_hash(b""), "e3b0c44298fc1c14");
    }
}
