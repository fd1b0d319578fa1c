//! Liveness: keeping a connection alive-or-known-dead at all times.
//!
//! TCP does not tell you that a peer vanished without a FIN (cable pulled, NAT mapping dropped,
//! process frozen): writes keep succeeding into the send buffer and reads simply block. This module
//! is the sans-IO state machine that notices, in bounded time, using
//!
//! - **pings when the link is quiet**: when nothing has been *received* for
//!   [`ping_interval`](LivenessConfig::ping_interval), it asks the driver to send a ping
//!   ([`LivenessEvent::SendPing`]); if then nothing at all is received within
//!   [`ping_timeout`](LivenessConfig::ping_timeout), the peer is declared dead
//!   ([`LivenessEvent::PeerDead`]). Any inbound bytes prove the peer alive, not only pongs, so a
//!   busy link is never pinged (like gRPC keepalive and quinn's idle timeout);
//! - **the peer's own promise** (MQTT keep-alive): when the peer declared in its handshake that it
//!   sends something at least every [`peer_interval`](LivenessConfig::peer_interval) of quiet on
//!   its side, silence for `peer_interval × grace` (default grace 1.5) after both our last send
//!   and its last bytes is death too, even with our own pinging off;
//! - **idle events** like Netty's `IdleStateHandler` ([`IdleKind`]), once per idle period;
//! - **ping-flood protection** like gRPC's `too_many_pings` strikes ([`PingAction`]);
//! - **RTT estimation** from matched pongs, RFC 6298 style ([`RttEstimate`]).
//!
//! It knows nothing of the wire format: pings carry an opaque 8-byte context (a big-endian sequence
//! number) that the peer echoes in its pong.
//!
//! # Driving it
//!
//! The model is quinn-proto's: inputs (`on_receive`, `on_send`, `on_ping`, `on_pong`) only record
//! timestamps, they never arm timers. The driver keeps **one** timer: after every call it re-arms it
//! at [`Liveness::poll_timeout`]; when it fires it calls [`Liveness::handle_timeout`], which checks
//! what is really due (traffic may have moved the deadline; an early or spurious call is harmless),
//! then drains [`Liveness::poll_event`]. Time is always an argument; nothing here reads a clock.
//! A `now` earlier than one already seen is treated as the latest one seen (time never goes
//! backwards inside the machine), and nothing panics.
//!
//! # Detection bounds
//!
//! With pinging on and a driver that handles each timeout when it is due, a peer whose last bytes
//! arrived at `S` is declared dead at exactly
//!
//! ```text
//! D = S + ping_interval + ping_timeout            (a ping goes out at S + ping_interval)
//! D = min(that, max(S, last_sent) + peer_interval × grace)   (when peer_interval is set)
//! ```
//!
//! So a peer that goes silent at any moment `X` (its last bytes arrived at `S <= X`) is detected
//! within `ping_interval + ping_timeout` of `X`, and a peer that answers every ping within
//! `rtt < ping_timeout` is never declared dead before `X + ping_timeout - rtt`. A late driver
//! delays detection by its lateness (death comes `ping_timeout` after the ping actually went
//! out), never brings it forward.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use framelink_proto::liveness::{Liveness, LivenessConfig, LivenessEvent};
//!
//! let t0 = Instant::now();
//! let s = Duration::from_secs;
//! let config = LivenessConfig { ping_interval: Some(s(5)), ping_timeout: s(3), ..LivenessConfig::default() };
//! let mut lv = Liveness::new(config, t0).unwrap();
//!
//! // Data keeps arriving: no ping is needed.
//! lv.on_receive(t0 + s(4));
//! assert_eq!(lv.poll_timeout(), Some(t0 + s(9)));
//! lv.handle_timeout(t0 + s(5)); // a stale timer: nothing is due any more
//! assert_eq!(lv.poll_event(), None);
//!
//! // Quiet for 5 s: ping.
//! lv.handle_timeout(t0 + s(9));
//! let Some(LivenessEvent::SendPing { context }) = lv.poll_event() else { panic!() };
//! // The peer answers 40 ms later: alive, and an RTT sample.
//! assert_eq!(lv.on_pong(context, t0 + s(9) + Duration::from_millis(40)), Some(Duration::from_millis(40)));
//!
//! // Then it vanishes: the next ping goes unanswered and it is dead 3 s after that ping.
//! let next = lv.poll_timeout().unwrap();
//! lv.handle_timeout(next);
//! assert!(matches!(lv.poll_event(), Some(LivenessEvent::SendPing { .. })));
//! lv.handle_timeout(next + s(3));
//! assert!(matches!(lv.poll_event(), Some(LivenessEvent::PeerDead { .. })));
//! assert!(lv.is_dead());
//! assert_eq!(lv.poll_timeout(), None);
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Parameters of a [`Liveness`] state machine.
///
/// Durations must be non-zero (use `None` to turn a feature off) and `grace` finite and at least
/// 1; [`Liveness::new`] checks this. Deadlines so far away that they overflow [`Instant`] are
/// treated as never.
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::liveness::LivenessConfig;
///
/// let cfg = LivenessConfig::default();
/// assert_eq!(cfg.ping_interval, Some(Duration::from_secs(5)));
/// assert_eq!(cfg.ping_timeout, Duration::from_secs(5));
/// assert_eq!((cfg.grace, cfg.max_ping_strikes), (1.5, 2));
/// assert!(cfg.validate().is_ok());
/// // Never ping; rely on the peer's declared 10 s keep-alive (dead after 15 s of silence).
/// let passive = LivenessConfig { peer_interval: Some(Duration::from_secs(10)), ..LivenessConfig::passive() };
/// assert!(passive.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessConfig {
    /// Send a ping after this long without receiving anything; `None` never pings (passive).
    pub ping_interval: Option<Duration>,
    /// After sending a ping, declare the peer dead when nothing at all arrives within this long.
    pub ping_timeout: Duration,
    /// The peer declared (e.g. in its handshake) that it sends something at least this often.
    /// When set, silence for `peer_interval × grace` is death, whether or not we ping.
    pub peer_interval: Option<Duration>,
    /// Multiplier applied to `peer_interval` (MQTT keep-alive uses 1.5). Finite, at least 1.
    pub grace: f64,
    /// Emit [`IdleKind::ReaderIdle`] after this long without receiving anything.
    pub reader_idle: Option<Duration>,
    /// Emit [`IdleKind::WriterIdle`] after this long without sending anything.
    pub writer_idle: Option<Duration>,
    /// Emit [`IdleKind::AllIdle`] after this long without receiving or sending anything.
    pub all_idle: Option<Duration>,
    /// A peer ping arriving sooner than this after the previous one is a strike (gRPC's
    /// `permit_keepalive_time`); `None` accepts any ping rate.
    pub min_peer_ping_interval: Option<Duration>,
    /// Strikes tolerated: one more gives [`LivenessEvent::TooManyPings`] (gRPC's default is 2).
    pub max_ping_strikes: u32,
}

impl LivenessConfig {
    /// The default configuration with our own pinging turned off: the connection is only
    /// declared dead through [`peer_interval`](Self::peer_interval), if that is set.
    pub fn passive() -> Self {
        LivenessConfig {
            ping_interval: None,
            ..Self::default()
        }
    }

    /// Checks the configuration: every duration non-zero, `grace` finite and at least 1, and
    /// `peer_interval × grace` representable as a [`Duration`].
    pub fn validate(&self) -> Result<(), LivenessConfigError> {
        self.peer_silence_limit().map(|_| ())
    }

    /// `peer_interval × grace`, after validating everything.
    fn peer_silence_limit(&self) -> Result<Option<Duration>, LivenessConfigError> {
        let optional = [
            ("ping_interval", self.ping_interval),
            ("peer_interval", self.peer_interval),
            ("reader_idle", self.reader_idle),
            ("writer_idle", self.writer_idle),
            ("all_idle", self.all_idle),
            ("min_peer_ping_interval", self.min_peer_ping_interval),
        ];
        for (name, value) in optional {
            if value == Some(Duration::ZERO) {
                return Err(LivenessConfigError::ZeroDuration { name });
            }
        }
        if self.ping_timeout.is_zero() {
            return Err(LivenessConfigError::ZeroDuration {
                name: "ping_timeout",
            });
        }
        if !self.grace.is_finite() || self.grace < 1.0 {
            return Err(LivenessConfigError::InvalidGrace { grace: self.grace });
        }
        match self.peer_interval {
            None => Ok(None),
            Some(interval) => Duration::try_from_secs_f64(interval.as_secs_f64() * self.grace)
                .map(Some)
                .map_err(|_| LivenessConfigError::SilenceLimitOverflow {
                    peer_interval: interval,
                    grace: self.grace,
                }),
        }
    }
}

