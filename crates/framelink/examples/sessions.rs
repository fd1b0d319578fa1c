//! Acknowledged sessions: exactly-once delivery across a link that keeps being cut.
//!
//! ```sh
//! cargo run -p framelink --example sessions
//! ```
//!
//! One process runs an echo server and a reconnecting client, both with sessions on, and
//! between them a [`ChaosProxy`] that resets or closes the TCP connection every 8 KiB or so.
//! The client streams 2,000 numbered messages; the server checks that it receives each exactly
//! once and in order, and queues it back in the client's session with
//! [`ServerHandle::send_to_session`] (so an echo survives the connection it was meant for);
//! the client checks the echoes the same way. After every cut the client reconnects and the
//! session resumes: each side resends exactly what the other had not delivered
//! (`resumed: resending N`). Without sessions the messages in flight at each cut would be lost.
//!
//! Exit status 0 when both tallies are exact, 1 otherwise.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use framelink::connection::{ConnectionConfig, ResumeStatus};
use framelink::{
    BackoffConfig, Client, ClientConfig, ClientEvent, Event, Protocol, Server, ServerConfig,
    ServerHandle, ServerSessions, SessionConfig, SessionEvent,
};
use framelink_chaos::{ChaosConfig, ChaosProxy, Fault, FaultMix, FaultPlan, Trigger};
use tokio::sync::mpsc;

/// Messages sent by the client (and echoed by the server).
const COUNT: u32 = 2_000;

/// Message `i`: its number, padded to 64 bytes.
fn message(i: u32) -> Bytes {
    Bytes::from(format!("{i:>8}:{}", "x".repeat(55)))
}

fn number(message: &[u8]) -> Option<u32> {
    std::str::from_utf8(message.get(..8)?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            println!("FAIL: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    // Quick heartbeats, so that a link cut without a FIN or RST would be found fast too.
    let protocol = Protocol::Framelink(ConnectionConfig {
        ping_interval: Some(Duration::from_millis(200)),
        ping_timeout: Duration::from_millis(400),
        ..ConnectionConfig::default()
    });

    // The server: sessions kept 60 s after a connection is lost, for the client to resume.
    let server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            protocol: protocol.clone(),
            sessions: Some(ServerSessions::default()),
            ..ServerConfig::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let server_addr = server.local_addr();
    let server_received: Arc<Mutex<Vec<Option<u32>>>> = Arc::default();
    tokio::spawn(serve(server, server_received.clone()));

    // The proxy: forwards client <-> server and cuts each connection after 1 to 16 KiB.
    let proxy = ChaosProxy::start(
        "127.0.0.1:0",
        server_addr,
        ChaosConfig {
            seed: 7,
            faults: FaultPlan::Random {
                every: Trigger::Bytes(8 * 1024),
                faults: FaultMix::new([(Fault::Rst, 1), (Fault::Fin, 1)]),
            },
            ..ChaosConfig::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;

    // The client, through the proxy, with a session.
    let mut client = Client::connect(
        proxy.local_addr().to_string(),
        ClientConfig {
            protocol,
            sessions: Some(SessionConfig::default()),
            backoff: BackoffConfig {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
                ..BackoffConfig::default()
            },
            ..ClientConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let sender = client.sender();
    tokio::spawn(async move {
        for i in 1..=COUNT {
            // Queued in the session: kept until the server acknowledges it, resent after a cut.
            if sender.send(message(i)).await.is_err() {
                break;
            }
        }
    });

    let (mut echoes, mut resumes, mut disconnects) = (0u32, 0u32, 0u32);
    let tally = tokio::time::timeout(Duration::from_secs(30), async {
        while echoes < COUNT {
            match client.next_event().await {
                Some(ClientEvent::Message(m)) => {
                    if number(&m) != Some(echoes + 1) {
                        return Err(format!(
                            "echo {:?} where {} was due: lost, duplicated or reordered",
                            number(&m),
                            echoes + 1
                        ));
                    }
                    echoes += 1;
                }
                Some(ClientEvent::Disconnected(info)) => {
                    disconnects += 1;
                    println!("[client] link cut: {info}");
                }
                Some(ClientEvent::Session(SessionEvent::Started {
                    status, resending, ..
                })) => match status {
                    ResumeStatus::Resumed => {
                        resumes += 1;
                        println!("[client] session resumed: resending {resending} messages");
                    }
                    other => println!("[client] session {other:?}"),
                },
                Some(ClientEvent::Session(SessionEvent::Lost { unacked, .. })) => {
                    return Err(format!("session lost with {} messages", unacked.len()));
                }
                Some(_) => {}
                None => return Err("the client stopped".into()),
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(format!("only {echoes} of {COUNT} echoes within 30 s")));
    client.close().await;
    let cuts = proxy.stats().faults.total();
    proxy.shutdown().await;
    tally?;

    // What the server's application received: 1, 2, ..., COUNT, each once.
    let received = server_received.lock().unwrap().clone();
    if let Some(at) = (0..COUNT as usize).find(|&i| received.get(i) != Some(&Some(i as u32 + 1))) {
        return Err(format!(
            "the server's message {} was {:?}: lost, duplicated or reordered",
            at + 1,
            received.get(at)
        ));
    }
    if received.len() != COUNT as usize {
        return Err(format!("the server received {} messages", received.len()));
    }
    println!(
        "OK: {COUNT} messages each way, every one exactly once and in order, \
         across {cuts} cuts, {disconnects} disconnects and {resumes} resumptions"
    );
    Ok(())
}

/// The echo server: every message's number is recorded, then the message is queued back in the sender's
/// session by one echo task per session (the connection's reader never waits for it).
async fn serve(mut server: Server, received: Arc<Mutex<Vec<Option<u32>>>>) {
    let handle = server.handle();
    let echoers: Arc<Mutex<HashMap<[u8; 16], Echo>>> = Arc::default();
    // One task per connection. After a resume the connection it replaced may still hold the
    // session's last few messages: the new connection hands out nothing of the session until
    // the old one's task has asked for the event after its last message (or dropped it), so
    // each message is recorded and handed to the echo task in order.
    while let Some(incoming) = server.accept().await {
        let (handle, echoers, received) = (handle.clone(), echoers.clone(), received.clone());
        tokio::spawn(async move {
            let mut connection = incoming.connection;
            let mut echo = None;
            while let Some(event) = connection.next_event().await {
                match event {
                    Event::Session(SessionEvent::Started { id, .. }) => {
                        let mut echoers = echoers.lock().unwrap();
                        let queue = echoers
                            .entry(id)
                            .or_insert_with(|| echo_task(handle.clone(), id));
                        echo = Some(queue.clone());
                    }
                    Event::Message(m) => {
                        received.lock().unwrap().push(number(&m));
                        if let Some(echo) = &echo {
                            let _ = echo.send(m);
                        }
                    }
                    _ => {}
                }
            }
        });
    }
}

/// Where a session's echoes are handed to its echo task.
type Echo = mpsc::UnboundedSender<Bytes>;

/// Queues each message it is given in session `id`, wherever its client is connected now.
fn echo_task(handle: ServerHandle, id: [u8; 16]) -> Echo {
    let (queue, mut pending) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Some(m) = pending.recv().await {
            if let Err(e) = handle.send_to_session(id, m).await {
                println!("[server] echo not queued: {e}");
                return;
            }
        }
    });
    queue
}
