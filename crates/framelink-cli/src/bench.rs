//! `framelink bench`: N connections sending fixed-size messages to an echo server, at a given rate
//! or as fast as they can, for a duration or a message count; reports messages/s, MB/s and
//! latency percentiles (HdrHistogram), for framelink protocol v1 and for a raw-TCP baseline that
//! sends the same bytes with no framing at all, so that the cost of framing is visible.
//! `--rounds N` repeats the modes N times and summarises them, for machines too noisy for one
//! run to tell.
//!
//! # How it measures
//!
//! - Every message starts with the time it was handed over for sending (8 bytes, little-endian
//!   nanoseconds since the start of the run, strictly increasing per connection), then, when the
//!   size allows, a per-connection sequence number (8 bytes); the rest is zero padding.
//! - One writer per connection sends; a reader on its own task takes the echoes, records
//!   `now - timestamp` in a per-connection histogram (nanoseconds, 3 significant figures) and
//!   checks that sequence numbers come back in order. Histograms are merged at the end.
//! - Messages stamped before the end of the warm-up are echoed and checked but not counted.
//! - Memory is bounded by an in-flight window per connection (bytes sent and not yet echoed),
//!   the same for both modes so that their latencies are comparable. A writer that finds the
//!   window full waits until a quarter of it is free again (one wake-up per batch).
//! - Throughput is counted messages over the time from the end of the warm-up to the last
//!   counted echo.
//! - Without ADDR the echo server runs in this process on its own tokio runtime (half the cores;
//!   the client's runtime has the rest), so that client and server do not steal each other's
//!   tasks: as two processes would.
//! - raw mode batches its writes in a 64 KiB buffer, written when full, when the window is
//!   full, or when no message is due yet (`--rate`): no system call per message.
//! - `--rounds N` runs the modes N times, interleaved (raw, framelink, raw, framelink, ...), so
//!   that the slow spells of a shared machine hit every mode alike. The summary gives each
//!   figure's median and min-max over the rounds; a ratio to raw is taken within each round
//!   (that round's framelink over that round's raw) before its median, which cancels whatever
//!   slowed the whole round down. A round cut short by Ctrl-C is reported, not summarised.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use framelink::connection::{self, CloseCode, ConnectionConfig, Event, Receiver, Sender};
use framelink::server::{Server, ServerConfig, ServerHandle, ServerSessions};
use framelink::socket::SocketOptions;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::link_args::{parse_duration, show_duration, Interrupt};

mod tls;

/// Smallest message: the 8-byte timestamp.
const MIN_SIZE: usize = 8;
/// Messages of at least this size also carry a sequence number.
const SEQ_SIZE: usize = 16;
/// Largest message (well under framelink's default `max_message_len` of 8 MiB).
const MAX_SIZE: usize = 4 << 20;
/// raw mode: write the batch buffer once it holds this much.
const RAW_FLUSH_AT: usize = 64 * 1024;
/// Read buffer of the raw reader and of the in-process raw echo server.
const READ_BUFFER: usize = 64 * 1024;
/// Events the in-process echo takes at a time.
const ECHO_BATCH: usize = 1024;
/// framelink mode hands messages to the `Sender` in batches of this many bytes
/// (`Sender::send_batch`), or fewer when the window is full or no message is due yet.
const SEND_BATCH_BYTES: usize = 16 * 1024;
/// framelink mode: messages are cut from buffers of this size (one allocation per chunk).
const ARENA_CHUNK: usize = 256 * 1024;
/// After the last send, wait at most this long for the echoes still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting (and the framelink handshake) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the close, the reader has this long to see the end of the stream.
const READER_TIMEOUT: Duration = Duration::from_secs(5);
/// Progress bar refresh period.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Options of `framelink bench`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  framelink bench                                   # framelink, in-process echo server, 5s
  framelink bench --mode both --size 64 --duration 3s
  framelink bench --mode all --rounds 5 -d 2s       # medians of 5 interleaved rounds
  framelink bench -c 8 --size 16KiB --rate 20000 --count 100000 --json
  framelink serve 127.0.0.1:7000 & framelink bench 127.0.0.1:7000 -c 4
  framelink serve 127.0.0.1:7001 --framing fixed:64 & framelink bench 127.0.0.1:7001 --mode raw

Without ADDR, each mode runs against an echo server inside this process on 127.0.0.1 (a \
framelink Server, or a plain TCP echo for raw) with its own threads, half the cores, the client \
having the rest: this measures the library on this machine.

raw mode is the baseline: the same messages written back-to-back over plain TCP with no framing \
at all, the reader taking exactly SIZE bytes per message. That only works because every message \
has the same size; it is what TCP itself costs, not a usable protocol. Against ADDR, raw mode \
needs a byte echo server, e.g. `framelink serve ADDR --framing fixed:SIZE`.

Latency is measured from when a message is handed over for sending (to the framelink Sender, or \
to raw mode's write buffer) until its echo is read, so it includes queueing: at `--rate max` \
the in-flight window is always full and latency is mostly time spent waiting in it. With \
--rate, late sends catch up (open loop) and `max send lag` says how far behind schedule they \
got. MB/s counts payload bytes, each way (10^6 bytes). Exit status 1 when any message came \
back out of order, with the wrong length, or not at all (in any round).

On a shared or noisy machine one run varies too much to compare modes: --rounds N runs them N \
times, interleaved (raw, framelink, raw, framelink, ...), each run as a single one would be, \
prints each round's table, then a summary: the median and min-max over rounds of each mode's \
msgs/s and MB/s, the median p50 and p99, and the ratio to raw taken within each round (that \
round's framelink over that round's raw), as median and min-max. Ctrl-C ends the current run \
early and skips the rest; a round it cut short is shown but left out of the summary.")]
pub struct BenchArgs {
    /// Echo server to measure (`framelink serve ADDR`); without it, an in-process one.
    #[arg(value_name = "ADDR")]
    addr: Option<String>,

    /// Concurrent connections.
    #[arg(short, long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// Message size in bytes (`64`, `16KiB`, `1MiB`), from 8 to 4MiB. The first 8 bytes are a
    /// timestamp, the next 8 (from 16 bytes) a sequence number.
    #[arg(short, long, value_name = "BYTES", default_value = "64", value_parser = parse_message_size)]
    size: usize,

    /// Messages per second over all connections, or `max`: as fast as the in-flight window
    /// allows.
    #[arg(short, long, value_name = "MSGS_PER_SEC|max", default_value = "max",
          value_parser = parse_rate)]
    rate: Rate,

    /// How long to measure, after the warm-up [default: 5s].
    #[arg(short, long, value_name = "DUR", value_parser = parse_positive_duration,
          conflicts_with = "count")]
    duration: Option<Duration>,

    /// Measure exactly this many messages (over all connections) instead of a duration.
    #[arg(short = 'n', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// framelink protocol v1, the raw-TCP baseline without framing, or both (raw first) with
    /// the ratio between them.
    #[arg(short, long, value_enum, default_value_t = Mode::Framelink)]
    mode: Mode,

    /// Send for this long before measuring (echoes of warm-up messages are checked, not
    /// counted).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// In-flight limit per connection: bytes sent and not yet echoed (at least one message).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_window)]
    window: usize,

    /// `--mode both` against ADDR: the byte echo server for the raw baseline (e.g.
    /// `framelink serve ADDR2 --framing fixed:SIZE`).
    #[arg(long, value_name = "ADDR", requires = "addr")]
    raw_addr: Option<String>,

    /// Run the modes this many times, interleaved, then summarise: median and min-max over
    /// rounds, with each ratio to raw taken within its round.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,

    /// Print one JSON object per run on stdout instead of the table; with --rounds, each has its
    /// `round`, and one `summary` object per mode follows.
    #[arg(long)]
    json: bool,

    /// Also run framelink over TLS (in-process server, certificates made for the run), right
    /// after each framelink run, and give its ratio to plain framelink.
    #[arg(long, conflicts_with = "addr")]
    tls: bool,
}

