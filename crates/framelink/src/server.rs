//! The server: [`Server`] and its types (documented there), re-exported at the crate root.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use crate::connection::session_order::Gate;
use crate::connection::{
    self, CloseCode, DriverConfig, Resolved, SendError, SessionHost, SpawnOptions,
};
use crate::memory::MemoryBudget;
use crate::socket::SocketOptions;
use crate::tls::{HandshakeDone, MaybeTls, TlsError, TlsPeer, TlsServerConfig};
use crate::{Connection, Protocol, Sender};
use framelink_proto::auth::{ResumeProof, SessionSecret};
use framelink_proto::session::{
    Resolution, Session, SessionConfig, SessionError, SessionStore, SDATA_OVERHEAD,
};

#[cfg(doc)]
use crate::connection::ConnectionConfig;

/// At most this many refusals (connections over the limit being told `ServerFull`) at once.
pub const MAX_REJECTING: usize = 64;
/// How long a refused connection may take to receive its CLOSE.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error before accepting again (e.g. out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accepted connections waiting for [`Server::accept`].
const ACCEPT_QUEUE: usize = 128;
/// A new connection is refused when less than this is left of the memory budget.
pub const NEW_CONNECTION_ROOM: usize = 64 * 1024;
/// How long the memory enforcer waits for an evicted connection to give its memory back
/// before looking again.
const EVICTION_WAIT: Duration = Duration::from_millis(500);
/// Pause of the memory enforcer when it finds nothing it may free.
const NOTHING_TO_FREE_PAUSE: Duration = Duration::from_millis(50);

/// The default [`ServerConfig::memory_budget`]: 1 GiB, or a quarter of the machine's
/// physical memory when that is less, but never under 64 MiB (Linux: `MemTotal` in
/// `/proc/meminfo`; elsewhere 1 GiB).
pub fn default_memory_budget() -> usize {
    const GIB: usize = 1 << 30;
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        });
    physical.map_or(GIB, |bytes| GIB.min(bytes / 4).max(64 << 20))
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// What every connection speaks, with its heartbeat and limits. Default: framelink protocol
    /// v1 with [`ConnectionConfig::default`].
    pub protocol: Protocol,
    /// Live connections at most; more are refused (see the [`Server`] documentation).
    /// Default 10 000.
    pub max_connections: usize,
    /// Live connections from one IP address at most (any port; an IPv4-mapped IPv6 address
    /// counts as its IPv4 address); more from that address are refused like connections over
    /// [`max_connections`](Self::max_connections), with their own reason and counter
    /// ([`ServerStats::refused_per_ip`]). At least 1.
    ///
    /// Default 64: a framelink client needs one connection (a few while reconnecting), so 64
    /// leaves room for many clients behind one NAT, office gateway or carrier-grade NAT, while
    /// a single host can no longer hold every slot: filling the default 10 000 takes 157
    /// addresses. Raise it (or turn it off with `usize::MAX`, or any value of at least
    /// `max_connections`) when clients legitimately share an address in large numbers: behind
    /// a TCP load balancer or proxy that does not preserve client addresses, for load tests
    /// from one machine. It limits addresses, not networks: an IPv6 attacker with a whole
    /// prefix is held back only by `max_connections`.
    pub max_connections_per_ip: usize,
    /// Socket options for accepted sockets. Default [`SocketOptions::default`].
    pub socket: SocketOptions,
    /// Buffering and backpressure of each connection's driver.
    pub driver: DriverConfig,
    /// Acknowledged sessions (protocol mode): offered to clients, and kept detached for a
    /// while after a connection is lost so that the client can resume. `None` (default): off.
    pub sessions: Option<ServerSessions>,
    /// Bytes the server may hold for all its connections and sessions together: receive
    /// buffers (partial frames), send queues, received messages not yet taken by the
    /// application, detached sessions' messages and lost sessions not yet taken. See
    /// *Memory budget* in the [`Server`] documentation. `usize::MAX`: no limit (still
    /// counted, see [`ServerStats::memory_used`]). Default [`default_memory_budget`]: 1 GiB, or
    /// a quarter of physical memory when less. At least [`NEW_CONNECTION_ROOM`] × 16 (1 MiB).
    pub memory_budget: usize,
    /// At [`max_connections`](Self::max_connections), a new connection evicts the live one
    /// that has carried no application message (either way; heartbeats do not count) for the
    /// longest, if that is at least this long, instead of being refused: the evicted one gets
    /// CLOSE `Idle` with a reason saying so ([`ServerStats::evicted_idle`]). This keeps
    /// connections that only answer heartbeats from holding every slot against clients with
    /// work to do. `None`: a full server refuses newcomers. Default 60 s.
    pub evict_idle_when_full: Option<Duration>,
    /// TLS (and mutual TLS) on every connection: see [`crate::tls`]. Each handshake runs in
    /// its connection's task, bounded by [`TlsServerConfig::handshake_timeout`]; only
    /// connections whose handshake succeeded reach [`Server::accept`]. `None` (default): plain
    /// TCP.
    pub tls: Option<TlsServerConfig>,
}

/// How a [`Server`] keeps sessions.
///
/// **Order across connections.** A session's messages reach the application exactly once and
/// in order, also across the connections that carry it. A resumed connection carries on where
/// the last one's *delivered* count ended, and a driver counts a message delivered when it
/// queues it for the [`Receiver`](crate::Receiver), not when the application takes it: right
/// after a resume the new connection may hold the next messages while the one it replaced still
/// holds the last few. The new connection's `Receiver` therefore hands out **nothing** (not even
/// the session's `Started` event) until the old connection's `Receiver`
///
/// - has been asked for the event *after* its last message of the session (its last batch
///   stops at that message; the events that follow, `Closed`, come with the next request), so
///   a task that handles each message before asking for the next one is done with them; or
/// - has been dropped (its events are abandoned).
///
/// So a server that reads each connection in its own task (the natural way) sees a session's
/// messages in order, and chained resumes (A, then B, then C while A and B still hold messages)
/// keep it too: B waits for A, C for B, and a receiver dropped while waiting passes its wait
/// on. Only resumed sessions wait; other connections take nothing more than one branch per
/// batch of events.
///
/// The wait is the application's own: the old receiver holds at most the driver's receive
/// watermarks ([`DriverConfig`]) of messages, and a peer cannot hold it up (nor touch another
/// session). But an application that keeps an old connection's `Receiver` without ever reading
/// it to the end (for example one that only reads the newest connection of each session) holds
/// the session's newer connections back for as long as it keeps it: drop the old `Receiver`
/// (or read it until `Closed`). Meanwhile the new connection's events wait in its queue, and
/// past the watermarks it stops reading, as for any receiver that falls behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSessions {
    /// Acknowledgement policy.
    pub policy: SessionConfig,
    /// How long a detached session is kept for its client to come back. Default 60 s.
    pub ttl: Duration,
    /// Detached sessions kept at most (the oldest go first). Default 10 000.
    pub max_detached: usize,
    /// Detached sessions kept at most per client address (canonical, as for
    /// [`ServerConfig::max_connections_per_ip`]): past it the address's own oldest goes, so
    /// that one address opening and dropping sessions in a loop cannot push other clients'
    /// sessions out of the store. `usize::MAX`: no such limit. Default 1 000.
    pub max_detached_per_ip: usize,
    /// Lost sessions waiting for [`ServerHandle::next_lost_session`] at most; beyond it the
    /// oldest are dropped, counted in [`ServerStats::lost_dropped`] and in the next
    /// [`LostSession::dropped_before`]. At least 1. Default 10 000.
    pub max_lost: usize,
    /// ... and at most this many bytes of their messages (payload + 13 each) waiting, the
    /// same way. Default 64 MiB.
    pub max_lost_bytes: usize,
}

