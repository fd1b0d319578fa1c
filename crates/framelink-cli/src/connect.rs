//! `framelink connect ADDR`: a reconnecting client. Each line of standard input is sent as one
//! message, each message received is printed on standard output, and what happens to the
//! connection (connected, RTT, disconnected, reconnecting, gave up) goes to standard error.
//!
//! At the end of standard input it waits until nothing has arrived for `--eof-wait` (replies to
//! the last messages may still be on their way: framelink protocol v1 has no half-close, so a
//! server stops sending once it receives our CLOSE), then closes gracefully and exits 0.
//!
//! With `--sessions` it uses an acknowledged session (the server must offer them, `serve
//! --sessions`): after a reconnect the session is resumed and each side resends what the other
//! had not delivered, so nothing sent is lost or duplicated by a broken link. What a session
//! hands back (the server could not resume it) is reported on stderr.

use std::collections::VecDeque;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use framelink::connection::ResumeStatus;
use framelink::connection::SendError;
use framelink::{
    BackoffConfig, Client, ClientConfig, ClientEvent, Protocol, SessionConfig, SessionEvent,
};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use crate::link_args::{
    describe, parse_duration, show_duration, unacked_messages, Interrupt, LinkArgs,
};
use crate::stream_tools::{escape_text, hex, parse_hex_line};
use crate::tls_args::ConnectTlsArgs;
use crate::{InputFormat, OutputFormat};

/// Lines read ahead of the connection (while disconnected, or while its send queue is full).
const MAX_PENDING: usize = 1024;
/// How often a message refused for a full send queue is offered again.
const SEND_RETRY: Duration = Duration::from_millis(5);
/// After asking the client to close: how long to wait for the close to finish on top of the
/// protocol's linger, before exiting anyway.
const CLOSE_MARGIN: Duration = Duration::from_secs(3);

/// Options of `framelink connect`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  printf 'a\\nb\\n' | framelink connect 127.0.0.1:7000       # protocol v1; prints the echoes
  framelink connect 10.0.0.5:9000 --framing length:4 --ping PING --pong PONG --ping-interval 5s
  framelink connect 10.0.0.5:9000 -f line --ping hex:00 --pong-any --format hex -v
  framelink connect 127.0.0.1:7000 --sessions           # with `serve --sessions`: resumes
  framelink connect 127.0.0.1:7001 --sessions --backoff-max 1s   # through `framelink proxy`

stderr: `[connect] connected to ADDR (attempt N)`, `disconnected: HOW`, `attempt N failed: ERROR`,
`reconnecting: attempt N in MS ms`, `gave up after N attempts` (exit 1); `rtt` lines with -v.
With --sessions: `session HEX new` or `session HEX resumed: resending N messages` after each
connect, and `session HEX lost: N unacknowledged messages handed back` when the server could
not resume it (the messages themselves with -v).
Exit status: 0 after the end of input (or Ctrl-C), 1 when giving up (or, with --no-reconnect,
when the connection is lost before the end of input).")]
pub struct ConnectArgs {
    /// Server address, `host:port` (resolved again at every attempt).
    #[arg(value_name = "ADDR")]
    addr: String,

    #[command(flatten)]
    link: LinkArgs,

    #[command(flatten)]
    tls: ConnectTlsArgs,

    /// Protocol mode: use an acknowledged session (the server must offer them: `serve
    /// --sessions`). Every message is kept until the server acknowledges it; after a reconnect
    /// the session is resumed and each side resends what the other had not delivered, so each
    /// message and each reply arrives exactly once, in order.
    #[arg(long, conflicts_with = "framing")]
    sessions: bool,

    /// Do not reconnect: exit with status 1 when the connection fails or is lost.
    #[arg(long, conflicts_with = "max_attempts")]
    no_reconnect: bool,

    /// Give up after N attempts in a row failed. An attempt fails when it cannot connect, or
    /// when its connection is lost within 5 s of opening (a server that drops or evicts every
    /// connection); a connection that lasts longer starts the count again. The first connect
    /// counts. Default: never.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,

    /// Backoff: the first reconnect waits up to this long (full jitter), doubling each time.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_duration)]
    backoff_initial: Duration,

    /// Backoff: the longest wait between attempts.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    backoff_max: Duration,

    /// Give up on one connect attempt after this long.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// How to print each received message: `text` (one line, control bytes escaped as in
    /// `decode`), `hex`, or `json` (index, length, hex, text).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,

    /// How standard input gives messages: one per line (`lines`) or one hex line each (`hex`).
    #[arg(long, value_enum, default_value_t = InputFormat::Lines)]
    input_format: InputFormat,

    /// At the end of input, close once nothing has been received for this long (`0`: at once).
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    eof_wait: Duration,

