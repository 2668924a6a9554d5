//! `[http2]`: the HTTP/2 limits every listener that speaks h2 (ALPN `h2`, or h2c with prior
//! knowledge) applies to each connection, so a client can only exhaust its own connection.

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Per-connection HTTP/2 settings. Each stream is one WebSocket session.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Concurrent streams (sessions and requests) one connection may open
    /// (SETTINGS_MAX_CONCURRENT_STREAMS). Default 100.
    pub max_concurrent_streams: u32,
    /// Receive window of each stream, in bytes: what a client may send on one session before
    /// the gateway has passed it on. A stalled session holds at most this much. Default 256 KiB.
    pub stream_window_bytes: u32,
    /// Receive window of the whole connection, in bytes: all its streams' unread data
    /// together. Sessions keep flowing while fewer than `connection / stream` windows are
    /// stalled at once. Default 16 MiB.
    pub connection_window_bytes: u32,
    /// Largest DATA frame the gateway accepts (SETTINGS_MAX_FRAME_SIZE), 16 KiB..16 MiB.
    /// Default 64 KiB.
    pub max_frame_bytes: u32,
    /// Bytes one stream may queue for sending before its writer waits for the client's
    /// window. Default 256 KiB.
    pub max_send_buffer_bytes: usize,
    /// Streams a client may open and reset before the gateway has accepted them (the
    /// "rapid reset" attack, CVE-2023-44487); past it the connection gets GOAWAY. Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the gateway may reset for a client's protocol errors before it closes the
    /// connection with GOAWAY (CVE-2024-27316-style floods). Default 1024.
    pub max_local_error_reset_streams: usize,
    /// How long a connection may have no open stream (no request, no session) before it gets
    /// GOAWAY and is closed; PINGs do not count as use. Before its first request a connection
    /// has `timeouts.header_read_secs` instead (the preface and SETTINGS included).
    /// 0.1..=86400 s, default 60 s.
    pub idle_timeout_secs: f64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            stream_window_bytes: 256 * 1024,
            connection_window_bytes: 16 * 1024 * 1024,
            max_frame_bytes: 64 * 1024,
            max_send_buffer_bytes: 256 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            idle_timeout_secs: 60.0,
        }
    }
}

impl Http2Config {
    /// `idle_timeout_secs` as a duration (validated: finite and positive).
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.idle_timeout_secs)
    }

    /// Every value within what HTTP/2 allows and what makes sense for a gateway.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_concurrent_streams == 0 {
            bail!("http2.max_concurrent_streams: must be at least 1");
        }
        for (name, v) in [
            ("stream_window_bytes", self.stream_window_bytes),
            ("connection_window_bytes", self.connection_window_bytes),
        ] {
            if !(65_535..=MAX_WINDOW).contains(&v) {
                bail!("http2.{name}: must be 65535..={MAX_WINDOW}, got {v}");
            }
        }
        if self.connection_window_bytes < self.stream_window_bytes {
            bail!(
                "http2.connection_window_bytes: must be at least stream_window_bytes ({}), got {}",
                self.stream_window_bytes,
                self.connection_window_bytes
            );
        }
        if !(16_384..=16_777_215).contains(&self.max_frame_bytes) {
            bail!(
                "http2.max_frame_bytes: must be 16384..=16777215, got {}",
                self.max_frame_bytes
            );
        }
        if self.max_send_buffer_bytes < 1024 {
            bail!(
                "http2.max_send_buffer_bytes: must be at least 1024, got {}",
                self.max_send_buffer_bytes
            );
        }
        if self.max_local_error_reset_streams == 0 {
            bail!("http2.max_local_error_reset_streams: must be at least 1");
        }
        let idle = self.idle_timeout_secs;
        if !(0.1..=86_400.0).contains(&idle) {
            bail!("http2.idle_timeout_secs: must be 0.1..=86400, got {idle}");
        }
        Ok(())
    }
}