impl Default for ServerSessions {
    fn default() -> Self {
        ServerSessions {
            policy: SessionConfig::default(),
            ttl: Duration::from_secs(60),
            max_detached: 10_000,
            max_detached_per_ip: 1_000,
            max_lost: 10_000,
            max_lost_bytes: 64 << 20,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            protocol: Protocol::default(),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            socket: SocketOptions::default(),
            driver: DriverConfig::default(),
            sessions: None,
            memory_budget: default_memory_budget(),
            evict_idle_when_full: Some(Duration::from_secs(60)),
            tls: None,
        }
    }
}

/// A connection the server accepted.
#[derive(Debug)]
pub struct Incoming {
    /// The running connection (its driver already sent our HELLO in protocol mode).
    pub connection: Connection,
    /// The client's address.
    pub peer: SocketAddr,
    /// A number unique within this server, in accept order.
    pub id: u64,
    /// With [`ServerConfig::tls`]: what the TLS handshake established, including the client's
    /// verified certificate under mutual TLS.
    pub tls: Option<TlsPeer>,
}

/// A TCP server: accept loop, one driver task per connection, a connection limit (in all and
/// per client address), eviction of dead and idle peers, and a graceful shutdown that tells
/// every client before going away.
///
/// ```no_run
/// use framelink::{Event, Server, ServerConfig};
///
/// # async fn run() -> Result<(), framelink::Error> {
/// let mut server = Server::bind("127.0.0.1:7000", ServerConfig::default()).await?;
/// let handle = server.handle();
/// tokio::spawn(async move {
///     tokio::signal::ctrl_c().await.ok();
///     handle.shutdown(std::time::Duration::from_secs(5)).await;
/// });
/// while let Some(incoming) = server.accept().await {
///     tokio::spawn(async move {
///         let (sender, mut events) = incoming.connection.split();
///         while let Some(event) = events.next_event().await {
///             if let Event::Message(m) = event {
///                 // Echo; a closed connection just ends the loop.
///                 if sender.send(m).await.is_err() { break; }
///             }
///         }
///     });
/// }
/// # Ok(()) }
/// ```
///
/// # Behaviour
///
/// - **Liveness** is per connection, from [`ServerConfig::protocol`]: a peer that stops
///   answering is closed with `PeerTimedOut` within `ping_interval + ping_timeout`, one that
///   never completes the handshake with a handshake timeout, and one that exchanges no
///   application message for [`ConnectionConfig::idle_timeout`] (raw mode:
///   [`RawConfig::idle_timeout`](crate::RawConfig::idle_timeout)) with code `Idle`.
///   Their slots are freed the moment their driver ends.
/// - **Connection limit**: at [`ServerConfig::max_connections`] live connections, a new one
///   first evicts the connection that has carried no application message for the longest, if
///   that is at least [`ServerConfig::evict_idle_when_full`] (default 60 s; CLOSE `Idle`), so
///   that connections which only answer heartbeats cannot hold every slot; otherwise it is
///   refused: in protocol mode with a CLOSE `ServerFull` after our HELLO (so the client knows to
///   back off), in raw mode by closing the socket. At most [`MAX_REJECTING`] refusals are in
///   flight at once; beyond that sockets are dropped at once.
/// - **Per-address limit**: a new connection from an IP address (any port; an IPv4-mapped
///   IPv6 address counts as its IPv4 address) that already has
///   [`ServerConfig::max_connections_per_ip`] live connections is refused the same way, with
///   the reason `too many connections from <ip>: limit <n>`, so that one host cannot take
///   every slot. A connection counts from its accept until its driver ends (however it ends:
///   closed, evicted, aborted at shutdown); an address's entry is dropped when its count
///   reaches 0, so the bookkeeping never outgrows the live connections.
///   [`ServerStats::refused`] counts every refusal, [`ServerStats::refused_per_ip`] those
///   over this limit.
/// - **Shutdown** ([`ServerHandle::shutdown`]): stops accepting, closes every live connection
///   gracefully with `GoingAway` (queued messages are written first, then CLOSE) and waits, up
///   to a grace period, for all of them to finish; any still open then are aborted.
/// - **Memory budget** ([`ServerConfig::memory_budget`], default 1 GiB or a quarter of physical
///   memory): one counter of the bytes held for all connections and sessions together:
///   receive buffers (capacity allocated for partial frames), send queues (from
///   [`Sender::send`] until written), received messages the application has not taken yet,
///   detached sessions' messages and lost sessions not yet taken. Drivers charge it per batch
///   (after a read, a step, a batch of events taken), not per message. A read that may grow a
///   receive buffer, and a message handed to a [`Sender`], are *reserved* first: without room
///   the read waits (TCP holds the peer back) and `send` waits (`try_send` fails with
///   `QueueFull` carrying the budget's numbers). Then the server frees memory, whichever
///   holds more first: the oldest detached sessions go to the lost queue
///   ([`LostReason::Evicted`], [`ServerStats::sessions_shed`]), or the connection holding the
///   most is **evicted** at once (CLOSE `ServerFull`, reason `server memory budget exceeded:
///   this connection held <n> bytes (...)`, queued messages dropped, a warning logged with
///   its id, address and bytes, [`ServerStats::evicted_memory`]), or the oldest lost session
///   is dropped ([`ServerStats::lost_dropped`]). New connections are **refused** (CLOSE
///   `ServerFull`, [`ServerStats::refused_memory`]) while less than [`NEW_CONNECTION_ROOM`]
///   is left; each refusal frees one thing nobody uses (the oldest detached session to the
///   lost queue, else the oldest lost session), never a live connection, so that sessions
///   held just under the budget cannot lock every newcomer out, their own clients included.
///   Messages the application has taken are no longer counted, so a connection
///   whose application keeps up holds little and is evicted last.
///
///   **What can pass the budget.** Growth is reserved before it is allocated, so the count
///   passes the budget only by charges for memory that is already there: a read into an
///   *empty* receive buffer is not reserved (at most 8 KiB copied from the stack, and the
///   framing's room for the frame it starts, at most as much again: 16 KiB per connection,
///   so that idle connections reserve nothing), and memory moving between two counts (a
///   connection's session to the store and back, received bytes becoming events). Not counted
///   at all: each connection's fixed state (driver, handles, task: about 2 KiB), allocator
///   rounding and memory the allocator keeps after a free, the kernel's socket buffers, and,
///   for a received message the application keeps (or echoes), the rest of the read buffer
///   allocation its bytes are a slice of. Measured (`framelink-perf`'s `memory_attack`, see
///   `BENCHMARKS.md`): with a 64 MiB budget the count peaks within 1 MiB of it, the process's
///   peak RSS at 1.2 to 1.7 times it. A reservation covers the receive buffer's doubling, so
///   a single message needs up to twice its length of budget: keep the budget several times
///   `max_message_len`.
/// - **Frame timeout** ([`ConnectionConfig::frame_timeout`], raw
///   [`RawConfig::frame_timeout`](crate::RawConfig::frame_timeout), default 30 s): a peer
///   that starts a message and trickles the rest is closed with code 3 when the message is not
///   whole 30 s after its first byte, whatever the heartbeat says.
/// - **Lost sessions** wait for [`ServerHandle::next_lost_session`] at most
///   [`ServerSessions::max_lost`] of them and [`ServerSessions::max_lost_bytes`] of messages;
///   beyond that the oldest are dropped, counted in [`ServerStats::lost_dropped`] and in the
///   next [`LostSession::dropped_before`]. Expired sessions move there within a quarter of
///   the ttl (at most 1 s), and their bytes move with them.
/// - Socket options ([`ServerConfig::socket`]) are applied to every accepted socket; accept
///   errors (such as running out of file descriptors) are logged and retried after a short
///   pause instead of ending the server.
#[derive(Debug)]
pub struct Server {
    incoming: mpsc::Receiver<Incoming>,
    handle: ServerHandle,
    local_addr: SocketAddr,
}