    /// Print only errors on stderr (failures, giving up), not connection events.
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Also print heartbeat RTT samples, idle events and the server's settings.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: ConnectArgs) -> Result<ExitCode> {
    let protocol = args.link.protocol();
    let backoff = BackoffConfig {
        initial: args.backoff_initial,
        max: args.backoff_max,
        max_attempts: if args.no_reconnect {
            Some(1)
        } else {
            args.max_attempts
        },
        ..BackoffConfig::default()
    };
    let linger = protocol.linger();
    let tls = match args.tls.build() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("framelink: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let config = ClientConfig {
        tls,
        protocol,
        backoff,
        connect_timeout: args.connect_timeout,
        sessions: args.sessions.then(SessionConfig::default),
        ..ClientConfig::default()
    };
    if let Err(e) = config
        .protocol
        .validate()
        .map_err(|e| e.to_string())
        .and_then(|()| config.backoff.validate().map_err(|e| e.to_string()))
    {
        eprintln!("framelink: {e}");
        return Ok(ExitCode::from(2));
    }
    if config.connect_timeout.is_zero() {
        eprintln!("framelink: --connect-timeout must be greater than zero");
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let code = runtime.block_on(Session::new(args, linger).run(config));
    // Reading standard input blocks a thread that cannot be interrupted: don't wait for it.
    runtime.shutdown_background();
    code
}

/// What the event loop does next.
enum Flow {
    Continue,
    Exit(ExitCode),
}

struct Session {
    args: ConnectArgs,
    /// The protocol's linger: how long a graceful close may take.
    linger: Duration,
    stdout: std::io::Stdout,
    /// Writing standard output failed: received messages are dropped.
    stdout_gone: bool,
    /// Messages printed so far (the JSON `index`).
    printed: u64,
    /// The attempt being made now, as shown.
    attempt: u32,
    connected: bool,
    /// Lines read, not yet taken by a connection.
    pending: VecDeque<Bytes>,
    stdin_done: bool,
    /// Last time a message was sent or received, a connection opened or the input ended
    /// (heartbeats don't count): `--eof-wait` counts from here.
    last_activity: Instant,
    /// A close was requested: (the exit status to use, when to stop waiting for it).
    closing: Option<(ExitCode, Instant)>,
}

impl Session {
    fn new(args: ConnectArgs, linger: Duration) -> Self {
        Session {
            args,
            linger,
            stdout: std::io::stdout(),
            stdout_gone: false,
            printed: 0,
            attempt: 1,
            connected: false,
            pending: VecDeque::new(),
            stdin_done: false,
            last_activity: Instant::now(),
            closing: None,
        }
    }

    fn info(&self, message: std::fmt::Arguments<'_>) {
        if !self.args.quiet {
            eprintln!("[connect] {message}");
        }
    }

    fn debug(&self, message: std::fmt::Arguments<'_>) {
        if self.args.verbose {
            eprintln!("[connect] {message}");
        }
    }

    async fn run(mut self, config: ClientConfig) -> Result<ExitCode> {
        let mut interrupt = Interrupt::new();
        let mut mode = describe(&config.protocol);
        if let Some(tls) = &config.tls {
            mode += &format!(", TLS for {}", tls.name_for(&self.args.addr));
        }
        let raw = matches!(config.protocol, Protocol::Raw(_));
        let mut client =
            Client::connect(self.args.addr.clone(), config).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.info(format_args!("connecting to {} ({mode})", self.args.addr));
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
        let mut interrupted = false;
        loop {
            let retry_at = self.flush_pending(&client, raw);
            // --eof-wait: only once everything read was handed to a live connection.
            let close_at = (self.closing.is_none()
                && self.stdin_done
                && self.pending.is_empty()
                && self.connected)
                .then(|| self.last_activity + self.args.eof_wait);
            let give_up_at = self.closing.as_ref().map(|(_, at)| *at);
            let read_input =
                !self.stdin_done && self.closing.is_none() && self.pending.len() < MAX_PENDING;
            let flow = tokio::select! {
                biased;
                () = interrupt.recv() => {
                    if interrupted {
                        eprintln!("[connect] interrupted again: exiting without waiting");
                        return Ok(ExitCode::from(130));
                    }
                    interrupted = true;
                    self.info(format_args!("interrupted: closing"));
                    self.request_close(&client, ExitCode::SUCCESS);
                    Flow::Continue
                }
                event = client.next_event() => match event {
                    Some(event) => self.on_event(event, &mut client),
                    None => Flow::Exit(self.exit_code()),
                },
                line = lines.next_segment(), if read_input => {
                    self.on_input(line.context("cannot read standard input")?)
                }
                () = sleep_until(retry_at), if retry_at.is_some() => Flow::Continue,
                () = sleep_until(close_at), if close_at.is_some() => {
                    self.request_close(&client, ExitCode::SUCCESS);
                    Flow::Continue
                }
                () = sleep_until(give_up_at), if give_up_at.is_some() => {
                    eprintln!("[connect] the close did not finish in time: exiting anyway");
                    Flow::Exit(self.exit_code())
                }
            };
            if let Flow::Exit(code) = flow {
                return Ok(code);
            }
        }
    }