impl Default for LivenessConfig {
    /// Ping after 5 s of quiet, dead 5 s after an unanswered ping (so a vanished peer is noticed
    /// within 10 s); no declared peer interval; grace 1.5; no idle events; any peer ping rate
    /// accepted (`min_peer_ping_interval: None`), 2 strikes once a minimum is set.
    fn default() -> Self {
        LivenessConfig {
            ping_interval: Some(Duration::from_secs(5)),
            ping_timeout: Duration::from_secs(5),
            peer_interval: None,
            grace: 1.5,
            reader_idle: None,
            writer_idle: None,
            all_idle: None,
            min_peer_ping_interval: None,
            max_ping_strikes: 2,
        }
    }
}

/// An invalid [`LivenessConfig`].
///
/// ```
/// use std::time::Duration;
/// use framelink_proto::liveness::{LivenessConfig, LivenessConfigError};
///
/// let cfg = LivenessConfig { ping_timeout: Duration::ZERO, ..LivenessConfig::default() };
/// assert_eq!(cfg.validate(), Err(LivenessConfigError::ZeroDuration { name: "ping_timeout" }));
/// let cfg = LivenessConfig { grace: 0.5, ..LivenessConfig::default() };
/// assert_eq!(cfg.validate().unwrap_err().to_string(), "grace = 0.5 is out of range (finite, at least 1)");
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LivenessConfigError {
    /// A duration is zero; use `None` to disable the feature instead.
    #[error("{name} must be greater than zero (use None to disable)")]
    ZeroDuration {
        /// The field name.
        name: &'static str,
    },
    /// `grace` is NaN, infinite or below 1.
    #[error("grace = {grace} is out of range (finite, at least 1)")]
    InvalidGrace {
        /// The value given.
        grace: f64,
    },
    /// `peer_interval × grace` does not fit a [`Duration`].
    #[error("peer_interval {peer_interval:?} × grace {grace} overflows a Duration")]
    SilenceLimitOverflow {
        /// The declared peer interval.
        peer_interval: Duration,
        /// The grace factor.
        grace: f64,
    },
}

/// Which direction has been idle (Netty's `IdleState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdleKind {
    /// Nothing received for [`LivenessConfig::reader_idle`].
    ReaderIdle,
    /// Nothing sent for [`LivenessConfig::writer_idle`].
    WriterIdle,
    /// Nothing received nor sent for [`LivenessConfig::all_idle`].
    AllIdle,
}

/// Why the peer was declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathCause {
    /// A ping went out and nothing at all came back within `timeout`.
    PingTimeout {
        /// Context of the unanswered ping.
        context: [u8; 8],
        /// The configured [`ping_timeout`](LivenessConfig::ping_timeout).
        timeout: Duration,
    },
    /// Nothing arrived for `peer_interval × grace` although the peer promised traffic every
    /// `peer_interval`.
    PeerSilent {
        /// `peer_interval × grace`.
        limit: Duration,
    },
}

impl std::fmt::Display for DeathCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeathCause::PingTimeout { timeout, .. } => {
                write!(f, "no answer to a ping within {timeout:?}")
            }
            DeathCause::PeerSilent { limit } => {
                write!(
                    f,
                    "silent beyond its announced interval x grace ({limit:?})"
                )
            }
        }
    }
}

/// What a [`Liveness`] asks of its driver, drained with [`Liveness::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessEvent {
    /// Send a ping carrying this context now, and report the bytes with [`Liveness::on_send`].
    /// The peer is expected to echo the context in its pong.
    SendPing {
        /// Opaque ping context: a sequence number, big-endian.
        context: [u8; 8],
    },
    /// The peer is gone: close the connection. Terminal: the machine emits nothing afterwards.
    PeerDead {
        /// How long nothing had been received when death was declared.
        silent_for: Duration,
        /// When the last inbound bytes arrived (the connection start if none ever did).
        last_received: Instant,
        /// Which rule fired.
        cause: DeathCause,
    },
    /// A direction has been idle for its configured period; emitted once per idle period.
    Idle(IdleKind),
    /// The peer pinged too often (more than `max_ping_strikes` strikes): gRPC answers with
    /// `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")` and closes.
    TooManyPings {
        /// Strikes counted, `max_ping_strikes + 1`.
        strikes: u32,
        /// The configured minimum interval between peer pings.
        min_interval: Duration,
        /// The gap between the last two peer pings.
        last_gap: Duration,
    },
}

/// What to do with an inbound ping, returned by [`Liveness::on_ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingAction {
    /// Answer with a pong echoing the ping's context.
    Pong,
    /// The peer exceeded its ping strikes: don't answer; close (a
    /// [`LivenessEvent::TooManyPings`] was queued when the limit was first exceeded).
    TooManyPings,
}

/// Round-trip time statistics from ping / pong pairs, per RFC 6298 §2: the first sample `R` gives
/// `smoothed = R`, `variance = R / 2`; each later sample `R'` gives
/// `variance = 3/4 · variance + 1/4 · |smoothed − R'|` then `smoothed = 7/8 · smoothed + 1/8 · R'`
/// (computed in whole nanoseconds, rounding down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimate {
    /// The most recent sample.
    pub latest: Duration,
    /// Smoothed RTT (SRTT).
    pub smoothed: Duration,
    /// RTT variation (RTTVAR).
    pub variance: Duration,
    /// Smallest sample seen.
    pub min: Duration,
    /// Number of samples taken.
    pub samples: u64,
}

impl RttEstimate {
    /// The estimate after a first sample (RFC 6298: smoothed = R, variation = R / 2).
    pub fn first(sample: Duration) -> Self {
        RttEstimate {
            latest: sample,
            smoothed: sample,
            variance: sample / 2,
            min: sample,
            samples: 1,
        }
    }

    fn update(&mut self, sample: Duration) {
        let r = sample.as_nanos();
        let srtt = self.smoothed.as_nanos();
        let var = self.variance.as_nanos();
        let diff = srtt.abs_diff(r);
        self.variance = nanos((3 * var + diff) / 4);
        self.smoothed = nanos((7 * srtt + r) / 8);
        self.latest = sample;
        self.min = self.min.min(sample);
        self.samples = self.samples.saturating_add(1);
    }

    /// RFC 6298's retransmission timeout without its 1 s floor: `smoothed + max(granularity,
    /// 4 · variance)`, a reasonable per-request timeout hint.
    ///
    /// ```
    /// use std::time::Duration;
    /// use framelink_proto::liveness::RttEstimate;
    /// let ms = Duration::from_millis;
    /// let rtt = RttEstimate { latest: ms(100), smoothed: ms(100), variance: ms(50), min: ms(100), samples: 1 };
    /// assert_eq!(rtt.timeout(ms(1)), ms(300));
    /// ```
    pub fn timeout(&self, granularity: Duration) -> Duration {
        self.smoothed
            .saturating_add(granularity.max(self.variance.saturating_mul(4)))
    }
}

/// A nanosecond count as a duration, saturating at `u64::MAX` nanoseconds (584 years).
fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A ping we sent whose pong has not come back.
#[derive(Debug, Clone, Copy)]
struct OutstandingPing {
    seq: u64,
    sent_at: Instant,
    /// Nothing has been received since it was sent: its timeout is running.
    awaiting: bool,
}

/// Timers, in the order they are handled when due at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ReaderIdle,
    WriterIdle,
    AllIdle,
    PeerSilent,
    PingTimeout,
    SendPing,
}

