//! An echo server in protocol mode: every message a client sends comes back to it, whole and
//! in order, on a connection kept alive by heartbeats (a ping after 300 ms of quiet, the peer
//! declared dead 1 s after an unanswered one).
//!
//! ```sh
//! cargo run -p framelink --example echo_server                    # listens on 127.0.0.1:7000
//! cargo run -p framelink --example echo_server -- 127.0.0.1:0     # any free port
//! ```
//!
//! It prints `listening on ADDR` first, then one line per connection, and runs until Ctrl-C,
//! which shuts it down gracefully: every client gets a CLOSE with `GoingAway`, and the
//! reconnecting client of `echo_client` reports it and tries again.

use std::time::Duration;

use framelink::connection::ConnectionConfig;
use framelink::{Event, Protocol, Server, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let config = ServerConfig {
        protocol: Protocol::Framelink(ConnectionConfig {
            ping_interval: Some(Duration::from_millis(300)),
            ping_timeout: Duration::from_secs(1),
            ..ConnectionConfig::default()
        }),
        ..ServerConfig::default()
    };
    let mut server = Server::bind(addr.as_str(), config).await?;
    let handle = server.handle();
    // Scripts (and the example test) read the address from this line.
    println!("listening on {}", server.local_addr());

    loop {
        tokio::select! {
            incoming = server.accept() => {
                let Some(incoming) = incoming else { break };
                let (peer, id) = (incoming.peer, incoming.id);
                println!("[server] connection {id} from {peer}");
                let (tx, mut rx) = incoming.connection.split();
                tokio::spawn(async move {
                    let mut echoed = 0u64;
                    while let Some(event) = rx.next_event().await {
                        match event {
                            Event::Message(message) => {
                                // Waits while the connection's send budget is full
                                // (backpressure), fails once the connection is closed.
                                if tx.send(message).await.is_err() {
                                    break;
                                }
                                echoed += 1;
                            }
                            Event::Closed(info) => {
                                println!("[server] connection {id} closed after {echoed} messages: {info}");
                            }
                            _ => {}
                        }
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => {
                let report = handle.shutdown(Duration::from_secs(2)).await;
                println!(
                    "[server] shut down: {} open, {} closed cleanly, {} aborted",
                    report.open, report.closed, report.aborted
                );
                break;
            }
        }
    }
    Ok(())
}
