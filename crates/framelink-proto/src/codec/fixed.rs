//! Fixed-length framing: every frame is exactly [`length`](FixedLengthConfig::length) bytes, with
//! no header and no trailer, as in Netty's `FixedLengthFrameDecoder`.
//!
//! The stream is cut every `length` bytes; there is nothing to validate, so decoding never fails
//! before the end of the stream. A partial frame left when the peer closes is reported by
//! [`decode_eof`](FrameDecoder::decode_eof) as [`Truncated`](super::DecodeErrorKind::Truncated) with the
//! expected length. The encoder only accepts payloads of exactly `length` bytes.

use bytes::{Bytes, BytesMut};

use super::{
    reserve_for_frame, ConfigError, DecodeError, EncodeError, FrameDecoder, FrameEncoder,
    FrameParts, InlineBytes,
};

/// Parameters of a [`FixedLengthCodec`].
///
/// ```
/// use framelink_proto::codec::FixedLengthConfig;
///
/// let cfg = FixedLengthConfig::new(64);
/// assert_eq!(cfg, FixedLengthConfig { length: 64 });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedLengthConfig {
    /// Size of every frame in bytes, at least 1.
    pub length: usize,
}

impl FixedLengthConfig {
    /// Frames of `length` bytes.
    pub fn new(length: usize) -> Self {
        FixedLengthConfig { length }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.length == 0 {
            return Err(ConfigError::OutOfRange {
                name: "length",
                value: 0,
                range: "1 or more",
            });
        }
        Ok(())
    }
}

/// Decoder and encoder for fixed-length frames: the stream is cut every
/// [`length`](FixedLengthConfig::length) bytes, with no header or trailer. Decoding never fails
/// except for a partial frame at the end of the stream
/// ([`Truncated`](super::DecodeErrorKind::Truncated) from
/// [`decode_eof`](FrameDecoder::decode_eof)); the encoder only accepts payloads of exactly `length`
/// bytes.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FixedLengthCodec, FixedLengthConfig, FrameDecoder, FrameEncoder};
///
/// let mut codec = FixedLengthCodec::new(FixedLengthConfig::new(3)).unwrap();
/// let mut wire = BytesMut::new();
/// codec.encode(b"abc", &mut wire).unwrap();
/// assert!(codec.encode(b"too long", &mut wire).is_err());
/// wire.extend_from_slice(b"defg");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "abc");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "def");
/// assert_eq!(codec.decode(&mut wire).unwrap(), None); // "g" waits for two more bytes
/// ```
#[derive(Debug, Clone)]
pub struct FixedLengthCodec {
    config: FixedLengthConfig,
    consumed: u64,
}

