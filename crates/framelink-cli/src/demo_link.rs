//! Part two of `framelink demo`: a server, a reconnecting client and the chaos proxy in one
//! process. Messages stream both ways (the server echoes) over a link the proxy splits into
//! small pieces and cuts again and again (RST, FIN, blackhole). Heartbeats find the dead links,
//! the client reconnects, sessions resume and resend what the other side had not delivered, and
//! at the end a tally checks that every message arrived exactly once, in order, both ways.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use framelink::connection::{ConnectionConfig, ResumeStatus, SendError};
use framelink::{
    BackoffConfig, Client, ClientConfig, ClientEvent, Event, Protocol, Server, ServerConfig,
    ServerHandle, ServerSessions, SessionConfig, SessionEvent,
};
use framelink_chaos::{ChaosConfig, ChaosEvent, ChaosProxy, Fault, FaultMix, FaultPlan, Trigger};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::mpsc;

/// Bytes forwarded between two faults, on average.
const CUT_EVERY: u64 = 1536 * 1024;
/// The whole part is abandoned (and reported as failed) after this long.
const TIME_LIMIT: Duration = Duration::from_secs(50);

/// What the server application saw, per session.
#[derive(Default)]
struct ServerTally {
    /// Numbers of the messages received, in arrival order.
    received: Vec<u32>,
}

/// Runs part two; returns whether every check passed.
pub async fn run(messages: u32, seed: u64) -> Result<bool> {
    println!(
        "Part 2: a hostile link. A client streams {messages} messages (1 B to 2 KiB) to an echo"
    );
    println!(
        "server through a chaos proxy that splits the bytes into pieces of 1 to 1024 bytes and"
    );
    println!(
        "cuts the link about every {} KiB: RST, FIN, or a blackhole (bytes vanish, the",
        CUT_EVERY / 1024
    );
    println!(
        "sockets stay open). Heartbeats (150 ms) find dead links, the client reconnects, and the"
    );
    println!("session resumes: each side resends what the other had not delivered.\n");

    let (server_addr, tallies) = start_echo_server().await?;
    let proxy = ChaosProxy::start(
        "127.0.0.1:0",
        server_addr,
        ChaosConfig {
            seed,
            split: Some(1..=1024),
            faults: FaultPlan::Random {
                every: Trigger::Bytes(CUT_EVERY),
                faults: FaultMix::new([(Fault::Rst, 3), (Fault::Fin, 3), (Fault::Blackhole, 1)]),
            },
            ..ChaosConfig::default()
        },
    )
    .await
    .context("starting the chaos proxy")?;
    let mut proxy_events = proxy.events();
    tokio::spawn(async move {
        while let Some(event) = proxy_events.next().await {
            if let ChaosEvent::Fault {
                conn,
                fault,
                after_bytes,
                ..
            } = event
            {
                println!(
                    "  [proxy]  link #{conn}: {} after {} KiB",
                    fault_name(&fault),
                    after_bytes / 1024
                );
            }
        }
    });

    let mut client = Client::connect(
        proxy.local_addr().to_string(),
        ClientConfig {
            protocol: Protocol::Framelink(ConnectionConfig {
                ping_interval: Some(Duration::from_millis(150)),
                ping_timeout: Duration::from_millis(300),
                max_queued_bytes: 512 * 1024,
                ..ConnectionConfig::default()
            }),
            sessions: Some(SessionConfig::default()),
            backoff: BackoffConfig {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(200),
                ..BackoffConfig::default()
            },
            ..ClientConfig::default()
        },
    )?;
    let started = Instant::now();
    let sender = client.sender();
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        for i in 1..=messages {
            // Two quiet moments, so that heartbeats have something to do.
            if i == messages / 3 || i == 2 * messages / 3 {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            sender.send(message(i, &mut rng)).await?;
        }
        Ok::<(), SendError>(())
    });

    let mut next = 1u32;
    let mut wrong = 0u64;
    let (mut reconnects, mut resumed, mut resent, mut lost) = (0u32, 0u32, 0u64, 0usize);
    let mut shown_rtt = false;
    let deadline = tokio::time::Instant::now() + TIME_LIMIT;
    while next <= messages {
        let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await else {
            println!("  [client] gave up waiting after {TIME_LIMIT:?}");
            break;
        };
        let Some(event) = event else { break };
        match event {
            ClientEvent::Message(m) => {
                if number(&m) == Some(next) {
                    next += 1;
                } else {
                    wrong += 1;
                }
            }
            ClientEvent::Rtt(rtt) if !shown_rtt => {
                shown_rtt = true;
                println!(
                    "  [client] heartbeat while quiet: rtt {:.3} ms",
                    rtt.latest.as_secs_f64() * 1e3
                );
            }
            ClientEvent::Disconnected(info) => {
                shown_rtt = false;
                println!("  [client] link lost after {next} echoes: {info}");
            }
            ClientEvent::Reconnecting { attempt, delay } => {
                reconnects += 1;
                println!(
                    "  [client] reconnecting (attempt {attempt}) in {} ms",
                    delay.as_millis()
                );
            }
            ClientEvent::Session(SessionEvent::Started {
                status: ResumeStatus::Resumed,
                resending,
                ..
            }) => {
                resumed += 1;
                resent += resending;
                println!("  [client] session resumed: resending {resending} undelivered messages");
            }
            ClientEvent::Session(SessionEvent::Lost { unacked, .. }) => lost += unacked.len(),
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let sent_ok = writer.await.map(|r| r.is_ok()).unwrap_or(false);
    client.close().await;
    let stats = proxy.stats();
    drop(proxy);

    let server = tallies
        .lock()
        .map_err(|_| anyhow::anyhow!("server tally poisoned"))?;
    let server_in_order = server.len() == 1
        && server
            .values()
            .next()
            .is_some_and(|t| t.received.iter().copied().eq(1..=messages));
    let client_ok = next == messages + 1 && wrong == 0;
    println!();
    println!(
        "link:     {} connections; cuts: {} RST, {} FIN, {} blackhole; {} reconnects",
        stats.connections, stats.faults.rst, stats.faults.fin, stats.faults.blackhole, reconnects
    );
    println!(
        "          {} writes of 1 to 1024 bytes; {resumed} resumptions resent {resent} messages; {lost} lost",
        stats.pieces
    );
    println!(
        "to server: {}",
        if server_in_order {
            format!("all {messages} messages exactly once, in order")
        } else {
            "FAILED: missing, duplicated or out-of-order messages".to_string()
        }
    );
    println!(
        "to client: {}",
        if client_ok {
            format!("all {messages} echoes exactly once, in order")
        } else {
            format!(
                "FAILED: {} of {messages} in order, {wrong} out of place",
                next - 1
            )
        }
    );
    println!("time:      {elapsed:.2?}");
    Ok(server_in_order && client_ok && sent_ok && lost == 0)
}

fn fault_name(fault: &Fault) -> &'static str {
    match fault {
        Fault::Fin => "FIN (closed)",
        Fault::Rst => "RST (reset)",
        Fault::Blackhole => "blackhole (bytes vanish, sockets stay open)",
        Fault::Stall(_) => "stall",
        _ => "fault",
    }
}

