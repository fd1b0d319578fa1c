//! Memory under attack: runs each memory attack of issue 10 against a framelink echo server in
//! a child process and reports the server's peak resident memory (`VmHWM`) next to its memory
//! budget.
//!
//! ```text
//! cargo run --release -p framelink-perf --bin memory_attack                     # budget 64 MiB
//! cargo run --release -p framelink-perf --bin memory_attack -- --budget-mib 32 --attack partial
//! cargo run --release -p framelink-perf --bin memory_attack -- --no-budget      # the same, unbounded
//! ```
//!
//! Attacks (`--attack NAME`, default all), scaled to several times the budget `B`:
//!
//! - `partial`: `B / 1 MiB` connections (at least 16) each send the first 6 MiB of a 7.5 MiB
//!   message and then trickle one byte every 5 s (the frame timeout is 30 s; the budget is
//!   what has to act);
//! - `no-read`: `B / 2 MiB` clients (at least 8) each send 32 MiB of 64 KiB messages to an echo
//!   server and never read the echoes;
//! - `sessions`: `B / 256 KiB` clients (at least 64) open an acknowledged session, the server
//!   application queues 1 MiB in it, the client never acknowledges and resets; the
//!   application never takes lost sessions (ttl 600 s);
//! - `trickle`: `B / 2 MiB` connections (at least 8) each send 1 MiB of a 7.5 MiB message then
//!   trickle one byte a second, against a 5 s frame timeout: all are cut within about 5 s.
//!
//! Each attack runs against a fresh server process (this binary re-executed with
//! `FRAMELINK_MEMORY_BENCH_SERVER=<attack>`), which reports its `VmHWM` (peak resident set) and
//! `VmRSS` from `/proc/self/status` after binding (the baseline: runtime and binary) and after
//! the attack, with the budget's own counters (`ServerStats`). Each attack is bounded to 50 s.