/// What `--mode` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// framelink protocol v1 (`connection::spawn`, heartbeats at their defaults).
    Framelink,
    /// Plain TCP, no framing: the baseline.
    Raw,
    /// raw, then framelink, with the same settings.
    Both,
    /// framelink with acknowledged sessions (numbered messages, ACKs, retransmit buffer).
    Sessions,
    /// raw, framelink, then framelink with sessions.
    All,
}

/// One measured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Framelink,
    Sessions,
    /// framelink over TLS (`--tls`).
    Tls,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Framelink => "framelink",
            Kind::Sessions => "framelink+sessions",
            Kind::Tls => "framelink+tls",
        }
    }

    /// The run this one's ratios are taken to: plain framelink for TLS, raw for the others.
    fn baseline(self) -> Kind {
        match self {
            Kind::Tls => Kind::Framelink,
            _ => Kind::Raw,
        }
    }
}

/// `--rate`: messages per second over all connections, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Max,
    PerSec(f64),
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    match text.trim() {
        "max" | "MAX" => Ok(Rate::Max),
        other => match other.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::PerSec(rate)),
            _ => Err(format!(
                "bad rate {text:?} (expected messages per second, e.g. 2000, or max)"
            )),
        },
    }
}

/// `65536`, `64KiB`, `64K`, `1MiB`, `100B` (binary units).
fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || format!("bad size {text:?} (expected e.g. 64, 16KiB, 1MiB)");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn parse_message_size(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        n if (MIN_SIZE..=MAX_SIZE).contains(&n) => Ok(n),
        n => Err(format!(
            "{n} bytes is out of range: messages are {MIN_SIZE} bytes (the timestamp) to \
             {MAX_SIZE} bytes"
        )),
    }
}

