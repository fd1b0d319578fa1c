//! The tokio driver for a framelink connection: protocol v1, or raw mode with the user's framing.
//!
//! [`spawn`] runs a sans-IO [`proto::connection::Connection`](framelink_proto::connection::Connection)
//! (framelink's wire protocol, with heartbeats) over any byte stream (a `TcpStream` in practice)
//! on one background task; [`spawn_raw`] does the same for a
//! [`RawConnection`], which keeps a connection to a peer that
//! does not speak framelink's protocol alive with the user's framing and ping frame. Both hand back
//! a [`Connection`]: a [`Stream`] of [`Event`]s and a [`Sink`] of messages, which can be
//! [`split`](Connection::split) into a cloneable [`Sender`] and a [`Receiver`].
//!
//! ```no_run
//! use bytes::Bytes;
//! use framelink::connection::{self, CloseCode, ConnectionConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = tokio::net::TcpStream::connect("127.0.0.1:7000").await?;
//! let mut conn = connection::spawn(stream, ConnectionConfig::default())?;
//! conn.send(Bytes::from_static(b"hello")).await?;
//! if let Some(reply) = conn.recv().await {
//!     println!("got {} bytes", reply.len());
//! }
//! let info = conn.close(CloseCode::Normal, "done").await;
//! println!("closed: {info:?}");
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **One task** owns the protocol machine and the socket. It waits (with `tokio::select!`) on
//!   the socket (one `poll_fn` that writes queued output with vectored writes and reads input),
//!   on a [`Notify`] that the handles ring when they queue a command or make room for events,
//!   and on **one** [`tokio::time::Sleep`], re-armed with `reset` to the machine's
//!   `poll_timeout` only when that deadline moved earlier or the timer fired (a deadline that
//!   traffic pushed later is found when the timer fires early). Heartbeat deadlines are not re-armed per
//!   message: the machine keeps timestamps and checks them when the timer fires.
//! - **Memory of an idle connection** is kept small: the handles and the driver share one
//!   allocation (a mutex-protected pair of queues that allocate only when used, plus the send
//!   budget); the read buffer is released whenever it is empty after a small read, and small
//!   reads go through a stack buffer, so an idle connection holds no read buffer at all.
//! - **Large frames are not copied to grow the buffer**: once a frame's header is in, room is
//!   made for the rest of it (growing by no more than what arrived, or 64 KiB), and after a
//!   large frame the empty buffer gets room for one more like it before the next header is
//!   read. A frame slightly larger than a read would otherwise be found not to fit only when
//!   the buffer is full, and be copied whole, since earlier frames still share the buffer.
//! - **Send backpressure**: a byte budget equal to the machine's `max_queued_bytes` (capped at
//!   `u32::MAX`), counting each message as its payload plus its framing overhead, from the
//!   moment it is handed to [`Sender::send`] until the driver takes it out of the machine's queue
//!   to write it. The driver only pulls about 64 KiB ahead of the socket, so a slow peer fills
//!   the queue and then [`Sender::send`] **waits** for room, while [`Sender::try_send`] returns
//!   [`SendError::QueueFull`]. A message larger than the whole budget, or than the peer accepts,
//!   or that the raw framing cannot encode, is refused at once. `Ok` means "queued", not
//!   "delivered".
//! - **Receive backpressure**: events wait in a queue for the [`Receiver`]. When the application
//!   falls behind (about 64 KiB of messages or 256 events waiting), the driver stops reading the
//!   socket, so TCP flow control slows the peer down. Stalling longer than the keep-alive timeout
//!   stops PONGs from being read too, and the peer is then declared dead: keep consuming.
//! - **Closing**: [`Sender::close`] is graceful (messages sent before it are written first) and
//!   resolves once the close handshake is done, or the linger ran out, and the socket is
//!   dropped. Dropping every [`Sender`] and the [`Receiver`] closes gracefully with
//!   [`CloseCode::Normal`]. Events already produced are still delivered after the socket is
//!   gone; [`Event::Closed`] is the last one.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::sync::ReusableBoxFuture;

use crate::memory::{Account, Hold, MemoryBudget};
use framelink_proto::auth::{ResumeProof, SessionSecret};
use framelink_proto::connection::{self as proto, State};
use framelink_proto::machine::Machine;
use framelink_proto::raw::{RawConfig, RawConfigError, RawConnection};
pub use framelink_proto::session::Session;
use framelink_proto::{FrameEncoder, Framing};

pub use framelink_proto::codec::DecodeError;
pub use framelink_proto::connection::{ConfigError, ConnectionConfig, ConnectionError};
pub use framelink_proto::liveness::{DeathCause, IdleKind, RttEstimate};
pub use framelink_proto::wire::{CloseCode, Hello, ResumeStatus};

/// Read straight into the machine's buffer when it has at least this much room.
const MIN_DIRECT_READ: usize = 4 * 1024;
/// Size of the stack buffer for reads into an empty (released) receive buffer.
const STACK_READ: usize = 8 * 1024;
/// Room reserved in the receive buffer once reads come in full (a busy connection).
const READ_SIZE: usize = 64 * 1024;
/// Frames at least this large set the size of the next reads (see [`Driver::on_read`]).
const LARGE_FRAME: usize = 32 * 1024;
/// ... up to this size.
const MAX_PREDICTED_FRAME: usize = 1024 * 1024;
/// Room beyond the expected frame, for the small frames between large ones (ACKs, pings).
const FRAME_SLACK: usize = 4 * 1024;
/// At most this many buffers per vectored write.
const MAX_IOV: usize = 64;

/// Buffering and backpressure of the driver task. The machine's own send limit
/// (`max_queued_bytes`) is the send side's high watermark.
///
/// ```
/// use framelink::connection::DriverConfig;
/// let config = DriverConfig { recv_high_watermark: 1 << 20, ..DriverConfig::default() };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Once the send queue is full (the machine's `max_queued_bytes`), blocked senders resume
    /// only when it has drained to this many bytes, so they wake up in batches instead of once
    /// per written message. `None` (default): half the limit.
    pub send_low_watermark: Option<usize>,
    /// The driver stops reading the socket when this many payload bytes of received messages
    /// wait for the application (TCP flow control then slows the peer down). Default 64 KiB.
    pub recv_high_watermark: usize,
    /// ... and reads again once the application has taken them down to this. Default 16 KiB.
    pub recv_low_watermark: usize,
    /// Reading also stops at this many waiting events, whatever their size. Default 256.
    pub max_pending_events: usize,
    /// Output taken from the machine ahead of the socket: up to this much is written per
    /// vectored write, many small frames per system call. Default 64 KiB.
    pub write_ahead: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            send_low_watermark: None,
            recv_high_watermark: 64 * 1024,
            recv_low_watermark: 16 * 1024,
            max_pending_events: 256,
            write_ahead: 64 * 1024,
        }
    }
}

impl DriverConfig {
    /// Checks that every limit is non-zero and each low watermark is below its high one.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &str| Err(crate::Error::InvalidConfig(what.to_string()));
        if self.recv_high_watermark == 0 || self.max_pending_events == 0 || self.write_ahead == 0 {
            return bad("recv_high_watermark, max_pending_events and write_ahead must be > 0");
        }
        if self.recv_low_watermark >= self.recv_high_watermark {
            return bad("recv_low_watermark must be below recv_high_watermark");
        }
        Ok(())
    }

    /// The send low watermark for a queue limit of `limit` bytes.
    fn send_low(&self, limit: usize) -> usize {
        self.send_low_watermark
            .unwrap_or(limit / 2)
            .min(limit.saturating_sub(1))
    }
}

