//! Recording onto a full disk, under both policies: a 256 KiB tmpfs mounted for the test
//! (root can; where mounting is not allowed the full-disk tests print a skip line, and the
//! refusals run on what needs no small file system: `min_free_bytes` above what the disk
//! has, and a folder that cannot be made). `best_effort` keeps the session whole and says in
//! the metadata that the recording was cut short; `required` closes a session whose
//! recording fails with 1011, and refuses with 503, before the upgrade and with a log line
//! saying why, a session whose file cannot be created (no inode left) or whose disk has less
//! than `min_free_bytes` free; `best_effort` serves that session unrecorded.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// How much the backend pushes through a recorded session: eight times what the disk holds.
const SESSION_BYTES: usize = 2 << 20;

/// A tmpfs mounted on a temporary folder, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `mount -t tmpfs -o OPTIONS`; the reason when this machine does not allow it.
    fn mount(options: &str) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "wsgate-test"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs -o {options}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes free for the gateway's user, as its `min_free_bytes` check reads them.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(self.path()).expect("statvfs");
        st.f_bavail * st.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still in use (a test that failed with a file open): detach it.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// A tmpfs for a test that cannot run without one, or `None` with a line saying why.
fn small_disk(test: &str, options: &str) -> Option<SmallDisk> {
    match SmallDisk::mount(options) {
        Ok(disk) => Some(disk),
        Err(why) => {
            say(&format!(
                "SKIPPED {test}: a full disk needs a small file system to fill, and {why}"
            ));
            None
        }
    }
}

/// Straight to stderr: libtest hides what a passing test prints with `eprintln!`.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The payload bytes of each kind in a raw recording, and its markers' texts.
fn raw_contents(file: &Path) -> (u64, Vec<String>) {
    let mut r = wsgate::record::replay::Recording::open(file).expect("the recording reads");
    let (mut payload, mut markers) = (0u64, Vec::new());
    while let Some(e) = r.next_event().expect("records read") {
        match e.kind {
            wsgate::record::raw::Kind::Marker => {
                markers.push(String::from_utf8_lossy(&e.data).into_owned())
            }
            _ => payload += e.data.len() as u64,
        }
    }
    (payload, markers)
}

/// Push `SESSION_BYTES` of the test pattern from the backend in 16 KiB writes (stopping when
/// the gateway closes the connection), then close it.
fn push_pattern(mut backend: tokio::net::TcpStream) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let all = pattern(0, SESSION_BYTES);
        let mut sent = 0;
        for piece in all.chunks(16 * 1024) {
            if backend.write_all(piece).await.is_err() {
                return sent;
            }
            sent += piece.len();
        }
        let _ = backend.shutdown().await;
        sent
    })
}

/// Data messages until the Close (answered): what arrived, and the Close's code and reason.
async fn read_until_close(ws: &mut WsClient) -> (Vec<u8>, Option<(u16, String)>) {
    let mut data = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("the session moves or ends within 15 s");
        match next {
            Some(Ok(Message::Binary(b))) => data.extend_from_slice(&b),
            Some(Ok(Message::Text(t))) => data.extend_from_slice(t.as_bytes()),
            Some(Ok(Message::Close(frame))) => {
                let close = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                });
                // Answer it, so the session ends now rather than at the close timeout.
                finish_close(ws).await;
                return (data, Some(close));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (data, None),
        }
    }
}

/// The recording's file name ends neither in `.part` nor, for its metadata, is missing.
fn assert_no_part_files(dir: &Path) {
    let files: Vec<PathBuf> = files_under(dir);
    assert!(
        files
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".part")),
        "a .part is left behind: {files:?}"
    );
}

