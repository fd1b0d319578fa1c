//! `framelink bench`: N connections sending fixed-size messages to an echo server, at a given rate
//! or as fast as they can, for a duration or a message count; reports messages/s, MB/s and
//! latency percentiles (HdrHistogram), for framelink protocol v1 and for a plain-TCP baseline
//! (`tcp`) that sends the same bytes with no framing at all, so that the cost of framing is
//! visible. With `--framing SPEC` it drives any echo server that speaks that framing (a Netty
//! pipeline, a device simulator, `framelink serve --framing SPEC`), framing the messages with
//! framelink's codecs; several servers given at once are measured in turn, round after round.
//! `--rounds N` repeats the runs N times and summarises them, for machines too noisy for one
//! run to tell.
//!
//! # How it measures
//!
//! - Every message starts with the time it was handed over for sending (8 bytes, little-endian
//!   nanoseconds since the start of the run, strictly increasing per connection), then, when the
//!   size allows, a per-connection sequence number (8 bytes); the rest is filler computed from
//!   the connection, the timestamp and the sequence number, so that no two messages are alike.
//!   Delimiter framings (`line`, `delim`) get the same content written as text: each 4 bits as
//!   one of 16 bytes that no delimiter contains (`0-9a-f` for lines), 16 bytes for the
//!   timestamp, 16 for the sequence number.
//! - One writer per connection sends; a reader on its own task takes the echoes, checks each one
//!   whole (length, timestamp order, sequence number, every filler byte), records
//!   `now - timestamp` in a per-connection histogram (nanoseconds, 3 significant figures).
//!   Histograms are merged at the end. A swapped, duplicated, lost, cut or altered echo is an
//!   error, counted, and the first one of each connection is described.
//! - Messages stamped before the end of the warm-up are echoed and checked but not counted.
//! - Memory is bounded by an in-flight window per connection (bytes sent and not yet echoed),
//!   the same for every mode so that their latencies are comparable. A writer that finds the
//!   window full waits until a quarter of it is free again (one wake-up per batch).
//! - Throughput is counted messages over the time from the end of the warm-up to the last
//!   counted echo.
//! - Without ADDR the echo server runs in this process on its own tokio runtime (half the cores;
//!   the client's runtime has the rest), so that client and server do not steal each other's
//!   tasks: as two processes would.
//! - tcp mode and `--framing` batch their writes in a 64 KiB buffer, written when full, when
//!   the window is full, or when no message is due yet (`--rate`): no system call per message.
//!   `--framing` encodes each message into that buffer with the framing's encoder and cuts the
//!   echoes with its decoder (`framelink::FrameEncoder` / `FrameDecoder`).
//! - `--rounds N` runs everything N times, interleaved (tcp, framelink, tcp, framelink, ...; or
//!   server A, server B, server A, ...), so that the slow spells of a shared machine hit every
//!   run alike. The summary gives each figure's median and min-max over the rounds; a ratio to
//!   the baseline (tcp, or the first server) is taken within each round before its median,
//!   which cancels whatever slowed the whole round down. A round cut short by Ctrl-C is
//!   reported, not summarised.

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
use framelink::connection::{self, CloseCode, ConnectionConfig};
use framelink::proto::codec::AnyCodec;
use framelink::socket::SocketOptions;
use framelink::{
    Connection, Event, FrameDecoder, FrameEncoder, Framing, Protocol, RawConfig, Receiver, Sender,
    Server, ServerConfig, ServerHandle, ServerSessions,
};
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
/// Largest message (well under framelink's default `max_message_len` of 8 MiB).
const MAX_SIZE: usize = 4 << 20;
/// Message size without `--size` (and without `--framing fixed:N`).
const DEFAULT_SIZE: usize = 64;
/// tcp mode and `--framing`: write the batch buffer once it holds this much.
const WRITE_BATCH: usize = 64 * 1024;
/// Read buffer of the tcp and framing readers and of the in-process tcp echo server.
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
  framelink serve 127.0.0.1:7001 --framing fixed:64 & framelink bench 127.0.0.1:7001 --mode tcp
  framelink bench --framing length:4 10.0.0.5:9000 -c 16      # any length-prefixed echo server
  framelink bench --framing line --size 100 127.0.0.1:7002     # a line echo server
  framelink bench --framing length:4 --rounds 5 framelink=127.0.0.1:7003 netty=127.0.0.1:7004

Without ADDR, each run is against an echo server inside this process on 127.0.0.1 (a \
framelink Server, a plain TCP echo for tcp mode, a framelink raw-mode server for --framing) \
with its own threads, half the cores, the client having the rest: this measures the library \
on this machine.

tcp mode is the baseline: the same messages written back-to-back over plain TCP with no \
framing at all, the reader taking exactly SIZE bytes per message. That only works because \
every message has the same size; it is what TCP itself costs, not a usable protocol. Against \
ADDR, tcp mode needs a byte echo server, e.g. `framelink serve ADDR --framing fixed:SIZE`.

--framing SPEC measures any echo server that speaks that framing (the spec of `decode`, \
`serve --framing`: `length:4`, `varint`, `line`, `delim:00`, `fixed:64`, ...) instead of \
framelink protocol v1: each message is framed with framelink's encoder, each echo cut with its \
decoder and checked whole. With delimiter framings (line, delim) messages are text that holds \
no delimiter byte, at least 16 bytes. Several servers (`[NAME=]ADDR ...`) are measured in turn \
with the same settings, interleaved when --rounds is given, each compared with the first.

Latency is measured from when a message is handed over for sending (to the framelink Sender, or \
to the write buffer) until its echo is read, so it includes queueing: at `--rate max` the \
in-flight window is always full and latency is mostly time spent waiting in it. With --rate, \
late sends catch up (open loop) and `max send lag` says how far behind schedule they got. MB/s \
counts payload bytes, each way (10^6 bytes). Every echo is checked: its length, its sequence \
number (or timestamp order) and every byte of its content, which differs from message to \
message. Exit status 1 when any message came back out of order, with the wrong length or \
content, more than once, or not at all (in any round); the first such echo of each connection \
is described.

On a shared or noisy machine one run varies too much to compare: --rounds N runs everything N \
times, interleaved (tcp, framelink, tcp, framelink, ...; or server A, server B, ...), each run as \
a single one would be, prints each round's table, then a summary: the median and min-max over \
rounds of each run's msgs/s and MB/s, the median p50 and p99, and the ratio to the baseline \
(tcp, or the first server) taken within each round (that round's run over that round's \
baseline), as median and min-max. Ctrl-C ends the current run early and skips the rest; a round \
it cut short is shown but left out of the summary.")]
pub struct BenchArgs {
    /// Echo server to measure (`framelink serve ADDR`); without it, an in-process one. With
    /// --framing, one or more servers, each optionally named (`netty=10.0.0.5:9000`).
    #[arg(value_name = "[NAME=]ADDR")]
    addr: Vec<String>,

