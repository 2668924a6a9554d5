//! Property tests: the parsers and checks that see hostile input, fed arbitrary input, must never
//! panic and must agree with a plain model of the rule they implement.
//!
//! Cases per target: `WSGATE_FUZZ_CASES` × the target's weight, its speed relative to the
//! slowest target (measured in release builds), so every target gets about the same time and one
//! number sets the run's length. Unset, proptest's `PROPTEST_CASES` is the base; neither set, a
//! small default keeps `cargo test` quick. CI runs `WSGATE_FUZZ_CASES=300000 cargo test --release
//! --test fuzz`: about 20 s of CPU per target (the harness runs targets in parallel).
//! Failures are saved under `tests/fuzz.proptest-regressions` and replayed first next time.
//!
//! Not covered yet: the access-control parsers (token files, origins, JWT keys), which have
//! unit tests of their own (src/policy/access.rs, src/policy/targets.rs, src/policy/jwt.rs).

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use fastwebsockets::OpCode;
use fastwebsockets::Role;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Version};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use tokio::io::{AsyncRead, ReadBuf};
use wsgate::config::BackendAddr;
use wsgate::edge::http::check_upgrade;
use wsgate::ws::frames::MessageCheck;
use wsgate::ws::reader::{FrameBudget, FrameReader, ReadError, ReadReady};
use wsgate::ws::utf8::{complete_prefix, Utf8Stream};
use wsgate::Config;

/// The run for a target `weight` times faster per case than the slowest one.
fn config(weight: u32) -> ProptestConfig {
    let base = std::env::var("WSGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(|| {
            if std::env::var_os("PROPTEST_CASES").is_some() {
                ProptestConfig::default().cases
            } else {
                64
            }
        });
    let cases = base.saturating_mul(weight).max(1);
    ProptestConfig {
        cases,
        // Generators that filter reject rarely; never let a long run fail on the count.
        max_global_rejects: cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Config parsing: Ok or Err, never a panic.

/// A valid config touching every section, one `key = value` per line, so mutations can
/// replace, drop or repeat single lines.
const VALID: &str = r#"[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[timeouts]
tls_handshake_secs = 10
header_read_secs = 10
backend_connect_secs = 5
ping_interval_secs = 20
pong_timeout_secs = 20
close_grace_secs = 5
shutdown_grace_secs = 10
[limits]
max_connections = 10000
buffer_bytes = 65536
max_frame_bytes = 1048576
max_message_bytes = 4194304
max_sessions = 100
max_sessions_per_route = 50
max_sessions_per_ip = 10
handshakes_per_ip_per_sec = 5
handshake_burst_per_ip = 10
retry_after_secs = 5
max_header_bytes = 32768
bandwidth_bytes_per_sec = 1048576
[[route]]
name = "vnc"
path = "/vnc"
backend = "tcp://127.0.0.1:5900"
subprotocols = ["binary"]
message_type = "binary"
max_frame_bytes = 65536
max_message_bytes = 65536
max_sessions = 5
bandwidth_bytes_per_sec = 65536
[[route]]
name = "chat"
path = "/chat/"
backend = "ws://[::1]:9000/base?x=1"
forward_headers = ["cookie", "x-user"]
strip_path_prefix = false
[[route]]
name = "echo"
path = "/echo"
backend = "builtin:echo"
"#;

/// TOML values of every type, at and around the edges validation cares about.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        prop::sample::select(vec![
            "0",
            "-0",
            "1",
            "-1",
            "125",
            "126",
            "1023",
            "1024",
            "8191",
            "8192",
            "65535",
            "65536",
            "86400",
            "86401",
            "4294967296",
            "1073741825",
            "9223372036854775807",
            "18446744073709551615",
            "1e308",
            "-1e308",
            "nan",
            "inf",
            "-inf",
            "0.0001",
            "0.001",
            "1e-9",
            "1_000",
            "0x10",
            "true",
            "false",
            "[]",
            "{}",
            "\"\"",
            "[1, \"a\"]",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(String::from),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "[a-z0-9:/.@\\[\\] _?#=-]{0,30}".prop_map(|s| format!("{s:?}")),
        (
            prop::sample::select(vec!["tcp", "ws", "wss", "udp", "builtin", "", "http"]),
            "[a-z0-9.:\\[\\]@ -]{0,20}",
            prop::option::of(any::<u32>()),
            "[/?a-z0-9=&%]{0,12}",
        )
            .prop_map(|(scheme, host, port, path)| {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                format!("\"{scheme}://{host}{port}{path}\"")
            }),
    ]
}

