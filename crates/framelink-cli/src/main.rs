//! The `framelink` command-line tool: debugging framed byte streams (`decode`, `encode`), a
//! demo of what framelink does over real TCP (`demo`), and a server and a reconnecting client
//! with heartbeats (`serve`, `connect`), in framelink protocol v1 or raw mode; a chaos proxy
//! for testing links (`proxy`); TLS on `serve` and `connect`, and development certificates
//! (`cert`).

#![forbid(unsafe_code)]

mod bench;
mod cert;
mod connect;
mod demo;
mod demo_link;
mod link_args;
mod pcap;
mod proxy;
mod serve;
mod stream_tools;
mod tap;
mod tls_args;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use framelink::Framing;

/// Correct, robust message passing over TCP.
#[derive(Parser, Debug)]
#[command(
    name = "framelink",
    version,
    about,
    long_about = "Correct, robust message passing over TCP: framing, heartbeats, reconnect.

TCP is a byte stream; framelink puts the sender's message boundaries back, for every common \
framing (length field, varint, lines, delimiters, fixed size, netstrings, magic + CRC).

`serve` and `connect` speak framelink protocol v1 (handshake, heartbeats with RTT and dead-peer \
detection, orderly CLOSE) by default. With `--framing SPEC` they speak raw mode instead: the \
peer's own framing, one frame per message, optionally kept alive with a ping frame of your \
choosing and a pong matcher, so `connect` can hold a connection to an existing server open.",
    after_help = "\
Examples:
  framelink demo
  framelink serve 127.0.0.1:7000 &
  printf 'hello\\nworld\\n' | framelink connect 127.0.0.1:7000
  framelink connect 10.0.0.5:9000 --framing length:4 --ping PING --pong PONG --ping-interval 5s
  framelink cert --out certs
  framelink serve 127.0.0.1:7443 --tls-cert certs/server.pem --tls-key certs/server.key &
  framelink connect localhost:7443 --tls-ca certs/ca.pem
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --split 1..16 --cut-every 64KiB --seed 42
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --show length:4 --split 1..16
  printf '\\x00\\x05hello' | framelink decode --framing length:2 --format text
  framelink decode --framing length:4 --format text --pcap capture.pcap --port 7000

