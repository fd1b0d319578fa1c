//! A chaos proxy: a TCP forwarder that mangles the link the way real networks and middleboxes
//! do, so that code on top of TCP (framelink's, or anyone's) can be tested against it.
//!
//! Point a client at [`ChaosProxy::local_addr`] instead of the server: every accepted
//! connection dials the upstream address and forwards both directions, and on the way the proxy
//!
//! - **splits** every chunk into random small pieces, each written with its own `write` call on
//!   a `TCP_NODELAY` socket, so they leave as separate segments ([`ChaosConfig::split`]);
//! - **coalesces** reads: holds bytes for a while so that several of the sender's writes arrive
//!   as one ([`ChaosConfig::coalesce`]);
//! - **delays** bytes by a random latency per chunk read, without ever reordering them
//!   ([`ChaosConfig::delay`]);
//! - **cuts** the connection at random or scheduled points ([`FaultPlan`]): with a FIN both ways
//!   ([`Fault::Fin`]), with an RST both ways ([`Fault::Rst`]), by silently swallowing everything
//!   ([`Fault::Blackhole`]: a vanished peer, no FIN, no RST), or by freezing for a while
//!   ([`Fault::Stall`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use framelink_chaos::{ChaosConfig, ChaosProxy, FaultMix, FaultPlan, Trigger};
//!
//! # async fn run() -> Result<(), framelink::Error> {
//! let config = ChaosConfig {
//!     seed: 42,
//!     split: Some(1..=64),
//!     delay: Some(Duration::ZERO..=Duration::from_millis(5)),
//!     // On every connection, a fault every 64 KiB on average: FIN, RST or blackhole.
//!     faults: FaultPlan::Random { every: Trigger::Bytes(64 * 1024), faults: FaultMix::standard() },
//!     ..ChaosConfig::default()
//! };
//! let proxy = ChaosProxy::start("127.0.0.1:0", "127.0.0.1:7000", config).await?;
//! let mut events = proxy.events();
//! // ... connect the client under test to proxy.local_addr() ...
//! while let Some(event) = events.next().await {
//!     println!("{event}"); // +conn #0 from 127.0.0.1:51234, #0 fault: rst after 70213 bytes ...
//! #   break;
//! }
//! println!("{:?}", proxy.stats());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Replaying a run
//!
//! Everything random derives from [`ChaosConfig::seed`] and the connection's index (0 for the
//! first accepted connection, then 1, ...), through a generator defined in this module (so
//! upgrading `rand` changes nothing). The *positions* of the split points are a function of the
//! byte offset in each direction's stream, and fault points set in bytes count the bytes
//! forwarded on the connection: so the same seed and the same traffic give the same pieces and
//! the same faults at the same byte counts, whatever the timing. (How the sender's writes and
//! the proxy's reads happen to line up does vary, so the number of `write` calls does; and
//! which direction a byte-triggered fault lands in depends on how the two directions interleave
//! when both carry data.)
//!
//! # How exact the fault points are
//!
//! The proxy never forwards past a byte trigger: it stops writing when the connection has
//! forwarded exactly that many bytes (both directions together), then injects the fault. With
//! traffic in one direction only, a client therefore receives exactly `N` bytes before a
//! [`Fault::Fin`] (then end of stream) or a [`Fault::Blackhole`] (then silence). Before a
//! [`Fault::Rst`] it receives at most `N`: an RST throws away bytes still in the proxy's socket
//! send buffer, as on a real network (on Linux loopback with a reader that keeps up, the client
//! normally gets all `N`, then `ECONNRESET`). Bytes the proxy had read but not yet forwarded
//! (buffered, delayed) are dropped by every cut. Time triggers fire within a millisecond or so
//! of their time.
//!
//! # Blackhole or stall
//!
//! A peer that vanishes (power loss, a NAT that forgot the mapping) never answers and never
//! closes. [`Fault::Blackhole`] emulates it by reading and discarding everything from both
//! sides: the senders' writes keep succeeding, nothing arrives anywhere, and no FIN or RST is
//! ever sent (a peer's own FIN is swallowed too). Only application heartbeats notice, which is
//! what it is for. The sockets are closed when both peers have closed theirs (or on
//! [`Fault::Rst`], [`ChaosProxy::cut`] or shutdown). It is not a perfect copy of a vanished
//! host: the proxy's kernel acknowledges the bytes, so `TCP_USER_TIMEOUT` does not fire.
//! [`Fault::Stall`] stops reading and writing instead, so kernel buffers fill and the senders'
//! writes eventually block (a frozen process, a zero window); with a duration it then resumes
//! with nothing lost, a latency spike.
//!
//! # Watching the traffic
//!
//! [`ChaosProxy::start_with_tap`] takes a [`ChaosTap`] that is handed every byte as it is
//! forwarded (after splitting and delays, before the peer reads it; bytes a fault throws away
//! are never shown), direction by direction, and told when a connection ends. `framelink proxy
//! --show` decodes them into frames with it.
//!
//! # Resources
//!
//! One task per connection. Each direction buffers at most [`ChaosConfig::max_buffered`] bytes
//! (256 KiB by default; an idle connection holds no buffer) and stops reading while full, so a
//! slow receiver pushes back on the sender through TCP as it would without the proxy. Events
//! go through a bounded broadcast channel: a subscriber that falls behind misses events (and
//! is told how many), it never slows the proxy down. Logging goes through `tracing` (at
//! `debug`; `warn` for accept errors).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// Read at most this much from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// After a [`Fault::Fin`], wait at most this long for both peers to close before dropping the
/// sockets (closing a socket with unread bytes would send an RST instead of the FIN).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Events kept for slow subscribers before they start missing some.
const EVENT_CAPACITY: usize = 4096;
/// Pause after a failed `accept` (out of file descriptors, for example).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Rounds of progress in one poll before the connection task yields to others.
const MAX_ROUNDS: u32 = 64;

/// When a fault happens on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Trigger {
    /// Once this many bytes have been forwarded on the connection, both directions together
    /// (exactly: the proxy stops writing at this count until the fault is injected).
    Bytes(u64),
    /// This long after the connection was accepted.
    After(Duration),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Bytes(n) => write!(f, "{n} bytes"),
            Trigger::After(d) => write!(f, "{d:?}"),
        }
    }
}