/// Keys that exist somewhere in the schema, and a few that do not.
fn toml_key() -> impl Strategy<Value = String> {
    let mut keys: Vec<String> = VALID
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_owned()))
        .collect();
    keys.extend(
        [
            "bogus",
            "tls",
            "cert_file",
            "key_file",
            "tls_ca_file",
            "insecure_skip_verify",
        ]
        .map(String::from),
    );
    prop::sample::select(keys)
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Give line `i` (if it is `key = value`) another value.
    Revalue(prop::sample::Index, String),
    /// Drop line `i`.
    Drop(prop::sample::Index),
    /// Repeat line `i` after line `j`.
    Repeat(prop::sample::Index, prop::sample::Index),
    /// Insert `key = value` after line `i`.
    Insert(prop::sample::Index, String, String),
    /// Insert a table header after line `i`.
    Table(prop::sample::Index, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let table = prop::sample::select(vec![
        "[[listener]]",
        "[listener.tls]",
        "[admin]",
        "[timeouts]",
        "[limits]",
        "[[route]]",
        "[route]",
        "[bogus]",
    ]);
    prop_oneof![
        4 => (any::<prop::sample::Index>(), toml_value()).prop_map(|(i, v)| Mutation::Revalue(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Drop),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(i, j)| Mutation::Repeat(i, j)),
        2 => (any::<prop::sample::Index>(), toml_key(), toml_value()).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
        1 => (any::<prop::sample::Index>(), table).prop_map(|(i, t)| Mutation::Table(i, t)),
    ]
}

fn apply(lines: &mut Vec<String>, m: &Mutation) {
    match m {
        Mutation::Revalue(i, v) => {
            let at = i.index(lines.len());
            let line = &mut lines[at];
            if let Some((k, _)) = line.split_once(" = ") {
                *line = format!("{k} = {v}");
            }
        }
        Mutation::Drop(i) => {
            if lines.len() > 1 {
                lines.remove(i.index(lines.len()));
            }
        }
        Mutation::Repeat(i, j) => {
            let line = lines[i.index(lines.len())].clone();
            lines.insert(j.index(lines.len()) + 1, line);
        }
        Mutation::Insert(i, k, v) => lines.insert(i.index(lines.len()) + 1, format!("{k} = {v}")),
        Mutation::Table(i, t) => lines.insert(i.index(lines.len()) + 1, (*t).to_owned()),
    }
}

#[test]
fn the_mutation_base_is_valid() {
    let c = Config::from_toml(VALID).expect("VALID parses");
    assert_eq!(c.routes.len(), 3);
}

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn config_from_arbitrary_text_never_panics(text in "\\PC*") {
        let _ = Config::from_toml(&text);
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn config_from_toml_shaped_text_never_panics(
        parts in prop::collection::vec(
            prop_oneof![
                toml_key().prop_map(|k| format!("{k} = ")),
                toml_value(),
                prop::sample::select(vec![
                    "\n", "[[listener]]\n", "[listener.tls]\n", "[admin]\n", "[timeouts]\n",
                    "[limits]\n", "[[route]]\n", "address = \"127.0.0.1:0\"\n",
                    "name = \"r\"\npath = \"/\"\nbackend = \"tcp://h:1\"\n", "=", "\"", "[", "]",
                    "#", ".", ",",
                ]).prop_map(String::from),
            ],
            0..40,
        )
    ) {
        let _ = Config::from_toml(&parts.concat());
    }
}

proptest! {
    #![proptest_config(config(2))]

    #[test]
    fn config_mutations_of_a_valid_config_never_panic(
        mutations in prop::collection::vec(mutation(), 1..6)
    ) {
        let mut lines: Vec<String> = VALID.lines().map(String::from).collect();
        for m in &mutations {
            apply(&mut lines, m);
        }
        let text = lines.join("\n");
        // Either verdict is fine; a panic fails the test. A valid result must be usable.
        if let Ok(c) = Config::from_toml(&text) {
            prop_assert!(!c.listeners.is_empty() && !c.routes.is_empty());
            for r in &c.routes {
                prop_assert!(c.max_frame_bytes(r) <= c.max_message_bytes(r));
                prop_assert!(c.bandwidth_bytes_per_sec(r).is_none_or(|b| b >= 1024));
            }
            prop_assert!((1024..=1 << 20).contains(&c.max_header_bytes));
            let _ = wsgate::policy::Admission::new(&c);
        }
    }
}

