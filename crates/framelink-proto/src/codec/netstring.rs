//! Netstring framing (D. J. Bernstein's format): each frame is `<length>:<payload>,`, the length
//! in ASCII decimal. `5:hello,` carries `hello`; `0:,` is the empty string.
//!
//! The decoder is strict about the header: the length must be one or more decimal digits without
//! leading zeros (a lone `0` is fine), directly followed by `:`, and the payload must be followed
//! by `,`. Anything else is a fatal [`InvalidNetstring`](DecodeErrorKind::InvalidNetstring) that
//! names the fault.
//!
//! The maximum frame length limits the payload. It is checked digit by digit: as soon as the digits
//! received so far exceed it (every further digit only makes the length larger) the frame is
//! [`FrameTooLong`](DecodeErrorKind::FrameTooLong), without waiting for the colon, so a peer cannot
//! make the decoder wait on an endless run of digits. The reported length is the value of the digits
//! buffered at that moment: the declared length when the whole header has arrived, a lower bound
//! otherwise. Under [`OversizePolicy::Discard`] the rest of the length digits, the colon, the payload
//! and the comma are then dropped as they arrive (the comma is not checked), and decoding resumes
//! with the next netstring. A length whose digits run past `u64::MAX` cannot be skipped and is fatal
//! under either policy.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    reserve_for_frame, ConfigError, DecodeError, DecodeErrorKind, EncodeError, FrameDecoder,
    FrameEncoder, FrameParts, InlineBytes, OversizePolicy, DEFAULT_MAX_FRAME_LENGTH,
};

/// `InvalidNetstring` reason: a length such as `05`.
const LEADING_ZERO: &str = "leading zero in length";
/// `InvalidNetstring` reason: a header starting with `:`.
const EMPTY_LENGTH: &str = "empty length before ':'";
/// `InvalidNetstring` reason: a byte other than a digit or `:` in the header.
const NON_DIGIT: &str = "non-digit byte in length";
/// `InvalidNetstring` reason: the byte after the payload is not `,`.
const MISSING_COMMA: &str = "missing ',' after payload";

/// Decimal digits in `usize::MAX` (on 64-bit targets): the longest length the encoder writes.
const MAX_LENGTH_DIGITS: usize = 20;

/// Parameters of a [`NetstringCodec`].
///
/// ```
/// use framelink_proto::codec::{NetstringCodec, NetstringConfig, OversizePolicy};
///
/// // Payloads up to 4 KiB; longer netstrings are reported once, skipped, and decoding goes on.
/// let codec = NetstringCodec::new(NetstringConfig {
///     max_frame_length: 4096,
///     oversize: OversizePolicy::Discard,
/// })
/// .unwrap();
/// assert_eq!(codec.config().max_frame_length, 4096);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetstringConfig {
    /// Largest accepted payload in bytes, the length digits, colon and comma not included.
    pub max_frame_length: usize,
    /// What to do with a netstring whose length is over `max_frame_length`.
    pub oversize: OversizePolicy,
}

impl Default for NetstringConfig {
    /// An 8 MiB payload limit ([`DEFAULT_MAX_FRAME_LENGTH`]) and fatal errors on oversized frames.
    fn default() -> Self {
        NetstringConfig {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            oversize: OversizePolicy::Fail,
        }
    }
}

/// Decoder and encoder for netstrings, `<decimal length>:<payload>,`. Configured by
/// [`NetstringConfig`].
///
/// A length with a leading zero (other than a lone `0`), an empty length, a byte other than a digit
/// before the colon, or a missing comma after the payload is a fatal
/// [`InvalidNetstring`](DecodeErrorKind::InvalidNetstring). The limit applies to the payload and is
/// checked digit by digit: once the digits received exceed it the frame is
/// [`FrameTooLong`](DecodeErrorKind::FrameTooLong) with the value of the digits buffered so far
/// (the declared length if the colon is in the buffer, a lower bound otherwise), without waiting for
/// the colon. Under [`OversizePolicy::Discard`] the rest of the frame, comma included, is then
/// dropped as it arrives.
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, FrameEncoder, NetstringCodec};
///
/// let mut codec = NetstringCodec::default();
/// let mut wire = BytesMut::new();
/// codec.encode(b"hello", &mut wire).unwrap();
/// codec.encode(b"", &mut wire).unwrap();
/// assert_eq!(&wire[..], b"5:hello,0:,");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "hello");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "");
/// assert!(wire.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct NetstringCodec {
    config: NetstringConfig,
    state: State,
    consumed: u64,
}

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a frame boundary: the header is read from the front of the buffer.
    Header,
    /// Dropping the remaining length digits of an oversized frame (discard policy).
    SkipDigits {
        /// Value of the digits seen so far.
        length: u64,
        /// Stream offset of the frame, for a later fatal error.
        frame_start: u64,
    },
    /// Dropping an oversized frame's payload and comma (discard policy).
    Discard {
        /// Bytes still to drop.
        remaining: u64,
    },
}

