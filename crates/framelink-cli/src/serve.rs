//! `framelink serve ADDR`: a server that echoes (or just counts) every message, in framelink
//! protocol v1 or in raw mode with a framing spec, reporting connections on stderr. Ctrl-C (or
//! `--max-duration`) shuts it down gracefully: every client is told `GoingAway`.
//!
//! With `--sessions` (protocol mode) it offers acknowledged sessions, and each echo is queued in
//! the client's session (`ServerHandle::send_to_session`) rather than on one connection, so that
//! it reaches the client exactly once, in order, across its reconnects. Sessions it lets go of
//! (expired, evicted) are reported with the echoes their client never acknowledged.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use framelink::connection::{CloseCode, ResumeStatus, SendError};
use framelink::{
    Event, Incoming, LostReason, LostSession, Protocol, Sender, Server, ServerConfig, ServerHandle,
    ServerSessions, SessionEvent,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::link_args::{
    describe, parse_duration, parse_interval, parse_nonzero_duration, parse_size, show_duration,
    show_size, unacked_messages, Interrupt, Interval, LinkArgs,
};

/// `--memory-budget`: a size of at least 1 MiB.
fn parse_memory_budget(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        n if n < 1 << 20 => Err("must be at least 1MiB".into()),
        n => Ok(n),
    }
}
use crate::stream_tools::{escape_text, hex};
use crate::tls_args::ServeTlsArgs;

/// Options of `framelink serve`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  framelink serve 127.0.0.1:7000                       # protocol v1 echo server
  framelink serve 0.0.0.0:9000 --framing line --answer PING=PONG --sink
  framelink serve 127.0.0.1:0 --max-duration 10s       # any free port, stop after 10 s
  framelink serve 127.0.0.1:7000 --sessions            # echoes survive reconnects (connect --sessions)
  framelink serve 127.0.0.1:7000 --sessions --session-ttl 5m --max-detached 1000

stderr: `[serve] listening on ADDR (...)` first (with the real port when ADDR ends in :0), then
`+conn #ID PEER (live N)` and `-conn #ID closed: HOW` per connection; RTT samples with -v.
With --sessions: `#ID session HEX new` (or `resumed, resending N`, or `unknown: started anew`)
per connection, and `lost session HEX: expired|evicted, N unacknowledged messages handed back`
for each session whose client did not come back (the messages themselves with -v).")]
pub struct ServeArgs {
    /// Address to listen on, e.g. `127.0.0.1:7000`; port 0 picks a free port (printed).
    #[arg(value_name = "ADDR")]
    addr: String,

    #[command(flatten)]
    link: LinkArgs,

    #[command(flatten)]
    tls: ServeTlsArgs,

    /// Close connections that exchange no message (either way; heartbeats do not count) for
    /// this long: with CLOSE `Idle` in protocol mode, by closing the socket in raw mode.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,

    /// Refuse connections beyond this many live ones (protocol mode: with CLOSE `ServerFull`).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,

    /// Refuse connections from an IP address that already has this many live ones (protocol
    /// mode: with CLOSE `ServerFull`). Raise it for load tests from one machine.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_ip: u64,

    /// Bytes the server may hold for all connections and sessions together (receive buffers,
    /// send queues, messages not yet handled, detached and lost sessions), e.g. `256MiB`,
    /// `2GiB`. Beyond it new connections are refused, the oldest detached sessions are let go
    /// and the connection holding the most is closed (CLOSE `ServerFull`). [default: 1GiB, or a
    /// quarter of physical memory when less]
    #[arg(long, value_name = "BYTES", value_parser = parse_memory_budget)]
    memory_budget: Option<usize>,

    /// When full (`--max-connections`), a newcomer evicts the connection that has carried no
    /// message for the longest, if at least this long (CLOSE `Idle`), instead of being
    /// refused; heartbeats do not count (`off`: refuse newcomers). [default: 60s]
    #[arg(long, value_name = "DUR|off", value_parser = parse_interval)]
    evict_idle_when_full: Option<Interval>,

    /// Do not echo: only count what arrives (shown when each connection closes).
    #[arg(long)]
    sink: bool,

    /// Protocol mode: offer acknowledged sessions. A client that uses one (`connect
    /// --sessions`) resumes it after a reconnect, and each side resends what the other had not
    /// delivered; echoes are queued in the session, so each reaches the client exactly once, in
    /// order, however often the link breaks.
    #[arg(long, conflicts_with = "framing")]
    sessions: bool,

    /// With --sessions: keep the session of a client that went away this long for it to come
    /// back; then it is reported lost with its unacknowledged echoes. [default: 60s]
    #[arg(long, value_name = "DUR", requires = "sessions", value_parser = parse_nonzero_duration)]
    session_ttl: Option<Duration>,

