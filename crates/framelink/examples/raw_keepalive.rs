//! Raw mode: keep a connection to an existing server alive with that server's own framing and
//! heartbeat, without changing the server.
//!
//! ```sh
//! cargo run -p framelink --example raw_keepalive                  # against a server in this process
//! cargo run -p framelink --example raw_keepalive -- HOST:PORT     # against yours
//! ```
//!
//! The server here is the kind framelink meets in the wild, written with plain tokio and no
//! framelink: frames are a 4-byte big-endian length and a payload, `PING` is answered with
//! `PONG`, anything else is echoed. The client speaks that protocol as it is: framing
//! `length:4`, the ping frame `PING` after 200 ms without receiving anything, and a frame
//! exactly equal to `PONG` taken as the answer (each one an RTT sample); if nothing at all
//! arrives within 500 ms of a ping, the server is declared dead and the client reconnects. A
//! `PONG` that arrives while no ping waits for one is the server's data, not a heartbeat.
//!
//! The client sends three messages, prints their echoes, then stays quiet until three
//! heartbeats have completed, and exits (status 0; 1 if anything was missing after 10 s).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use framelink::{Client, ClientConfig, ClientEvent, FrameMatcher, Framing, Protocol, RawConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The existing server's protocol: `length:4` frames, `PING` answered with `PONG`.
async fn legacy_server(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut header = [0u8; 4];
            while stream.read_exact(&mut header).await.is_ok() {
                let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
                if stream.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let reply = if payload == b"PING" {
                    b"PONG".to_vec()
                } else {
                    payload
                };
                let mut frame = (reply.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&reply);
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match std::env::args().nth(1) {
        Some(addr) => addr,
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local address").to_string();
            tokio::spawn(legacy_server(listener));
            println!("[server] a length:4 server with PING/PONG on {addr}");
            addr
        }
    };

    let framing: Framing = "length:4,max=1MiB".parse().expect("a valid framing spec");
    let raw = RawConfig {
        ping_interval: Some(Duration::from_millis(200)),
        ping_timeout: Duration::from_millis(500),
        ping: Some(Bytes::from_static(b"PING")),
        pong: FrameMatcher::exact(Bytes::from_static(b"PONG")),
        ..RawConfig::new(framing)
    };
    let config = ClientConfig {
        protocol: Protocol::Raw(Box::new(raw)),
        ..ClientConfig::default()
    };
    let mut client = Client::connect(addr, config).expect("a valid configuration");
    let messages = ["hello", "from", "framelink"];
    let sender = client.sender();
    tokio::spawn(async move {
        for m in messages {
            let _ = sender.send(Bytes::from_static(m.as_bytes())).await;
        }
    });

    let (mut echoes, mut heartbeats) = (0, 0);
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = client.next_event().await {
            match event {
                ClientEvent::Connected { addr, .. } => println!("[client] connected to {addr}"),
                ClientEvent::Message(m) => {
                    echoes += 1;
                    println!("[client] echo: {}", String::from_utf8_lossy(&m));
                }
                ClientEvent::Rtt(rtt) => {
                    heartbeats += 1;
                    println!("[client] PING answered by PONG: rtt {:?}", rtt.latest);
                }
                ClientEvent::Disconnected(info) => println!("[client] disconnected: {info}"),
                ClientEvent::Reconnecting { attempt, delay } => {
                    println!("[client] reconnecting: attempt {attempt} in {delay:?}");
                }
                _ => {}
            }
            if echoes >= messages.len() && heartbeats >= 3 {
                return;
            }
        }
    })
    .await;
    client.close().await;
    if done.is_ok() {
        println!("[client] OK: {echoes} echoes, {heartbeats} heartbeats");
        ExitCode::SUCCESS
    } else {
        println!("[client] FAIL: {echoes} echoes and {heartbeats} heartbeats within 10 s");
        ExitCode::FAILURE
    }
}