/// A cloneable handle to a [`Server`]: counts connections and shuts the server down.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<ServerShared>,
}

#[derive(Debug)]
struct ServerShared {
    registry: Mutex<Registry>,
    /// Rung when a connection leaves the registry (for shutdown) and when shutdown starts.
    changed: Notify,
    /// Detached sessions and which connection holds each attached one.
    sessions: Mutex<Sessions>,
    /// Rung when a session moves: released by a connection, attached to one, or let go of.
    sessions_moved: Notify,
    /// Sessions let go of without being resumed, for [`ServerHandle::next_lost_session`].
    lost: Mutex<Lost>,
    /// Rung when `lost` gets one.
    lost_ready: Notify,
    /// Sessions are offered (`ServerConfig::sessions` is set, protocol mode).
    sessions_on: bool,
    /// Bytes a session may buffer: the protocol's `max_queued_bytes`.
    session_limit: usize,
    /// Lost sessions kept for the application at most (the oldest go first).
    max_lost: usize,
    /// ... and bytes of their messages.
    max_lost_bytes: usize,
    /// The memory budget every connection and session is charged to.
    memory: Arc<MemoryBudget>,
    /// Connections evicted to stay within the memory budget.
    evicted_memory: AtomicU64,
    /// Detached sessions dropped into the lost queue to stay within the memory budget.
    sessions_shed: AtomicU64,
}

/// Lost sessions waiting for the application.
#[derive(Debug, Default)]
struct Lost {
    queue: VecDeque<LostSession>,
    /// Their messages' bytes (payload + 13 each), charged to the memory budget.
    bytes: usize,
    /// Dropped since the application last took one.
    dropped_since_taken: u64,
    /// Dropped in all, and their messages.
    dropped: u64,
    dropped_messages: u64,
}

/// Bytes a lost session's messages count for.
fn lost_bytes(unacked: &[Bytes]) -> usize {
    unacked.iter().map(|p| p.len() + SDATA_OVERHEAD).sum()
}

#[derive(Debug)]
struct Sessions {
    store: SessionStore,
    attached: HashMap<[u8; 16], Holder>,
    /// Detached sessions whose last connection's receiver still holds messages: what the
    /// connection resuming one waits for (see [`Host::release`]).
    gates: HashMap<[u8; 16], Arc<Gate>>,
    /// Bytes buffered by the sessions in `store`, charged to the memory budget.
    bytes: usize,
    memory: Arc<MemoryBudget>,
}

/// The connection that carries a session, and the session's secret (to check a takeover's
/// proof without touching that connection).
#[derive(Debug)]
struct Holder {
    conn: u64,
    /// `None` until the connection has attached the session and reported its secret.
    secret: Option<SessionSecret>,
    /// The client's address (canonical), which the session is kept under once detached.
    ip: Option<IpAddr>,
}

impl Sessions {
    /// [`SessionStore::detach_from`], counting the session in and the dropped ones out.
    fn detach(
        &mut self,
        session: Session,
        owner: Option<IpAddr>,
        now: std::time::Instant,
    ) -> Vec<Session> {
        let held = session.buffered_bytes();
        self.bytes += held;
        self.memory.charge(held);
        let dropped = self.store.detach_from(session, owner, now);
        self.uncount_all(&dropped);
        dropped
    }

    /// [`SessionStore::expire`], counting the expired ones out.
    fn expire(&mut self, now: std::time::Instant) -> Vec<Session> {
        let expired = self.store.expire(now);
        self.uncount_all(&expired);
        expired
    }

    /// [`SessionStore::resolve`], counting out the session it takes (or an expired one it
    /// drops).
    fn resolve(
        &mut self,
        id: &[u8; 16],
        proof: Option<&ResumeProof>,
        now: std::time::Instant,
    ) -> Resolution {
        let before = self.store.peek(id).map_or(0, Session::buffered_bytes);
        let resolution = self.store.resolve(id, proof, now);
        let after = self.store.peek(id).map_or(0, Session::buffered_bytes);
        self.uncount(before - after);
        resolution
    }

    /// [`SessionStore::pop_oldest`], counting it out.
    fn pop_oldest(&mut self) -> Option<Session> {
        let session = self.store.pop_oldest()?;
        self.uncount(session.buffered_bytes());
        self.gates.remove(&session.id());
        Some(session)
    }

    /// Counts out sessions the store let go of (and forgets their gates).
    fn uncount_all(&mut self, sessions: &[Session]) {
        let held = sessions.iter().map(Session::buffered_bytes).sum();
        self.uncount(held);
        for session in sessions {
            self.gates.remove(&session.id());
        }
    }

    fn uncount(&mut self, held: usize) {
        let held = held.min(self.bytes);
        self.bytes -= held;
        self.memory.credit(held);
    }
}

/// A session the server let go of without its client resuming it, with the messages the client
/// never acknowledged: see [`ServerHandle::next_lost_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostSession {
    /// The session's id (as in [`SessionEvent::Started`](crate::SessionEvent::Started)).
    pub id: [u8; 16],
    /// Why it was let go.
    pub reason: LostReason,
    /// Messages queued for the client and not acknowledged by it, in order: they may or may
    /// not have reached it.
    pub unacked: Vec<Bytes>,
    /// Lost sessions dropped unseen (the queue was over [`ServerSessions::max_lost`] or
    /// [`ServerSessions::max_lost_bytes`], or the memory budget was short) since the
    /// application took the previous one: their messages are gone. Also counted in
    /// [`ServerStats::lost_dropped`].
    pub dropped_before: u64,
}

/// Why a detached session was let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Its client did not come back within [`ServerSessions::ttl`].
    Expired,
    /// Dropped to keep at most [`ServerSessions::max_detached`] sessions (the oldest go first)
    /// or at most [`ServerSessions::max_detached_per_ip`] from its client's address (that
    /// address's oldest go first), to stay within [`ServerConfig::memory_budget`] (the oldest go first), or replaced by a
    /// new session with the same id.
    Evicted,
    /// A request without proof named it while nothing showed its client had ever received it
    /// (see [`Session::unproven`]): a new session took its id.
    Replaced,
}

/// Why [`ServerHandle::send_to_session`] did not queue a message.
#[derive(Debug, thiserror::Error)]
pub enum SessionSendError {
    /// The server has no such session: never opened, ended by its client, expired or evicted
    /// (reported by [`ServerHandle::next_lost_session`]), or sessions are off.
    #[error(
        "no session {}: never opened, ended, expired or evicted",
        SessionId(id)
    )]
    Unknown {
        /// The session asked for.
        id: [u8; 16],
        /// The message, not queued.
        payload: Bytes,
    },
    /// The session is detached (its client is away) and its buffer is full.
    #[error(
        "session {} is detached and full: {buffered} bytes buffered, {len} more would exceed \
         {limit}",
        SessionId(id)
    )]
    Full {
        /// The session.
        id: [u8; 16],
        /// Bytes it buffers now (payload + 13 per message).
        buffered: usize,
        /// Bytes this message would add.
        len: usize,
        /// The protocol's `max_queued_bytes`.
        limit: usize,
        /// The message, not queued.
        payload: Bytes,
    },
    /// The session's current connection refused it (e.g. longer than the client accepts).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The session stayed held by a connection that is ending for longer than a resume may
    /// wait (10 s).
    #[error("session {} is still held by an ending connection", SessionId(id))]
    Busy {
        /// The session.
        id: [u8; 16],
        /// The message, not queued.
        payload: Bytes,
    },
}

