//! Framing: turning a TCP byte stream back into the messages that were sent, and messages into bytes.
//!
//! TCP keeps no message boundaries: one read may return several messages glued together, or part of
//! one. Each codec here restores the boundaries for one framing scheme:
//!
//! | codec | wire format | typical users |
//! |---|---|---|
//! | [`LengthFieldCodec`] | length field anywhere in a header, Netty's full option set | most binary protocols, Netty peers |
//! | [`VarintCodec`] | unsigned LEB128 length prefix | protobuf delimited streams |
//! | [`DelimiterCodec`] | one or more byte-sequence delimiters | text protocols, NUL-terminated messages |
//! | [`LinesCodec`] | `\n` or `\r\n` | line protocols (SMTP, Redis inline, logs) |
//! | [`FixedLengthCodec`] | every frame N bytes | device and market-data protocols |
//! | [`NetstringCodec`] | `5:hello,` | netstring peers |
//! | [`MagicCodec`] | magic + length + optional CRC32/CRC32C, resynchronising | industrial and game protocols |
//!
//! All codecs are sans-IO: [`FrameDecoder::decode`] takes the read buffer and splits complete frames
//! off its front as [`bytes::Bytes`] that share the buffer's memory (no copy, no per-frame
//! allocation); [`FrameEncoder`] writes a frame either by copying into a buffer or as separate
//! header / payload / trailer chunks ([`EncodedFrame`]) for vectored writes. [`Framing`] wraps any of
//! them behind one type and is built from a text spec (see [`spec`]).
//!
//! Limits: every codec has a maximum frame length, checked as soon as a header is read, before any
//! of the frame is buffered. Buffers grow with the bytes that arrive, never by a declared length.

mod delimiter;
mod error;
mod fixed;
mod framing;
mod length_field;
mod magic;
mod netstring;
pub mod spec;
#[cfg(test)]
mod test_support;
#[cfg(feature = "tokio-codec")]
mod tokio_codec;
mod varint;

use bytes::{Buf, Bytes, BytesMut};

pub use delimiter::{DelimiterCodec, DelimiterConfig, LinesCodec, LinesConfig};
pub use error::{ConfigError, DecodeError, DecodeErrorKind, EncodeError};
pub use fixed::{FixedLengthCodec, FixedLengthConfig};
pub use framing::{AnyCodec, Framing, RecoveredErrors};
pub use length_field::{LengthFieldCodec, LengthFieldConfig};
pub use magic::{Checksum, MagicCodec, MagicConfig, ResyncPolicy};
pub use netstring::{NetstringCodec, NetstringConfig};
#[cfg(feature = "tokio-codec")]
pub use tokio_codec::FrameError;
pub use varint::{VarintCodec, VarintConfig};

/// Default maximum frame length for length-prefixed framings: 8 MiB.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 8 * 1024 * 1024;
/// Default maximum frame length for delimiter and line framings: 64 KiB.
pub const DEFAULT_MAX_LINE_LENGTH: usize = 64 * 1024;

/// What a decoder does with a frame longer than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OversizePolicy {
    /// Return a fatal [`DecodeErrorKind::FrameTooLong`]: the connection should be closed.
    #[default]
    Fail,
    /// Return a recoverable error once for the frame, then drop its bytes as they arrive (never
    /// buffering them) and carry on with the next frame. Netty's behaviour.
    Discard,
}

/// Byte order of a multi-byte integer field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    /// Network order, most significant byte first.
    #[default]
    BigEndian,
    /// Least significant byte first.
    LittleEndian,
}

impl ByteOrder {
    /// Reads an unsigned integer from all of `bytes` (at most 8).
    #[inline]
    pub(crate) fn read_uint(self, bytes: &[u8]) -> u64 {
        debug_assert!(bytes.len() <= 8);
        let mut v = 0u64;
        match self {
            ByteOrder::BigEndian => {
                for &b in bytes {
                    v = (v << 8) | u64::from(b);
                }
            }
            ByteOrder::LittleEndian => {
                for &b in bytes.iter().rev() {
                    v = (v << 8) | u64::from(b);
                }
            }
        }
        v
    }