/// The liveness state machine of one connection. See the [module documentation](self) for how
/// to drive it and the detection bounds.
///
/// Semantics in brief:
///
/// - **Ping due** at `last_received + ping_interval`, unless a ping is awaiting its answer.
///   Pings are sent only when the link has been quiet; replies to the peer's pings, or our own
///   sends, do not postpone them (only inbound bytes prove the peer alive).
/// - **Dead (ping)** at `ping_sent_at + ping_timeout` when nothing at all was received since that
///   ping was sent. Any inbound bytes (data, the peer's pings, any pong) end the wait; the next
///   ping is then due at `last_received + ping_interval`. A pong for an older ping is ignored for
///   RTT but still counts as inbound bytes.
/// - **Dead (peer interval)** at `max(last_received, last_sent) + peer_interval × grace`: the
///   peer pings only when it has received nothing for its interval, so our own sends restart its
///   obligation.
/// - **Idle** at `last_received + reader_idle`, `last_sent + writer_idle`,
///   `max(last_received, last_sent) + all_idle`; each fires once and is re-armed by the matching
///   activity.
/// - **Dead is terminal**: once [`LivenessEvent::PeerDead`] is emitted, inputs are ignored and
///   [`poll_timeout`](Self::poll_timeout) returns `None`.
/// - Deadlines are only evaluated in [`handle_timeout`](Self::handle_timeout): bytes reported
///   before an overdue timer was handled still count (the peer evidently is alive).
#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    /// `peer_interval × grace`.
    peer_silence_limit: Option<Duration>,
    /// Latest time seen in any call: earlier `now`s are raised to it.
    now: Instant,
    last_received: Instant,
    last_sent: Instant,
    next_seq: u64,
    ping: Option<OutstandingPing>,
    reader_idle_fired: bool,
    writer_idle_fired: bool,
    all_idle_fired: bool,
    last_peer_ping: Option<Instant>,
    strikes: u32,
    rtt: Option<RttEstimate>,
    dead: bool,
    events: VecDeque<LivenessEvent>,
}

impl Liveness {
    /// A machine for a connection established at `now` (which counts as the last receive and the
    /// last send, so the first ping is due at `now + ping_interval`).
    pub fn new(config: LivenessConfig, now: Instant) -> Result<Self, LivenessConfigError> {
        let peer_silence_limit = config.peer_silence_limit()?;
        Ok(Liveness {
            config,
            peer_silence_limit,
            now,
            last_received: now,
            last_sent: now,
            next_seq: 0,
            ping: None,
            reader_idle_fired: false,
            writer_idle_fired: false,
            all_idle_fired: false,
            last_peer_ping: None,
            strikes: 0,
            rtt: None,
            dead: false,
            events: VecDeque::new(),
        })
    }

    /// Raises the internal clock to `now` (never lowers it) and returns it.
    fn advance(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    /// Inbound bytes arrived (any bytes: data, control frames, even a partial frame). Proves the
    /// peer alive: ends the wait for an outstanding ping and postpones the next one.
    pub fn on_receive(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let now = self.advance(now);
        self.last_received = now;
        self.reader_idle_fired = false;
        self.all_idle_fired = false;
        if let Some(ping) = &mut self.ping {
            ping.awaiting = false;
        }
    }

    /// We wrote bytes to the peer: application data, or control frames (including the pings
    /// asked for by [`LivenessEvent::SendPing`] and our pongs). Re-arms the writer / all idle
    /// events. Use [`on_send_data`](Self::on_send_data) for application data instead.
    pub fn on_send(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let now = self.advance(now);
        self.last_sent = now;
        self.writer_idle_fired = false;
        self.all_idle_fired = false;
    }

    /// We wrote application data: like [`on_send`](Self::on_send), and also resets the peer's
    /// ping strikes and forgets its last ping, as gRPC does when it sends data or headers (a peer
    /// may ping whenever there is real traffic; pings of an otherwise idle connection are what
    /// the strike policy limits).
    pub fn on_send_data(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        self.on_send(now);
        self.strikes = 0;
        self.last_peer_ping = None;
    }

    /// An inbound ping (counts as inbound bytes; no need to also call
    /// [`on_receive`](Self::on_receive)).
    ///
    /// With [`min_peer_ping_interval`](LivenessConfig::min_peer_ping_interval) set, a ping less
    /// than that after the peer's previous ping is a strike, and a ping at least that long after
    /// it resets the strikes while they are within the limit (PROTOCOL.md section 6.1: a peer
    /// that pinged early once in a while is not cut hours later); so does
    /// [`on_send_data`](Self::on_send_data). Strike number `max_ping_strikes + 1` queues
    /// [`LivenessEvent::TooManyPings`] (once), and from then on every ping gets
    /// [`PingAction::TooManyPings`] until [`on_send_data`](Self::on_send_data) resets them.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use framelink_proto::liveness::*;
    /// let t0 = Instant::now();
    /// let cfg = LivenessConfig { min_peer_ping_interval: Some(Duration::from_secs(1)), max_ping_strikes: 1, ..LivenessConfig::default() };
    /// let mut lv = Liveness::new(cfg.clone(), t0).unwrap();
    /// let ms = Duration::from_millis;
    /// assert_eq!(lv.on_ping(t0), PingAction::Pong);
    /// assert_eq!(lv.on_ping(t0 + ms(100)), PingAction::Pong); // strike 1
    /// assert_eq!(lv.on_ping(t0 + ms(200)), PingAction::TooManyPings); // strike 2 > 1
    /// assert!(matches!(lv.poll_event(), Some(LivenessEvent::TooManyPings { strikes: 2, .. })));
    ///
    /// // Early pings far apart in time are forgiven: a well-spaced ping resets the count.
    /// let mut lv = Liveness::new(cfg, t0).unwrap();
    /// assert_eq!(lv.on_ping(t0), PingAction::Pong);
    /// assert_eq!(lv.on_ping(t0 + ms(100)), PingAction::Pong); // strike 1
    /// assert_eq!(lv.on_ping(t0 + ms(5000)), PingAction::Pong); // reset
    /// assert_eq!(lv.on_ping(t0 + ms(5100)), PingAction::Pong); // strike 1 again
    /// ```
    pub fn on_ping(&mut self, now: Instant) -> PingAction {
        if self.dead {
            return PingAction::Pong;
        }
        self.on_receive(now);
        let now = self.now;
        let previous = self.last_peer_ping.replace(now);
        let (Some(min_interval), Some(previous)) = (self.config.min_peer_ping_interval, previous)
        else {
            return self.ping_action();
        };
        let gap = now.saturating_duration_since(previous);
        if gap >= min_interval && self.strikes <= self.config.max_ping_strikes {
            self.strikes = 0;
        } else if gap < min_interval {
            self.strikes = self.strikes.saturating_add(1);
            if self.strikes == self.config.max_ping_strikes.saturating_add(1) {
                self.events.push_back(LivenessEvent::TooManyPings {
                    strikes: self.strikes,
                    min_interval,
                    last_gap: gap,
                });
            }
        }
        self.ping_action()
    }

    fn ping_action(&self) -> PingAction {
        if self.strikes > self.config.max_ping_strikes {
            PingAction::TooManyPings
        } else {
            PingAction::Pong
        }
    }

    /// An inbound pong echoing `context` (counts as inbound bytes). When it answers the latest
    /// ping we sent, returns the RTT sample (also folded into [`rtt`](Self::rtt)); a pong for an
    /// older or unknown ping, or a second pong for the same ping, gives `None`.
    pub fn on_pong(&mut self, context: [u8; 8], now: Instant) -> Option<Duration> {
        if self.dead {
            return None;
        }
        self.on_receive(now);
        let ping = self.ping?;
        if u64::from_be_bytes(context) != ping.seq {
            return None;
        }
        self.ping = None;
        let sample = self.now.saturating_duration_since(ping.sent_at);
        match &mut self.rtt {
            None => self.rtt = Some(RttEstimate::first(sample)),
            Some(rtt) => rtt.update(sample),
        }
        Some(sample)
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has something to
    /// do, or `None` when nothing is scheduled (dead, or every timer off or already fired). May be
    /// in the past if the driver is late: then the timer should fire at once.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().into_iter().flatten().map(|(at, _)| at).min()
    }

    /// Every armed timer, with its deadline (`None` entries are off, fired, or overflowed).
    fn timers(&self) -> [Option<(Instant, Timer)>; 6] {
        if self.dead {
            return [None; 6];
        }
        let after = |base: Instant, span: Option<Duration>, timer: Timer| {
            span.and_then(|d| base.checked_add(d)).map(|at| (at, timer))
        };
        let cfg = &self.config;
        let (ping_timeout, send_ping) = match self.ping {
            Some(p) if p.awaiting => (
                after(p.sent_at, Some(cfg.ping_timeout), Timer::PingTimeout),
                None,
            ),
            _ => (
                None,
                after(self.last_received, cfg.ping_interval, Timer::SendPing),
            ),
        };
        let idle = |fired: bool, base, span, timer| {
            if fired {
                None
            } else {
                after(base, span, timer)
            }
        };
        [
            idle(
                self.reader_idle_fired,
                self.last_received,
                cfg.reader_idle,
                Timer::ReaderIdle,
            ),
            idle(
                self.writer_idle_fired,
                self.last_sent,
                cfg.writer_idle,
                Timer::WriterIdle,
            ),
            idle(
                self.all_idle_fired,
                self.last_received.max(self.last_sent),
                cfg.all_idle,
                Timer::AllIdle,
            ),
            // The peer promises traffic only when *its* side has been quiet: while we keep
            // sending, a healthy pure consumer may send nothing. So the clock runs from the
            // later of our last send and its last bytes (docs/PROTOCOL.md, passive deadline).
            after(
                self.last_received.max(self.last_sent),
                self.peer_silence_limit,
                Timer::PeerSilent,
            ),
            ping_timeout,
            send_ping,
        ]
    }

    /// The driver's timer fired (or anything else woke it): queues the events whose deadlines
    /// are at or before `now`, in deadline order (ties: idle events, then death, then a ping).
    /// Calling it early, twice, or with an earlier `now` than before is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        // A fixed array, not a Vec: this runs at every heartbeat of every connection.
        let mut due = self.timers();
        for slot in &mut due {
            if slot.is_some_and(|(at, _)| at > now) {
                *slot = None;
            }
        }
        due.sort_unstable();
        for (_, timer) in due.into_iter().flatten() {
            match timer {
                Timer::ReaderIdle => {
                    self.reader_idle_fired = true;
                    self.events
                        .push_back(LivenessEvent::Idle(IdleKind::ReaderIdle));
                }
                Timer::WriterIdle => {
                    self.writer_idle_fired = true;
                    self.events
                        .push_back(LivenessEvent::Idle(IdleKind::WriterIdle));
                }
                Timer::AllIdle => {
                    self.all_idle_fired = true;
                    self.events
                        .push_back(LivenessEvent::Idle(IdleKind::AllIdle));
                }
                Timer::PeerSilent | Timer::PingTimeout => {
                    let cause = match (timer, self.ping, self.peer_silence_limit) {
                        (Timer::PingTimeout, Some(p), _) => DeathCause::PingTimeout {
                            context: p.seq.to_be_bytes(),
                            timeout: self.config.ping_timeout,
                        },
                        (_, _, Some(limit)) => DeathCause::PeerSilent { limit },
                        // Unreachable: each timer exists only with its state.
                        _ => continue,
                    };
                    self.dead = true;
                    self.ping = None;
                    self.events.push_back(LivenessEvent::PeerDead {
                        silent_for: now.saturating_duration_since(self.last_received),
                        last_received: self.last_received,
                        cause,
                    });
                    return;
                }
                Timer::SendPing => {
                    let seq = self.next_seq;
                    self.next_seq = seq.wrapping_add(1);
                    self.ping = Some(OutstandingPing {
                        seq,
                        sent_at: now,
                        awaiting: true,
                    });
                    self.events.push_back(LivenessEvent::SendPing {
                        context: seq.to_be_bytes(),
                    });
                }
            }
        }
    }

