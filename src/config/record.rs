//! `[route.record]`: what a route's session recordings look like and how much disk they may
//! take (the recorder itself is `crate::record`).

use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// `[route.record]`: record every session of this route to files under `dir`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// Folder the recordings go under (`dir/YYYY-MM-DD/ROUTE/…`), relative to the config
    /// file's folder. Created (mode 0700) when missing. Required.
    pub dir: PathBuf,
    /// `raw` (default: any route, both directions as bytes) or `asciicast` (terminal routes:
    /// asciicast v2, played by `asciinema play`).
    #[serde(default)]
    pub format: RecordFormat,
    /// Also record what the client sends (keystrokes, passwords included). Default false.
    #[serde(default)]
    pub input: bool,
    /// `best_effort` (default: a recorder that falls behind drops and marks a gap) or
    /// `required` (a session whose recording cannot be created is refused with 503, one
    /// whose recording fails is closed with 1011; a full queue holds the session back).
    #[serde(default)]
    pub policy: RecordPolicy,
    /// Chunks of session data the writer may have queued per session. Default 1024.
    #[serde(default = "default_queue_chunks")]
    pub queue_chunks: usize,
    /// Most bytes recorded per session; past it a marker is written and the session goes on
    /// unrecorded. 0 = no cap. Default 268435456 (256 MiB).
    #[serde(default = "default_max_session_bytes")]
    pub max_session_bytes: u64,
    /// Longest a session is recorded, in seconds; past it a marker, then unrecorded.
    /// 0 = no cap. Default 0.
    #[serde(default)]
    pub max_session_secs: u64,
    /// Quota for everything under `dir`, in bytes: after each recording closes, the oldest
    /// recordings are deleted until the folder fits. 0 = no quota. Default 0.
    #[serde(default)]
    pub max_total_bytes: u64,
    /// Recordings older than this many seconds are deleted after each recording closes.
    /// 0 = kept forever. Default 0.
    #[serde(default)]
    pub max_age_secs: u64,
    /// A recording starts only while the file system holding `dir` has at least this many
    /// bytes free (else it is a recording that cannot be created). 0 = no check. Default
    /// 104857600 (100 MiB).
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// asciicast: the terminal width in the header, in columns. Default 80.
    #[serde(default = "default_width")]
    pub width: u16,
    /// asciicast: the terminal height in the header, in rows. Default 24.
    #[serde(default = "default_height")]
    pub height: u16,
}

/// The file format of a route's recordings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// wsgate's raw format (`.wsrec`): metadata header, then timed records per direction.
    #[default]
    Raw,
    /// asciicast v2 (`.cast`): newline-delimited JSON for asciinema.
    Asciicast,
}

/// What happens when a recording cannot keep up or fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordPolicy {
    /// The session never waits: data the writer has no room for is dropped, a gap marker is
    /// written and counted; a recording that cannot be created or fails is given up.
    #[default]
    BestEffort,
    /// The session is refused without a recording and ends when its recording fails.
    Required,
}

fn default_queue_chunks() -> usize {
    1024
}

fn default_max_session_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_min_free_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_width() -> u16 {
    80
}

fn default_height() -> u16 {
    24
}

impl RecordConfig {
    /// A recording into `dir` with every other key at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            format: RecordFormat::default(),
            input: false,
            policy: RecordPolicy::default(),
            queue_chunks: default_queue_chunks(),
            max_session_bytes: default_max_session_bytes(),
            max_session_secs: 0,
            max_total_bytes: 0,
            max_age_secs: 0,
            min_free_bytes: default_min_free_bytes(),
            width: default_width(),
            height: default_height(),
        }
    }

    /// The checks that need nothing but the file; `at` names the route (`route[2]`).
    pub fn validate(&self, at: &str, route_name: &str) -> anyhow::Result<()> {
        if self.dir.as_os_str().is_empty() {
            bail!("{at}.record.dir: must name a folder");
        }
        if matches!(route_name, "." | "..") {
            bail!("{at}.record: the route's name {route_name:?} cannot name a recording folder");
        }
        if self.queue_chunks == 0 || self.queue_chunks > 1 << 20 {
            bail!(
                "{at}.record.queue_chunks: must be 1..=1048576, got {}",
                self.queue_chunks
            );
        }
        if self.width == 0 || self.height == 0 {
            bail!("{at}.record.width/height: must be at least 1");
        }
        Ok(())
    }
}
