//! Magic-marker framing: a fixed marker, a payload length and an optional CRC in front of every
//! payload, so that a receiver that lost sync can find the next frame instead of dropping the
//! connection.
//!
//! # Wire layout
//!
//! ```text
//! +--------------+------------------+---------------------+--------------+
//! | magic        | payload length   | checksum of payload | payload      |
//! | 1..=16 bytes | 1, 2 or 4 bytes  | 4 bytes             | length bytes |
//! +--------------+------------------+---------------------+--------------+
//!                  unsigned, `order`  `order`; absent with Checksum::None
//! ```
//!
//! The length counts the payload only, and `max_frame_length` limits the payload. The checksum is
//! [CRC-32](Checksum::Crc32) (IEEE) or [CRC-32C](Checksum::Crc32c) (Castagnoli) of the payload. The
//! decoded frame is the payload. The decoding rules, and how bad frames are found and skipped,
//! are documented on [`MagicCodec`].

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem::Finder;

use super::{
    reserve_for_frame, ByteOrder, ConfigError, DecodeError, DecodeErrorKind, EncodeError,
    FrameDecoder, FrameEncoder, FrameParts, InlineBytes, DEFAULT_MAX_FRAME_LENGTH,
};

/// The checksum carried in a [`MagicCodec`] header, computed over the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// No checksum field.
    #[default]
    None,
    /// CRC-32 (IEEE 802.3; the one of zlib, PNG and Ethernet), 4 bytes.
    Crc32,
    /// CRC-32C (Castagnoli; the one of iSCSI, ext4 and SCTP), 4 bytes. Computed with the CPU's
    /// CRC instructions where available (x86-64 SSE 4.2, AArch64).
    Crc32c,
}

impl Checksum {
    /// Bytes the checksum takes in the header: 0 or 4.
    pub fn width(self) -> usize {
        match self {
            Checksum::None => 0,
            Checksum::Crc32 | Checksum::Crc32c => 4,
        }
    }

    /// The checksum of `data`, or `None` for [`Checksum::None`].
    ///
    /// ```
    /// use framelink_proto::codec::Checksum;
    /// assert_eq!(Checksum::Crc32.compute(b"123456789"), Some(0xcbf4_3926));
    /// assert_eq!(Checksum::Crc32c.compute(b"123456789"), Some(0xe306_9283));
    /// assert_eq!(Checksum::None.compute(b"123456789"), None);
    /// ```
    pub fn compute(self, data: &[u8]) -> Option<u32> {
        match self {
            Checksum::None => None,
            Checksum::Crc32 => Some(crc32fast::hash(data)),
            Checksum::Crc32c => Some(crc32c::crc32c(data)),
        }
    }
}

/// What a [`MagicCodec`] does with a bad frame (wrong magic, over-long length, wrong checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResyncPolicy {
    /// Return a fatal error: the connection should be closed.
    Fail,
    /// Skip to the next magic marker and report the bad frame once, as a recoverable
    /// [`Resynchronized`](DecodeErrorKind::Resynchronized) error; see [`MagicCodec`].
    #[default]
    Resync,
}

/// Parameters of a [`MagicCodec`].
///
/// ```
/// use framelink_proto::codec::{ByteOrder, Checksum, MagicConfig};
///
/// let cfg = MagicConfig {
///     length_width: 2,
///     order: ByteOrder::LittleEndian,
///     checksum: Checksum::Crc32,
///     ..MagicConfig::new(vec![0xca, 0xfe])
/// };
/// assert_eq!(cfg.header_length(), 2 + 2 + 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MagicConfig {
    /// The marker that starts every frame, 1 to [`MAX_MAGIC_LENGTH`](Self::MAX_MAGIC_LENGTH)
    /// bytes. Choose bytes that are rare in payloads, and that do not repeat a prefix of
    /// themselves (unlike `abab`), so that a marker cut short by garbage cannot be found
    /// overlapping the real one.
    pub magic: Vec<u8>,
    /// Width of the payload length field: 1, 2 or 4 bytes, unsigned.
    pub length_width: usize,
    /// Byte order of the length and checksum fields.
    pub order: ByteOrder,
    /// The checksum of the payload carried after the length.
    pub checksum: Checksum,
    /// Largest accepted payload, header not included.
    pub max_frame_length: usize,
    /// What to do with a bad frame.
    pub resync: ResyncPolicy,
}

impl MagicConfig {
    /// Longest supported magic marker.
    pub const MAX_MAGIC_LENGTH: usize = 16;

    /// `magic`, a 4-byte big-endian length, a CRC-32C and the default 8 MiB limit, resynchronising
    /// after bad frames.
    pub fn new(magic: Vec<u8>) -> Self {
        MagicConfig {
            magic,
            length_width: 4,
            order: ByteOrder::BigEndian,
            checksum: Checksum::Crc32c,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            resync: ResyncPolicy::Resync,
        }
    }

    /// Bytes before the payload: magic, length field and checksum.
    pub fn header_length(&self) -> usize {
        self.magic.len() + self.length_width + self.checksum.width()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.magic.is_empty() {
            return Err(ConfigError::OutOfRange {
                name: "magic length",
                value: 0,
                range: "1..=16",
            });
        }
        if self.magic.len() > Self::MAX_MAGIC_LENGTH {
            return Err(ConfigError::TooLong {
                what: "magic",
                length: self.magic.len(),
                max: Self::MAX_MAGIC_LENGTH,
            });
        }
        if !matches!(self.length_width, 1 | 2 | 4) {
            return Err(ConfigError::InvalidWidth {
                width: self.length_width,
                allowed: "1, 2, 4",
            });
        }
        Ok(())
    }
}

