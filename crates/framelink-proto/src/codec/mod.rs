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
mod lines;
mod magic;
mod netstring;
pub mod spec;
#[cfg(test)]
mod test_support;
#[cfg(feature = "tokio-codec")]
mod tokio_codec;
mod varint;

use bytes::{Buf, Bytes, BytesMut};

pub use delimiter::{DelimiterCodec, DelimiterConfig};
pub use error::{ConfigError, DecodeError, DecodeErrorKind, EncodeError};
pub use fixed::{FixedLengthCodec, FixedLengthConfig};
pub use framing::{AnyCodec, Framing, RecoveredErrors};
pub use length_field::{LengthFieldCodec, LengthFieldConfig};
pub use lines::{LinesCodec, LinesConfig};
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
        // The common widths as single loads; 3 (and anything else) by the loop below.
        match (self, bytes.len()) {
            (_, 1) => return u64::from(bytes[0]),
            (ByteOrder::BigEndian, 2) => {
                return u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))
            }
            (ByteOrder::LittleEndian, 2) => {
                return u64::from(u16::from_le_bytes([bytes[0], bytes[1]]))
            }
            (ByteOrder::BigEndian, 4) => {
                return u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            (ByteOrder::LittleEndian, 4) => {
                return u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            (ByteOrder::BigEndian, 8) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(bytes);
                return u64::from_be_bytes(a);
            }
            (ByteOrder::LittleEndian, 8) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(bytes);
                return u64::from_le_bytes(a);
            }
            _ => {}
        }
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

    /// [`decode`](Self::decode) while the stream is open, [`decode_eof`](Self::decode_eof) once
    /// it has ended: the one call a read loop needs.
    fn decode_with_eof(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Bytes>, DecodeError> {
        if eof {
            self.decode_eof(buf)
        } else {
            self.decode(buf)
        }
    }

    /// Like [`decode_with_eof`](Self::decode_with_eof), but lends the frame to `visit` as a
    /// slice of `buf` rather than splitting a [`Bytes`] off it, and returns what `visit`
    /// returns. For a caller that copies every frame anyway (the Python package, into a
    /// `bytes`): no shared handle is made, so no reference count is taken and dropped per
    /// frame. The frame is consumed from `buf` either way.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use framelink_proto::codec::{FrameDecoder, Framing};
    ///
    /// let mut framing: Framing = "length:2".parse().unwrap();
    /// let mut buf = BytesMut::from(&b"\x00\x03abc\x00\x01"[..]);
    /// assert_eq!(framing.decode_visit(&mut buf, false, |f| f.to_vec()).unwrap(), Some(b"abc".to_vec()));
    /// assert_eq!(framing.decode_visit(&mut buf, false, |f| f.len()).unwrap(), None);
    /// ```
    fn decode_visit<R>(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, DecodeError>
    where
        Self: Sized,
    {
        Ok(self.decode_with_eof(buf, eof)?.map(|frame| visit(&frame)))
    }

    /// Every frame complete in `buf`, in order, each lent to `visit` as
    /// [`decode_visit`](Self::decode_visit) lends one. `Ok(())` once more bytes are needed;
    /// otherwise the first error, the frames before it having been visited (after a
    /// recoverable one, call again to go on). Codecs that can find many frames in one pass
    /// over the buffer (lines) do so, and drop them from `buf` at once.
    fn decode_visit_all(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        mut visit: impl FnMut(&[u8]),
    ) -> Result<(), DecodeError>
    where
        Self: Sized,
    {
        while self.decode_visit(buf, eof, &mut visit)?.is_some() {}
        Ok(())
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

    /// Whether `payload` can be framed, without building the frame: the same answer as
    /// [`frame_parts`](Self::frame_parts), cheaper for codecs that decide from the length alone
    /// (length field, varint, fixed, netstring, magic: no header written, no checksum computed).
    /// A sender that checks a message when it is handed over and frames it later uses this.
    ///
    /// ```
    /// use framelink_proto::codec::{FrameEncoder, LengthFieldCodec, LengthFieldConfig};
    ///
    /// let codec = LengthFieldCodec::new(LengthFieldConfig { width: 1, ..Default::default() })?;
    /// assert!(codec.check_payload(&[0; 255]).is_ok());
    /// assert!(codec.check_payload(&[0; 256]).is_err()); // a 1-byte field holds at most 255
    /// # Ok::<(), framelink_proto::codec::ConfigError>(())
    /// ```
    #[inline]
    fn check_payload(&self, payload: &[u8]) -> Result<(), EncodeError> {
        self.frame_parts(payload).map(|_| ())
    }

    /// Appends the complete frame for `payload` to `dst`. On error nothing is written.
    #[inline]
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
    #[inline]
    pub fn from_slice(src: &[u8]) -> Self {
        let mut out = Self::EMPTY;
        out.bytes[..src.len()].copy_from_slice(src);
        out.len = src.len() as u8;
        out
    }

    /// Appends `src`, see [`from_slice`](Self::from_slice) for the size limit.
    #[inline]
    pub fn push(&mut self, src: &[u8]) {
        let start = usize::from(self.len);
        self.bytes[start..start + src.len()].copy_from_slice(src);
        self.len += src.len() as u8;
    }

    /// Appends `n` zero bytes and returns them for the caller to fill.
    #[inline]
    pub fn push_zeroed(&mut self, n: usize) -> &mut [u8] {
        let start = usize::from(self.len);
        self.len += n as u8;
        &mut self.bytes[start..start + n]
    }

    /// The bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when empty.
    #[inline]
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
    #[inline]
    pub fn head(&self) -> &[u8] {
        self.head.as_slice()
    }
    /// The trailer.
    #[inline]
    pub fn tail(&self) -> &[u8] {
        self.tail.as_slice()
    }
    /// Header only.
    #[inline]
    pub fn with_head(head: &[u8]) -> Self {
        FrameParts {
            head: InlineBytes::from_slice(head),
            tail: InlineBytes::EMPTY,
        }
    }
    /// Trailer only.
    #[inline]
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

/// Appends `src` to `dst` unless it contains `needle`, in one pass over the bytes: the check that
/// keeps a delimiter out of a payload costs next to nothing on top of the copy. On a hit, `dst` is
/// left as it was and the needle's position in `src` is returned. (The encoders call
/// [`copy_without`] on spare capacity they have reserved; this is its `BytesMut` form for tests.)
#[cfg(test)]
fn append_without(dst: &mut BytesMut, src: &[u8], needle: u8) -> Result<(), usize> {
    dst.reserve(src.len());
    copy_without(&mut dst.spare_capacity_mut()[..src.len()], src, needle)?;
    // SAFETY: `copy_without` returned Ok, so it initialised all `src.len()` bytes of spare
    // capacity after the current length (`reserve` made room for them).
    unsafe { dst.set_len(dst.len() + src.len()) };
    Ok(())
}

/// Copies `src` into `dst` (same length) unless it contains `needle`; on a hit, returns the
/// position of the first one (`dst` may then hold part of the copy). Up to 64 bytes the pass is
/// inline; longer payloads go to [`copy_without_long`]. On x86_64 the pass is SSE2 (16 bytes per
/// step), AVX2 above 64 bytes when the CPU has it; elsewhere it is portable code that the compiler
/// vectorises.
/// (The lines encoder calls [`copy_without_short`] and [`copy_without_long`] directly, so that
/// its own code stays small; on x86_64 this form serves the tests.)
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
pub(crate) fn copy_without(
    dst: &mut [std::mem::MaybeUninit<u8>],
    src: &[u8],
    needle: u8,
) -> Result<(), usize> {
    assert_eq!(dst.len(), src.len());
    if src.len() > 64 {
        return match copy_without_long(dst, src, needle) {
            CLEAN => Ok(()),
            from => Err(first_from(src, from, needle)),
        };
    }
    #[cfg(target_arch = "x86_64")]
    if src.len() >= 16 {
        return x86::copy_without_sse2(dst, src, needle);
    }
    if copy_checking_portable(dst, src, needle) {
        Ok(())
    } else {
        Err(memchr::memchr(needle, src).expect("the copy saw the needle"))
    }
}

/// What the out-of-line passes return when `src` holds no needle; otherwise they return an offset
/// at or before the first needle, with none before it (for [`first_from`]).
pub(crate) const CLEAN: usize = usize::MAX;

/// The first needle at or after `from` (earlier bytes are known to be clean).
#[cold]
pub(crate) fn first_from(src: &[u8], from: usize, needle: u8) -> usize {
    from + memchr::memchr(needle, &src[from..]).expect("the copy saw the needle")
}

/// The pass for payloads over 64 bytes, out of line so that encoders stay small enough to inline.
/// On x86_64 with AVX2 it is only the feature test and a jump to the AVX2 pass, a leaf function:
/// no saved registers on the way. Requires `dst.len() == src.len()`.
#[inline(never)]
pub(crate) fn copy_without_long(
    dst: &mut [std::mem::MaybeUninit<u8>],
    src: &[u8],
    needle: u8,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && src.len() > 64 {
            // SAFETY: the CPU supports AVX2 (checked just above); `dst` and `src` both hold
            // `src.len() > 64` bytes (the caller's contract) and cannot overlap (`&mut` and `&`).
            return unsafe {
                x86::copy_without_avx2(dst.as_mut_ptr().cast(), src.as_ptr(), src.len(), needle)
            };
        }
        x86::copy_without_sse2_long(dst, src, needle)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        if copy_checking_portable(dst, src, needle) {
            CLEAN
        } else {
            0
        }
    }
}

/// [`copy_without`] for 16 to 64 bytes, always inlined (no AVX2 dispatch, no call).
#[inline(always)]
pub(crate) fn copy_without_short(
    dst: &mut [std::mem::MaybeUninit<u8>],
    src: &[u8],
    needle: u8,
) -> Result<(), usize> {
    #[cfg(target_arch = "x86_64")]
    return x86::copy_without_sse2(dst, src, needle);
    #[cfg(not(target_arch = "x86_64"))]
    copy_without(dst, src, needle)
}

/// The fused check-and-copy pass written with x86_64 intrinsics: load a vector, compare it with the
/// needle, OR the result into an accumulator, store it; the accumulator is tested once per
/// 64-byte (SSE2) or 128-byte (AVX2) block, and on a hit `memchr` finds the exact position in that
/// block (all earlier blocks were clean). A tail under one vector is done as a last, overlapping
/// vector (its first bytes are written twice, with the same values).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{first_from, CLEAN};

    /// SSE2 is part of x86_64, so this needs no detection. Requires `src.len() >= 16`.
    #[inline(always)]
    pub(super) fn copy_without_sse2(
        dst: &mut [MaybeUninit<u8>],
        src: &[u8],
        needle: u8,
    ) -> Result<(), usize> {
        let len = src.len();
        assert!(len >= 16 && dst.len() == len);
        let s = src.as_ptr();
        let d = dst.as_mut_ptr().cast::<u8>();
        // SAFETY: every load reads 16 bytes at `s + i` and every store writes 16 bytes at `d + i`
        // with `i + 16 <= len` (the loop conditions, and `len - 16` for the last vector, valid
        // since `len >= 16`); `src` and `dst` both hold `len` bytes (asserted above). The
        // unaligned forms are used, and writing `MaybeUninit<u8>` needs no prior initialisation.
        unsafe {
            let n = _mm_set1_epi8(needle as i8);
            let mut i = 0;
            while i + 64 <= len {
                let a = _mm_loadu_si128(s.add(i).cast());
                let b = _mm_loadu_si128(s.add(i + 16).cast());
                let c = _mm_loadu_si128(s.add(i + 32).cast());
                let e = _mm_loadu_si128(s.add(i + 48).cast());
                _mm_storeu_si128(d.add(i).cast(), a);
                _mm_storeu_si128(d.add(i + 16).cast(), b);
                _mm_storeu_si128(d.add(i + 32).cast(), c);
                _mm_storeu_si128(d.add(i + 48).cast(), e);
                let hits = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(a, n), _mm_cmpeq_epi8(b, n)),
                    _mm_or_si128(_mm_cmpeq_epi8(c, n), _mm_cmpeq_epi8(e, n)),
                );
                if _mm_movemask_epi8(hits) != 0 {
                    return Err(first_from(src, i, needle));
                }
                i += 64;
            }
            let mut acc = _mm_setzero_si128();
            let from = i;
            while i + 16 <= len {
                let a = _mm_loadu_si128(s.add(i).cast());
                _mm_storeu_si128(d.add(i).cast(), a);
                acc = _mm_or_si128(acc, _mm_cmpeq_epi8(a, n));
                i += 16;
            }
            if i < len {
                let a = _mm_loadu_si128(s.add(len - 16).cast());
                _mm_storeu_si128(d.add(len - 16).cast(), a);
                acc = _mm_or_si128(acc, _mm_cmpeq_epi8(a, n));
            }
            if _mm_movemask_epi8(acc) != 0 {
                return Err(first_from(src, from, needle));
            }
        }
        Ok(())
    }

    /// [`copy_without_sse2`] out of line, for CPUs without AVX2 and payloads over 64 bytes;
    /// returns [`CLEAN`] or the first needle's position.
    #[inline(never)]
    pub(super) fn copy_without_sse2_long(
        dst: &mut [MaybeUninit<u8>],
        src: &[u8],
        needle: u8,
    ) -> usize {
        match copy_without_sse2(dst, src, needle) {
            Ok(()) => CLEAN,
            Err(position) => position,
        }
    }

    /// The same pass with 32-byte vectors, shaped like glibc's `memcpy` for medium sizes: 65 to
    /// 128 bytes are four vectors and 129 to 256 bytes eight, half from each end; longer payloads
    /// are 128-byte blocks whose stores are aligned (after one unaligned vector at the start),
    /// then a last block ending at the end. Overlapping vectors write some bytes twice, with the
    /// same values. Every group of vectors is loaded before any of it is stored: a store followed
    /// by a load of nearby bytes can make the CPU wait to prove they do not overlap, which cost
    /// up to 20% at 256 bytes while the other core was busy. No loop runs on the tail and nothing
    /// is called, so the function saves no registers. Returns [`CLEAN`], or an offset at or
    /// before the first needle with no needle before it (for [`first_from`]).
    ///
    /// # Safety
    /// The CPU must support AVX2; `s` must be valid for reading and `d` for writing `len` bytes,
    /// the two must not overlap, and `len` must be over 64.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_without_avx2(
        d: *mut u8,
        s: *const u8,
        len: usize,
        needle: u8,
    ) -> usize {
        debug_assert!(len > 64);
        // SAFETY (every access below): 32 bytes at an offset `o` with `o + 32 <= len`: the
        // short cases' vectors start at multiples of 32 below 64 (`len > 64`) or 128 (`len >
        // 128` there) and at `len - 32k`; the blocks at `i` run while `i + 128 < len`, the last
        // block starts at `len - 128` (`len > 256` there). Aligned stores are at `d + i` with
        // `i = 32 - d % 32`, plus multiples of 128.
        unsafe {
            let n = _mm256_set1_epi8(needle as i8);
            // Macros, not closures: a closure would not inherit `avx2` on the MSRV.
            macro_rules! load {
                ($($o:expr),+) => {($(_mm256_loadu_si256(s.add($o).cast())),+)};
            }
            macro_rules! store {
                ($($o:expr => $v:expr),+) => {$(_mm256_storeu_si256(d.add($o).cast(), $v);)+};
            }
            // Whether any of four vectors holds the needle, as a mask.
            macro_rules! hits {
                ($a:expr, $b:expr, $c:expr, $e:expr) => {
                    _mm256_or_si256(
                        _mm256_or_si256(_mm256_cmpeq_epi8($a, n), _mm256_cmpeq_epi8($b, n)),
                        _mm256_or_si256(_mm256_cmpeq_epi8($c, n), _mm256_cmpeq_epi8($e, n)),
                    )
                };
            }
            if len <= 128 {
                let (a, b, c, e) = load!(0, 32, len - 64, len - 32);
                store!(0 => a, 32 => b, len - 64 => c, len - 32 => e);
                return if _mm256_movemask_epi8(hits!(a, b, c, e)) == 0 {
                    CLEAN
                } else {
                    0
                };
            }
            if len <= 256 {
                let (a, b, c, e) = load!(0, 32, 64, 96);
                let (f, g, h, k) = load!(len - 128, len - 96, len - 64, len - 32);
                store!(0 => a, 32 => b, 64 => c, 96 => e);
                store!(len - 128 => f, len - 96 => g, len - 64 => h, len - 32 => k);
                let hits = _mm256_or_si256(hits!(a, b, c, e), hits!(f, g, h, k));
                return if _mm256_movemask_epi8(hits) == 0 {
                    CLEAN
                } else {
                    0
                };
            }
            let head = load!(0);
            store!(0 => head);
            if _mm256_movemask_epi8(_mm256_cmpeq_epi8(head, n)) != 0 {
                return 0;
            }
            let mut i = 32 - (d as usize & 31);
            while i + 128 < len {
                let (a, b, c, e) = load!(i, i + 32, i + 64, i + 96);
                _mm256_store_si256(d.add(i).cast(), a);
                _mm256_store_si256(d.add(i + 32).cast(), b);
                _mm256_store_si256(d.add(i + 64).cast(), c);
                _mm256_store_si256(d.add(i + 96).cast(), e);
                if _mm256_movemask_epi8(hits!(a, b, c, e)) != 0 {
                    return i;
                }
                i += 128;
            }
            let t = len - 128;
            let (a, b, c, e) = load!(t, t + 32, t + 64, t + 96);
            store!(t => a, t + 32 => b, t + 64 => c, t + 96 => e);
            if _mm256_movemask_epi8(hits!(a, b, c, e)) == 0 {
                CLEAN
            } else {
                t
            }
        }
    }
}

