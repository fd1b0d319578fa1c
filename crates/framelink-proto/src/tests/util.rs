//! The shared simulator: [`Pair`], two machines joined by an in-memory link under a fake clock,
//! and helpers to drive or drain one machine.
//!
//! Time only moves when a test moves it (`now` is a field, never read from the system clock after
//! construction). The link can be **split** (deliver in random chunk sizes, [`Pair::max_chunk`]),
//! **frozen** (side `b` vanishes: it neither receives, transmits nor runs timers,
//! [`Pair::b_frozen`]), **throttled** (move at most a byte budget per step, [`Pair::pump`]) and
//! **cut** (bytes in flight lost, both sides see the stream end, [`Pair::cut`]).

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::connection::Event;
use crate::machine::Machine;

/// `n` seconds.
pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` milliseconds.
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A xorshift generator: deterministic, seedable, good enough to pick chunk sizes and cut points.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is avoided).
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next raw value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything `m` transmits at `now`, concatenated.
pub(crate) fn transmit_all<M: Machine>(m: &mut M, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = m.poll_transmit(now) {
        out.extend_from_slice(&b);
    }
    out
}

/// Every event `m` has pending.
pub(crate) fn events<M: Machine>(m: &mut M) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

/// The payloads of the [`Event::Data`] in `events`.
pub(crate) fn data_of(events: &[Event]) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Data(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// Handles every timeout of `m` up to and including `until`, returning the events and output.
pub(crate) fn run_until<M: Machine>(m: &mut M, until: Instant) -> (Vec<Event>, Vec<u8>) {
    let mut ev = Vec::new();
    let mut out = Vec::new();
    while let Some(at) = m.poll_timeout().filter(|&at| at <= until) {
        m.handle_timeout(at);
        out.extend(transmit_all(m, at));
        ev.extend(events(m));
    }
    (ev, out)
}

/// Two machines back to back through an in-memory link, under a fake clock.
#[derive(Debug)]
pub(crate) struct Pair<M: Machine> {
    /// One side (the client, in session tests).
    pub(crate) a: M,
    /// The other side (the server, in session tests).
    pub(crate) b: M,
    /// The fake clock.
    pub(crate) now: Instant,
    /// Deliver in chunks of random size up to this (0 = whole transmits).
    pub(crate) max_chunk: usize,
    pub(crate) rng: Rng,
    /// `b` has vanished: it neither receives, transmits nor runs timers.
    pub(crate) b_frozen: bool,
    /// Events collected by [`flush`](Self::flush).
    pub(crate) ev_a: Vec<Event>,
    pub(crate) ev_b: Vec<Event>,
    /// Everything each side transmitted through [`flush`](Self::flush).
    pub(crate) wire_ab: Vec<u8>,
    pub(crate) wire_ba: Vec<u8>,
}

impl<M: Machine> Pair<M> {
    /// `a` and `b`, both created at `now`.
    pub(crate) fn new(a: M, b: M, now: Instant) -> Self {
        Pair {
            a,
            b,
            now,
            max_chunk: 0,
            rng: Rng::new(0x9E37_79B9_7F4A_7C15),
            b_frozen: false,
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            wire_ab: Vec::new(),
            wire_ba: Vec::new(),
        }
    }

    fn next_chunk(&mut self, left: usize) -> usize {
        if self.max_chunk == 0 {
            return left;
        }
        1 + (self.rng.next() as usize % self.max_chunk).min(left - 1)
    }

    /// Hands `bytes` to `b` (or `a`), in chunks as [`max_chunk`](Self::max_chunk) says.
    pub(crate) fn deliver(&mut self, to_b: bool, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.next_chunk(rest.len());
            let dst = if to_b { &mut self.b } else { &mut self.a };
            dst.recv_buf().extend_from_slice(&rest[..n]);
            dst.process_input(self.now);
            rest = &rest[n..];
        }
    }

    /// Moves everything both ways until quiet, then collects both sides' events.
    pub(crate) fn flush(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.a.poll_transmit(self.now) {
                moved = true;
                self.wire_ab.extend_from_slice(&bytes);
                if !self.b_frozen {
                    self.deliver(true, &bytes);
                }
            }
            if !self.b_frozen {
                while let Some(bytes) = self.b.poll_transmit(self.now) {
                    moved = true;
                    self.wire_ba.extend_from_slice(&bytes);
                    self.deliver(false, &bytes);
                }
            }
            if !moved {
                break;
            }
        }
        self.ev_a.extend(events(&mut self.a));
        self.ev_b.extend(events(&mut self.b));
    }

    /// Runs both sides' timers (and the link) up to `until`, then sets the clock to it.
    pub(crate) fn run_until(&mut self, until: Instant) {
        self.flush();
        for _ in 0..1_000_000 {
            let tb = if self.b_frozen {
                None
            } else {
                self.b.poll_timeout()
            };
            let next = [self.a.poll_timeout(), tb].into_iter().flatten().min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    if !self.b_frozen {
                        self.b.handle_timeout(self.now);
                    }
                    self.flush();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
        self.flush();
    }

    /// The payloads `b` received so far (collected by [`flush`](Self::flush)).
    pub(crate) fn data_b(&self) -> Vec<Bytes> {
        data_of(&self.ev_b)
    }

    /// Moves up to `budget` bytes (whole transmits, the last may overshoot) from `a` to `b`,
    /// then as much from `b` to `a`. Events are left in the machines.
    pub(crate) fn pump(&mut self, budget: usize) {
        for to_b in [true, false] {
            let mut moved = 0;
            while moved < budget {
                let (src, dst) = if to_b {
                    (&mut self.a, &mut self.b)
                } else {
                    (&mut self.b, &mut self.a)
                };
                let Some(chunk) = src.poll_transmit(self.now) else {
                    break;
                };
                moved += chunk.len();
                dst.recv_buf().extend_from_slice(&chunk);
                dst.process_input(self.now);
            }
        }
    }

    /// Advances the clock by `d` and lets both sides handle their timers. Events are left in the
    /// machines.
    pub(crate) fn tick(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }

    /// The link dies: `lost` rounds of output from each side are transmitted into the void, then
    /// both sides see the stream end. Events are left in the machines.
    pub(crate) fn cut(&mut self, lost: u64) {
        for _ in 0..lost {
            let _ = self.a.poll_transmit(self.now);
            let _ = self.b.poll_transmit(self.now);
        }
        self.a.handle_eof(self.now);
        self.b.handle_eof(self.now);
    }
}