/// Magic + length + checksum decoder and encoder that resynchronises on the magic after a bad
/// frame; see [`MagicConfig`] for the options.
///
/// A frame is `magic | payload length | checksum of the payload | payload`: the length is
/// [`length_width`](MagicConfig::length_width) bytes, unsigned, in [`order`](MagicConfig::order),
/// and counts the payload only; the checksum is 4 bytes in the same order, or absent with
/// [`Checksum::None`]. Decoded frames are the payloads, sharing the read buffer's memory.
///
/// # Bad frames and resynchronisation
///
/// A frame is bad when the bytes at a frame boundary are not the magic
/// ([`BadMagic`](DecodeErrorKind::BadMagic), compared byte by byte as they arrive; `found` holds
/// the bytes up to and including the first one that differs), when its length is over
/// [`max_frame_length`](MagicConfig::max_frame_length)
/// ([`FrameTooLong`](DecodeErrorKind::FrameTooLong), checked as soon as the length field is in,
/// `length` being the declared payload length), or when its checksum does not match
/// ([`ChecksumMismatch`](DecodeErrorKind::ChecksumMismatch), checked once the whole payload is in).
///
/// Under [`ResyncPolicy::Fail`] that is a fatal error at the frame's stream offset. Under
/// [`ResyncPolicy::Resync`] the decoder searches for the next magic starting **one byte after the
/// bad frame's start** (not after its declared end: the length may be what was corrupted), drops
/// the bytes before it, and returns one recoverable
/// [`Resynchronized`](DecodeErrorKind::Resynchronized) error for the bad frame: at the bad frame's
/// offset, with the number of bytes skipped from there and the original error as its cause. Then
/// decoding goes on with the frame at the magic found.
///
/// While searching, only the last `magic.len() - 1` bytes are kept (a magic may straddle two
/// reads), so a long run of garbage never grows the buffer. The error is returned once the next
/// magic is found; if the stream ends first, [`decode_eof`](FrameDecoder::decode_eof) returns it
/// with everything skipped. At the end of the stream a partial frame is
/// [`Truncated`](DecodeErrorKind::Truncated) (fatal), except that under `Resync` a partial frame
/// with another magic after its first byte (a corrupted length that swallowed the frames behind
/// it) is skipped like any other bad frame, so that those frames still arrive.
///
/// What cannot be recovered: without a checksum, a corrupted length within the limit goes unseen
/// and the frames it swallows are lost (the misalignment is caught at the next boundary). A length
/// corrupted upwards within the limit is only caught once that many bytes have arrived, so keep
/// `max_frame_length` close to the largest real payload. The search may find the magic inside a
/// payload; the checksum rejects such a false frame, reported as one more `Resynchronized` error.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{DecodeErrorKind, FrameDecoder, FrameEncoder, MagicCodec, MagicConfig};
///
/// let mut codec = MagicCodec::new(MagicConfig::new(b"FL".to_vec())).unwrap();
/// let mut wire = BytesMut::new();
/// for msg in ["one", "two", "three"] {
///     codec.encode(msg.as_bytes(), &mut wire).unwrap();
/// }
/// // magic | 4-byte big-endian length | CRC-32C of the payload | payload
/// assert_eq!(&wire[..6], b"FL\0\0\0\x03");
/// assert_eq!(&wire[10..13], b"one");
///
/// wire[13 + 10] ^= 0xff; // a corrupted byte in the payload of the second frame
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "one");
/// let err = codec.decode(&mut wire).unwrap_err();
/// assert!(err.is_recoverable());
/// assert_eq!(err.offset(), 13);
/// let DecodeErrorKind::Resynchronized { skipped, cause } = err.kind() else { panic!() };
/// assert_eq!(*skipped, 13);
/// assert!(matches!(**cause, DecodeErrorKind::ChecksumMismatch { length: 3, .. }));
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "three");
/// ```
#[derive(Debug, Clone)]
pub struct MagicCodec {
    config: MagicConfig,
    /// Precomputed searcher for the magic (boxed: it is large, and codecs live in enums).
    finder: Box<Finder<'static>>,
    /// `config.header_length()`.
    header_length: usize,
    /// Set while skipping bytes after a bad frame, until the next magic.
    resync: Option<Box<Resync>>,
    consumed: u64,
}

/// A bad frame whose report waits for the next magic.
#[derive(Debug, Clone)]
struct Resync {
    /// Stream offset of the bad frame.
    offset: u64,
    /// Bytes dropped so far, from the bad frame's first byte.
    skipped: u64,
    /// Why the frame was rejected.
    cause: DecodeErrorKind,
}

impl Resync {
    fn into_error(self) -> DecodeError {
        DecodeError::recoverable(
            DecodeErrorKind::Resynchronized {
                skipped: self.skipped,
                cause: Box::new(self.cause),
            },
            self.offset,
        )
    }
}