/// What happens to a connection when a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// Orderly cut: both peers get a FIN (end of stream) right after the bytes forwarded so
    /// far. Bytes the proxy held are dropped; what the peers send afterwards is read and
    /// discarded until they close.
    Fin,
    /// Abortive cut: both sockets are closed with `SO_LINGER` 0, so both peers get an RST
    /// (`ECONNRESET`, or `EPIPE` on a later write).
    Rst,
    /// A vanished peer: nothing is forwarded any more, in either direction, and nothing is
    /// closed. Everything the peers send is read and discarded (see the module documentation).
    Blackhole,
    /// Stop reading and writing both ways for this long (`None`: until the connection is cut
    /// or the proxy shuts down), then carry on with nothing lost.
    Stall(Option<Duration>),
}

impl Fault {
    /// The fault's name: `fin`, `rst`, `blackhole` or `stall`.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Fin => "fin",
            Fault::Rst => "rst",
            Fault::Blackhole => "blackhole",
            Fault::Stall(_) => "stall",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Stall(Some(d)) => write!(f, "stall {d:?}"),
            Fault::Stall(None) => f.write_str("stall (for good)"),
            other => f.write_str(other.name()),
        }
    }
}

/// Faults to choose from, with weights: each time a trigger fires, one is drawn (from the
/// connection's seeded generator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultMix {
    choices: Vec<(Fault, u32)>,
}

impl FaultMix {
    /// Faults with their weights; zero weights are left out.
    pub fn new(choices: impl IntoIterator<Item = (Fault, u32)>) -> FaultMix {
        FaultMix {
            choices: choices.into_iter().filter(|&(_, w)| w > 0).collect(),
        }
    }

    /// [`Fault::Fin`], [`Fault::Rst`] and [`Fault::Blackhole`], equally likely.
    pub fn standard() -> FaultMix {
        FaultMix::new([(Fault::Fin, 1), (Fault::Rst, 1), (Fault::Blackhole, 1)])
    }

    /// The faults and their weights.
    pub fn choices(&self) -> &[(Fault, u32)] {
        &self.choices
    }

    /// True when there is nothing to choose from.
    pub fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    fn pick(&self, rng: &mut Rng) -> Option<Fault> {
        let total: u64 = self.choices.iter().map(|&(_, w)| u64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.below(total);
        for &(fault, weight) in &self.choices {
            if r < u64::from(weight) {
                return Some(fault);
            }
            r -= u64::from(weight);
        }
        None
    }
}

impl Default for FaultMix {
    /// [`FaultMix::standard`].
    fn default() -> Self {
        FaultMix::standard()
    }
}

impl From<Fault> for FaultMix {
    fn from(fault: Fault) -> Self {
        FaultMix::new([(fault, 1)])
    }
}

impl fmt::Display for FaultMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let equal = self.choices.windows(2).all(|w| w[0].1 == w[1].1);
        for (i, (fault, weight)) in self.choices.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            if equal {
                write!(f, "{fault}")?;
            } else {
                write!(f, "{fault}:{weight}")?;
            }
        }
        Ok(())
    }
}

/// One planned fault: at `at`, inject one of `fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledFault {
    /// When, counted on each connection separately.
    pub at: Trigger,
    /// What (a single [`Fault`] converts into a mix of one).
    pub fault: FaultMix,
}

impl ScheduledFault {
    /// A fault at `at`: `ScheduledFault::new(Trigger::Bytes(10_000), Fault::Rst)`.
    pub fn new(at: Trigger, fault: impl Into<FaultMix>) -> ScheduledFault {
        ScheduledFault {
            at,
            fault: fault.into(),
        }
    }
}

/// When the proxy injects faults, on every connection separately.
///
/// A connection that was cut ([`Fault::Fin`], [`Fault::Rst`]) or blackholed takes no more
/// faults except [`Fault::Rst`] (and [`Fault::Fin`] on a blackholed one); a stall can be cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultPlan {
    /// No faults (they can still be injected with [`ChaosProxy::cut`] and
    /// [`ChaosProxy::cut_all`]).
    #[default]
    None,
    /// Faults at random points: each gap (from the connection's start, then from the previous
    /// fault) is drawn uniformly between 1 and twice `every`, so `every` is the mean, in bytes
    /// forwarded or in time.
    Random {
        /// Mean distance between faults.
        every: Trigger,
        /// The faults to draw from.
        faults: FaultMix,
    },
    /// Faults at these points of every connection.
    Scheduled(Vec<ScheduledFault>),
}

/// Sees the bytes a [`ChaosProxy`] forwards, as it writes them (set with
/// [`ChaosProxy::start_with_tap`]).
///
/// The methods are called on the connection's task, in stream order within each direction: a
/// slow tap holds up forwarding, so a tap that may block (printing to a pipe) should hand the
/// work on to another thread.
pub trait ChaosTap: Send + Sync + 'static {
    /// `bytes` were just written on connection `conn`: to the upstream when `to_upstream`, to
    /// the client otherwise. Bytes that a fault discards are never shown.
    fn forwarded(&self, conn: u64, to_upstream: bool, bytes: &[u8]);

    /// Connection `conn` is finished (both its sockets are closed): nothing more is forwarded
    /// on it. Called just before [`ChaosEvent::Closed`] is sent.
    fn closed(&self, conn: u64);
}

/// The proxy's tap, if any.
#[derive(Clone, Default)]
struct Tap(Option<Arc<dyn ChaosTap>>);

impl fmt::Debug for Tap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Tap(set)"
        } else {
            "Tap(none)"
        })
    }
}