/// Where a session is, for [`ServerHandle::send_to_session`].
enum Located {
    /// Detached: the message is queued in it.
    Queued,
    /// Detached and full.
    Full(SessionSendError),
    /// On this live connection.
    Connection(Sender, Bytes),
    /// Held by a connection that is ending: it will be detached or resumed soon.
    Moving(Bytes),
}

/// A session id in hex, for messages.
struct SessionId<'a>(&'a [u8; 16]);

impl fmt::Display for SessionId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[derive(Debug, Default)]
struct Registry {
    live: HashMap<u64, Live>,
    /// Live connections per client address (canonical: IPv4-mapped addresses as IPv4). Kept
    /// in step with `live` by [`insert`](Self::insert) and [`remove`](Self::remove); no
    /// address has an entry with a count of 0.
    per_ip: HashMap<IpAddr, usize>,
    rejecting: usize,
    shutting_down: bool,
    accepted: u64,
    refused: u64,
    refused_per_ip: u64,
    refused_memory: u64,
    evicted_idle: u64,
    tls_failures: u64,
}

/// A live connection in the registry.
#[derive(Debug)]
struct Live {
    sender: Sender,
    task: AbortHandle,
    /// The client's address, canonical (as counted in `Registry::per_ip`).
    ip: IpAddr,
    /// The client's port (with `ip`, its address, for the eviction log).
    port: u16,
    /// Evicted to free memory: not chosen again while it closes.
    evicted: bool,
}

impl Registry {
    /// Makes room at the connection limit: closes the live connection idle the longest (no
    /// application message either way) if it has been idle for `min_idle` or more. True if
    /// one was told to go.
    fn evict_idlest(&mut self, min_idle: Option<Duration>) -> bool {
        let Some(min_idle) = min_idle else {
            return false;
        };
        let idlest = self
            .live
            .iter_mut()
            .filter(|(_, live)| !live.evicted)
            .map(|(_, live)| (live.sender.idle_for(), live))
            .max_by_key(|(idle, _)| *idle);
        let Some((idle, live)) = idlest.filter(|(idle, _)| *idle >= min_idle) else {
            return false;
        };
        live.evicted = true;
        self.evicted_idle += 1;
        let sender = live.sender.clone();
        let reason = format!(
            "evicted to make room: no message for {:.1}s while the server was full",
            idle.as_secs_f64()
        );
        tracing::info!(peer = %SocketAddr::new(live.ip, live.port), ?idle, "idle connection evicted to make room");
        tokio::spawn(async move {
            sender.close(CloseCode::Idle, &reason).await;
        });
        true
    }

    fn insert(&mut self, id: u64, live: Live) {
        *self.per_ip.entry(live.ip).or_insert(0) += 1;
        if let Some(old) = self.live.insert(id, live) {
            // Ids are unique; should one ever be reused, its address stays counted right.
            self.forget_ip(old.ip);
        }
    }

    /// Takes connection `id` out (if it still is in), with its count for its address.
    fn remove(&mut self, id: u64) -> Option<Live> {
        let live = self.live.remove(&id)?;
        self.forget_ip(live.ip);
        Some(live)
    }

    fn forget_ip(&mut self, ip: IpAddr) {
        if let std::collections::hash_map::Entry::Occupied(mut entry) = self.per_ip.entry(ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    /// Live connections from `ip` (canonical).
    fn live_from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// [`ServerConfig::max_connections`] live connections.
    Full,
    /// [`ServerConfig::max_connections_per_ip`] live connections from this address.
    PerIp(IpAddr, usize),
    /// Less than [`NEW_CONNECTION_ROOM`] left of [`ServerConfig::memory_budget`].
    Memory {
        /// Bytes in use.
        used: usize,
        /// The budget.
        limit: usize,
    },
}

impl Refusal {
    /// The CLOSE reason.
    fn reason(self) -> String {
        match self {
            Refusal::Full => "too many connections".to_owned(),
            Refusal::PerIp(ip, limit) => format!("too many connections from {ip}: limit {limit}"),
            Refusal::Memory { used, limit } => {
                format!("server memory budget exhausted: {used} of {limit} bytes in use")
            }
        }
    }
}

/// Where a connection is in [`Leave`]'s hand-over with the accept loop.
const PENDING: u8 = 0;
/// In the registry: [`Leave`] takes it out.
const REGISTERED: u8 = 1;
/// Ended before being registered: the accept loop does not register it.
const GONE: u8 = 2;

/// Takes a connection out of the registry (and its address's count down) when its driver
/// ends, however it ends: owned by the finish hook, it runs when the hook is called and also
/// when the hook is dropped uncalled (the driver task aborted at shutdown, or panicking), so a
/// slot is never leaked. A connection that ends before the accept loop registered it is not
/// registered at all (no lock is taken here then, so dropping it under the registry lock is
/// safe too).
struct Leave {
    shared: Arc<ServerShared>,
    id: u64,
    state: Arc<AtomicU8>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let ended_early = self
            .state
            .compare_exchange(PENDING, GONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ended_early {
            return;
        }
        self.shared.lock().remove(self.id);
        self.shared.changed.notify_waiters();
    }
}

/// What [`ServerHandle::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections that were open when shutdown started.
    pub open: usize,
    /// Of those, the ones that finished their close within the grace period.
    pub closed: usize,
    /// The ones aborted when the grace period ran out.
    pub aborted: usize,
}

/// Counters of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Live connections now.
    pub live: usize,
    /// Connections accepted so far (not counting refused ones).
    pub accepted: u64,
    /// Connections refused for being over a limit: [`ServerConfig::max_connections`] or
    /// [`ServerConfig::max_connections_per_ip`].
    pub refused: u64,
    /// Of those, the ones refused for being over [`ServerConfig::max_connections_per_ip`]
    /// (their address had that many live connections).
    pub refused_per_ip: u64,
    /// Of those, the ones refused because less than [`NEW_CONNECTION_ROOM`] was left of
    /// [`ServerConfig::memory_budget`] (CLOSE `ServerFull`, reason `server memory budget
    /// exhausted: <used> of <budget> bytes in use`).
    pub refused_memory: u64,
    /// Connections evicted to stay within the memory budget: each the one holding the most
    /// at the time (CLOSE `ServerFull` with a reason saying how many bytes it held; logged
    /// with its id and address).
    pub evicted_memory: u64,
    /// Detached sessions dropped into the lost queue (reason
    /// [`LostReason::Evicted`]) to stay within the memory budget, the oldest first.
    pub sessions_shed: u64,
    /// Lost sessions dropped before the application took them (see
    /// [`LostSession::dropped_before`]), and their messages.
    pub lost_dropped: u64,
    /// The messages of those.
    pub lost_dropped_messages: u64,
    /// Bytes charged to the memory budget now.
    pub memory_used: usize,
    /// The most bytes charged at once so far.
    pub memory_peak: usize,
    /// [`ServerConfig::memory_budget`].
    pub memory_budget: usize,
    /// Connections evicted to make room for a new one at `max_connections`, for carrying no
    /// application message for [`ServerConfig::evict_idle_when_full`] or longer.
    pub evicted_idle: u64,
    /// TLS handshakes that failed or timed out (each is logged with its reason).
    pub tls_failures: u64,
}

