//! Retention: after a recording closes, its route's recordings older than `max_age_secs` are
//! deleted, then the oldest ones until the folder fits `max_total_bytes`. Recordings being
//! written (`.part`) are never touched; a recording's metadata goes with it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use metrics::counter;

use super::files::metadata_path;
use super::RecordSettings;
use crate::metrics::RECORDING_DELETIONS_TOTAL;

/// One finished recording on disk.
struct Found {
    path: PathBuf,
    modified: SystemTime,
    /// The recording and its metadata together.
    bytes: u64,
}

/// Sweep `settings.dir` (blocking). Does nothing without a quota or a maximum age, or while
/// another sweep of the same route runs.
pub(super) fn run(settings: &RecordSettings, now: SystemTime) {
    if settings.max_total_bytes.is_none() && settings.max_age.is_none() {
        return;
    }
    if settings.sweeping.swap(true, Ordering::AcqRel) {
        return;
    }
    let deleted = sweep(settings, now);
    settings.sweeping.store(false, Ordering::Release);
    if deleted > 0 {
        tracing::info!(
            route = &*settings.route,
            deleted,
            "recordings deleted by the retention limits"
        );
    }
}

fn sweep(settings: &RecordSettings, now: SystemTime) -> usize {
    let mut found = Vec::new();
    let mut total = 0u64;
    collect(&settings.dir, 0, &mut found, &mut total);
    found.sort_by_key(|f| f.modified);
    let mut deleted = 0;
    let route = settings.route.to_string();
    let delete = |f: &Found, reason: &'static str| {
        let _ = std::fs::remove_file(metadata_path(&f.path));
        if std::fs::remove_file(&f.path).is_ok() {
            counter!(RECORDING_DELETIONS_TOTAL, "route" => route.clone(), "reason" => reason)
                .increment(1);
            if let Some(folder) = f.path.parent() {
                // Only succeeds when empty: the route's and then the date's folder.
                let _ = std::fs::remove_dir(folder);
                if let Some(date) = folder.parent() {
                    let _ = std::fs::remove_dir(date);
                }
            }
            true
        } else {
            false
        }
    };
    let mut kept = Vec::with_capacity(found.len());
    for f in found {
        let too_old = settings.max_age.is_some_and(|age| {
            now.duration_since(f.modified)
                .is_ok_and(|elapsed| elapsed > age)
        });
        if too_old && delete(&f, "age") {
            total = total.saturating_sub(f.bytes);
            deleted += 1;
        } else {
            kept.push(f);
        }
    }
    if let Some(quota) = settings.max_total_bytes {
        for f in &kept {
            if total <= quota {
                break;
            }
            if delete(f, "quota") {
                total = total.saturating_sub(f.bytes);
                deleted += 1;
            }
        }
    }
    deleted
}

/// Recordings under `dir` (layout `DATE/ROUTE/FILE`: depth 2), and every file's size into
/// `total` (metadata and `.part` files count against the quota too).
fn collect(dir: &Path, depth: u8, found: &mut Vec<Found>, total: &mut u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let path = entry.path();
        if meta.is_dir() {
            if depth < 2 {
                collect(&path, depth + 1, found, total);
            }
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        *total += meta.len();
        let is_recording = path
            .extension()
            .is_some_and(|e| e == "cast" || e == "wsrec");
        if depth == 2 && is_recording {
            let meta_bytes = std::fs::metadata(metadata_path(&path)).map_or(0, |m| m.len());
            found.push(Found {
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                path,
                bytes: meta.len() + meta_bytes,
            });
        }
    }
}