impl MagicCodec {
    /// Builds a codec, checking the configuration.
    pub fn new(config: MagicConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(MagicCodec {
            finder: Box::new(Finder::new(&config.magic).into_owned()),
            header_length: config.header_length(),
            config,
            resync: None,
            consumed: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MagicConfig {
        &self.config
    }

    /// Reads the header at the front of `buf`: `Ok(None)` when incomplete, else the length of the
    /// whole frame. The magic is compared with as many bytes as are present.
    #[inline]
    fn read_header(&self, buf: &[u8]) -> Result<Option<usize>, DecodeErrorKind> {
        let cfg = &self.config;
        let magic = &cfg.magic[..];
        let present = &buf[..buf.len().min(magic.len())];
        if let Some(i) = present.iter().zip(magic).position(|(a, b)| a != b) {
            return Err(DecodeErrorKind::BadMagic {
                expected: magic.to_vec(),
                found: present[..=i].to_vec(),
            });
        }
        let length_end = magic.len() + cfg.length_width;
        if buf.len() < length_end {
            return Ok(None);
        }
        let length = cfg.order.read_uint(&buf[magic.len()..length_end]);
        let frame_len = usize::try_from(length)
            .ok()
            .filter(|&n| n <= cfg.max_frame_length)
            .and_then(|n| n.checked_add(self.header_length));
        match frame_len {
            Some(n) => Ok(Some(n)),
            None => Err(DecodeErrorKind::FrameTooLong {
                length,
                limit: cfg.max_frame_length,
            }),
        }
    }

    /// Checks the checksum of a complete frame.
    fn verify(&self, frame: &[u8]) -> Result<(), DecodeErrorKind> {
        let cfg = &self.config;
        let field_start = cfg.magic.len() + cfg.length_width;
        let payload = &frame[self.header_length..];
        let Some(computed) = cfg.checksum.compute(payload) else {
            return Ok(());
        };
        let expected = cfg.order.read_uint(&frame[field_start..self.header_length]) as u32;
        if expected == computed {
            Ok(())
        } else {
            Err(DecodeErrorKind::ChecksumMismatch {
                expected,
                computed,
                length: payload.len(),
            })
        }
    }

    /// The next frame at the front of `buf`, `Ok(None)` when more bytes are needed, or why the
    /// bytes there are not a frame. Consumes only a good frame.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeErrorKind> {
        let Some(frame_len) = self.read_header(buf)? else {
            return Ok(None);
        };
        if buf.len() < frame_len {
            reserve_for_frame(buf, frame_len);
            return Ok(None);
        }
        self.verify(&buf[..frame_len])?;
        let mut frame = buf.split_to(frame_len);
        frame.advance(self.header_length);
        self.consumed += frame_len as u64;
        Ok(Some(frame.freeze()))
    }

    /// Drops `n` bytes off the front of `buf` while resynchronising.
    fn skip(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.consumed += n as u64;
        if let Some(resync) = &mut self.resync {
            resync.skipped += n as u64;
        }
    }

    /// Rejects the frame at the front of `buf`: starts the search for the next magic one byte
    /// after its start.
    fn start_resync(&mut self, cause: DecodeErrorKind, buf: &mut BytesMut) {
        self.resync = Some(Box::new(Resync {
            offset: self.consumed,
            skipped: 0,
            cause,
        }));
        self.skip(buf, buf.len().min(1));
    }

    /// While resynchronising: drops bytes up to the next magic and reports the bad frame, or drops
    /// all but a possible partial magic at the end and waits for more.
    fn search(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if self.resync.is_none() {
            return Ok(None);
        }
        match self.finder.find(buf) {
            Some(pos) => {
                self.skip(buf, pos);
                match self.resync.take() {
                    Some(resync) => Err(resync.into_error()),
                    None => Ok(None),
                }
            }
            None => {
                let keep = self.config.magic.len() - 1;
                self.skip(buf, buf.len().saturating_sub(keep));
                Ok(None)
            }
        }
    }
}

impl FrameDecoder for MagicCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if self.resync.is_none() {
            match self.next_frame(buf) {
                Ok(frame) => return Ok(frame),
                Err(kind) if self.config.resync == ResyncPolicy::Fail => {
                    return Err(DecodeError::fatal(kind, self.consumed));
                }
                Err(kind) => self.start_resync(kind, buf),
            }
        }
        self.search(buf)
    }

    /// As [`decode`](FrameDecoder::decode), then at the end of the stream: bytes skipped with no
    /// magic found after them are reported as [`Resynchronized`](DecodeErrorKind::Resynchronized);
    /// a partial frame is [`Truncated`](DecodeErrorKind::Truncated), unless under
    /// [`ResyncPolicy::Resync`] a magic follows its first byte, in which case it is skipped (see
    /// [`MagicCodec`]).
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if self.resync.is_some() {
            // `decode` searched the whole buffer: what is left (a partial magic) is garbage too.
            self.skip(buf, buf.len());
            return match self.resync.take() {
                Some(resync) => Err(resync.into_error()),
                None => Ok(None),
            };
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let kind = DecodeErrorKind::Truncated {
            buffered: buf.len(),
            expected: self.pending_frame_length(buf),
        };
        if self.config.resync == ResyncPolicy::Resync && self.finder.find(&buf[1..]).is_some() {
            self.start_resync(kind, buf);
            return self.search(buf);
        }
        Err(DecodeError::fatal(kind, self.consumed))
    }

    fn consumed(&self) -> u64 {
        self.consumed
    }

    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        if self.resync.is_some() {
            return None;
        }
        match self.read_header(buf) {
            Ok(Some(n)) => Some(n as u64),
            _ => None,
        }
    }
}