/// What the driver reports to the [`Receiver`], in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Protocol mode: the peer's HELLO was accepted, the connection is open. (Raw mode has no
    /// handshake and no `Connected` event: it is open from the start.)
    Connected {
        /// The peer's HELLO (keep-alive settings, `max_message_len`, session id, extensions).
        peer: Box<Hello>,
        /// The negotiated protocol version.
        version: u8,
    },
    /// An application message from the peer.
    Message(Bytes),
    /// A ping / pong pair completed: the estimate with this sample (`latest`), the smoothed RTT
    /// and its variation (RFC 6298), the minimum and the sample count.
    Rtt(RttEstimate),
    /// A direction has been idle for its configured period.
    Idle(IdleKind),
    /// A message sent before the handshake (or while it completed) was larger than the peer
    /// accepts and was dropped.
    MessageDropped {
        /// Its payload length.
        len: usize,
        /// The peer's `max_message_len` (which counts the type byte too).
        peer_max: u32,
    },
    /// Raw mode: the framing skipped bad input and carries on (an oversize frame under the
    /// `discard` policy, garbage before a magic). The frames around it are delivered.
    FrameDiscarded(DecodeError),
    /// An acknowledged session runs on this connection (after the RESUME).
    Session {
        /// The session id.
        id: [u8; 16],
        /// New, resumed, or unknown to the accepting side (a new one was started).
        status: ResumeStatus,
        /// Messages sent again because the peer had not delivered them.
        resending: u64,
    },
    /// The session could not be resumed, or ended with unacknowledged messages: they are
    /// handed back and may or may not have reached the peer's application.
    SessionLost {
        /// The session id.
        id: [u8; 16],
        /// The messages, oldest first.
        unacked: Vec<Bytes>,
    },
    /// The connection is closing or closed; always the last event.
    Closed(CloseInfo),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseInfo {
    /// The close code (sent by us when `by_peer` is false, received otherwise). When the
    /// stream ended without a CLOSE ([`without_close`](Self::without_close)), none was
    /// received and this only classifies the end.
    pub code: CloseCode,
    /// The reason text (untrusted when `by_peer`).
    pub reason: String,
    /// The peer closed (CLOSE received or stream ended) rather than us.
    pub by_peer: bool,
    /// What went wrong, if anything (a dead peer is [`ConnectionError::PeerDead`]).
    pub error: Option<ConnectionError>,
    /// Raw mode: no CLOSE is ever exchanged with the peer; `code` only classifies the end
    /// (ours: `Normal`, `Idle`, `PeerTimedOut` for an unanswered ping, `ProtocolError` for a
    /// framing error).
    pub raw: bool,
    /// The read or write error of the byte stream that ended the connection, if one did (a
    /// reset, a TLS alert or certificate failure...). The protocol then sees an end of stream.
    pub transport: Option<TransportError>,
}

/// A byte stream's read or write error, as [`CloseInfo::transport`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// The I/O error kind.
    pub kind: io::ErrorKind,
    /// The error's text (for TLS, the reason in plain words).
    pub message: String,
}

impl From<&io::Error> for TransportError {
    fn from(error: &io::Error) -> Self {
        TransportError {
            kind: error.kind(),
            message: error.to_string(),
        }
    }
}

impl CloseInfo {
    /// The stream ended without a CLOSE (no code was exchanged: `code` then only classifies
    /// the end, `GoingAway` for a clean end and `ProtocolError` for one mid-message).
    pub fn without_close(&self) -> bool {
        matches!(self.error, Some(ConnectionError::EndOfStream { .. }))
    }
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(transport), true) = (&self.transport, self.without_close()) {
            // The stream failed (a reset, a TLS alert): that is what happened.
            return write!(f, "connection failed: {transport}");
        }
        if let Some(ConnectionError::EndOfStream { mid_message }) = self.error {
            // No CLOSE, so no code to report: "closed with GoingAway" would be made up.
            let mid = if !mid_message {
                ""
            } else if self.raw {
                " in the middle of a frame"
            } else {
                " in the middle of a message"
            };
            return if self.raw {
                // Raw peers never send a CLOSE: an end of stream is how they close.
                write!(f, "peer closed the connection (end of stream{mid})")
            } else {
                write!(f, "peer ended the stream without CLOSE{mid}")
            };
        }
        if self.raw {
            // Raw peers know no CLOSE codes: say what happened.
            let what = match (self.code, &self.error) {
                (_, Some(error)) => return write!(f, "we closed the connection: {error}"),
                (CloseCode::Idle, None) => "idle timeout",
                (CloseCode::GoingAway, None) => "shutting down",
                _ => "",
            };
            f.write_str("we closed the connection")?;
            return match (what, self.reason.is_empty()) {
                ("", true) => Ok(()),
                ("", false) => write!(f, " ({:?})", self.reason),
                (what, true) => write!(f, ": {what}"),
                (what, false) => write!(f, ": {what} ({:?})", self.reason),
            };
        }
        let who = if self.by_peer { "peer" } else { "we" };
        write!(f, "{who} closed with {:?}", self.code)?;
        let error = self.error.as_ref().map(ToString::to_string);
        // Our own closes carry the error's text as their reason: say it once.
        if !self.reason.is_empty() && error.as_deref() != Some(self.reason.as_str()) {
            write!(f, " ({:?})", self.reason)?;
        }
        if let Some(error) = error {
            write!(f, ": {error}")?;
        }
        if let Some(transport) = &self.transport {
            write!(f, " ({transport})")?;
        }
        Ok(())
    }
}

/// Why a message could not be sent: the protocol's reasons, plus a vanished driver.
pub use framelink_proto::connection::SendError;

/// Spawns the driver for a framelink protocol v1 connection over `stream` on the current tokio
/// runtime. Our HELLO goes out at once; [`Event::Connected`] follows the peer's.
///
/// Fails only when `config` is invalid. Panics outside a tokio runtime.
pub fn spawn<S>(stream: S, config: ConnectionConfig) -> Result<Connection, ConfigError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let machine = proto::Connection::new(config, Instant::now().into_std())?;
    Ok(spawn_with_hook(stream, machine, SpawnOptions::default()).0)
}

/// [`spawn`], asking the peer (a server offering sessions) for `session`: a new one
/// (`Session::new` with 16 random bytes) or the one a previous connection left
/// ([`Receiver`]s of finished connections hand it back through the [`Client`](crate::Client),
/// which is the usual way to use sessions). Messages are numbered, kept until acknowledged,
/// and resent after a reconnect.
pub fn spawn_session<S>(
    stream: S,
    config: ConnectionConfig,
    session: Session,
) -> Result<Connection, ConfigError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let machine = proto::Connection::with_session(config, session, Instant::now().into_std())?;
    Ok(spawn_with_hook(stream, machine, SpawnOptions::default()).0)
}

/// Spawns the driver for a raw-mode connection over `stream`: the peer speaks its own framing
/// (`config.framing`), and the connection is kept alive with `config`'s ping frame and pong
/// matcher, or only watched for silence. See [`framelink_proto::raw`].
///
/// Fails only when `config` is invalid. Panics outside a tokio runtime.
pub fn spawn_raw<S>(stream: S, config: RawConfig) -> Result<Connection, RawConfigError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framing = config.framing.clone();
    let machine = RawConnection::new(config, Instant::now().into_std())?;
    let options = SpawnOptions {
        framing: Some(framing),
        ..SpawnOptions::default()
    };
    Ok(spawn_with_hook(stream, machine, options).0)
}

/// [`spawn`] (or [`spawn_raw`]) with the driver's buffering and backpressure settings.
pub fn spawn_with<S>(
    stream: S,
    protocol: &Protocol,
    driver: DriverConfig,
) -> Result<Connection, crate::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = SpawnOptions {
        driver,
        ..SpawnOptions::default()
    };
    Ok(spawn_protocol(stream, protocol, options, None)?.0)
}

/// Called once when a driver has dropped its socket (the server's connection registry).
pub(crate) type FinishHook = Box<dyn FnOnce() + Send>;

/// Where the accepting side's drivers get sessions from and give them back to (the server's
/// store of detached sessions).
pub(crate) trait SessionHost: Send + Sync {
    /// What connection `conn` gets for its request for session `id` with `proof`: the kept
    /// session, a new one, or a refusal. May wait, e.g. for an older connection of the same
    /// session to let go of it.
    fn resolve(
        &self,
        id: [u8; 16],
        conn: u64,
        proof: Option<ResumeProof>,
    ) -> Pin<Box<dyn std::future::Future<Output = Resolved> + Send>>;
    /// Connection `conn` now carries session `id`, whose secret is `secret` (a resume proves
    /// it to take the session over).
    fn attached(&self, id: [u8; 16], conn: u64, secret: Option<SessionSecret>);
    /// Connection `conn` ended; `session` is what it leaves to resume (`None`: the session
    /// ended, or was never attached).
    fn release(&self, id: [u8; 16], conn: u64, session: Option<Session>);
}

/// A [`SessionHost`]'s answer to a session request.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// Attach this kept session (its proof was checked), or a new one.
    Attach(Option<Session>),
    /// Refuse the request (CLOSE `SessionRefused`) with this reason.
    Refuse(&'static str),
}

/// How a driver is spawned, beyond its machine.
#[derive(Default)]
pub(crate) struct SpawnOptions {
    /// Raw mode: the framing, for the handles to refuse what it cannot encode.
    pub framing: Option<Framing>,
    pub driver: DriverConfig,
    pub on_finish: Option<FinishHook>,
    /// Accepting side: the session host and this connection's number in it.
    pub sessions: Option<(Arc<dyn SessionHost>, u64)>,
    /// A server's memory budget: the connection's buffers are charged to it.
    pub memory: Option<Arc<MemoryBudget>>,
}

