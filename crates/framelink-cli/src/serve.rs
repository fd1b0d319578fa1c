//! `framelink serve ADDR`: a server that echoes (or just counts) every message, in framelink
//! protocol v1 or in raw mode with a framing spec, reporting connections on stderr. Ctrl-C (or
//! `--max-duration`) shuts it down gracefully: every client is told `GoingAway`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use framelink::connection::{Event, Sender};
use framelink::server::{Incoming, Server, ServerConfig, ServerHandle};
use framelink::Protocol;
use tokio::task::JoinSet;

use crate::link_args::{describe, parse_duration, show_duration, Interrupt, LinkArgs};

/// Options of `framelink serve`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  framelink serve 127.0.0.1:7000                       # protocol v1 echo server
  framelink serve 0.0.0.0:9000 --framing line --answer PING=PONG --sink
  framelink serve 127.0.0.1:0 --max-duration 10s       # any free port, stop after 10 s

stderr: `[serve] listening on ADDR (...)` first (with the real port when ADDR ends in :0), then
`+conn #ID PEER (live N)` and `-conn #ID closed: HOW` per connection; RTT samples with -v.")]
pub struct ServeArgs {
    /// Address to listen on, e.g. `127.0.0.1:7000`; port 0 picks a free port (printed).
    #[arg(value_name = "ADDR")]
    addr: String,

    #[command(flatten)]
    link: LinkArgs,

    /// Close connections that exchange no message (either way; heartbeats do not count) for
    /// this long: with CLOSE `Idle` in protocol mode, by closing the socket in raw mode.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// Refuse connections beyond this many live ones (protocol mode: with CLOSE `ServerFull`).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,

    /// Do not echo: only count what arrives (shown when each connection closes).
    #[arg(long)]
    sink: bool,

    /// Stop (gracefully, as on Ctrl-C) after this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    max_duration: Option<Duration>,

    /// On shutdown, wait this long for clients to close before aborting their connections.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    grace: Duration,

    /// Print only the listening address, the shutdown report and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Also print RTT samples and idle events per connection.
    #[arg(short, long)]
    verbose: bool,
}