    /// The exit status once the client has stopped.
    fn exit_code(&self) -> ExitCode {
        match &self.closing {
            Some((code, _)) => *code,
            None => ExitCode::FAILURE,
        }
    }

    /// Hands pending lines to the connection while it takes them. Returns when to try again if
    /// it has to be polled (a full send queue); otherwise an event (connected) wakes the loop.
    fn flush_pending(&mut self, client: &Client, raw: bool) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        while let Some(message) = self.pending.front() {
            match client.try_send(message.clone()) {
                Ok(()) => {
                    self.pending.pop_front();
                    self.last_activity = Instant::now();
                }
                Err(SendError::QueueFull { len, limit, .. }) if len > limit => {
                    eprintln!(
                        "[connect] message of {} bytes not sent: larger than the whole send \
                         queue ({limit} bytes)",
                        message.len()
                    );
                    self.pending.pop_front();
                }
                // Queue full: try again shortly (events keep being read meanwhile).
                Err(SendError::QueueFull { .. }) => return Some(Instant::now() + SEND_RETRY),
                Err(SendError::Closed) => {
                    // Disconnected: the next `Connected` event wakes us. A connection that is
                    // being replaced right now is polled.
                    return client.is_connected().then(|| Instant::now() + SEND_RETRY);
                }
                Err(e) => {
                    let what = if raw { "frame" } else { "message" };
                    eprintln!("[connect] {what} of {} bytes not sent: {e}", message.len());
                    self.pending.pop_front();
                }
            }
        }
        None
    }

    fn on_input(&mut self, line: Option<Vec<u8>>) -> Flow {
        let Some(mut line) = line else {
            self.stdin_done = true;
            self.last_activity = Instant::now();
            self.info(format_args!(
                "end of input{}",
                if self.pending.is_empty() {
                    String::new()
                } else {
                    format!(" ({} messages still to send)", self.pending.len())
                }
            ));
            return Flow::Continue;
        };
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let message = match self.args.input_format {
            InputFormat::Lines => line,
            InputFormat::Hex => match std::str::from_utf8(&line).ok().and_then(parse_hex_line) {
                Some(m) => m,
                None => {
                    eprintln!("[connect] input line is not hex: ignored");
                    return Flow::Continue;
                }
            },
        };
        self.pending.push_back(Bytes::from(message));
        Flow::Continue
    }