fn parse_window(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        n if n > 0 && n <= 1 << 30 => Ok(n),
        _ => Err("the window must be between 1 byte and 1GiB".into()),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// The validated settings shared by every mode.
#[derive(Debug, Clone)]
struct Settings {
    connections: usize,
    size: usize,
    /// Messages per second over all connections; `None`: max.
    rate: Option<f64>,
    /// `None` in count mode.
    duration: Option<Duration>,
    count: Option<u64>,
    warmup: Duration,
    /// Per connection, at least `size`.
    window: usize,
    progress: bool,
    /// Worker threads of the client's runtime.
    client_threads: usize,
    /// Worker threads of the in-process server's runtime (0: no in-process server).
    server_threads: usize,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.raw_addr.is_some() && args.mode == Mode::Framelink {
        eprintln!("framelink: --raw-addr is for --mode raw or both");
        return Ok(ExitCode::from(2));
    }
    if args.mode == Mode::Both && args.addr.is_some() && args.raw_addr.is_none() {
        eprintln!(
            "framelink: --mode both against ADDR needs --raw-addr: a byte echo server for the \
             raw baseline (e.g. `framelink serve ADDR2 --framing fixed:{}`)",
            args.size
        );
        return Ok(ExitCode::from(2));
    }
    // An in-process server gets its own runtime and half the cores, as if it were another
    // process; the client gets the rest (all of them against ADDR).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let in_process = args.addr.is_none();
    let server_threads = if in_process { (cores / 2).max(1) } else { 0 };
    let client_threads = cores.saturating_sub(server_threads).max(1);
    let settings = Settings {
        connections: args.connections as usize,
        size: args.size,
        rate: match args.rate {
            Rate::Max => None,
            Rate::PerSec(rate) => Some(rate),
        },
        duration: match args.count {
            Some(_) => None,
            None => Some(args.duration.unwrap_or(Duration::from_secs(5))),
        },
        count: args.count,
        warmup: args.warmup,
        window: args.window.max(args.size),
        progress: std::io::stderr().is_terminal(),
        client_threads,
        server_threads,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let code = runtime.block_on(bench(args, settings));
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

async fn bench(args: BenchArgs, settings: Settings) -> Result<ExitCode> {
    let stop = CancellationToken::new();
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut interrupt = Interrupt::new();
            interrupt.recv().await;
            eprintln!("[bench] interrupted: stopping, reporting what was measured");
            stop.cancel();
            interrupt.recv().await;
            std::process::exit(130);
        })
    };
    let mut runs: Vec<Kind> = match args.mode {
        Mode::Framelink => vec![Kind::Framelink],
        Mode::Raw => vec![Kind::Raw],
        Mode::Both => vec![Kind::Raw, Kind::Framelink],
        Mode::Sessions => vec![Kind::Sessions],
        Mode::All => vec![Kind::Raw, Kind::Framelink, Kind::Sessions],
    };
    if args.tls {
        let after = runs.iter().position(|&k| k == Kind::Framelink);
        runs.insert(after.map_or(runs.len(), |i| i + 1), Kind::Tls);
    }
    let rounds_asked = args.rounds as usize;
    let mut rounds: Vec<Vec<ModeResult>> = Vec::new();
    while rounds.len() < rounds_asked && !stop.is_cancelled() {
        let mut round = Vec::new();
        for &kind in &runs {
            if stop.is_cancelled() {
                break;
            }
            let target = match kind {
                Kind::Framelink | Kind::Sessions | Kind::Tls => args.addr.as_deref(),
                Kind::Raw => args.raw_addr.as_deref().or(args.addr.as_deref()),
            };
            round.push(run_mode(kind, target, &settings, &stop).await?);
        }
        rounds.push(round);
    }
    interrupt.abort();

    let several = rounds_asked > 1;
    let complete: Vec<&[ModeResult]> = rounds
        .iter()
        .filter(|round| round.len() == runs.len() && !round.iter().any(|r| r.interrupted))
        .map(Vec::as_slice)
        .collect();
    let summaries = if several {
        summarize(&complete)
    } else {
        Vec::new()
    };
    if args.json {
        for (index, round) in rounds.iter().enumerate() {
            let ratios = ratios_to_raw(round);
            for result in round {
                let mut value = result.to_json(&settings);
                if let Some((_, ratio)) = ratios.iter().find(|(k, _)| *k == result.kind) {
                    value[format!("vs_{}", result.kind.baseline().name())] = json!({
                        "msgs_per_sec": ratio.msgs,
                        "mb_per_sec": ratio.mb,
                    });
                }
                if several {
                    value["round"] = json!(index + 1);
                }
                println!("{value}");
            }
        }
        for summary in &summaries {
            println!("{}", summary.to_json());
        }
    } else {
        for (index, round) in rounds.iter().enumerate() {
            if several {
                let gap = if index > 0 { "\n" } else { "" };
                println!("{gap}round {}/{rounds_asked}", index + 1);
            }
            print!("{}", table(&settings, round, &ratios_to_raw(round)));
        }
        if !summaries.is_empty() {
            print!("\n{}", summary_table(&summaries, rounds_asked));
        }
    }
    Ok(if rounds.iter().flatten().any(|r| r.errors() > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Each framelink run against its baseline ([`Kind::baseline`]: raw, or plain framelink for
/// TLS) of the same round, if there is one.
fn ratios_to_raw(round: &[ModeResult]) -> Vec<(Kind, Ratio)> {
    round
        .iter()
        .filter(|r| r.kind != Kind::Raw)
        .filter_map(|r| {
            let base = round.iter().find(|b| b.kind == r.kind.baseline())?;
            Some((r.kind, Ratio::of(r, base)))
        })
        .collect()
}

/// framelink relative to raw.
#[derive(Debug, Clone, Copy)]
struct Ratio {
    msgs: f64,
    mb: f64,
}

impl Ratio {
    fn of(framelink: &ModeResult, raw: &ModeResult) -> Ratio {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Ratio {
            msgs: div(framelink.msgs_per_sec(), raw.msgs_per_sec()),
            mb: div(framelink.mb_per_sec(), raw.mb_per_sec()),
        }
    }
}

/// One figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// Of at least one value; the median of an even count is the mean of the middle two.
    fn of(mut values: Vec<f64>) -> Spread {
        assert!(!values.is_empty(), "a spread of no values");
        values.sort_by(f64::total_cmp);
        let middle = values.len() / 2;
        let median = if values.len() % 2 == 0 {
            (values[middle - 1] + values[middle]) / 2.0
        } else {
            values[middle]
        };
        Spread {
            median,
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    fn to_json(self) -> serde_json::Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

/// One mode over the rounds of `--rounds`.
#[derive(Debug)]
struct Summary {
    kind: Kind,
    rounds: usize,
    msgs_per_sec: Spread,
    mb_per_sec: Spread,
    /// Medians over rounds, in nanoseconds.
    p50_ns: f64,
    p99_ns: f64,
    /// Each round's ratio to the raw run of the same round; `None` for raw, or without raw.
    vs_raw: Option<RatioSpread>,
}

/// Ratios to raw, over rounds.
#[derive(Debug)]
struct RatioSpread {
    msgs: Spread,
    mb: Spread,
}

/// Each mode, in the order they ran, over `rounds` that all ran every mode to the end.
fn summarize(rounds: &[&[ModeResult]]) -> Vec<Summary> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    let ratios: Vec<(Kind, Ratio)> = rounds
        .iter()
        .flat_map(|round| ratios_to_raw(round))
        .collect();
    first
        .iter()
        .map(|run| {
            let kind = run.kind;
            let runs: Vec<&ModeResult> = rounds
                .iter()
                .flat_map(|round| round.iter().filter(|r| r.kind == kind))
                .collect();
            let spread = |figure: &dyn Fn(&ModeResult) -> f64| {
                Spread::of(runs.iter().map(|r| figure(r)).collect())
            };
            let ratios: Vec<Ratio> = ratios
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, ratio)| *ratio)
                .collect();
            Summary {
                kind,
                rounds: runs.len(),
                msgs_per_sec: spread(&ModeResult::msgs_per_sec),
                mb_per_sec: spread(&ModeResult::mb_per_sec),
                p50_ns: spread(&|r| r.latency(0.5) as f64).median,
                p99_ns: spread(&|r| r.latency(0.99) as f64).median,
                vs_raw: (!ratios.is_empty()).then(|| RatioSpread {
                    msgs: Spread::of(ratios.iter().map(|r| r.msgs).collect()),
                    mb: Spread::of(ratios.iter().map(|r| r.mb).collect()),
                }),
            }
        })
        .collect()
}

impl Summary {
    fn to_json(&self) -> serde_json::Value {
        let mut value = json!({
            "summary": true,
            "mode": self.kind.name(),
            "rounds": self.rounds,
            "msgs_per_sec": self.msgs_per_sec.to_json(),
            "mb_per_sec": self.mb_per_sec.to_json(),
            "latency_us": { "p50": self.p50_ns / 1000.0, "p99": self.p99_ns / 1000.0 },
        });
        if let Some(vs_raw) = &self.vs_raw {
            value[format!("vs_{}", self.kind.baseline().name())] = json!({
                "msgs_per_sec": vs_raw.msgs.to_json(),
                "mb_per_sec": vs_raw.mb.to_json(),
            });
        }
        value
    }
}

// ---------------------------------------------------------------------------------------------
// One mode: servers, connections, progress.

/// A connection, connected (and past the handshake in framelink mode).
enum Link {
    Raw(TcpStream),
    Framelink(Sender, Receiver),
}

/// An echo server inside this process, for one mode, on its own runtime (its own threads).
struct InProcess {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
}

impl InProcess {
    async fn start(kind: Kind, threads: usize) -> Result<InProcess> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-server")
            .enable_all()
            .build()
            .context("cannot start the server's tokio runtime")?;
        let started = runtime.spawn(async move {
            match kind {
                Kind::Framelink | Kind::Sessions | Kind::Tls => {
                    let config = ServerConfig {
                        sessions: (kind == Kind::Sessions).then(ServerSessions::default),
                        tls: match kind {
                            Kind::Tls => Some(tls::configs()?.server.clone()),
                            _ => None,
                        },
                        // All of the bench's connections come from one address.
                        max_connections_per_ip: usize::MAX,
                        ..ServerConfig::default()
                    };
                    let mut server = Server::bind("127.0.0.1:0", config)
                        .await
                        .context("cannot start the in-process framelink server")?;
                    let (addr, handle) = (server.local_addr(), server.handle());
                    tokio::spawn(async move {
                        while let Some(incoming) = server.accept().await {
                            tokio::spawn(framelink_echo(incoming.connection));
                        }
                    });
                    Ok::<_, anyhow::Error>((addr, Some(handle)))
                }
                Kind::Raw => {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .context("cannot start the in-process echo server")?;
                    let addr = listener.local_addr()?;
                    tokio::spawn(async move {
                        while let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(raw_echo(stream));
                        }
                    });
                    Ok((addr, None))
                }
            }
        });
        let (addr, handle) = started
            .await
            .context("the server's start-up task failed")??;
        Ok(InProcess {
            addr,
            runtime,
            handle,
        })
    }

    async fn stop(self) {
        if let Some(handle) = self.handle {
            let shutdown = self.runtime.spawn(async move {
                handle.shutdown(Duration::from_millis(500)).await;
            });
            let _ = shutdown.await;
        }
        // Ends the accept loop and anything left; does not block this (async) thread.
        self.runtime.shutdown_background();
    }
}

/// The in-process framelink echo: what `framelink serve` does, a batch of events at a time.
async fn framelink_echo(connection: connection::Connection) {
    let (sender, mut events) = connection.split();
    let (mut batch, mut echoes) = (Vec::new(), Vec::new());
    while events.recv_many(&mut batch, ECHO_BATCH).await > 0 {
        echoes.extend(batch.drain(..).filter_map(|event| match event {
            Event::Message(message) => Some(message),
            _ => None,
        }));
        if sender.send_batch(&mut echoes).await.is_err() {
            break;
        }
    }
}

/// The in-process raw echo: bytes back as they come, 64 KiB at a time.
async fn raw_echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn connect(kind: Kind, addr: &str) -> Result<Link> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    // TCP_NODELAY in both modes (framelink's default socket options).
    SocketOptions::default()
        .apply(&stream)
        .context("cannot set socket options")?;
    match kind {
        Kind::Raw => Ok(Link::Raw(stream)),
        Kind::Framelink | Kind::Sessions | Kind::Tls => {
            let connection = if kind == Kind::Tls {
                connection::spawn(tls::connect(stream).await?, ConnectionConfig::default())?
            } else if kind == Kind::Sessions {
                let session = connection::Session::new(rand::random());
                connection::spawn_session(stream, ConnectionConfig::default(), session)?
            } else {
                connection::spawn(stream, ConnectionConfig::default())?
            };
            let (sender, mut receiver) = connection.split();
            loop {
                match receiver.next_event().await {
                    Some(Event::Connected { .. }) => return Ok(Link::Framelink(sender, receiver)),
                    Some(Event::Closed(info)) => {
                        bail!("{addr}: closed during the handshake: {info}")
                    }
                    None => bail!("{addr}: connection ended during the handshake"),
                    Some(_) => {}
                }
            }
        }
    }
}