    /// Writes the low `out.len()` bytes of `value` (caller checked it fits).
    #[inline]
    pub(crate) fn write_uint(self, value: u64, out: &mut [u8]) {
        let n = out.len();
        match self {
            ByteOrder::BigEndian => out.copy_from_slice(&value.to_be_bytes()[8 - n..]),
            ByteOrder::LittleEndian => out.copy_from_slice(&value.to_le_bytes()[..n]),
        }
    }
}

/// Turns the front of a read buffer into frames.
///
/// Call [`decode`](Self::decode) after every read until it returns `Ok(None)` (more bytes needed),
/// and [`decode_eof`](Self::decode_eof) once the peer has closed. A returned frame shares memory
/// with `buf`.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, LinesCodec};
///
/// let mut codec = LinesCodec::default();
/// // Two messages glued together, and the start of a third: one read from TCP.
/// let mut buf = BytesMut::from(&b"hello\r\nworld\nand th"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "hello");
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "world");
/// assert_eq!(codec.decode(&mut buf).unwrap(), None); // waits for the rest
/// buf.extend_from_slice(b"en\n");
/// assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), "and then");
/// ```
pub trait FrameDecoder {
    /// Splits the next complete frame off the front of `buf`, or returns `Ok(None)` when more bytes
    /// are needed. May consume bytes without returning a frame (headers, discarded data).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError>;

    /// Like [`decode`](Self::decode), for when the stream has ended: a partial frame left in `buf`
    /// is an error ([`DecodeErrorKind::Truncated`]) instead of a wait.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(DecodeError::fatal(
                DecodeErrorKind::Truncated {
                    buffered: buf.len(),
                    expected: self.pending_frame_length(buf),
                },
                self.consumed(),
            )),
        }
    }

    /// Total bytes this decoder has taken off the front of buffers (frames, headers, skipped and
    /// discarded bytes): the stream offset of the first byte still in the buffer.
    fn consumed(&self) -> u64;

    /// Full length of the partial frame at the front of `buf`, when its header has been read.
    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        let _ = buf;
        None
    }
}

/// Turns payloads into frames.
///
/// [`frame_parts`](Self::frame_parts) computes what goes before and after a payload;
/// [`encode`](Self::encode) copies a whole frame into a buffer and
/// [`encode_vectored`](Self::encode_vectored) returns it as chunks for `writev`, so a large payload
/// is never copied.
pub trait FrameEncoder {
    /// The bytes to write before and after `payload`, or why it cannot be sent.
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError>;

    /// Appends the complete frame for `payload` to `dst`. On error nothing is written.
    fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        let parts = self.frame_parts(payload)?;
        dst.reserve(parts.head.len() + payload.len() + parts.tail.len());
        dst.extend_from_slice(parts.head());
        dst.extend_from_slice(payload);
        dst.extend_from_slice(parts.tail());
        Ok(())
    }

    /// The frame for `payload` as header, payload and trailer chunks; the payload is not copied.
    /// The result implements [`bytes::Buf`] with [`chunks_vectored`](Buf::chunks_vectored), so
    /// `AsyncWriteExt::write_all_buf` or a `writev` sends it in one system call.
    fn encode_vectored(&self, payload: Bytes) -> Result<EncodedFrame, EncodeError> {
        let parts = self.frame_parts(&payload)?;
        Ok(EncodedFrame::new(parts, payload))
    }
}

/// Maximum bytes a codec puts before or after a payload (magic + length + checksum, a delimiter).
pub const MAX_FRAME_OVERHEAD: usize = 40;

/// A small inline byte string: a frame header or trailer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineBytes {
    len: u8,
    bytes: [u8; MAX_FRAME_OVERHEAD],
}

impl InlineBytes {
    /// An empty header or trailer.
    pub const EMPTY: InlineBytes = InlineBytes {
        len: 0,
        bytes: [0; MAX_FRAME_OVERHEAD],
    };

    /// Copies `src`. Panics if it is longer than [`MAX_FRAME_OVERHEAD`]; codecs check their
    /// configured overhead against that limit when they are built.
    pub fn from_slice(src: &[u8]) -> Self {
        let mut out = Self::EMPTY;
        out.bytes[..src.len()].copy_from_slice(src);
        out.len = src.len() as u8;
        out
    }

    /// Appends `src`, see [`from_slice`](Self::from_slice) for the size limit.
    pub fn push(&mut self, src: &[u8]) {
        let start = usize::from(self.len);
        self.bytes[start..start + src.len()].copy_from_slice(src);
        self.len += src.len() as u8;
    }