    fn on_event(&mut self, event: ClientEvent, client: &mut Client) -> Flow {
        match event {
            ClientEvent::Connected { addr, peer, .. } => {
                self.connected = true;
                self.last_activity = Instant::now();
                self.info(format_args!(
                    "connected to {addr} (attempt {})",
                    self.attempt
                ));
                if let Some(hello) = peer {
                    self.debug(format_args!(
                        "server pings after {} quiet (0s = never), timeout {}, max message {} \
                         bytes",
                        show_duration(hello.ping_interval),
                        show_duration(hello.ping_timeout),
                        hello.max_message_len
                    ));
                }
            }
            ClientEvent::Message(message) => {
                self.last_activity = Instant::now();
                if self.stdout_gone {
                    return Flow::Continue;
                }
                if let Err(e) = self.print(&message) {
                    // Standard output is gone (`| head -1`): nothing left to do.
                    self.stdout_gone = true;
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        eprintln!("[connect] cannot write standard output: {e}");
                    }
                    self.request_close(client, ExitCode::FAILURE);
                }
            }
            ClientEvent::Rtt(rtt) => self.debug(format_args!(
                "rtt {:.3} ms (srtt {:.3} ms)",
                rtt.latest.as_secs_f64() * 1e3,
                rtt.smoothed.as_secs_f64() * 1e3
            )),
            ClientEvent::Idle(kind) => self.debug(format_args!("idle: {kind:?}")),
            ClientEvent::FrameDiscarded(e) => eprintln!("[connect] warning: {e}"),
            ClientEvent::MessageDropped { len, peer_max } => eprintln!(
                "[connect] message of {len} bytes dropped: the server accepts at most {peer_max}"
            ),
            ClientEvent::Disconnected(info) => {
                self.connected = false;
                self.info(format_args!("disconnected: {info}"));
                // With a session, only a CLOSE from the server ends the conversation: a broken
                // link is resumed (what was sent may still have to be resent, and echoed).
                let server_ended = !self.args.sessions || (info.by_peer && info.error.is_none());
                if self.closing.is_none()
                    && self.stdin_done
                    && self.pending.is_empty()
                    && server_ended
                {
                    // Everything was sent and the server ended the conversation: done.
                    self.request_close(client, ExitCode::SUCCESS);
                } else if self.closing.is_none() && self.args.no_reconnect {
                    eprintln!("[connect] connection lost: not reconnecting (--no-reconnect)");
                    self.request_close(client, ExitCode::FAILURE);
                }
            }
            ClientEvent::ConnectFailed { error, .. } => {
                self.info(format_args!("attempt {} failed: {error}", self.attempt));
            }
            ClientEvent::Reconnecting { attempt, delay } => {
                self.attempt = attempt;
                if self.closing.is_some() {
                    return Flow::Continue;
                }
                self.info(format_args!(
                    "reconnecting: attempt {} in {} ms",
                    self.attempt,
                    delay.as_millis()
                ));
            }
            ClientEvent::GaveUp {
                attempts,
                connected,
            } => {
                if self.closing.is_some() {
                    return Flow::Exit(self.exit_code());
                }
                if self.args.no_reconnect {
                    eprintln!("[connect] gave up: could not connect (--no-reconnect)");
                } else {
                    eprintln!(
                        "[connect] gave up after {}",
                        attempts_summary(attempts, connected)
                    );
                }
                return Flow::Exit(ExitCode::FAILURE);
            }
            ClientEvent::Session(SessionEvent::Started {
                id,
                status,
                resending,
            }) => {
                let id = hex(&id);
                match status {
                    ResumeStatus::New => self.info(format_args!("session {id} new")),
                    ResumeStatus::Resumed => self.info(format_args!(
                        "session {id} resumed: resending {resending} message{}",
                        if resending == 1 { "" } else { "s" }
                    )),
                    ResumeStatus::Unknown => self.info(format_args!(
                        "session {id} unknown to the server (expired, or the server restarted): \
                         started anew"
                    )),
                }
            }
            ClientEvent::Session(SessionEvent::Lost { id, unacked }) => {
                // Whatever -q says: these may never have reached the server.
                eprintln!(
                    "[connect] session {} lost: {} handed back (they may or may not have \
                     reached the server)",
                    hex(&id),
                    unacked_messages(unacked.len())
                );
                if self.args.verbose {
                    for (i, m) in unacked.iter().enumerate() {
                        eprintln!("[connect]   unacked {}: {}", i + 1, escape_text(m));
                    }
                }
            }
            ClientEvent::Closed => {
                self.info(format_args!("closed"));
                return Flow::Exit(self.exit_code());
            }
            ClientEvent::Unsent { messages } => {
                // Whatever -q says: the peer never got these.
                let n = messages.len();
                eprintln!(
                    "[connect] {n} message{} handed over but not written before the connection \
                     was lost: not sent (-v lists them)",
                    if n == 1 { "" } else { "s" }
                );
                if self.args.verbose {
                    for (i, m) in messages.iter().enumerate() {
                        eprintln!("[connect]   unsent {}: {}", i + 1, escape_text(m));
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Asks the client to stop and close gracefully, without waiting: its events (echoes still
    /// arriving, then `Disconnected` and `Closed`) keep being read by the loop.
    fn request_close(&mut self, client: &Client, code: ExitCode) {
        if self.closing.is_some() {
            return;
        }
        // Not `Client::close`, which discards events: the loop keeps printing them until
        // `Closed`.
        client.stop();
        self.closing = Some((code, Instant::now() + self.linger + CLOSE_MARGIN));
    }

    fn print(&mut self, message: &[u8]) -> std::io::Result<()> {
        let mut out = self.stdout.lock();
        match self.args.format {
            OutputFormat::Text => writeln!(out, "{}", escape_text(message))?,
            OutputFormat::Hex => writeln!(out, "{}", hex(message))?,
            OutputFormat::Json => {
                let mut obj = serde_json::json!({
                    "index": self.printed,
                    "length": message.len(),
                    "hex": hex(message),
                });
                if let Ok(text) = std::str::from_utf8(message) {
                    obj["text"] = serde_json::Value::String(text.to_string());
                }
                writeln!(out, "{obj}")?;
            }
        }
        self.printed += 1;
        out.flush()
    }
}

/// Sleeps until `at` (`None`: forever; such branches are disabled by their guard anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// "3 attempts: 1 could not connect, 2 connected but were lost within 5 s", for `GaveUp`.
fn attempts_summary(attempts: u32, connected: u32) -> String {
    let failed = attempts.saturating_sub(connected);
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!("{failed} could not connect"));
    }
    match connected {
        0 => {}
        1 => parts.push("1 connected but was lost within 5 s".to_owned()),
        n => parts.push(format!("{n} connected but were lost within 5 s")),
    }
    let noun = if attempts == 1 { "attempt" } else { "attempts" };
    format!("{attempts} {noun}: {}", parts.join(", "))
}