use framelink::proto::machine::Machine;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use framelink::connection::ConnectionConfig;
use framelink::proto::connection as proto;
use framelink::proto::session::Session;
use framelink::proto::wire::{Hello, Message, WireCodec};
use framelink::{Event, Protocol, Server, ServerConfig, ServerSessions, SessionEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;
const ATTACKS: [&str; 4] = ["partial", "no-read", "sessions", "trickle"];
/// Bound on one attack.
const ATTACK_TIME: Duration = Duration::from_secs(50);

/// Runs memory attacks against a framelink echo server in a child process and reports its peak
/// resident memory next to its memory budget.
#[derive(clap::Parser)]
#[command(name = "memory_attack")]
struct Args {
    /// The server's memory budget, in MiB.
    #[arg(long, default_value_t = 64)]
    budget_mib: usize,
    /// Run only this attack (default: all).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ATTACKS))]
    attack: Option<String>,
    /// The same attacks against a server without a memory budget.
    #[arg(long)]
    no_budget: bool,
}

fn main() {
    if let Ok(attack) = std::env::var("FRAMELINK_MEMORY_BENCH_SERVER") {
        let budget: usize = std::env::var("FRAMELINK_MEMORY_BENCH_BUDGET")
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(usize::MAX);
        return server_process(&attack, budget);
    }
    let Args {
        budget_mib,
        attack: only,
        no_budget,
    } = clap::Parser::parse();
    let budget = budget_mib * MIB;
    println!(
        "| attack | budget | sent to be held | server VmHWM (peak RSS) | baseline VmHWM | budget count peak | evicted / refused / shed / lost dropped | time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for attack in ATTACKS {
        if only.as_deref().is_some_and(|o| o != attack) {
            continue;
        }
        run(attack, budget, no_budget);
    }
}

/// One attack against a fresh server process.
fn run(attack: &str, budget: usize, no_budget: bool) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env("FRAMELINK_MEMORY_BENCH_SERVER", attack)
        .env(
            "FRAMELINK_MEMORY_BENCH_BUDGET",
            if no_budget { usize::MAX } else { budget }.to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let mut words = first.split_whitespace();
    assert_eq!(words.next(), Some("addr"));
    let addr: SocketAddr = words.next().unwrap().parse().unwrap();
    let baseline_hwm: usize = words.next().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let wanted = runtime.block_on(async {
        match tokio::time::timeout(ATTACK_TIME, attack_on(attack, addr, budget)).await {
            Ok(wanted) => wanted,
            Err(_) => {
                eprintln!("{attack}: attack bounded at {ATTACK_TIME:?}");
                0
            }
        }
    });
    let elapsed = start.elapsed();
    writeln!(stdin, "report").unwrap();
    let report = lines.next().unwrap().unwrap();
    drop(stdin);
    drop(runtime);
    let _ = child.wait();
    let field = |name: &str| -> usize {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mib = |b: usize| format!("{:.1} MiB", b as f64 / MIB as f64);
    let budget_text = if no_budget {
        "none".into()
    } else {
        mib(budget)
    };
    println!(
        "| {attack} | {budget_text} | {} | {} | {} | {} | {} / {} / {} / {} | {:.1} s |",
        mib(wanted),
        mib(field("vmhwm_kib") * 1024),
        mib(baseline_hwm * 1024),
        mib(field("memory_peak")),
        field("evicted"),
        field("refused_memory"),
        field("shed"),
        field("lost_dropped"),
        elapsed.as_secs_f64(),
    );
}

/// `/proc/self/status` field in KiB.
fn status_kib(name: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The server: an echo server (sessions: fills each new session with 1 MiB). Prints
/// `addr <addr> <VmHWM KiB>`, then a report line for each `report` line on stdin; exits when
/// stdin closes.
fn server_process(attack: &str, budget: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut connection = ConnectionConfig::default();
        if attack == "trickle" {
            connection.frame_timeout = Some(Duration::from_secs(5));
        }
        let config = ServerConfig {
            protocol: Protocol::Framelink(connection),
            memory_budget: budget,
            max_connections_per_ip: usize::MAX,
            sessions: (attack == "sessions").then(|| ServerSessions {
                ttl: Duration::from_secs(600),
                ..ServerSessions::default()
            }),
            ..ServerConfig::default()
        };
        let mut server = Server::bind("127.0.0.1:0", config).await.unwrap();
        let handle = server.handle();
        println!("addr {} {}", server.local_addr(), status_kib("VmHWM:"));
        std::io::stdout().flush().unwrap();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let (tx, mut rx) = incoming.connection.split();
                    while let Some(event) = rx.next_event().await {
                        match event {
                            // (A `Bytes` clone is a reference count.)
                            Event::Message(m) if tx.send(m.clone()).await.is_err() => break,
                            Event::Session(SessionEvent::Started { .. }) => {
                                for _ in 0..16 {
                                    if tx.send(Bytes::from(vec![1u8; 64 * 1024])).await.is_err() {
                                        break;
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if line.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
        });
        while rx.recv().await.is_some() {
            let s = handle.stats();
            println!(
                "vmhwm_kib={} vmrss_kib={} memory_peak={} memory_used={} evicted={} \
                 refused_memory={} shed={} lost_dropped={} live={}",
                status_kib("VmHWM:"),
                status_kib("VmRSS:"),
                s.memory_peak,
                s.memory_used,
                s.evicted_memory,
                s.refused_memory,
                s.sessions_shed,
                s.lost_dropped,
                s.live,
            );
            std::io::stdout().flush().unwrap();
        }
    });
}

fn wire(messages: &[Message]) -> Vec<u8> {
    let mut codec = WireCodec::new(1 << 24).unwrap();
    codec.set_peer_max_message_len(u32::MAX);
    let mut buf = BytesMut::new();
    for m in messages {
        codec.encode(m, &mut buf).unwrap();
    }
    buf.to_vec()
}

/// Runs `attack`; returns the bytes it sends for the server to hold (partial frames, messages
/// echoed to a client that does not read, messages left in sessions).
async fn attack_on(attack: &str, addr: SocketAddr, budget: usize) -> usize {
    match attack {
        "partial" => partial(addr, (budget / MIB).max(16), 6 * MIB, 5).await,
        "trickle" => partial(addr, (budget / (2 * MIB)).max(8), MIB, 1).await,
        "no-read" => no_read(addr, (budget / (2 * MIB)).max(8)).await,
        "sessions" => sessions(addr, (budget / (256 * 1024)).max(64)).await,
        other => panic!("unknown attack {other}"),
    }
}

/// `n` connections each send the first `sent` bytes of a 7.5 MiB message, then one byte every
/// `every` seconds, until the server ends them.
async fn partial(addr: SocketAddr, n: usize, sent: usize, every: u64) -> usize {
    let mut start = wire(&[Message::Hello(Hello::default())]);
    let frame = wire(&[Message::Data(Bytes::from(vec![0xA5; 7 * MIB + MIB / 2]))]);
    start.extend_from_slice(&frame[..sent]);
    let (start, frame) = (Arc::new(start), Arc::new(frame));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (start, frame) = (start.clone(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(stream) = TcpStream::connect(addr).await else {
                return;
            };
            let (mut reader, mut writer) = stream.into_split();
            // Reads (and discards) what the server sends, to see it end the connection.
            let ended = tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            if writer.write_all(&start).await.is_err() {
                return;
            }
            let mut next = sent;
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await;
            while next < frame.len() && !ended.is_finished() {
                tick.tick().await;
                if writer.write_all(&frame[next..next + 1]).await.is_err() {
                    break;
                }
                next += 1;
            }
            let _ = ended.await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n * sent
}

/// `n` clients each send 32 MiB of 64 KiB messages and never read.
async fn no_read(addr: SocketAddr, n: usize) -> usize {
    let mut flood = wire(&[Message::Hello(Hello::default())]);
    let message = wire(&[Message::Data(Bytes::from(vec![0x5A; 64 * 1024]))]);
    for _ in 0..512 {
        flood.extend_from_slice(&message);
    }
    let flood = Arc::new(flood);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let flood = flood.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            // Blocks once the server stops reading, fails once it evicts us.
            let _ = stream.write_all(&flood).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    n * 32 * MIB
}

/// `n` clients open a session, let the server queue 1 MiB in it, never acknowledge, reset.
async fn sessions(addr: SocketAddr, n: usize) -> usize {
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        let now = Instant::now();
        let mut machine =
            proto::Connection::with_session(ConnectionConfig::default(), Session::new(id), now)
                .unwrap();
        // Until the session started and 1 MiB arrived (unacknowledged: once the session has
        // started, nothing more is written, acks included).
        let mut started = false;
        let mut received = 0usize;
        while received < MIB {
            while let Some(out) = machine.poll_transmit(now) {
                if !started {
                    let _ = stream.write_all(&out).await;
                }
            }
            while let Some(event) = machine.poll_event() {
                if let proto::Event::SessionStarted { .. } = event {
                    started = true;
                }
            }
            match tokio::time::timeout(Duration::from_secs(5), stream.read_buf(machine.recv_buf()))
                .await
            {
                Ok(Ok(n)) if n > 0 => {
                    if started {
                        received += n;
                    }
                    machine.process_input(now);
                }
                _ => break,
            }
        }
        // Reset: dropped with unacknowledged data in flight.
        drop(socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)));
        drop(stream);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    n * MIB
}