    /// Appends `n` zero bytes and returns them for the caller to fill.
    pub fn push_zeroed(&mut self, n: usize) -> &mut [u8] {
        let start = usize::from(self.len);
        self.len += n as u8;
        &mut self.bytes[start..start + n]
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

/// What a codec writes around a payload: a header before it and a trailer after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameParts {
    /// Bytes before the payload (length field, magic, checksum...).
    pub head: InlineBytes,
    /// Bytes after the payload (delimiter, netstring comma).
    pub tail: InlineBytes,
}

impl FrameParts {
    /// A header and no trailer.
    pub fn head(&self) -> &[u8] {
        self.head.as_slice()
    }
    /// The trailer.
    pub fn tail(&self) -> &[u8] {
        self.tail.as_slice()
    }
    /// Header only.
    pub fn with_head(head: &[u8]) -> Self {
        FrameParts {
            head: InlineBytes::from_slice(head),
            tail: InlineBytes::EMPTY,
        }
    }
    /// Trailer only.
    pub fn with_tail(tail: &[u8]) -> Self {
        FrameParts {
            head: InlineBytes::EMPTY,
            tail: InlineBytes::from_slice(tail),
        }
    }
}

/// One encoded frame as three chunks (header, payload, trailer), ready for a vectored write.
///
/// ```
/// use bytes::{Buf, Bytes};
/// use framelink_proto::codec::{FrameEncoder, LengthFieldCodec, LengthFieldConfig};
///
/// let codec = LengthFieldCodec::new(LengthFieldConfig::new(2)).unwrap();
/// let mut frame = codec.encode_vectored(Bytes::from_static(b"hello")).unwrap();
/// let mut slices = [std::io::IoSlice::new(&[]); 4];
/// assert_eq!(frame.chunks_vectored(&mut slices), 2); // header + payload, no copy
/// assert_eq!(frame.copy_to_bytes(frame.remaining()), &b"\x00\x05hello"[..]);
/// ```
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    parts: FrameParts,
    head_pos: usize,
    payload: Bytes,
    tail_pos: usize,
}

impl EncodedFrame {
    /// Joins parts computed by [`FrameEncoder::frame_parts`] with their payload.
    pub fn new(parts: FrameParts, payload: Bytes) -> Self {
        EncodedFrame {
            parts,
            head_pos: 0,
            payload,
            tail_pos: 0,
        }
    }

    /// The header and trailer.
    pub fn parts(&self) -> &FrameParts {
        &self.parts
    }
}

impl Buf for EncodedFrame {
    fn remaining(&self) -> usize {
        (self.parts.head.len() - self.head_pos)
            + self.payload.len()
            + (self.parts.tail.len() - self.tail_pos)
    }

    fn chunk(&self) -> &[u8] {
        if self.head_pos < self.parts.head.len() {
            &self.parts.head()[self.head_pos..]
        } else if !self.payload.is_empty() {
            &self.payload
        } else {
            &self.parts.tail()[self.tail_pos..]
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        let head_left = self.parts.head.len() - self.head_pos;
        let n = cnt.min(head_left);
        self.head_pos += n;
        cnt -= n;
        let n = cnt.min(self.payload.len());
        self.payload.advance(n);
        cnt -= n;
        let tail_left = self.parts.tail.len() - self.tail_pos;
        assert!(cnt <= tail_left, "advance past the end of an EncodedFrame");
        self.tail_pos += cnt;
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in [
            &self.parts.head()[self.head_pos..],
            &self.payload[..],
            &self.parts.tail()[self.tail_pos..],
        ] {
            if chunk.is_empty() {
                continue;
            }
            if n == dst.len() {
                break;
            }
            dst[n] = std::io::IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

/// Grows `buf` so that it can take the rest of a frame of `frame_len` bytes, but by no more than the
/// bytes already buffered (at least 4 KiB): memory follows what the peer actually sent, never what it
/// declared, while a large frame still needs only O(log n) reallocations.
#[inline]
pub(crate) fn reserve_for_frame(buf: &mut BytesMut, frame_len: usize) {
    let missing = frame_len.saturating_sub(buf.len());
    let step = missing.min(buf.len().max(4096));
    buf.reserve(step);
}
