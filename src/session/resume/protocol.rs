//! The resume protocol's messages (docs/resume.md): every WebSocket message is binary and
//! starts with a one-byte type, so offsets are counted from framed DATA payloads and never
//! guessed from the bytes an application sends.

use bytes::{BufMut, Bytes, BytesMut};

/// The WebSocket subprotocol a client offers to ask for a resumable session.
pub const SUBPROTOCOL: &str = "wsgate.resume.v1";
/// The URL query parameter carrying the client-chosen, non-secret session id.
pub const SESSION_PARAM: &str = "wsgate_session";
/// The URL query parameter (`=1`) marking a connection that resumes an existing session.
pub const RESUME_PARAM: &str = "wsgate_resume";
/// The secret resume token's length in bytes.
pub const TOKEN_BYTES: usize = 32;
/// Longest session id accepted (characters from `[A-Za-z0-9_-]`).
pub const MAX_ID_CHARS: usize = 64;

pub const HELLO: u8 = 0x01;
pub const WELCOME: u8 = 0x02;
pub const DATA: u8 = 0x03;
pub const ACK: u8 = 0x04;
pub const PING: u8 = 0x05;
pub const PONG: u8 = 0x06;
pub const END: u8 = 0x07;

/// Close codes of the resume protocol (private-use range, RFC 6455 §7.4.2).
pub mod close {
    /// A malformed or unexpected protocol message.
    pub const PROTOCOL: u16 = 4400;
    /// No such session here: never existed, expired, ended, or the token is wrong.
    pub const UNKNOWN_SESSION: u16 = 4404;
    /// This connection was replaced by a newer attach of the same session.
    pub const REPLACED: u16 = 4409;
    /// A new session asked for an id that is already live.
    pub const ID_IN_USE: u16 = 4412;
    /// The client's offset is outside what the gateway still holds.
    pub const OFFSET_OUT_OF_RANGE: u16 = 4416;
    /// A resumable-session limit is reached (sessions, per address, buffered bytes).
    pub const CAPACITY: u16 = 4429;
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum FromClient {
    /// The first message: bytes received so far, and the token when resuming.
    Hello {
        received: u64,
        token: Option<[u8; TOKEN_BYTES]>,
    },
    Data(Bytes),
    Ack(u64),
    Ping(u64),
    Pong(u64),
    End,
}

/// Parse one binary message from the client; the error names what was wrong.
pub fn parse(mut message: Bytes) -> Result<FromClient, &'static str> {
    let Some(&kind) = message.first() else {
        return Err("empty message");
    };
    let body = message.split_off(1);
    let number = |body: &Bytes| -> Result<u64, &'static str> {
        let b: [u8; 8] = body[..]
            .try_into()
            .map_err(|_| "expected an 8-byte number")?;
        Ok(u64::from_be_bytes(b))
    };
    match kind {
        HELLO => match body.len() {
            8 => Ok(FromClient::Hello {
                received: number(&body)?,
                token: None,
            }),
            n if n == 8 + TOKEN_BYTES => {
                let mut token = [0u8; TOKEN_BYTES];
                token.copy_from_slice(&body[8..]);
                Ok(FromClient::Hello {
                    received: number(&body.slice(..8))?,
                    token: Some(token),
                })
            }
            _ => Err("HELLO of the wrong length"),
        },
        DATA => Ok(FromClient::Data(body)),
        ACK => number(&body).map(FromClient::Ack),
        PING => number(&body).map(FromClient::Ping),
        PONG => number(&body).map(FromClient::Pong),
        END if body.is_empty() => Ok(FromClient::End),
        END => Err("END with a body"),
        _ => Err("unknown message type"),
    }
}

/// WELCOME: what the gateway has received from the client, the heartbeat and grace it runs
/// with, and the token for the next resume.
pub fn welcome(
    received: u64,
    heartbeat_ms: u32,
    grace_ms: u32,
    token: &[u8; TOKEN_BYTES],
) -> Bytes {
    let mut m = BytesMut::with_capacity(1 + 8 + 4 + 4 + TOKEN_BYTES);
    m.put_u8(WELCOME);
    m.put_u64(received);
    m.put_u32(heartbeat_ms);
    m.put_u32(grace_ms);
    m.put_slice(token);
    m.freeze()
}

/// A message of one type and one 8-byte number (ACK, PING, PONG).
pub fn numbered(kind: u8, n: u64) -> Bytes {
    let mut m = BytesMut::with_capacity(9);
    m.put_u8(kind);
    m.put_u64(n);
    m.freeze()
}

/// DATA carrying `payload`.
pub fn data(payload: &[u8]) -> Bytes {
    let mut m = BytesMut::with_capacity(1 + payload.len());
    m.put_u8(DATA);
    m.put_slice(payload);
    m.freeze()
}

pub fn end() -> Bytes {
    Bytes::from_static(&[END])
}

/// A session id as the URL carries it: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_as_documented() {
        let mut hello = vec![HELLO];
        hello.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(
            parse(Bytes::from(hello.clone())),
            Ok(FromClient::Hello {
                received: 7,
                token: None
            })
        );
        hello.extend_from_slice(&[9u8; TOKEN_BYTES]);
        assert_eq!(
            parse(Bytes::from(hello)),
            Ok(FromClient::Hello {
                received: 7,
                token: Some([9u8; TOKEN_BYTES])
            })
        );
        assert_eq!(
            parse(data(b"abc")),
            Ok(FromClient::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(parse(numbered(ACK, 5)), Ok(FromClient::Ack(5)));
        assert_eq!(parse(end()), Ok(FromClient::End));
        assert!(parse(Bytes::new()).is_err());
        assert!(parse(Bytes::from_static(&[ACK, 1, 2])).is_err());
        assert!(parse(Bytes::from_static(&[0x7f])).is_err());
        assert!(valid_id("aZ09_-") && !valid_id("") && !valid_id("a b"));
    }
}
