//! Where a recording lives on disk and how it gets there: `dir/YYYY-MM-DD/ROUTE/NAME`, folders
//! mode 0700, the file written as `NAME.part` (created exclusively, mode 0600) and linked to
//! its final name on close, so a name never points at half a recording and nothing is ever
//! overwritten. The metadata's room is taken when the recording starts (`NAME.json.part`),
//! so a disk that fills up during the session still has space for the metadata that says
//! the recording was cut short.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A recording file being written, and the room reserved for its metadata.
pub struct PartFile {
    pub file: File,
    pub name: PartName,
    /// `NAME.json.part`, [`METADATA_RESERVE`] bytes long until the metadata is written in.
    pub metadata: File,
}

/// Bytes written into a recording's metadata file when the recording starts, so the file
/// system has given them before the session can fill it. Metadata is well under this
/// (a `User-Agent` is cut at 256 characters); a longer one still grows the file.
pub const METADATA_RESERVE: usize = 4096;

/// Where a recording is written, and what its final name is made of.
#[derive(Debug, Clone)]
pub struct PartName {
    /// `….part`, while it is written.
    pub part: PathBuf,
    /// `….json.part`: the metadata's reserved room until it is written and linked.
    pub metadata_part: PathBuf,
    /// `DIR/DATE/ROUTE`.
    pub folder: PathBuf,
    /// `YYYYMMDDTHHMMSSZ` of the start: the final name begins with it.
    pub stamp: String,
    pub ext: &'static str,
}

/// Tells apart the `.part` files of sessions that start in the same second.
static NEXT_PART: AtomicU64 = AtomicU64::new(0);

/// Create `dir/DATE/ROUTE/STAMP-N.EXT.part` before the session has an id (it is refused or
/// accepted on whether this works); [`publish`] names it after the session.
pub fn create(dir: &Path, route: &str, ext: &'static str, now: SystemTime) -> io::Result<PartFile> {
    let (date, stamp) = date_and_stamp(now);
    let folder = dir.join(date).join(route);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)?;
    for _ in 0..100 {
        let n = NEXT_PART.fetch_add(1, Ordering::Relaxed);
        let base = format!("{stamp}-{}-{n}.{ext}", std::process::id());
        let part = folder.join(format!("{base}.part"));
        let metadata_part = folder.join(format!("{base}.json.part"));
        let file = match new_file(&part) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let reserved = new_file(&metadata_part).and_then(|mut m| {
            m.write_all(&[b' '; METADATA_RESERVE])?;
            Ok(m)
        });
        match reserved {
            Ok(metadata) => {
                return Ok(PartFile {
                    file,
                    name: PartName {
                        part,
                        metadata_part,
                        folder,
                        stamp,
                        ext,
                    },
                    metadata,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = std::fs::remove_file(&part);
                continue;
            }
            Err(e) => {
                // No room for the metadata: no recording (a full disk refuses it here,
                // before the session starts, rather than in its first write).
                let _ = std::fs::remove_file(&part);
                let _ = std::fs::remove_file(&metadata_part);
                return Err(e);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free recording name in {}", folder.display()),
    ))
}

/// Give a finished `.part` its final name, `STAMP-sSESSION.EXT` (a `-N` suffix when taken),
/// without replacing anything (a hard link fails when the name exists), then drop the
/// `.part` name. Returns the final path.
pub fn publish(part: &PartName, session_id: u64) -> io::Result<PathBuf> {
    for n in 0..100u32 {
        let name = if n == 0 {
            format!("{}-s{session_id}.{}", part.stamp, part.ext)
        } else {
            format!("{}-s{session_id}-{n}.{}", part.stamp, part.ext)
        };
        let final_path = part.folder.join(name);
        match std::fs::hard_link(&part.part, &final_path) {
            Ok(()) => {
                std::fs::remove_file(&part.part)?;
                return Ok(final_path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free recording name in {}", part.folder.display()),
    ))
}

/// Fail unless the file system holding `dir` (or its nearest existing parent) has at least
/// `min_free` bytes available to the gateway's user. 0 checks nothing.
pub fn check_free_space(dir: &Path, min_free: u64) -> io::Result<()> {
    if min_free == 0 {
        return Ok(());
    }
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing).map_err(io::Error::from)?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < min_free {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{} has {free} bytes free, under min_free_bytes ({min_free})",
                existing.display()
            ),
        ));
    }
    Ok(())
}

/// A new file, mode 0600; fails when the name exists (`O_EXCL`).
pub fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// The metadata beside a recording: `NAME.json`, mode 0600, written over the room reserved
/// for it at the start (`reserved`, named `reserved_path`) and linked into place whole, like
/// the recording: a reader (an indexer, a sweep, a test) never sees a half-written metadata
/// file, and an existing one is never overwritten.
pub fn write_metadata(
    final_path: &Path,
    metadata: &serde_json::Value,
    mut reserved: File,
    reserved_path: &Path,
) -> io::Result<PathBuf> {
    let path = metadata_path(final_path);
    let mut text = serde_json::to_vec_pretty(metadata).map_err(io::Error::other)?;
    text.push(b'\n');
    let written = reserved
        .seek(SeekFrom::Start(0))
        .and_then(|_| reserved.write_all(&text))
        .and_then(|()| reserved.set_len(text.len() as u64))
        .and_then(|()| reserved.sync_all())
        .and_then(|()| std::fs::hard_link(reserved_path, &path));
    let _ = std::fs::remove_file(reserved_path);
    written.map(|()| path)
}

/// `….cast` → `….cast.json`.
pub fn metadata_path(recording: &Path) -> PathBuf {
    let mut name = recording.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `YYYY-MM-DD` and `YYYYMMDDTHHMMSSZ`, in UTC.
fn date_and_stamp(t: SystemTime) -> (String, String) {
    let (y, mo, d, h, mi, s) = civil(unix_ms(t) / 1000);
    (
        format!("{y:04}-{mo:02}-{d:02}"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

/// RFC 3339 in UTC with milliseconds: `2026-12-07T17:10:01.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let (y, mo, d, h, mi, s) = civil(ms / 1000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

/// Seconds since the epoch → (year, month, day, hour, minute, second) in UTC (the
/// days-from-civil inverse from Howard Hinnant's date algorithms).
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_calendar_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_663_401_123);
        assert_eq!(rfc3339(t), "2026-12-07T17:10:01.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(date_and_stamp(leap).0, "2000-02-29");
    }

    #[test]
    fn files_are_private_exclusive_and_published_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let a = create(dir.path(), "term", "cast", now).unwrap();
        let mode = a.file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let folder_mode = std::fs::metadata(&a.name.folder)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(folder_mode, 0o700);
        assert!(a.name.part.to_string_lossy().ends_with(".cast.part"));
        // The metadata's room is taken at the start, as private as the recording.
        let reserved = std::fs::metadata(&a.name.metadata_part).unwrap();
        assert_eq!(reserved.len(), METADATA_RESERVE as u64);
        assert_eq!(reserved.permissions().mode() & 0o777, 0o600);
        let b = create(dir.path(), "term", "cast", now).unwrap();
        assert_ne!(a.name.part, b.name.part);
        let first = publish(&a.name, 1).unwrap();
        assert!(first.exists() && !a.name.part.exists());
        // The same session id in the same second (a restarted gateway): another name.
        let second = publish(&b.name, 1).unwrap();
        assert_ne!(first, second);
        assert!(new_file(&first).is_err());
    }

    #[test]
    fn too_little_free_space_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_free_space(&dir.path().join("not/yet"), 1).unwrap();
        let err = check_free_space(dir.path(), u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
