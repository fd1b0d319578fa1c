//! # framelink-proto
//!
//! The sans-IO core of framelink: everything that decides *what* goes over a TCP connection,
//! with no sockets, no async runtime and no clock reads. Bytes go in, frames and events come out;
//! time, where it matters, is an argument. That makes every behaviour here deterministic and
//! testable without a network or a sleep, and lets the tokio layer (`framelink`), the CLI and
//! future language bindings share one implementation.
//!
//! - [`backoff`]: reconnect delays, exponential backoff with full (or equal) jitter; the caller
//!   supplies the random number.
//! - [`codec`]: framing codecs (length field, varint, delimiters, lines, fixed, netstring,
//!   magic + checksum) behind the [`codec::FrameDecoder`] / [`codec::FrameEncoder`] traits and the
//!   [`codec::Framing`] type built from a text spec.
//! - [`connection`]: the protocol v1 connection state machine (handshake, DATA, keep-alive
//!   PING / PONG, close handshake, timers), quinn-proto style: bytes and timer expiries in,
//!   bytes and events out.
//! - [`liveness`]: the keep-alive state machine (pings when quiet, dead-peer detection in bounded
//!   time, Netty-style idle events, ping-flood strikes, RFC 6298 RTT estimation).
//! - [`raw`]: keep-alive for peers that don't speak framelink's protocol: a user's framing, an
//!   optional ping frame and a pong matcher, driven by the same liveness machine.
//! - [`session`]: acknowledged sessions: sequence numbers, cumulative ACKs, a bounded
//!   retransmit buffer and resumption across connections, plus the accepting side's store of
//!   detached sessions.
//! - [`machine`]: the [`machine::Machine`] trait both connection kinds implement, so one runtime
//!   driver runs either.
//! - [`wire`]: the framelink wire protocol v1 (HELLO, DATA, PING, PONG, CLOSE, extensions) and its
//!   [`wire::WireCodec`], built on the length-field codec; specified in `docs/PROTOCOL.md`.

#![warn(missing_docs)]

pub mod auth;
pub mod backoff;
pub mod codec;
pub mod connection;
pub mod liveness;
pub mod machine;
pub mod raw;
pub mod session;
pub mod wire;

#[cfg(test)]
mod tests;

pub use codec::{FrameDecoder, FrameEncoder, Framing};