/// How much to print.
#[derive(Debug, Clone, Copy)]
struct Output {
    quiet: bool,
    verbose: bool,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let mut protocol = args.link.protocol();
    if let Some(idle) = args.idle_timeout {
        match &mut protocol {
            Protocol::Framelink(config) => config.idle_timeout = Some(idle),
            Protocol::Raw(config) => config.idle_timeout = Some(idle),
        }
    }
    if let Err(e) = protocol.validate() {
        eprintln!("framelink: {e}");
        return Ok(ExitCode::from(2));
    }
    let config = ServerConfig {
        protocol,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let code = runtime.block_on(serve(args, config));
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

async fn serve(args: ServeArgs, config: ServerConfig) -> Result<ExitCode> {
    let out = Output {
        quiet: args.quiet,
        verbose: args.verbose,
    };
    let mut interrupt = Interrupt::new();
    let mode = describe(&config.protocol);
    let mut server = Server::bind(args.addr.as_str(), config)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let handle = server.handle();
    let action = if args.sink { "sink" } else { "echo" };
    eprintln!(
        "[serve] listening on {} ({mode}, {action})",
        server.local_addr()
    );

    let mut connections = JoinSet::new();
    // Accept until Ctrl-C or --max-duration (the `stop` future borrows `interrupt` in here).
    let why = {
        let stop = interrupt.recv_or_after(args.max_duration);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                why = &mut stop => break why,
                incoming = server.accept() => match incoming {
                    Some(incoming) => {
                        if !out.quiet {
                            eprintln!(
                                "[serve] +conn #{} {} (live {})",
                                incoming.id,
                                incoming.peer,
                                handle.connections()
                            );
                        }
                        connections.spawn(connection(incoming, args.sink, out));
                    }
                    None => break "the server stopped accepting",
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    };

    eprintln!(
        "[serve] {why}: shutting down, closing {} connection(s) with GoingAway (grace {})",
        handle.connections(),
        show_duration(args.grace)
    );
    let report = tokio::select! {
        report = handle.shutdown(args.grace) => report,
        () = interrupt.recv() => {
            eprintln!("[serve] interrupted again: exiting without waiting");
            return Ok(ExitCode::from(130));
        }
    };
    // Let the connection tasks print how their connections ended.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    print_report(&handle, report);
    Ok(ExitCode::SUCCESS)
}

fn print_report(handle: &ServerHandle, report: framelink::server::ShutdownReport) {
    let stats = handle.stats();
    eprintln!(
        "[serve] shutdown: {} open, {} closed gracefully, {} aborted; {} accepted, {} refused in all",
        report.open, report.closed, report.aborted, stats.accepted, stats.refused
    );
}

/// How many messages a connection's echo takes (and queues back) at a time.
const ECHO_BATCH: usize = 1024;

/// One connection: echo (or count) every message, report how it ended.
async fn connection(incoming: Incoming, sink: bool, out: Output) {
    let id = incoming.id;
    let (sender, mut events) = incoming.connection.split();
    let mut tally = Tally::default();
    // Events are taken, and echoes queued, a batch at a time (one wake-up per batch, not per
    // message).
    let (mut batch, mut echoes) = (Vec::new(), Vec::new());
    while events.recv_many(&mut batch, ECHO_BATCH).await > 0 {
        for event in batch.drain(..) {
            match event {
                Event::Message(m) => {
                    tally.messages += 1;
                    tally.bytes += m.len() as u64;
                    if !sink {
                        echoes.push(m);
                    }
                }
                // Echoes taken before the end are queued (or refused) before it is reported.
                Event::Closed(info) => {
                    tally.echo(&sender, &mut echoes).await;
                    if !out.quiet {
                        let echo = if sink {
                            String::new()
                        } else {
                            format!(", {} echoed", tally.echoed)
                        };
                        eprintln!(
                            "[serve] -conn #{id} closed: {info} ({} messages, {} bytes in{echo})",
                            tally.messages, tally.bytes
                        );
                    }
                }
                event => report(id, &event, out),
            }
        }
        tally.echo(&sender, &mut echoes).await;
    }
}

/// What a connection received and echoed.
#[derive(Default)]
struct Tally {
    messages: u64,
    bytes: u64,
    echoed: u64,
}

impl Tally {
    /// Queues `echoes` back; a refusal means the connection is closing (its `Closed` follows).
    async fn echo(&mut self, sender: &Sender, echoes: &mut Vec<Bytes>) {
        if echoes.is_empty() {
            return;
        }
        let count = echoes.len();
        let _ = sender.send_batch(echoes).await;
        self.echoed += (count - echoes.len()) as u64;
        echoes.clear();
    }
}

/// Prints what `-v` and warnings ask for about an event other than a message or the close.
fn report(id: u64, event: &Event, out: Output) {
    match event {
        Event::Connected { peer, .. } if out.verbose => {
            eprintln!(
                "[serve] #{id} handshake done: client pings after {} quiet (0s = never), \
                 max message {} bytes",
                show_duration(peer.ping_interval),
                peer.max_message_len
            );
        }
        Event::Rtt(rtt) if out.verbose => {
            eprintln!(
                "[serve] #{id} rtt {} (srtt {})",
                show_duration(rtt.latest),
                show_duration(rtt.smoothed)
            );
        }
        Event::Idle(kind) if out.verbose => eprintln!("[serve] #{id} idle: {kind:?}"),
        Event::FrameDiscarded(e) => eprintln!("[serve] #{id} warning: {e}"),
        Event::MessageDropped { len, peer_max } => eprintln!(
            "[serve] #{id} echo of {len} bytes dropped: the client accepts at most {peer_max}"
        ),
        _ => {}
    }
}
