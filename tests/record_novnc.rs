//! A noVNC session recorded raw and played back to an unmodified noVNC: Debian's noVNC (`RFB`
//! from `WSGATE_NOVNC` or /usr/share/novnc) in headless Chromium views a real desktop (x11vnc
//! on Xvfb, four coloured quadrants painted by Tk's `wish`) through a route with
//! `[route.record] format = "raw"`; once the session is over and its recording has its final
//! name, the real `wsgate replay FILE --ws` serves it and the same noVNC page, pointed at the
//! replay, draws the very canvas it drew live (same size, same pixels). The replayed page's
//! screenshot is decoded and shows the quadrants where the canvas is. Without Chromium,
//! noVNC, Xvfb, x11vnc or wish the test fails under `CI` and prints a skip otherwise.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const WIDTH: u16 = 320;
const HEIGHT: u16 = 240;

/// The page: noVNC's RFB straight on a WebSocket to the `url` query parameter (the gateway's
/// recorded route, or the replay). noVNC takes its screen out of the page when the
/// connection ends, which a replay does when the recording does: the page puts it back, so
/// the last frame stays in view for the screenshot.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>recorded noVNC</title></head>
<body style="margin:0"><div id="screen" style="width:320px;height:240px"></div>
<script type="module">
  import RFB from "./novnc/core/rfb.js";
  const url = new URLSearchParams(location.search).get("url");
  const target = document.getElementById("screen");
  window.events = [];
  const rfb = new RFB(target, url);
  window.rfb = rfb;
  rfb.addEventListener("connect", () => window.events.push("connect"));
  rfb.addEventListener("disconnect", (e) => {
    window.events.push("disconnect:" + e.detail.clean);
    target.appendChild(rfb._screen);
  });
</script></body></html>
"#;

/// What noVNC's canvas shows once nothing is left to draw: its size, an FNV-1a hash of every
/// pixel, the share of pixels that are not black, and the colour at each quadrant's centre.
/// `null` while noVNC has no framebuffer or still has drawing queued.
const CANVAS_STATE: &str = r#"
const rfb = window.rfb;
if (!rfb || !rfb._canvas.width || rfb._display.pending()) return null;
const c = rfb._canvas, w = c.width, h = c.height;
const d = c.getContext('2d').getImageData(0, 0, w, h).data;
let hash = 2166136261, lit = 0;
for (let i = 0; i < d.length; i++) { hash ^= d[i]; hash = Math.imul(hash, 16777619) >>> 0; }
for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) lit++;
const at = (x, y) => { const i = (Math.floor(y) * w + Math.floor(x)) * 4; return [d[i], d[i + 1], d[i + 2]]; };
return { width: w, height: h, hash: hash, lit: lit / (w * h),
         quadrants: [at(w / 4, h / 4), at(3 * w / 4, h / 4), at(w / 4, 3 * h / 4), at(3 * w / 4, 3 * h / 4)] };
"#;

#[derive(Debug, PartialEq, serde::Deserialize)]
struct CanvasState {
    width: u32,
    height: u32,
    hash: u32,
    lit: f64,
    quadrants: [[u8; 3]; 4],
}