    /// Concurrent connections. `framelink serve` takes at most 64 from one address by default:
    /// start it with `--max-connections-per-ip N` to measure more from this machine.
    #[arg(short, long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// Message size in bytes (`64`, `16KiB`, `1MiB`), from 8 to 4MiB (16 with delimiter
    /// framings). The first 8 bytes are a timestamp, the next 8 (from 16 bytes) a sequence
    /// number, the rest filler that differs from message to message. [default: 64; with
    /// `--framing fixed:N`, N]
    #[arg(short, long, value_name = "BYTES", value_parser = parse_message_size)]
    size: Option<usize>,

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

    /// framelink protocol v1, the plain-TCP baseline without framing, or both (tcp first) with
    /// the ratio between them.
    #[arg(short, long, value_enum, default_value_t = Mode::Framelink, conflicts_with = "framing")]
    mode: Mode,

    /// Measure an echo server that speaks this framing (`length:4`, `line`, `varint`, ...; as
    /// for `serve --framing`) instead of framelink protocol v1.
    #[arg(short, long, value_name = "SPEC", value_parser = crate::parse_framing)]
    framing: Option<Framing>,

    /// Send for this long before measuring (echoes of warm-up messages are checked, not
    /// counted).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// In-flight limit per connection: bytes sent and not yet echoed (at least one message).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = parse_window)]
    window: usize,

    /// `--mode both` or `all` against ADDR: the byte echo server for the tcp baseline (e.g.
    /// `framelink serve ADDR2 --framing fixed:SIZE`).
    #[arg(
        long,
        value_name = "ADDR",
        alias = "raw-addr",
        requires = "addr",
        conflicts_with = "framing"
    )]
    tcp_addr: Option<String>,

    /// Run everything this many times, interleaved, then summarise: median and min-max over
    /// rounds, with each ratio to the baseline taken within its round.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,

    /// Print one JSON object per run on stdout instead of the table; with --rounds, each has its
    /// `round`, and one `summary` object per run follows.
    #[arg(long)]
    json: bool,

    /// Also run framelink over TLS (in-process server, certificates made for the run), right
    /// after the framelink run: with `--mode framelink`, the report gives TLS / plain.
    #[arg(long, conflicts_with_all = ["addr", "framing"])]
    tls: bool,
}

/// What `--mode` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// framelink protocol v1 (`connection::spawn`, heartbeats at their defaults).
    Framelink,
    /// Plain TCP, no framing: the baseline.
    #[value(alias = "raw")]
    Tcp,
    /// tcp, then framelink, with the same settings.
    Both,
    /// framelink with acknowledged sessions (numbered messages, ACKs, retransmit buffer).
    Sessions,
    /// tcp, framelink, then framelink with sessions.
    All,
}

/// What one run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Framelink,
    Sessions,
    /// `--framing`: the server's own framing, through framelink's codecs.
    Framed,
    /// framelink over TLS (`--tls`).
    Tls,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Framelink => "framelink",
            Kind::Sessions => "framelink+sessions",
            Kind::Framed => "framing",
            Kind::Tls => "framelink+tls",
        }
    }
}

/// One run of a round: what it speaks, its name in the reports, and its server (`None`: in
/// process).
#[derive(Debug, Clone)]
struct RunSpec {
    kind: Kind,
    label: String,
    target: Option<String>,
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

use crate::link_args::parse_size;

fn check_message_size(n: usize) -> Result<usize, String> {
    if (MIN_SIZE..=MAX_SIZE).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} bytes is out of range: messages are {MIN_SIZE} bytes (the timestamp) to \
             {MAX_SIZE} bytes"
        ))
    }
}

fn parse_message_size(text: &str) -> Result<usize, String> {
    check_message_size(parse_size(text)?)
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

/// `NAME=ADDR` or `ADDR`: the run's label (the address when unnamed) and the address.
fn parse_target(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, addr)) if name.is_empty() || addr.is_empty() => Err(format!(
            "{text:?}: expected NAME=ADDR (e.g. netty=127.0.0.1:9000) or ADDR"
        )),
        Some((name, addr)) => Ok((name.to_string(), addr.to_string())),
        None => Ok((text.to_string(), text.to_string())),
    }
}

/// The validated settings shared by every run.
#[derive(Debug, Clone)]
struct Settings {
    connections: usize,
    /// Message size, payload only (the framing's header and trailer come on top).
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
    /// How messages are written and their echoes checked.
    content: Content,
    /// `--framing`: the framing, and where a message sits in its decoded echo.
    framed: Option<Framed>,
}

/// `--framing`, checked against the message size.
#[derive(Debug, Clone)]
struct Framed {
    framing: Framing,
    layout: Layout,
}

/// Where a message sits in the frame the decoder returns for it: after `head` bytes (a length
/// field kept with `strip=0`), in a frame of `frame_len` bytes (a delimiter kept with `keep`);
/// and the bytes a message takes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    head: usize,
    frame_len: usize,
    wire_len: usize,
}

impl Layout {
    /// Encodes `message` and decodes it back with a fresh copy of `framing`, and finds the
    /// message in the frame: what every echo of a message of this size must look like.
    fn probe(framing: &Framing, message: &[u8]) -> Result<Layout, String> {
        let spec = framing.to_string();
        let mut wire = BytesMut::new();
        framing.encode(message, &mut wire).map_err(|e| {
            format!(
                "--framing {spec} cannot carry {}-byte messages: {e}",
                message.len()
            )
        })?;
        let wire_len = wire.len();
        let frame = match framing.reset().decode_eof(&mut wire) {
            Ok(Some(frame)) if wire.is_empty() => frame,
            Ok(_) => {
                return Err(format!(
                    "--framing {spec}: the {wire_len}-byte frame of a {}-byte message does not \
                     decode as one frame",
                    message.len()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "--framing {spec}: a {}-byte message does not decode back: {e}",
                    message.len()
                ))
            }
        };
        let head = (0..=frame.len().saturating_sub(message.len()))
            .find(|&at| frame[at..].starts_with(message))
            .ok_or_else(|| {
                format!(
                    "--framing {spec}: decoding gives a {}-byte frame that does not hold the \
                     {}-byte message it was encoded from",
                    frame.len(),
                    message.len()
                )
            })?;
        Ok(Layout {
            head,
            frame_len: frame.len(),
            wire_len,
        })
    }
}