proptest! {
    #![proptest_config(config(3))]

    #[test]
    fn backend_urls_parse_or_fail_and_round_trip(url in prop_oneof![
        "\\PC{0,40}",
        "(tcp|ws|wss)://[a-z0-9.:\\[\\]@]{0,20}(:[0-9]{0,6})?[/?a-z]{0,8}",
    ]) {
        if let Ok(addr) = BackendAddr::parse(&url) {
            // What parsed prints as a URL that parses to the same thing.
            prop_assert_eq!(BackendAddr::parse(&addr.to_string()).ok(), Some(addr));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upgrade-request validation against a model of RFC 6455 §4.2.1.

/// What `check_upgrade` must answer: `None` for a valid upgrade, else the status. Over
/// HTTP/2 a WebSocket is an extended CONNECT with `:protocol` (RFC 8441 §4), which these
/// requests never carry, so every HTTP/2 request is a 400 whatever its headers. (The model
/// predates HTTP/2 support and expected the RFC 6455 answers, a 426, for an HTTP/2 GET.)
fn expected_status(req: &Request<()>) -> Option<u16> {
    if req.version() == Version::HTTP_2 {
        return Some(400);
    }
    let tokens = |name: &str, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let key_ok = req.headers().get("sec-websocket-key").is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k.as_bytes())
            .is_ok_and(|raw| raw.len() == 16)
    });
    if req.method() != Method::GET
        || req.version() < Version::HTTP_11
        || !tokens("upgrade", "websocket")
        || !tokens("connection", "upgrade")
        || !key_ok
    {
        return Some(400);
    }
    let v13 = req
        .headers()
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    (!v13).then_some(426)
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "websocket",
            "WebSocket",
            "Upgrade",
            "upgrade",
            "keep-alive, Upgrade",
            "keep-alive",
            " websocket ",
            "websocket, h2c",
            "h2c",
            "13",
            "8",
            "13, 8",
            "",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "AAAAAAAAAAAAAAAAAAAAAB==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        // 16 random bytes, encoded: valid keys.
        prop::array::uniform16(any::<u8>()).prop_map(|k| base64::engine::general_purpose::STANDARD
            .encode(k)
            .into_bytes()),
        // Key-shaped strings from the base64 alphabet: some canonical, most not.
        "[A-Za-z0-9+/]{21,23}={0,3}".prop_map(String::into_bytes),
        // Anything a header value may hold, including obs-text.
        prop::collection::vec(
            prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff],
            0..40,
        ),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
            "sec-websocket-protocol", "host", "origin",
        ])
        .prop_map(String::from),
        1 => "[a-z][a-z0-9-]{0,10}",
    ]
}

/// A full, valid upgrade with arbitrary edits: most cases sit near the boundary.
fn upgrade_request() -> impl Strategy<Value = Request<()>> {
    let method = prop::sample::select(vec!["GET", "GET", "GET", "POST", "HEAD", "get", "CONNECT"]);
    let version = prop::sample::select(vec![
        Version::HTTP_11,
        Version::HTTP_11,
        Version::HTTP_10,
        Version::HTTP_09,
        Version::HTTP_2,
    ]);
    let base = prop::collection::vec(any::<bool>(), 4);
    let extra = prop::collection::vec((header_name(), header_value()), 0..6);
    (method, version, base, extra).prop_filter_map(
        "header values must be valid",
        |(m, v, keep, extra)| {
            let mut b = Request::builder().method(m).version(v).uri("/ws");
            let standard = [
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
            ];
            for ((name, value), keep) in standard.iter().zip(keep) {
                if keep {
                    b = b.header(*name, *value);
                }
            }
            for (name, value) in extra {
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = HeaderValue::from_bytes(&value).ok()?;
                b = b.header(name, value);
            }
            b.body(()).ok()
        },
    )
}