/// Per block: load, compare, OR into an accumulator, store, all vector instructions. Each block
/// size has its own accumulator (mixing widths in one array stalls on store forwarding), reduced
/// once at the end: where the needle is only matters on the error path.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn copy_checking_portable(dst: &mut [std::mem::MaybeUninit<u8>], src: &[u8], needle: u8) -> bool {
    const BLOCK: usize = 64;
    const SMALL: usize = 16;
    debug_assert_eq!(dst.len(), src.len());
    let mut block_hits = [0u8; BLOCK];
    let mut blocks_src = src.chunks_exact(BLOCK);
    let mut blocks_dst = dst.chunks_exact_mut(BLOCK);
    for (s, d) in (&mut blocks_src).zip(&mut blocks_dst) {
        for i in 0..BLOCK {
            block_hits[i] |= u8::from(s[i] == needle);
            d[i].write(s[i]);
        }
    }
    let mut small_hits = [0u8; SMALL];
    let mut small_src = blocks_src.remainder().chunks_exact(SMALL);
    let mut small_dst = blocks_dst.into_remainder().chunks_exact_mut(SMALL);
    for (s, d) in (&mut small_src).zip(&mut small_dst) {
        for i in 0..SMALL {
            small_hits[i] |= u8::from(s[i] == needle);
            d[i].write(s[i]);
        }
    }
    let mut tail_hits = 0u8;
    for (out, &b) in small_dst
        .into_remainder()
        .iter_mut()
        .zip(small_src.remainder())
    {
        tail_hits |= u8::from(b == needle);
        out.write(b);
    }
    // OR-reductions, not `== [0; N]`, which becomes a `memcmp` call.
    let any = |hits: &[u8]| hits.iter().fold(0u8, |acc, &h| acc | h);
    (any(&block_hits) | any(&small_hits) | tail_hits) == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_without_copies_or_refuses_in_one_pass() {
        for len in [
            0, 1, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256, 257, 300,
            383, 384, 385, 1000, 5003,
        ] {
            let src: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let mut dst = BytesMut::from(&b"head"[..]);
            append_without(&mut dst, &src, b'\n').unwrap();
            assert_eq!(&dst[..4], b"head");
            assert_eq!(&dst[4..], &src[..]);
            // The needle at every position (block starts, block ends, the tail) is found exactly,
            // and nothing is appended.
            let positions: Vec<usize> = if len <= 1000 {
                (0..len).collect()
            } else {
                (0..len)
                    .filter(|p| p % 128 < 2 || p % 128 > 125 || p + 40 > len)
                    .collect()
            };
            for at in positions {
                let mut with = src.clone();
                with[at] = b'\n';
                if at + 1 < len {
                    with[len - 1] = b'\n'; // a later hit must not mask the first
                }
                let mut dst = BytesMut::from(&b"head"[..]);
                assert_eq!(append_without(&mut dst, &with, b'\n'), Err(at), "len {len}");
                assert_eq!(&dst[..], b"head");
            }
        }
    }

    #[test]
    fn append_without_is_exact_at_every_destination_alignment() {
        // The wide pass aligns its stores to the destination: every offset within a vector, for
        // lengths around its size classes, with the needle at the ends and in the middle.
        for len in [65, 127, 128, 129, 200, 255, 256, 257, 383, 384, 385, 4099] {
            let src: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            for offset in 0..40 {
                let head = vec![b'h'; offset];
                let mut dst = BytesMut::with_capacity(offset + len);
                dst.extend_from_slice(&head);
                append_without(&mut dst, &src, b'\n').unwrap();
                assert_eq!(&dst[..offset], &head[..]);
                assert_eq!(&dst[offset..], &src[..], "len {len} offset {offset}");
                for at in [
                    0,
                    31,
                    32,
                    64.min(len - 1),
                    96.min(len - 1),
                    len / 2,
                    len - 129.min(len - 1),
                    len - 33,
                    len - 1,
                ] {
                    let mut with = src.clone();
                    with[at] = b'\n';
                    let mut dst = BytesMut::from(&head[..]);
                    assert_eq!(append_without(&mut dst, &with, b'\n'), Err(at), "len {len}");
                    assert_eq!(&dst[..], &head[..]);
                }
            }
        }
    }

    #[test]
    fn read_and_write_uint_agree_at_every_width_and_order() {
        for width in 1..=8usize {
            for order in [ByteOrder::BigEndian, ByteOrder::LittleEndian] {
                let value = 0x0102_0304_0506_0708u64 & (u64::MAX >> (64 - 8 * width));
                let mut out = [0u8; 8];
                order.write_uint(value, &mut out[..width]);
                assert_eq!(order.read_uint(&out[..width]), value, "{width} {order:?}");
            }
        }
        assert_eq!(ByteOrder::BigEndian.read_uint(&[1, 2, 3]), 0x010203);
        assert_eq!(ByteOrder::LittleEndian.read_uint(&[1, 2, 3]), 0x030201);
    }
}