/// What the proxy does to the links it forwards. `ChaosConfig::default()` forwards faithfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosConfig {
    /// Everything random derives from this and the connection index: the same seed and the
    /// same traffic give the same pieces and the same faults.
    pub seed: u64,
    /// Cut what is forwarded into pieces of a random size in this range (bytes; the minimum
    /// is at least 1), each written with its own `write` call. [`ChaosConfig::DEFAULT_SPLIT`]
    /// is a good start.
    pub split: Option<RangeInclusive<usize>>,
    /// Hold the bytes of a read this long, and add the bytes of every read in the meantime, so
    /// that they are written together: several of the sender's writes arrive glued.
    pub coalesce: Option<Duration>,
    /// Hold the bytes of each read for a random time in this range before forwarding them.
    /// Never reorders: bytes wait at least as long as the bytes before them.
    pub delay: Option<RangeInclusive<Duration>>,
    /// When to cut, blackhole or stall.
    pub faults: FaultPlan,
    /// Bytes each direction of a connection may hold (read but not yet forwarded); reading
    /// stops while it is full. Default 256 KiB.
    pub max_buffered: usize,
    /// How long to wait for the upstream connection before giving up on a client (which is
    /// then disconnected). Default 10 s.
    pub connect_timeout: Duration,
}

impl ChaosConfig {
    /// Pieces of 1 to 64 bytes.
    pub const DEFAULT_SPLIT: RangeInclusive<usize> = 1..=64;

    /// Checks the settings; [`ChaosProxy::start`] does it too.
    ///
    /// # Errors
    ///
    /// A message saying which setting is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(split) = &self.split {
            if *split.start() == 0 || split.start() > split.end() {
                return Err(format!(
                    "split range {}..={} must be non-empty and start at 1 or more",
                    split.start(),
                    split.end()
                ));
            }
        }
        if let Some(delay) = &self.delay {
            if delay.start() > delay.end() {
                return Err(format!(
                    "delay range {:?}..={:?} is empty",
                    delay.start(),
                    delay.end()
                ));
            }
        }
        if self.max_buffered == 0 {
            return Err("max_buffered must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be greater than zero".into());
        }
        match &self.faults {
            FaultPlan::None => {}
            FaultPlan::Random { every, faults } => {
                if matches!(every, Trigger::Bytes(0)) || *every == Trigger::After(Duration::ZERO) {
                    return Err("the mean distance between random faults must be above 0".into());
                }
                if faults.is_empty() {
                    return Err("random faults: no fault to choose from".into());
                }
            }
            FaultPlan::Scheduled(list) => {
                if list.iter().any(|s| s.fault.is_empty()) {
                    return Err("scheduled fault with no fault to choose from".into());
                }
            }
        }
        Ok(())
    }
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            seed: 0,
            split: None,
            coalesce: None,
            delay: None,
            faults: FaultPlan::None,
            max_buffered: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Counts of faults injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// [`Fault::Fin`] cuts.
    pub fin: u64,
    /// [`Fault::Rst`] cuts.
    pub rst: u64,
    /// [`Fault::Blackhole`]s.
    pub blackhole: u64,
    /// [`Fault::Stall`]s.
    pub stall: u64,
}

impl FaultCounts {
    /// All faults.
    pub fn total(&self) -> u64 {
        self.fin + self.rst + self.blackhole + self.stall
    }
}

/// What a proxy has done so far, over all its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChaosStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub open: u64,
    /// Accepted connections whose upstream connection failed.
    pub upstream_failures: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_to_downstream: u64,
    /// Bytes read and thrown away: by blackholes, and after FIN cuts.
    pub bytes_discarded: u64,
    /// `write` calls made to forward them.
    pub writes: u64,
    /// Split pieces written in full (0 without [`ChaosConfig::split`]). For a given seed this
    /// depends only on the number of bytes forwarded each way, not on timing; `writes` is
    /// larger when a piece's bytes arrived in several reads or a socket took part of one.
    pub pieces: u64,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
}

/// Something the proxy did, for showing what happens (see [`ChaosProxy::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChaosEvent {
    /// A client connected; connection indexes count from 0 in accept order.
    Accepted {
        /// The connection's index.
        conn: u64,
        /// The client's address.
        peer: SocketAddr,
    },
    /// The upstream connection failed; the client is disconnected (a `Closed` follows).
    UpstreamFailed {
        /// The connection's index.
        conn: u64,
        /// Why.
        error: String,
    },
    /// A fault was injected.
    Fault {
        /// The connection's index.
        conn: u64,
        /// Which.
        fault: Fault,
        /// Bytes forwarded on the connection before it, both directions together.
        after_bytes: u64,
        /// Time since the connection was accepted.
        after: Duration,
    },
    /// A [`Fault::Stall`] ended: forwarding carries on.
    Resumed {
        /// The connection's index.
        conn: u64,
    },
    /// The connection is finished: both its sockets are closed, and [`ChaosStats::open`] no
    /// longer counts it. Every `Accepted` connection ends with one.
    Closed {
        /// The connection's index.
        conn: u64,
        /// Bytes forwarded from the client to the upstream.
        to_upstream: u64,
        /// Bytes forwarded from the upstream to the client.
        to_downstream: u64,
    },
}

impl fmt::Display for ChaosEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChaosEvent::Accepted { conn, peer } => write!(f, "+conn #{conn} from {peer}"),
            ChaosEvent::UpstreamFailed { conn, error } => {
                write!(f, "#{conn} upstream connection failed: {error}")
            }
            ChaosEvent::Fault {
                conn,
                fault,
                after_bytes,
                after,
            } => write!(
                f,
                "#{conn} fault: {fault} after {after_bytes} bytes ({:.3}s)",
                after.as_secs_f64()
            ),
            ChaosEvent::Resumed { conn } => write!(f, "#{conn} resumed"),
            ChaosEvent::Closed {
                conn,
                to_upstream,
                to_downstream,
            } => write!(
                f,
                "-conn #{conn} closed ({to_upstream} bytes up, {to_downstream} bytes down)"
            ),
        }
    }
}

/// A subscription to a proxy's [`ChaosEvent`]s, from [`ChaosProxy::events`].
#[derive(Debug)]
pub struct ChaosEvents {
    rx: broadcast::Receiver<ChaosEvent>,
    missed: u64,
}

impl ChaosEvents {
    /// The next event; `None` once the proxy and all its connections are gone. Events the
    /// subscriber fell too far behind for are skipped (see [`missed`](Self::missed)).
    pub async fn next(&mut self) -> Option<ChaosEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if there is one already.
    pub fn try_next(&mut self) -> Option<ChaosEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                Err(_) => return None,
            }
        }
    }

    /// Events skipped so far because this subscriber was too slow.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// A running chaos proxy (see the [module documentation](self)). Dropping it stops it like