Framing specs: length:4  length:2,le,offset=1,adjust=-3,strip=3  varint  line  delim:00
fixed:64  netstring  magic:cafe,crc=crc32c; all but fixed take max=SIZE, and fail|discard
(magic: resync|fail).
Durations: 500ms, 5s, 1.5s, 1m. Payloads: text, or hex:50494e47.
`framelink help COMMAND` shows a command's options."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Streams messages over loopback TCP in random glued and split pieces and shows every
    /// framing putting them back together exactly.
    Demo(demo::DemoArgs),
    /// Reads a captured byte stream and prints its frames. Frames decoded before an error are
    /// printed; the error (what, and at which stream offset) goes to stderr with exit status 1.
    /// With `--pcap FILE`, reads a packet capture instead and decodes every TCP connection in
    /// it, both directions.
    Decode {
        /// Framing spec, e.g. `length:4,max=16MiB`, `line`, `varint`, `magic:cafe,crc=crc32c`.
        #[arg(short, long, value_parser = parse_framing)]
        framing: Framing,
        /// How to print each frame.
        #[arg(long, value_enum, default_value_t = OutputFormat::Hex)]
        format: OutputFormat,
        /// Read a packet capture (pcap or pcapng, as tcpdump or Wireshark write it; `-` for
        /// standard input) instead of a byte stream: every TCP connection in it is reassembled
        /// and decoded in both directions. Each frame is printed with its connection, direction,
        /// capture time, and how many segments it spanned and shared. Gaps go to stderr.
        #[arg(long, value_name = "FILE", conflicts_with = "input")]
        pcap: Option<PathBuf>,
        /// With `--pcap`: only connections with this address on either side (repeat for more).
        #[arg(long, value_name = "IP", requires = "pcap")]
        host: Vec<IpAddr>,
        /// With `--pcap`: only connections with this port on either side (repeat for more).
        #[arg(long, value_name = "N", requires = "pcap")]
        port: Vec<u16>,
        /// With `--pcap`: out-of-order bytes each direction may hold while a missing segment
        /// is awaited (default 4MiB); past it, the missing bytes are reported as a gap.
        #[arg(long, value_name = "SIZE", requires = "pcap", value_parser = parse_buffer_size)]
        reassembly_buffer: Option<usize>,
        /// Input file; `-` or nothing reads standard input.
        input: Option<PathBuf>,
    },
    /// Reads messages (one per line, or hex) and writes them as a framed byte stream.
    Encode {
        /// Framing spec, as for `decode`.
        #[arg(short, long, value_parser = parse_framing)]
        framing: Framing,
        /// How messages are given: each input line is a message (`lines`), or each line is a
        /// message in hex (`hex`).
        #[arg(long, value_enum, default_value_t = InputFormat::Lines)]
        input_format: InputFormat,
        /// Output file; standard output when not given.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Input file; `-` or nothing reads standard input.
        input: Option<PathBuf>,
    },
    /// Runs a server that echoes every message (or counts them, `--sink`), in framelink protocol
    /// v1 or raw mode (`--framing`); connections are reported on stderr. Ctrl-C shuts it down
    /// gracefully (clients are told GoingAway).
    Serve(serve::ServeArgs),
    /// Connects to a server and keeps connected: each stdin line is sent as one message, each
    /// message received is printed on stdout; connects, disconnects, reconnects (and RTT with
    /// -v) are reported on stderr. Raw mode (`--framing`, `--ping`, `--pong`) keeps a connection
    /// to an existing server alive.
    Connect(connect::ConnectArgs),
    /// A chaos proxy: forwards every connection to UPSTREAM while splitting, gluing and
    /// delaying the bytes and cutting the link (FIN, RST, blackhole, stall) at random or given
    /// points; seeded, so a failure can be replayed. Reports connections and faults on stderr;
    /// with `--show SPEC`, prints the frames passing both ways on stdout.
    Proxy(proxy::ProxyArgs),
    /// Measures throughput (msgs/s, MB/s) and latency percentiles of N connections sending
    /// fixed-size messages to an echo server (in-process, or `framelink serve ADDR`), at a rate
    /// or flat out, for framelink and for a plain-TCP baseline without framing (`--mode both`);
    /// with `--framing SPEC`, against any echo server that speaks that framing.
    Bench(bench::BenchArgs),
    /// Writes a self-signed development CA, a server certificate (localhost, 127.0.0.1, ::1)
    /// and a client certificate, with their keys, as PEM files, for trying TLS and mutual TLS.
    Cert(cert::CertArgs),
}

/// How `decode` and `connect` print a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One lowercase hex frame per line.
    Hex,
    /// One frame per line as text; bytes that are not printable UTF-8 are escaped (`\n`, `\xff`).
    Text,
    /// One JSON object per line: index, length, hex and (when UTF-8) text; `decode` adds the
    /// stream offset.
    Json,
}

/// How `encode` and `connect` read messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Each line (without its `\n` or `\r\n`) is one message.
    Lines,
    /// Each line is one message written in hex; blank lines are empty messages.
    Hex,
}

pub(crate) fn parse_framing(text: &str) -> Result<Framing, String> {
    text.parse()
        .map_err(|e: framelink::proto::codec::ConfigError| e.to_string())
}

/// `4MiB`, `65536`: at least 1 byte.
fn parse_buffer_size(text: &str) -> Result<usize, String> {
    match proxy::parse_size(text).map(usize::try_from) {
        Some(Ok(0)) => Err("must be at least 1 byte".into()),
        Some(Ok(n)) => Ok(n),
        _ => Err(format!(
            "bad size {text:?} (expected e.g. 65536, 64KiB, 4MiB)"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Decode {
            framing,
            format,
            pcap: Some(capture),
            host,
            port,
            reassembly_buffer,
            input: _,
        } => {
            let options = pcap::PcapOptions {
                hosts: host,
                ports: port,
                reassembly_buffer: reassembly_buffer.unwrap_or(pcap::DEFAULT_REASSEMBLY_BUFFER),
            };
            pcap::decode(framing, format, &capture, &options)
        }
        Command::Decode {
            framing,
            format,
            input,
            ..
        } => stream_tools::decode(framing, format, input.as_deref()),
        Command::Encode {
            framing,
            input_format,
            output,
            input,
        } => stream_tools::encode(framing, input_format, input.as_deref(), output.as_deref()),
        Command::Serve(args) => serve::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Cert(args) => cert::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("framelink: {e:#}");
            ExitCode::FAILURE
        }
    }
}