/// Regression: a recording that filled its disk got no metadata at all (no room left for it,
/// so nothing said the file was cut short); the bytes still queued when the write failed
/// were counted as recorded; and the metadata did not wait for the session's end.
#[tokio::test]
async fn best_effort_on_a_full_disk_still_writes_the_metadata_saying_truncated_and_the_session_stays_whole(
) {
    let test = "best_effort_on_a_full_disk_still_writes_the_metadata_saying_truncated_and_the_session_stays_whole";
    let Some(disk) = small_disk(test, "size=256k,mode=0700") else {
        return;
    };
    let (backend, mut accepted) = tcp_backend().await;
    let gw = recorded_gateway(
        "disk_best",
        &format!("tcp://{backend}"),
        disk.path(),
        "min_free_bytes = 0",
    )
    .await;
    let admin = gw.admin.expect("admin listener");
    let mut ws = ws_client(&gw.url("/")).await;
    let pusher = push_pattern(accepted.recv().await.expect("the gateway dials"));
    let (seen, close) = read_until_close(&mut ws).await;
    assert_eq!(pusher.await.unwrap(), SESSION_BYTES);
    assert_eq!(close.map(|c| c.0), Some(1000), "the session ends normally");
    assert_eq!(seen.len(), SESSION_BYTES, "every byte reaches the client");
    assert!(seen == pattern(0, SESSION_BYTES), "the bytes arrive intact");

    let (file, meta) = recordings(disk.path(), 1).await.remove(0);
    assert_eq!(meta["truncated"], true, "{meta}");
    let error = meta["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left"), "{meta}");
    assert_eq!(meta["bytes_to_client"], SESSION_BYTES, "{meta}");
    let (in_file, _) = raw_contents(&file);
    let recorded = meta["recorded_bytes"].as_u64().unwrap();
    let dropped = meta["dropped_bytes"].as_u64().unwrap();
    assert!(in_file > 0 && dropped > 0, "{meta}");
    assert_eq!(
        recorded, in_file,
        "recorded_bytes is what the file holds: {meta}"
    );
    assert_eq!(
        recorded + dropped,
        SESSION_BYTES as u64,
        "every byte is recorded or counted as dropped: {meta}"
    );
    assert_eq!(
        meta["file_bytes"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len()),
        "{meta}"
    );
    assert_no_part_files(disk.path());
    let page = scrape(admin).await;
    assert_eq!(
        metric(
            &page,
            "wsgate_recording_failures_total{route=\"disk_best\",stage=\"write\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "wsgate_recording_dropped_bytes_total{route=\"disk_best\"}"
        ),
        Some(dropped as f64),
        "every byte left out is counted"
    );
    let write_error =
        "wsgate_recording_dropped_bytes_total{route=\"disk_best\",cause=\"write_error\"}";
    assert!(metric(&page, write_error).unwrap_or(0.0) > 0.0, "{page}");

    gw.stop().await.unwrap();
}

/// Regression: as above, and the metadata of a session closed for its failed recording
/// (had there been room) said `close_code: 0`, written before the session closed.
#[tokio::test]
async fn required_on_a_full_disk_closes_with_1011_and_the_metadata_still_records_the_sessions_end()
{
    let test =
        "required_on_a_full_disk_closes_with_1011_and_the_metadata_still_records_the_sessions_end";
    let Some(disk) = small_disk(test, "size=256k,mode=0700") else {
        return;
    };
    let (backend, mut accepted) = tcp_backend().await;
    let gw = recorded_gateway(
        "disk_required",
        &format!("tcp://{backend}"),
        disk.path(),
        // A short queue ties the session to its writer: with the default 1024 chunks the
        // whole session could be queued before the disk fills, and end normally with nothing
        // left to move when the failure is known.
        "policy = \"required\"\nmin_free_bytes = 0\nqueue_chunks = 4",
    )
    .await;
    let admin = gw.admin.expect("admin listener");
    let mut ws = ws_client(&gw.url("/")).await;
    let pusher = push_pattern(accepted.recv().await.expect("the gateway dials"));
    let (seen, close) = read_until_close(&mut ws).await;
    assert_eq!(
        close,
        Some((1011, "session recording failed".to_owned())),
        "after {} bytes",
        seen.len()
    );
    assert!(
        seen.len() < SESSION_BYTES,
        "the session ended before its end"
    );
    assert!(
        seen == pattern(0, seen.len()),
        "what arrived is intact up to the close"
    );
    let _ = pusher.await;

    let (file, meta) = recordings(disk.path(), 1).await.remove(0);
    assert_eq!(meta["truncated"], true, "{meta}");
    assert_eq!(meta["close_code"], 1011, "{meta}");
    assert_eq!(meta["closed_by"], "gateway", "{meta}");
    let (in_file, _) = raw_contents(&file);
    assert!(in_file > 0, "what fitted is kept: {meta}");
    assert_eq!(meta["recorded_bytes"], in_file, "{meta}");
    assert_no_part_files(disk.path());
    expect_metric(
        admin,
        "wsgate_recording_failures_total{route=\"disk_required\",stage=\"write\"}",
        1.0,
    )
    .await;
    gw.stop().await.unwrap();
}