impl FixedLengthCodec {
    /// Builds a codec; a `length` of 0 is [`ConfigError::OutOfRange`].
    pub fn new(config: FixedLengthConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(FixedLengthCodec {
            config,
            consumed: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FixedLengthConfig {
        &self.config
    }
}

impl FrameDecoder for FixedLengthCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        let length = self.config.length;
        if buf.len() < length {
            reserve_for_frame(buf, length);
            return Ok(None);
        }
        self.consumed += length as u64;
        Ok(Some(buf.split_to(length).freeze()))
    }

    fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Always the configured length: there is no header to wait for.
    fn pending_frame_length(&self, _buf: &BytesMut) -> Option<u64> {
        Some(self.config.length as u64)
    }
}

impl FrameEncoder for FixedLengthCodec {
    fn check_payload(&self, payload: &[u8]) -> Result<(), EncodeError> {
        if payload.len() != self.config.length {
            return Err(EncodeError::WrongFixedLength {
                length: payload.len(),
                expected: self.config.length,
            });
        }
        Ok(())
    }

    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        self.check_payload(payload)?;
        Ok(FrameParts {
            head: InlineBytes::EMPTY,
            tail: InlineBytes::EMPTY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::{decode_pieces, feed, CheckedDecoder};
    use crate::codec::DecodeErrorKind;
    use bytes::Buf;
    use proptest::prelude::*;

    fn codec(length: usize) -> FixedLengthCodec {
        FixedLengthCodec::new(FixedLengthConfig::new(length)).unwrap()
    }

    /// Checked by the decode helpers after every `Ok(None)`: fewer than `length` bytes stay
    /// buffered.
    impl CheckedDecoder for FixedLengthCodec {
        fn buffer_bound(&self) -> Option<usize> {
            Some(self.config.length - 1)
        }
    }

    /// Decodes `input` fed in the given pieces; returns the frames (fixed-length decoding cannot
    /// fail).
    fn decode_frames<'a>(
        codec: &mut FixedLengthCodec,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<Bytes> {
        let (frames, errors) = decode_pieces(codec, pieces);
        assert!(errors.is_empty(), "fixed decoding cannot fail: {errors:?}");
        frames
    }

    #[test]
    fn encoding_writes_the_payload_alone() {
        let c = codec(4);
        let mut wire = BytesMut::new();
        c.encode(b"abcd", &mut wire).unwrap();
        c.encode(&[0, 1, 2, 3], &mut wire).unwrap();
        assert_eq!(&wire[..], b"abcd\x00\x01\x02\x03");
        let frame = c.encode_vectored(Bytes::from_static(b"wxyz")).unwrap();
        assert!(frame.parts().head().is_empty());
        assert!(frame.parts().tail().is_empty());
        assert_eq!(frame.remaining(), 4);
        assert_eq!(frame.chunk(), b"wxyz");
    }

    #[test]
    fn encoder_refuses_other_lengths() {
        let c = codec(4);
        let mut wire = BytesMut::new();
        for (length, payload) in [(3, &b"abc"[..]), (5, &b"abcde"[..]), (0, &b""[..])] {
            assert_eq!(
                c.encode(payload, &mut wire),
                Err(EncodeError::WrongFixedLength {
                    length,
                    expected: 4
                })
            );
        }
        assert!(wire.is_empty());
        assert!(c.encode_vectored(Bytes::from_static(b"abcde")).is_err());
    }

    #[test]
    fn zero_length_is_rejected() {
        assert_eq!(
            FixedLengthCodec::new(FixedLengthConfig::new(0)).unwrap_err(),
            ConfigError::OutOfRange {
                name: "length",
                value: 0,
                range: "1 or more"
            }
        );
    }

    #[test]
    fn decodes_frames_at_every_chunk_size_and_split_point() {
        let input: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789"; // 36 bytes, 9 frames of 4
        let expected: Vec<Bytes> = input.chunks(4).map(Bytes::copy_from_slice).collect();
        for chunk in 1..=input.len() {
            let mut c = codec(4);
            assert_eq!(
                decode_frames(&mut c, input.chunks(chunk)),
                expected,
                "chunk {chunk}"
            );
            assert_eq!(c.consumed(), 36);
        }
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(decode_frames(&mut codec(4), [a, b]), expected, "split {at}");
        }
        // Length 1: every byte is a frame.
        assert_eq!(decode_frames(&mut codec(1), [&b"xyz"[..]]).len(), 3);
    }

    #[test]
    fn truncated_at_eof_reports_buffered_and_expected() {
        let mut c = codec(4);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "abcd");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 2,
                expected: Some(4)
            }
        );
        assert_eq!(err.offset(), 4);
        assert!(!err.is_recoverable());
        // A clean end between frames.
        let mut buf = BytesMut::from(&b"ghij"[..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "ghij");
        assert_eq!(c.decode_eof(&mut buf), Ok(None));
        assert_eq!(c.consumed(), 8);
    }

    #[test]
    fn buffer_grows_with_arrivals_not_frame_length() {
        let mut c = codec(16 << 20);
        let mut buf = BytesMut::from(&[0u8; 10][..]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut c = codec(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let base = buf.as_ptr() as usize;
        let f1 = c.decode(&mut buf).unwrap().unwrap();
        let f2 = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.as_ptr() as usize, base);
        assert_eq!(f2.as_ptr() as usize, base + 3);
    }

    /// A frame length and up to 8 payloads of that length.
    fn frames() -> impl Strategy<Value = (usize, Vec<Vec<u8>>)> {
        (1usize..=40).prop_flat_map(|length| {
            (
                Just(length),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), length), 0..8),
            )
        })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode((length, payloads) in frames(), feed in feed()) {
            let enc = codec(length);
            let mut wire = BytesMut::new();
            for p in &payloads {
                enc.encode(p, &mut wire).unwrap();
            }
            let mut dec = codec(length);
            // decode_frames asserts buf.len() < length after every Ok(None).
            let frames: Vec<Vec<u8>> =
                decode_frames(&mut dec, feed.pieces(&wire)).iter().map(|f| f.to_vec()).collect();
            prop_assert_eq!(frames, payloads);
            prop_assert_eq!(dec.consumed(), wire.len() as u64);
            prop_assert_eq!(dec.decode_eof(&mut BytesMut::new()), Ok(None));
        }

        #[test]
        fn any_stream_is_cut_every_length_bytes(
            input in proptest::collection::vec(any::<u8>(), 0..200),
            length in 1usize..50,
            feed in feed(),
        ) {
            let mut c = codec(length);
            let frames = decode_frames(&mut c, feed.pieces(&input));
            prop_assert_eq!(frames.len(), input.len() / length);
            prop_assert!(frames.iter().all(|f| f.len() == length));
            prop_assert_eq!(c.consumed(), (input.len() / length * length) as u64);
        }
    }
}
