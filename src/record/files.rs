//! Where a recording lives on disk and how it gets there: `dir/YYYY-MM-DD/ROUTE/NAME`, folders
//! mode 0700, the file written as `NAME.part` (created exclusively, mode 0600) and linked to
//! its final name on close, so a name never points at half a recording and nothing is ever
//! overwritten.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A recording file being written.
pub struct PartFile {
    pub file: File,
    /// `….part`, while it is written.
    pub part: PathBuf,
    /// The name it gets on close.
    pub final_path: PathBuf,
}

/// Create `dir/DATE/ROUTE/STAMP-sSESSION.EXT.part` (a `-N` suffix if that name is taken).
pub fn create(
    dir: &Path,
    route: &str,
    session_id: u64,
    ext: &str,
    now: SystemTime,
) -> io::Result<PartFile> {
    let (date, stamp) = date_and_stamp(now);
    let folder = dir.join(date).join(route);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)?;
    for n in 0..100u32 {
        let stem = if n == 0 {
            format!("{stamp}-s{session_id}")
        } else {
            format!("{stamp}-s{session_id}-{n}")
        };
        let final_path = folder.join(format!("{stem}.{ext}"));
        let part = folder.join(format!("{stem}.{ext}.part"));
        if final_path.exists() {
            continue;
        }
        match new_file(&part) {
            Ok(file) => {
                return Ok(PartFile {
                    file,
                    part,
                    final_path,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("no free recording name in {}", folder.display()),
    ))
}

/// A new file, mode 0600; fails when the name exists (`O_EXCL`).
pub fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Give a finished `.part` its final name without replacing anything there (a hard link
/// fails when the name exists), then drop the `.part` name.
pub fn publish(part: &Path, final_path: &Path) -> io::Result<()> {
    std::fs::hard_link(part, final_path)?;
    std::fs::remove_file(part)
}

/// The metadata beside a recording: `NAME.json`, created exclusively, mode 0600.
pub fn write_metadata(final_path: &Path, metadata: &serde_json::Value) -> io::Result<PathBuf> {
    let path = metadata_path(final_path);
    let mut f = new_file(&path)?;
    let mut text = serde_json::to_vec_pretty(metadata).map_err(io::Error::other)?;
    text.push(b'\n');
    f.write_all(&text)?;
    f.sync_all()?;
    Ok(path)
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
        let a = create(dir.path(), "term", 1, "cast", now).unwrap();
        let mode = a.file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let folder_mode = std::fs::metadata(a.part.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(folder_mode, 0o700);
        assert!(a.part.to_string_lossy().ends_with(".cast.part"));
        // The same session id in the same second gets another name.
        let b = create(dir.path(), "term", 1, "cast", now).unwrap();
        assert_ne!(a.part, b.part);
        publish(&a.part, &a.final_path).unwrap();
        assert!(a.final_path.exists() && !a.part.exists());
        // Publishing onto an existing name fails instead of replacing it.
        assert!(publish(&b.part, &a.final_path).is_err());
        assert!(new_file(&a.final_path).is_err());
    }
}