/// [`shutdown`](Self::shutdown), without waiting.
#[derive(Debug)]
pub struct ChaosProxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on `listen` and forwards every connection to `upstream`, an address such as
    /// `127.0.0.1:7000`, `[::1]:7000` or `localhost:7000` (anything whose `Display` form
    /// tokio can resolve, a `SocketAddr` too), resolved for each connection.
    ///
    /// # Errors
    ///
    /// An invalid configuration ([`ChaosConfig::validate`]), or the OS refusing the address.
    pub async fn start(
        listen: impl ToSocketAddrs,
        upstream: impl fmt::Display,
        config: ChaosConfig,
    ) -> Result<ChaosProxy, framelink::Error> {
        ChaosProxy::start_tapped(listen, upstream, config, Tap(None)).await
    }

    /// Like [`start`](Self::start), with `tap` shown every byte forwarded (see [`ChaosTap`]).
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub async fn start_with_tap(
        listen: impl ToSocketAddrs,
        upstream: impl fmt::Display,
        config: ChaosConfig,
        tap: Arc<dyn ChaosTap>,
    ) -> Result<ChaosProxy, framelink::Error> {
        ChaosProxy::start_tapped(listen, upstream, config, Tap(Some(tap))).await
    }

    async fn start_tapped(
        listen: impl ToSocketAddrs,
        upstream: impl fmt::Display,
        config: ChaosConfig,
        tap: Tap,
    ) -> Result<ChaosProxy, framelink::Error> {
        config.validate().map_err(framelink::Error::InvalidConfig)?;
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            config,
            upstream: upstream.to_string(),
            events,
            registry: Mutex::new(Registry::default()),
            changed: Notify::new(),
            counters: Counters::default(),
            tap,
        });
        tracing::debug!(%local_addr, upstream = %shared.upstream, seed = shared.config.seed, "chaos proxy listening");
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(ChaosProxy {
            shared,
            local_addr,
            accept,
        })
    }

    /// The address clients should connect to (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The upstream address, as given.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// The configuration (its seed, for printing with a failure).
    pub fn config(&self) -> &ChaosConfig {
        &self.shared.config
    }

    /// Counters over all connections so far.
    pub fn stats(&self) -> ChaosStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ChaosStats {
            connections: get(&c.connections),
            open: get(&c.open),
            upstream_failures: get(&c.upstream_failures),
            bytes_to_upstream: get(&c.to_upstream),
            bytes_to_downstream: get(&c.to_downstream),
            bytes_discarded: get(&c.discarded),
            writes: get(&c.writes),
            pieces: get(&c.pieces),
            faults: FaultCounts {
                fin: get(&c.fin),
                rst: get(&c.rst),
                blackhole: get(&c.blackhole),
                stall: get(&c.stall),
            },
        }
    }

    /// A subscription to the events from now on (subscribe before connecting so as not to
    /// miss the first ones).
    pub fn events(&self) -> ChaosEvents {
        ChaosEvents {
            rx: self.shared.events.subscribe(),
            missed: 0,
        }
    }

    /// Injects `fault` into connection `conn` now (within a few microseconds: its task applies
    /// it before forwarding anything more). False if that connection is not open.
    pub fn cut(&self, conn: u64, fault: Fault) -> bool {
        self.shared
            .lock()
            .conns
            .get(&conn)
            .is_some_and(|tx| tx.send(Command::Fault(fault)).is_ok())
    }

    /// Injects `fault` into every open connection now; returns how many were told.
    pub fn cut_all(&self, fault: Fault) -> usize {
        self.shared
            .lock()
            .conns
            .values()
            .filter(|tx| tx.send(Command::Fault(fault)).is_ok())
            .count()
    }

    /// Stops accepting (the listening socket is closed when this returns), closes every
    /// connection at once (no FIN or RST is arranged: the sockets are simply closed) and waits
    /// for their tasks to finish.
    pub async fn shutdown(mut self) {
        self.stop();
        let _ = (&mut self.accept).await;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.lock().conns.is_empty() {
                break;
            }
            changed.await;
        }
    }

    fn stop(&self) {
        self.accept.abort();
        let mut registry = self.shared.lock();
        registry.closing = true;
        for tx in registry.conns.values() {
            let _ = tx.send(Command::Close);
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
struct Shared {
    config: ChaosConfig,
    upstream: String,
    events: broadcast::Sender<ChaosEvent>,
    registry: Mutex<Registry>,
    /// Rung whenever a connection leaves the registry.
    changed: Notify,
    counters: Counters,
    tap: Tap,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: ChaosEvent) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    closing: bool,
    conns: HashMap<u64, mpsc::UnboundedSender<Command>>,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    open: AtomicU64,
    upstream_failures: AtomicU64,
    to_upstream: AtomicU64,
    to_downstream: AtomicU64,
    discarded: AtomicU64,
    writes: AtomicU64,
    pieces: AtomicU64,
    fin: AtomicU64,
    rst: AtomicU64,
    blackhole: AtomicU64,
    stall: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug)]
enum Command {
    Fault(Fault),
    Close,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "chaos proxy: accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let started = Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut registry = shared.lock();
            if registry.closing {
                return;
            }
            let id = registry.next_id;
            registry.next_id += 1;
            registry.conns.insert(id, tx);
            id
        };
        add(&shared.counters.connections, 1);
        add(&shared.counters.open, 1);
        tracing::debug!(conn = id, %peer, "chaos proxy: accepted");
        shared.emit(ChaosEvent::Accepted { conn: id, peer });
        tokio::spawn(connection(shared.clone(), id, stream, rx, started));
    }
}