/// Spawns the driver for any [`Machine`]; returns the task's abort handle too.
pub(crate) fn spawn_with_hook<S, M>(
    stream: S,
    machine: M,
    options: SpawnOptions,
) -> (Connection, tokio::task::AbortHandle)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: Machine + Send + 'static,
{
    let SpawnOptions {
        framing,
        driver,
        on_finish,
        sessions,
        memory,
    } = options;
    let limit = machine
        .max_queued_bytes()
        .min(u32::MAX as usize)
        .min(Semaphore::MAX_PERMITS);
    // A resumed session may start with messages buffered: they hold their budget.
    let held = machine.queued_bytes().min(limit);
    let memory = memory.map(Account::new);
    if let Some(account) = &memory {
        account.charge(held);
    }
    let shared = Arc::new(Shared {
        memory,
        budget: Semaphore::new(limit - held),
        limit,
        config: driver,
        overhead: machine.message_cost(0),
        peer_max: AtomicU32::new(u32::MAX),
        framing: framing.map(Box::new),
        inner: Mutex::new(Inner {
            senders: 1,
            receiver_alive: true,
            ..Inner::default()
        }),
        wake_driver: Notify::new(),
        status_changed: Notify::new(),
        last_message: AtomicU64::new(clock_ms()),
    });
    // Boxed: the task's future then holds a pointer, not (several copies of) the machine.
    let send_low = driver.send_low(limit);
    let driver = Box::new(Driver {
        send_low,
        machine,
        shared: shared.clone(),
        held,
        debt: 0,
        sessions,
        resolving: None,
        session_id: None,
        detach_now: false,
        out: OutQueue::default(),
        shutdown_pending: false,
        shutdown_done: false,
        reading: true,
        write_dead: false,
        handles_gone: false,
        closed_at: None,
        large_frame: 0,
        message_seen: false,
        mem_counted: 0,
        mem_read_ok: true,
        mem_waiting: false,
        transport: None,
    });
    let task = tokio::spawn(async move {
        driver.run(stream).await;
        if let Some(hook) = on_finish {
            hook();
        }
    });
    let connection = Connection {
        sender: Sender::new(shared.clone()),
        receiver: Receiver {
            shared,
            local: VecDeque::new(),
            local_bytes: 0,
            resume_pending: false,
        },
    };
    (connection, task.abort_handle())
}

/// Builds the machine for a [`Protocol`] and spawns its driver.
///
/// `session`: connecting side, the session to ask for (protocol mode only).
pub(crate) fn spawn_protocol<S>(
    stream: S,
    protocol: &Protocol,
    mut options: SpawnOptions,
    session: Option<Session>,
) -> Result<(Connection, tokio::task::AbortHandle), crate::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    options.driver.validate()?;
    let now = Instant::now().into_std();
    Ok(match protocol {
        Protocol::Framelink(config) => {
            let machine = match session {
                Some(session) => proto::Connection::with_session(config.clone(), session, now)?,
                None => proto::Connection::new(config.clone(), now)?,
            };
            spawn_with_hook(stream, machine, options)
        }
        Protocol::Raw(config) => {
            let machine = RawConnection::new(RawConfig::clone(config), now)?;
            options.framing = Some(config.framing.clone());
            spawn_with_hook(stream, machine, options)
        }
    })
}

/// What a connection speaks: framelink's protocol (with its handshake and heartbeats), or the
/// peer's own framing in raw mode (kept alive with a ping frame of the user's choosing).
#[derive(Debug, Clone)]
// A configuration is built once and cloned per connection, never moved per message: boxing
// `ConnectionConfig` would only change the public API.
#[allow(clippy::large_enum_variant)]
pub enum Protocol {
    /// framelink wire protocol v1 (`docs/PROTOCOL.md`).
    Framelink(ConnectionConfig),
    /// Raw mode: the peer's framing, ping and pong. See [`framelink_proto::raw`]. (Boxed: a
    /// framing with its decoder state is large.)
    Raw(Box<RawConfig>),
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol::Framelink(ConnectionConfig::default())
    }
}

impl Protocol {
    /// Checks the configuration without connecting.
    pub fn validate(&self) -> Result<(), crate::Error> {
        match self {
            Protocol::Framelink(config) => config.validate()?,
            Protocol::Raw(config) => config.validate()?,
        }
        Ok(())
    }

    /// The linger after a close (how long a closing connection may still take).
    pub fn linger(&self) -> Duration {
        match self {
            Protocol::Framelink(config) => config.linger,
            Protocol::Raw(config) => config.linger,
        }
    }
}

/// State shared by the handles and the driver: one allocation per connection.
struct Shared {
    /// This connection's share of a server's memory budget, if any.
    memory: Option<Account>,
    /// Send budget in bytes (payload + overhead per message); closed when the connection closes.
    budget: Semaphore,
    /// The budget's size (the send high watermark).
    limit: usize,
    config: DriverConfig,
    /// Budget bytes each message costs on top of its payload.
    overhead: usize,
    /// Protocol mode: the peer's `max_message_len` once known.
    peer_max: AtomicU32,
    /// Raw mode: the framing, to refuse what it cannot encode before queueing.
    framing: Option<Box<Framing>>,
    inner: Mutex<Inner>,
    /// Rung by the handles: a command is queued, the receiver made room, or handles went away.
    wake_driver: Notify,
    /// Rung by the driver when the connection closes and when the socket is gone.
    status_changed: Notify,
    /// When the last application message went either way ([`clock_ms`]), for
    /// [`Sender::idle_for`].
    last_message: AtomicU64,
}

/// Milliseconds on a process-wide monotonic clock (from its first use).
fn clock_ms() -> u64 {
    ms_at(std::time::Instant::now())
}

/// [`clock_ms`] at `at`, without reading the clock again.
fn ms_at(at: std::time::Instant) -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("limit", &self.limit)
            .field("available", &self.budget.available_permits())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent in a way that matters
        // more than losing the connection: keep going with the data as it is.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mutable part of [`Shared`].
#[derive(Default)]
struct Inner {
    /// Commands from the handles, in order.
    commands: VecDeque<Command>,
    /// Events for the receiver, in order.
    events: VecDeque<Event>,
    /// Payload bytes in `events`.
    event_bytes: usize,
    /// The receiver waits for an event.
    receiver_waker: Option<Waker>,
    /// The driver stopped reading because too much waits in `events`: ring it once the
    /// receiver has taken them down to the low watermark.
    reading_paused: bool,
    /// Live [`Sender`]s.
    senders: usize,
    receiver_alive: bool,
    closed: Option<Box<CloseInfo>>,
    /// The driver dropped the socket: no more events after those queued.
    finished: bool,
    /// Connecting side: the session left by the finished driver, for the next connection
    /// (boxed: most connections never have one, and this lives as long as the connection).
    session: Option<Box<Session>>,
    /// Messages handed over that were never written (no session to keep them): the
    /// connection ended first. Left by the finished driver.
    unsent: Vec<Bytes>,
}

impl Inner {
    fn events_full(&self, config: &DriverConfig) -> bool {
        self.event_bytes >= config.recv_high_watermark
            || self.events.len() >= config.max_pending_events
    }

    /// Queues `event` for the receiver; returns the payload bytes it adds.
    fn push_event(&mut self, event: Event) -> usize {
        if !self.receiver_alive {
            return 0;
        }
        let bytes = match &event {
            Event::Message(payload) => payload.len(),
            _ => 0,
        };
        self.event_bytes += bytes;
        self.events.push_back(event);
        bytes
    }

    fn wake_receiver(&mut self) {
        if let Some(waker) = self.receiver_waker.take() {
            waker.wake();
        }
    }
}

#[derive(Debug)]
enum Command {
    Send(Bytes),
    Close(CloseCode, String),
    /// Accepting side: another connection resumed this session; drop the socket now (no
    /// CLOSE, no linger) so that the session is released at once.
    Detach,
    /// A server over its memory budget: close at once (CLOSE `ServerFull` with this reason),
    /// dropping queued messages and buffered input.
    Evict(String),
}

/// A running connection: a [`Stream`] of [`Event`]s and a [`Sink`] of messages. Use
/// [`split`](Self::split) to hand the halves to different tasks.
#[derive(Debug)]
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
}

impl Connection {
    /// Separates the sending and receiving halves.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// A new handle for sending and closing.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// See [`Sender::send`].
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        self.sender.send(payload).await
    }

    /// See [`Sender::try_send`].
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        self.sender.try_send(payload)
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.receiver.recv().await
    }

    /// See [`Receiver::next_event`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.receiver.next_event().await
    }

    /// See [`Sender::close`].
    pub async fn close(&self, code: CloseCode, reason: &str) -> Option<CloseInfo> {
        self.sender.close(code, reason).await
    }

    /// See [`Sender::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl Stream for Connection {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl Sink<Bytes> for Connection {
    type Error = SendError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.sender).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), SendError> {
        Pin::new(&mut self.sender).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.sender).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Pin::new(&mut self.sender).poll_close(cx)
    }
}

