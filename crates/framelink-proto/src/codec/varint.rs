//! Varint length-prefix framing: each frame is an unsigned LEB128 length followed by that many
//! payload bytes, the stream format of protobuf's `writeDelimitedTo` / `parseDelimitedFrom`.
//!
//! The prefix carries 7 bits per byte, least significant group first; a set high bit means another
//! byte follows. 0 is `00`, 127 is `7f`, 300 is `ac 02`. A `u64` needs at most
//! [`MAX_PREFIX_LEN`](VarintCodec::MAX_PREFIX_LEN) = 10 bytes, so a prefix still unfinished after 10
//! bytes, or whose 10th byte holds more than bit 63, is rejected at once as
//! [`VarintOverflow`](DecodeErrorKind::VarintOverflow): a peer can never make the decoder wait on
//! an endless prefix.
//!
//! In strict mode (the default) a prefix must be in its shortest form: `80 00` (0 written in two
//! bytes) is [`VarintNotMinimal`](DecodeErrorKind::VarintNotMinimal). Protobuf's own parsers accept
//! such padded prefixes; set [`strict`](VarintConfig::strict) to `false` to do the same.
//!
//! The maximum frame length limits the payload (the prefix is not counted) and is checked as soon
//! as the prefix is complete, before any of the payload is buffered.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    reserve_for_frame, ConfigError, DecodeError, DecodeErrorKind, EncodeError, FrameDecoder,
    FrameEncoder, FrameParts, InlineBytes, OversizePolicy, DEFAULT_MAX_FRAME_LENGTH,
};

/// Parameters of a [`VarintCodec`].
///
/// ```
/// use framelink_proto::codec::{OversizePolicy, VarintConfig};
///
/// let cfg = VarintConfig {
///     max_frame_length: 64 * 1024,
///     ..VarintConfig::default()
/// };
/// assert!(cfg.strict);
/// assert_eq!(cfg.oversize, OversizePolicy::Fail);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarintConfig {
    /// Largest accepted payload in bytes, the prefix not included.
    pub max_frame_length: usize,
    /// What to do with a frame whose prefix declares more than `max_frame_length` bytes.
    pub oversize: OversizePolicy,
    /// Reject prefixes that are not in their shortest form (such as `80 00` for 0). Encoders
    /// always write the shortest form.
    pub strict: bool,
}

impl Default for VarintConfig {
    /// An 8 MiB payload limit ([`DEFAULT_MAX_FRAME_LENGTH`]), fatal errors on oversized frames,
    /// strict prefixes.
    fn default() -> Self {
        VarintConfig {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            oversize: OversizePolicy::Fail,
            strict: true,
        }
    }
}

/// Decoder and encoder for varint length-prefixed frames: an unsigned LEB128 payload length, then
/// the payload (protobuf's `writeDelimitedTo` format). Configured by [`VarintConfig`].
///
/// The decoder rejects a prefix that runs past 10 bytes or 64 bits
/// ([`VarintOverflow`](DecodeErrorKind::VarintOverflow)) as soon as its 10th byte is in, and in
/// strict mode a prefix not in its shortest form
/// ([`VarintNotMinimal`](DecodeErrorKind::VarintNotMinimal)). The limit applies to the payload and
/// is checked as soon as the prefix is complete. The encoder always writes the shortest prefix.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, FrameEncoder, VarintCodec};
///
/// let mut codec = VarintCodec::default();
/// let mut wire = BytesMut::new();
/// codec.encode(b"hi", &mut wire).unwrap();
/// codec.encode(&[7; 300], &mut wire).unwrap();
/// assert_eq!(&wire[..3], b"\x02hi");
/// assert_eq!(&wire[3..5], &[0xac, 0x02]); // 300 as LEB128
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "hi");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap().len(), 300);
/// assert!(wire.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct VarintCodec {
    config: VarintConfig,
    /// Payload bytes of an oversized frame still to be dropped (discard policy).
    discard_remaining: u64,
    consumed: u64,
}

impl VarintCodec {
    /// Longest prefix: a `u64` in 7-bit groups takes 10 bytes.
    pub const MAX_PREFIX_LEN: usize = 10;

