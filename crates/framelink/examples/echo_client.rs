//! A reconnecting client for `echo_server`: it sends a few messages, prints each echo as it
//! arrives, waits for one heartbeat round trip on the quiet link, and exits.
//!
//! ```sh
//! cargo run -p framelink --example echo_server &                  # 127.0.0.1:7000
//! cargo run -p framelink --example echo_client                    # or: -- HOST:PORT
//! ```
//!
//! The client connects in the background and reconnects with exponential backoff and full
//! jitter: start it before the server and it prints its failed attempts and delays until the
//! server is up (it gives up after 10 attempts in a row). Messages handed to it before a
//! connection exists wait for one. Heartbeats: a ping after 300 ms without receiving anything,
//! the server declared dead if nothing arrives within 1 s after it.
//!
//! Exit status 0 when every echo came back, in order; 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use framelink::connection::ConnectionConfig;
use framelink::{BackoffConfig, Client, ClientConfig, ClientEvent, Protocol};

/// How many messages to send.
const COUNT: usize = 5;

#[tokio::main]
async fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let config = ClientConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            ping_interval: Some(Duration::from_millis(300)),
            ping_timeout: Duration::from_secs(1),
            ..ConnectionConfig::default()
        }),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            max_attempts: Some(10),
            ..BackoffConfig::default()
        },
        ..ClientConfig::default()
    };
    let mut client = match Client::connect(addr.as_str(), config) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("[client] {e}");
            return ExitCode::FAILURE;
        }
    };

    // Send from another task: `send` waits for a connection, while this task reports events.
    let sent: Vec<Bytes> = (1..=COUNT)
        .map(|i| Bytes::from(format!("message {i} of {COUNT}")))
        .collect();
    let sender = client.sender();
    let to_send = sent.clone();
    tokio::spawn(async move {
        for message in to_send {
            if sender.send(message).await.is_err() {
                break; // The client stopped (gave up): the event loop reports it.
            }
        }
    });

    let mut echoed = 0;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = client.next_event().await {
            match event {
                ClientEvent::Connected { addr, attempt, .. } => {
                    println!("[client] connected to {addr} (attempt {attempt})");
                }
                ClientEvent::ConnectFailed { attempt, error } => {
                    println!("[client] attempt {attempt} failed: {error}");
                }
                ClientEvent::Reconnecting { attempt, delay } => {
                    println!("[client] reconnecting: attempt {attempt} in {delay:?}");
                }
                ClientEvent::Disconnected(info) => println!("[client] disconnected: {info}"),
                ClientEvent::Message(message) => {
                    if sent.get(echoed) != Some(&message) {
                        return Err(format!("unexpected echo {message:?}"));
                    }
                    echoed += 1;
                    println!("[client] echo: {}", String::from_utf8_lossy(&message));
                }
                ClientEvent::Rtt(rtt) => {
                    // Pings go out only when the link is quiet: after the echoes, here.
                    println!(
                        "[client] heartbeat rtt {:?} (smoothed {:?})",
                        rtt.latest, rtt.smoothed
                    );
                    if echoed == COUNT {
                        return Ok(());
                    }
                }
                ClientEvent::GaveUp {
                    attempts,
                    connected,
                } => {
                    return Err(format!(
                        "gave up after {attempts} attempts ({connected} connected)"
                    ));
                }
                _ => {}
            }
        }
        Err("the client stopped".into())
    })
    .await;

    client.close().await;
    match outcome {
        Ok(Ok(())) => {
            println!("[client] OK: {echoed} of {COUNT} messages echoed, in order");
            ExitCode::SUCCESS
        }
        Ok(Err(why)) => {
            println!("[client] FAIL: {why}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("[client] FAIL: only {echoed} of {COUNT} echoes within 20 s");
            ExitCode::FAILURE
        }
    }
}