/// Outcome of reading a header at the front of a buffer.
enum Header {
    /// Digits so far are valid and within the limit; no colon yet.
    Incomplete,
    /// A complete header within the limit.
    Frame {
        /// Digits plus colon.
        header_len: usize,
        /// The declared payload length (at most the limit).
        payload_len: usize,
    },
    /// The digits exceed the limit.
    TooLong {
        /// Value of all the buffered digits, saturated at `u64::MAX`.
        length: u64,
        /// Number of leading digit bytes that make up `length`.
        digits: usize,
        /// The buffered digits do not fit a `u64`: the frame can never be skipped.
        overflow: bool,
    },
}

/// `value * 10 + digit`, or `None` when it overflows `u64`. `digit` is an ASCII digit.
#[inline]
fn push_digit(value: u64, digit: u8) -> Option<u64> {
    value
        .checked_mul(10)?
        .checked_add(u64::from(digit.wrapping_sub(b'0')))
}

impl NetstringCodec {
    /// Builds a codec. Every configuration is valid; the `Result` matches the other codecs.
    pub fn new(config: NetstringConfig) -> Result<Self, ConfigError> {
        Ok(NetstringCodec {
            config,
            state: State::Header,
            consumed: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetstringConfig {
        &self.config
    }

    /// Reads the `<digits>:` header at the front of `buf`; `Err` holds an `InvalidNetstring` reason.
    fn read_header(&self, buf: &[u8]) -> Result<Header, &'static str> {
        let limit = self.config.max_frame_length as u64;
        let mut value = 0u64;
        for (i, &byte) in buf.iter().enumerate() {
            match byte {
                b'0'..=b'9' => {
                    if i == 1 && buf.first() == Some(&b'0') {
                        return Err(LEADING_ZERO);
                    }
                    match push_digit(value, byte) {
                        Some(next) if next <= limit => value = next,
                        // Over the limit (or past u64): every further digit only adds to it.
                        next => return Ok(Self::too_long(buf, i + 1, next)),
                    }
                }
                b':' if i == 0 => return Err(EMPTY_LENGTH),
                b':' => {
                    return Ok(Header::Frame {
                        header_len: i + 1,
                        // value <= limit, a usize.
                        payload_len: value as usize,
                    });
                }
                _ => return Err(NON_DIGIT),
            }
        }
        Ok(Header::Incomplete)
    }

    /// Reads the digits still buffered after the first `digits` of a length over the limit, whose
    /// value so far is `value` (`None` past `u64::MAX`).
    fn too_long(buf: &[u8], mut digits: usize, mut value: Option<u64>) -> Header {
        while let Some(v) = value {
            match buf.get(digits) {
                Some(&byte) if byte.is_ascii_digit() => {
                    value = push_digit(v, byte);
                    digits += 1;
                }
                _ => break,
            }
        }
        Header::TooLong {
            length: value.unwrap_or(u64::MAX),
            digits,
            overflow: value.is_none(),
        }
    }

    /// Takes `n` buffered bytes off the front of `buf`.
    fn skip(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.consumed += n as u64;
    }

    /// Drops the rest of an oversized frame's length digits as they arrive. Returns true once the
    /// colon is consumed (the decoder then discards the payload).
    fn skip_digits(
        &mut self,
        buf: &mut BytesMut,
        mut length: u64,
        frame_start: u64,
    ) -> Result<bool, DecodeError> {
        let mut n = 0;
        let outcome = loop {
            match buf.get(n) {
                None => {
                    self.state = State::SkipDigits {
                        length,
                        frame_start,
                    };
                    break Ok(false);
                }
                Some(b':') => {
                    n += 1;
                    self.state = State::Discard {
                        remaining: length.saturating_add(1),
                    };
                    break Ok(true);
                }
                Some(&byte) if byte.is_ascii_digit() => match push_digit(length, byte) {
                    Some(next) => {
                        length = next;
                        n += 1;
                    }
                    None => {
                        break Err(DecodeError::fatal(
                            DecodeErrorKind::FrameTooLong {
                                length: u64::MAX,
                                limit: self.config.max_frame_length,
                            },
                            frame_start,
                        ))
                    }
                },
                Some(_) => {
                    break Err(DecodeError::fatal(
                        DecodeErrorKind::InvalidNetstring { reason: NON_DIGIT },
                        frame_start,
                    ))
                }
            }
        };
        self.skip(buf, n);
        outcome
    }

    /// Drops buffered bytes of an oversized frame's payload; returns true when all of it is gone.
    fn discard(&mut self, buf: &mut BytesMut) -> bool {
        let State::Discard { remaining } = self.state else {
            return true;
        };
        let n = (buf.len() as u64).min(remaining) as usize;
        self.skip(buf, n);
        let remaining = remaining - n as u64;
        self.state = if remaining == 0 {
            State::Header
        } else {
            State::Discard { remaining }
        };
        remaining == 0
    }
}

impl Default for NetstringCodec {
    /// A codec with [`NetstringConfig::default`].
    fn default() -> Self {
        Self::new(NetstringConfig::default()).expect("the default configuration is valid")
    }
}

impl FrameDecoder for NetstringCodec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        loop {
            match self.state {
                State::Header => break,
                State::SkipDigits {
                    length,
                    frame_start,
                } => {
                    if !self.skip_digits(buf, length, frame_start)? {
                        return Ok(None);
                    }
                }
                State::Discard { .. } => {
                    if !self.discard(buf) {
                        return Ok(None);
                    }
                }
            }
        }
        let offset = self.consumed;
        match self.read_header(buf) {
            Err(reason) => Err(DecodeError::fatal(
                DecodeErrorKind::InvalidNetstring { reason },
                offset,
            )),
            Ok(Header::Incomplete) => Ok(None),
            Ok(Header::TooLong {
                length,
                digits,
                overflow,
            }) => {
                let kind = DecodeErrorKind::FrameTooLong {
                    length,
                    limit: self.config.max_frame_length,
                };
                // A length past u64 cannot be skipped: the stream is lost even under Discard.
                if self.config.oversize == OversizePolicy::Fail || overflow {
                    return Err(DecodeError::fatal(kind, offset));
                }
                self.skip(buf, digits);
                if buf.first() == Some(&b':') {
                    self.skip(buf, 1);
                    self.state = State::Discard {
                        remaining: length.saturating_add(1),
                    };
                    self.discard(buf);
                } else {
                    // More digits (or a malformed byte, reported by the next call) to come.
                    self.state = State::SkipDigits {
                        length,
                        frame_start: offset,
                    };
                }
                Err(DecodeError::recoverable(kind, offset))
            }
            Ok(Header::Frame {
                header_len,
                payload_len,
            }) => {
                // Saturates only for limits near usize::MAX, where the frame cannot be buffered.
                let frame_len = header_len.saturating_add(payload_len).saturating_add(1);
                if buf.len() < frame_len {
                    reserve_for_frame(buf, frame_len);
                    return Ok(None);
                }
                if buf.get(frame_len - 1) != Some(&b',') {
                    return Err(DecodeError::fatal(
                        DecodeErrorKind::InvalidNetstring {
                            reason: MISSING_COMMA,
                        },
                        offset,
                    ));
                }
                let mut frame = buf.split_to(frame_len);
                frame.advance(header_len);
                frame.truncate(payload_len);
                self.consumed += frame_len as u64;
                Ok(Some(frame.freeze()))
            }
        }
    }

    fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Header, payload and comma, once the colon has been read.
    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        if self.state != State::Header {
            return None;
        }
        match self.read_header(buf) {
            Ok(Header::Frame {
                header_len,
                payload_len,
            }) => Some(
                (header_len as u64)
                    .saturating_add(payload_len as u64)
                    .saturating_add(1),
            ),
            _ => None,
        }
    }
}

impl FrameEncoder for NetstringCodec {
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
        // Decimal digits of the length, written from the end.
        let mut digits = [0u8; MAX_LENGTH_DIGITS];
        let mut start = digits.len();
        let mut n = payload.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut head = InlineBytes::from_slice(&digits[start..]);
        head.push(b":");
        Ok(FrameParts {
            head,
            tail: InlineBytes::from_slice(b","),
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

    fn codec(cfg: NetstringConfig) -> NetstringCodec {
        NetstringCodec::new(cfg).unwrap()
    }

    fn max(max_frame_length: usize) -> NetstringConfig {
        NetstringConfig {
            max_frame_length,
            ..NetstringConfig::default()
        }
    }

    fn discarding(max_frame_length: usize) -> NetstringConfig {
        NetstringConfig {
            max_frame_length,
            oversize: OversizePolicy::Discard,
        }
    }

    /// Most bytes a header, payload and comma within `limit` can take.
    fn overhead_bound(limit: usize) -> usize {
        limit + limit.to_string().len() + 2
    }

    /// Checked by the decode helpers after every `Ok(None)`: at most a whole frame (header,
    /// payload and comma) stays buffered.
    impl CheckedDecoder for NetstringCodec {
        fn buffer_bound(&self) -> Option<usize> {
            Some(overhead_bound(self.config.max_frame_length))
        }
    }

    fn invalid(reason: &'static str) -> DecodeErrorKind {
        DecodeErrorKind::InvalidNetstring { reason }
    }

    #[test]
    fn encoding_vectors() {
        let c = NetstringCodec::default();
        let vectors: &[(&[u8], &[u8])] = &[
            (b"", b"0:,"),
            (b"a", b"1:a,"),
            (b"hello world!", b"12:hello world!,"),
            (b"1:x,", b"4:1:x,,"),
        ];
        for &(payload, wire) in vectors {
            let mut out = BytesMut::new();
            c.encode(payload, &mut out).unwrap();
            assert_eq!(&out[..], wire);
        }
        let mut out = BytesMut::new();
        c.encode(&[b'z'; 100], &mut out).unwrap();
        assert_eq!(&out[..4], b"100:");
        assert_eq!(out.len(), 105);
        assert_eq!(out.last(), Some(&b','));
        // Vectored: digits and colon before, comma after, payload not copied.
        let frame = c.encode_vectored(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(frame.parts().head(), b"5:");
        assert_eq!(frame.parts().tail(), b",");
        assert_eq!(frame.remaining(), 8);
    }

    #[test]
    fn decodes_frames_at_every_chunk_size_and_split_point() {
        let input: &[u8] = b"5:hello,0:,4:a:b,,10:0123456789,1:,,";
        let expected: Vec<Bytes> = ["hello", "", "a:b,", "0123456789", ","]
            .into_iter()
            .map(Bytes::from)
            .collect();
        for chunk in 1..=input.len() {
            let mut d = NetstringCodec::default();
            let (frames, errors) = decode_chunked(&mut d, input, chunk);
            assert!(errors.is_empty(), "chunk {chunk}: {errors:?}");
            assert_eq!(frames, expected, "chunk {chunk}");
            assert_eq!(d.consumed(), input.len() as u64);
        }
        for at in 0..=input.len() {
            let mut d = NetstringCodec::default();
            let (frames, errors) = decode_split(&mut d, input, at);
            assert!(errors.is_empty(), "split {at}: {errors:?}");
            assert_eq!(frames, expected, "split {at}");
        }
    }

    #[test]
    fn malformed_headers_are_fatal_with_reason_and_offset() {
        // Each case follows a valid `2:ok,`, so the error is at offset 5.
        let cases: &[(&[u8], &str)] = &[
            (b"01:a,", LEADING_ZERO),
            (b"00:,", LEADING_ZERO),
            (b":,", EMPTY_LENGTH),
            (b"1x:a,", NON_DIGIT),
            (b"a:", NON_DIGIT),
            (b"-1:a,", NON_DIGIT),
            (b" 1:a,", NON_DIGIT),
            (b"1 :a,", NON_DIGIT),
            (b"3:abc;", MISSING_COMMA),
            (b"3:abcd,", MISSING_COMMA),
            (b"0:x", MISSING_COMMA),
        ];
        for &(bad, reason) in cases {
            let mut input = b"2:ok,".to_vec();
            input.extend_from_slice(bad);
            for chunk in 1..=input.len() {
                let (frames, errors) =
                    decode_chunked(&mut NetstringCodec::default(), &input, chunk);
                assert_eq!(frames, vec![Bytes::from("ok")]);
                assert_eq!(errors.len(), 1, "{bad:?} chunk {chunk}");
                assert_eq!(errors[0].kind(), &invalid(reason), "{bad:?} chunk {chunk}");
                assert_eq!(errors[0].offset(), 5);
                assert!(!errors[0].is_recoverable());
            }
        }
        // The reasons read well in the error message.
        let err = NetstringCodec::default()
            .decode(&mut BytesMut::from(&b"007:"[..]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed netstring: leading zero in length (at stream offset 0)"
        );
    }

    #[test]
    fn oversized_length_fails_as_soon_as_the_digits_exceed_the_limit() {
        // "11" is over 10: no need to wait for the colon.
        let mut c = codec(max(10));
        let mut buf = BytesMut::from(&b"11"[..]);
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
        // "10" may still be a valid header: wait. Exactly at the limit is accepted.
        let mut c = codec(max(10));
        let mut buf = BytesMut::from(&b"10"[..]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b":0123456789,");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "0123456789");
        // All buffered digits count: the declared length when the header is complete.
        let mut c = codec(max(10));
        let mut buf = BytesMut::from(&b"123456:"[..]);
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 123_456,
                limit: 10
            }
        );
        // Fed one byte at a time, the error comes on the first digit over the limit.
        let (_, errors) = decode_chunked(&mut codec(max(10)), b"123456:", 1);
        assert_eq!(
            errors[0].kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 12,
                limit: 10
            }
        );
        // Digits past u64 saturate.
        let mut c = NetstringCodec::default();
        let mut buf = BytesMut::from(&[b'9'; 30][..]);
        let cap = buf.capacity();
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::FrameTooLong {
                length: u64::MAX,
                limit: DEFAULT_MAX_FRAME_LENGTH
            }
        );
        assert_eq!(buf.capacity(), cap);
        // A limit of 0 accepts only the empty string.
        let mut c = codec(max(0));
        let mut buf = BytesMut::from(&b"0:,1:a,"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 1,
                limit: 0
            }
        );
        assert_eq!(err.offset(), 3);
    }

    #[test]
    fn discard_policy_skips_the_oversized_frame_and_continues() {
        let mut input = b"2:ab,".to_vec();
        input.extend_from_slice(b"120:");
        input.extend_from_slice(&[b'x'; 120]);
        input.extend_from_slice(b",3:cde,");
        let check =
            |c: &NetstringCodec, frames: Vec<Bytes>, errors: Vec<DecodeError>, how: &str| {
                assert_eq!(frames, vec![Bytes::from("ab"), Bytes::from("cde")], "{how}");
                assert_eq!(errors.len(), 1, "reported once per frame ({how})");
                assert!(matches!(
                    errors[0].kind(),
                    DecodeErrorKind::FrameTooLong {
                        length: 12 | 120,
                        limit: 5
                    }
                ));
                assert!(errors[0].is_recoverable());
                assert_eq!(errors[0].offset(), 5);
                assert_eq!(c.consumed(), input.len() as u64, "{how}");
            };
        for chunk in 1..=input.len() {
            let mut c = codec(discarding(5));
            let (frames, errors) = decode_chunked(&mut c, &input, chunk);
            check(&c, frames, errors, &format!("chunk {chunk}"));
        }
        for at in 0..=input.len() {
            let mut c = codec(discarding(5));
            let (frames, errors) = decode_split(&mut c, &input, at);
            check(&c, frames, errors, &format!("split {at}"));
        }
        // All at once: the whole header is read, the error carries the declared length.
        let (_, errors) = decode_chunked(&mut codec(discarding(5)), &input, input.len());
        assert_eq!(
            errors[0].kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 120,
                limit: 5
            }
        );
    }

    #[test]
    fn discard_policy_still_rejects_a_broken_or_endless_header() {
        // A non-digit among the skipped length digits: fatal, at the frame's offset.
        let mut c = codec(discarding(5));
        let mut buf = BytesMut::from(&b"2:ab,12"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "ab");
        let err = c.decode(&mut buf).unwrap_err();
        assert!(err.is_recoverable());
        assert_eq!(err.offset(), 5);
        buf.extend_from_slice(b"3x");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(err.kind(), &invalid(NON_DIGIT));
        assert_eq!(err.offset(), 5);
        assert!(!err.is_recoverable());
        // Digits without end: fatal once they no longer fit a u64, whatever the chunking.
        for chunk in [1, 7, 40] {
            let (frames, errors) = decode_chunked(&mut codec(discarding(5)), &[b'7'; 40], chunk);
            assert!(frames.is_empty());
            let last = errors.last().unwrap();
            assert_eq!(
                last.kind(),
                &DecodeErrorKind::FrameTooLong {
                    length: u64::MAX,
                    limit: 5
                },
                "chunk {chunk}"
            );
            assert!(!last.is_recoverable());
            assert_eq!(last.offset(), 0);
            assert!(errors.len() <= 2, "one recoverable report at most");
        }
    }

    #[test]
    fn truncated_at_eof_reports_buffered_and_expected() {
        let mut c = NetstringCodec::default();
        let mut buf = BytesMut::from(&b"2:ok,5:hel"[..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "ok");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 5,
                expected: Some(8)
            }
        );
        assert_eq!(err.offset(), 5);
        assert!(!err.is_recoverable());
        // Payload complete, comma missing.
        let mut c = NetstringCodec::default();
        let mut buf = BytesMut::from(&b"5:hello"[..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: 7,
                expected: Some(8)
            }
        );
        // Inside the length digits: length unknown.
        let mut c = NetstringCodec::default();
        let mut buf = BytesMut::from(&b"12"[..]);
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: 2,
                expected: None
            }
        );
        // A clean end between frames.
        assert_eq!(
            NetstringCodec::default().decode_eof(&mut BytesMut::new()),
            Ok(None)
        );
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn largest_limit_never_overflows() {
        let mut c = codec(max(usize::MAX));
        let header = format!("{}:", usize::MAX);
        let mut buf = BytesMut::from(header.as_bytes());
        buf.extend_from_slice(b"abc");
        assert_eq!(c.decode(&mut buf), Ok(None));
        assert_eq!(
            c.decode_eof(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::Truncated {
                buffered: header.len() + 3,
                expected: Some(u64::MAX)
            }
        );
        // One more digit is past u64.
        let mut buf = BytesMut::from(format!("{}0:", usize::MAX).as_bytes());
        assert_eq!(
            codec(max(usize::MAX)).decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::FrameTooLong {
                length: u64::MAX,
                limit: usize::MAX
            }
        );
    }

    #[test]
    fn buffer_grows_with_arrivals_not_declared_length() {
        let mut c = NetstringCodec::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(format!("{DEFAULT_MAX_FRAME_LENGTH}:").as_bytes());
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
        assert_eq!(wire.len(), 14);
        assert!(c.encode_vectored(Bytes::from(vec![0; 11])).is_err());
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut c = NetstringCodec::default();
        let mut buf = BytesMut::from(&b"3:abc,1:d,"[..]);
        let base = buf.as_ptr() as usize;
        let f1 = c.decode(&mut buf).unwrap().unwrap();
        let f2 = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.as_ptr() as usize, base + 2);
        assert_eq!(f2.as_ptr() as usize, base + 8);
        assert_eq!(c.consumed(), 10);
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..=120), 0..8),
            feed in feed(),
        ) {
            let enc = codec(max(120));
            let mut wire = BytesMut::new();
            for p in &payloads {
                enc.encode(p, &mut wire).unwrap();
            }
            let mut dec = codec(max(120));
            // decode_pieces asserts buf.len() <= max + header + comma after every Ok(None).
            let (frames, errors) = decode_pieces(&mut dec, feed.pieces(&wire));
            prop_assert!(errors.is_empty(), "{:?}", errors);
            let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
            prop_assert_eq!(frames, payloads);
            prop_assert_eq!(dec.consumed(), wire.len() as u64);
            prop_assert_eq!(dec.decode_eof(&mut BytesMut::new()), Ok(None));
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            input in proptest::collection::vec(
                prop_oneof![any::<u8>(), (b'0'..=b'9'), Just(b':'), Just(b',')], 0..200),
            feed in feed(),
            limit in 0usize..40,
            discard in any::<bool>(),
        ) {
            let mut c = codec(NetstringConfig {
                max_frame_length: limit,
                oversize: if discard { OversizePolicy::Discard } else { OversizePolicy::Fail },
            });
            let (frames, _errors) = decode_pieces(&mut c, feed.pieces(&input));
            prop_assert!(c.consumed() <= input.len() as u64);
            prop_assert!(frames.iter().all(|f| f.len() <= limit));
        }
    }
}