    /// The next queued event, oldest first.
    pub fn poll_event(&mut self) -> Option<LivenessEvent> {
        self.events.pop_front()
    }

    /// Frees the event queue's memory if it is empty (for drivers of many idle connections).
    pub fn shrink_buffers(&mut self) {
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
    }

    /// True once [`LivenessEvent::PeerDead`] has been emitted.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// RTT statistics, once a pong has matched a ping.
    pub fn rtt(&self) -> Option<RttEstimate> {
        self.rtt
    }

    /// Context of the last ping sent whose pong has not arrived (it may be ended by other
    /// traffic, but still matches a late pong for an RTT sample).
    pub fn outstanding_ping(&self) -> Option<[u8; 8]> {
        self.ping.map(|p| p.seq.to_be_bytes())
    }

    /// When inbound bytes last arrived (the creation time if none did).
    pub fn last_received(&self) -> Instant {
        self.last_received
    }

    /// When we last sent bytes (the creation time if we did not).
    pub fn last_sent(&self) -> Instant {
        self.last_sent
    }

    /// Strikes the peer has collected for pinging too often.
    pub fn ping_strikes(&self) -> u32 {
        self.strikes
    }

    /// The configuration.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::util::{ms, secs};
    use proptest::prelude::*;

    /// Pinging config with no other feature.
    fn pinging(interval: Duration, timeout: Duration) -> LivenessConfig {
        LivenessConfig {
            ping_interval: Some(interval),
            ping_timeout: timeout,
            ..LivenessConfig::default()
        }
    }

    fn drain(lv: &mut Liveness) -> Vec<LivenessEvent> {
        std::iter::from_fn(|| lv.poll_event()).collect()
    }

    fn ping_ctx(seq: u64) -> LivenessEvent {
        LivenessEvent::SendPing {
            context: seq.to_be_bytes(),
        }
    }

    /// Handles the next deadline if it is at or before `until`; returns it and its events.
    fn step(lv: &mut Liveness, until: Instant) -> Option<(Instant, Vec<LivenessEvent>)> {
        let at = lv.poll_timeout().filter(|&at| at <= until)?;
        lv.handle_timeout(at);
        Some((at, drain(lv)))
    }