/// The sending half: cloneable; sends messages and closes the connection.
///
/// It is also a [`Sink`] of [`Bytes`]: `poll_ready` waits until the previous message fits the
/// send budget, `start_send` takes the next one, `poll_flush` waits until it is queued (not
/// written), and `poll_close` closes the connection gracefully with [`CloseCode::Normal`] and
/// waits until the socket is gone.
pub struct Sender {
    shared: Arc<Shared>,
    /// Sink state: a message taken by `start_send`, waiting for budget.
    sink_item: Option<Bytes>,
    /// Sink state: the budget wait (or the close) in progress.
    sink_wait: Option<ReusableBoxFuture<'static, Result<(), SendError>>>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
            sink_item: None,
            sink_wait: None,
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.senders -= 1;
        if inner.senders == 0 && !inner.receiver_alive {
            drop(inner);
            self.shared.wake_driver.notify_one();
        }
    }
}

impl Sender {
    /// How long the connection has carried no application message, either way (heartbeats do
    /// not count): since the last one, or since it opened.
    pub fn idle_for(&self) -> Duration {
        let last = self.shared.last_message.load(Ordering::Relaxed);
        Duration::from_millis(clock_ms().saturating_sub(last))
    }

    /// The handle counted in `senders` already.
    fn new(shared: Arc<Shared>) -> Self {
        Sender {
            shared,
            sink_item: None,
            sink_wait: None,
        }
    }

    /// Queues a message, waiting while the send budget is used up (see the
    /// [module documentation](self)). Fails with [`SendError::Closed`] once the connection is
    /// closing, [`SendError::TooBig`] over the peer's `max_message_len`,
    /// [`SendError::Unencodable`] when a raw framing cannot carry it, and
    /// [`SendError::QueueFull`] if the message alone is larger than the whole budget.
    pub async fn send(&self, payload: Bytes) -> Result<(), SendError> {
        send_on(&self.shared, payload).await
    }

    /// Queues a message if the budget has room now; [`SendError::QueueFull`] otherwise.
    pub fn try_send(&self, payload: Bytes) -> Result<(), SendError> {
        let cost = check(&self.shared, &payload)?;
        self.try_reserve(cost)?;
        enqueue_send(&self.shared, payload, cost)
    }