/// Takes the connection out of the registry however its task ends, then reports it closed
/// (so that the stats no longer count it open when the event arrives).
struct Registered {
    shared: Arc<Shared>,
    id: u64,
    to_upstream: u64,
    to_downstream: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.id);
        self.shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.shared.changed.notify_waiters();
        if let Some(tap) = &self.shared.tap.0 {
            tap.closed(self.id);
        }
        tracing::debug!(
            conn = self.id,
            to_upstream = self.to_upstream,
            to_downstream = self.to_downstream,
            "chaos proxy: connection closed"
        );
        self.shared.emit(ChaosEvent::Closed {
            conn: self.id,
            to_upstream: self.to_upstream,
            to_downstream: self.to_downstream,
        });
    }
}

async fn connection(
    shared: Arc<Shared>,
    id: u64,
    down: TcpStream,
    mut commands: mpsc::UnboundedReceiver<Command>,
    started: Instant,
) {
    let mut registered = Registered {
        shared: shared.clone(),
        id,
        to_upstream: 0,
        to_downstream: 0,
    };
    // Dial upstream; faults injected meanwhile wait for the connection.
    let mut early = Vec::new();
    let dial = tokio::time::timeout(
        shared.config.connect_timeout,
        TcpStream::connect(shared.upstream.as_str()),
    );
    tokio::pin!(dial);
    let dialed = loop {
        tokio::select! {
            dialed = &mut dial => break dialed,
            command = commands.recv() => match command {
                Some(Command::Fault(fault)) => early.push(fault),
                Some(Command::Close) | None => return,
            },
        }
    };
    let up = match dialed {
        Ok(Ok(up)) => up,
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no connection within {:?}", shared.config.connect_timeout),
            };
            tracing::debug!(conn = id, upstream = %shared.upstream, %error, "chaos proxy: upstream connection failed");
            add(&shared.counters.upstream_failures, 1);
            shared.emit(ChaosEvent::UpstreamFailed { conn: id, error });
            return;
        }
    };
    // Each piece its own segment.
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);

    let mut conn = Conn::new(shared.clone(), id, down, up, commands, started);
    for fault in early {
        conn.inject(fault, Instant::now());
    }
    std::future::poll_fn(|cx| conn.poll(cx)).await;
    registered.to_upstream = conn.to_up.written;
    registered.to_downstream = conn.to_down.written;
    // The sockets close before the Closed event.
    drop(conn);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Forwarding,
    Stalled {
        until: Option<Instant>,
    },
    Blackhole,
    /// After a FIN cut: discarding until both peers close, or until the deadline.
    Draining {
        until: Instant,
    },
    Done,
}

/// Fault triggers of one connection, each list in order.
#[derive(Debug, Default)]
struct Schedule {
    bytes: VecDeque<(u64, FaultMix)>,
    times: VecDeque<(Instant, FaultMix)>,
    /// Random plan: where the next gap is drawn from after each fault.
    random: Option<(Trigger, FaultMix)>,
}

impl Schedule {
    fn new(plan: &FaultPlan, started: Instant, rng: &mut Rng) -> Schedule {
        let mut schedule = Schedule::default();
        match plan {
            FaultPlan::None => {}
            FaultPlan::Random { every, faults } => {
                schedule.random = Some((*every, faults.clone()));
                schedule.draw_next(0, started, rng);
            }
            FaultPlan::Scheduled(list) => {
                let mut bytes: Vec<_> = list
                    .iter()
                    .filter_map(|s| match s.at {
                        Trigger::Bytes(n) => Some((n, s.fault.clone())),
                        Trigger::After(_) => None,
                    })
                    .collect();
                bytes.sort_by_key(|&(n, _)| n);
                let mut times: Vec<_> = list
                    .iter()
                    .filter_map(|s| match s.at {
                        Trigger::After(d) => Some((started + d, s.fault.clone())),
                        Trigger::Bytes(_) => None,
                    })
                    .collect();
                times.sort_by_key(|&(t, _)| t);
                schedule.bytes = bytes.into();
                schedule.times = times.into();
            }
        }
        schedule
    }

    /// Random plan: the next fault, a random gap after `forwarded` bytes or `now`.
    fn draw_next(&mut self, forwarded: u64, now: Instant, rng: &mut Rng) {
        match &self.random {
            Some((Trigger::Bytes(mean), faults)) => {
                let gap = rng.between(1, mean.saturating_mul(2));
                self.bytes
                    .push_back((forwarded.saturating_add(gap), faults.clone()));
            }
            Some((Trigger::After(mean), faults)) => {
                let mean = u64::try_from(mean.as_nanos()).unwrap_or(u64::MAX);
                let gap = Duration::from_nanos(rng.between(1, mean.saturating_mul(2)));
                self.times.push_back((now + gap, faults.clone()));
            }
            None => {}
        }
    }

    /// Bytes that may still be forwarded before the next byte trigger.
    fn budget(&self, forwarded: u64) -> u64 {
        self.bytes
            .front()
            .map_or(u64::MAX, |&(at, _)| at.saturating_sub(forwarded))
    }
}

/// One direction of a connection: bytes read from one socket, waiting to be written to the
/// other.
#[derive(Debug)]
struct Pipe {
    buf: BytesMut,
    /// Bytes read from the source; `buf` holds the stream's bytes `written..read`.
    read: u64,
    /// Bytes written to the destination.
    written: u64,
    /// Bytes up to this stream offset may be written now.
    released_end: u64,
    /// Later release times (increasing) and the stream offset each releases up to.
    marks: VecDeque<(Instant, u64)>,
    /// The release time of the last bytes read.
    last_release: Option<Instant>,
    /// The source reached end of stream (or, when blackholed, failed).
    eof: bool,
    /// The destination's write side is shut down after everything was written.
    shut: bool,
    split: Option<(usize, usize)>,
    /// Bytes left in the current piece (`usize::MAX` without splitting).
    piece_left: usize,
    split_rng: Rng,
    delay_rng: Rng,
    to_upstream: bool,
    /// The connection's index (for the tap).
    conn: u64,
}