impl FrameEncoder for MagicCodec {
    /// The length checks only: the checksum is computed when the frame is built.
    fn check_payload(&self, payload: &[u8]) -> Result<(), EncodeError> {
        let cfg = &self.config;
        if payload.len() > cfg.max_frame_length {
            return Err(EncodeError::FrameTooLong {
                length: payload.len(),
                limit: cfg.max_frame_length,
            });
        }
        let field_max = (1u64 << (8 * cfg.length_width)) - 1; // width <= 4
        let length = payload.len() as u64;
        if length > field_max {
            return Err(EncodeError::LengthNotRepresentable {
                value: i128::from(length),
                width: cfg.length_width as u8,
            });
        }
        Ok(())
    }

    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        self.check_payload(payload)?;
        let cfg = &self.config;
        let length = payload.len() as u64;
        let mut head = InlineBytes::from_slice(&cfg.magic);
        cfg.order
            .write_uint(length, head.push_zeroed(cfg.length_width));
        if let Some(sum) = cfg.checksum.compute(payload) {
            cfg.order.write_uint(u64::from(sum), head.push_zeroed(4));
        }
        Ok(FrameParts {
            head,
            tail: InlineBytes::EMPTY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::{decode_to_eof, hex, split_cycling, CheckedDecoder};
    use proptest::prelude::*;

    /// A marker with no prefix that is also a suffix: garbage cannot form it with the real one.
    const MAGIC: &[u8] = b"FLK1";

    fn config() -> MagicConfig {
        MagicConfig::new(MAGIC.to_vec())
    }

    fn codec(cfg: MagicConfig) -> MagicCodec {
        MagicCodec::new(cfg).unwrap()
    }

    /// The frames for `payloads`, and the stream offset where each starts.
    fn wire(cfg: &MagicConfig, payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let c = codec(cfg.clone());
        let mut out = BytesMut::new();
        let mut starts = Vec::new();
        for p in payloads {
            starts.push(out.len());
            c.encode(p, &mut out).unwrap();
        }
        (out.to_vec(), starts)
    }

    /// Checked by the decode helpers after every call: every byte fed is consumed or buffered,
    /// and after `Ok(None)` at most a header and a whole payload stay buffered.
    impl CheckedDecoder for MagicCodec {
        const CHECK_CONSUMED: bool = true;

        fn buffer_bound(&self) -> Option<usize> {
            let cfg = self.config();
            Some(cfg.header_length().saturating_add(cfg.max_frame_length))
        }
    }

    /// Feeds `input` in pieces whose sizes cycle through `sizes`, decoding after each, then decodes
    /// to the end of stream. Returns the frames and errors, stopping at a fatal one.
    fn decode_pieces(
        codec: &mut MagicCodec,
        input: &[u8],
        sizes: &[usize],
    ) -> (Vec<Bytes>, Vec<DecodeError>) {
        let mut run = decode_to_eof(codec, split_cycling(input, sizes));
        run.errors.extend(run.eof.err());
        (run.frames, run.errors)
    }

    fn decode_chunked(
        codec: &mut MagicCodec,
        input: &[u8],
        chunk: usize,
    ) -> (Vec<Bytes>, Vec<DecodeError>) {
        decode_pieces(codec, input, &[chunk])
    }

    fn bytes_vec(payloads: &[&[u8]]) -> Vec<Bytes> {
        payloads.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    /// Asserts that `err` is one recoverable resynchronisation at `offset` skipping `skipped`
    /// bytes, and returns its cause.
    fn resync_cause(err: &DecodeError, offset: usize, skipped: usize) -> DecodeErrorKind {
        assert!(err.is_recoverable(), "{err}");
        assert_eq!(err.offset(), offset as u64, "{err}");
        match err.kind() {
            DecodeErrorKind::Resynchronized { skipped: s, cause } => {
                assert_eq!(*s, skipped as u64, "{err}");
                (**cause).clone()
            }
            other => panic!("expected Resynchronized, got {other:?}"),
        }
    }

    #[test]
    fn exact_bytes_for_each_checksum() {
        let base = MagicConfig {
            length_width: 2,
            ..MagicConfig::new(vec![0xca, 0xfe])
        };
        for (checksum, expected) in [
            (Checksum::None, "cafe0009"),
            (Checksum::Crc32, "cafe0009cbf43926"),
            (Checksum::Crc32c, "cafe0009e3069283"),
        ] {
            let mut c = codec(MagicConfig {
                checksum,
                ..base.clone()
            });
            let mut wire = BytesMut::new();
            c.encode(b"123456789", &mut wire).unwrap();
            let mut expected = hex(expected);
            expected.extend_from_slice(b"123456789");
            assert_eq!(&wire[..], &expected[..], "{checksum:?}");
            assert_eq!(c.decode(&mut wire).unwrap().unwrap(), "123456789");
            assert!(wire.is_empty());
        }
        // Little-endian 4-byte length and checksum.
        let mut c = codec(MagicConfig {
            order: ByteOrder::LittleEndian,
            checksum: Checksum::Crc32,
            ..MagicConfig::new(vec![0xca, 0xfe])
        });
        let mut wire = BytesMut::new();
        c.encode(b"123456789", &mut wire).unwrap();
        assert_eq!(&wire[..10], &hex("cafe090000002639f4cb")[..]);
        assert_eq!(c.decode(&mut wire).unwrap().unwrap(), "123456789");
        // 1-byte length, CRC-32C big-endian; an empty payload has CRC 0.
        let c = codec(MagicConfig {
            length_width: 1,
            ..MagicConfig::new(b"M".to_vec())
        });
        let mut wire = BytesMut::new();
        c.encode(b"", &mut wire).unwrap();
        assert_eq!(&wire[..], &hex("4d0000000000")[..]);
    }

    #[test]
    fn vectored_encoding_matches_and_does_not_copy_the_payload() {
        let c = codec(config());
        let payload = Bytes::from_static(b"hello");
        let mut frame = c.encode_vectored(payload.clone()).unwrap();
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(frame.chunks_vectored(&mut slices), 2);
        assert_eq!(slices[1].as_ptr(), payload.as_ptr());
        let mut copied = BytesMut::new();
        c.encode(b"hello", &mut copied).unwrap();
        assert_eq!(frame.copy_to_bytes(frame.remaining()), copied.freeze());
    }

    #[test]
    fn round_trip_at_every_split_point() {
        let long = vec![0x5a; 200];
        let payloads: [&[u8]; 4] = [b"", b"a", &long, b"FLK1 inside a payload is fine"];
        for checksum in [Checksum::None, Checksum::Crc32, Checksum::Crc32c] {
            for width in [1, 2, 4] {
                for order in [ByteOrder::BigEndian, ByteOrder::LittleEndian] {
                    let cfg = MagicConfig {
                        length_width: width,
                        order,
                        checksum,
                        ..config()
                    };
                    let (input, _) = wire(&cfg, &payloads);
                    for split in 0..=input.len() {
                        let mut c = codec(cfg.clone());
                        let (frames, errors) =
                            decode_pieces(&mut c, &input, &[split.max(1), input.len()]);
                        assert!(errors.is_empty(), "{cfg:?} split {split}: {errors:?}");
                        assert_eq!(frames, bytes_vec(&payloads), "{cfg:?} split {split}");
                        assert_eq!(c.consumed(), input.len() as u64);
                    }
                }
            }
        }
        // Byte by byte and in uneven chunks.
        let cfg = config();
        let (input, _) = wire(&cfg, &payloads);
        for chunk in 1..=input.len() {
            let (frames, errors) = decode_chunked(&mut codec(cfg.clone()), &input, chunk);
            assert!(errors.is_empty(), "chunk {chunk}: {errors:?}");
            assert_eq!(frames, bytes_vec(&payloads), "chunk {chunk}");
        }
    }

    /// Good frames around one bad one, the bad one made by `corrupt` (given the stream and the
    /// frame starts). Checks at every chunk size that the good frames arrive and that the bad one
    /// is reported once, at its offset, with its whole length skipped; returns the cause.
    fn check_one_bad_frame(
        cfg: &MagicConfig,
        corrupt: impl Fn(&mut Vec<u8>, &[usize]),
    ) -> DecodeErrorKind {
        let payloads: [&[u8]; 4] = [b"first", b"bad one", b"third frame", b"fourth and last"];
        let (mut input, starts) = wire(cfg, &payloads);
        corrupt(&mut input, &starts);
        let mut cause = None;
        for chunk in 1..=input.len() {
            let mut c = codec(cfg.clone());
            let (frames, errors) = decode_chunked(&mut c, &input, chunk);
            assert_eq!(
                frames,
                bytes_vec(&[payloads[0], payloads[2], payloads[3]]),
                "chunk {chunk}: {errors:?}"
            );
            assert_eq!(errors.len(), 1, "chunk {chunk}: {errors:?}");
            let this = resync_cause(&errors[0], starts[1], starts[2] - starts[1]);
            assert_eq!(cause.get_or_insert(this.clone()), &this, "chunk {chunk}");
            assert_eq!(c.consumed(), input.len() as u64);
        }
        cause.unwrap()
    }

    #[test]
    fn corrupted_checksum_mid_stream_resyncs_on_the_next_frame() {
        for checksum in [Checksum::Crc32, Checksum::Crc32c] {
            let cfg = MagicConfig {
                checksum,
                ..config()
            };
            // A flipped bit in the payload.
            let cause = check_one_bad_frame(&cfg, |w, s| w[s[1] + 12] ^= 0x01);
            assert_eq!(
                cause,
                DecodeErrorKind::ChecksumMismatch {
                    expected: checksum.compute(b"bad one").unwrap(),
                    computed: checksum.compute(b"cad one").unwrap(),
                    length: 7
                }
            );
            // A flipped bit in the checksum field.
            let cause = check_one_bad_frame(&cfg, |w, s| w[s[1] + 9] ^= 0x80);
            assert!(matches!(
                cause,
                DecodeErrorKind::ChecksumMismatch { length: 7, .. }
            ));
        }
    }

    #[test]
    fn corrupted_magic_mid_stream_resyncs_on_the_next_frame() {
        for (i, found) in [(0, &b"X"[..]), (2, &b"FLX"[..]), (3, &b"FLKX"[..])] {
            let cause = check_one_bad_frame(&config(), |w, s| w[s[1] + i] = b'X');
            assert_eq!(
                cause,
                DecodeErrorKind::BadMagic {
                    expected: MAGIC.to_vec(),
                    found: found.to_vec()
                }
            );
        }
        // Without a checksum too.
        let cfg = MagicConfig {
            checksum: Checksum::None,
            ..config()
        };
        check_one_bad_frame(&cfg, |w, s| w[s[1] + 1] = 0);
    }

    #[test]
    fn corrupted_length_mid_stream_resyncs_from_the_frame_start() {
        let cfg = MagicConfig {
            max_frame_length: 1024,
            ..config()
        };
        // Over the limit: rejected as soon as the length is in.
        let cause = check_one_bad_frame(&cfg, |w, s| w[s[1] + 4] = 0x01);
        assert_eq!(
            cause,
            DecodeErrorKind::FrameTooLong {
                length: 0x0100_0007,
                limit: 1024
            }
        );
        // Shorter: the checksum of the shorter payload does not match.
        let cause = check_one_bad_frame(&cfg, |w, s| w[s[1] + 7] = 3);
        assert!(matches!(
            cause,
            DecodeErrorKind::ChecksumMismatch { length: 3, .. }
        ));
        // Longer, swallowing the next frame: the search starts right after the bad frame's start,
        // not after its declared end, so the swallowed frames still arrive.
        let cause = check_one_bad_frame(&cfg, |w, s| w[s[1] + 7] = 30);
        assert!(matches!(
            cause,
            DecodeErrorKind::ChecksumMismatch { length: 30, .. }
        ));
        // Longer than the rest of the stream: found at end of stream.
        let cause = check_one_bad_frame(&cfg, |w, s| w[s[1] + 7] = 200);
        let total = wire(
            &cfg,
            &[b"first", b"bad one", b"third frame", b"fourth and last"],
        )
        .0
        .len();
        assert_eq!(
            cause,
            DecodeErrorKind::Truncated {
                buffered: total - 17,
                expected: Some(12 + 200)
            }
        );
        // Without a checksum, a longer length within the limit cannot be seen: the frames it
        // swallows are lost, the misalignment is caught at the next boundary.
        let cfg = MagicConfig {
            checksum: Checksum::None,
            ..config()
        };
        let (mut input, starts) = wire(&cfg, &[b"a", b"bb", b"cc", b"dd"]);
        input[starts[1] + 7] = 4; // "bb" + the magic of "cc"
        let (frames, errors) = decode_chunked(&mut codec(cfg), &input, 3);
        assert_eq!(frames, bytes_vec(&[b"a", b"bb\x46\x4c", b"dd"]));
        assert_eq!(errors.len(), 1);
        resync_cause(&errors[0], starts[2] + 2, starts[3] - starts[2] - 2);
    }

    #[test]
    fn garbage_before_the_first_frame_is_skipped_and_reported_once() {
        let cfg = config();
        let garbage = b"GET / HTTP/1.1\r\nHost: FLK\r\n\r\n";
        let (frames_wire, _) = wire(&cfg, &[b"one", b"two"]);
        let input = [&garbage[..], &frames_wire].concat();
        for chunk in 1..=input.len() {
            let (frames, errors) = decode_chunked(&mut codec(cfg.clone()), &input, chunk);
            assert_eq!(frames, bytes_vec(&[b"one", b"two"]), "chunk {chunk}");
            assert_eq!(errors.len(), 1, "chunk {chunk}: {errors:?}");
            let cause = resync_cause(&errors[0], 0, garbage.len());
            assert_eq!(
                cause,
                DecodeErrorKind::BadMagic {
                    expected: MAGIC.to_vec(),
                    found: b"G".to_vec()
                }
            );
        }
    }

    #[test]
    fn magic_straddling_reads_is_found() {
        let mut c = codec(config());
        let (frame, _) = wire(&config(), &[b"payload"]);
        let mut buf = BytesMut::from(&b"noise FL"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        // Only a possible partial magic is kept.
        assert_eq!(&buf[..], b" FL");
        assert_eq!(c.consumed(), 5);
        assert_eq!(c.pending_frame_length(&buf), None);
        buf.extend_from_slice(b"K");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"FLK");
        buf.extend_from_slice(&frame[3..]);
        let err = c.decode(&mut buf).unwrap_err();
        resync_cause(&err, 0, 6);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "payload");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(c.consumed(), 6 + frame.len() as u64);
    }

    #[test]
    fn fail_policy_returns_the_fatal_error_at_the_frame_offset() {
        let cfg = MagicConfig {
            max_frame_length: 100,
            resync: ResyncPolicy::Fail,
            ..config()
        };
        let (good, starts) = wire(&cfg, &[b"ok", b"payload"]);
        let cases: [(usize, u8, DecodeErrorKind); 3] = [
            (
                1,
                b'X',
                DecodeErrorKind::BadMagic {
                    expected: MAGIC.to_vec(),
                    found: b"FX".to_vec(),
                },
            ),
            (
                6,
                0xff,
                DecodeErrorKind::FrameTooLong {
                    length: 0xff07,
                    limit: 100,
                },
            ),
            (
                12,
                b'P',
                DecodeErrorKind::ChecksumMismatch {
                    expected: crc32c::crc32c(b"payload"),
                    computed: crc32c::crc32c(b"Payload"),
                    length: 7,
                },
            ),
        ];
        for (at, byte, kind) in cases {
            let mut input = good.clone();
            input[starts[1] + at] = byte;
            for chunk in 1..=input.len() {
                let mut c = codec(cfg.clone());
                let (frames, errors) = decode_chunked(&mut c, &input, chunk);
                assert_eq!(frames, bytes_vec(&[b"ok"]));
                assert_eq!(
                    errors,
                    vec![DecodeError::fatal(kind.clone(), starts[1] as u64)]
                );
                assert_eq!(c.consumed(), starts[1] as u64);
            }
        }
        let err = DecodeError::fatal(
            DecodeErrorKind::BadMagic {
                expected: MAGIC.to_vec(),
                found: b"FX".to_vec(),
            },
            14,
        );
        assert_eq!(
            err.to_string(),
            "bad magic: expected [46, 4c, 4b, 31], found [46, 58] (at stream offset 14)"
        );
    }

    #[test]
    fn buffered_bytes_stay_bounded_during_a_long_garbage_run() {
        let cfg = MagicConfig {
            max_frame_length: 64,
            ..config()
        };
        let mut c = codec(cfg.clone());
        let mut buf = BytesMut::new();
        let garbage: Vec<u8> = (0..1000u32).map(|i| b"FLKx"[(i % 4) as usize]).collect();
        let mut skipped = 0;
        for _ in 0..1000 {
            buf.extend_from_slice(&garbage);
            skipped += garbage.len();
            assert_eq!(c.decode(&mut buf).unwrap(), None);
            assert!(buf.len() < MAGIC.len(), "{} bytes buffered", buf.len());
            assert!(buf.capacity() <= 4096, "capacity {}", buf.capacity());
        }
        let (frame, _) = wire(&cfg, &[b"finally"]);
        buf.extend_from_slice(&frame);
        resync_cause(&c.decode(&mut buf).unwrap_err(), 0, skipped);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "finally");
        assert_eq!(c.consumed(), (skipped + frame.len()) as u64);
        // A header declaring the limit buffers at most header + limit before the checksum fails.
        let mut c = codec(cfg.clone());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"FLK1\0\0\0\x40\0\0\0\0");
        for _ in 0..100 {
            buf.extend_from_slice(&[0; 7]);
            let _ = c.decode(&mut buf);
            assert!(buf.len() <= 12 + 64 + 7, "{} bytes buffered", buf.len());
        }
    }