    /// Queues every message of `batch`, in order, waiting for budget as [`send`](Self::send)
    /// does, but taking the budget and the queue lock once for each run of messages that fits
    /// the budget, not once per message: the way to send many small messages fast.
    ///
    /// On success `batch` is empty (its capacity is kept, for reuse). On error, `batch` holds
    /// exactly the messages that were not queued, in order, and the first of them is the one
    /// the error is about (for [`SendError::Closed`], the first not queued): nothing is lost
    /// silently.
    ///
    /// ```no_run
    /// # async fn echo(mut receiver: framelink::connection::Receiver, sender: framelink::connection::Sender) {
    /// use framelink::connection::Event;
    /// let (mut events, mut replies) = (Vec::new(), Vec::new());
    /// while receiver.recv_many(&mut events, 1024).await > 0 {
    ///     replies.extend(events.drain(..).filter_map(|event| match event {
    ///         Event::Message(payload) => Some(payload),
    ///         _ => None,
    ///     }));
    ///     if sender.send_batch(&mut replies).await.is_err() {
    ///         break;
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn send_batch(&self, batch: &mut Vec<Bytes>) -> Result<(), SendError> {
        while !batch.is_empty() {
            // The longest prefix that fits the budget available now, with its total cost.
            let available = self.shared.budget.available_permits();
            let (mut count, mut total, mut refused, mut reserved) = (0, 0usize, None, false);
            for payload in batch.iter() {
                match check(&self.shared, payload) {
                    Ok(cost) if total + cost <= available => {
                        total += cost;
                        count += 1;
                    }
                    Ok(cost) => {
                        if count == 0 {
                            // Not even the first fits now: wait for its budget alone.
                            let permit = self
                                .shared
                                .budget
                                .acquire_many(cost as u32)
                                .await
                                .map_err(|_| SendError::Closed)?;
                            permit.forget();
                            (count, total, reserved) = (1, cost, true);
                        }
                        break;
                    }
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
            }
            if count == 0 {
                return Err(refused.unwrap_or(SendError::Closed));
            }
            if !reserved {
                match self.shared.budget.try_acquire_many(total as u32) {
                    Ok(permit) => permit.forget(),
                    Err(TryAcquireError::Closed) => return Err(SendError::Closed),
                    // Another sender took budget in between: measure again.
                    Err(TryAcquireError::NoPermits) => continue,
                }
            }
            let memory = self.shared.memory.as_ref();
            if memory.is_some_and(|account| !account.try_reserve(total)) {
                // The server's memory budget is used up: give the send budget back, wait for
                // memory, then measure again.
                self.shared.budget.add_permits(total);
                wait_for_memory(&self.shared, total).await?;
                continue;
            }
            let hold = Hold::new(memory, total);
            {
                let mut inner = self.shared.lock();
                if inner.finished {
                    return Err(SendError::Closed);
                }
                hold.keep();
                inner
                    .commands
                    .extend(batch.drain(..count).map(Command::Send));
            }
            self.shared.wake_driver.notify_one();
        }
        Ok(())
    }

    /// Takes `cost` bytes of budget if it has them now.
    fn try_reserve(&self, cost: usize) -> Result<(), SendError> {
        match self.shared.budget.try_acquire_many(cost as u32) {
            Ok(permit) => {
                if let Some(account) = &self.shared.memory {
                    if !account.try_reserve_or_ask(cost) {
                        drop(permit);
                        let budget = account.budget();
                        return Err(SendError::QueueFull {
                            queued: budget.used(),
                            len: cost,
                            limit: budget.limit(),
                        });
                    }
                }
                permit.forget();
                Ok(())
            }
            Err(TryAcquireError::Closed) => Err(SendError::Closed),
            Err(TryAcquireError::NoPermits) => Err(SendError::QueueFull {
                queued: self.shared.limit - self.shared.budget.available_permits(),
                len: cost,
                limit: self.shared.limit,
            }),
        }
    }

    /// Closes gracefully: messages sent before are written, then CLOSE with `code` and `reason`
    /// (raw mode: the write half is shut down). Resolves when the close handshake is done (or
    /// the linger ran out) and the socket is dropped, with how the connection ended (which may
    /// be an earlier close). `None` only if the driver task died (runtime shut down).
    pub async fn close(&self, code: CloseCode, reason: &str) -> Option<CloseInfo> {
        close_on(self.shared.clone(), code, reason.to_owned()).await
    }

    /// Accepting side: ends the connection at once, leaving its session to another one.
    pub(crate) fn detach(&self) {
        let _ = enqueue(&self.shared, Command::Detach);
    }

    /// A server over its memory budget: closes at once with `ServerFull` and `reason`,
    /// dropping queued messages and buffered input. `false` if the driver is already gone.
    pub(crate) fn evict(&self, reason: String) -> bool {
        enqueue(&self.shared, Command::Evict(reason)).is_ok()
    }

    /// The driver has finished (the socket is gone).
    pub(crate) fn is_finished(&self) -> bool {
        self.shared.lock().finished
    }

    /// Bytes of the server's memory budget this connection holds now (0 without a budget).
    pub(crate) fn memory_held(&self) -> usize {
        self.shared.memory.as_ref().map_or(0, Account::held)
    }

    /// Waits until the connection is closing or closed (without closing it) and says how.
    pub async fn closed(&self) -> Option<CloseInfo> {
        wait_status(&self.shared, |inner| {
            inner.closed.is_some() || inner.finished
        })
        .await
    }

    /// The connection is closing or closed: sends will fail.
    pub fn is_closed(&self) -> bool {
        self.shared.budget.is_closed() || self.shared.lock().closed.is_some()
    }

    /// Budget bytes in use now (queued messages not yet taken for writing).
    pub fn queued_bytes(&self) -> usize {
        self.shared.limit - self.shared.budget.available_permits()
    }

    /// Drives the sink's pending work (a budget wait or a close) to completion.
    fn poll_sink_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if let Some(wait) = &mut self.sink_wait {
            let result = ready!(wait.poll(cx));
            self.sink_wait = None;
            result?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Sink<Bytes> for Sender {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.poll_flush(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> Result<(), SendError> {
        debug_assert!(self.sink_item.is_none(), "start_send without poll_ready");
        // Refuse what can never be sent now rather than at the next poll (checked once).
        let cost = check(&self.shared, &item)?;
        match self.try_reserve(cost) {
            Ok(()) => enqueue_send(&self.shared, item, cost),
            Err(SendError::QueueFull { .. }) => {
                // Waits in `poll_flush` / the next `poll_ready` for budget.
                self.sink_item = Some(item);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.poll_sink_wait(cx))?;
        if let Some(item) = self.sink_item.take() {
            let shared = self.shared.clone();
            self.sink_wait = Some(ReusableBoxFuture::new(async move {
                send_on(&shared, item).await
            }));
            ready!(self.poll_sink_wait(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        let shared = self.shared.clone();
        self.sink_wait = Some(ReusableBoxFuture::new(async move {
            close_on(shared, CloseCode::Normal, String::new()).await;
            Ok(())
        }));
        self.poll_sink_wait(cx)
    }
}

/// The budget cost of `payload`, or why it can never be sent.
fn check(shared: &Shared, payload: &Bytes) -> Result<usize, SendError> {
    if shared.budget.is_closed() {
        return Err(SendError::Closed);
    }
    let max = shared.peer_max.load(Ordering::Acquire);
    if payload.len() as u64 + 1 > u64::from(max) {
        return Err(SendError::TooBig {
            len: payload.len(),
            max,
        });
    }
    if let Some(framing) = &shared.framing {
        framing
            .frame_parts(payload)
            .map_err(SendError::Unencodable)?;
    }
    let cost = payload.len().saturating_add(shared.overhead);
    if cost > shared.limit {
        return Err(SendError::QueueFull {
            queued: shared.limit - shared.budget.available_permits(),
            len: cost,
            limit: shared.limit,
        });
    }
    Ok(cost)
}

/// Queues a command for the driver and wakes it.
fn enqueue(shared: &Shared, command: Command) -> Result<(), SendError> {
    {
        let mut inner = shared.lock();
        if inner.finished {
            return Err(SendError::Closed);
        }
        inner.commands.push_back(command);
    }
    shared.wake_driver.notify_one();
    Ok(())
}

/// Queues a message whose budget (and memory) is taken; gives the memory back if the driver
/// is gone.
fn enqueue_send(shared: &Shared, payload: Bytes, cost: usize) -> Result<(), SendError> {
    let hold = Hold::new(shared.memory.as_ref(), cost);
    enqueue(shared, Command::Send(payload))?;
    hold.keep();
    Ok(())
}

/// Waits until `n` bytes fit in the server's memory budget (reserving nothing), or the
/// connection closes.
async fn wait_for_memory(shared: &Shared, n: usize) -> Result<(), SendError> {
    let Some(account) = &shared.memory else {
        return Ok(());
    };
    tokio::select! {
        () = account.reserve(n) => {
            account.credit(n);
            Ok(())
        }
        _ = wait_status(shared, |inner| inner.closed.is_some() || inner.finished) => {
            Err(SendError::Closed)
        }
    }
}

async fn send_on(shared: &Shared, payload: Bytes) -> Result<(), SendError> {
    let cost = check(shared, &payload)?;
    let permit = shared
        .budget
        .acquire_many(cost as u32)
        .await
        .map_err(|_| SendError::Closed)?;
    if let Some(account) = &shared.memory {
        // The server's memory budget: wait for room (a cancelled wait gives the permits back).
        if !account.try_reserve_or_ask(cost) {
            tokio::select! {
                () = account.reserve(cost) => {}
                _ = wait_status(shared, |inner| inner.closed.is_some() || inner.finished) => {
                    return Err(SendError::Closed);
                }
            }
        }
    }
    permit.forget();
    enqueue_send(shared, payload, cost)
}

async fn close_on(shared: Arc<Shared>, code: CloseCode, reason: String) -> Option<CloseInfo> {
    // A finished driver ignores the command; the status says how it ended.
    let _ = enqueue(&shared, Command::Close(code, reason));
    wait_status(&shared, |inner| inner.finished).await
}

/// Waits until `done` holds (or the driver is gone) and returns the close info.
async fn wait_status(shared: &Shared, done: impl Fn(&Inner) -> bool) -> Option<CloseInfo> {
    loop {
        let notified = shared.status_changed.notified();
        tokio::pin!(notified);
        // Register before checking, so a change between the check and the await is not lost.
        notified.as_mut().enable();
        {
            let inner = shared.lock();
            if done(&inner) {
                return inner.closed.as_deref().cloned();
            }
        }
        notified.await;
    }
}

/// The receiving half: a [`Stream`] of [`Event`]s, ending after [`Event::Closed`].
///
/// Dropping it discards further events; the connection stays open while a [`Sender`] lives.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    /// Events taken from the shared queue in one batch (one lock per batch, not per event).
    local: VecDeque<Event>,
    /// Payload bytes in `local`.
    local_bytes: usize,
    /// The driver paused reading when this batch was taken: resume it once the batch is
    /// down to the receive low watermark.
    resume_pending: bool,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.receiver_alive = false;
        inner.events = VecDeque::new();
        if let Some(account) = &self.shared.memory {
            account.credit(inner.event_bytes);
        }
        inner.event_bytes = 0;
        inner.reading_paused = false;
        drop(inner);
        // Either every handle is gone, or the driver may be waiting for room it now has.
        self.shared.wake_driver.notify_one();
    }
}

impl Receiver {
    /// The next event; `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next application message, skipping other events; `None` once the connection is
    /// closed (see [`close_info`](Self::close_info) for how).
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            if let Event::Message(payload) = self.next_event().await? {
                return Some(payload);
            }
        }
    }

    /// Payload bytes of received messages waiting in this receiver (bounded by the driver's
    /// receive watermarks, plus one read).
    pub fn buffered_bytes(&self) -> usize {
        self.local_bytes + self.shared.lock().event_bytes
    }

    /// The session the finished connection leaves behind (connecting side), to resume on the
    /// next connection. `None` before the driver finished, without a session, or after the
    /// session ended.
    pub(crate) fn take_session(&self) -> Option<Session> {
        self.shared.lock().session.take().map(|s| *s)
    }

    /// How the connection ended, once it did.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.shared.lock().closed.as_deref().cloned()
    }

    /// Once the connection finished (the last event was taken): the messages that were
    /// handed over but never written, oldest first. Outside a session nothing resends them
    /// (raw mode cannot), so the application learns which they were. Taken once.
    pub fn take_unsent(&self) -> Vec<Bytes> {
        let mut inner = self.shared.lock();
        if !inner.finished {
            return Vec::new();
        }
        std::mem::take(&mut inner.unsent)
    }

    /// Only the application messages, as a stream of [`Bytes`].
    pub fn into_messages(self) -> impl Stream<Item = Bytes> + Send + Unpin {
        futures::StreamExt::filter_map(self, |event| {
            futures::future::ready(match event {
                Event::Message(payload) => Some(payload),
                _ => None,
            })
        })
    }
}

impl Receiver {
    /// Takes the next event from the local batch, first refilling the batch with everything
    /// waiting in the shared queue (one lock per batch, not per event) when it is empty.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.local.is_empty() {
            // Take everything waiting at once: the driver's queue becomes empty, so reading
            // resumes (the batch taken is bounded by the receive high watermark).
            let mut inner = self.shared.lock();
            if inner.events.is_empty() {
                if inner.finished {
                    return Poll::Ready(None);
                }
                match &inner.receiver_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => inner.receiver_waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            std::mem::swap(&mut self.local, &mut inner.events);
            self.local_bytes = std::mem::take(&mut inner.event_bytes);
            // Taken by the application: no longer the server's to count.
            if let Some(account) = &self.shared.memory {
                account.credit(self.local_bytes);
            }
            self.resume_pending |= inner.reading_paused;
        }
        let event = self.local.pop_front().expect("not empty");
        if let Event::Message(payload) = &event {
            self.local_bytes -= payload.len();
        }
        let config = &self.shared.config;
        if self.resume_pending
            && self.local_bytes <= config.recv_low_watermark
            && self.local.len() <= config.max_pending_events / 4
        {
            self.resume_pending = false;
            self.shared.lock().reading_paused = false;
            self.shared.wake_driver.notify_one();
        }
        if self.local.is_empty() {
            // A quiet connection keeps no event buffer.
            self.local = VecDeque::new();
        }
        Poll::Ready(Some(event))
    }

    /// Waits for at least one event, then moves up to `limit` events that have already arrived
    /// into `events` (appending); returns how many. `0` means the connection is over (after
    /// [`Event::Closed`]) or `limit` is 0. Like [`next_event`](Self::next_event) in a loop, but
    /// without a wake-up per event: see [`Sender::send_batch`] for an echo built on both.
    pub async fn recv_many(&mut self, events: &mut Vec<Event>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        let Some(first) = self.next_event().await else {
            return 0;
        };
        events.push(first);
        let mut count = 1;
        // The rest of the batch just taken: already here, no waiting.
        while count < limit && !self.local.is_empty() {
            // Never pending with a batch in hand, so the waker is never kept.
            let waker = futures::task::noop_waker_ref();
            match self.poll_take(&mut Context::from_waker(waker)) {
                Poll::Ready(Some(event)) => events.push(event),
                _ => break,
            }
            count += 1;
        }
        count
    }
}

impl Stream for Receiver {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_take(cx)
    }
}

/// Chunks from `poll_transmit` waiting for the socket, written with vectored writes.
#[derive(Debug, Default)]
struct OutQueue {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl OutQueue {
    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.remaining += chunk.len();
        self.chunks.push_back(chunk);
    }

    fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.remaining = 0;
    }

    /// Marks `cnt` bytes written; releases the chunk buffer once everything is.
    fn consume(&mut self, mut cnt: usize) {
        debug_assert!(cnt <= self.remaining, "advance past the end of the queue");
        cnt = cnt.min(self.remaining);
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
        if self.remaining == 0 {
            // One allocation per write batch at most; a quiet connection keeps no ring.
            self.chunks = VecDeque::new();
        }
    }
}

/// What the socket did.
enum Io {
    Read(io::Result<usize>),
    /// Some output was written (or the write half shut down); `Err` ends writing.
    Written(io::Result<()>),
}

/// Reads into `buf`: straight into its spare room when there is enough of it, else through a
/// stack buffer (so an idle connection needs no read buffer of its own).
///
/// `budgeted` (a memory budget counts this buffer): after a full stack read the buffer is not
/// grown ahead of the next read, whose growth the driver reserves first.
fn poll_read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    budgeted: bool,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_DIRECT_READ && !buf.is_empty() {
        // Part of a message is buffered: the connection is busy. Grow once, read straight in
        // (going through the stack buffer would copy the partial message twice).
        buf.reserve(READ_SIZE);
    }
    if buf.capacity() - buf.len() >= MIN_DIRECT_READ {
        return tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
    let mut read_buf = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(stream).poll_read(cx, &mut read_buf))?;
    let filled = read_buf.filled();
    if filled.len() == STACK_READ && !budgeted {
        // A busy stream: read straight into the buffer from now on.
        buf.reserve(READ_SIZE.max(filled.len()));
    }
    buf.extend_from_slice(filled);
    Poll::Ready(Ok(filled.len()))
}

/// What `buf.reserve(additional)` may allocate at most: nothing when it has the room, else a
/// new buffer of the larger of twice its capacity (growth by doubling) and what is asked for.
fn growth_bound(buf: &BytesMut, additional: usize) -> usize {
    let (len, cap) = (buf.len(), buf.capacity());
    if cap - len >= additional {
        0
    } else {
        cap.max((len + additional).saturating_sub(cap))
    }
}

/// What the next read may allocate in `buf`, the partial frame at its front being `pending`
/// bytes long (if known): [`poll_read_into`] grows a full buffer by [`READ_SIZE`] (nothing when
/// it reads straight into spare room), then the machine's framing may grow it for the rest of
/// the frame, by at most doubling it (nothing when the frame fits).
///
/// An empty buffer is not reserved for: a stack read copies at most [`STACK_READ`] bytes and
/// the framing then grows that by at most as much, 16 KiB per connection counted once it is
/// there (the budget's documented slack), so that idle connections reserve nothing.
fn read_growth(buf: &BytesMut, pending: Option<usize>) -> usize {
    if buf.is_empty() {
        return 0;
    }
    let spare = buf.capacity() - buf.len();
    let read = if spare >= MIN_DIRECT_READ {
        0
    } else {
        growth_bound(buf, READ_SIZE)
    };
    let capacity = buf.capacity() + read;
    let framing = match pending {
        Some(total) if total <= capacity => 0,
        _ => capacity,
    };
    read + framing
}

/// Makes room in `buf` for the rest of the partial frame of `total` bytes at its front, now,
/// while little of it has arrived.
///
/// Without this, a frame a little larger than the room left is found not to fit only when the
/// room is full, and then almost all of it is copied to a bigger buffer (earlier frames still
/// share the old one). Growth is bounded by what has arrived, or [`READ_SIZE`]: memory
/// follows what the peer sent, not what it declared, and a longer frame grows the buffer
/// again later, each time by at least as much as it holds.
fn make_room_for_frame(buf: &mut BytesMut, total: usize) {
    let missing = total.saturating_sub(buf.len());
    if missing > buf.capacity() - buf.len() {
        buf.reserve(missing.min(buf.len().max(READ_SIZE)));
    }
}

/// Writes as much of `out` as the socket takes now (vectored), flushing once it is empty.
fn poll_write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    out: &mut OutQueue,
    shutdown: bool,
) -> Poll<io::Result<()>> {
    let mut progress = false;
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let n = out
            .chunks
            .iter()
            .zip(slices.iter_mut())
            .map(|(chunk, slice)| *slice = IoSlice::new(chunk))
            .count();
        match Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..n]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(written)) => {
                out.consume(written);
                progress = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if progress => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    }
    ready!(Pin::new(&mut *stream).poll_flush(cx))?;
    if shutdown {
        ready!(Pin::new(&mut *stream).poll_shutdown(cx))?;
    }
    Poll::Ready(Ok(()))
}

/// What woke the driver up.
enum Wake {
    Io(Io),
    Handles,
    Timer,
    /// The session host answered a session request.
    Resolved(Box<Resolved>),
}

/// The background task's state.
struct Driver<M> {
    machine: M,
    /// Accepting side: where sessions come from and go back to, and this connection's number.
    sessions: Option<(Arc<dyn SessionHost>, u64)>,
    /// A session lookup in progress.
    resolving: Option<Pin<Box<dyn std::future::Future<Output = Resolved> + Send>>>,
    /// The session this connection asked for or serves.
    session_id: Option<[u8; 16]>,
    /// Another connection took the session over: end now.
    detach_now: bool,
    /// The send low watermark (see [`DriverConfig::send_low_watermark`]).
    send_low: usize,
    shared: Arc<Shared>,
    /// Budget bytes of messages handed to the machine and not yet given back.
    held: usize,
    /// Bytes held without budget (a resumed session's messages that did not fit): repaid
    /// from the next bytes freed.
    debt: usize,
    out: OutQueue,
    /// `ShutdownWrite` came out: shut the write half down once `out` is written.
    shutdown_pending: bool,
    shutdown_done: bool,
    reading: bool,
    /// Writing failed: discard output.
    write_dead: bool,
    /// Every handle is gone (a graceful close was started for them).
    handles_gone: bool,
    /// When the machine reached `Closed`: output gets `linger` more to be written.
    closed_at: Option<Instant>,
    /// Length of the last large frame received (0: frames are small, or the link is quiet).
    large_frame: usize,
    /// A message arrived since `Shared::last_message` was last set (set once per step).
    message_seen: bool,
    /// Memory budget: bytes counted for the receive buffer and the output queue, plus what is
    /// reserved for the next read.
    mem_counted: usize,
    /// Memory budget: the next read is reserved (or there is no budget).
    mem_read_ok: bool,
    /// Memory budget: counted as waiting for room to read.
    mem_waiting: bool,
    /// The stream error that ended the connection (boxed: rarely there).
    transport: Option<Box<TransportError>>,
}

impl<M: Machine> fmt::Debug for Driver<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("state", &self.machine.state())
            .finish_non_exhaustive()
    }
}