impl Server {
    /// Binds `addr` and starts accepting on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or the OS refusing the address.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        config: ServerConfig,
    ) -> Result<Server, crate::Error> {
        config.protocol.validate()?;
        config.driver.validate()?;
        if config.max_connections == 0 {
            return Err(crate::Error::InvalidConfig(
                "max_connections must be at least 1".into(),
            ));
        }
        if config.max_connections_per_ip == 0 {
            return Err(crate::Error::InvalidConfig(
                "max_connections_per_ip must be at least 1".into(),
            ));
        }
        if config.memory_budget < 16 * NEW_CONNECTION_ROOM {
            return Err(crate::Error::InvalidConfig(format!(
                "memory_budget must be at least {} bytes, not {}",
                16 * NEW_CONNECTION_ROOM,
                config.memory_budget
            )));
        }
        if config.sessions.is_some_and(|s| s.max_lost == 0) {
            return Err(crate::Error::InvalidConfig(
                "max_lost must be at least 1".into(),
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        Ok(Server::from_listener(listener, config))
    }

    /// Starts accepting on an already bound listener (configuration not validated: use
    /// [`bind`](Self::bind) for that).
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Server {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let settings = config.sessions.unwrap_or_default();
        let (sessions_on, session_limit) = match &config.protocol {
            Protocol::Framelink(c) => (config.sessions.is_some(), c.max_queued_bytes),
            Protocol::Raw(_) => (false, 0),
        };
        let memory = Arc::new(MemoryBudget::new(config.memory_budget));
        let shared = Arc::new(ServerShared {
            registry: Mutex::new(Registry::default()),
            changed: Notify::new(),
            sessions: Mutex::new(Sessions {
                store: SessionStore::new(settings.ttl, settings.max_detached)
                    .with_max_per_owner(settings.max_detached_per_ip),
                attached: HashMap::new(),
                gates: HashMap::new(),
                bytes: 0,
                memory: memory.clone(),
            }),
            sessions_moved: Notify::new(),
            lost: Mutex::new(Lost::default()),
            lost_ready: Notify::new(),
            sessions_on,
            session_limit,
            max_lost: settings.max_lost.max(1),
            max_lost_bytes: settings.max_lost_bytes,
            memory: memory.clone(),
            evicted_memory: AtomicU64::new(0),
            sessions_shed: AtomicU64::new(0),
        });
        tokio::spawn(enforce_budget(Arc::downgrade(&shared), memory));
        if sessions_on {
            // Expired sessions are reported within a quarter of the ttl (at most 1 s) of
            // expiring, not only when another session happens to detach.
            let every = (settings.ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::spawn(expire_sessions(Arc::downgrade(&shared), every));
        }
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(accept_loop(listener, config, shared.clone(), tx));
        Server {
            incoming: rx,
            handle: ServerHandle { shared },
            local_addr,
        }
    }

    /// The next accepted connection; `None` once the server shut down.
    pub async fn accept(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for counting connections and shutting down from another task.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }
}

impl ServerHandle {
    /// Live connections now.
    pub fn connections(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        let (lost_dropped, lost_dropped_messages) = {
            let lost = self.shared.lost();
            (lost.dropped, lost.dropped_messages)
        };
        let memory = &self.shared.memory;
        let registry = self.shared.lock();
        ServerStats {
            live: registry.live.len(),
            accepted: registry.accepted,
            refused: registry.refused,
            refused_per_ip: registry.refused_per_ip,
            refused_memory: registry.refused_memory,
            evicted_memory: self.shared.evicted_memory.load(Ordering::Relaxed),
            sessions_shed: self.shared.sessions_shed.load(Ordering::Relaxed),
            lost_dropped,
            lost_dropped_messages,
            memory_used: memory.used(),
            memory_peak: memory.peak(),
            memory_budget: memory.limit(),
            evicted_idle: registry.evicted_idle,
            tls_failures: registry.tls_failures,
        }
    }

    /// Bytes charged to [`ServerConfig::memory_budget`] now (see [`ServerStats::memory_used`]).
    pub fn memory_used(&self) -> usize {
        self.shared.memory.used()
    }

    /// Stops accepting, closes every connection with `GoingAway` (queued messages first) and
    /// waits up to `grace` for them to finish; the rest are aborted. Idempotent.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let senders: Vec<Sender> = {
            let mut registry = self.shared.lock();
            registry.shutting_down = true;
            registry.live.values().map(|l| l.sender.clone()).collect()
        };
        self.shared.changed.notify_waiters();
        let open = senders.len();
        for sender in senders {
            tokio::spawn(async move {
                sender
                    .close(CloseCode::GoingAway, "server shutting down")
                    .await;
            });
        }
        let all_closed = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.shared.lock().live.is_empty() {
                    return;
                }
                changed.await;
            }
        };
        let mut aborted = 0;
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            // Out of the registry (and their addresses' counts) now; aborted below, out of the
            // lock (an aborted driver's finish hook takes it, and finds them gone).
            let tasks: Vec<AbortHandle> = {
                let mut registry = self.shared.lock();
                let ids: Vec<u64> = registry.live.keys().copied().collect();
                ids.into_iter()
                    .filter_map(|id| registry.remove(id))
                    .map(|l| l.task)
                    .collect()
            };
            for task in tasks {
                task.abort();
                aborted += 1;
            }
        }
        ShutdownReport {
            open,
            closed: open.saturating_sub(aborted),
            aborted,
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.lock().shutting_down
    }

    /// Queues a message for the client of session `id`, wherever that client is now: on the
    /// connection that carries the session, or, while the client is away, in the detached
    /// session, to be sent when it resumes.
    ///
    /// Waits while the session's buffer is full (on a connection: for the client to
    /// acknowledge; detached: for the client to come back, or for the session to expire), and
    /// while the session moves from an ending connection to the store or to a new connection.
    /// `Ok` means queued in the session: delivered once, in order, if the client resumes, and
    /// handed back in a [`LostSession`] if it never does. The id comes from
    /// [`SessionEvent::Started`](crate::SessionEvent::Started). See
    /// [`try_send_to_session`](Self::try_send_to_session) for a version that does not wait.
    ///
    /// ```no_run
    /// # async fn reply(handle: framelink::ServerHandle, id: [u8; 16]) {
    /// use framelink::SessionSendError;
    /// match handle.send_to_session(id, bytes::Bytes::from_static(b"score: 42")).await {
    ///     Ok(()) => {}
    ///     Err(SessionSendError::Unknown { payload, .. }) => {
    ///         // Gone for good (next_lost_session reports it): keep `payload` elsewhere.
    ///     }
    ///     Err(e) => eprintln!("not queued: {e}"),
    /// }
    /// # }
    /// ```
    pub async fn send_to_session(
        &self,
        id: [u8; 16],
        payload: Bytes,
    ) -> Result<(), SessionSendError> {
        self.queue_in_session(id, payload, true).await
    }

    /// Like [`send_to_session`](Self::send_to_session) without waiting: a full session gives
    /// [`SessionSendError::Full`] (detached) or [`SendError::QueueFull`] (on a connection), and
    /// a session between two connections [`SessionSendError::Busy`].
    pub fn try_send_to_session(
        &self,
        id: [u8; 16],
        payload: Bytes,
    ) -> Result<(), SessionSendError> {
        match self.locate(id, payload)? {
            Located::Queued => Ok(()),
            Located::Full(error) => Err(error),
            Located::Connection(sender, payload) => match sender.try_send(payload.clone()) {
                Err(SendError::Closed) => Err(SessionSendError::Busy { id, payload }),
                result => Ok(result?),
            },
            Located::Moving(payload) => Err(SessionSendError::Busy { id, payload }),
        }
    }

    async fn queue_in_session(
        &self,
        id: [u8; 16],
        mut payload: Bytes,
        wait: bool,
    ) -> Result<(), SessionSendError> {
        let shared = &self.shared;
        // How long a session may stay held by an ending connection (its linger, at most).
        let deadline = tokio::time::Instant::now() + RESUME_WAIT;
        loop {
            let moved = shared.sessions_moved.notified();
            tokio::pin!(moved);
            // Registered before looking, so that a move in between is not missed.
            moved.as_mut().enable();
            let ending = match self.locate(id, payload)? {
                Located::Queued => return Ok(()),
                Located::Full(error) if !wait => return Err(error),
                Located::Full(SessionSendError::Full { payload: p, .. }) => {
                    // Detached and full: wait for the client to resume (or the session to go).
                    payload = p;
                    moved.await;
                    continue;
                }
                Located::Full(error) => return Err(error),
                Located::Connection(sender, p) => match sender.send(p.clone()).await {
                    Ok(()) => return Ok(()),
                    // Not queued: the connection is ending; the session moves on.
                    Err(SendError::Closed) => {
                        payload = p;
                        true
                    }
                    Err(e) => return Err(e.into()),
                },
                Located::Moving(p) => {
                    payload = p;
                    true
                }
            };
            if ending && tokio::time::timeout_at(deadline, moved).await.is_err() {
                return Err(SessionSendError::Busy { id, payload });
            }
        }
    }

    /// Where session `id` is: queues `payload` at once when the session is detached.
    fn locate(&self, id: [u8; 16], payload: Bytes) -> Result<Located, SessionSendError> {
        let shared = &self.shared;
        if !shared.sessions_on {
            return Err(SessionSendError::Unknown { id, payload });
        }
        let mut sessions = shared.sessions();
        if let Some(conn) = sessions.attached.get(&id).map(|h| h.conn) {
            // (A closing connection refuses the send with `Closed`: the session is moving.
            // Its state is not looked at here: no connection lock under the server's locks.)
            return Ok(match shared.lock().live.get(&conn) {
                Some(live) => Located::Connection(live.sender.clone(), payload),
                None => Located::Moving(payload),
            });
        }
        let Some(session) = sessions.store.get_mut(&id, std::time::Instant::now()) else {
            return Err(SessionSendError::Unknown { id, payload });
        };
        let limit = shared.session_limit;
        match session.push(payload.clone(), limit) {
            Ok(_) => {
                let cost = payload.len() + SDATA_OVERHEAD;
                sessions.bytes += cost;
                shared.memory.charge(cost);
                Ok(Located::Queued)
            }
            Err(SessionError::BufferFull { buffered, len, .. }) => {
                Ok(Located::Full(SessionSendError::Full {
                    id,
                    buffered,
                    len,
                    limit,
                    payload,
                }))
            }
            Err(_) => Err(SessionSendError::Unknown { id, payload }),
        }
    }

    /// The next session the server let go of without its client resuming it (expired, or
    /// evicted to stay within [`ServerSessions::max_detached`] or
    /// [`ServerSessions::max_detached_per_ip`]), with the messages the client
    /// did not acknowledge: nothing queued in a session is dropped without the application
    /// hearing of it. `None` at once if sessions are off.
    ///
    /// Lost sessions wait here until taken, at most `max_detached` of them (the oldest go
    /// first, with a warning): an application that queues messages in sessions should take
    /// them.
    pub async fn next_lost_session(&self) -> Option<LostSession> {
        if !self.shared.sessions_on {
            return None;
        }
        loop {
            let ready = self.shared.lost_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut lost = self.shared.lost();
                if let Some(mut session) = lost.queue.pop_front() {
                    let bytes = lost_bytes(&session.unacked);
                    lost.bytes -= bytes.min(lost.bytes);
                    session.dropped_before = std::mem::take(&mut lost.dropped_since_taken);
                    drop(lost);
                    self.shared.memory.credit(bytes);
                    return Some(session);
                }
            }
            ready.await;
        }
    }

    /// Sessions attached to a live connection, and sessions detached (kept for their client).
    pub fn session_counts(&self) -> (usize, usize) {
        let sessions = self.shared.sessions();
        (sessions.attached.len(), sessions.store.len())
    }
}