impl Pipe {
    fn new(config: &ChaosConfig, conn: u64, to_upstream: bool) -> Pipe {
        let direction = u64::from(!to_upstream);
        let mut split_rng = Rng::derive(config.seed, conn, direction);
        let split = config
            .split
            .as_ref()
            .map(|range| (*range.start(), *range.end()));
        let piece_left = match split {
            Some((min, max)) => split_rng.between_usize(min, max),
            None => usize::MAX,
        };
        Pipe {
            buf: BytesMut::new(),
            read: 0,
            written: 0,
            released_end: 0,
            marks: VecDeque::new(),
            last_release: None,
            eof: false,
            shut: false,
            split,
            piece_left,
            split_rng,
            delay_rng: Rng::derive(config.seed, conn, 2 + direction),
            to_upstream,
            conn,
        }
    }

    /// Moves bytes whose time has come to the released part.
    fn release(&mut self, now: Instant) {
        while let Some(&(at, end)) = self.marks.front() {
            if at > now {
                break;
            }
            self.released_end = end;
            self.marks.pop_front();
        }
    }

    /// Records the release time of the bytes just read (up to `self.read`).
    fn mark(&mut self, now: Instant, config: &ChaosConfig) {
        let base = match &config.delay {
            Some(range) => {
                now + self
                    .delay_rng
                    .between_duration(*range.start(), *range.end())
            }
            None => now,
        };
        let mut at = match config.coalesce {
            // A batch is being held: join it.
            Some(_) if self.last_release.is_some_and(|last| last > now) => base,
            Some(hold) => base + hold,
            None => base,
        };
        if let Some(last) = self.last_release {
            at = at.max(last);
        }
        self.last_release = Some(at);
        if at <= now && self.marks.is_empty() {
            self.released_end = self.read;
        } else {
            match self.marks.back_mut() {
                Some(back) if back.0 == at => back.1 = self.read,
                _ => self.marks.push_back((at, self.read)),
            }
        }
    }