impl<M: Machine> Driver<M> {
    async fn run<S>(mut self: Box<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = self.shared.clone();
        let budgeted = shared.memory.is_some();
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed = None;
        loop {
            self.step();
            if self.socket_done() {
                break;
            }
            // The one timer is re-armed when the deadline moved earlier, when it fired, or when
            // it moved later by a lot compared with the time left (a quiet connection's next
            // heartbeat). Traffic on a busy connection moves the deadline later by a little with
            // every read: then the timer is kept, fires early once per period, and is re-armed
            // at the new deadline, instead of being reset for every message.
            match (self.deadline(), armed) {
                // Later by little compared with the time left (traffic on a busy connection):
                // keep the timer; it fires early once and is re-armed then.
                (Some(at), Some(current))
                    if at >= current
                        && at - current < current.saturating_duration_since(Instant::now()) / 2 => {
                }
                (Some(at), Some(current)) if at == current => {}
                (Some(at), _) => {
                    sleep.as_mut().reset(at);
                    armed = Some(at);
                }
                (None, _) => armed = None,
            }
            let can_read = self.reading && {
                let mut inner = shared.lock();
                if !inner.reading_paused
                    && inner.events_full(&shared.config)
                    && matches!(self.machine.state(), State::Handshaking | State::Open)
                {
                    inner.reading_paused = true;
                }
                // Closing: read on regardless, to see the peer's CLOSE.
                !inner.reading_paused
                    || !matches!(self.machine.state(), State::Handshaking | State::Open)
            };
            // The memory budget: a read that may grow the receive buffer is reserved first;
            // without room the socket is left unread (TCP holds the peer back) until memory is
            // freed (the server evicts, or others give back).
            let freed_source = match &shared.memory {
                Some(account) => account.budget().freed(),
                None => &shared.status_changed,
            };
            let freed = freed_source.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let can_read = self.account_memory(can_read);
            let memory_blocked = self.mem_waiting;
            let can_write = !self.write_dead
                && (!self.out.is_empty() || (self.shutdown_pending && !self.shutdown_done));
            let shutdown = self.shutdown_pending && !self.shutdown_done;
            let out = &mut self.out;
            let machine = &mut self.machine;
            let io = std::future::poll_fn(|cx| {
                if can_write {
                    if let Poll::Ready(result) = poll_write_out(&mut stream, cx, out, shutdown) {
                        return Poll::Ready(Io::Written(result));
                    }
                }
                if can_read {
                    if let Poll::Ready(result) =
                        poll_read_into(&mut stream, cx, machine.recv_buf(), budgeted)
                    {
                        return Poll::Ready(Io::Read(result));
                    }
                }
                Poll::Pending
            });
            let resolving_active = self.resolving.is_some();
            let resolving = &mut self.resolving;
            let resolved = std::future::poll_fn(|cx| match resolving.as_mut() {
                Some(lookup) => lookup.as_mut().poll(cx),
                None => Poll::Pending,
            });
            let wake = tokio::select! {
                io = io, if can_read || can_write => Wake::Io(io),
                () = shared.wake_driver.notified() => Wake::Handles,
                () = &mut sleep, if armed.is_some() => Wake::Timer,
                resolution = resolved, if resolving_active => Wake::Resolved(Box::new(resolution)),
                () = &mut freed, if memory_blocked => Wake::Handles,
            };
            let now = Instant::now();
            match wake {
                Wake::Io(Io::Read(result)) => self.on_read(result, now),
                Wake::Io(Io::Written(Ok(()))) => {
                    if shutdown && self.out.is_empty() {
                        self.shutdown_done = true;
                    }
                }
                Wake::Io(Io::Written(Err(e))) => {
                    self.transport
                        .get_or_insert_with(|| Box::new(TransportError::from(&e)));
                    self.write_dead = true;
                    self.out.clear();
                    self.machine.handle_eof(now.into_std());
                }
                Wake::Handles => {
                    self.handles(now.into_std());
                    if self.detach_now {
                        // Tell the peer why if the socket takes it at once; never wait for it:
                        // the session must reach the connection that took it over.
                        self.step();
                        let out = &mut self.out;
                        let _ = std::future::poll_fn(|cx| {
                            Poll::Ready(poll_write_out(&mut stream, cx, out, true))
                        })
                        .await;
                        break;
                    }
                }
                Wake::Resolved(resolution) => {
                    self.resolving = None;
                    self.on_resolved(*resolution, now.into_std());
                }
                Wake::Timer => {
                    armed = None;
                    // The link has been quiet (heartbeat or idle timers): give memory back.
                    self.shrink_buffers();
                    if self.machine.is_closed() {
                        if self
                            .closed_at
                            .is_some_and(|at| now >= at + self.machine.linger())
                        {
                            // Output could not be flushed in time: give up on it.
                            break;
                        }
                    } else {
                        // Input that arrived with the timer goes first: a peer's PING already
                        // in the socket means no PING of ours is due (two pings crossing would
                        // double the heartbeat traffic).
                        if self.reading && self.mem_read_ok && !shared.lock().reading_paused {
                            let machine = &mut self.machine;
                            let ready = std::future::poll_fn(|cx| {
                                Poll::Ready(
                                    match poll_read_into(
                                        &mut stream,
                                        cx,
                                        machine.recv_buf(),
                                        budgeted,
                                    ) {
                                        Poll::Ready(result) => Some(result),
                                        Poll::Pending => None,
                                    },
                                )
                            })
                            .await;
                            if let Some(result) = ready {
                                self.on_read(result, now);
                            }
                        }
                        self.machine.handle_timeout(now.into_std());
                    }
                }
            }
        }
        drop(stream);
        self.shared.budget.close();
        if let Some(account) = &self.shared.memory {
            // The buffers go with the driver; the send queue's messages with the machine (a
            // session's are counted again by the server that keeps it).
            account.settle(&mut self.mem_counted, 0);
            account.credit(self.held);
            if self.mem_waiting {
                account.budget().stop_waiting();
            }
        }
        // The session outlives the connection: messages still in the command queue join it
        // (their senders were told "queued"), then it goes to the next connection.
        let mut session = self.machine.take_session();
        let mut unsent = self.machine.take_unsent();
        let mut inner = self.shared.lock();
        inner.finished = true;
        for command in std::mem::take(&mut inner.commands) {
            if let (Command::Send(payload), Some(account)) = (&command, &self.shared.memory) {
                account.credit(payload.len().saturating_add(self.shared.overhead));
            }
            match (command, session.as_mut()) {
                (Command::Send(payload), Some(session)) => {
                    let _ = session.push(payload, usize::MAX);
                }
                // Handed over, never written: the application learns which.
                (Command::Send(payload), None) => unsent.push(payload),
                _ => {}
            }
        }
        inner.unsent = unsent;
        let release = match (&self.sessions, self.session_id) {
            (Some((host, conn)), Some(id)) => Some((host, *conn, id, session.take())),
            _ => {
                inner.session = session.map(Box::new);
                None
            }
        };
        inner.wake_receiver();
        drop(inner);
        // After the connection's lock is let go: the host takes its own locks, which are
        // never held while taking a connection's.
        if let Some((host, conn, id, session)) = release {
            host.release(id, conn, session);
        }
        self.shared.status_changed.notify_waiters();
    }

    /// Hands a read's outcome to the machine.
    fn on_read(&mut self, result: io::Result<usize>, now: Instant) {
        match result {
            Ok(0) | Err(_) => {
                if let Err(e) = &result {
                    self.transport
                        .get_or_insert_with(|| Box::new(TransportError::from(e)));
                }
                self.reading = false;
                self.machine.handle_eof(now.into_std());
            }
            Ok(n) => {
                self.machine.process_input(now.into_std());
                let pending = self.machine.pending_frame_len();
                let buf = self.machine.recv_buf();
                if buf.is_empty() && n < MIN_DIRECT_READ {
                    // A quiet connection: give the read buffer back, forget frame sizes.
                    if buf.capacity() > 0 {
                        *buf = BytesMut::new();
                    }
                    self.large_frame = 0;
                }
                // Growth ahead of the data is reserved in the memory budget first, and skipped
                // without room (the next read then waits for memory).
                let account = self.shared.memory.as_ref();
                let mut room = |buf: &BytesMut, additional: usize| match account {
                    None => true,
                    Some(account) => {
                        let growth = growth_bound(buf, additional);
                        let ok = account.try_reserve(growth);
                        if ok {
                            self.mem_counted += growth;
                        }
                        ok
                    }
                };
                match pending {
                    Some(total) => {
                        if total >= LARGE_FRAME {
                            self.large_frame = total.min(MAX_PREDICTED_FRAME);
                        }
                        let missing = total.saturating_sub(buf.len());
                        if missing > buf.capacity() - buf.len()
                            && room(buf, missing.min(buf.len().max(READ_SIZE)))
                        {
                            make_room_for_frame(buf, total);
                        }
                    }
                    // Between large frames: room for one more like the last, before its
                    // header is read (it would not fit in what is left of a read buffer).
                    None if buf.is_empty()
                        && self.large_frame > 0
                        && room(buf, self.large_frame + FRAME_SLACK) =>
                    {
                        buf.reserve(self.large_frame + FRAME_SLACK);
                    }
                    // A budgeted stack read came in full (a busy stream): the room for reading
                    // straight in that `poll_read_into` leaves to us, reserved first.
                    None if account.is_some()
                        && n == STACK_READ
                        && buf.capacity() < READ_SIZE
                        && room(buf, READ_SIZE) =>
                    {
                        buf.reserve(READ_SIZE);
                    }
                    None => {}
                }
            }
        }
    }

    /// Brings the memory budget's count of the receive buffer and output queue up to date, and
    /// reserves what the next read may allocate when `reading`. Returns whether to read: no
    /// budget, or the read is reserved. Without room, the driver counts as waiting for memory
    /// (the server's enforcer frees some) and does not read.
    fn account_memory(&mut self, reading: bool) -> bool {
        let Some(account) = self.shared.memory.as_ref() else {
            return reading;
        };
        let pending = self.machine.pending_frame_len();
        let buf = self.machine.recv_buf();
        let actual = buf.capacity() + self.out.remaining;
        let need = if reading {
            read_growth(buf, pending)
        } else {
            0
        };
        let target = actual + need;
        let ok = if target <= self.mem_counted {
            account.settle(&mut self.mem_counted, target);
            true
        } else if account.try_reserve(target - self.mem_counted) {
            self.mem_counted = target;
            true
        } else {
            // What is allocated is counted whether it fits or not.
            account.settle(&mut self.mem_counted, actual);
            false
        };
        let blocked = reading && !ok;
        match (blocked, self.mem_waiting) {
            (true, false) => account.budget().start_waiting(need),
            (true, true) => account.budget().want(need),
            (false, true) => account.budget().stop_waiting(),
            (false, false) => {}
        }
        self.mem_waiting = blocked;
        self.mem_read_ok = reading && ok;
        reading && ok
    }