impl Browser {
    /// The canvas once the painted desktop is all drawn (every quadrant's colour, at most a
    /// cursor's worth of black) and stays the same for 300 ms.
    async fn drawn_desktop(&self) -> CanvasState {
        let mut last: Option<CanvasState> = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self
                .eventually(
                    "noVNC draws the desktop",
                    &format!("const s = (() => {{ {CANVAS_STATE} }})(); return s && s.lit > 0.99 ? s : null;"),
                    json!(null),
                )
                .await;
            let state: CanvasState = serde_json::from_value(state).expect("canvas state");
            if last.as_ref() == Some(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "noVNC's canvas kept changing: {state:?}"
            );
            last = Some(state);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn events(&self) -> Vec<String> {
        let events = self
            .client()
            .execute("return window.events;", vec![])
            .await
            .expect("events");
        serde_json::from_value(events).expect("a list of events")
    }
}

fn assert_quadrants(what: &str, seen: [[u8; 3]; 4], tolerance: u8) {
    for (i, (seen, painted)) in seen.iter().zip(QUADRANTS).enumerate() {
        assert!(
            near(*seen, painted, tolerance),
            "{what}: quadrant {i} shows {seen:?}, the desktop has {painted:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_novnc_session_recorded_raw_replays_to_an_unmodified_novnc_as_the_same_desktop() {
    let test = "a_novnc_session_recorded_raw_replays_to_an_unmodified_novnc_as_the_same_desktop";
    let Some(novnc) = novnc_tools(test, &[("wish", "tk")]) else {
        return;
    };
    let Some(browser) = Browser::start(test, None).await else {
        return;
    };
    let mut desktop = VncDesktop::start(WIDTH, HEIGHT).await;
    desktop.paint_quadrants(WIDTH, HEIGHT).await;
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), PAGE).unwrap();
    std::os::unix::fs::symlink(&novnc, web.path().join("novnc")).unwrap();
    let recordings_dir = tempfile::tempdir().unwrap();
    let gw = spawn_gateway(&config_with(&format!(
        "[web]\nroot = {:?}\nfollow_external_symlinks = true\n\n{}\
         [route.record]\ndir = {:?}\nformat = \"raw\"\nmin_free_bytes = 0\n",
        web.path().display().to_string(),
        route("vnc", "/vnc", &format!("tcp://{}", desktop.addr)),
        recordings_dir.path().display().to_string(),
    )))
    .await;

    // Live: noVNC through the recorded route draws the desktop.
    let live_url = format!("http://{}/?url=ws://{}/vnc", gw.addr, gw.addr);
    browser.client().goto(&live_url).await.expect("page loads");
    browser
        .eventually(
            "noVNC connects",
            "return window.events.includes('connect');",
            json!(null),
        )
        .await;
    let live = browser.drawn_desktop().await;
    assert_eq!((live.width, live.height), (WIDTH.into(), HEIGHT.into()));
    assert_quadrants("live", live.quadrants, 0);
    browser.screenshot("record-novnc-live").await;
    browser
        .client()
        .execute("window.rfb.disconnect();", vec![])
        .await
        .unwrap();
    browser
        .eventually(
            "noVNC disconnects",
            "return window.events.some(e => e.startsWith('disconnect'));",
            json!(null),
        )
        .await;

    // The recording: finished, renamed from its `.part`, nothing left out.
    let (file, meta) = recordings(recordings_dir.path(), 1).await.remove(0);
    assert!(file.to_string_lossy().ends_with(".wsrec"), "{file:?}");
    assert!(
        files_under(recordings_dir.path())
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".part")),
        "a .part is left: {:?}",
        files_under(recordings_dir.path())
    );
    assert_eq!(meta["format"], "raw");
    assert_eq!(meta["route"], "vnc");
    assert_eq!(meta["truncated"], false, "{meta}");
    assert_eq!(meta["dropped_bytes"], 0, "{meta}");
    assert_eq!(meta["recorded_bytes"], meta["bytes_to_client"], "{meta}");
    assert!(meta["bytes_to_client"].as_u64().unwrap() > 1000, "{meta}");

    // Replay: the real binary as a WebSocket server, as fast as it can go; the same page,
    // unmodified noVNC, pointed at it.
    let (mut replay, replay_url) =
        replay_server(&file, &["--ws", "127.0.0.1:0", "--speed", "0", "--once"]).await;
    browser
        .client()
        .goto(&format!("http://{}/?url={replay_url}", gw.addr))
        .await
        .expect("page loads");
    browser
        .eventually(
            "the replay ends",
            "return window.events.some(e => e.startsWith('disconnect'));",
            json!(null),
        )
        .await;
    let events = browser.events().await;
    assert_eq!(
        events.first().map(String::as_str),
        Some("connect"),
        "noVNC took the replay for a live server: {events:?}"
    );
    let replayed = browser.drawn_desktop().await;
    assert_eq!(
        replayed, live,
        "the replayed canvas differs from what noVNC drew live"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), replay.wait())
        .await
        .expect("`--once` exits after its client")
        .unwrap();
    assert!(status.success(), "wsgate replay: {status}");

    // The screenshot of the replayed page shows the desktop where the canvas is.
    browser.screenshot("record-novnc-replay").await;
    let shot = screenshot_dir().join("record-novnc-replay.png");
    let png = Png::decode(&std::fs::read(&shot).expect("screenshot written"));
    let place = browser
        .client()
        .execute(
            "const r = window.rfb._canvas.getBoundingClientRect(); \
             return [r.left, r.top, window.devicePixelRatio];",
            vec![],
        )
        .await
        .unwrap();
    let [left, top, ratio]: [f64; 3] = serde_json::from_value(place).unwrap();
    assert!(
        png.width as f64 >= (left + f64::from(WIDTH)) * ratio
            && png.height as f64 >= (top + f64::from(HEIGHT)) * ratio,
        "a {}x{} screenshot cannot hold the canvas at {left},{top}",
        png.width,
        png.height
    );
    assert!(png.colours() >= 4, "the screenshot is (nearly) uniform");
    let (w, h) = (f64::from(WIDTH), f64::from(HEIGHT));
    let centres = [
        (w / 4.0, h / 4.0),
        (w * 0.75, h / 4.0),
        (w / 4.0, h * 0.75),
        (w * 0.75, h * 0.75),
    ];
    let shown = centres
        .map(|(x, y)| png.pixel(((left + x) * ratio) as usize, ((top + y) * ratio) as usize));
    assert_quadrants(&format!("screenshot {}", shot.display()), shown, 8);
    browser.quit().await;
    gw.stop().await.unwrap();
}