impl ServerShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(&self) -> std::sync::MutexGuard<'_, Lost> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands sessions let go of to the application.
    fn report_lost(&self, sessions: Vec<Session>, reason: LostReason) {
        if sessions.is_empty() {
            return;
        }
        let mut lost = self.lost();
        for mut session in sessions {
            let unacked = session.take_unacked();
            tracing::debug!(?reason, unacked = unacked.len(), "session lost");
            let bytes = lost_bytes(&unacked);
            lost.bytes += bytes;
            self.memory.charge(bytes);
            lost.queue.push_back(LostSession {
                id: session.id(),
                reason,
                unacked,
                dropped_before: 0,
            });
        }
        while lost.queue.len() > self.max_lost || lost.bytes > self.max_lost_bytes {
            if !self.drop_oldest_lost(&mut lost) {
                break;
            }
        }
        drop(lost);
        self.lost_ready.notify_waiters();
        // Sends waiting for these sessions' room find them gone.
        self.sessions_moved.notify_waiters();
    }
}

impl ServerShared {
    /// Drops the oldest lost session not taken by the application, counting it; `false` if
    /// there is none.
    fn drop_oldest_lost(&self, lost: &mut Lost) -> bool {
        let Some(old) = lost.queue.pop_front() else {
            return false;
        };
        let bytes = lost_bytes(&old.unacked);
        lost.bytes -= bytes.min(lost.bytes);
        lost.dropped += 1;
        lost.dropped_since_taken += 1;
        lost.dropped_messages += old.unacked.len() as u64;
        self.memory.credit(bytes);
        tracing::warn!(
            unacked = old.unacked.len(),
            bytes,
            "lost session not taken by the application: dropped"
        );
        true
    }

    /// Frees some memory: sheds the oldest detached session into the lost queue, evicts the
    /// connection holding the most (if `evict`), or drops the oldest lost session, whichever
    /// holds more.
    fn relieve(&self, evict: bool) -> Relief {
        let detached = self.sessions().bytes;
        let lost = self.lost().bytes;
        let victim = {
            let registry = self.lock();
            registry
                .live
                .iter()
                .filter(|(_, live)| !live.evicted)
                .map(|(id, live)| {
                    let peer = SocketAddr::new(live.ip, live.port);
                    (*id, live.sender.memory_held(), peer)
                })
                .max_by_key(|&(_, held, _)| held)
        };
        let victim = victim.filter(|_| evict);
        let biggest = victim.map_or(0, |(_, held, _)| held);
        if detached > 0 && detached >= biggest {
            let shed = self.sessions().pop_oldest();
            if let Some(session) = shed {
                self.sessions_shed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    bytes = session.buffered_bytes(),
                    "memory budget: oldest detached session dropped into the lost queue"
                );
                self.report_lost(vec![session], LostReason::Evicted);
                return Relief::Freed;
            }
        }
        if let Some((id, held, peer)) = victim.filter(|&(_, held, _)| held > 0 && held >= lost) {
            let sender = {
                let mut registry = self.lock();
                registry.live.get_mut(&id).map(|live| {
                    live.evicted = true;
                    live.sender.clone()
                })
            };
            if let Some(sender) = sender {
                let (used, limit) = (self.memory.used(), self.memory.limit());
                tracing::warn!(
                    id,
                    %peer,
                    held,
                    used,
                    limit,
                    "memory budget exceeded: evicting the connection holding the most"
                );
                let reason = format!(
                    "server memory budget exceeded: this connection held {held} bytes \
                     ({used} of {limit} in use)"
                );
                if sender.evict(reason) {
                    self.evicted_memory.fetch_add(1, Ordering::Relaxed);
                }
                return Relief::Evicted(sender, held);
            }
        }
        if lost > 0 && self.drop_oldest_lost(&mut self.lost()) {
            return Relief::Freed;
        }
        Relief::Nothing
    }
}

/// What [`ServerShared::relieve`] did.
enum Relief {
    /// Memory was freed (or moved) at once.
    Freed,
    /// This connection, holding this much, was told to close at once.
    Evicted(Sender, usize),
    /// Nothing could be freed.
    Nothing,
}

