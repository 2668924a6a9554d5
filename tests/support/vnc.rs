//! A real VNC desktop for noVNC tests: Xvfb on a free display, x11vnc serving it on a
//! loopback port, and a Tk window (`wish`, which Debian's x11vnc depends on) painting
//! something recognisable on it; Debian's noVNC files (`WSGATE_NOVNC` or /usr/share/novnc).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::browser::find_tool;
use super::gateway::{free_port, wait_for_listener};

/// noVNC's folder when it, Xvfb, x11vnc and `programs` (`(binary, Debian package)`) are all
/// installed; else `None` outside CI (with a skip line) and a panic under `CI`.
pub fn novnc_tools(test: &str, programs: &[(&str, &str)]) -> Option<PathBuf> {
    let novnc = PathBuf::from(
        std::env::var_os("WSGATE_NOVNC").unwrap_or_else(|| "/usr/share/novnc".into()),
    );
    let mut missing = Vec::new();
    if !novnc.join("core/rfb.js").is_file() {
        missing.push("novnc");
    }
    for &(bin, package) in [("Xvfb", "xvfb"), ("x11vnc", "x11vnc")]
        .iter()
        .chain(programs)
    {
        if find_tool("", bin).is_none() {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Some(novnc);
    }
    let msg = format!(
        "not installed: {} (apt-get install {})",
        missing.join(", "),
        missing.join(" ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {msg}; CI must run the noVNC tests (.ci/run installs them)");
    }
    // Straight to stderr: libtest hides what a passing test prints with `eprintln!`.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {msg}");
    None
}

/// An X display and a VNC server for it; both (and whatever was painted) end on drop.
pub struct VncDesktop {
    /// x11vnc's loopback address.
    pub addr: SocketAddr,
    /// `:N`.
    pub display: String,
    _xvfb: Child,
    _x11vnc: Child,
    painters: Vec<Child>,
}

impl VncDesktop {
    /// Xvfb at `width`x`height`, 24 bits deep, and x11vnc (no password, loopback only).
    pub async fn start(width: u16, height: u16) -> VncDesktop {
        let number = 100 + free_port() % 800;
        let display = format!(":{number}");
        let xvfb = Command::new("Xvfb")
            .args([display.as_str(), "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            .args(["-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Xvfb starts");
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
        tokio::time::timeout(Duration::from_secs(10), async {
            while !socket.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("Xvfb is up within 10 s");
        let x11vnc = Command::new("x11vnc")
            .args(["-display", display.as_str(), "-rfbport"])
            .arg(port.to_string())
            .args(["-localhost", "-nopw", "-forever", "-shared", "-quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("x11vnc starts");
        wait_for_listener(addr).await;
        VncDesktop {
            addr,
            display,
            _xvfb: xvfb,
            _x11vnc: x11vnc,
            painters: Vec::new(),
        }
    }

    /// Cover the screen's four quadrants with [`QUADRANTS`]' colours (top left, top right,
    /// bottom left, bottom right) in a borderless Tk window at 0,0; returns once it is shown.
    pub async fn paint_quadrants(&mut self, width: u16, height: u16) {
        let (w, h) = (width / 2, height / 2);
        let [a, b, c, d] = QUADRANTS.map(|[r, g, b]| format!("#{r:02x}{g:02x}{b:02x}"));
        let script = format!(
            "wm overrideredirect . 1\nwm geometry . {width}x{height}+0+0\n\
             canvas .c -width {width} -height {height} -highlightthickness 0 -borderwidth 0\n\
             pack .c\n\
             .c create rectangle 0 0 {w} {h} -fill {a} -width 0\n\
             .c create rectangle {w} 0 {width} {h} -fill {b} -width 0\n\
             .c create rectangle 0 {h} {w} {height} -fill {c} -width 0\n\
             .c create rectangle {w} {h} {width} {height} -fill {d} -width 0\n\
             update\nputs painted\nflush stdout\n"
        );
        let dir = tempfile::tempdir().expect("script folder");
        let file = dir.path().join("paint.tcl");
        std::fs::write(&file, script).expect("script written");
        let mut wish = Command::new("wish")
            .arg(&file)
            .env("DISPLAY", &self.display)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("wish starts");
        let mut lines = BufReader::new(wish.stdout.take().expect("piped")).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("wish paints within 10 s");
        assert_eq!(line.ok().flatten().as_deref(), Some("painted"));
        self.painters.push(wish);
    }
}

/// What [`VncDesktop::paint_quadrants`] paints: red, green, blue, yellow.
pub const QUADRANTS: [[u8; 3]; 4] = [
    [0xe0, 0x20, 0x20],
    [0x20, 0xc0, 0x40],
    [0x30, 0x40, 0xe0],
    [0xf0, 0xd0, 0x20],
];

/// Whether two colours are the same up to `tolerance` per channel (lossy encodings).
pub fn near(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tolerance)
}