/// Message `i`: its number, then `i`'s low byte repeated (so corruption is visible).
fn message(i: u32, rng: &mut StdRng) -> Bytes {
    let mut m = i.to_be_bytes().to_vec();
    m.resize(4 + rng.gen_range(0..2044), i as u8);
    Bytes::from(m)
}

/// The number of a well-formed message.
fn number(m: &Bytes) -> Option<u32> {
    let n = u32::from_be_bytes(m.get(..4)?.try_into().ok()?);
    m[4..].iter().all(|&b| b == n as u8).then_some(n)
}

/// A session-aware echo server: each session gets one echo task, fed by whichever connection
/// carries the session now, which queues every echo in the session (`send_to_session`), so
/// that echoes reach the client across reconnects too.
async fn start_echo_server() -> Result<(
    std::net::SocketAddr,
    Arc<Mutex<HashMap<[u8; 16], ServerTally>>>,
)> {
    let mut server = Server::bind(
        "127.0.0.1:0",
        ServerConfig {
            protocol: Protocol::Framelink(ConnectionConfig {
                ping_interval: Some(Duration::from_secs(1)),
                ping_timeout: Duration::from_secs(1),
                max_queued_bytes: 512 * 1024,
                ..ConnectionConfig::default()
            }),
            sessions: Some(ServerSessions::default()),
            ..ServerConfig::default()
        },
    )
    .await?;
    let addr = server.local_addr();
    let handle = server.handle();
    let tallies: Arc<Mutex<HashMap<[u8; 16], ServerTally>>> = Arc::default();
    let echoes: Arc<Mutex<HashMap<[u8; 16], mpsc::UnboundedSender<Bytes>>>> = Arc::default();
    let record = tallies.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let (handle, echoes, record) = (handle.clone(), echoes.clone(), record.clone());
            tokio::spawn(async move {
                let mut events = incoming.connection;
                let mut queue = None;
                while let Some(event) = events.next_event().await {
                    match event {
                        Event::Session(SessionEvent::Started { id, .. }) => {
                            let mut echoes = echoes.lock().unwrap_or_else(|e| e.into_inner());
                            let echo = echoes
                                .entry(id)
                                .or_insert_with(|| session_echo(handle.clone(), id, &record));
                            queue = Some(echo.clone());
                        }
                        Event::Message(m) => {
                            if let Some(queue) = &queue {
                                let _ = queue.send(m);
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    Ok((addr, tallies))
}

/// The echo task of session `id`: records each message, then queues it back in the session.
fn session_echo(
    handle: ServerHandle,
    id: [u8; 16],
    record: &Arc<Mutex<HashMap<[u8; 16], ServerTally>>>,
) -> mpsc::UnboundedSender<Bytes> {
    let (queue, mut pending) = mpsc::unbounded_channel::<Bytes>();
    let record = record.clone();
    tokio::spawn(async move {
        while let Some(m) = pending.recv().await {
            if let Some(n) = number(&m) {
                let mut tallies = record.lock().unwrap_or_else(|e| e.into_inner());
                tallies.entry(id).or_default().received.push(n);
            }
            if let Err(e) = handle.send_to_session(id, m).await {
                // The tally reports the missing echoes.
                eprintln!("  [server] echo not queued: {e}");
                return;
            }
        }
    });
    queue
}