    #[test]
    fn eof_mid_resync_reports_the_skipped_bytes() {
        let cfg = config();
        let (frames_wire, _) = wire(&cfg, &[b"one", b"two"]);
        for tail in [
            &b"garbage"[..],
            &b"x"[..],
            &b"garbage FL"[..],
            &b"FLK"[..],
            &b"FLKF"[..],
        ] {
            let input = [&frames_wire[..], b"\0", tail].concat();
            for chunk in 1..=input.len() {
                let mut c = codec(cfg.clone());
                let (frames, errors) = decode_chunked(&mut c, &input, chunk);
                assert_eq!(frames, bytes_vec(&[b"one", b"two"]));
                assert_eq!(errors.len(), 1, "{tail:?} chunk {chunk}: {errors:?}");
                resync_cause(&errors[0], frames_wire.len(), tail.len() + 1);
                assert_eq!(c.consumed(), input.len() as u64);
            }
        }
    }

    #[test]
    fn truncated_frame_at_eof_is_fatal() {
        for resync in [ResyncPolicy::Fail, ResyncPolicy::Resync] {
            let cfg = MagicConfig { resync, ..config() };
            let mut c = codec(cfg.clone());
            let (input, _) = wire(&cfg, &[b"ok", b"cut short"]);
            let mut buf = BytesMut::from(&input[..input.len() - 3]);
            assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "ok");
            let err = c.decode_eof(&mut buf).unwrap_err();
            assert!(!err.is_recoverable());
            assert_eq!(err.offset(), 14);
            assert_eq!(
                err.kind(),
                &DecodeErrorKind::Truncated {
                    buffered: 18,
                    expected: Some(21)
                }
            );
            // A partial magic.
            let mut c = codec(cfg);
            let mut buf = BytesMut::from(&b"FL"[..]);
            assert_eq!(
                c.decode_eof(&mut buf).unwrap_err().kind(),
                &DecodeErrorKind::Truncated {
                    buffered: 2,
                    expected: None
                }
            );
        }
    }

    #[test]
    fn magic_inside_a_payload_after_a_bad_frame_is_rejected_by_the_checksum() {
        let cfg = config();
        let inner = wire(&cfg, &[b"fake"]).0;
        let bad_payload = [&b"ab"[..], &inner].concat();
        let (mut input, starts) = wire(&cfg, &[b"one", &bad_payload, b"three"]);
        input[starts[1]] = b'X';
        let fake_at = starts[1] + 12 + 2;
        // The frame inside the payload is itself valid: it is found, and it is a frame.
        let (frames, errors) = decode_chunked(&mut codec(cfg.clone()), &input, 5);
        assert_eq!(frames, bytes_vec(&[b"one", b"fake", b"three"]));
        resync_cause(&errors[0], starts[1], fake_at - starts[1]);
        // With its checksum broken too, it is one more resynchronisation.
        input[fake_at + 12] ^= 1;
        let (frames, errors) = decode_chunked(&mut codec(cfg), &input, 5);
        assert_eq!(frames, bytes_vec(&[b"one", b"three"]));
        assert_eq!(errors.len(), 2);
        resync_cause(&errors[0], starts[1], fake_at - starts[1]);
        resync_cause(&errors[1], fake_at, starts[2] - fake_at);
    }

    #[test]
    fn pending_frame_length_once_the_length_is_in() {
        let c = codec(MagicConfig {
            length_width: 2,
            ..config()
        });
        let buf = BytesMut::from(&b"FLK1\x01"[..]);
        assert_eq!(c.pending_frame_length(&buf), None);
        let buf = BytesMut::from(&b"FLK1\x01\x00"[..]);
        assert_eq!(c.pending_frame_length(&buf), Some(4 + 2 + 4 + 256));
        let buf = BytesMut::from(&b"FLKX\x01\x00"[..]);
        assert_eq!(c.pending_frame_length(&buf), None);
    }

    #[test]
    fn buffer_grows_with_arrivals_not_declared_length() {
        let mut c = codec(config());
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"FLK1");
        buf.extend_from_slice(&((8u32 << 20) - 1).to_be_bytes());
        buf.extend_from_slice(&[0; 14]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn codec_is_small_enough_to_sit_in_an_enum() {
        assert!(std::mem::size_of::<MagicCodec>() <= 128);
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut c = codec(MagicConfig {
            checksum: Checksum::None,
            length_width: 1,
            ..config()
        });
        let mut buf = BytesMut::from(&b"FLK1\x03abcFLK1\x01d"[..]);
        let base = buf.as_ptr() as usize;
        let f1 = c.decode(&mut buf).unwrap().unwrap();
        let f2 = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.as_ptr() as usize, base + 5);
        assert_eq!(f2.as_ptr() as usize, base + 13);
    }

    #[test]
    fn limits_at_the_boundary() {
        let cfg = MagicConfig {
            max_frame_length: 10,
            ..config()
        };
        let c = codec(cfg.clone());
        let mut wire = BytesMut::new();
        c.encode(&[7; 10], &mut wire).unwrap();
        assert_eq!(
            c.encode(&[7; 11], &mut wire),
            Err(EncodeError::FrameTooLong {
                length: 11,
                limit: 10
            })
        );
        assert_eq!(codec(cfg).decode(&mut wire).unwrap().unwrap().len(), 10);
        // A limit of zero: only empty payloads.
        let mut c = codec(MagicConfig {
            max_frame_length: 0,
            ..config()
        });
        let mut wire = BytesMut::new();
        c.encode(b"", &mut wire).unwrap();
        assert_eq!(c.decode(&mut wire).unwrap().unwrap(), "");
    }

    #[test]
    fn encoder_refuses_what_the_length_field_cannot_express() {
        for (width, max_len) in [(1, 255usize), (2, 65535)] {
            let c = codec(MagicConfig {
                length_width: width,
                ..config()
            });
            let mut wire = BytesMut::new();
            assert_eq!(
                c.encode(&vec![0; max_len + 1], &mut wire),
                Err(EncodeError::LengthNotRepresentable {
                    value: max_len as i128 + 1,
                    width: width as u8
                })
            );
            assert!(wire.is_empty());
            c.encode(&vec![0; max_len], &mut wire).unwrap();
            assert_eq!(wire.len(), 4 + width + 4 + max_len);
        }
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(matches!(
            MagicCodec::new(MagicConfig::new(Vec::new())),
            Err(ConfigError::OutOfRange {
                name: "magic length",
                value: 0,
                ..
            })
        ));
        assert_eq!(
            MagicCodec::new(MagicConfig::new(vec![1; 17])).unwrap_err(),
            ConfigError::TooLong {
                what: "magic",
                length: 17,
                max: 16
            }
        );
        for width in [0, 3, 8] {
            assert!(matches!(
                MagicCodec::new(MagicConfig {
                    length_width: width,
                    ..config()
                }),
                Err(ConfigError::InvalidWidth { width: w, .. }) if w == width
            ));
        }
        // The largest header still fits an inline header.
        let c = codec(MagicConfig::new(vec![0xab; 16]));
        assert_eq!(c.config().header_length(), 24);
        let mut wire = BytesMut::new();
        c.encode(b"x", &mut wire).unwrap();
        assert_eq!(wire.len(), 25);
    }

    fn arb_config() -> impl Strategy<Value = MagicConfig> {
        (
            prop::collection::vec(any::<u8>(), 1..=16),
            prop::sample::select(vec![1usize, 2, 4]),
            prop::sample::select(vec![ByteOrder::BigEndian, ByteOrder::LittleEndian]),
            prop::sample::select(vec![Checksum::None, Checksum::Crc32, Checksum::Crc32c]),
        )
            .prop_map(|(magic, length_width, order, checksum)| MagicConfig {
                length_width,
                order,
                checksum,
                ..MagicConfig::new(magic)
            })
    }

    /// Garbage that cannot contain [`MAGIC`], biased towards its bytes.
    fn arb_garbage() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![any::<u8>(), prop::sample::select(MAGIC.to_vec())],
            0..40,
        )
        .prop_filter("contains the magic", |g| {
            memchr::memmem::find(g, MAGIC).is_none()
        })
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity_at_any_chunking(
            cfg in arb_config(),
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=255), 0..8),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let (input, _) = wire(&cfg, &refs);
            let mut c = codec(cfg);
            let (frames, errors) = decode_pieces(&mut c, &input, &sizes);
            prop_assert!(errors.is_empty(), "{:?}", errors);
            prop_assert_eq!(frames, bytes_vec(&refs));
            prop_assert_eq!(c.consumed(), input.len() as u64);
        }

        #[test]
        fn garbage_between_frames_is_skipped_and_counted(
            checksum in prop::sample::select(vec![Checksum::None, Checksum::Crc32, Checksum::Crc32c]),
            frames_and_garbage in prop::collection::vec(
                (arb_garbage(), prop::collection::vec(any::<u8>(), 0..100)),
                1..8,
            ),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let cfg = MagicConfig { checksum, ..config() };
            let c = codec(cfg.clone());
            let mut input = BytesMut::new();
            let mut expected_errors = Vec::new();
            for (garbage, payload) in &frames_and_garbage {
                if !garbage.is_empty() {
                    expected_errors.push((input.len(), garbage.len()));
                }
                input.extend_from_slice(garbage);
                c.encode(payload, &mut input).unwrap();
            }
            let mut c = codec(cfg);
            let (frames, errors) = decode_pieces(&mut c, &input, &sizes);
            let payloads: Vec<&[u8]> = frames_and_garbage.iter().map(|(_, p)| p.as_slice()).collect();
            prop_assert_eq!(frames, bytes_vec(&payloads));
            prop_assert_eq!(errors.len(), expected_errors.len(), "{:?}", errors);
            for (err, &(offset, skipped)) in errors.iter().zip(&expected_errors) {
                resync_cause(err, offset, skipped);
            }
            let total: usize = frames_and_garbage.iter().map(|(g, _)| g.len()).sum();
            let reported: usize = expected_errors.iter().map(|&(_, s)| s).sum();
            prop_assert_eq!(total, reported);
            prop_assert_eq!(c.consumed(), input.len() as u64);
        }

        #[test]
        fn damaged_streams_never_panic_and_resync_never_fails(
            cfg in arb_config(),
            fail in any::<bool>(),
            max in 0usize..300,
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=255), 0..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            noise in prop::collection::vec(any::<u8>(), 0..64),
            sizes in prop::collection::vec(1usize..64, 1..8),
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            let (mut input, _) = wire(&cfg, &refs);
            input.extend_from_slice(&noise);
            if !input.is_empty() {
                for (at, xor) in flips {
                    let i = at.index(input.len());
                    input[i] ^= xor;
                }
            }
            let cfg = MagicConfig {
                max_frame_length: max,
                resync: if fail { ResyncPolicy::Fail } else { ResyncPolicy::Resync },
                ..cfg
            };
            let mut c = codec(cfg);
            // decode_pieces checks the byte accounting and the buffer bound after every call.
            let (frames, errors) = decode_pieces(&mut c, &input, &sizes);
            for f in &frames {
                prop_assert!(f.len() <= max);
            }
            for (i, e) in errors.iter().enumerate() {
                if fail {
                    prop_assert!(!e.is_recoverable());
                    prop_assert_eq!(i, errors.len() - 1);
                } else if !e.is_recoverable() {
                    // Under Resync the only fatal error is a truncated frame at the very end.
                    prop_assert!(matches!(e.kind(), DecodeErrorKind::Truncated { .. }), "{}", e);
                    prop_assert_eq!(i, errors.len() - 1);
                }
            }
        }
    }
}