    /// Counts `n` more bytes as held by the machine's queue: takes what the budget has now and
    /// records the rest as debt, paid back before any budget is returned.
    /// Answers the machine's session request with what the host decided.
    fn on_resolved(&mut self, resolution: Resolved, now: std::time::Instant) {
        let found = match resolution {
            Resolved::Attach(found) => found,
            Resolved::Refuse(why) => return self.machine.refuse_session(why, now),
        };
        let before = self.machine.queued_bytes();
        let refused = self.machine.attach_session(found, now).err();
        // A resumed session brings its unacknowledged messages: they hold budget.
        let after = self.machine.queued_bytes();
        self.hold_budget(after.saturating_sub(before));
        if let (Some((host, conn)), Some(id)) = (&self.sessions, self.session_id) {
            match refused {
                // The machine found no valid proof for it: back to where it was kept.
                Some(session) => host.release(id, *conn, Some(session)),
                None => {
                    let secret = self.machine.session().and_then(|s| s.secret().cloned());
                    host.attached(id, *conn, secret);
                }
            }
        }
    }

    fn hold_budget(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.shared.budget.available_permits().min(n);
        if now > 0 {
            if let Ok(permit) = self.shared.budget.try_acquire_many(now as u32) {
                permit.forget();
            }
        }
        self.held += n;
        self.debt += n - now;
        if let Some(account) = &self.shared.memory {
            account.charge(n);
        }
    }

    /// Frees the memory of every empty queue: the machine's, the event queue, the output queue.
    fn shrink_buffers(&mut self) {
        self.machine.shrink_buffers();
        if self.out.is_empty() {
            self.out.clear();
        }
        let mut inner = self.shared.lock();
        if inner.events.is_empty() {
            inner.events = VecDeque::new();
        }
        if inner.commands.is_empty() {
            inner.commands = VecDeque::new();
        }
    }

    /// The timer deadline: the machine's, or the flush deadline once it is closed.
    fn deadline(&self) -> Option<Instant> {
        match self.machine.poll_timeout() {
            Some(at) => Some(Instant::from_std(at)),
            None => self.closed_at.map(|at| at + self.machine.linger()),
        }
    }

    /// The protocol is done and everything it wanted written is written (or unwritable).
    fn socket_done(&self) -> bool {
        self.machine.is_closed()
            && self.machine.is_drained()
            && (self.write_dead
                || (self.out.is_empty() && (!self.shutdown_pending || self.shutdown_done)))
    }

    /// The handles rang: take their commands, notice when they are all gone.
    fn handles(&mut self, now: std::time::Instant) {
        let (commands, all_gone) = {
            let mut inner = self.shared.lock();
            let commands = std::mem::take(&mut inner.commands);
            (commands, inner.senders == 0 && !inner.receiver_alive)
        };
        for command in commands {
            match command {
                Command::Send(payload) => self.send(payload, now),
                Command::Close(code, reason) => self.machine.close(code, &reason, now),
                Command::Detach => {
                    let reason = "session resumed by another connection";
                    self.machine.close(CloseCode::SessionTakenOver, reason, now);
                    self.detach_now = true;
                }
                Command::Evict(reason) => {
                    self.machine.abort(CloseCode::ServerFull, &reason, now);
                    self.large_frame = 0;
                }
            }
        }
        if all_gone && !self.handles_gone {
            self.handles_gone = true;
            self.machine.close(CloseCode::Normal, "", now);
        }
    }

    fn send(&mut self, payload: Bytes, now: std::time::Instant) {
        let cost = self.machine.message_cost(payload.len());
        let len = payload.len();
        match self.machine.send(payload, now) {
            Ok(()) => {
                self.held += cost;
                self.shared
                    .last_message
                    .store(ms_at(now), Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.budget.add_permits(cost);
                if let Some(account) = &self.shared.memory {
                    account.credit(cost);
                }
                if matches!(e, SendError::QueueFull { .. }) {
                    // The budget mirrors the machine's limit, so this means the accounting is
                    // broken: say so loudly rather than lose the message quietly.
                    tracing::error!(%e, len, "message refused by the machine despite the budget");
                }
                if let SendError::TooBig { max, .. } = e {
                    // The handle checked before the peer's limit was known.
                    self.shared
                        .lock()
                        .push_event(Event::MessageDropped { len, peer_max: max });
                }
            }
        }
    }

    /// Drains the machine after an input: output (up to the high-water mark), events, budget.
    fn step(&mut self) {
        let now = Instant::now().into_std();
        let mut delivered = false;
        let mut status_changed = false;
        loop {
            while self.write_dead || self.out.remaining < self.shared.config.write_ahead {
                match self.machine.poll_transmit(now) {
                    Some(chunk) if !self.write_dead => self.out.push(chunk),
                    Some(_) => {}
                    None => break,
                }
            }
            let Some(first) = self.machine.poll_event() else {
                break;
            };
            let shared = self.shared.clone();
            let mut inner = shared.lock();
            let mut next = Some(first);
            let mut pushed = 0;
            while let Some(event) = next {
                match self.machine_event(event) {
                    Some(Event::Closed(info)) => {
                        // Refuse sends before the application can see `Closed`: a send it
                        // makes after seeing it must fail, not be "queued" and dropped.
                        shared.budget.close();
                        inner.closed = Some(Box::new(info.clone()));
                        inner.push_event(Event::Closed(info));
                        status_changed = true;
                    }
                    Some(event) => pushed += inner.push_event(event),
                    None => {}
                }
                next = self.machine.poll_event();
            }
            // Counted under the lock: the receiver credits them when it takes them.
            if let Some(account) = &shared.memory {
                account.charge(pushed);
            }
            delivered = true;
            drop(inner);
        }
        if delivered {
            self.shared.lock().wake_receiver();
            self.machine.shrink_buffers();
        }
        if status_changed {
            self.shared.status_changed.notify_waiters();
        }
        if std::mem::take(&mut self.message_seen) {
            self.shared
                .last_message
                .store(ms_at(now), Ordering::Relaxed);
        }
        // Give budget back in batches (hysteresis): once the queue is at or below the low
        // watermark, or once at least high − low bytes were freed.
        let queued = self.machine.queued_bytes();
        if self.held > queued {
            let freed = self.held - queued;
            if queued <= self.send_low || freed >= self.shared.limit - self.send_low {
                let repaid = freed.min(self.debt);
                self.debt -= repaid;
                self.shared.budget.add_permits(freed - repaid);
                self.held = queued;
                if let Some(account) = &self.shared.memory {
                    account.credit(freed);
                }
            }
        }
        if !matches!(self.machine.state(), State::Handshaking | State::Open) {
            self.shared.budget.close();
        }
        if self.machine.is_closed() && self.closed_at.is_none() {
            self.closed_at = Some(Instant::now());
        }
    }

    /// Translates a machine event; `None` for those the driver handles itself.
    fn machine_event(&mut self, event: proto::Event) -> Option<Event> {
        Some(match event {
            proto::Event::ShutdownWrite => {
                self.shutdown_pending = true;
                return None;
            }
            proto::Event::Connected { peer, version } => {
                self.shared
                    .peer_max
                    .store(peer.max_message_len, Ordering::Release);
                Event::Connected {
                    peer: Box::new(peer),
                    version,
                }
            }
            proto::Event::Data(payload) => {
                self.message_seen = true;
                Event::Message(payload)
            }
            // The machine's estimate already includes this sample.
            proto::Event::Rtt(sample) => Event::Rtt(
                self.machine
                    .rtt()
                    .unwrap_or_else(|| RttEstimate::first(sample)),
            ),
            proto::Event::Idle(kind) => Event::Idle(kind),
            proto::Event::MessageDropped { len, peer_max } => {
                Event::MessageDropped { len, peer_max }
            }
            proto::Event::FrameDiscarded(error) => Event::FrameDiscarded(error),
            proto::Event::Closed {
                code,
                reason,
                by_peer,
                error,
            } => Event::Closed(CloseInfo {
                code,
                reason,
                by_peer,
                error,
                raw: self.shared.framing.is_some(),
                transport: self.transport.as_deref().cloned(),
            }),
            proto::Event::SessionRequest { id, proof, .. } => {
                self.session_id = Some(id);
                match &self.sessions {
                    Some((host, conn)) => self.resolving = Some(host.resolve(id, *conn, proof)),
                    None => self.on_resolved(Resolved::Attach(None), Instant::now().into_std()),
                }
                return None;
            }
            proto::Event::SessionStarted {
                id,
                status,
                resending,
            } => Event::Session {
                id,
                status,
                resending,
            },
            proto::Event::SessionLost { id, unacked } => Event::SessionLost { id, unacked },
        })
    }
}