    /// One read from `src`, if there is room. True if it did something.
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        now: Instant,
        config: &ChaosConfig,
    ) -> io::Result<bool> {
        if self.eof || self.buf.len() >= config.max_buffered {
            return Ok(false);
        }
        let room = (config.max_buffered - self.buf.len()).min(READ_CHUNK);
        loop {
            match src.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(false),
            }
            // Only now: an idle connection holds no buffer.
            self.buf.reserve(room);
            match src.try_read_buf(&mut (&mut self.buf).limit(room)) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(true);
                }
                Ok(n) => {
                    self.read += n as u64;
                    self.mark(now, config);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::new();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One write of released bytes to `dst`, at most `budget` bytes and not past the end of
    /// the current piece, shown to `tap`. Returns the bytes written.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut TcpStream,
        now: Instant,
        budget: u64,
        counters: &Counters,
        tap: &Tap,
    ) -> io::Result<u64> {
        self.release(now);
        let released = (self.released_end - self.written).min(self.buf.len() as u64);
        let n = released.min(budget).min(self.piece_left as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        match Pin::new(dst).poll_write(cx, &self.buf[..n]) {
            Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(k)) => {
                if let Some(tap) = &tap.0 {
                    tap.forwarded(self.conn, self.to_upstream, &self.buf[..k]);
                }
                self.buf.advance(k);
                self.written += k as u64;
                add(&counters.writes, 1);
                let forwarded = if self.to_upstream {
                    &counters.to_upstream
                } else {
                    &counters.to_downstream
                };
                add(forwarded, k as u64);
                if let Some((min, max)) = self.split {
                    self.piece_left -= k;
                    if self.piece_left == 0 {
                        add(&counters.pieces, 1);
                        self.piece_left = self.split_rng.between_usize(min, max);
                    }
                }
                if self.buf.is_empty() {
                    // Caught up: an idle connection holds no buffer.
                    self.buf = BytesMut::new();
                }
                Ok(k as u64)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(0),
        }
    }

    /// Passes the source's end of stream on once everything was written.
    fn poll_finish(&mut self, cx: &mut Context<'_>, dst: &mut TcpStream) -> io::Result<bool> {
        if !self.eof || self.shut || !self.buf.is_empty() {
            return Ok(false);
        }
        match Pin::new(dst).poll_shutdown(cx) {
            Poll::Ready(Ok(())) => {
                self.shut = true;
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(false),
        }
    }

    fn drop_buffered(&mut self) {
        self.buf = BytesMut::new();
        self.marks.clear();
    }

    fn next_release(&self) -> Option<Instant> {
        self.marks.front().map(|&(at, _)| at)
    }
}

/// One proxied connection, driven by one task.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
    /// The client's socket (accepted).
    down: Option<TcpStream>,
    /// The upstream socket (dialed).
    up: Option<TcpStream>,
    to_up: Pipe,
    to_down: Pipe,
    state: State,
    /// Bytes forwarded, both directions.
    forwarded: u64,
    started: Instant,
    schedule: Schedule,
    fault_rng: Rng,
    commands: mpsc::UnboundedReceiver<Command>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        id: u64,
        down: TcpStream,
        up: TcpStream,
        commands: mpsc::UnboundedReceiver<Command>,
        started: Instant,
    ) -> Conn {
        let config = &shared.config;
        let mut fault_rng = Rng::derive(config.seed, id, 4);
        let schedule = Schedule::new(&config.faults, started, &mut fault_rng);
        let (to_up, to_down) = (Pipe::new(config, id, true), Pipe::new(config, id, false));
        Conn {
            to_up,
            to_down,
            shared,
            id,
            down: Some(down),
            up: Some(up),
            state: State::Forwarding,
            forwarded: 0,
            started,
            schedule,
            fault_rng,
            commands,
            timer: Box::pin(tokio::time::sleep_until(started)),
            timer_at: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut rounds = 0;
        loop {
            // Injected faults apply before anything more is forwarded.
            while let Poll::Ready(command) = self.commands.poll_recv(cx) {
                match command {
                    Some(Command::Fault(fault)) => {
                        self.inject(fault, Instant::now());
                    }
                    Some(Command::Close) | None => {
                        self.state = State::Done;
                    }
                }
                if self.state == State::Done {
                    return Poll::Ready(());
                }
            }
            let now = Instant::now();
            self.fire_due(now);
            self.expire(now);
            let progress = match self.state {
                State::Forwarding => match self.pump(cx, now) {
                    Ok(progress) => progress,
                    Err(error) => {
                        tracing::debug!(conn = self.id, %error, "chaos proxy: I/O error, resetting both sides");
                        self.reset();
                        false
                    }
                },
                State::Blackhole | State::Draining { .. } => self.discard(cx),
                State::Stalled { .. } | State::Done => false,
            };
            if self.finished() {
                self.state = State::Done;
                return Poll::Ready(());
            }
            rounds += 1;
            if rounds >= MAX_ROUNDS {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if progress {
                continue;
            }
            if let Some(at) = self.next_deadline(now) {
                if self.timer_at != Some(at) {
                    self.timer.as_mut().reset(at);
                    self.timer_at = Some(at);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }

    /// Forwarding: writes (they make room), reads, ends of stream.
    fn pump(&mut self, cx: &mut Context<'_>, now: Instant) -> io::Result<bool> {
        let (Some(down), Some(up)) = (self.down.as_mut(), self.up.as_mut()) else {
            return Ok(false);
        };
        let config = &self.shared.config;
        let counters = &self.shared.counters;
        let budget = self.schedule.budget(self.forwarded);
        let tap = &self.shared.tap;
        let n = self.to_up.poll_write(cx, up, now, budget, counters, tap)?;
        self.forwarded += n;
        let budget = self.schedule.budget(self.forwarded);
        let m = self
            .to_down
            .poll_write(cx, down, now, budget, counters, tap)?;
        self.forwarded += m;
        let mut progress = n > 0 || m > 0;
        progress |= self.to_up.poll_read(cx, down, now, config)?;
        progress |= self.to_down.poll_read(cx, up, now, config)?;
        progress |= self.to_up.poll_finish(cx, up)?;
        progress |= self.to_down.poll_finish(cx, down)?;
        Ok(progress)
    }

    /// Blackhole and FIN drain: read both sides and throw the bytes away.
    fn discard(&mut self, cx: &mut Context<'_>) -> bool {
        let close_at_eof = matches!(self.state, State::Draining { .. });
        let counters = &self.shared.counters;
        let a = discard_side(
            cx,
            &mut self.down,
            &mut self.to_up.eof,
            close_at_eof,
            counters,
        );
        let b = discard_side(
            cx,
            &mut self.up,
            &mut self.to_down.eof,
            close_at_eof,
            counters,
        );
        a || b
    }

    fn finished(&self) -> bool {
        match self.state {
            State::Forwarding => {
                self.to_up.eof && self.to_up.shut && self.to_down.eof && self.to_down.shut
            }
            // Both peers closed (or failed): nobody is left to fool.
            State::Blackhole => self.to_up.eof && self.to_down.eof,
            State::Draining { .. } => self.down.is_none() && self.up.is_none(),
            State::Stalled { .. } => false,
            State::Done => true,
        }
    }

    /// Fires every trigger that is due.
    fn fire_due(&mut self, now: Instant) {
        loop {
            let due = if self
                .schedule
                .bytes
                .front()
                .is_some_and(|&(at, _)| self.forwarded >= at)
            {
                self.schedule.bytes.pop_front().map(|(_, mix)| mix)
            } else if self
                .schedule
                .times
                .front()
                .is_some_and(|&(at, _)| now >= at)
            {
                self.schedule.times.pop_front().map(|(_, mix)| mix)
            } else {
                return;
            };
            if let Some(fault) = due.and_then(|mix| mix.pick(&mut self.fault_rng)) {
                self.inject(fault, now);
            }
            self.schedule
                .draw_next(self.forwarded, now, &mut self.fault_rng);
            if self.state == State::Done {
                return;
            }
        }
    }

    /// Ends of stalls and drains.
    fn expire(&mut self, now: Instant) {
        match self.state {
            State::Stalled { until: Some(until) } if now >= until => {
                tracing::debug!(conn = self.id, "chaos proxy: stall over");
                self.state = State::Forwarding;
                self.shared.emit(ChaosEvent::Resumed { conn: self.id });
            }
            State::Draining { until } if now >= until => {
                tracing::debug!(
                    conn = self.id,
                    "chaos proxy: peers still open after a FIN cut, closing"
                );
                self.down = None;
                self.up = None;
                self.state = State::Done;
            }
            _ => {}
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let candidates = [
            match self.state {
                State::Forwarding => self.to_up.next_release(),
                State::Stalled { until } => until,
                State::Draining { until } => Some(until),
                State::Blackhole | State::Done => None,
            },
            match self.state {
                State::Forwarding => self.to_down.next_release(),
                _ => None,
            },
            self.schedule.times.front().map(|&(at, _)| at),
        ];
        candidates.into_iter().flatten().filter(|&t| t > now).min()
    }

    /// Applies `fault` if it makes sense in the current state; true if it did.
    fn inject(&mut self, fault: Fault, now: Instant) -> bool {
        let applies = match (self.state, fault) {
            (State::Done, _) => false,
            (_, Fault::Rst) => true,
            (State::Draining { .. }, _) => false,
            (_, Fault::Fin) => true,
            (State::Blackhole, _) => false,
            (_, Fault::Blackhole | Fault::Stall(_)) => true,
        };
        if !applies {
            tracing::debug!(conn = self.id, %fault, state = ?self.state, "chaos proxy: fault ignored");
            return false;
        }
        let counters = &self.shared.counters;
        add(
            match fault {
                Fault::Fin => &counters.fin,
                Fault::Rst => &counters.rst,
                Fault::Blackhole => &counters.blackhole,
                Fault::Stall(_) => &counters.stall,
            },
            1,
        );
        let after = now.saturating_duration_since(self.started);
        tracing::debug!(conn = self.id, %fault, after_bytes = self.forwarded, ?after, "chaos proxy: fault");
        self.shared.emit(ChaosEvent::Fault {
            conn: self.id,
            fault,
            after_bytes: self.forwarded,
            after,
        });
        match fault {
            Fault::Rst => self.reset(),
            Fault::Fin => {
                for socket in [&self.down, &self.up].into_iter().flatten() {
                    let _ = SockRef::from(socket).shutdown(Shutdown::Write);
                }
                self.to_up.drop_buffered();
                self.to_down.drop_buffered();
                self.state = State::Draining {
                    until: now + DRAIN_TIMEOUT,
                };
            }
            Fault::Blackhole => {
                self.to_up.drop_buffered();
                self.to_down.drop_buffered();
                self.state = State::Blackhole;
            }
            Fault::Stall(duration) => {
                self.state = State::Stalled {
                    until: duration.map(|d| now + d),
                };
            }
        }
        true
    }

    /// Closes both sockets with an RST.
    fn reset(&mut self) {
        for socket in [self.down.take(), self.up.take()].into_iter().flatten() {
            let _ = SockRef::from(&socket).set_linger(Some(Duration::ZERO));
        }
        self.state = State::Done;
    }
}

/// Reads and discards from one socket. At end of stream it is closed if `close_at_eof`
/// (after a FIN cut), else kept open; a socket that fails is closed.
fn discard_side(
    cx: &mut Context<'_>,
    socket: &mut Option<TcpStream>,
    eof: &mut bool,
    close_at_eof: bool,
    counters: &Counters,
) -> bool {
    let Some(stream) = socket.as_mut() else {
        return false;
    };
    if *eof {
        if close_at_eof {
            *socket = None;
            return true;
        }
        return false;
    }
    let mut scratch = [0u8; 4096];
    let mut buf = ReadBuf::new(&mut scratch);
    match Pin::new(stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) if buf.filled().is_empty() => {
            *eof = true;
            if close_at_eof {
                *socket = None;
            }
            true
        }
        Poll::Ready(Ok(())) => {
            add(&counters.discarded, buf.filled().len() as u64);
            true
        }
        Poll::Ready(Err(_)) => {
            *eof = true;
            *socket = None;
            true
        }
        Poll::Pending => false,
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast, good enough for test schedules, and
/// defined here so that a seed replays the same run whatever version of `rand` is around.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A generator for one use (`stream`) on one connection.
    fn derive(seed: u64, conn: u64, stream: u64) -> Rng {
        let base = Rng(seed).next();
        Rng(base ^ mix(conn.wrapping_mul(8).wrapping_add(stream) ^ 0x6a09_e667_f3bc_c908))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next(),
        }
    }

    fn between_usize(&mut self, lo: usize, hi: usize) -> usize {
        self.between(lo as u64, hi as u64) as usize
    }

    fn between_duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.between(nanos(lo), nanos(hi)))
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_stable_and_in_range() {
        // SplitMix64's published first output for seed 0 after one step.
        assert_eq!(Rng(0).next(), 0xe220_a839_7b1d_cdaf);
        let mut a = Rng::derive(7, 3, 0);
        let mut b = Rng::derive(7, 3, 0);
        let mut c = Rng::derive(7, 4, 0);
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| c.next()).collect::<Vec<_>>());
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = a.between(1, 7);
            assert!((1..=7).contains(&v));
            seen[v as usize - 1] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(a.between(5, 5), 5);
        let _ = a.between(0, u64::MAX);
    }

    #[test]
    fn fault_mix_weights() {
        let mix = FaultMix::new([(Fault::Fin, 3), (Fault::Rst, 0), (Fault::Blackhole, 1)]);
        assert_eq!(mix.choices().len(), 2);
        let mut rng = Rng(1);
        let fins = (0..4000)
            .filter(|_| mix.pick(&mut rng) == Some(Fault::Fin))
            .count();
        assert!((2700..3300).contains(&fins), "{fins}");
        assert_eq!(FaultMix::new([]).pick(&mut rng), None);
        assert_eq!(FaultMix::standard().to_string(), "fin|rst|blackhole");
        assert_eq!(mix.to_string(), "fin:3|blackhole:1");
    }

    #[test]
    fn config_validation() {
        assert!(ChaosConfig::default().validate().is_ok());
        let bad = |f: fn(&mut ChaosConfig)| {
            let mut c = ChaosConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.split = Some(0..=3)).contains("split"));
        #[allow(clippy::reversed_empty_ranges)]
        let e = bad(|c| c.split = Some(5..=3));
        assert!(e.contains("split"));
        assert!(
            bad(|c| c.delay = Some(Duration::from_millis(5)..=Duration::ZERO)).contains("delay")
        );
        assert!(bad(|c| c.max_buffered = 0).contains("max_buffered"));
        assert!(bad(|c| {
            c.faults = FaultPlan::Random {
                every: Trigger::Bytes(0),
                faults: FaultMix::standard(),
            }
        })
        .contains("mean"));
        assert!(bad(|c| {
            c.faults = FaultPlan::Random {
                every: Trigger::Bytes(10),
                faults: FaultMix::new([]),
            }
        })
        .contains("no fault"));
    }

    #[test]
    fn delays_never_reorder_and_coalesce_batches() {
        let config = ChaosConfig {
            delay: Some(Duration::ZERO..=Duration::from_millis(10)),
            ..ChaosConfig::default()
        };
        let mut pipe = Pipe::new(&config, 0, true);
        let t0 = Instant::now();
        for i in 1..=100u64 {
            pipe.read = i;
            pipe.mark(t0 + Duration::from_micros(i * 10), &config);
        }
        let times: Vec<_> = pipe.marks.iter().map(|&(at, _)| at).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        let ends: Vec<_> = pipe.marks.iter().map(|&(_, end)| end).collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]));
        pipe.release(t0 + Duration::from_secs(1));
        assert_eq!(pipe.released_end, 100);
        assert!(pipe.marks.is_empty());

        let config = ChaosConfig {
            coalesce: Some(Duration::from_millis(5)),
            ..ChaosConfig::default()
        };
        let mut pipe = Pipe::new(&config, 0, true);
        for (i, at_us) in [(1u64, 0u64), (2, 1000), (3, 4000), (4, 6000)] {
            pipe.read = i;
            pipe.mark(t0 + Duration::from_micros(at_us), &config);
        }
        // Reads at 0, 1 and 4 ms go out together at 5 ms; the read at 6 ms starts a new batch.
        let marks: Vec<_> = pipe.marks.iter().map(|&(at, end)| (at - t0, end)).collect();
        assert_eq!(
            marks,
            [
                (Duration::from_millis(5), 3),
                (Duration::from_millis(11), 4)
            ]
        );
    }
}
