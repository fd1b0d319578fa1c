//! [`Framing`]: any of the codecs behind one type, built from a text spec, so that configuration
//! files, the CLI and bindings can choose a framing at run time.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};

use super::{
    spec, ConfigError, DecodeError, DelimiterCodec, EncodeError, EncodedFrame, FixedLengthCodec,
    FrameDecoder, FrameEncoder, FrameParts, LengthFieldCodec, LinesCodec, MagicCodec,
    NetstringCodec, VarintCodec,
};

/// One of framelink's framings, chosen at run time.
///
/// Build it from a codec (`Framing::from(codec)`) or from a [spec](super::spec) string; its
/// `Display` prints the canonical spec back. It implements [`FrameDecoder`] and [`FrameEncoder`]
/// (and, with the `tokio-codec` feature, tokio-util's `Decoder`/`Encoder`).
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::{Framing, FrameDecoder, FrameEncoder};
///
/// let mut framing: Framing = "length:2,le,max=1KiB".parse().unwrap();
/// let mut wire = BytesMut::new();
/// framing.encode(b"hi", &mut wire).unwrap();
/// assert_eq!(&wire[..], b"\x02\x00hi");
/// assert_eq!(framing.decode(&mut wire).unwrap().unwrap(), "hi");
/// assert_eq!(framing.to_string(), "length:2,le,strip=2,max=1KiB");
/// ```
#[derive(Debug, Clone)]
pub enum Framing {
    /// Length field (Netty `LengthFieldBasedFrameDecoder` options).
    LengthField(LengthFieldCodec),
    /// Unsigned LEB128 length prefix.
    Varint(VarintCodec),
    /// Byte-sequence delimiters.
    Delimiter(DelimiterCodec),
    /// `\n` / `\r\n` lines.
    Lines(LinesCodec),
    /// Fixed-size frames.
    Fixed(FixedLengthCodec),
    /// Netstrings.
    Netstring(NetstringCodec),
    /// Magic + length + checksum header.
    Magic(MagicCodec),
}

/// Calls `$body` with `$c` bound to the codec inside any variant.
macro_rules! dispatch {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            Framing::LengthField($c) => $body,
            Framing::Varint($c) => $body,
            Framing::Delimiter($c) => $body,
            Framing::Lines($c) => $body,
            Framing::Fixed($c) => $body,
            Framing::Netstring($c) => $body,
            Framing::Magic($c) => $body,
        }
    };
}

impl Framing {
    /// Parses a framing spec; see [`spec`](super::spec) for the grammar.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        spec::parse(text)
    }

    /// A fresh copy with the same configuration and no decoding state.
    pub fn reset(&self) -> Self {
        // Codecs carry only their config and per-stream counters; rebuilding from the canonical
        // spec would lose nothing but is slower, so rebuild from the configs directly.
        match self {
            Framing::LengthField(c) => Framing::LengthField(
                LengthFieldCodec::new(c.config().clone()).expect("valid config"),
            ),
            Framing::Varint(c) => {
                Framing::Varint(VarintCodec::new(c.config().clone()).expect("valid config"))
            }
            Framing::Delimiter(c) => {
                Framing::Delimiter(DelimiterCodec::new(c.config().clone()).expect("valid config"))
            }
            Framing::Lines(c) => {
                Framing::Lines(LinesCodec::new(c.config().clone()).expect("valid config"))
            }
            Framing::Fixed(c) => {
                Framing::Fixed(FixedLengthCodec::new(c.config().clone()).expect("valid config"))
            }
            Framing::Netstring(c) => {
                Framing::Netstring(NetstringCodec::new(c.config().clone()).expect("valid config"))
            }
            Framing::Magic(c) => {
                Framing::Magic(MagicCodec::new(c.config().clone()).expect("valid config"))
            }
        }
    }
}

impl FrameDecoder for Framing {
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        dispatch!(self, c => c.decode(buf))
    }
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        dispatch!(self, c => c.decode_eof(buf))
    }
    fn consumed(&self) -> u64 {
        dispatch!(self, c => c.consumed())
    }
    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        dispatch!(self, c => c.pending_frame_length(buf))
    }
}

impl FrameEncoder for Framing {
    #[inline]
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        dispatch!(self, c => c.frame_parts(payload))
    }
    #[inline]
    fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        dispatch!(self, c => c.encode(payload, dst))
    }
    fn encode_vectored(&self, payload: Bytes) -> Result<EncodedFrame, EncodeError> {
        dispatch!(self, c => c.encode_vectored(payload))
    }
}

impl FromStr for Framing {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        spec::parse(s)
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&spec::render(self))
    }
}

macro_rules! from_codec {
    ($($codec:ident => $variant:ident),*) => {$(
        impl From<$codec> for Framing {
            fn from(c: $codec) -> Self {
                Framing::$variant(c)
            }
        }
    )*};
}
from_codec!(LengthFieldCodec => LengthField, VarintCodec => Varint, DelimiterCodec => Delimiter,
    LinesCodec => Lines, FixedLengthCodec => Fixed, NetstringCodec => Netstring, MagicCodec => Magic);