async fn run_mode(
    kind: Kind,
    target: Option<&str>,
    settings: &Settings,
    stop: &CancellationToken,
) -> Result<ModeResult> {
    let server = match target {
        Some(_) => None,
        None => Some(InProcess::start(kind, settings.server_threads).await?),
    };
    let addr = match (&server, target) {
        (Some(server), _) => server.addr.to_string(),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => unreachable!("a target or an in-process server"),
    };
    let connects = (0..settings.connections).map(|_| connect(kind, &addr));
    let links = tokio::time::timeout(CONNECT_TIMEOUT, futures::future::try_join_all(connects))
        .await
        .map_err(|_| anyhow!("{}: connecting to {addr} timed out", kind.name()))??;

    let epoch = Instant::now();
    let warm_end = epoch + settings.warmup;
    let end = settings.duration.map(|d| warm_end + d);
    // The run's own stop: Ctrl-C, or the end of the duration for writers waiting on something.
    let run_stop = stop.child_token();
    let timer = end.map(|end| {
        let run_stop = run_stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end.into()).await;
            run_stop.cancel();
        })
    });
    let counted = Arc::new(AtomicU64::new(0));
    let progress = settings
        .progress
        .then(|| spawn_progress(kind, settings, epoch, counted.clone()));

    let n = settings.connections as u64;
    let interval = settings
        .rate
        .map(|rate| Duration::from_secs_f64(settings.connections as f64 / rate));
    let mut tasks = Vec::with_capacity(settings.connections);
    for (i, link) in links.into_iter().enumerate() {
        let i = i as u64;
        let plan = Plan {
            epoch,
            // Spread the connections' schedules over one interval.
            start: epoch + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n as f64)),
            warm_end_ns: settings.warmup.as_nanos() as u64,
            end,
            quota: settings
                .count
                .map(|count| count / n + u64::from(i < count % n)),
            interval,
            size: settings.size,
            window: settings.window,
        };
        tasks.push(tokio::spawn(run_connection(
            link,
            plan,
            run_stop.clone(),
            counted.clone(),
        )));
    }
    let target = target.map_or("in-process".into(), str::to_string);
    let mut result = ModeResult::new(kind, target, warm_end);
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(conn) => result.merge(i, conn),
            Err(e) => result
                .connection_errors
                .push(format!("connection #{i}: {e}")),
        }
    }
    result.interrupted = stop.is_cancelled();
    if let Some(timer) = timer {
        timer.abort();
    }
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    if let Some(server) = server {
        server.stop().await;
    }
    Ok(result)
}

fn spawn_progress(
    kind: Kind,
    settings: &Settings,
    epoch: Instant,
    counted: Arc<AtomicU64>,
) -> (ProgressBar, JoinHandle<()>) {
    let warmup = settings.warmup;
    let (len, style) = match (settings.duration, settings.count) {
        (Some(duration), _) => (
            (warmup + duration).as_millis() as u64,
            "{prefix:>9} [{bar:30}] {elapsed:>4} {msg}",
        ),
        (None, count) => (
            count.unwrap_or(0),
            "{prefix:>9} [{bar:30}] {pos}/{len} {msg}",
        ),
    };
    let by_time = settings.duration.is_some();
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(style) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(kind.name());
    let task = {
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(PROGRESS_TICK).await;
                let now = Instant::now();
                let count = counted.load(Ordering::Relaxed);
                let rate = (count - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, count);
                if by_time {
                    bar.set_position((now - epoch).as_millis() as u64);
                } else {
                    bar.set_position(count);
                }
                if now < epoch + warmup {
                    bar.set_message("warming up");
                } else if by_time {
                    bar.set_message(format!(
                        "{} msgs, {} msgs/s",
                        group(count),
                        group(rate as u64)
                    ));
                } else {
                    bar.set_message(format!("{} msgs/s", group(rate as u64)));
                }
            }
        })
    };
    (bar, task)
}

// ---------------------------------------------------------------------------------------------
// One connection: the writer (this task) and the reader (its own task).

/// What one connection does.
#[derive(Debug, Clone)]
struct Plan {
    /// Time zero of the timestamps (the start of the run).
    epoch: Instant,
    /// This connection's first scheduled send (rate mode).
    start: Instant,
    /// Messages stamped from here on are counted.
    warm_end_ns: u64,
    /// Duration mode: nothing is sent from here on.
    end: Option<Instant>,
    /// Count mode: counted messages this connection sends.
    quota: Option<u64>,
    /// Rate mode: the time between this connection's messages.
    interval: Option<Duration>,
    size: usize,
    window: usize,
}