/// The runs of one round, in order; the first is the baseline of the others.
fn plan_runs(args: &BenchArgs) -> Result<Vec<RunSpec>, String> {
    if args.framing.is_some() {
        if args.addr.is_empty() {
            return Ok(vec![RunSpec {
                kind: Kind::Framed,
                label: Kind::Framed.name().into(),
                target: None,
            }]);
        }
        return args
            .addr
            .iter()
            .map(|text| {
                let (label, addr) = parse_target(text)?;
                Ok(RunSpec {
                    kind: Kind::Framed,
                    label,
                    target: Some(addr),
                })
            })
            .collect();
    }
    if args.addr.len() > 1 {
        return Err(format!(
            "{} servers given: several servers are measured with --framing SPEC; framelink \
             protocol runs take one ADDR (and --tcp-addr for the tcp baseline)",
            args.addr.len()
        ));
    }
    let addr = args.addr.first().cloned();
    if addr.as_deref().is_some_and(|a| a.contains('=')) {
        return Err("NAME=ADDR is for --framing runs; give the address alone".into());
    }
    if args.tcp_addr.is_some() && matches!(args.mode, Mode::Framelink | Mode::Sessions) {
        return Err("--tcp-addr is for --mode tcp, both or all".into());
    }
    if matches!(args.mode, Mode::Both | Mode::All) && addr.is_some() && args.tcp_addr.is_none() {
        return Err(format!(
            "--mode {} against ADDR needs --tcp-addr: a byte echo server for the tcp baseline \
             (e.g. `framelink serve ADDR2 --framing fixed:{}`)",
            if args.mode == Mode::Both {
                "both"
            } else {
                "all"
            },
            args.size.unwrap_or(DEFAULT_SIZE)
        ));
    }
    let mut kinds: Vec<Kind> = match args.mode {
        Mode::Framelink => vec![Kind::Framelink],
        Mode::Tcp => vec![Kind::Tcp],
        Mode::Both => vec![Kind::Tcp, Kind::Framelink],
        Mode::Sessions => vec![Kind::Sessions],
        Mode::All => vec![Kind::Tcp, Kind::Framelink, Kind::Sessions],
    };
    if args.tls {
        // Right after plain framelink, so that the two run back to back in every round.
        let after = kinds.iter().position(|&k| k == Kind::Framelink);
        kinds.insert(after.map_or(kinds.len(), |i| i + 1), Kind::Tls);
    }
    Ok(kinds
        .iter()
        .map(|&kind| RunSpec {
            kind,
            label: kind.name().into(),
            target: match kind {
                Kind::Tcp => args.tcp_addr.clone().or_else(|| addr.clone()),
                _ => addr.clone(),
            },
        })
        .collect())
}