    /// With --sessions: keep at most this many sessions of clients that went away (the oldest
    /// are evicted first, and reported lost). [default: 10000]
    #[arg(long, value_name = "N", requires = "sessions",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_detached: Option<u64>,

    /// With --sessions: keep at most this many sessions of clients that went away per client
    /// IP address (that address's oldest are evicted first), so that one address dropping
    /// sessions in a loop cannot push out everyone else's. [default: 1000]
    #[arg(long, value_name = "N", requires = "sessions",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_detached_per_ip: Option<u64>,

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
    let quiet = args.quiet;
    let tls = match args.tls.build() {
        Ok(tls) => tls.map(|tls| {
            tls.on_handshake_failure(move |_, error| {
                if !quiet {
                    eprintln!("[serve] {error}");
                }
            })
        }),
        Err(e) => {
            eprintln!("framelink: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let config = ServerConfig {
        protocol,
        tls,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        max_connections_per_ip: usize::try_from(args.max_connections_per_ip).unwrap_or(usize::MAX),
        sessions: args.sessions.then(|| {
            let defaults = ServerSessions::default();
            ServerSessions {
                ttl: args.session_ttl.unwrap_or(defaults.ttl),
                max_detached: args.max_detached.map_or(defaults.max_detached, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
                max_detached_per_ip: args
                    .max_detached_per_ip
                    .map_or(defaults.max_detached_per_ip, |n| {
                        usize::try_from(n).unwrap_or(usize::MAX)
                    }),
                ..defaults
            }
        }),
        memory_budget: args
            .memory_budget
            .unwrap_or_else(framelink::default_memory_budget),
        evict_idle_when_full: args.evict_idle_when_full.map_or(
            ServerConfig::default().evict_idle_when_full,
            |Interval(d)| d,
        ),
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
    let mode = format!(
        "{}{}, memory budget {}",
        describe(&config.protocol),
        args.tls.describe(),
        show_size(config.memory_budget)
    );
    let sessions = config.sessions.map(|s| {
        format!(
            ", sessions kept {} for their client, at most {} detached ({} per address)",
            show_duration(s.ttl),
            s.max_detached,
            s.max_detached_per_ip
        )
    });
    let mut server = Server::bind(args.addr.as_str(), config)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let handle = server.handle();
    let action = if args.sink { "sink" } else { "echo" };
    eprintln!(
        "[serve] listening on {} ({mode}{}, {action})",
        server.local_addr(),
        sessions.as_deref().unwrap_or("")
    );
    // Sessions: echoes go through each session's echo task; lost sessions are reported.
    let echoes = sessions.is_some().then(|| Echoes::new(handle.clone()));
    if let Some(echoes) = &echoes {
        tokio::spawn(report_lost_sessions(echoes.clone(), out));
    }

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
                            let client = incoming
                                .tls
                                .as_ref()
                                .and_then(|t| t.certificate.as_ref())
                                .map(|c| format!(" client {}", c.subject))
                                .unwrap_or_default();
                            eprintln!(
                                "[serve] +conn #{} {} (live {}){client}",
                                incoming.id,
                                incoming.peer,
                                handle.connections()
                            );
                        }
                        connections.spawn(connection(incoming, args.sink, echoes.clone(), out));
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

fn print_report(handle: &ServerHandle, report: framelink::ShutdownReport) {
    let stats = handle.stats();
    eprintln!(
        "[serve] shutdown: {} open, {} closed gracefully, {} aborted; {} accepted, {} refused in all",
        report.open, report.closed, report.aborted, stats.accepted, stats.refused
    );
    if stats.tls_failures > 0 {
        eprintln!("[serve] {} TLS handshakes failed", stats.tls_failures);
    }
    if stats.refused_memory + stats.evicted_memory + stats.sessions_shed + stats.lost_dropped > 0 {
        eprintln!(
            "[serve] memory budget {}: peak {} bytes; {} connections refused, {} evicted, {} \
             detached sessions let go, {} lost sessions dropped unseen",
            show_size(stats.memory_budget),
            stats.memory_peak,
            stats.refused_memory,
            stats.evicted_memory,
            stats.sessions_shed,
            stats.lost_dropped
        );
    }
}

/// How many messages a connection's echo takes (and queues back) at a time.
const ECHO_BATCH: usize = 1024;

/// One connection: echo (or count) every message, report how it ended. With sessions, once
/// the connection carries one, echoes are handed to the session's echo task instead.
async fn connection(incoming: Incoming, sink: bool, sessions: Option<Echoes>, out: Output) {
    let id = incoming.id;
    let (sender, mut events) = incoming.connection.split();
    let mut tally = Tally::default();
    // The session this connection carries, and (echoing) its feed, held while it does.
    let mut session: Option<[u8; 16]> = None;
    let mut feed: Option<(Feed, FeedGuard)> = None;
    // Events are taken, and echoes queued, a batch at a time (one wake-up per batch, not per
    // message).
    let (mut batch, mut echoes) = (Vec::new(), Vec::new());
    while events.recv_many(&mut batch, ECHO_BATCH).await > 0 {
        for event in batch.drain(..) {
            match event {
                Event::Message(m) => {
                    tally.messages += 1;
                    tally.bytes += m.len() as u64;
                    match &feed {
                        _ if sink => {}
                        // Bounded: waits for room while the session's client does not read
                        // its echoes (backpressure reaches it through this connection).
                        Some((_, queue)) => {
                            if queue.push(m).await {
                                tally.echoed += 1;
                            }
                        }
                        None => echoes.push(m),
                    }
                }
                Event::Session(SessionEvent::Started {
                    id: session_id,
                    status,
                    resending,
                }) => {
                    if !out.quiet {
                        eprintln!(
                            "[serve] #{id} session {} {}",
                            hex(&session_id),
                            show_status(status, resending)
                        );
                    }
                    session = Some(session_id);
                    if let (Some(sessions), false) = (&sessions, sink) {
                        // Echoes of what the session's previous connection delivered go first:
                        // that connection has let go of the session, so its task, which holds
                        // the feed, is only taking its last events.
                        let shared = sessions.feed(session_id);
                        let guard = shared.clone().lock_owned().await;
                        feed = Some((shared, guard));
                    }
                }
                Event::Session(SessionEvent::Lost {
                    id: session_id,
                    unacked,
                }) => {
                    eprintln!(
                        "[serve] #{id} session {} ended: {} handed back",
                        hex(&session_id),
                        unacked_messages(unacked.len())
                    );
                    if out.verbose {
                        print_unacked(&unacked);
                    }
                }
                // Echoes taken before the end are queued (or refused) before it is reported.
                Event::Closed(info) => {
                    tally.echo(id, &sender, &mut echoes).await;
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
                    // A CLOSE `Normal` (either way) ends the session: nothing will resume it.
                    if let (Some(sessions), Some(session_id)) = (&sessions, session) {
                        if info.code == CloseCode::Normal {
                            sessions.forget(session_id, feed.as_ref().map(|(f, _)| f));
                        }
                    }
                }
                event => report(id, &event, out),
            }
        }
        tally.echo(id, &sender, &mut echoes).await;
    }
}

/// `new`, `resumed, resending N`, ...
fn show_status(status: ResumeStatus, resending: u64) -> String {
    match status {
        ResumeStatus::New if resending == 0 => "new".into(),
        ResumeStatus::New => format!("new, resending {resending}"),
        ResumeStatus::Resumed => format!("resumed, resending {resending}"),
        ResumeStatus::Unknown => format!(
            "unknown (expired, or from before a restart): started anew, resending {resending}"
        ),
    }
}

/// With -v: the messages a lost session handed back, one line each, escaped as `connect`
/// prints messages.
fn print_unacked(unacked: &[Bytes]) {
    for (i, m) in unacked.iter().enumerate() {
        eprintln!("[serve]   unacked {}: {}", i + 1, escape_text(m));
    }
}

/// A session's echo queue; its lock is held by the connection carrying the session, so that
/// the next connection's echoes queue after all of the previous one's.
type Feed = Arc<tokio::sync::Mutex<FeedQueue>>;
type FeedGuard = tokio::sync::OwnedMutexGuard<FeedQueue>;

/// Bytes of echoes a session's feed holds at most (each message counted as its length plus
/// [`FEED_MESSAGE_COST`]). A client that sends without reading its echoes fills its session's
/// buffer, then this: the connection's task then waits for room, stops taking the connection's
/// events, and TCP flow control holds the client back. Memory stays bounded.
const FEED_BYTES: usize = 1 << 20;
/// What a queued echo counts for besides its payload.
const FEED_MESSAGE_COST: usize = 64;

/// The sending side of a session's echo queue, with its byte budget.
struct FeedQueue {
    tx: mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
}

impl FeedQueue {
    /// Queues `m` for echoing once the feed has room for it (a message larger than the whole
    /// budget waits for an empty feed); `false` if the echo task is gone.
    async fn push(&self, m: Bytes) -> bool {
        let cost = (m.len() + FEED_MESSAGE_COST).min(FEED_BYTES) as u32;
        let Ok(permit) = self.room.clone().acquire_many_owned(cost).await else {
            return false;
        };
        self.tx.send((m, permit)).is_ok()
    }
}

/// Sessions on: one echo task per session, fed by whichever connection carries the session
/// now, queueing every echo in the session (`send_to_session`), wherever its client is.
#[derive(Clone)]
struct Echoes {
    handle: ServerHandle,
    feeds: Arc<Mutex<HashMap<[u8; 16], Feed>>>,
}

impl Echoes {
    fn new(handle: ServerHandle) -> Self {
        Echoes {
            handle,
            feeds: Arc::default(),
        }
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Feed>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The feed of session `id`, starting its echo task the first time.
    fn feed(&self, id: [u8; 16]) -> Feed {
        self.feeds()
            .entry(id)
            .or_insert_with(|| {
                let (tx, pending) = mpsc::unbounded_channel();
                tokio::spawn(session_echo(self.handle.clone(), id, pending));
                let room = Arc::new(Semaphore::new(FEED_BYTES));
                Arc::new(tokio::sync::Mutex::new(FeedQueue { tx, room }))
            })
            .clone()
    }

    /// Forgets the feed of session `id` (its echo task ends once it has queued what it was
    /// given): only `feed` when given, else only one no connection holds.
    fn forget(&self, id: [u8; 16], feed: Option<&Feed>) {
        let mut feeds = self.feeds();
        let Some(current) = feeds.get(&id) else {
            return;
        };
        let forget = match feed {
            Some(feed) => Arc::ptr_eq(current, feed),
            // A held feed belongs to a new session under the same id.
            None => current.try_lock().is_ok(),
        };
        if forget {
            feeds.remove(&id);
        }
    }
}

/// The echo task of session `id`: queues each message back in the session, in order.
async fn session_echo(
    handle: ServerHandle,
    id: [u8; 16],
    mut pending: mpsc::UnboundedReceiver<(Bytes, OwnedSemaphorePermit)>,
) {
    let mut failed = 0u64;
    let mut last_error = None;
    while let Some((m, room)) = pending.recv().await {
        if let Err(e) = handle.send_to_session(id, m).await {
            failed += 1;
            last_error = Some(e);
        }
        // Its room in the feed is given back once the session took it (or refused it).
        drop(room);
    }
    if let Some(e) = last_error {
        eprintln!(
            "[serve] session {}: {failed} echo(es) not queued: {e}",
            hex(&id)
        );
    }
}

/// Reports every session the server lets go of without its client coming back (one line
/// each, whatever -q says: what it hands back was never acknowledged).
async fn report_lost_sessions(echoes: Echoes, out: Output) {
    while let Some(LostSession {
        id,
        reason,
        unacked,
        dropped_before,
        ..
    }) = echoes.handle.next_lost_session().await
    {
        if dropped_before > 0 {
            eprintln!("[serve] {dropped_before} lost sessions dropped before this one (not taken in time)");
        }
        let why = match reason {
            LostReason::Expired => "expired",
            LostReason::Evicted => "evicted",
            LostReason::Replaced => "replaced by a new session under its id",
        };
        eprintln!(
            "[serve] lost session {}: {why}, {} handed back",
            hex(&id),
            unacked_messages(unacked.len())
        );
        if out.verbose {
            print_unacked(&unacked);
        }
        echoes.forget(id, None);
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
    /// Queues `echoes` back (of connection `id`). An echo that can never be sent (longer than
    /// the client accepts, or than the whole send queue) is reported and skipped: the echoes
    /// after it still go. `Closed` means the connection is closing (its `Closed` event
    /// follows): the rest is dropped.
    async fn echo(&mut self, id: u64, sender: &Sender, echoes: &mut Vec<Bytes>) {
        let queued = queue_echoes(sender, echoes, |refused, e| {
            eprintln!(
                "[serve] #{id} warning: echo of {} bytes not sent: {e}",
                refused.len()
            );
        })
        .await;
        self.echoed += queued as u64;
    }
}

/// Queues `echoes` back in order and returns how many were queued; `echoes` is left empty.
/// An echo that can never be sent (longer than the client accepts, or than the whole send
/// queue) goes to `refused` and is skipped: the ones after it still go. Once the connection is
/// closing the rest is dropped.
pub(crate) async fn queue_echoes(
    sender: &Sender,
    echoes: &mut Vec<Bytes>,
    mut refused: impl FnMut(Bytes, SendError),
) -> usize {
    let mut queued = 0;
    while !echoes.is_empty() {
        let count = echoes.len();
        let result = sender.send_batch(echoes).await;
        queued += count - echoes.len();
        match result {
            Ok(()) => {}
            Err(SendError::Closed) => echoes.clear(),
            Err(e) => refused(echoes.remove(0), e),
        }
    }
    queued
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