/// A message's header.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    ts_ns: u64,
    seq: u64,
}

/// What the writer should do next.
enum Next {
    Send(Stamp),
    Wait(Instant),
    Done,
}

/// The writer's schedule and counters.
struct Pacer {
    plan: Plan,
    sent: u64,
    counted: u64,
    last_ts: u64,
    /// Rate mode: how far behind schedule a send was, at most.
    max_lag: Duration,
}

impl Pacer {
    fn new(plan: Plan) -> Pacer {
        Pacer {
            plan,
            sent: 0,
            counted: 0,
            last_ts: 0,
            max_lag: Duration::ZERO,
        }
    }

    fn next(&mut self, now: Instant) -> Next {
        let plan = &self.plan;
        if plan.quota.is_some_and(|quota| self.counted >= quota) {
            return Next::Done;
        }
        let due = match plan.interval {
            Some(interval) => plan.start + interval.mul_f64(self.sent as f64),
            None => now,
        };
        if plan.end.is_some_and(|end| due >= end) {
            return Next::Done;
        }
        if due > now {
            return Next::Wait(due);
        }
        self.max_lag = self.max_lag.max(now - due);
        // Strictly increasing, so that order can be checked even without a sequence number.
        let ts_ns = ((now - plan.epoch).as_nanos() as u64).max(self.last_ts + 1);
        self.last_ts = ts_ns;
        let stamp = Stamp {
            ts_ns,
            seq: self.sent,
        };
        self.sent += 1;
        if ts_ns >= plan.warm_end_ns {
            self.counted += 1;
        }
        Next::Send(stamp)
    }
}

/// Writes a message's header and padding.
fn put_message(buf: &mut impl BufMut, stamp: Stamp, size: usize) {
    buf.put_u64_le(stamp.ts_ns);
    if size >= SEQ_SIZE {
        buf.put_u64_le(stamp.seq);
        buf.put_bytes(0, size - SEQ_SIZE);
    } else {
        buf.put_bytes(0, size - MIN_SIZE);
    }
}

/// The sending side of a connection.
enum Out {
    Raw {
        writer: OwnedWriteHalf,
        batch: Vec<u8>,
    },
    Framelink {
        sender: Sender,
        arena: BytesMut,
        /// Messages not handed over yet, and their bytes.
        batch: Vec<Bytes>,
        batch_bytes: usize,
    },
}

impl Out {
    async fn push(&mut self, stamp: Stamp, size: usize) -> Result<(), String> {
        match self {
            Out::Raw { batch, .. } => {
                put_message(batch, stamp, size);
                if batch.len() >= RAW_FLUSH_AT {
                    self.flush().await?;
                }
            }
            Out::Framelink {
                arena,
                batch,
                batch_bytes,
                ..
            } => {
                if arena.capacity() < size {
                    // The previous chunk stays alive until its last message is written.
                    *arena = BytesMut::with_capacity(ARENA_CHUNK.max(size));
                }
                put_message(arena, stamp, size);
                batch.push(arena.split().freeze());
                *batch_bytes += size;
                if *batch_bytes >= SEND_BATCH_BYTES {
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Out::Raw { writer, batch } => {
                if !batch.is_empty() {
                    writer
                        .write_all(batch)
                        .await
                        .map_err(|e| format!("write failed: {e}"))?;
                    batch.clear();
                }
            }
            Out::Framelink {
                sender,
                batch,
                batch_bytes,
                ..
            } => {
                if !batch.is_empty() {
                    sender
                        .send_batch(batch)
                        .await
                        .map_err(|e| format!("send failed: {e}"))?;
                    *batch_bytes = 0;
                }
            }
        }
        Ok(())
    }
}

/// Shared by a connection's writer and reader.
struct Window {
    /// Bytes that may be in flight now.
    permits: Semaphore,
    size: usize,
    /// The writer is done (the end of the stream is expected).
    finishing: AtomicBool,
}

/// What a connection measured.
struct ConnResult {
    sent: u64,
    counted_sent: u64,
    max_lag: Duration,
    reader: Option<ReaderState>,
    error: Option<String>,
}

async fn run_connection(
    link: Link,
    plan: Plan,
    stop: CancellationToken,
    counted: Arc<AtomicU64>,
) -> ConnResult {
    let window = Arc::new(Window {
        permits: Semaphore::new(plan.window),
        size: plan.window,
        finishing: AtomicBool::new(false),
    });
    let state = ReaderState::new(&plan, window.clone(), counted);
    let (mut out, reader) = match link {
        Link::Raw(stream) => {
            let (read_half, write_half) = stream.into_split();
            let out = Out::Raw {
                writer: write_half,
                batch: Vec::with_capacity(RAW_FLUSH_AT + plan.size),
            };
            (out, tokio::spawn(raw_reader(read_half, state)))
        }
        Link::Framelink(sender, receiver) => {
            let out = Out::Framelink {
                sender,
                arena: BytesMut::new(),
                batch: Vec::new(),
                batch_bytes: 0,
            };
            (out, tokio::spawn(framelink_reader(receiver, state)))
        }
    };
    let mut pacer = Pacer::new(plan);
    let mut error = write_loop(&mut out, &mut pacer, &window, &stop).await.err();
    if error.is_none() {
        // Wait for the echoes still in flight: all the window back.
        let all = window.size as u32;
        if tokio::time::timeout(DRAIN_TIMEOUT, window.permits.acquire_many(all))
            .await
            .is_err()
        {
            error = Some(format!(
                "echoes still missing {} after the last send",
                show_duration(DRAIN_TIMEOUT)
            ));
        }
    }
    window.finishing.store(true, Ordering::Release);
    match out {
        Out::Raw { mut writer, .. } => {
            let _ = writer.shutdown().await;
        }
        Out::Framelink { sender, .. } => {
            sender.close(CloseCode::Normal, "bench done").await;
        }
    }
    let reader = match tokio::time::timeout(READER_TIMEOUT, reader).await {
        Ok(Ok(state)) => Some(state),
        Ok(Err(e)) => {
            error.get_or_insert_with(|| format!("reader failed: {e}"));
            None
        }
        Err(_) => {
            error.get_or_insert_with(|| "the stream did not end after the close".into());
            None
        }
    };
    ConnResult {
        sent: pacer.sent,
        counted_sent: pacer.counted,
        max_lag: pacer.max_lag,
        reader,
        error,
    }
}

/// Sends until the plan is done or the run is stopped; every byte of window it holds is given
/// back at the end.
async fn write_loop(
    out: &mut Out,
    pacer: &mut Pacer,
    window: &Window,
    stop: &CancellationToken,
) -> Result<(), String> {
    let size = pacer.plan.size;
    let mut credit = 0usize;
    let mut sends = 0u32;
    let result = loop {
        if credit < size {
            // Take what is free now, if enough; otherwise write what is batched and wait
            // until a quarter of the window (or what is missing, if more) is free.
            let free = window.permits.available_permits();
            if credit + free >= size {
                if let Ok(permit) = window.permits.try_acquire_many(free as u32) {
                    permit.forget();
                    credit += free;
                }
            }
            if credit < size {
                if let Err(e) = out.flush().await {
                    break Err(e);
                }
                let want = (size - credit)
                    .max(window.size / 4)
                    .min(window.size - credit);
                tokio::select! {
                    biased;
                    permit = window.permits.acquire_many(want as u32) => match permit {
                        Ok(permit) => {
                            permit.forget();
                            credit += want;
                        }
                        Err(_) => break Ok(()),
                    },
                    () = stop.cancelled() => break Ok(()),
                }
            }
        }
        sends = sends.wrapping_add(1);
        if sends % 1024 == 0 && stop.is_cancelled() {
            break Ok(());
        }
        match pacer.next(Instant::now()) {
            Next::Done => break Ok(()),
            Next::Wait(at) => {
                if let Err(e) = out.flush().await {
                    break Err(e);
                }
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = stop.cancelled() => break Ok(()),
                }
            }
            Next::Send(stamp) => {
                credit -= size;
                if let Err(e) = out.push(stamp, size).await {
                    break Err(e);
                }
            }
        }
    };
    let result = match result {
        Ok(()) => out.flush().await,
        Err(e) => Err(e),
    };
    window.permits.add_permits(credit);
    result
}

/// The reader's checks and measurements.
struct ReaderState {
    size: usize,
    epoch: Instant,
    warm_end_ns: u64,
    window: Arc<Window>,
    counted_total: Arc<AtomicU64>,
    received: u64,
    counted: u64,
    counted_bytes: u64,
    last_counted: Option<Instant>,
    /// Latency in nanoseconds.
    histogram: Histogram<u64>,
    next_seq: u64,
    last_ts: u64,
    out_of_order: u64,
    bad_length: u64,
    error: Option<String>,
}

impl ReaderState {
    fn new(plan: &Plan, window: Arc<Window>, counted_total: Arc<AtomicU64>) -> ReaderState {
        ReaderState {
            size: plan.size,
            epoch: plan.epoch,
            warm_end_ns: plan.warm_end_ns,
            window,
            counted_total,
            received: 0,
            counted: 0,
            counted_bytes: 0,
            last_counted: None,
            histogram: Histogram::new(3).expect("3 significant figures are supported"),
            next_seq: 0,
            last_ts: 0,
            out_of_order: 0,
            bad_length: 0,
            error: None,
        }
    }