/// The message size, the content and the framing's layout, or why they do not fit together.
fn plan_messages(args: &BenchArgs) -> Result<(usize, Content, Option<Framed>), String> {
    let fixed = match args.framing.as_ref().map(Framing::codec) {
        Some(AnyCodec::Fixed(codec)) => Some(codec.config().length),
        _ => None,
    };
    let size = match (args.size, fixed) {
        (Some(size), _) => size,
        (None, Some(length)) => check_message_size(length)
            .map_err(|e| format!("--framing fixed:{length} frames hold the messages: {e}"))?,
        (None, None) => DEFAULT_SIZE,
    };
    let content = Content::for_framing(args.framing.as_ref())?;
    if size < content.field() {
        return Err(format!(
            "--framing {}: messages are written as text, {} bytes for the timestamp alone; \
             --size {size} is too small",
            args.framing
                .as_ref()
                .map_or(String::new(), Framing::to_string),
            content.field()
        ));
    }
    let framed = match &args.framing {
        Some(framing) => {
            let mut probe = Vec::with_capacity(size);
            content.put(&mut probe, Stamp { ts_ns: 1, seq: 0 }, 0, size);
            let layout = Layout::probe(framing, &probe)?;
            Some(Framed {
                framing: framing.clone(),
                layout,
            })
        }
        None => None,
    };
    Ok((size, content, framed))
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let planned = plan_runs(&args).and_then(|runs| Ok((runs, plan_messages(&args)?)));
    let (runs, (size, content, framed)) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("framelink: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // An in-process server gets its own runtime and half the cores, as if it were another
    // process; the client gets the rest (all of them against ADDR).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let in_process = runs.iter().any(|run| run.target.is_none());
    let server_threads = if in_process { (cores / 2).max(1) } else { 0 };
    let client_threads = cores.saturating_sub(server_threads).max(1);
    let settings = Settings {
        connections: args.connections as usize,
        size,
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
        window: args.window.max(size),
        progress: std::io::stderr().is_terminal(),
        client_threads,
        server_threads,
        content,
        framed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.client_threads)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let code = runtime.block_on(bench(&args, &runs, settings));
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

async fn bench(args: &BenchArgs, runs: &[RunSpec], settings: Settings) -> Result<ExitCode> {
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
    let rounds_asked = args.rounds as usize;
    let mut rounds: Vec<Vec<ModeResult>> = Vec::new();
    while rounds.len() < rounds_asked && !stop.is_cancelled() {
        let mut round = Vec::new();
        for spec in runs {
            if stop.is_cancelled() {
                break;
            }
            round.push(run_mode(spec, &settings, &stop).await?);
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
            for (position, result) in round.iter().enumerate() {
                let mut value = result.to_json(&settings);
                if let Some(ratio) = ratio_to_baseline(round, position) {
                    value["vs"] = json!({
                        "baseline": round[0].label,
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
            print!("{}", table(&settings, round));
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

/// The run at `position` relative to its round's baseline (the first run), when the round has
/// several runs and this is not the first.
fn ratio_to_baseline(round: &[ModeResult], position: usize) -> Option<Ratio> {
    (position > 0 && position < round.len()).then(|| Ratio::of(&round[position], &round[0]))
}

/// A run relative to the baseline.
#[derive(Debug, Clone, Copy)]
struct Ratio {
    msgs: f64,
    mb: f64,
}

impl Ratio {
    fn of(run: &ModeResult, baseline: &ModeResult) -> Ratio {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Ratio {
            msgs: div(run.msgs_per_sec(), baseline.msgs_per_sec()),
            mb: div(run.mb_per_sec(), baseline.mb_per_sec()),
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

/// One run (a position in the rounds) over the rounds of `--rounds`.
#[derive(Debug)]
struct Summary {
    kind: Kind,
    label: String,
    rounds: usize,
    msgs_per_sec: Spread,
    mb_per_sec: Spread,
    /// Medians over rounds, in nanoseconds.
    p50_ns: f64,
    p99_ns: f64,
    /// Each round's ratio to the baseline run of the same round, and the baseline's label;
    /// `None` for the baseline itself, or in rounds of one run.
    vs: Option<(String, RatioSpread)>,
}

/// Ratios to the baseline, over rounds.
#[derive(Debug)]
struct RatioSpread {
    msgs: Spread,
    mb: Spread,
}

/// Each run, in the order they ran, over `rounds` that all ran every run to the end.
fn summarize(rounds: &[&[ModeResult]]) -> Vec<Summary> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|position| {
            let runs: Vec<&ModeResult> = rounds.iter().map(|round| &round[position]).collect();
            let spread = |figure: &dyn Fn(&ModeResult) -> f64| {
                Spread::of(runs.iter().map(|r| figure(r)).collect())
            };
            let ratios: Vec<Ratio> = rounds
                .iter()
                .filter_map(|round| ratio_to_baseline(round, position))
                .collect();
            Summary {
                kind: first[position].kind,
                label: first[position].label.clone(),
                rounds: runs.len(),
                msgs_per_sec: spread(&ModeResult::msgs_per_sec),
                mb_per_sec: spread(&ModeResult::mb_per_sec),
                p50_ns: spread(&|r| r.latency(0.5) as f64).median,
                p99_ns: spread(&|r| r.latency(0.99) as f64).median,
                vs: (!ratios.is_empty()).then(|| {
                    (
                        first[0].label.clone(),
                        RatioSpread {
                            msgs: Spread::of(ratios.iter().map(|r| r.msgs).collect()),
                            mb: Spread::of(ratios.iter().map(|r| r.mb).collect()),
                        },
                    )
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
            "name": self.label,
            "rounds": self.rounds,
            "msgs_per_sec": self.msgs_per_sec.to_json(),
            "mb_per_sec": self.mb_per_sec.to_json(),
            "latency_us": { "p50": self.p50_ns / 1000.0, "p99": self.p99_ns / 1000.0 },
        });
        if let Some((baseline, vs)) = &self.vs {
            value["vs"] = json!({
                "baseline": baseline,
                "msgs_per_sec": vs.msgs.to_json(),
                "mb_per_sec": vs.mb.to_json(),
            });
        }
        value
    }
}

// ---------------------------------------------------------------------------------------------
// Message content: written by the writer, checked whole by the reader.

/// Filler is written and checked in blocks of this many bytes.
const FILL_BLOCK: usize = 64;

/// How a message's stamp and filler are written, and how an echo is checked against them.
///
/// Binary: the timestamp and the sequence number as 8-byte little-endian numbers, filler bytes
/// of any value. Text (delimiter framings): each 4 bits of the numbers as one of 16 digit bytes,
/// most significant first (16 bytes a number), and filler made of the same digits, so that no
/// byte of a message is a delimiter's.
#[derive(Debug, Clone)]
struct Content {
    /// Text: the 16 digits; `None`: binary.
    digits: Option<[u8; 16]>,
    /// Text: each byte's digit value, or `NOT_A_DIGIT`.
    values: [u8; 256],
}

const NOT_A_DIGIT: u8 = 0xff;

impl Content {
    fn binary() -> Content {
        Content {
            digits: None,
            values: [NOT_A_DIGIT; 256],
        }
    }

    /// Text whose digits avoid every byte in `forbidden`: `0-9a-f` when possible, then other
    /// letters and printable bytes, then any byte.
    fn text(forbidden: &[u8]) -> Result<Content, String> {
        let preferred = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let candidates = preferred
            .iter()
            .copied()
            .chain((0x21..0x7f).chain(0x80..=0xff).chain(0..0x21));
        let mut digits = [0u8; 16];
        let mut values = [NOT_A_DIGIT; 256];
        let mut found = 0;
        for byte in candidates {
            if found == digits.len() {
                break;
            }
            if forbidden.contains(&byte) || values[byte as usize] != NOT_A_DIGIT {
                continue;
            }
            digits[found] = byte;
            values[byte as usize] = found as u8;
            found += 1;
        }
        if found < digits.len() {
            return Err(format!(
                "the delimiters use {} distinct byte values: fewer than 16 are left to write \
                 messages with",
                256 - found
            ));
        }
        Ok(Content {
            digits: Some(digits),
            values,
        })
    }

    /// What the messages of a framing look like: text for delimiter framings (no delimiter
    /// byte in them), binary otherwise.
    fn for_framing(framing: Option<&Framing>) -> Result<Content, String> {
        match framing.map(Framing::codec) {
            Some(AnyCodec::Lines(_)) => Content::text(b"\r\n"),
            Some(AnyCodec::Delimiter(codec)) => Content::text(&codec.config().delimiters.concat()),
            _ => Ok(Content::binary()),
        }
    }

    /// Bytes a number takes: the smallest message; twice this carries the sequence number too.
    fn field(&self) -> usize {
        if self.digits.is_some() {
            16
        } else {
            8
        }
    }

    fn put_u64(&self, buf: &mut impl BufMut, value: u64) {
        match &self.digits {
            None => buf.put_u64_le(value),
            Some(digits) => {
                for shift in (0..16).rev() {
                    buf.put_u8(digits[(value >> (shift * 4)) as usize & 15]);
                }
            }
        }
    }

    /// The number in `field` bytes, or the index of the first byte that is not a digit.
    fn get_u64(&self, bytes: &[u8]) -> Result<u64, usize> {
        match self.digits {
            None => Ok(u64::from_le_bytes(
                bytes[..8].try_into().expect("a field is 8 bytes"),
            )),
            Some(_) => bytes[..16]
                .iter()
                .enumerate()
                .try_fold(0u64, |acc, (i, b)| match self.values[*b as usize] {
                    NOT_A_DIGIT => Err(i),
                    digit => Ok(acc << 4 | u64::from(digit)),
                }),
        }
    }

    /// The filler block of a message: a function of the connection, the timestamp and the
    /// sequence number (when the message carries one).
    fn filler(&self, conn: u64, ts_ns: u64, seq: Option<u64>) -> [u8; FILL_BLOCK] {
        let mut state = splitmix64(conn.wrapping_mul(0xa076_1d64_78bd_642f) ^ ts_ns)
            ^ seq.map_or(0, |seq| splitmix64(seq ^ 0xe703_7ed1_a0b4_28db));
        let mut block = [0u8; FILL_BLOCK];
        for chunk in block.chunks_exact_mut(16) {
            let word = splitmix64(state);
            state = word;
            match &self.digits {
                None => {
                    chunk[..8].copy_from_slice(&word.to_le_bytes());
                    chunk[8..].copy_from_slice(&word.rotate_left(32).to_le_bytes());
                }
                Some(digits) => {
                    for (i, byte) in chunk.iter_mut().enumerate() {
                        *byte = digits[(word >> (i * 4)) as usize & 15];
                    }
                }
            }
        }
        block
    }

    /// Writes a `size`-byte message of connection `conn`.
    fn put(&self, buf: &mut impl BufMut, stamp: Stamp, conn: u64, size: usize) {
        let field = self.field();
        self.put_u64(buf, stamp.ts_ns);
        let seq = (size >= 2 * field).then(|| {
            self.put_u64(buf, stamp.seq);
            stamp.seq
        });
        let mut rest = size - if seq.is_some() { 2 * field } else { field };
        let block = self.filler(conn, stamp.ts_ns, seq);
        while rest > 0 {
            let n = rest.min(FILL_BLOCK);
            buf.put_slice(&block[..n]);
            rest -= n;
        }
    }

    /// Reads back a message of connection `conn` (of the expected size): its timestamp and
    /// sequence number, or the index of the first byte that differs from what was sent.
    fn check(&self, message: &[u8], conn: u64) -> Result<(u64, Option<u64>), usize> {
        let field = self.field();
        let ts_ns = self.get_u64(message)?;
        let seq = if message.len() >= 2 * field {
            Some(self.get_u64(&message[field..]).map_err(|at| field + at)?)
        } else {
            None
        };
        let start = if seq.is_some() { 2 * field } else { field };
        let block = self.filler(conn, ts_ns, seq);
        for (i, chunk) in message[start..].chunks(FILL_BLOCK).enumerate() {
            if chunk != &block[..chunk.len()] {
                let at = chunk
                    .iter()
                    .zip(block)
                    .position(|(a, b)| *a != b)
                    .unwrap_or(0);
                return Err(start + i * FILL_BLOCK + at);
            }
        }
        Ok((ts_ns, seq))
    }
}

/// SplitMix64's output function: a cheap, well-mixed 64-bit hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// One run: servers, connections, progress.

/// A connection, connected (and past the handshake in framelink mode).
enum Link {
    Tcp(TcpStream),
    Framelink(Sender, Receiver),
    /// `--framing`: the stream, and a fresh codec for each direction.
    Framed(TcpStream, Framing),
}

/// An echo server inside this process, for one run, on its own runtime (its own threads).
struct InProcess {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
}

impl InProcess {
    /// `framing`: the raw-mode server's framing, for `Kind::Framed`.
    async fn start(kind: Kind, framing: Option<Framing>, threads: usize) -> Result<InProcess> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-server")
            .enable_all()
            .build()
            .context("cannot start the server's tokio runtime")?;
        let started = runtime.spawn(async move {
            match kind {
                Kind::Framelink | Kind::Sessions | Kind::Framed | Kind::Tls => {
                    let protocol = match framing {
                        Some(framing) if kind == Kind::Framed => {
                            // What `framelink serve --framing SPEC` runs: no heartbeat.
                            let mut raw = RawConfig::new(framing);
                            raw.ping_interval = None;
                            Protocol::Raw(Box::new(raw))
                        }
                        _ => Protocol::Framelink(ConnectionConfig::default()),
                    };
                    let config = ServerConfig {
                        protocol,
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
                Kind::Tcp => {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .context("cannot start the in-process echo server")?;
                    let addr = listener.local_addr()?;
                    tokio::spawn(async move {
                        while let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(tcp_echo(stream));
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

/// The in-process framelink echo (protocol or raw mode): what `framelink serve` does, a batch of
/// events at a time.
async fn framelink_echo(connection: Connection) {
    let (sender, mut events) = connection.split();
    let (mut batch, mut echoes) = (Vec::new(), Vec::new());
    while events.recv_many(&mut batch, ECHO_BATCH).await > 0 {
        echoes.extend(batch.drain(..).filter_map(|event| match event {
            Event::Message(message) => Some(message),
            _ => None,
        }));
        // As `framelink serve` does (the bench's messages all fit: nothing is refused).
        crate::serve::queue_echoes(&sender, &mut echoes, |_, _| {}).await;
    }
}

/// The in-process tcp echo: bytes back as they come, 64 KiB at a time.
async fn tcp_echo(stream: TcpStream) {
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

async fn connect(kind: Kind, addr: &str, framing: Option<&Framing>) -> Result<Link> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    // TCP_NODELAY in every mode (framelink's default socket options).
    SocketOptions::default()
        .apply(&stream)
        .context("cannot set socket options")?;
    match kind {
        Kind::Tcp => Ok(Link::Tcp(stream)),
        Kind::Framed => {
            let framing = framing.context("--framing runs have a framing")?;
            Ok(Link::Framed(stream, framing.reset()))
        }
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
    spec: &RunSpec,
    settings: &Settings,
    stop: &CancellationToken,
) -> Result<ModeResult> {
    let kind = spec.kind;
    let framing = settings.framed.as_ref().map(|framed| &framed.framing);
    let (server, addr) = match &spec.target {
        Some(addr) => (None, addr.clone()),
        None => {
            let server = InProcess::start(kind, framing.cloned(), settings.server_threads).await?;
            let addr = server.addr.to_string();
            (Some(server), addr)
        }
    };
    let connects = (0..settings.connections).map(|_| connect(kind, &addr, framing));
    let links = tokio::time::timeout(CONNECT_TIMEOUT, futures::future::try_join_all(connects))
        .await
        .map_err(|_| anyhow!("{}: connecting to {addr} timed out", spec.label))??;

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
        .then(|| spawn_progress(&spec.label, settings, epoch, counted.clone()));

    let n = settings.connections as u64;
    let interval = settings
        .rate
        .map(|rate| Duration::from_secs_f64(settings.connections as f64 / rate));
    let mut tasks = Vec::with_capacity(settings.connections);
    for (i, link) in links.into_iter().enumerate() {
        let i = i as u64;
        let plan = Plan {
            conn: i,
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
            Checks {
                content: settings.content.clone(),
                layout: settings.framed.as_ref().map(|framed| framed.layout),
            },
            run_stop.clone(),
            counted.clone(),
        )));
    }
    let target = spec.target.clone().unwrap_or_else(|| "in-process".into());
    let mut result = ModeResult::new(kind, spec.label.clone(), target, warm_end);
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
    label: &str,
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
    bar.set_prefix(label.to_string());
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
    /// The connection's index: part of every message's content.
    conn: u64,
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

/// The sending side of a connection.
enum Out {
    Tcp {
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
    /// `--framing`: each message is written to `message`, then encoded into `batch`.
    Framed {
        writer: OwnedWriteHalf,
        framing: Framing,
        message: Vec<u8>,
        batch: BytesMut,
    },
}

impl Out {
    async fn push(
        &mut self,
        content: &Content,
        stamp: Stamp,
        conn: u64,
        size: usize,
    ) -> Result<(), String> {
        match self {
            Out::Tcp { batch, .. } => {
                content.put(batch, stamp, conn, size);
                if batch.len() >= WRITE_BATCH {
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
                content.put(arena, stamp, conn, size);
                batch.push(arena.split().freeze());
                *batch_bytes += size;
                if *batch_bytes >= SEND_BATCH_BYTES {
                    self.flush().await?;
                }
            }
            Out::Framed {
                framing,
                message,
                batch,
                ..
            } => {
                message.clear();
                content.put(message, stamp, conn, size);
                framing.encode(message, batch).map_err(|e| {
                    format!("cannot encode message {} ({size} bytes): {e}", stamp.seq)
                })?;
                if batch.len() >= WRITE_BATCH {
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), String> {
        match self {
            Out::Tcp { writer, batch } => {
                if !batch.is_empty() {
                    writer
                        .write_all(batch)
                        .await
                        .map_err(|e| format!("write failed: {e}"))?;
                    batch.clear();
                }
            }
            Out::Framed { writer, batch, .. } => {
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

    /// Ends the sending side: FIN, or framelink's CLOSE.
    async fn close(self) {
        match self {
            Out::Tcp { mut writer, .. } | Out::Framed { mut writer, .. } => {
                let _ = writer.shutdown().await;
            }
            Out::Framelink { sender, .. } => {
                sender.close(CloseCode::Normal, "bench done").await;
            }
        }
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

/// What the reader checks every echo against.
struct Checks {
    content: Content,
    /// `--framing`: where the message sits in each decoded frame.
    layout: Option<Layout>,
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
    checks: Checks,
    stop: CancellationToken,
    counted: Arc<AtomicU64>,
) -> ConnResult {
    let window = Arc::new(Window {
        permits: Semaphore::new(plan.window),
        size: plan.window,
        finishing: AtomicBool::new(false),
    });
    let content = checks.content.clone();
    let state = ReaderState::new(&plan, checks, window.clone(), counted);
    let (mut out, reader) = match link {
        Link::Tcp(stream) => {
            let (read_half, write_half) = stream.into_split();
            let out = Out::Tcp {
                writer: write_half,
                batch: Vec::with_capacity(WRITE_BATCH + plan.size),
            };
            (out, tokio::spawn(tcp_reader(read_half, state)))
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
        Link::Framed(stream, framing) => {
            let (read_half, write_half) = stream.into_split();
            let decoder = framing.reset();
            let out = Out::Framed {
                writer: write_half,
                framing,
                message: Vec::with_capacity(plan.size),
                batch: BytesMut::with_capacity(WRITE_BATCH + 2 * plan.size),
            };
            (out, tokio::spawn(framed_reader(read_half, decoder, state)))
        }
    };
    let mut pacer = Pacer::new(plan);
    let mut error = write_loop(&mut out, &content, &mut pacer, &window, &stop)
        .await
        .err();
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
    out.close().await;
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
    content: &Content,
    pacer: &mut Pacer,
    window: &Window,
    stop: &CancellationToken,
) -> Result<(), String> {
    let (size, conn) = (pacer.plan.size, pacer.plan.conn);
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
                if let Err(e) = out.push(content, stamp, conn, size).await {
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
    conn: u64,
    size: usize,
    checks: Checks,
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
    corrupt: u64,
    /// The first echo found wrong, described.
    first_problem: Option<String>,
    error: Option<String>,
}

impl ReaderState {
    fn new(
        plan: &Plan,
        checks: Checks,
        window: Arc<Window>,
        counted_total: Arc<AtomicU64>,
    ) -> ReaderState {
        ReaderState {
            conn: plan.conn,
            size: plan.size,
            checks,
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
            corrupt: 0,
            first_problem: None,
            error: None,
        }
    }

    /// Keeps the first problem's description.
    fn problem(&mut self, describe: impl FnOnce() -> String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(describe());
        }
    }

    /// An echo as the decoder returned it: with `--framing`, the message inside the frame.
    fn on_frame(&mut self, frame: &[u8]) {
        match self.checks.layout {
            Some(layout) if frame.len() == layout.frame_len => {
                self.on_message(&frame[layout.head..layout.head + self.size]);
            }
            Some(layout) => {
                self.received += 1;
                self.window.permits.add_permits(self.size);
                self.bad_length += 1;
                let n = self.received;
                self.problem(|| {
                    format!(
                        "echo {n} is a {}-byte frame, expected {} bytes",
                        frame.len(),
                        layout.frame_len
                    )
                });
            }
            None => self.on_message(frame),
        }
    }

    fn on_message(&mut self, message: &[u8]) {
        let now = Instant::now();
        self.received += 1;
        let n = self.received;
        // The writer counted `size` bytes of window for it, whatever came back.
        self.window.permits.add_permits(self.size);
        if message.len() != self.size {
            self.bad_length += 1;
            let size = self.size;
            self.problem(|| format!("echo {n} has {} bytes, expected {size}", message.len()));
            return;
        }
        let (ts_ns, seq) = match self.checks.content.check(message, self.conn) {
            Ok(stamp) => stamp,
            Err(at) => {
                self.corrupt += 1;
                // Taken for the message that was due, so that the next one is not out of order.
                self.next_seq = self.next_seq.wrapping_add(1);
                self.problem(|| {
                    format!("echo {n}: byte {at} differs from what this connection sent")
                });
                return;
            }
        };
        match seq {
            Some(seq) => {
                if seq != self.next_seq {
                    self.out_of_order += 1;
                    let expected = self.next_seq;
                    self.problem(|| {
                        format!(
                            "echo {n} is message {seq}, expected message {expected} (an echo \
                             swapped, repeated or missing)"
                        )
                    });
                }
                self.next_seq = seq.wrapping_add(1);
            }
            None if ts_ns <= self.last_ts && n > 1 => {
                self.out_of_order += 1;
                self.problem(|| {
                    format!(
                        "echo {n} was sent before echo {} (an echo swapped or repeated)",
                        n - 1
                    )
                });
            }
            None => {}
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

async fn tcp_reader(reader: OwnedReadHalf, mut state: ReaderState) -> ReaderState {
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

/// `--framing`: reads the stream, cuts it into frames with `decoder` and checks each one. A
/// decoding error ends the connection (the framing is lost), except the recoverable ones of
/// `discard` specs, which are counted as wrong-length echoes.
async fn framed_reader(
    mut reader: OwnedReadHalf,
    mut decoder: Framing,
    mut state: ReaderState,
) -> ReaderState {
    let frame_len = state.checks.layout.map_or(state.size, |l| l.frame_len);
    let mut buf = BytesMut::with_capacity(READ_BUFFER.max(2 * frame_len));
    let mut eof = false;
    loop {
        loop {
            match decoder.decode_with_eof(&mut buf, eof) {
                Ok(Some(frame)) => state.on_frame(&frame),
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    state.bad_length += 1;
                    state.problem(|| format!("echo not decoded: {e}"));
                }
                Err(e) => {
                    state.error = Some(format!("cannot decode the echoes: {e}"));
                    return state;
                }
            }
        }
        if eof {
            if !state.finishing() {
                state.error = Some("the server closed the connection".into());
            }
            return state;
        }
        if buf.capacity() - buf.len() < READ_BUFFER / 4 {
            buf.reserve(READ_BUFFER);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(e) => {
                state.error = Some(format!("read failed: {e}"));
                return state;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results.

/// One run's merged figures.
struct ModeResult {
    kind: Kind,
    /// The run's name in reports: the mode, or the server's name with `--framing`.
    label: String,
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
    /// Echoes whose content differs from what was sent.
    corrupt: u64,
    /// Messages sent and never echoed, summed over connections.
    lost: u64,
    /// Echoes beyond the messages sent (repeated ones), summed over connections.
    unexpected: u64,
    /// The first wrong echo of each connection that had one, described.
    problems: Vec<String>,
    connection_errors: Vec<String>,
    /// Cut short by Ctrl-C: shown, but not summarised with the complete rounds.
    interrupted: bool,
}

impl ModeResult {
    fn new(kind: Kind, label: String, target: String, measure_start: Instant) -> ModeResult {
        ModeResult {
            kind,
            label,
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
            corrupt: 0,
            lost: 0,
            unexpected: 0,
            problems: Vec::new(),
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
            // Nothing known to have come back.
            self.lost += conn.sent;
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
        self.corrupt += reader.corrupt;
        self.lost += conn.sent.saturating_sub(reader.received);
        self.unexpected += reader.received.saturating_sub(conn.sent);
        if let Some(problem) = reader.first_problem {
            self.problems
                .push(format!("connection #{index}: {problem}"));
        }
        // Auto-resizing histograms cannot fail to add.
        let _ = self.histogram.add(&reader.histogram);
    }

    fn errors(&self) -> u64 {
        self.out_of_order
            + self.bad_length
            + self.corrupt
            + self.lost
            + self.unexpected
            + self.connection_errors.len() as u64
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
        let mut value = json!({
            "mode": self.kind.name(),
            "name": self.label,
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
            "corrupt": self.corrupt,
            "lost": self.lost,
            "unexpected": self.unexpected,
            "problems": self.problems,
            "connection_errors": self.connection_errors,
        });
        if let Some(framed) = &settings.framed {
            value["framing"] = json!(framed.framing.to_string());
            value["wire_bytes"] = json!(framed.layout.wire_len);
        }
        value
    }
}

fn per_sec(amount: f64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        amount / elapsed.as_secs_f64()
    }
}

/// The human report of one round.
fn table(settings: &Settings, results: &[ModeResult]) -> String {
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
    let in_process = format!(
        "in-process echo server on 127.0.0.1 ({} thread(s), client {})",
        settings.server_threads, settings.client_threads
    );
    let server = match &settings.framed {
        Some(framed) => {
            let servers: Vec<String> = results
                .iter()
                .map(|r| match r.target.as_str() {
                    "in-process" => in_process.clone(),
                    target if target == r.label => target.to_string(),
                    target => format!("{} {target}", r.label),
                })
                .collect();
            format!(
                "framing {} ({} bytes a message on the wire); {}",
                framed.framing,
                framed.layout.wire_len,
                servers.join(", ")
            )
        }
        None => match results.first() {
            Some(r) if r.target != "in-process" => format!("server {}", r.target),
            _ => in_process,
        },
    };
    let _ = writeln!(
        s,
        "framelink bench: {conns}, {}-byte messages, {rate}, {amount} after {} warm-up, window \
         {} per connection; {server}",
        settings.size,
        show_duration(settings.warmup),
        show_size(settings.window),
    );
    let width = label_width(results.iter().map(|r| r.label.as_str()));
    let _ = writeln!(
        s,
        "{:<width$} {:>11} {:>13} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "run", "messages", "msgs/s", "MB/s", "p50", "p90", "p99", "p99.9", "max", "errors"
    );
    for r in results {
        let max = if r.histogram.is_empty() {
            0
        } else {
            r.histogram.max()
        };
        let _ = writeln!(
            s,
            "{:<width$} {:>11} {:>13} {:>10.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            r.label,
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
                r.label,
                show_latency(r.max_lag.as_nanos() as u64)
            );
        }
        if r.errors() > 0 {
            let _ = writeln!(
                s,
                "{}: {} out of order, {} wrong length, {} wrong content, {} lost, {} unexpected \
                 (of {} sent, {} echoed)",
                r.label,
                r.out_of_order,
                r.bad_length,
                r.corrupt,
                r.lost,
                r.unexpected,
                r.sent,
                r.received
            );
            for problem in r.problems.iter().chain(&r.connection_errors) {
                let _ = writeln!(s, "{}: {problem}", r.label);
            }
        }
    }
    for (position, r) in results.iter().enumerate() {
        if let Some(ratio) = ratio_to_baseline(results, position) {
            let _ = writeln!(
                s,
                "{}/{}: {:.2}x msgs/s, {:.2}x MB/s",
                r.label, results[0].label, ratio.msgs, ratio.mb
            );
        }
    }
    s
}

/// Width of the first column: the longest label, at least 10.
fn label_width<'a>(labels: impl Iterator<Item = &'a str>) -> usize {
    labels.map(str::len).max().unwrap_or(0).max(10)
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
    let baseline = summaries
        .first()
        .map_or("", |summary| summary.label.as_str());
    let _ = writeln!(
        s,
        "summary of {which}: median [min-max] over rounds{}",
        if summaries.len() > 1 {
            format!(
                "; ratios to {baseline}: taken per round (a round's run / the same round's \
                 {baseline}), then median [min-max]"
            )
        } else {
            String::new()
        }
    );
    let width = label_width(summaries.iter().map(|summary| summary.label.as_str())).max(18);
    let _ = writeln!(
        s,
        "{:<width$} {:>11}  {:<23} {:>9}  {:<17} {:>9} {:>9}",
        "run", "msgs/s", "[min-max]", "MB/s", "[min-max]", "p50", "p99"
    );
    for summary in summaries {
        let (msgs, mb) = (summary.msgs_per_sec, summary.mb_per_sec);
        let whole = |n: f64| group(n.round() as u64);
        let _ = writeln!(
            s,
            "{:<width$} {:>11}  {:<23} {:>9.2}  {:<17} {:>9} {:>9}",
            summary.label,
            whole(msgs.median),
            format!("[{}-{}]", whole(msgs.min), whole(msgs.max)),
            mb.median,
            format!("[{:.2}-{:.2}]", mb.min, mb.max),
            show_latency(summary.p50_ns.round() as u64),
            show_latency(summary.p99_ns.round() as u64),
        );
    }
    for summary in summaries {
        if let Some((baseline, RatioSpread { msgs, mb })) = &summary.vs {
            let _ = writeln!(
                s,
                "{}/{baseline}: {:.2}x [{:.2}x-{:.2}x] msgs/s, {:.2}x [{:.2}x-{:.2}x] MB/s",
                summary.label, msgs.median, msgs.min, msgs.max, mb.median, mb.min, mb.max
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
            conn: 0,
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
        let mut result = ModeResult::new(kind, kind.name().into(), "in-process".into(), start);
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
                measured(Kind::Tcp, 1000, 100),
                measured(Kind::Framelink, 800, 400),
            ],
            [
                measured(Kind::Tcp, 500, 200),
                measured(Kind::Framelink, 400, 500),
            ],
            [
                measured(Kind::Tcp, 900, 300),
                measured(Kind::Framelink, 450, 1000),
            ],
        ];
        let rounds: Vec<&[ModeResult]> = rounds.iter().map(|round| &round[..]).collect();
        let summaries = summarize(&rounds);
        assert_eq!(summaries.len(), 2);
        let (tcp, framelink) = (&summaries[0], &summaries[1]);
        assert_eq!(tcp.kind, Kind::Tcp);
        assert_eq!(tcp.rounds, 3);
        let spread = |median, min, max| Spread { median, min, max };
        assert_eq!(tcp.msgs_per_sec, spread(900.0, 500.0, 1000.0));
        assert_eq!((tcp.p50_ns, tcp.p99_ns), (200.0, 200.0));
        assert!(tcp.vs.is_none());
        assert_eq!(framelink.kind, Kind::Framelink);
        assert_eq!(framelink.msgs_per_sec, spread(450.0, 400.0, 800.0));
        assert!((framelink.mb_per_sec.median - 0.0288).abs() < 1e-12);
        assert_eq!(framelink.p50_ns, 500.0);
        // Per round 0.8, 0.8 and 0.5; the ratio of the medians (450 / 900) would say 0.5.
        let (baseline, vs_tcp) = framelink.vs.as_ref().expect("tcp ran");
        assert_eq!(baseline, "tcp");
        assert_eq!(vs_tcp.msgs, spread(0.8, 0.5, 0.8));
        assert!((vs_tcp.mb.median - 0.8).abs() < 1e-12);
        assert!(summarize(&[]).is_empty());
    }

    #[test]
    fn binary_messages_carry_stamp_sequence_and_filler() {
        let content = Content::binary();
        let stamp = Stamp { ts_ns: 7, seq: 9 };
        let mut buf = Vec::new();
        content.put(&mut buf, stamp, 3, 100);
        assert_eq!(buf.len(), 100);
        assert_eq!(&buf[..8], &7u64.to_le_bytes());
        assert_eq!(&buf[8..16], &9u64.to_le_bytes());
        assert_eq!(content.check(&buf, 3), Ok((7, Some(9))));
        // Another connection, or the next message, has other filler.
        assert_eq!(content.check(&buf, 4), Err(16));
        let mut next = Vec::new();
        content.put(&mut next, Stamp { ts_ns: 7, seq: 10 }, 3, 100);
        assert_ne!(buf[16..], next[16..]);
        // Any byte changed is found.
        for at in [16, 63, 64, 99] {
            let mut bad = buf.clone();
            bad[at] ^= 1;
            assert_eq!(content.check(&bad, 3), Err(at), "byte {at}");
        }
        // Timestamp only, then filler keyed on it.
        buf.clear();
        content.put(&mut buf, stamp, 0, 8);
        assert_eq!(buf, 7u64.to_le_bytes());
        assert_eq!(content.check(&buf, 0), Ok((7, None)));
        buf.clear();
        content.put(&mut buf, stamp, 0, 12);
        assert_eq!(content.check(&buf, 0), Ok((7, None)));
    }

    #[test]
    fn text_messages_hold_no_delimiter_byte() {
        let lines = Content::for_framing(Some(&"line".parse().unwrap())).unwrap();
        assert_eq!(lines.field(), 16);
        let stamp = Stamp {
            ts_ns: 0x0123_4567_89ab_cdef,
            seq: 2,
        };
        let mut buf = Vec::new();
        lines.put(&mut buf, stamp, 1, 200);
        assert_eq!(buf.len(), 200);
        assert_eq!(&buf[..32], b"0123456789abcdef0000000000000002");
        assert!(buf.iter().all(u8::is_ascii_hexdigit), "{buf:?}");
        assert_eq!(lines.check(&buf, 1), Ok((stamp.ts_ns, Some(2))));
        let mut bad = buf.clone();
        bad[5] = b'\n';
        assert_eq!(lines.check(&bad, 1), Err(5));
        bad = buf.clone();
        bad[150] = if bad[150] == b'0' { b'1' } else { b'0' };
        assert_eq!(lines.check(&bad, 1), Err(150));

        // Delimiters made of hex digits and letters: other bytes are used.
        let delim: Framing = "delim:\"0a\"|\"bcdefg\"".parse().unwrap();
        let content = Content::for_framing(Some(&delim)).unwrap();
        buf.clear();
        content.put(&mut buf, stamp, 0, 64);
        assert!(
            !buf.iter().any(|b| b"0abcdefg".contains(b)),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        assert_eq!(content.check(&buf, 0), Ok((stamp.ts_ns, Some(2))));
        // Binary framings take binary messages.
        let length: Framing = "length:4".parse().unwrap();
        assert!(Content::for_framing(Some(&length))
            .unwrap()
            .digits
            .is_none());
    }

    #[test]
    fn layout_finds_the_message_in_its_frame() {
        let message = vec![7u8; 64];
        let probe = |spec: &str| Layout::probe(&spec.parse().unwrap(), &message);
        let layout = |head, frame_len, wire_len| {
            Ok(Layout {
                head,
                frame_len,
                wire_len,
            })
        };
        assert_eq!(probe("length:4"), layout(0, 64, 68));
        assert_eq!(probe("length:2,strip=0"), layout(2, 66, 66));
        assert_eq!(probe("varint"), layout(0, 64, 65));
        assert_eq!(probe("fixed:64"), layout(0, 64, 64));
        let err = Layout::probe(&"length:1".parse().unwrap(), &[7u8; 300]).unwrap_err();
        assert!(err.contains("cannot carry 300-byte messages"), "{err}");
        let err = probe("fixed:32").unwrap_err();
        assert!(err.contains("fixed-length codec of 32 bytes"), "{err}");
        let text = b"0123456789abcdef".repeat(4);
        let layout_keep = Layout::probe(&"line,keep".parse().unwrap(), &text);
        assert_eq!(layout_keep, layout(0, 65, 65));
    }

    #[test]
    fn targets_may_be_named() {
        assert_eq!(
            parse_target("netty=127.0.0.1:9000"),
            Ok(("netty".into(), "127.0.0.1:9000".into()))
        );
        assert_eq!(
            parse_target("127.0.0.1:9000"),
            Ok(("127.0.0.1:9000".into(), "127.0.0.1:9000".into()))
        );
        assert!(parse_target("=127.0.0.1:9000").is_err());
        assert!(parse_target("netty=").is_err());
    }
}
