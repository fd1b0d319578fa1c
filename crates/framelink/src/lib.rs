//! # framelink
//!
//! Correct, robust message passing over TCP, on tokio. TCP is a byte stream: one read can hold
//! several messages glued together, or part of one. framelink restores the message boundaries
//! for every common framing (length field with Netty's options, varint, lines, delimiters, fixed
//! size, netstrings, magic + checksum with resynchronisation) with zero-copy decoding and limits
//! that hostile peers cannot get around.
//!
//! This crate is the runtime layer; the codecs live in the sans-IO crate `framelink-proto`
//! (re-exported whole as [`proto`]). A [`Framing`] plugs into tokio-util's `Framed`:
//!
//! ```no_run
//! use futures::{SinkExt, StreamExt};
//! use tokio::net::TcpStream;
//! use tokio_util::codec::Framed;
//! use framelink::Framing;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let stream = TcpStream::connect("127.0.0.1:7000").await?;
//! let framing: Framing = "length:4,max=1MiB".parse()?;
//! let mut framed = Framed::new(stream, framing);
//! framed.send("hello").await?;
//! while let Some(frame) = framed.next().await {
//!     println!("got {} bytes", frame?.len());
//! }
//! # Ok(()) }
//! ```
//!
//! For large payloads, [`io::write_frame`] sends header and payload with one vectored write,
//! without copying the payload.
//!
//! [`socket::SocketOptions`] sets `TCP_NODELAY`, keepalive probes and `TCP_USER_TIMEOUT` on a
//! connected stream, so that half-open connections are noticed.
//!
//! [`tls`] adds TLS and mutual TLS (rustls) to servers, clients and raw mode.
//!
//! # Where things are
//!
//! Each public item has one path. The types an application works with are at the crate root:
//! the reconnecting [`Client`] (with [`ClientConfig`], [`ClientEvent`], [`ClientSender`]), the
//! [`Server`] (with [`ServerConfig`], [`ServerHandle`], [`Incoming`], [`ServerSessions`],
//! [`LostSession`] and the other server types), a [`Connection`] (its [`Sender`] and
//! [`Receiver`], the [`Event`]s it reports, [`SessionEvent`], [`CloseInfo`]), what it speaks
//! ([`Protocol`]), the framing ([`Framing`] and its errors), [`RawConfig`], [`SessionConfig`],
//! [`BackoffConfig`] and [`Error`]. The modules hold the rest: [`connection`] (spawning a
//! driver over any byte stream, [`DriverConfig`](connection::DriverConfig), and the
//! protocol's value types: [`ConnectionConfig`](connection::ConnectionConfig),
//! [`CloseCode`](connection::CloseCode), [`SendError`](connection::SendError)...), [`io`],
//! [`socket`] and [`tls`]. [`proto`] is the sans-IO crate `framelink-proto` itself, for its
//! state machines and the individual codecs (`proto::codec`); the types above that come from
//! it are the same types under its own paths.
//!
//! The seeded chaos proxy used to test all this (it forwards TCP while splitting, coalescing
//! and delaying writes and cutting links: FIN, RST, blackhole, stall) is its own crate,
//! `framelink-chaos`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod client;
pub mod connection;
pub mod io;
mod memory;
mod server;
pub mod socket;
pub mod tls;

pub use client::{Client, ClientConfig, ClientEvent, ClientSender};
pub use connection::event::{CloseInfo, Event, SessionEvent};
pub use connection::handle::{Connection, Receiver, Sender};
pub use connection::protocol::Protocol;
pub use framelink_proto::backoff::{BackoffConfig, Jitter};
pub use framelink_proto::codec::{
    DecodeError, DecodeErrorKind, EncodeError, FrameDecoder, FrameEncoder, FrameError, Framing,
};
pub use framelink_proto::raw::{FrameMatcher, RawConfig};
pub use framelink_proto::session::SessionConfig;
pub use framelink_proto::{self as proto};
pub use server::{
    default_memory_budget, Incoming, LostReason, LostSession, Server, ServerConfig, ServerHandle,
    ServerSessions, ServerStats, SessionSendError, ShutdownReport, MAX_REJECTING,
    NEW_CONNECTION_ROOM,
};

/// The README's Rust examples, compiled by `cargo test --doc` so that they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}

/// Why a [`Server`] or [`Client`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The protocol connection settings are invalid.
    #[error("invalid connection configuration: {0}")]
    Connection(#[from] connection::ConfigError),
    /// The raw-mode settings are invalid.
    #[error("invalid raw-mode configuration: {0}")]
    Raw(#[from] framelink_proto::raw::RawConfigError),
    /// The backoff settings are invalid.
    #[error("invalid backoff configuration: {0}")]
    Backoff(#[from] framelink_proto::backoff::BackoffConfigError),
    /// A TLS certificate, key or trust-root file is unusable.
    #[error("TLS configuration: {0}")]
    Tls(#[from] tls::TlsConfigError),
    /// Another setting is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The operating system refused (binding the address, for example).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