    fn on_message(&mut self, message: &[u8]) {
        let now = Instant::now();
        self.received += 1;
        // The writer counted `size` bytes of window for it, whatever came back.
        self.window.permits.add_permits(self.size);
        if message.len() != self.size {
            self.bad_length += 1;
            return;
        }
        let ts_ns = u64::from_le_bytes(message[..8].try_into().expect("8 bytes"));
        if self.size >= SEQ_SIZE {
            let seq = u64::from_le_bytes(message[8..16].try_into().expect("8 bytes"));
            if seq != self.next_seq {
                self.out_of_order += 1;
            }
            self.next_seq = seq.wrapping_add(1);
        } else if ts_ns <= self.last_ts && self.received > 1 {
            self.out_of_order += 1;
        }
        self.last_ts = ts_ns;
        if ts_ns >= self.warm_end_ns {
            let now_ns = (now - self.epoch).as_nanos() as u64;
            let latency = now_ns.saturating_sub(ts_ns).max(1);
            // The histogram grows as needed (auto-resize); `record` fails only past u64 range.
            if self.histogram.record(latency).is_err() {
                self.histogram.saturating_record(latency);
            }
            self.counted += 1;
            self.counted_bytes += message.len() as u64;
            self.last_counted = Some(now);
            self.counted_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finishing(&self) -> bool {
        self.window.finishing.load(Ordering::Acquire)
    }
}

async fn framelink_reader(mut receiver: Receiver, mut state: ReaderState) -> ReaderState {
    while let Some(event) = receiver.next_event().await {
        match event {
            Event::Message(message) => state.on_message(&message),
            Event::Closed(info) => {
                let clean = !info.by_peer && info.error.is_none() && info.code == CloseCode::Normal;
                if !(clean && state.finishing()) {
                    state.error = Some(format!("connection closed: {info}"));
                }
                break;
            }
            _ => {}
        }
    }
    state
}

async fn raw_reader(reader: OwnedReadHalf, mut state: ReaderState) -> ReaderState {
    let mut reader = BufReader::with_capacity(READ_BUFFER.max(state.size), reader);
    let mut message = vec![0u8; state.size];
    loop {
        match reader.read_exact(&mut message).await {
            Ok(_) => state.on_message(&message),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if !state.finishing() {
                    state.error = Some("the server closed the connection".into());
                }
                break;
            }
            Err(e) => {
                state.error = Some(format!("read failed: {e}"));
                break;
            }
        }
    }
    state
}

// ---------------------------------------------------------------------------------------------
// Results.

/// One mode's merged figures.
struct ModeResult {
    kind: Kind,
    target: String,
    sent: u64,
    received: u64,
    counted_sent: u64,
    messages: u64,
    bytes: u64,
    /// The end of the warm-up: counting starts.
    measure_start: Instant,
    last_echo: Option<Instant>,
    max_lag: Duration,
    histogram: Histogram<u64>,
    out_of_order: u64,
    bad_length: u64,
    connection_errors: Vec<String>,
    /// Cut short by Ctrl-C: shown, but not summarised with the complete rounds.
    interrupted: bool,
}

impl ModeResult {
    fn new(kind: Kind, target: String, measure_start: Instant) -> ModeResult {
        ModeResult {
            kind,
            target,
            sent: 0,
            received: 0,
            counted_sent: 0,
            messages: 0,
            bytes: 0,
            measure_start,
            last_echo: None,
            max_lag: Duration::ZERO,
            histogram: Histogram::new(3).expect("3 significant figures are supported"),
            out_of_order: 0,
            bad_length: 0,
            connection_errors: Vec::new(),
            interrupted: false,
        }
    }

    fn merge(&mut self, index: usize, conn: ConnResult) {
        self.sent += conn.sent;
        self.counted_sent += conn.counted_sent;
        self.max_lag = self.max_lag.max(conn.max_lag);
        if let Some(error) = conn.error {
            self.connection_errors
                .push(format!("connection #{index}: {error}"));
        }
        let Some(reader) = conn.reader else {
            return;
        };
        if let Some(error) = reader.error {
            self.connection_errors
                .push(format!("connection #{index}: {error}"));
        }
        self.received += reader.received;
        self.messages += reader.counted;
        self.bytes += reader.counted_bytes;
        self.last_echo = self.last_echo.max(reader.last_counted);
        self.out_of_order += reader.out_of_order;
        self.bad_length += reader.bad_length;
        // Auto-resizing histograms cannot fail to add.
        let _ = self.histogram.add(&reader.histogram);
    }

    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    fn errors(&self) -> u64 {
        self.out_of_order + self.bad_length + self.lost() + self.connection_errors.len() as u64
    }