/// The only test here that reads the log, and the only one whose sessions log these lines:
/// `tracing` caches a call site's interest process-wide, so a concurrent test hitting the
/// same call site on another thread could hide it from this test's scoped subscriber.
#[tokio::test]
async fn without_room_for_its_recording_a_session_is_refused_with_503_under_required_and_says_why()
{
    let (logs, _guard) = capture_logs();
    let test =
        "without_room_for_its_recording_a_session_is_refused_with_503_under_required_and_says_why";
    let echo = tcp_echo_backend().await;

    // A file system with no inode left: not even the date's folder can be made. Without a
    // mount, a regular file where the folder should be does the same.
    let no_inode = SmallDisk::mount("size=256k,nr_inodes=1,mode=0700");
    let fallback = tempfile::tempdir().unwrap();
    let (dir, why) = match &no_inode {
        Ok(d) => {
            say(&format!("{test}: a tmpfs with no inode left"));
            (d.path().to_path_buf(), "No space left on device")
        }
        Err(e) => {
            say(&format!("{test}: a file where the folder should be ({e})"));
            let blocked = fallback.path().join("not-a-folder");
            std::fs::write(&blocked, b"x").unwrap();
            (blocked, "Not a directory")
        }
    };
    let gw = recorded_gateway(
        "disk_no_file",
        &format!("tcp://{echo}"),
        &dir,
        "policy = \"required\"\nmin_free_bytes = 0",
    )
    .await;
    let (status, answer) = upgrade_with(gw.addr, "/", &[]).await;
    assert_eq!(status, 503, "{answer}");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("session recording could not be created"))
        .unwrap_or_else(|| panic!("no log line says why: {text}"));
    assert!(line.contains(why), "{line}");
    let page = scrape(gw.admin.expect("admin listener")).await;
    assert_eq!(
        metric(&page, &rejections("disk_no_file", "recording_unavailable")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "wsgate_recording_failures_total{route=\"disk_no_file\",stage=\"create\"}"
        ),
        Some(1.0)
    );
    gw.stop().await.unwrap();

    // The same disk under best_effort: the session is served unrecorded, and counted.
    let gw = recorded_gateway(
        "disk_no_file_best",
        &format!("tcp://{echo}"),
        &dir,
        "min_free_bytes = 0",
    )
    .await;
    let mut ws = ws_client(&gw.url("/")).await;
    assert_echoes(&mut ws, b"unrecorded but served").await;
    ws.close(None).await.unwrap();
    finish_close(&mut ws).await;
    expect_metric(
        gw.admin.expect("admin listener"),
        "wsgate_recording_failures_total{route=\"disk_no_file_best\",stage=\"create\"}",
        1.0,
    )
    .await;
    gw.stop().await.unwrap();

    // Less free than min_free_bytes: 128 KiB wanted, a filler leaves 64 KiB of 256 KiB.
    // Without a mount, more than any disk has.
    let small = SmallDisk::mount("size=256k,mode=0700");
    let (dir, min_free, filler) = match &small {
        Ok(d) => {
            say(&format!(
                "{test}: a 256 KiB tmpfs with 64 KiB free and min_free_bytes = 128 KiB"
            ));
            let filler = d.path().join("filler");
            std::fs::write(&filler, vec![7u8; 192 << 10]).unwrap();
            assert!(d.free() < 128 << 10, "{} bytes free", d.free());
            (d.path().to_path_buf(), 128u64 << 10, Some(filler))
        }
        Err(e) => {
            say(&format!(
                "{test}: min_free_bytes = 2^60 on the temporary folder's disk ({e})"
            ));
            (fallback.path().to_path_buf(), 1u64 << 60, None)
        }
    };
    let gw = recorded_gateway(
        "disk_min_free",
        &format!("tcp://{echo}"),
        &dir,
        &format!("policy = \"required\"\nmin_free_bytes = {min_free}"),
    )
    .await;
    let (status, answer) = upgrade_with(gw.addr, "/", &[]).await;
    assert_eq!(status, 503, "{answer}");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("session recording could not be created")
                && l.contains(&format!("under min_free_bytes ({min_free})"))),
        "no log line says why: {text}"
    );
    // With the space back, the same route records again.
    if let Some(filler) = filler {
        std::fs::remove_file(filler).unwrap();
        let mut ws = ws_client(&gw.url("/")).await;
        assert_echoes(&mut ws, b"recorded again").await;
        ws.close(None).await.unwrap();
        finish_close(&mut ws).await;
        let (_, meta) = recordings(&dir, 1).await.remove(0);
        assert_eq!(meta["truncated"], false, "{meta}");
    }
    gw.stop().await.unwrap();
}