/// Keeps the server within its memory budget while the shared state lives: woken when a
/// reservation fails or a charge passes the budget, frees memory until the budget fits again
/// (see [`ServerShared::relieve`]).
async fn enforce_budget(shared: Weak<ServerShared>, memory: Arc<MemoryBudget>) {
    loop {
        memory.pressure().notified().await;
        loop {
            // Over the budget, or a waiting task's request does not fit: anything may go.
            // Only a refused newcomer's room lacking: only what nobody uses.
            let evict = memory.needs_relief();
            if !evict && !memory.needs_room() {
                break;
            }
            let Some(strong) = shared.upgrade() else {
                return;
            };
            let relief = strong.relieve(evict);
            drop(strong);
            // Waiting tasks say again what they still lack once they have looked.
            memory.forget_wanted();
            match relief {
                Relief::Freed => {}
                Relief::Evicted(sender, held) => {
                    // Until its driver has let go of its buffers (or a while), so that one
                    // eviction is not followed by another for the same shortage.
                    let deadline = tokio::time::Instant::now() + EVICTION_WAIT;
                    while sender.memory_held() >= held
                        && !sender.is_finished()
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                Relief::Nothing => {
                    tokio::time::sleep(NOTHING_TO_FREE_PAUSE).await;
                    break;
                }
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
    }
}

/// Reports expired sessions every `every` while the server's shared state lives.
async fn expire_sessions(shared: Weak<ServerShared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let expired = shared.sessions().expire(std::time::Instant::now());
        shared.report_lost(expired, LostReason::Expired);
    }
}

/// How long a connection resuming a session waits for an older connection of the same
/// session to let go of it, before starting a new session instead.
const RESUME_WAIT: Duration = Duration::from_secs(10);

/// The server's side of sessions for its connection drivers.
struct Host(Arc<ServerShared>);

/// The session host of a refused connection: a session request is never answered (no
/// RESUME, no refusal), so the connection's only answer is its CLOSE `ServerFull`.
struct Unanswered;

impl SessionHost for Unanswered {
    fn resolve(
        &self,
        _id: [u8; 16],
        _conn: u64,
        _proof: Option<ResumeProof>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resolved> + Send>> {
        Box::pin(std::future::pending())
    }

    fn attached(&self, _id: [u8; 16], _conn: u64, _secret: Option<SessionSecret>) {}

    fn release(
        &self,
        _id: [u8; 16],
        _conn: u64,
        _session: Option<Session>,
        _gate: Option<Arc<Gate>>,
    ) {
    }
}

impl SessionHost for Host {
    fn resolve(
        &self,
        id: [u8; 16],
        conn: u64,
        proof: Option<ResumeProof>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Resolved> + Send>> {
        let shared = self.0.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + RESUME_WAIT;
            loop {
                let released = shared.sessions_moved.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                {
                    let mut sessions = shared.sessions();
                    let holder = sessions.attached.get(&id).filter(|h| h.conn != conn);
                    if let Some(holder) = holder {
                        // Held by another connection: only a valid proof takes it over; anything
                        // else leaves that connection alone.
                        let proven = matches!(
                            (&proof, &holder.secret),
                            (Some(proof), Some(secret)) if proof.verify(secret)
                        );
                        if !proven {
                            return Resolved::Refuse(
                                "the session is held by another connection and was not proved",
                            );
                        }
                        // Lock order: sessions, then registry (never the other way round).
                        let older = shared
                            .lock()
                            .live
                            .get(&holder.conn)
                            .map(|l| l.sender.clone());
                        drop(sessions);
                        // The client came back before this side noticed the old connection
                        // died: end that one now with CLOSE `SessionTakenOver` (out of the
                        // server's locks: a connection's lock is never taken under them); its
                        // session comes back through `release`.
                        if let Some(sender) = older {
                            sender.detach();
                        }
                    } else {
                        let now = std::time::Instant::now();
                        let resolution = sessions.resolve(&id, proof.as_ref(), now);
                        // A refused requester leaves the session, and its gate, as they were.
                        let gate = match &resolution {
                            Resolution::Refuse(_) => None,
                            _ => sessions.gates.remove(&id),
                        };
                        let (found, replaced, expired) = match resolution {
                            Resolution::Refuse(why) => return Resolved::Refuse(why),
                            Resolution::Resume(session) => (Some(session), None, None),
                            Resolution::New => (None, None, None),
                            Resolution::Replace(old) => (None, Some(old), None),
                            Resolution::Expired(old) => (None, None, Some(old)),
                        };
                        // Only the same session continues the previous connection's order.
                        let gate = gate.filter(|_| found.is_some());
                        let secret = found.as_ref().and_then(|s| s.secret().cloned());
                        // Lock order: sessions, then registry.
                        let ip = shared.lock().live.get(&conn).map(|l| l.ip);
                        sessions.attached.insert(id, Holder { conn, secret, ip });
                        drop(sessions);
                        // Past its ttl before the sweep came by: handed back as the sweep would.
                        shared.report_lost(expired.into_iter().collect(), LostReason::Expired);
                        shared.report_lost(replaced.into_iter().collect(), LostReason::Replaced);
                        // Sends waiting for a detached session's room go on the connection.
                        shared.sessions_moved.notify_waiters();
                        return Resolved::Attach(found, gate);
                    }
                }
                if tokio::time::timeout_at(deadline, released).await.is_err() {
                    tracing::warn!("session still held by an older connection: starting anew");
                    let mut sessions = shared.sessions();
                    let ip = shared.lock().live.get(&conn).map(|l| l.ip);
                    let holder = Holder {
                        conn,
                        secret: None,
                        ip,
                    };
                    sessions.attached.insert(id, holder);
                    return Resolved::Attach(None, None);
                }
            }
        })
    }

    fn attached(&self, id: [u8; 16], conn: u64, secret: Option<SessionSecret>) {
        if let Some(holder) = self.0.sessions().attached.get_mut(&id) {
            if holder.conn == conn {
                holder.secret = secret;
            }
        }
    }

    /// `gate` (the connection's receiver may still hold messages of the session) goes with
    /// the detached session to the connection that resumes it: that one's receiver hands out
    /// nothing before this one's has taken its last message of the session or is dropped.
    fn release(&self, id: [u8; 16], conn: u64, session: Option<Session>, gate: Option<Arc<Gate>>) {
        let mut sessions = self.0.sessions();
        let (mut expired, mut evicted) = (Vec::new(), Vec::new());
        if sessions.attached.get(&id).is_some_and(|h| h.conn == conn) {
            let owner = sessions.attached.remove(&id).and_then(|h| h.ip);
            if let Some(session) = session {
                let now = std::time::Instant::now();
                expired = sessions.expire(now);
                match gate {
                    Some(gate) => sessions.gates.insert(id, gate),
                    None => sessions.gates.remove(&id),
                };
                evicted = sessions.detach(session, owner, now);
            }
        }
        drop(sessions);
        self.0.report_lost(expired, LostReason::Expired);
        self.0.report_lost(evicted, LostReason::Evicted);
        self.0.sessions_moved.notify_waiters();
    }
}

/// Accepts until shutdown (or until the [`Server`] is dropped and the queue closes).
async fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
    shared: Arc<ServerShared>,
    incoming: mpsc::Sender<Incoming>,
) {
    let mut next_id = 0u64;
    // Sessions on: our HELLO offers them and the drivers use the server's store.
    let mut protocol = config.protocol.clone();
    let mut sessions: Option<Arc<dyn SessionHost>> = None;
    if let (Some(settings), Protocol::Framelink(connection)) = (config.sessions, &mut protocol) {
        connection.sessions = Some(settings.policy);
        sessions = Some(Arc::new(Host(shared.clone())));
    }
    loop {
        let shutdown = shared.changed.notified();
        tokio::pin!(shutdown);
        shutdown.as_mut().enable();
        if shared.lock().shutting_down {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => continue,
            () = incoming.closed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE / ENFILE: back off briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        if let Err(error) = config.socket.apply(&stream) {
            tracing::warn!(%error, %peer, "socket options not applied");
        }
        // TLS: the handshake runs lazily in the connection's own task, never here.
        let (stream, handshake) = MaybeTls::accepted(stream, config.tls.as_ref(), peer);
        let id = next_id;
        next_id += 1;
        let ip = peer.ip().to_canonical();
        let refusal = {
            let mut registry = shared.lock();
            let (used, limit) = (shared.memory.used(), shared.memory.limit());
            let full = registry.live.len() >= config.max_connections;
            // The newcomer's own limits first: an idle connection is evicted only for a
            // newcomer that is then accepted, so that refused attempts cannot close others.
            let refusal = if registry.live_from(ip) >= config.max_connections_per_ip {
                registry.refused_per_ip += 1;
                Some(Refusal::PerIp(ip, config.max_connections_per_ip))
            } else if used.saturating_add(NEW_CONNECTION_ROOM) > limit {
                registry.refused_memory += 1;
                // And free some for the next ones, from what nobody uses.
                shared.memory.want_room(NEW_CONNECTION_ROOM);
                Some(Refusal::Memory { used, limit })
            } else if full && !registry.evict_idlest(config.evict_idle_when_full) {
                Some(Refusal::Full)
            } else {
                None
            };
            if refusal.is_some() {
                registry.refused += 1;
            }
            refusal
        };
        if let Some(refusal) = refusal {
            tracing::debug!(%peer, ?refusal, "connection refused");
            reject(stream, &protocol, sessions.is_some(), &shared, refusal);
            continue;
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        let leave = Leave {
            shared: shared.clone(),
            id,
            state: state.clone(),
        };
        let on_finish: connection::FinishHook = Box::new(move || drop(leave));
        let options = SpawnOptions {
            driver: config.driver,
            on_finish: Some(on_finish),
            sessions: sessions.clone().map(|host| (host, id)),
            memory: Some(shared.memory.clone()),
            ..SpawnOptions::default()
        };
        // Spawned under the registry lock, so that the driver is registered before it can do
        // anything that looks for it there (such as attaching a session).
        let spawned = {
            let mut registry = shared.lock();
            if registry.shutting_down {
                // Accepted as the shutdown began: it would miss the shutdown's `GoingAway`.
                // Dropped unopened (its socket closes), like every later attempt.
                break;
            }
            let spawned = connection::spawn_protocol(stream, &protocol, options, None);
            if let Ok((connection, task)) = &spawned {
                registry.accepted += 1;
                // Unless its driver already ended (then `Leave` took nothing out, and no lock).
                // A `Leave` that sees `REGISTERED` waits for this lock, so for the insert.
                let fresh = state
                    .compare_exchange(PENDING, REGISTERED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if fresh {
                    let (sender, task) = (connection.sender(), task.clone());
                    registry.insert(
                        id,
                        Live {
                            sender,
                            task,
                            ip,
                            port: peer.port(),
                            evicted: false,
                        },
                    );
                }
            }
            spawned
        };
        let connection = match spawned {
            Ok((connection, _task)) => connection,
            Err(error) => {
                // Validated at bind; only reachable through `from_listener`.
                tracing::error!(%error, "invalid connection configuration");
                break;
            }
        };
        let incoming_connection = Incoming {
            connection,
            peer,
            id,
            tls: None,
        };
        if let Some(done) = handshake {
            let tls = config.tls.clone();
            deliver_after_handshake(done, tls, incoming_connection, &incoming, &shared);
        } else if incoming.send(incoming_connection).await.is_err() {
            break;
        }
    }
}

/// Hands a TLS connection to the application once its handshake succeeded, with what it
/// established; logs and counts a failed one (its driver ends by itself).
fn deliver_after_handshake(
    done: HandshakeDone,
    tls: Option<TlsServerConfig>,
    mut connection: Incoming,
    incoming: &mpsc::Sender<Incoming>,
    shared: &Arc<ServerShared>,
) {
    let (incoming, shared) = (incoming.clone(), shared.clone());
    tokio::spawn(async move {
        let error = match done.await {
            Ok(Ok(peer)) => {
                connection.tls = Some(peer);
                let _ = incoming.send(connection).await;
                return;
            }
            Ok(Err(error)) => error,
            Err(_) => TlsError::Io {
                peer: format!("client {}", connection.peer),
                kind: std::io::ErrorKind::ConnectionAborted,
                message: "the connection ended during the TLS handshake".to_owned(),
            },
        };
        shared.lock().tls_failures += 1;
        tracing::warn!(peer = %connection.peer, id = connection.id, %error, "TLS handshake failed");
        if let Some(tls) = tls {
            tls.report_failure(connection.peer, &error);
        }
    });
}

/// Refuses a connection over a limit, telling a protocol peer why.
fn reject(
    stream: MaybeTls,
    protocol: &Protocol,
    sessions: bool,
    shared: &Arc<ServerShared>,
    refusal: Refusal,
) {
    let Protocol::Framelink(config) = protocol else {
        return; // Raw mode has no way to say why: dropping the socket closes it.
    };
    {
        let mut registry = shared.lock();
        if registry.rejecting >= MAX_REJECTING {
            return;
        }
        registry.rejecting += 1;
    }
    let mut config = config.clone();
    config.linger = REJECT_LINGER.min(config.linger);
    config.handshake_timeout = REJECT_LINGER;
    let hook_shared = shared.clone();
    let on_finish: connection::FinishHook = Box::new(move || {
        hook_shared.lock().rejecting -= 1;
    });
    let protocol = Protocol::Framelink(config);
    // With sessions on, the HELLO offers them as the server's always does (a client that
    // asked for one would otherwise take the refusal for a server without sessions, and
    // never hear why); the request is never answered, the CLOSE comes instead.
    let sessions = sessions.then(|| (Arc::new(Unanswered) as Arc<dyn SessionHost>, 0));
    let options = SpawnOptions {
        on_finish: Some(on_finish),
        sessions,
        ..SpawnOptions::default()
    };
    match connection::spawn_protocol(stream, &protocol, options, None) {
        Ok((connection, _task)) => {
            tokio::spawn(async move {
                connection
                    .close(CloseCode::ServerFull, &refusal.reason())
                    .await;
            });
        }
        Err(_) => shared.lock().rejecting -= 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry entry for a connection from `ip` (over an in-memory pipe).
    fn live(ip: &str) -> Live {
        let (ours, _theirs) = tokio::io::duplex(64);
        let connection = connection::spawn(ours, connection::ConnectionConfig::default()).unwrap();
        Live {
            sender: connection.sender(),
            task: tokio::spawn(async {}).abort_handle(),
            ip: ip.parse::<IpAddr>().unwrap().to_canonical(),
            port: 1,
            evicted: false,
        }
    }

    #[tokio::test]
    async fn per_address_counts_follow_the_registry_and_leave_no_empty_entries() {
        let mut registry = Registry::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        registry.insert(1, live("10.0.0.1"));
        registry.insert(2, live("::ffff:10.0.0.1"));
        registry.insert(3, live("::1"));
        assert_eq!((registry.live_from(a), registry.live_from(b)), (2, 1));
        assert!(registry.remove(1).is_some());
        assert!(registry.remove(1).is_none(), "removed twice");
        assert_eq!(registry.live_from(a), 1);
        registry.remove(2);
        registry.remove(3);
        assert!(registry.live.is_empty());
        assert!(registry.per_ip.is_empty(), "{:?}", registry.per_ip);
    }
}