    /// From the end of the warm-up to the last counted echo.
    fn elapsed(&self) -> Duration {
        self.last_echo.map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(self.measure_start)
        })
    }

    fn msgs_per_sec(&self) -> f64 {
        per_sec(self.messages as f64, self.elapsed())
    }

    fn mb_per_sec(&self) -> f64 {
        per_sec(self.bytes as f64 / 1e6, self.elapsed())
    }

    /// Latency at a quantile, in nanoseconds (0 without samples).
    fn latency(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            0
        } else {
            self.histogram.value_at_quantile(quantile)
        }
    }

    fn to_json(&self, settings: &Settings) -> serde_json::Value {
        let us = |ns: u64| ns as f64 / 1000.0;
        json!({
            "mode": self.kind.name(),
            "server": self.target,
            "connections": settings.connections,
            "size": settings.size,
            "rate": settings.rate,
            "window": settings.window,
            "client_threads": settings.client_threads,
            "server_threads": settings.server_threads,
            "duration_s": settings.duration.map(|d| d.as_secs_f64()),
            "count": settings.count,
            "warmup_s": settings.warmup.as_secs_f64(),
            "elapsed_s": self.elapsed().as_secs_f64(),
            "messages": self.messages,
            "bytes": self.bytes,
            "msgs_per_sec": self.msgs_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "latency_us": {
                "min": us(if self.histogram.is_empty() { 0 } else { self.histogram.min() }),
                "mean": if self.histogram.is_empty() { 0.0 } else { self.histogram.mean() / 1000.0 },
                "p50": us(self.latency(0.5)),
                "p90": us(self.latency(0.9)),
                "p99": us(self.latency(0.99)),
                "p999": us(self.latency(0.999)),
                "max": us(if self.histogram.is_empty() { 0 } else { self.histogram.max() }),
            },
            "max_send_lag_us": settings.rate.map(|_| self.max_lag.as_secs_f64() * 1e6),
            "sent_total": self.sent,
            "received_total": self.received,
            "errors": self.errors(),
            "out_of_order": self.out_of_order,
            "bad_length": self.bad_length,
            "lost": self.lost(),
            "connection_errors": self.connection_errors,
        })
    }
}

fn per_sec(amount: f64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        amount / elapsed.as_secs_f64()
    }
}

/// The human report.
fn table(settings: &Settings, results: &[ModeResult], ratios: &[(Kind, Ratio)]) -> String {
    let mut s = String::new();
    let conns = match settings.connections {
        1 => "1 connection".to_string(),
        n => format!("{n} connections"),
    };
    let rate = match settings.rate {
        Some(rate) => format!("{} msgs/s", group(rate.round() as u64)),
        None => "max rate".into(),
    };
    let amount = match (settings.duration, settings.count) {
        (Some(d), _) => show_duration(d),
        (None, Some(n)) => format!("{} messages", group(n)),
        (None, None) => String::new(),
    };
    let server = match results.first() {
        Some(r) if r.target != "in-process" => format!("server {}", r.target),
        _ => format!(
            "in-process echo server on 127.0.0.1 ({} thread(s), client {})",
            settings.server_threads, settings.client_threads
        ),
    };
    let _ = writeln!(
        s,
        "framelink bench: {conns}, {}-byte messages, {rate}, {amount} after {} warm-up, window \
         {} per connection; {server}",
        settings.size,
        show_duration(settings.warmup),
        show_size(settings.window),
    );
    let _ = writeln!(
        s,
        "{:<10} {:>11} {:>13} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "mode", "messages", "msgs/s", "MB/s", "p50", "p90", "p99", "p99.9", "max", "errors"
    );
    for r in results {
        let max = if r.histogram.is_empty() {
            0
        } else {
            r.histogram.max()
        };
        let _ = writeln!(
            s,
            "{:<10} {:>11} {:>13} {:>10.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            r.kind.name(),
            group(r.messages),
            group(r.msgs_per_sec().round() as u64),
            r.mb_per_sec(),
            show_latency(r.latency(0.5)),
            show_latency(r.latency(0.9)),
            show_latency(r.latency(0.99)),
            show_latency(r.latency(0.999)),
            show_latency(max),
            r.errors(),
        );
    }
    let _ = writeln!(
        s,
        "(MB/s: payload, each way, 10^6 bytes; latency: send to echo, including queueing)"
    );
    for r in results {
        if settings.rate.is_some() {
            let _ = writeln!(
                s,
                "{}: max send lag behind schedule {}",
                r.kind.name(),
                show_latency(r.max_lag.as_nanos() as u64)
            );
        }
        if r.errors() > 0 {
            let _ = writeln!(
                s,
                "{}: {} out of order, {} wrong length, {} lost (of {} sent)",
                r.kind.name(),
                r.out_of_order,
                r.bad_length,
                r.lost(),
                r.sent
            );
            for error in &r.connection_errors {
                let _ = writeln!(s, "{}: {error}", r.kind.name());
            }
        }
    }
    for (kind, ratio) in ratios {
        let _ = writeln!(
            s,
            "{}/{}: {:.2}x msgs/s, {:.2}x MB/s",
            kind.name(),
            kind.baseline().name(),
            ratio.msgs,
            ratio.mb
        );
    }
    s
}

/// The human summary of `--rounds`, after the rounds' own tables.
fn summary_table(summaries: &[Summary], rounds_asked: usize) -> String {
    let mut s = String::new();
    let rounds = summaries.first().map_or(0, |summary| summary.rounds);
    let which = if rounds == rounds_asked {
        format!("{rounds} rounds")
    } else {
        format!("the {rounds} complete rounds (interrupted, of {rounds_asked})")
    };
    let _ = writeln!(
        s,
        "summary of {which}: median [min-max] over rounds; ratios to raw: taken per round (a \
         round's run / the same round's raw), then median [min-max]"
    );
    let _ = writeln!(
        s,
        "{:<18} {:>11}  {:<23} {:>9}  {:<17} {:>9} {:>9}",
        "mode", "msgs/s", "[min-max]", "MB/s", "[min-max]", "p50", "p99"
    );
    for summary in summaries {
        let (msgs, mb) = (summary.msgs_per_sec, summary.mb_per_sec);
        let whole = |n: f64| group(n.round() as u64);
        let _ = writeln!(
            s,
            "{:<18} {:>11}  {:<23} {:>9.2}  {:<17} {:>9} {:>9}",
            summary.kind.name(),
            whole(msgs.median),
            format!("[{}-{}]", whole(msgs.min), whole(msgs.max)),
            mb.median,
            format!("[{:.2}-{:.2}]", mb.min, mb.max),
            show_latency(summary.p50_ns.round() as u64),
            show_latency(summary.p99_ns.round() as u64),
        );
    }
    for summary in summaries {
        if let Some(RatioSpread { msgs, mb }) = summary.vs_raw {
            let _ = writeln!(
                s,
                "{}/{}: {:.2}x [{:.2}x-{:.2}x] msgs/s, {:.2}x [{:.2}x-{:.2}x] MB/s",
                summary.kind.name(),
                summary.kind.baseline().name(),
                msgs.median,
                msgs.min,
                msgs.max,
                mb.median,
                mb.min,
                mb.max
            );
        }
    }
    s
}