    #[test]
    fn default_config_is_valid_and_documented_values() {
        let cfg = LivenessConfig::default();
        assert_eq!(cfg.ping_interval, Some(secs(5)));
        assert_eq!(cfg.ping_timeout, secs(5));
        assert_eq!(cfg.grace, 1.5);
        assert_eq!(cfg.max_ping_strikes, 2);
        assert_eq!(cfg.min_peer_ping_interval, None);
        assert!(cfg.validate().is_ok());
        assert_eq!(LivenessConfig::passive().ping_interval, None);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let zero = Some(Duration::ZERO);
        let base = LivenessConfig::default;
        let cases = [
            (
                LivenessConfig {
                    ping_interval: zero,
                    ..base()
                },
                "ping_interval",
            ),
            (
                LivenessConfig {
                    peer_interval: zero,
                    ..base()
                },
                "peer_interval",
            ),
            (
                LivenessConfig {
                    reader_idle: zero,
                    ..base()
                },
                "reader_idle",
            ),
            (
                LivenessConfig {
                    writer_idle: zero,
                    ..base()
                },
                "writer_idle",
            ),
            (
                LivenessConfig {
                    all_idle: zero,
                    ..base()
                },
                "all_idle",
            ),
            (
                LivenessConfig {
                    min_peer_ping_interval: zero,
                    ..base()
                },
                "min_peer_ping_interval",
            ),
            (
                LivenessConfig {
                    ping_timeout: Duration::ZERO,
                    ..base()
                },
                "ping_timeout",
            ),
        ];
        for (cfg, name) in cases {
            assert_eq!(
                Liveness::new(cfg, Instant::now()).unwrap_err(),
                LivenessConfigError::ZeroDuration { name }
            );
        }
        for grace in [0.99, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = LivenessConfig { grace, ..base() };
            assert!(matches!(
                cfg.validate(),
                Err(LivenessConfigError::InvalidGrace { .. })
            ));
        }
        let cfg = LivenessConfig {
            peer_interval: Some(Duration::MAX),
            grace: 2.0,
            ..base()
        };
        assert!(matches!(
            cfg.validate(),
            Err(LivenessConfigError::SilenceLimitOverflow { grace, .. }) if grace == 2.0
        ));
        // Grace exactly 1 is fine.
        let cfg = LivenessConfig {
            peer_interval: Some(secs(1)),
            grace: 1.0,
            ..base()
        };
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn ping_only_after_quiet() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(5)));
        lv.handle_timeout(t0 + secs(5) - ms(1));
        assert_eq!(drain(&mut lv), []);
        lv.handle_timeout(t0 + secs(5));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        assert_eq!(lv.outstanding_ping(), Some(0u64.to_be_bytes()));
        // No second ping while one is awaiting: the only deadline is the timeout.
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(8)));
        lv.handle_timeout(t0 + secs(7));
        assert_eq!(drain(&mut lv), []);
    }

    #[test]
    fn any_inbound_bytes_postpone_pings() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        lv.on_receive(t0 + secs(3));
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(8)));
        lv.handle_timeout(t0 + secs(5)); // the stale timer
        assert_eq!(drain(&mut lv), []);
        // The peer's own ping is inbound bytes too.
        assert_eq!(lv.on_ping(t0 + secs(7)), PingAction::Pong);
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(12)));
        // And so is an unknown pong.
        assert_eq!(lv.on_pong([9; 8], t0 + secs(9)), None);
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(14)));
        assert_eq!(lv.last_received(), t0 + secs(9));
        // Traffic every 4 s for a long time: never a ping.
        for k in 1..=100u64 {
            let t = t0 + secs(9) + secs(4 * k);
            lv.handle_timeout(t);
            lv.on_receive(t);
        }
        assert_eq!(drain(&mut lv), []);
    }

    #[test]
    fn our_sends_do_not_postpone_pings() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        lv.on_send(t0 + secs(2));
        lv.on_send_data(t0 + secs(4));
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(5)));
        assert_eq!(lv.last_sent(), t0 + secs(4));
    }

    #[test]
    fn unanswered_ping_is_death_at_exactly_sent_plus_timeout() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        lv.handle_timeout(t0 + secs(5));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        lv.on_send(t0 + secs(5));
        lv.handle_timeout(t0 + secs(8) - ms(1));
        assert_eq!(drain(&mut lv), []);
        assert!(!lv.is_dead());
        lv.handle_timeout(t0 + secs(8));
        assert_eq!(
            drain(&mut lv),
            [LivenessEvent::PeerDead {
                silent_for: secs(8),
                last_received: t0,
                cause: DeathCause::PingTimeout {
                    context: 0u64.to_be_bytes(),
                    timeout: secs(3)
                },
            }]
        );
        assert!(lv.is_dead());
        // Terminal: nothing scheduled, inputs ignored, no more events.
        assert_eq!(lv.poll_timeout(), None);
        lv.on_receive(t0 + secs(9));
        assert_eq!(lv.on_pong(0u64.to_be_bytes(), t0 + secs(9)), None);
        assert_eq!(lv.on_ping(t0 + secs(9)), PingAction::Pong);
        lv.handle_timeout(t0 + secs(1000));
        assert_eq!(drain(&mut lv), []);
        assert_eq!(lv.poll_timeout(), None);
        assert!(lv.is_dead());
        assert_eq!(lv.last_received(), t0);
    }

    #[test]
    fn pong_before_timeout_keeps_alive() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        lv.handle_timeout(t0 + secs(5));
        let pong_at = t0 + secs(8) - ms(1);
        assert_eq!(
            lv.on_pong(0u64.to_be_bytes(), pong_at),
            Some(secs(3) - ms(1))
        );
        assert_eq!(lv.outstanding_ping(), None);
        lv.handle_timeout(t0 + secs(8));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        assert_eq!(lv.poll_timeout(), Some(pong_at + secs(5)));
        lv.handle_timeout(pong_at + secs(5));
        assert_eq!(drain(&mut lv), [ping_ctx(1)]);
    }

    #[test]
    fn other_traffic_ends_the_wait_and_a_late_pong_still_measures_rtt() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        lv.handle_timeout(t0 + secs(5));
        drain(&mut lv);
        lv.on_receive(t0 + secs(6)); // data, not the pong
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(11)));
        lv.handle_timeout(t0 + secs(8)); // the old ping deadline: not dead
        assert_eq!(drain(&mut lv), []);
        // The pong arrives late: still the latest ping, so it is an RTT sample.
        assert_eq!(lv.on_pong(0u64.to_be_bytes(), t0 + secs(10)), Some(secs(5)));
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(15)));
    }

    #[test]
    fn stale_and_unknown_pongs_are_ignored() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        assert_eq!(lv.on_pong(0u64.to_be_bytes(), t0 + ms(1)), None); // no ping sent yet
        lv.handle_timeout(t0 + ms(5001));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        lv.on_receive(t0 + secs(6)); // ends the wait, the pong of ping 0 is delayed
        lv.handle_timeout(t0 + secs(11));
        assert_eq!(drain(&mut lv), [ping_ctx(1)]);
        // Pong 0 arrives now: stale (ping 1 replaced it), but it is inbound bytes.
        assert_eq!(lv.on_pong(0u64.to_be_bytes(), t0 + secs(12)), None);
        assert_eq!(lv.rtt(), None);
        assert!(!lv.is_dead());
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(17)));
        assert_eq!(lv.on_pong(77u64.to_be_bytes(), t0 + secs(13)), None);
        assert_eq!(lv.on_pong(1u64.to_be_bytes(), t0 + secs(14)), Some(secs(3)));
        // A duplicate is ignored.
        assert_eq!(lv.on_pong(1u64.to_be_bytes(), t0 + secs(15)), None);
        assert_eq!(lv.rtt().unwrap().samples, 1);
    }

    #[test]
    fn passive_peer_interval_times_grace() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            peer_interval: Some(secs(10)),
            ..LivenessConfig::passive()
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(15)));
        lv.on_receive(t0 + secs(10));
        lv.handle_timeout(t0 + secs(15));
        lv.handle_timeout(t0 + secs(25) - ms(1));
        assert_eq!(drain(&mut lv), []);
        lv.handle_timeout(t0 + secs(25));
        assert_eq!(
            drain(&mut lv),
            [LivenessEvent::PeerDead {
                silent_for: secs(15),
                last_received: t0 + secs(10),
                cause: DeathCause::PeerSilent { limit: secs(15) },
            }]
        );
        assert_eq!(lv.poll_timeout(), None);
    }

    /// A peer that only consumes our stream sends nothing while we keep sending (its quiet
    /// timer keeps restarting): it must not be declared dead through its interval.
    #[test]
    fn peer_interval_runs_from_our_last_send_too() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            peer_interval: Some(secs(4)),
            ..LivenessConfig::passive()
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        for second in 1..=30 {
            lv.on_send_data(t0 + secs(second));
            lv.handle_timeout(t0 + secs(second));
            assert_eq!(drain(&mut lv), [], "at {second} s");
        }
        // We stop sending at 30 s; the peer owes a ping by 34 s, dead at 30 + 6 s.
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(36)));
        lv.handle_timeout(t0 + secs(36) - ms(1));
        assert_eq!(drain(&mut lv), []);
        lv.handle_timeout(t0 + secs(36));
        assert!(matches!(
            drain(&mut lv)[..],
            [LivenessEvent::PeerDead {
                cause: DeathCause::PeerSilent { .. },
                ..
            }]
        ));
    }

    #[test]
    fn passive_without_peer_interval_never_times_out() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(LivenessConfig::passive(), t0).unwrap();
        assert_eq!(lv.poll_timeout(), None);
        lv.handle_timeout(t0 + secs(1_000_000));
        assert_eq!(drain(&mut lv), []);
    }

    #[test]
    fn peer_interval_and_pinging_whichever_is_first() {
        let t0 = Instant::now();
        // Peer silence limit 6 s < interval + timeout = 8 s.
        let cfg = LivenessConfig {
            peer_interval: Some(secs(4)),
            ..pinging(secs(5), secs(3))
        };
        let mut lv = Liveness::new(cfg.clone(), t0).unwrap();
        lv.handle_timeout(t0 + secs(5));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(6)));
        lv.handle_timeout(t0 + secs(6));
        assert!(matches!(
            drain(&mut lv)[..],
            [LivenessEvent::PeerDead { cause: DeathCause::PeerSilent { limit }, .. }] if limit == secs(6)
        ));
        // Limit 12 s > 8 s: the ping timeout wins.
        let cfg = LivenessConfig {
            peer_interval: Some(secs(8)),
            ..cfg
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        lv.handle_timeout(t0 + secs(5));
        drain(&mut lv);
        lv.handle_timeout(t0 + secs(8));
        assert!(matches!(
            drain(&mut lv)[..],
            [LivenessEvent::PeerDead {
                cause: DeathCause::PingTimeout { .. },
                ..
            }]
        ));
    }

    #[test]
    fn death_at_exactly_interval_plus_timeout_after_last_bytes() {
        let t0 = Instant::now();
        let (i, t) = (secs(5), secs(3));
        let mut lv = Liveness::new(pinging(i, t), t0).unwrap();
        // The peer answers a ping, then goes silent: worst case.
        lv.handle_timeout(t0 + i);
        lv.on_pong(0u64.to_be_bytes(), t0 + i + ms(20));
        let silent_from = t0 + i + ms(20);
        let mut dead_at = None;
        while let Some((at, events)) = step(&mut lv, t0 + secs(100)) {
            if events
                .iter()
                .any(|e| matches!(e, LivenessEvent::PeerDead { .. }))
            {
                dead_at = Some(at);
            }
        }
        assert_eq!(dead_at, Some(silent_from + i + t));
    }

    #[test]
    fn idle_events_once_per_period_and_rearmed_by_activity() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            reader_idle: Some(secs(2)),
            writer_idle: Some(secs(3)),
            all_idle: Some(secs(4)),
            ..LivenessConfig::passive()
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        let idle = LivenessEvent::Idle;
        assert_eq!(
            step(&mut lv, t0 + secs(100)),
            Some((t0 + secs(2), vec![idle(IdleKind::ReaderIdle)]))
        );
        assert_eq!(
            step(&mut lv, t0 + secs(100)),
            Some((t0 + secs(3), vec![idle(IdleKind::WriterIdle)]))
        );
        assert_eq!(
            step(&mut lv, t0 + secs(100)),
            Some((t0 + secs(4), vec![idle(IdleKind::AllIdle)]))
        );
        // Once per idle period.
        assert_eq!(lv.poll_timeout(), None);
        lv.handle_timeout(t0 + secs(100));
        assert_eq!(drain(&mut lv), []);
        // Receiving re-arms reader and all, not writer.
        lv.on_receive(t0 + secs(100));
        assert_eq!(
            step(&mut lv, t0 + secs(200)),
            Some((t0 + secs(102), vec![idle(IdleKind::ReaderIdle)]))
        );
        assert_eq!(
            step(&mut lv, t0 + secs(200)),
            Some((t0 + secs(104), vec![idle(IdleKind::AllIdle)]))
        );
        assert_eq!(lv.poll_timeout(), None);
        // Sending re-arms writer and all.
        lv.on_send(t0 + secs(105));
        assert_eq!(
            step(&mut lv, t0 + secs(200)),
            Some((t0 + secs(108), vec![idle(IdleKind::WriterIdle)]))
        );
        assert_eq!(
            step(&mut lv, t0 + secs(200)),
            Some((t0 + secs(109), vec![idle(IdleKind::AllIdle)]))
        );
        // Activity before the period ends postpones the event.
        lv.on_receive(t0 + secs(110));
        lv.on_receive(t0 + secs(111));
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(113)));
        lv.handle_timeout(t0 + secs(112));
        assert_eq!(drain(&mut lv), []);
    }

    #[test]
    fn late_timeout_emits_due_events_in_deadline_order() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            reader_idle: Some(secs(3)),
            writer_idle: Some(secs(1)),
            all_idle: Some(secs(3)),
            ..pinging(secs(2), secs(1))
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        lv.handle_timeout(t0 + secs(10));
        // Writer (1 s), ping (2 s), reader (3 s), all (3 s); the ping timeout starts at the
        // actual send time (10 s), so death is not due yet.
        assert_eq!(
            drain(&mut lv),
            [
                LivenessEvent::Idle(IdleKind::WriterIdle),
                ping_ctx(0),
                LivenessEvent::Idle(IdleKind::ReaderIdle),
                LivenessEvent::Idle(IdleKind::AllIdle),
            ]
        );
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(11)));
        lv.handle_timeout(t0 + secs(11));
        assert!(
            matches!(drain(&mut lv)[..], [LivenessEvent::PeerDead { silent_for, .. }] if silent_for == secs(11))
        );
    }

    #[test]
    fn idle_events_due_with_death_come_first_and_nothing_after_death() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            peer_interval: Some(secs(2)),
            grace: 1.5,
            reader_idle: Some(secs(3)),
            writer_idle: Some(secs(4)),
            ..LivenessConfig::passive()
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        lv.handle_timeout(t0 + secs(10));
        let events = drain(&mut lv);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], LivenessEvent::Idle(IdleKind::ReaderIdle));
        assert!(matches!(events[1], LivenessEvent::PeerDead { .. }));
    }

    #[test]
    fn rtt_follows_rfc6298_by_hand() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(pinging(secs(1), secs(10)), t0).unwrap();
        let mut t = t0;
        let mut sample = |lv: &mut Liveness, rtt: Duration| {
            let at = lv.poll_timeout().unwrap();
            lv.handle_timeout(at);
            let Some(LivenessEvent::SendPing { context }) = lv.poll_event() else {
                panic!()
            };
            t = at + rtt;
            assert_eq!(lv.on_pong(context, t), Some(rtt));
            lv.rtt().unwrap()
        };
        // R = 100 ms: SRTT = 100, RTTVAR = 50.
        let r = sample(&mut lv, ms(100));
        assert_eq!(
            (r.smoothed, r.variance, r.min, r.latest, r.samples),
            (ms(100), ms(50), ms(100), ms(100), 1)
        );
        // R = 200 ms: RTTVAR = 3/4·50 + 1/4·|100 − 200| = 62.5; SRTT = 7/8·100 + 1/8·200 = 112.5.
        let r = sample(&mut lv, ms(200));
        assert_eq!(
            (r.smoothed, r.variance),
            (
                Duration::from_micros(112_500),
                Duration::from_micros(62_500)
            )
        );
        assert_eq!((r.min, r.latest, r.samples), (ms(100), ms(200), 2));
        // R = 50 ms: RTTVAR = 3/4·62.5 + 1/4·|112.5 − 50| = 62.5; SRTT = 7/8·112.5 + 1/8·50 = 104.6875.
        let r = sample(&mut lv, ms(50));
        assert_eq!(
            (r.smoothed, r.variance),
            (
                Duration::from_nanos(104_687_500),
                Duration::from_micros(62_500)
            )
        );
        assert_eq!((r.min, r.latest, r.samples), (ms(50), ms(50), 3));
        assert_eq!(
            r.timeout(ms(1)),
            Duration::from_nanos(104_687_500 + 250_000_000)
        );
        // A zero sample (pong in the same instant) is fine.
        let r = sample(&mut lv, Duration::ZERO);
        assert_eq!(r.min, Duration::ZERO);
    }

    #[test]
    fn too_many_pings_strikes_and_reset() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            min_peer_ping_interval: Some(secs(1)),
            max_ping_strikes: 2,
            ..LivenessConfig::default()
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        assert_eq!(lv.on_ping(t0), PingAction::Pong); // first ping: no previous, no strike
        assert_eq!(lv.on_ping(t0 + secs(1)), PingAction::Pong); // exactly the minimum: fine
        assert_eq!(lv.ping_strikes(), 0);
        assert_eq!(lv.on_ping(t0 + ms(1500)), PingAction::Pong); // strike 1
        assert_eq!(lv.on_ping(t0 + ms(2000)), PingAction::Pong); // strike 2
        assert_eq!(lv.ping_strikes(), 2);
        assert_eq!(drain(&mut lv), []);
        // Our pongs (control sends) do not reset strikes.
        lv.on_send(t0 + ms(2001));
        assert_eq!(lv.on_ping(t0 + ms(2100)), PingAction::TooManyPings); // strike 3 > 2
        assert_eq!(
            drain(&mut lv),
            [LivenessEvent::TooManyPings {
                strikes: 3,
                min_interval: secs(1),
                last_gap: ms(100)
            }]
        );
        // Still too many, but the event is not repeated. Time alone does not reset.
        assert_eq!(lv.on_ping(t0 + secs(60)), PingAction::TooManyPings);
        assert_eq!(drain(&mut lv), []);
        // Sending data resets strikes and forgets the last ping.
        lv.on_send_data(t0 + secs(61));
        assert_eq!(lv.ping_strikes(), 0);
        assert_eq!(lv.on_ping(t0 + secs(61)), PingAction::Pong);
        assert_eq!(lv.on_ping(t0 + secs(61)), PingAction::Pong); // strike 1
        assert_eq!(lv.ping_strikes(), 1);
        assert!(!lv.is_dead());
        // Strikes can be exceeded again: a new event.
        lv.on_ping(t0 + secs(61));
        lv.on_ping(t0 + secs(61));
        assert!(matches!(
            drain(&mut lv)[..],
            [LivenessEvent::TooManyPings { strikes: 3, .. }]
        ));
    }

    #[test]
    fn no_strike_policy_accepts_any_ping_rate() {
        let t0 = Instant::now();
        let mut lv = Liveness::new(LivenessConfig::default(), t0).unwrap();
        for _ in 0..1000 {
            assert_eq!(lv.on_ping(t0), PingAction::Pong);
        }
        assert_eq!(lv.ping_strikes(), 0);
        // Zero strikes tolerated: the first fast ping is too many.
        let cfg = LivenessConfig {
            min_peer_ping_interval: Some(secs(1)),
            max_ping_strikes: 0,
            ..LivenessConfig::default()
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        assert_eq!(lv.on_ping(t0), PingAction::Pong);
        assert_eq!(lv.on_ping(t0), PingAction::TooManyPings);
    }

    #[test]
    fn spurious_and_backwards_calls_are_harmless() {
        let base = Instant::now();
        let t0 = base + secs(1000);
        let mut lv = Liveness::new(pinging(secs(5), secs(3)), t0).unwrap();
        for k in 0..50u64 {
            lv.handle_timeout(t0 + ms(k * 99));
        }
        assert_eq!(drain(&mut lv), []);
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(5)));
        // Earlier than creation.
        lv.handle_timeout(base);
        lv.on_receive(base);
        assert_eq!(lv.last_received(), t0 + ms(49 * 99)); // raised to the latest time seen
        lv.on_receive(t0 + secs(10));
        lv.on_receive(t0 + secs(2)); // backwards: treated as t0 + 10 s
        assert_eq!(lv.last_received(), t0 + secs(10));
        assert_eq!(lv.poll_timeout(), Some(t0 + secs(15)));
        lv.handle_timeout(t0 + secs(15));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        // A pong stamped before the ping went out gives a zero sample, not a panic.
        assert_eq!(lv.on_pong(0u64.to_be_bytes(), t0), Some(Duration::ZERO));
        lv.on_ping(base);
        lv.on_send_data(base);
        lv.handle_timeout(base);
        assert_eq!(drain(&mut lv), []);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            ping_interval: Some(Duration::MAX),
            ping_timeout: Duration::MAX,
            peer_interval: Some(Duration::from_secs(u64::MAX / 2)),
            grace: 1.0,
            reader_idle: Some(Duration::MAX),
            writer_idle: Some(Duration::MAX),
            all_idle: Some(Duration::MAX),
            min_peer_ping_interval: Some(Duration::MAX),
            max_ping_strikes: u32::MAX,
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        assert_eq!(lv.poll_timeout(), None);
        lv.handle_timeout(t0 + secs(1 << 40));
        lv.on_ping(t0);
        lv.on_ping(t0);
        assert_eq!(drain(&mut lv), []);
        // A ping timeout that overflows: the ping goes out, death is never scheduled.
        let cfg = LivenessConfig {
            ping_timeout: Duration::MAX,
            ..pinging(secs(1), secs(1))
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        lv.handle_timeout(t0 + secs(1));
        assert_eq!(drain(&mut lv), [ping_ctx(0)]);
        assert_eq!(lv.poll_timeout(), None);
    }

    #[test]
    fn ten_thousand_intervals_without_drift() {
        let t0 = Instant::now();
        let (i, t, rtt) = (secs(5), secs(5), ms(10));
        let cfg = LivenessConfig {
            writer_idle: Some(secs(7)),
            ..pinging(i, t)
        };
        let mut lv = Liveness::new(cfg, t0).unwrap();
        let mut pings = 0u64;
        let mut writer_idles = 0u64;
        let mut last_pong = t0;
        while pings < 10_000 {
            let at = lv.poll_timeout().expect("always something scheduled");
            lv.handle_timeout(at);
            for event in drain(&mut lv) {
                match event {
                    LivenessEvent::SendPing { context } => {
                        assert_eq!(u64::from_be_bytes(context), pings);
                        // Ping n (from 0) goes out at (n + 1)·I + n·rtt exactly.
                        let expected = t0 + i * (pings as u32 + 1) + rtt * pings as u32;
                        assert_eq!(at, expected);
                        assert_eq!(at, last_pong + i);
                        lv.on_send(at);
                        last_pong = at + rtt;
                        assert_eq!(lv.on_pong(context, last_pong), Some(rtt));
                        pings += 1;
                    }
                    LivenessEvent::Idle(IdleKind::WriterIdle) => writer_idles += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(!lv.is_dead());
        assert_eq!(writer_idles, 0); // a ping goes out every 5.01 s < 7 s
        let r = lv.rtt().unwrap();
        assert_eq!(
            (r.smoothed, r.variance, r.min, r.samples),
            (rtt, Duration::ZERO, rtt, 10_000)
        );
        assert_eq!(lv.last_received(), t0 + i * 10_000 + rtt * 10_000);
    }

    /// Runs a peer that sends traffic at the given moments and answers pings after `rtt`, until
    /// it goes silent at `silence`; returns (death time, time of the last bytes delivered, event).
    fn run_until_dead(
        config: LivenessConfig,
        traffic: &[Duration],
        rtt: Duration,
        silence: Duration,
    ) -> (Duration, Duration, LivenessEvent) {
        let t0 = Instant::now();
        let mut lv = Liveness::new(config, t0).unwrap();
        let mut traffic: VecDeque<Duration> =
            traffic.iter().copied().filter(|&t| t < silence).collect();
        let mut pongs: VecDeque<(Duration, [u8; 8])> = VecDeque::new();
        let mut last_delivered = Duration::ZERO;
        let mut clock = Duration::ZERO;
        for _ in 0..1_000_000 {
            let timer = lv
                .poll_timeout()
                .expect("a dead-or-alive machine always has a deadline")
                .duration_since(t0);
            let data = traffic.front().copied();
            let pong = pongs.front().map(|p| p.0).filter(|&p| p < silence);
            let input = match (data, pong) {
                (Some(d), Some(p)) => Some(d.min(p)),
                (d, p) => d.or(p),
            };
            match input {
                Some(at) if at <= timer => {
                    assert!(at >= clock);
                    clock = at;
                    if Some(at) == pong {
                        let (_, ctx) = pongs.pop_front().unwrap();
                        lv.on_pong(ctx, t0 + at);
                    } else {
                        traffic.pop_front();
                        lv.on_receive(t0 + at);
                    }
                    last_delivered = at;
                }
                _ => {
                    assert!(
                        timer >= clock,
                        "deadline {timer:?} before the clock {clock:?}"
                    );
                    clock = timer;
                    lv.handle_timeout(t0 + timer);
                    let events = drain(&mut lv);
                    assert!(!events.is_empty(), "a deadline with nothing due");
                    for event in events {
                        match event {
                            LivenessEvent::SendPing { context } => {
                                lv.on_send(t0 + timer);
                                pongs.push_back((timer + rtt, context));
                            }
                            LivenessEvent::PeerDead { .. } => {
                                return (timer, last_delivered, event)
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
            }
        }
        panic!("never declared dead");
    }

    proptest! {
        /// Pinging only: whatever the traffic, death comes exactly interval + timeout after the
        /// last inbound bytes, within interval + timeout of the moment of silence, and not before
        /// silence + timeout − rtt (an answering peer is never declared dead).
        #[test]
        fn detection_latency_is_bounded(
            interval_ms in 1u64..5_000,
            timeout_ms in 1u64..5_000,
            rtt_frac in 0.0f64..1.0,
            gaps in proptest::collection::vec(0u64..12_000, 0..40),
            silence_ms in 0u64..60_000,
        ) {
            let (i, t) = (ms(interval_ms), ms(timeout_ms));
            let rtt = ms(((timeout_ms - 1) as f64 * rtt_frac) as u64);
            let traffic: Vec<Duration> = gaps.iter().scan(Duration::ZERO, |acc, &g| { *acc += ms(g); Some(*acc) }).collect();
            let silence = ms(silence_ms);
            let (dead, last, event) = run_until_dead(pinging(i, t), &traffic, rtt, silence);
            prop_assert_eq!(dead, last + i + t);
            prop_assert!(last <= silence);
            prop_assert!(dead <= silence + i + t, "dead at {:?}, silent at {:?}", dead, silence);
            prop_assert!(dead >= silence + t - rtt, "dead at {:?}, silent at {:?}", dead, silence);
            let is_ping_timeout = matches!(
                event,
                LivenessEvent::PeerDead { cause: DeathCause::PingTimeout { .. }, silent_for, .. } if silent_for == i + t
            );
            prop_assert!(is_ping_timeout, "{:?}", event);
        }

        /// With a declared peer interval too: the passive limit runs from the later of the
        /// peer's last bytes and our last send, and our own ping is a send. So death comes at
        /// `limit` after the last bytes when that is before the ping is due, else at
        /// `interval + min(timeout, limit)`.
        #[test]
        fn detection_with_peer_interval(
            interval_ms in 1u64..5_000,
            timeout_ms in 1u64..5_000,
            peer_ms in 1u64..8_000,
            grace_halves in 2u32..6,
            gaps in proptest::collection::vec(0u64..12_000, 0..20),
            silence_ms in 0u64..40_000,
        ) {
            let grace = f64::from(grace_halves) / 2.0;
            let (i, t) = (ms(interval_ms), ms(timeout_ms));
            let cfg = LivenessConfig { peer_interval: Some(ms(peer_ms)), grace, ..pinging(i, t) };
            let limit = cfg.peer_silence_limit().unwrap().unwrap();
            let traffic: Vec<Duration> = gaps.iter().scan(Duration::ZERO, |acc, &g| { *acc += ms(g); Some(*acc) }).collect();
            let (dead, last, _) = run_until_dead(cfg, &traffic, Duration::ZERO, ms(silence_ms));
            let expected = if limit <= i { limit } else { i + t.min(limit) };
            prop_assert_eq!(dead, last + expected);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Receive,
        Send,
        SendData,
        Ping,
        PongOutstanding,
        PongOther(u64),
        /// handle_timeout at poll_timeout().
        TimeoutAtDeadline,
        /// handle_timeout at the op's own time.
        Timeout,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Receive),
            1 => Just(Op::Send),
            1 => Just(Op::SendData),
            2 => Just(Op::Ping),
            2 => Just(Op::PongOutstanding),
            1 => (0u64..4).prop_map(Op::PongOther),
            4 => Just(Op::TimeoutAtDeadline),
            2 => Just(Op::Timeout),
        ]
    }

    fn opt_ms(max: u64) -> impl Strategy<Value = Option<Duration>> {
        proptest::option::of((1..max).prop_map(ms))
    }

    fn config() -> impl Strategy<Value = LivenessConfig> {
        (
            (opt_ms(3_000), 1u64..3_000, opt_ms(3_000), 2u32..5),
            (
                opt_ms(3_000),
                opt_ms(3_000),
                opt_ms(3_000),
                opt_ms(1_000),
                0u32..4,
            ),
        )
            .prop_map(
                |((pi, pt, peer, gh), (r, w, a, minp, strikes))| LivenessConfig {
                    ping_interval: pi,
                    ping_timeout: ms(pt),
                    peer_interval: peer,
                    grace: f64::from(gh) / 2.0,
                    reader_idle: r,
                    writer_idle: w,
                    all_idle: a,
                    min_peer_ping_interval: minp,
                    max_ping_strikes: strikes,
                },
            )
    }

    proptest! {
        /// Random inputs, timeouts and clock jitter (including time going backwards): no panic;
        /// inputs only ever queue TooManyPings; a timeout yields events only when a deadline is
        /// at or before it, and always does when one is; nothing is due before `poll_timeout()`;
        /// afterwards every deadline is in the future; ping contexts count up; death is terminal.
        #[test]
        fn random_sequences_keep_the_invariants(
            config in config(),
            ops in proptest::collection::vec((op(), -200i64..2_000), 1..200),
        ) {
            let base = Instant::now();
            let t0 = base + secs(10);
            let mut lv = Liveness::new(config.clone(), t0).unwrap();
            let mut clock = t0; // the time of the next op (may go back)
            let mut latest = t0; // the latest time given to the machine
            let mut next_ping = 0u64;
            let mut was_dead = false;
            for (op, delta) in ops {
                clock = if delta >= 0 {
                    clock + ms(delta as u64)
                } else {
                    clock.checked_sub(ms(delta.unsigned_abs())).unwrap_or(base).max(base)
                };
                let deadline = lv.poll_timeout();
                let timeout_at = match op {
                    Op::TimeoutAtDeadline => Some(deadline.unwrap_or(clock)),
                    Op::Timeout => Some(clock),
                    _ => None,
                };
                let now = timeout_at.unwrap_or(clock);
                let effective = latest.max(now);
                match op {
                    Op::Receive => lv.on_receive(now),
                    Op::Send => lv.on_send(now),
                    Op::SendData => lv.on_send_data(now),
                    Op::Ping => { lv.on_ping(now); }
                    Op::PongOutstanding => {
                        if let Some(ctx) = lv.outstanding_ping() {
                            prop_assert!(lv.on_pong(ctx, now).is_some());
                            prop_assert!(lv.rtt().is_some());
                        } else {
                            lv.on_receive(now);
                        }
                    }
                    Op::PongOther(n) => {
                        let ctx = next_ping.wrapping_add(n).to_be_bytes();
                        prop_assert_eq!(lv.on_pong(ctx, now), None);
                    }
                    Op::TimeoutAtDeadline | Op::Timeout => {
                        if let Some(d) = deadline {
                            // Nothing is due just before the reported deadline.
                            if let Some(before) = d.checked_sub(Duration::from_nanos(1)) {
                                if before >= latest {
                                    let mut probe = lv.clone();
                                    probe.handle_timeout(before);
                                    prop_assert_eq!(probe.poll_event(), None);
                                    prop_assert_eq!(probe.poll_timeout(), Some(d));
                                }
                            }
                        }
                        lv.handle_timeout(now);
                    }
                }
                latest = effective;
                clock = clock.max(now);
                let events = drain(&mut lv);
                let is_timeout = timeout_at.is_some();
                if is_timeout {
                    let due = deadline.is_some_and(|d| d <= effective);
                    prop_assert_eq!(due, !events.is_empty(), "deadline {:?}, now {:?}, events {:?}", deadline, effective, events);
                    if let Some(next) = lv.poll_timeout() {
                        prop_assert!(next > effective);
                    }
                }
                if was_dead {
                    prop_assert!(events.is_empty());
                    prop_assert_eq!(lv.poll_timeout(), None);
                }
                for event in &events {
                    match *event {
                        LivenessEvent::TooManyPings { strikes, .. } => {
                            prop_assert_eq!(strikes, config.max_ping_strikes + 1);
                        }
                        _ if !is_timeout => prop_assert!(false, "input produced {:?}", event),
                        LivenessEvent::SendPing { context } => {
                            prop_assert!(config.ping_interval.is_some());
                            prop_assert_eq!(u64::from_be_bytes(context), next_ping);
                            next_ping += 1;
                        }
                        LivenessEvent::PeerDead { silent_for, last_received, cause } => {
                            prop_assert!(last_received <= effective);
                            prop_assert_eq!(silent_for, effective - last_received);
                            if let DeathCause::PeerSilent { limit } = cause {
                                prop_assert!(silent_for >= limit);
                            }
                        }
                        LivenessEvent::Idle(_) => {}
                    }
                }
                if events.iter().any(|e| matches!(e, LivenessEvent::PeerDead { .. })) {
                    let dead_last = matches!(events.last(), Some(LivenessEvent::PeerDead { .. }));
                    prop_assert!(dead_last);
                    prop_assert!(lv.is_dead());
                }
                was_dead = lv.is_dead();
            }
        }
    }
}