    /// Builds a codec. Every configuration is valid; the `Result` matches the other codecs.
    pub fn new(config: VarintConfig) -> Result<Self, ConfigError> {
        Ok(VarintCodec {
            config,
            discard_remaining: 0,
            consumed: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VarintConfig {
        &self.config
    }

    /// Drops buffered bytes of an oversized frame; returns true when all of it is gone.
    fn discard(&mut self, buf: &mut BytesMut) -> bool {
        let n = (buf.len() as u64).min(self.discard_remaining) as usize;
        buf.advance(n);
        self.consumed += n as u64;
        self.discard_remaining -= n as u64;
        self.discard_remaining == 0
    }
}

impl Default for VarintCodec {
    /// A codec with [`VarintConfig::default`].
    fn default() -> Self {
        Self::new(VarintConfig::default()).expect("the default configuration is valid")
    }
}

/// Reads a LEB128 value from the front of `buf`: `Ok(None)` while the prefix is incomplete (which
/// can only happen with fewer than 10 bytes buffered), else the value and the prefix length.
fn read_varint(buf: &[u8], strict: bool) -> Result<Option<(u64, usize)>, DecodeErrorKind> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(VarintCodec::MAX_PREFIX_LEN).enumerate() {
        // The 10th byte holds bit 63 only: anything more, continuation bit included, overflows.
        if i == VarintCodec::MAX_PREFIX_LEN - 1 && byte > 1 {
            return Err(DecodeErrorKind::VarintOverflow);
        }
        // i <= 9, so the shift is at most 63, and at i = 9 the group is 0 or 1.
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = i + 1;
            // The shortest form never ends in a zero group, except 0 itself (`00`).
            if strict && len > 1 && byte == 0 {
                return Err(DecodeErrorKind::VarintNotMinimal {
                    encoded_len: len,
                    value,
                });
            }
            return Ok(Some((value, len)));
        }
    }
    Ok(None)
}

/// Writes the shortest LEB128 form of `value` into `out`; returns its length.
fn write_varint(mut value: u64, out: &mut [u8; VarintCodec::MAX_PREFIX_LEN]) -> usize {
    let mut n = 0;
    // A u64 has at most 10 groups of 7 bits, so `n` stays below 10.
    while value >= 0x80 {
        out[n] = (value as u8 & 0x7f) | 0x80;
        value >>= 7;
        n += 1;
    }
    out[n] = value as u8;
    n + 1
}

impl FrameDecoder for VarintCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        if self.discard_remaining > 0 && !self.discard(buf) {
            return Ok(None);
        }
        let (length, prefix_len) = match read_varint(buf, self.config.strict) {
            Ok(Some(prefix)) => prefix,
            Ok(None) => return Ok(None),
            Err(kind) => return Err(DecodeError::fatal(kind, self.consumed)),
        };
        let limit = self.config.max_frame_length;
        if length > limit as u64 {
            let kind = DecodeErrorKind::FrameTooLong { length, limit };
            let offset = self.consumed;
            if self.config.oversize == OversizePolicy::Fail {
                return Err(DecodeError::fatal(kind, offset));
            }
            // The prefix is buffered: drop it now, then the payload as it arrives.
            buf.advance(prefix_len);
            self.consumed += prefix_len as u64;
            self.discard_remaining = length;
            self.discard(buf);
            return Err(DecodeError::recoverable(kind, offset));
        }
        // length <= limit, so it fits a usize; the sum only saturates for limits near usize::MAX.
        let frame_len = prefix_len.saturating_add(length as usize);
        if buf.len() < frame_len {
            reserve_for_frame(buf, frame_len);
            return Ok(None);
        }
        let mut frame = buf.split_to(frame_len);
        frame.advance(prefix_len);
        self.consumed += frame_len as u64;
        Ok(Some(frame.freeze()))
    }

    fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Prefix plus payload length, once the prefix is complete.
    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        match read_varint(buf, self.config.strict) {
            Ok(Some((length, prefix_len))) => Some(length.saturating_add(prefix_len as u64)),
            _ => None,
        }
    }
}

