//! The resumable session over real loopback sockets, without the edge: a client that drops
//! its connection and resumes gets every byte once, from the same backend connection.

use std::net::{IpAddr, Ipv4Addr};

use fastwebsockets::Role;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role as TRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::session::registry::SessionControl;
use crate::ws::reader::FrameBudget;

type Client = WebSocketStream<TcpStream>;

fn settings() -> ResumeSettings {
    ResumeSettings {
        grace: Duration::from_secs(5),
        window_bytes: 64 * 1024,
        heartbeat: Duration::from_secs(1),
        read_bytes: 16 * 1024,
        backend_stall: Duration::from_secs(5),
        close_grace: Duration::from_secs(1),
        limits: ResumeLimits::default(),
    }
}

/// A client socket and the gateway's frame reader and writer for it.
async fn connection() -> (
    Client,
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    let (r, w) = s.into_split();
    let client = WebSocketStream::from_raw_socket(c, TRole::Client, None).await;
    (
        client,
        FrameReader::new(r, Role::Server, 1 << 20, FrameBudget::unlimited()),
        FrameWriter::new(w, Role::Server),
    )
}

async fn next(ws: &mut Client) -> Result<Vec<u8>, u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b[0] == protocol::PING => continue,
            Ok(Some(Ok(Message::Binary(b)))) => return Ok(b.to_vec()),
            Ok(Some(Ok(Message::Close(Some(f))))) => return Err(f.code.into()),
            Ok(Some(Ok(_))) => continue,
            _ => return Err(1006),
        }
    }
}

fn hello(received: u64, token: Option<&[u8]>) -> Message {
    let mut m = vec![protocol::HELLO];
    m.extend_from_slice(&received.to_be_bytes());
    if let Some(t) = token {
        m.extend_from_slice(t);
    }
    Message::binary(m)
}

#[tokio::test]
async fn a_dropped_connection_resumes_on_the_same_backend_connection() {
    // The backend: sends 100 000 numbered bytes, then echoes what it reads.
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend_listener.local_addr().unwrap();
    let backend_task = tokio::spawn(async move {
        let (mut s, _) = backend_listener.accept().await.unwrap();
        let greeting: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&greeting).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let backend = TcpStream::connect(backend_addr).await.unwrap();
    let (br, bw) = backend.into_split();
    let store = Arc::new(ResumeStore::default());
    let stop = CancellationToken::new();
    let control = SessionControl::new(&stop);
    let request = |id: &str| Request {
        store: &store,
        route: Arc::from("r"),
        id: id.to_owned(),
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        settings: settings(),
        limits: ResumeLimits::default(),
        max_message_bytes: 1 << 20,
    };

    let (mut ws, reader, writer) = connection().await;
    let session = {
        let request = request("s1");
        let control = &control;
        async move {
            let stop = async {
                control.cancelled().await;
                control.reason()
            };
            start(reader, writer, br, bw, request, stop).await
        }
    };
    let client = async {
        ws.send(hello(0, None)).await.unwrap();
        let w = next(&mut ws).await.unwrap();
        assert_eq!(w[0], protocol::WELCOME);
        let mut token = w[17..49].to_vec();
        // Read 30 000 bytes, acknowledge 20 000, send "abc", then drop the connection.
        let mut received = Vec::new();
        while received.len() < 30_000 {
            let m = next(&mut ws).await.unwrap();
            if m[0] == protocol::DATA {
                received.extend_from_slice(&m[1..]);
            }
        }
        ws.send(Message::binary(
            protocol::numbered(protocol::ACK, 20_000).to_vec(),
        ))
        .await
        .unwrap();
        ws.send(Message::binary(protocol::data(b"abc").to_vec()))
            .await
            .unwrap();
        // Wait for the ACK of "abc" so the test knows the gateway has it.
        loop {
            let m = next(&mut ws).await.unwrap();
            if m[0] == protocol::DATA {
                received.extend_from_slice(&m[1..]);
            } else if m[0] == protocol::ACK && m[1..] == 3u64.to_be_bytes() {
                break;
            }
        }
        drop(ws);
        // A bad token is refused; the right one resumes from what was received.
        let (mut ws, reader, writer) = connection().await;
        let resumer = resume(reader, writer, request("s1"));
        let attempt = async {
            ws.send(hello(received.len() as u64, Some(&[0u8; 32])))
                .await
                .unwrap();
            next(&mut ws).await
        };
        let (_, refused) = tokio::join!(resumer, attempt);
        assert_eq!(refused, Err(close::UNKNOWN_SESSION));

        let (mut ws, reader, writer) = connection().await;
        let resumer = resume(reader, writer, request("s1"));
        let carry_on = async {
            ws.send(hello(received.len() as u64, Some(&token)))
                .await
                .unwrap();
            let w = next(&mut ws).await.unwrap();
            assert_eq!(w[0], protocol::WELCOME);
            assert_eq!(&w[1..9], &3u64.to_be_bytes(), "the gateway has our 3 bytes");
            token = w[17..49].to_vec();
            while received.len() < 100_000 {
                let m = next(&mut ws).await.unwrap();
                if m[0] == protocol::DATA {
                    received.extend_from_slice(&m[1..]);
                    let ack = protocol::numbered(protocol::ACK, received.len() as u64);
                    ws.send(Message::binary(ack.to_vec())).await.unwrap();
                }
            }
            ws.send(Message::binary(protocol::data(b"def").to_vec()))
                .await
                .unwrap();
            ws.send(Message::binary(protocol::end().to_vec()))
                .await
                .unwrap();
            loop {
                match next(&mut ws).await {
                    Ok(m) if m[0] == protocol::END => {}
                    Ok(_) => {}
                    Err(code) => break code,
                }
            }
        };
        let (_, code) = tokio::join!(resumer, carry_on);
        assert_eq!(code, 1000);
        let expected: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert!(received == expected, "every byte once, in order");
    };
    let (outcome, ()) = tokio::join!(session, client);
    let outcome = outcome.expect("the session ran");
    assert_eq!(outcome.resumes, 1);
    assert_eq!(outcome.code, 1000);
    let got = backend_task.await.unwrap();
    assert_eq!(got, b"abcdef");
    assert!(store.is_empty());
}
