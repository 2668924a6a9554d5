//! Test helpers that read like sentences: a real gateway on loopback, real backends, real clients.
//! Split by what they stand for; every item is re-exported here, so a test file needs only
//! `mod support; use support::*;` (and `use support::frame_bits::*;` for hand-written frames).
//! Each test binary compiles this module on its own and uses part of it, hence the allows.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod admin;
pub mod backends;
pub mod binary;
pub mod browser;
pub mod clients;
pub mod deflate;
pub mod frames;
pub mod gateway;
pub mod http;
pub mod jwt;
pub mod logs;
pub mod metrics;
pub mod pebble;
pub mod pki;
pub mod png;
pub mod python;
pub mod record;
pub mod resume;
pub mod shell;
pub mod vnc;

pub use admin::*;
pub use backends::*;
pub use binary::*;
pub use browser::*;
pub use clients::*;
pub use deflate::*;
pub use frames::*;
pub use gateway::*;
pub use http::*;
pub use jwt::*;
pub use logs::*;
pub use metrics::*;
pub use pebble::*;
pub use pki::*;
pub use png::*;
pub use python::*;
pub use record::*;
pub use shell::*;
pub use vnc::*;