proptest! {
    #![proptest_config(config(4))]

    #[test]
    fn upgrade_checks_agree_with_the_model(mut req in upgrade_request()) {
        let got = check_upgrade(&req).err().map(|e| e.status().as_u16());
        prop_assert_eq!(got, expected_status(&req), "{:?}", req);
        if got.is_none() {
            // What we let through, fastwebsockets must accept: it answers with the 101.
            prop_assert!(fastwebsockets::upgrade::upgrade(&mut req).is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-8 of text arriving in pieces, against `std::str::from_utf8` on the whole.

/// Mostly valid text with sprinkled invalid bytes and cut characters.
fn text_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => any::<u8>().prop_map(|b| vec![b]),
            1 => prop::sample::select(vec![
                &b"\xed\xa0\x80"[..], b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xf0\x9f\x98",
                b"\x80", b"\xff",
            ]).prop_map(<[u8]>::to_vec),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// `bytes` cut at arbitrary points (sorted, possibly repeated: empty fragments happen).
fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for a in at {
        out.push(bytes[start..a].to_vec());
        start = a;
    }
    out.push(bytes[start..].to_vec());
    out
}

proptest! {
    #![proptest_config(config(10))]

    #[test]
    fn utf8_stream_agrees_with_std_on_any_split(
        bytes in text_bytes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let pieces = split(&bytes, &cuts);
        let mut stream = Utf8Stream::default();
        let mut verdict = Ok(());
        for (i, piece) in pieces.iter().enumerate() {
            verdict = stream.push(piece, i + 1 == pieces.len());
            if verdict.is_err() {
                // Failing early is right only if the bytes so far cannot start valid text.
                let so_far: Vec<u8> = pieces[..=i].concat();
                let valid_prefix = match std::str::from_utf8(&so_far) {
                    Ok(_) => i + 1 < pieces.len(),
                    Err(e) => e.error_len().is_none() && i + 1 < pieces.len(),
                };
                prop_assert!(!valid_prefix, "failed at piece {} of {:?}", i, pieces);
                break;
            }
        }
        prop_assert_eq!(verdict.is_ok(), std::str::from_utf8(&bytes).is_ok(), "{:?}", pieces);
    }
}

proptest! {
    #![proptest_config(config(10))]

    #[test]
    fn complete_prefix_keeps_back_only_a_cut_character(bytes in text_bytes()) {
        match complete_prefix(&bytes) {
            Ok(n) => {
                prop_assert!(std::str::from_utf8(&bytes[..n]).is_ok());
                prop_assert!(bytes.len() - n <= 3);
                let tail = std::str::from_utf8(&bytes[n..]);
                prop_assert!(n == bytes.len() || tail.is_err_and(|e| e.error_len().is_none()));
            }
            Err(_) => {
                let e = std::str::from_utf8(&bytes).unwrap_err();
                prop_assert!(e.error_len().is_some());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Message sequencing, sizes and UTF-8 across fragments, against a reassembling model.

#[derive(Debug, Clone)]
struct TestFrame {
    opcode: OpCode,
    fin: bool,
    payload: Vec<u8>,
}

fn test_frame() -> impl Strategy<Value = TestFrame> {
    let opcode = prop::sample::select(vec![
        OpCode::Text,
        OpCode::Text,
        OpCode::Binary,
        OpCode::Continuation,
        OpCode::Continuation,
        OpCode::Continuation,
        OpCode::Ping,
        OpCode::Close,
    ]);
    let payload = prop_oneof![text_bytes(), prop::collection::vec(any::<u8>(), 0..64)];
    (opcode, any::<bool>(), payload).prop_map(|(opcode, fin, payload)| TestFrame {
        opcode,
        fin,
        payload,
    })
}

/// The rules, written the slow way: reassemble each message and check it whole.
struct Model {
    max: usize,
    /// In a message: its opcode and the bytes so far.
    current: Option<(OpCode, Vec<u8>)>,
}

impl Model {
    /// `Ok(ends_message)` or the close code.
    fn frame(&mut self, f: &TestFrame) -> Result<bool, u16> {
        if matches!(f.opcode, OpCode::Ping | OpCode::Pong | OpCode::Close) {
            return Ok(false);
        }
        let (kind, mut bytes) = match (f.opcode, self.current.take()) {
            (OpCode::Continuation, None) => return Err(1002),
            (OpCode::Continuation, Some(m)) => m,
            (_, Some(_)) => return Err(1002),
            (op, None) => (op, Vec::new()),
        };
        bytes.extend_from_slice(&f.payload);
        if bytes.len() > self.max {
            return Err(1009);
        }
        if kind == OpCode::Text {
            let ok = match std::str::from_utf8(&bytes) {
                Ok(_) => true,
                Err(e) => !f.fin && e.error_len().is_none(),
            };
            if !ok {
                return Err(1007);
            }
        }
        if !f.fin {
            self.current = Some((kind, bytes));
        }
        Ok(f.fin)
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn message_check_agrees_with_a_reassembling_model(
        frames in prop::collection::vec(test_frame(), 1..24),
        max in prop_oneof![Just(usize::MAX), 0usize..200],
    ) {
        let mut check = MessageCheck::new(max);
        let mut model = Model { max, current: None };
        for f in &frames {
            let got = check.data_frame(f.opcode, f.fin, &f.payload).map_err(|(code, _)| code);
            let want = model.frame(f);
            prop_assert_eq!(got, want, "frame {:?} of {:?}", f, frames);
            if want.is_err() {
                break; // The session closes: nothing after a violation is read.
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The masking rule over arbitrary chunkings of a frame stream.

/// Yields its chunks one read at a time, then EOF.
struct Chunks(std::collections::VecDeque<Vec<u8>>);

/// Always readable: the reader keeps its buffer, as over TLS.
impl ReadReady for Chunks {}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // An empty piece would read as EOF: skip it.
        while self.0.front().is_some_and(Vec::is_empty) {
            self.0.pop_front();
        }
        if let Some(mut chunk) = self.0.pop_front() {
            // A reader may ask for less than a chunk: hand out what fits, keep the rest.
            if chunk.len() > buf.remaining() {
                let rest = chunk.split_off(buf.remaining());
                self.0.push_front(rest);
            }
            buf.put_slice(&chunk);
        }
        Poll::Ready(Ok(()))
    }
}

/// One frame's wire bytes with the given mask bit and a random payload.
fn wire_frame(masked: bool, len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0x82];
    let bit = if masked { 0x80 } else { 0 };
    match len {
        0..=125 => f.push(bit | len as u8),
        126..=0xffff => {
            f.push(bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&[seed, 0x81, 0x7e, 0xff]);
    }
    // Payload bytes that look like headers of both kinds: only frame boundaries may count.
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(seed) | if i % 2 == 0 { 0x80 } else { 0 }));
    f
}

proptest! {
    #![proptest_config(config(2))]

    #[test]
    fn frame_reader_reads_every_frame_until_the_first_wrong_mask_bit(
        server_side in any::<bool>(),
        frames in prop::collection::vec(
            (
                prop::bool::weighted(0.9),
                prop_oneof![8 => 0usize..=125, 3 => 126usize..=600, 1 => 65_530usize..=65_540, 1 => 65_536usize..=70_000],
                any::<u8>(),
            ),
            1..8,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        // `right`: the frame carries the mask bit its direction requires.
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut wrong = false;
        for (right, len, seed) in &frames {
            stream.extend(wire_frame(*right == server_side, *len, *seed));
            if !wrong {
                if *right { expected.push(*len) } else { wrong = true }
            }
        }
        let pieces = split(&stream, &cuts);
        let role = if server_side { Role::Server } else { Role::Client };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (lengths, end) = runtime.block_on(async {
            let mut reader = FrameReader::new(Chunks(pieces.iter().cloned().collect()), role, 1 << 20, FrameBudget::unlimited());
            let mut lengths = Vec::new();
            loop {
                match reader.read_frame().await {
                    Ok(frame) => lengths.push(frame.payload.len()),
                    Err(ReadError::Violation((code, _))) => break (lengths, Some(code)),
                    Err(ReadError::Gone(_)) => break (lengths, None),
                    Err(ReadError::OverBudget) => unreachable!("no budget here"),
                }
            }
        });
        prop_assert_eq!(lengths, expected, "every frame before the first wrong one, whole");
        prop_assert_eq!(end, wrong.then_some(1002));
    }
}

// ---------------------------------------------------------------------------------------------
// Admission keys: any address maps to a key, and IPv6 keys are /64 prefixes.

proptest! {
    #![proptest_config(config(60))]

    #[test]
    fn client_keys_are_stable_and_coarse(ip in any::<IpAddr>()) {
        let key = wsgate::policy::client_key(ip);
        prop_assert_eq!(wsgate::policy::client_key(key), key, "idempotent");
        if let (IpAddr::V6(v6), IpAddr::V6(k)) = (ip, key) {
            prop_assert_eq!(u128::from(k) & ((1u128 << 64) - 1), 0);
            prop_assert_eq!(u128::from(k) >> 64, u128::from(v6) >> 64);
        }
    }
}