/// `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds for people: `850ns`, `12.3us`, `1.25ms`, `2.01s`.
fn show_latency(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns_f / 1e6)
    } else {
        format!("{:.2}s", ns_f / 1e9)
    }
}

/// `1MiB`, `64KiB`, `100B`.
fn show_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(interval: Option<Duration>, quota: Option<u64>, end: Option<Duration>) -> Plan {
        let epoch = Instant::now();
        Plan {
            epoch,
            start: epoch,
            warm_end_ns: 0,
            end: end.map(|d| epoch + d),
            quota,
            interval,
            size: 64,
            window: 1 << 20,
        }
    }

    #[test]
    fn sizes_rates_and_numbers() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_message_size("7").is_err());
        assert!(parse_message_size("5MiB").is_err());
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("2000"), Ok(Rate::PerSec(2000.0)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(show_latency(850), "850ns");
        assert_eq!(show_latency(12_345), "12.3us");
        assert_eq!(show_latency(1_250_000), "1.25ms");
        assert_eq!(show_size(1 << 20), "1MiB");
        assert_eq!(show_size(100), "100B");
    }

    #[test]
    fn pacer_counts_quota_and_keeps_stamps_increasing() {
        let mut pacer = Pacer::new(plan(None, Some(3), None));
        let now = Instant::now();
        let mut stamps = Vec::new();
        while let Next::Send(stamp) = pacer.next(now) {
            stamps.push(stamp);
        }
        assert_eq!(stamps.len(), 3);
        assert!(stamps.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
        assert_eq!(stamps[2].seq, 2);
    }

    #[test]
    fn pacer_follows_the_rate_schedule() {
        let interval = Duration::from_millis(10);
        let mut pacer = Pacer::new(plan(Some(interval), None, Some(Duration::from_millis(35))));
        let start = pacer.plan.start;
        assert!(matches!(pacer.next(start), Next::Send(_)));
        match pacer.next(start) {
            Next::Wait(at) => assert_eq!(at, start + interval),
            _ => panic!("the second message is not due yet"),
        }
        // Late: catch up, one message per call.
        let late = start + Duration::from_millis(31);
        assert!(matches!(pacer.next(late), Next::Send(_)));
        assert!(matches!(pacer.next(late), Next::Send(_)));
        assert!(matches!(pacer.next(late), Next::Send(_)));
        assert!(pacer.max_lag >= Duration::from_millis(11));
        // The fifth would be due at 40ms, past the end.
        assert!(matches!(pacer.next(late), Next::Done));
    }

    /// A run that counted `msgs` 64-byte messages in exactly one second, each with `latency_ns`
    /// (exact in the histogram below 2048).
    fn measured(kind: Kind, msgs: u64, latency_ns: u64) -> ModeResult {
        let start = Instant::now();
        let mut result = ModeResult::new(kind, "in-process".into(), start);
        result.messages = msgs;
        result.bytes = msgs * 64;
        result.last_echo = Some(start + Duration::from_secs(1));
        result.histogram.record(latency_ns).unwrap();
        result
    }

    #[test]
    fn spread_median_of_odd_and_even_counts() {
        let spread = |median, min, max| Spread { median, min, max };
        assert_eq!(Spread::of(vec![5.0]), spread(5.0, 5.0, 5.0));
        assert_eq!(Spread::of(vec![3.0, 1.0, 2.0]), spread(2.0, 1.0, 3.0));
        assert_eq!(
            Spread::of(vec![4.0, 1.0, 10.0, 2.0]),
            spread(3.0, 1.0, 10.0)
        );
    }

    #[test]
    fn summary_takes_each_ratio_within_its_round() {
        // The second round ran at half speed for both modes; the third was bad for framelink.
        let rounds = [
            [
                measured(Kind::Raw, 1000, 100),
                measured(Kind::Framelink, 800, 400),
            ],
            [
                measured(Kind::Raw, 500, 200),
                measured(Kind::Framelink, 400, 500),
            ],
            [
                measured(Kind::Raw, 900, 300),
                measured(Kind::Framelink, 450, 1000),
            ],
        ];
        let rounds: Vec<&[ModeResult]> = rounds.iter().map(|round| &round[..]).collect();
        let summaries = summarize(&rounds);
        assert_eq!(summaries.len(), 2);
        let (raw, framelink) = (&summaries[0], &summaries[1]);
        assert_eq!(raw.kind, Kind::Raw);
        assert_eq!(raw.rounds, 3);
        let spread = |median, min, max| Spread { median, min, max };
        assert_eq!(raw.msgs_per_sec, spread(900.0, 500.0, 1000.0));
        assert_eq!((raw.p50_ns, raw.p99_ns), (200.0, 200.0));
        assert!(raw.vs_raw.is_none());
        assert_eq!(framelink.kind, Kind::Framelink);
        assert_eq!(framelink.msgs_per_sec, spread(450.0, 400.0, 800.0));
        assert!((framelink.mb_per_sec.median - 0.0288).abs() < 1e-12);
        assert_eq!(framelink.p50_ns, 500.0);
        // Per round 0.8, 0.8 and 0.5; the ratio of the medians (450 / 900) would say 0.5.
        let vs_raw = framelink.vs_raw.as_ref().expect("raw ran");
        assert_eq!(vs_raw.msgs, spread(0.8, 0.5, 0.8));
        assert!((vs_raw.mb.median - 0.8).abs() < 1e-12);
        assert!(summarize(&[]).is_empty());
    }

    #[test]
    fn messages_carry_stamp_and_sequence() {
        let mut buf = Vec::new();
        put_message(&mut buf, Stamp { ts_ns: 7, seq: 9 }, 64);
        assert_eq!(buf.len(), 64);
        assert_eq!(&buf[..8], &7u64.to_le_bytes());
        assert_eq!(&buf[8..16], &9u64.to_le_bytes());
        buf.clear();
        put_message(&mut buf, Stamp { ts_ns: 7, seq: 9 }, 8);
        assert_eq!(buf, 7u64.to_le_bytes());
    }
}
