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
use std::io::IoSlice;
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

use framelink_proto::codec::DecodeError;
pub use framelink_proto::connection::{ConfigError, ConnectionConfig, ConnectionError};
pub use framelink_proto::liveness::{DeathCause, IdleKind, RttEstimate};
pub use framelink_proto::wire::{CloseCode, Hello, ResumeStatus};

mod driver;
// Their main types are re-exported at the crate root (their one public path).
pub(crate) mod event;
pub(crate) mod handle;
mod io;
pub(crate) mod protocol;
pub(crate) mod session_order;
pub use session_order::SessionOrderHold;

use driver::*;
pub use event::TransportError;
use event::{CloseInfo, Event, SessionEvent};
use handle::*;
use io::*;
use protocol::Protocol;

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
    /// ended, or was never attached), and `gate` what the connection resuming it must wait
    /// for before its receiver hands out the session's messages (see [`session_order`]).
    fn release(
        &self,
        id: [u8; 16],
        conn: u64,
        session: Option<Session>,
        gate: Option<Arc<session_order::Gate>>,
    );
}

/// A [`SessionHost`]'s answer to a session request.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// Attach this kept session (its proof was checked), or a new one; with the gate its
    /// previous connection left (see [`session_order`]).
    Attach(Option<Session>, Option<Arc<session_order::Gate>>),
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
        payload_max: AtomicU64::new(u64::MAX),
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
        refused_late: Vec::new(),
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
