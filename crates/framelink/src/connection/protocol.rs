//! [`Protocol`]: what a connection speaks.

use std::time::Duration;

use framelink_proto::connection::ConnectionConfig;
use framelink_proto::raw::RawConfig;

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
