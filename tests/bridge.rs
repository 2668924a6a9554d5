//! The bridge over real sockets: bytes both ways, lossless closes, errors mapped to close codes.

mod support;

use support::*;

#[tokio::test]
async fn echoes_binary_both_ways() {
    let echo = tcp_echo_backend().await;
    let gw = gateway_to("echo_both_ways", &format!("tcp://{echo}")).await;
    let mut ws = ws_client(&gw.url("/")).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    send_binary(&mut ws, &payload).await;
    assert_eq!(read_bytes(&mut ws, payload.len()).await, payload);
    gw.stop().await.unwrap();
}