impl FrameEncoder for VarintCodec {
    fn check_payload(&self, payload: &[u8]) -> Result<(), EncodeError> {
        if payload.len() > self.config.max_frame_length {
            return Err(EncodeError::FrameTooLong {
                length: payload.len(),
                limit: self.config.max_frame_length,
            });
        }
        Ok(())
    }

    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        self.check_payload(payload)?;
        let mut prefix = [0u8; VarintCodec::MAX_PREFIX_LEN];
        let n = write_varint(payload.len() as u64, &mut prefix);
        Ok(FrameParts {
            head: InlineBytes::from_slice(&prefix[..n]),
            tail: InlineBytes::EMPTY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::{
        decode_chunked, decode_pieces, decode_split, feed, CheckedDecoder,
    };
    use proptest::prelude::*;

    fn codec(cfg: VarintConfig) -> VarintCodec {
        VarintCodec::new(cfg).unwrap()
    }

    fn max(max_frame_length: usize) -> VarintConfig {
        VarintConfig {
            max_frame_length,
            ..VarintConfig::default()
        }
    }

    fn prefix_of(value: u64) -> Vec<u8> {
        let mut out = [0u8; VarintCodec::MAX_PREFIX_LEN];
        let n = write_varint(value, &mut out);
        out[..n].to_vec()
    }

    /// Checked by the decode helpers after every `Ok(None)`: at most a whole frame and its prefix
    /// stay buffered.
    impl CheckedDecoder for VarintCodec {
        fn buffer_bound(&self) -> Option<usize> {
            Some(self.config.max_frame_length + VarintCodec::MAX_PREFIX_LEN)
        }
    }

    #[test]
    fn prefix_encoding_vectors() {
        let vectors: &[(u64, &[u8])] = &[
            (0, &[0x00]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (150, &[0x96, 0x01]),
            (300, &[0xac, 0x02]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (u64::from(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
            (
                1 << 63,
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            ),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for &(value, bytes) in vectors {
            assert_eq!(prefix_of(value), bytes, "encoding {value}");
            assert_eq!(
                read_varint(bytes, true),
                Ok(Some((value, bytes.len()))),
                "decoding {bytes:02x?}"
            );
            // Every proper prefix of it is incomplete.
            for end in 0..bytes.len() {
                assert_eq!(read_varint(&bytes[..end], true), Ok(None));
            }
        }
    }

    #[test]
    fn frame_encoding_vectors() {
        let c = VarintCodec::default();
        let mut wire = BytesMut::new();
        c.encode(b"", &mut wire).unwrap();
        c.encode(b"hi", &mut wire).unwrap();
        assert_eq!(&wire[..], b"\x00\x02hi");
        let mut wire = BytesMut::new();
        c.encode(&[0x55; 300], &mut wire).unwrap();
        assert_eq!(wire.len(), 302);
        assert_eq!(&wire[..2], &[0xac, 0x02]);
        assert!(wire[2..].iter().all(|&b| b == 0x55));
        // Vectored: the prefix is the header, no trailer, payload not copied.
        let frame = c.encode_vectored(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(frame.parts().head(), &[3]);
        assert!(frame.parts().tail().is_empty());
        assert_eq!(frame.remaining(), 4);
    }

    #[test]
    fn decodes_frames_at_every_chunk_size_and_split_point() {
        let c = VarintCodec::default();
        let payloads: Vec<Vec<u8>> = vec![
            b"one".to_vec(),
            Vec::new(),
            vec![0xab; 127],
            vec![0xcd; 128],
            vec![0x80; 300],
            b"last".to_vec(),
        ];
        let mut input = BytesMut::new();
        for p in &payloads {
            c.encode(p, &mut input).unwrap();
        }
        let expected: Vec<Bytes> = payloads.into_iter().map(Bytes::from).collect();
        for chunk in 1..=input.len() {
            let mut d = VarintCodec::default();
            let (frames, errors) = decode_chunked(&mut d, &input, chunk);
            assert!(errors.is_empty(), "chunk {chunk}: {errors:?}");
            assert_eq!(frames, expected, "chunk {chunk}");
            assert_eq!(d.consumed(), input.len() as u64);
        }
        for at in 0..=input.len() {
            let mut d = VarintCodec::default();
            let (frames, errors) = decode_split(&mut d, &input, at);
            assert!(errors.is_empty(), "split {at}: {errors:?}");
            assert_eq!(frames, expected, "split {at}");
        }
    }

    #[test]
    fn overlong_prefix_is_an_overflow_at_once() {
        // A valid frame first, so the error's offset is not 0.
        let mut input = vec![1u8, b'x'];
        input.extend_from_slice(&[0xff; 10]);
        // 10 bytes all with the continuation bit: no need to wait for an 11th.
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "x");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::VarintOverflow);
        assert_eq!(err.offset(), 2);
        assert!(!err.is_recoverable());
        // At every split the same error, never a wait once 10 prefix bytes are in.
        for at in 0..=input.len() {
            let (frames, errors) = decode_split(&mut VarintCodec::default(), &input, at);
            assert_eq!(frames, vec![Bytes::from("x")]);
            assert_eq!(errors.len(), 1, "split {at}");
            assert_eq!(errors[0].kind(), &DecodeErrorKind::VarintOverflow);
            assert_eq!(errors[0].offset(), 2);
        }
        // Nine bytes with the continuation bit may still be valid: wait.
        let mut buf = BytesMut::from(&[0x80u8; 9][..]);
        assert_eq!(VarintCodec::default().decode(&mut buf), Ok(None));
        // A 10th byte above 1 overflows 64 bits, even without the continuation bit.
        for last in [0x02u8, 0x7f, 0x80, 0x81] {
            let mut bytes = vec![0x80u8; 9];
            bytes.push(last);
            let mut c = codec(VarintConfig {
                strict: false,
                ..VarintConfig::default()
            });
            let err = c.decode(&mut BytesMut::from(&bytes[..])).unwrap_err();
            assert_eq!(err.kind(), &DecodeErrorKind::VarintOverflow, "{last:#x}");
            assert_eq!(err.offset(), 0);
        }
    }

    #[test]
    fn non_minimal_prefixes_rejected_when_strict() {
        let cases: &[(&[u8], usize, u64)] = &[
            (&[0x80, 0x00], 2, 0),
            (&[0xff, 0x00], 2, 127),
            (&[0xac, 0x82, 0x00], 3, 300),
            (&[0x81, 0x80, 0x80, 0x00], 4, 1),
            (
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
                10,
                0,
            ),
        ];
        for &(prefix, encoded_len, value) in cases {
            let mut input = vec![0u8]; // an empty frame first: offset 1
            input.extend_from_slice(prefix);
            let mut c = VarintCodec::default();
            let mut buf = BytesMut::from(&input[..]);
            assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "");
            let err = c.decode(&mut buf).unwrap_err();
            assert_eq!(
                err.kind(),
                &DecodeErrorKind::VarintNotMinimal { encoded_len, value },
                "{prefix:02x?}"
            );
            assert_eq!(err.offset(), 1);
            assert!(!err.is_recoverable());
        }
    }

    #[test]
    fn non_minimal_prefixes_accepted_when_lenient() {
        let lenient = VarintConfig {
            strict: false,
            ..VarintConfig::default()
        };
        let mut input = vec![0x80u8, 0x00];
        input.extend_from_slice(&[0x83, 0x80, 0x00, b'a', b'b', b'c']);
        input.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        for chunk in 1..=input.len() {
            let mut c = codec(lenient.clone());
            let (frames, errors) = decode_chunked(&mut c, &input, chunk);
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(
                frames,
                vec![Bytes::new(), Bytes::from("abc"), Bytes::new()],
                "chunk {chunk}"
            );
            assert_eq!(c.consumed(), input.len() as u64);
        }
    }

    #[test]
    fn oversized_length_fails_on_sight_without_allocating() {
        let mut c = codec(max(10));
        let mut buf = BytesMut::from(&[0x0bu8, 1, 2, 3][..]);
        let cap = buf.capacity();
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 11,
                limit: 10
            }
        );
        assert_eq!(err.offset(), 0);
        assert!(!err.is_recoverable());
        assert_eq!(buf.capacity(), cap);
        // Exactly at the limit is accepted.
        let mut c = codec(max(10));
        let mut buf = BytesMut::from(&[10u8; 11][..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().len(), 10);
        // The largest value a prefix can hold.
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::from(&prefix_of(u64::MAX)[..]);
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::FrameTooLong {
                length: u64::MAX,
                limit: DEFAULT_MAX_FRAME_LENGTH
            }
        );
    }

    #[test]
    fn discard_policy_skips_the_oversized_frame_and_continues() {
        let cfg = VarintConfig {
            max_frame_length: 150,
            oversize: OversizePolicy::Discard,
            ..VarintConfig::default()
        };
        let mut input = vec![1u8, b'a'];
        input.extend_from_slice(&[0xac, 0x02]); // 300 > 150
        input.extend_from_slice(&[b'x'; 300]);
        input.extend_from_slice(&[2, b'b', b'c']);
        let check = |c: &VarintCodec, frames: Vec<Bytes>, errors: Vec<DecodeError>, how: &str| {
            assert_eq!(frames, vec![Bytes::from("a"), Bytes::from("bc")], "{how}");
            assert_eq!(errors.len(), 1, "reported once per frame ({how})");
            assert_eq!(
                errors[0].kind(),
                &DecodeErrorKind::FrameTooLong {
                    length: 300,
                    limit: 150
                }
            );
            assert!(errors[0].is_recoverable());
            assert_eq!(errors[0].offset(), 2);
            assert_eq!(c.consumed(), input.len() as u64, "{how}");
        };
        for chunk in 1..=input.len() {
            let mut c = codec(cfg.clone());
            let (frames, errors) = decode_chunked(&mut c, &input, chunk);
            check(&c, frames, errors, &format!("chunk {chunk}"));
        }
        for at in 0..=input.len() {
            let mut c = codec(cfg.clone());
            let (frames, errors) = decode_split(&mut c, &input, at);
            check(&c, frames, errors, &format!("split {at}"));
        }
    }

    #[test]
    fn discarding_a_huge_declared_length_never_overflows() {
        let mut c = codec(VarintConfig {
            max_frame_length: 4,
            oversize: OversizePolicy::Discard,
            ..VarintConfig::default()
        });
        let mut buf = BytesMut::from(&prefix_of(u64::MAX)[..]);
        buf.extend_from_slice(&[0; 100]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(err.is_recoverable());
        assert!(buf.is_empty());
        assert_eq!(c.consumed(), 110);
        buf.extend_from_slice(&[1; 50]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert_eq!(c.consumed(), 160);
    }

    #[test]
    fn truncated_at_eof_reports_buffered_and_expected() {
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::from(&[2u8, b'o', b'k', 5, b'h', b'e'][..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "ok");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 3,
                expected: Some(6)
            }
        );
        assert_eq!(err.offset(), 3);
        assert!(!err.is_recoverable());
        // A two-byte prefix counts in the expected length.
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::from(&[0xac, 0x02, 0][..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: 3,
                expected: Some(302)
            }
        );
        // A partial prefix: length unknown.
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::from(&[0x80u8][..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: 1,
                expected: None
            }
        );
        // A clean end between frames.
        let mut c = VarintCodec::default();
        assert_eq!(c.decode_eof(&mut BytesMut::new()), Ok(None));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn largest_limit_never_overflows() {
        let mut c = codec(max(usize::MAX));
        let mut buf = BytesMut::from(&prefix_of(u64::MAX)[..]);
        buf.extend_from_slice(b"abc");
        assert_eq!(c.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: 13,
                expected: Some(u64::MAX)
            }
        );
    }

    #[test]
    fn buffer_grows_with_arrivals_not_declared_length() {
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&prefix_of(DEFAULT_MAX_FRAME_LENGTH as u64));
        buf.extend_from_slice(&[0; 10]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn encoder_refuses_payloads_over_the_limit() {
        let c = codec(max(10));
        let mut wire = BytesMut::new();
        assert_eq!(
            c.encode(&[0; 11], &mut wire),
            Err(EncodeError::FrameTooLong {
                length: 11,
                limit: 10
            })
        );
        assert!(wire.is_empty());
        c.encode(&[0; 10], &mut wire).unwrap();
        assert_eq!(wire.len(), 11);
        assert!(c.encode_vectored(Bytes::from(vec![0; 11])).is_err());
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut c = VarintCodec::default();
        let mut buf = BytesMut::from(&[3u8, b'a', b'b', b'c', 1, b'd'][..]);
        let base = buf.as_ptr() as usize;
        let f1 = c.decode(&mut buf).unwrap().unwrap();
        let f2 = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.as_ptr() as usize, base + 1);
        assert_eq!(f2.as_ptr() as usize, base + 5);
        assert_eq!(c.consumed(), 6);
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..=300), 0..8),
            feed in feed(),
        ) {
            let enc = codec(max(300));
            let mut wire = BytesMut::new();
            for p in &payloads {
                enc.encode(p, &mut wire).unwrap();
            }
            let mut dec = codec(max(300));
            // decode_pieces asserts buf.len() <= max + 10 after every Ok(None).
            let (frames, errors) = decode_pieces(&mut dec, feed.pieces(&wire));
            prop_assert!(errors.is_empty(), "{:?}", errors);
            let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
            prop_assert_eq!(frames, payloads);
            prop_assert_eq!(dec.consumed(), wire.len() as u64);
            prop_assert_eq!(dec.decode_eof(&mut BytesMut::new()), Ok(None));
        }

        #[test]
        fn any_prefix_value_round_trips(value in any::<u64>()) {
            let bytes = prefix_of(value);
            prop_assert!(bytes.len() <= VarintCodec::MAX_PREFIX_LEN);
            prop_assert_eq!(read_varint(&bytes, true), Ok(Some((value, bytes.len()))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(0x80u8), Just(0xffu8), Just(0u8)], 0..200),
            feed in feed(),
            limit in 0usize..40,
            discard in any::<bool>(),
            strict in any::<bool>(),
        ) {
            let mut c = codec(VarintConfig {
                max_frame_length: limit,
                oversize: if discard { OversizePolicy::Discard } else { OversizePolicy::Fail },
                strict,
            });
            let (frames, _errors) = decode_pieces(&mut c, feed.pieces(&input));
            prop_assert!(c.consumed() <= input.len() as u64);
            prop_assert!(frames.iter().all(|f| f.len() <= limit));
        }
    }
}
