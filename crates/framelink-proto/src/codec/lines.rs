//! Line framing: [`LinesCodec`] ends frames with `\n` or `\r\n` (Netty's
//! `LineBasedFrameDecoder`, tokio-util's `LinesCodec`). It follows the rules documented on
//! [`DelimiterCodec`](super::DelimiterCodec) for those two terminators and shares its scan state
//! and frame-length limit (in `delimiter.rs`).

#[cfg(doc)]
use super::DelimiterCodec;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};

use super::delimiter::ScanState;
use super::{
    copy_without_long, copy_without_short, first_from, ConfigError, DecodeError, DecodeErrorKind,
    EncodeError, FrameDecoder, FrameEncoder, FrameParts, OversizePolicy, CLEAN,
    DEFAULT_MAX_LINE_LENGTH,
};

/// Parameters of a [`LinesCodec`].
///
/// ```
/// use framelink_proto::codec::{LinesCodec, LinesConfig};
///
/// // SMTP-style: lines of at most 998 bytes, written with CRLF.
/// let codec = LinesCodec::new(LinesConfig { max_frame_length: 998, crlf: true, ..LinesConfig::default() });
/// assert!(codec.is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinesConfig {
    /// Longest accepted line, terminator excluded (Netty `maxLength`).
    pub max_frame_length: usize,
    /// What to do with a line over `max_frame_length`.
    pub oversize: OversizePolicy,
    /// Remove the terminator (`\n` or `\r\n`) from decoded lines; when false it is kept.
    pub strip: bool,
    /// The encoder ends lines with `\r\n` instead of `\n`. Decoding accepts both either way.
    pub crlf: bool,
}

impl Default for LinesConfig {
    /// 64 KiB lines, fatal error on longer ones, terminators stripped, `\n` written.
    fn default() -> Self {
        LinesConfig {
            max_frame_length: DEFAULT_MAX_LINE_LENGTH,
            oversize: OversizePolicy::Fail,
            strip: true,
            crlf: false,
        }
    }
}

/// Decoder and encoder for text lines: `\n` ends a line, and a `\r` just before it belongs to the
/// terminator (`\r\n`); a `\r` anywhere else is part of the line. It decodes exactly like a
/// [`DelimiterCodec`] with the delimiters `\r\n` and `\n` (same limits, oversize policies and
/// errors, see there), on a faster path: one `memchr` per line and no other pass over the bytes.
///
/// The encoder appends `\n` (or `\r\n` with [`crlf`](LinesConfig::crlf)) and refuses a payload
/// containing `\n`, and, when writing `\n`, one ending in `\r` (it would read back without it).
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{FrameDecoder, FrameEncoder, LinesCodec, LinesConfig};
///
/// let mut codec = LinesCodec::default();
/// let mut wire = BytesMut::from(&b"HELO example.org\r\nNOOP\nQU"[..]);
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "HELO example.org");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "NOOP");
/// assert_eq!(codec.decode(&mut wire).unwrap(), None);
/// wire.extend_from_slice(b"IT\r\n");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "QUIT");
///
/// let crlf = LinesCodec::new(LinesConfig { crlf: true, ..LinesConfig::default() }).unwrap();
/// crlf.encode(b"250 OK", &mut wire).unwrap();
/// assert_eq!(&wire[..], b"250 OK\r\n");
/// assert!(crlf.encode(b"two\nlines", &mut wire).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct LinesCodec {
    pub(super) config: LinesConfig,
    pub(super) state: ScanState,
}

impl LinesCodec {
    /// Builds a codec. Every configuration is valid; the `Result` matches the other codecs.
    pub fn new(config: LinesConfig) -> Result<Self, ConfigError> {
        Ok(LinesCodec {
            config,
            state: ScanState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LinesConfig {
        &self.config
    }

    /// The line that starts at `start` and ends with the `\n` at `nl`: where its frame ends
    /// (after its ending is stripped or kept), or its length when it is over the limit.
    #[inline]
    fn line_frame(&self, buf: &[u8], start: usize, nl: usize) -> Result<usize, usize> {
        let end = if nl > start && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        if end - start > self.config.max_frame_length {
            return Err(end - start);
        }
        Ok(if self.config.strip { end } else { nl + 1 })
    }

    /// The error for the line of `length` bytes ending with the `\n` at `nl`, at the front
    /// of `buf` (dropped under the discard policy).
    #[cold]
    fn too_long(&mut self, buf: &mut BytesMut, nl: usize, length: usize) -> DecodeError {
        let kind = DecodeErrorKind::FrameTooLong {
            length: length as u64,
            limit: self.config.max_frame_length,
        };
        self.state
            .oversize(self.config.oversize, kind, buf, nl + 1, false)
    }

    /// Everything but a complete line while not discarding: discarding, or no `\n` yet.
    fn decode_rest(
        &mut self,
        buf: &mut BytesMut,
        newline: Option<usize>,
    ) -> Result<Option<Bytes>, DecodeError> {
        let len = buf.len();
        if self.state.discarding {
            return match newline {
                Some(nl) => {
                    self.state.drop_front(buf, nl + 1);
                    self.state.discarding = false;
                    self.decode(buf)
                }
                None => {
                    // A trailing `\r` need not be kept: a bare `\n` ends the line anyway.
                    self.state.drop_front(buf, len);
                    Ok(None)
                }
            };
        }
        debug_assert!(newline.is_none());
        // A trailing `\r` may be the start of the terminator.
        let earliest_end = if buf.last() == Some(&b'\r') {
            len - 1
        } else {
            len
        };
        let limit = self.config.max_frame_length;
        if earliest_end > limit {
            let kind = DecodeErrorKind::DelimiterNotFound { limit };
            return Err(self
                .state
                .oversize(self.config.oversize, kind, buf, len, true));
        }
        self.state.searched = len;
        Ok(None)
    }
}

impl Default for LinesCodec {
    /// A codec with [`LinesConfig::default`].
    fn default() -> Self {
        LinesCodec {
            config: LinesConfig::default(),
            state: ScanState::default(),
        }
    }
}

impl FrameDecoder for LinesCodec {
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        let from = self.state.resume_at(buf.len());
        let newline = memchr::memchr(b'\n', &buf[from..]).map(|i| from + i);
        match newline {
            Some(nl) if !self.state.discarding => match self.line_frame(buf, 0, nl) {
                Ok(keep) => Ok(Some(self.state.take_frame(buf, nl + 1, keep))),
                Err(length) => Err(self.too_long(buf, nl, length)),
            },
            _ => self.decode_rest(buf, newline),
        }
    }

    #[inline]
    fn decode_visit<R>(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, DecodeError> {
        if eof {
            return Ok(self.decode_eof(buf)?.map(|frame| visit(&frame)));
        }
        let from = self.state.resume_at(buf.len());
        let newline = memchr::memchr(b'\n', &buf[from..]).map(|i| from + i);
        match newline {
            Some(nl) if !self.state.discarding => match self.line_frame(buf, 0, nl) {
                Ok(keep) => {
                    let visited = visit(&buf[..keep]);
                    self.state.drop_front(buf, nl + 1);
                    Ok(Some(visited))
                }
                Err(length) => Err(self.too_long(buf, nl, length)),
            },
            _ => Ok(self.decode_rest(buf, newline)?.map(|frame| visit(&frame))),
        }
    }

    fn decode_visit_all(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        mut visit: impl FnMut(&[u8]),
    ) -> Result<(), DecodeError> {
        if !eof && !self.state.discarding {
            // One pass over the buffer for every complete line, one cut at the end.
            let from = self.state.resume_at(buf.len());
            let mut start = 0;
            for nl in memchr::memchr_iter(b'\n', &buf[from..]) {
                let nl = from + nl;
                let Ok(keep) = self.line_frame(buf, start, nl) else {
                    break; // reported below, at its offset, by the one-line path
                };
                visit(&buf[start..keep]);
                start = nl + 1;
            }
            if start > 0 {
                self.state.drop_front(buf, start);
            }
        }
        // The rest: a line too long, discarding, the end of the stream, or no complete line.
        while self.decode_visit(buf, eof, &mut visit)?.is_some() {}
        Ok(())
    }

    fn consumed(&self) -> u64 {
        self.state.consumed
    }
}

impl LinesCodec {
    /// The line ending to append to `payload`, or why it cannot be sent as one line.
    #[inline]
    fn line_ending(&self, payload: &[u8]) -> Result<&'static [u8], EncodeError> {
        self.check_length(payload)?;
        if let Some(position) = find_newline(payload) {
            return Err(EncodeError::ContainsDelimiter { position });
        }
        self.ending_after(payload)
    }

    #[inline]
    fn check_length(&self, payload: &[u8]) -> Result<(), EncodeError> {
        let limit = self.config.max_frame_length;
        if payload.len() > limit {
            return Err(EncodeError::FrameTooLong {
                length: payload.len(),
                limit,
            });
        }
        Ok(())
    }

    /// The ending for a payload known to hold no `\n`.
    #[inline]
    fn ending_after(&self, payload: &[u8]) -> Result<&'static [u8], EncodeError> {
        if self.config.crlf {
            Ok(b"\r\n")
        } else if payload.last() == Some(&b'\r') {
            // "x\r" + "\n" would read back as "x".
            Err(EncodeError::ContainsDelimiter {
                position: payload.len() - 1,
            })
        } else {
            Ok(b"\n")
        }
    }
}

/// Payloads up to this length are checked word by word ([`has_newline_swar`]); longer ones with
/// `memchr`, whose vectorised loop wins once its per-call dispatch is amortised.
const SWAR_MAX_LEN: usize = 64;

const LO: u64 = u64::from_ne_bytes([0x01; 8]);
const HI: u64 = u64::from_ne_bytes([0x80; 8]);
const NL: u64 = u64::from_ne_bytes([b'\n'; 8]);

/// Eight bytes as a word (native order: only "is any byte `\n`" is asked of it, and its bytes
/// are written back in the same order).
#[inline(always)]
fn word(chunk: &[u8]) -> u64 {
    u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"))
}

/// Non-zero exactly when some byte of `word` is `\n`: a byte of `word ^ 0x0a0a..` is zero exactly
/// where `word` has a `\n`, and `(x - 0x0101..) & !x & 0x8080..` is non-zero exactly when some byte
/// of `x` is zero (the classic "has zero byte" test: a borrow can mis-flag bytes *above* the first
/// zero byte, never flag one when there is none, so the yes/no answer is exact).
#[inline(always)]
fn newline_bits(word: u64) -> u64 {
    let x = word ^ NL;
    x.wrapping_sub(LO) & !x & HI
}

/// Offset of the first `\n` in `payload`.
#[inline]
fn find_newline(payload: &[u8]) -> Option<usize> {
    if payload.len() <= SWAR_MAX_LEN && !has_newline_swar(payload) {
        return None;
    }
    // Long payloads, and the error path of short ones (which needs the exact offset).
    memchr::memchr(b'\n', payload)
}

/// Whether `payload` (any length) holds a `\n`, eight bytes at a time, the tail as a last,
/// overlapping word; payloads under 8 bytes go byte by byte.
#[inline]
fn has_newline_swar(payload: &[u8]) -> bool {
    let len = payload.len();
    if len < 8 {
        return has_newline_bytes(payload);
    }
    let mut hits = newline_bits(word(&payload[len - 8..]));
    for chunk in payload.chunks_exact(8) {
        hits |= newline_bits(word(chunk));
    }
    hits != 0
}

#[inline(always)]
fn has_newline_bytes(payload: &[u8]) -> bool {
    payload.iter().fold(false, |acc, &b| acc | (b == b'\n'))
}

/// Copies `payload` into `out` (same length) if it holds no `\n`; otherwise returns the offset of
/// the first one (`out` may then hold part of the copy).
#[inline(always)]
fn copy_checked(out: &mut [MaybeUninit<u8>], payload: &[u8]) -> Result<(), usize> {
    let len = payload.len();
    if len < 8 {
        let mut hit = false;
        for (o, &b) in out.iter_mut().zip(payload) {
            hit |= b == b'\n';
            o.write(b);
        }
        if hit {
            return Err(first_newline(payload));
        }
        Ok(())
    } else if len < 16 {
        copy_words(out, payload)
    } else if len <= INLINE_MAX_LEN {
        copy_without_short(out, payload, b'\n')
    } else {
        // Only the call and the answer's test here, so that `encode` stays small enough to
        // inline into the caller's loop.
        match copy_without_long(out, payload, b'\n') {
            CLEAN => Ok(()),
            from => Err(first_from(payload, from, b'\n')),
        }
    }
}

/// Payloads up to this length are checked and copied inline in `encode`; longer ones out of line.
const INLINE_MAX_LEN: usize = 64;

#[cold]
fn first_newline(payload: &[u8]) -> usize {
    memchr::memchr(b'\n', payload).expect("a newline was seen")
}

/// Fused check and copy for 8 to 15 bytes, a word at a time: each word is loaded once, tested and
/// written into `out`. The tail is done as a last word overlapping the previous one (its first
/// bytes are written twice, with the same values).
#[inline(always)]
fn copy_words(out: &mut [MaybeUninit<u8>], payload: &[u8]) -> Result<(), usize> {
    let len = payload.len();
    debug_assert!((8..16).contains(&len) && out.len() == len);
    let mut hits = 0;
    let put = |out: &mut [MaybeUninit<u8>], w: u64| {
        for (o, b) in out.iter_mut().zip(w.to_ne_bytes()) {
            o.write(b);
        }
    };
    let mut at = 0;
    while at + 8 <= len {
        let w = word(&payload[at..at + 8]);
        hits |= newline_bits(w);
        put(&mut out[at..at + 8], w);
        at += 8;
    }
    if at < len {
        let w = word(&payload[len - 8..]);
        hits |= newline_bits(w);
        put(&mut out[len - 8..], w);
    }
    if hits != 0 {
        return Err(first_newline(payload));
    }
    Ok(())
}

/// The error for a payload ending in `\r` when `\n` is written: the first `\n`, if any, comes
/// first.
#[cold]
fn trailing_cr_error(payload: &[u8]) -> EncodeError {
    EncodeError::ContainsDelimiter {
        position: memchr::memchr(b'\n', payload).unwrap_or(payload.len() - 1),
    }
}

impl FrameEncoder for LinesCodec {
    #[inline]
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        Ok(FrameParts::with_tail(self.line_ending(payload)?))
    }

    /// Checks the line for `\n` while copying it into `dst`'s spare capacity (one pass), writes
    /// the ending after it, then sets the length once. On error `dst` is unchanged. Always
    /// inlined: a send loop of short lines pays more for the call than for the copy.
    #[inline(always)]
    fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.check_length(payload)?;
        let crlf = self.config.crlf;
        let len = payload.len();
        let total = len + 1 + usize::from(crlf);
        dst.reserve(total);
        let spare = &mut dst.spare_capacity_mut()[..total];
        let (line, ending) = spare.split_at_mut(len);
        if let Err(position) = copy_checked(line, payload) {
            return Err(EncodeError::ContainsDelimiter { position });
        }
        // After the copy, which has just read the last byte: "x\r" + "\n" would read back as
        // "x". (A `\n` anywhere was reported above, before a trailing `\r`.)
        if !crlf && payload.last() == Some(&b'\r') {
            return Err(trailing_cr_error(payload));
        }
        if crlf {
            ending[0].write(b'\r');
            ending[1].write(b'\n');
        } else {
            ending[0].write(b'\n');
        }
        // SAFETY: `spare` is the first `total` bytes of spare capacity after `dst.len()` (`reserve`
        // made room), and all of them are written: `copy_checked` returned Ok, so the first `len`,
        // and the branch just above the remaining `total - len` (2 with `crlf`, else 1).
        unsafe { dst.set_len(dst.len() + total) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the encoder must answer, written the obvious way.
    fn naive(payload: &[u8], crlf: bool) -> Result<Vec<u8>, EncodeError> {
        if let Some(position) = payload.iter().position(|&b| b == b'\n') {
            return Err(EncodeError::ContainsDelimiter { position });
        }
        if !crlf && payload.last() == Some(&b'\r') {
            return Err(EncodeError::ContainsDelimiter {
                position: payload.len() - 1,
            });
        }
        let mut line = payload.to_vec();
        line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        Ok(line)
    }

    /// `encode` and `frame_parts` against [`naive`], after `prefix` bytes already in `dst`
    /// (which shifts the alignment of the copy). On error `dst` must be unchanged.
    fn check(payload: &[u8], crlf: bool, prefix: usize) -> Result<(), TestCaseError> {
        let codec = LinesCodec::new(LinesConfig {
            crlf,
            max_frame_length: usize::MAX,
            ..LinesConfig::default()
        })
        .unwrap();
        let head: Vec<u8> = (0..prefix).map(|i| b'A' + (i % 26) as u8).collect();
        let mut dst = BytesMut::from(&head[..]);
        let want = naive(payload, crlf);
        let got = codec.encode(payload, &mut dst);
        prop_assert_eq!(&dst[..prefix], &head[..]);
        match &want {
            Ok(line) => {
                prop_assert_eq!(got, Ok(()));
                prop_assert_eq!(&dst[prefix..], &line[..]);
            }
            Err(e) => {
                prop_assert_eq!(got.as_ref(), Err(e));
                prop_assert_eq!(dst.len(), prefix);
            }
        }
        let parts = codec.frame_parts(payload).map(|p| p.tail().to_vec());
        prop_assert_eq!(parts.map(|_| ()), want.map(|_| ()));
        let first = payload.iter().position(|&b| b == b'\n');
        prop_assert_eq!(find_newline(payload), first);
        prop_assert_eq!(has_newline_swar(payload), first.is_some());
        Ok(())
    }

    /// Lengths around every word and block boundary of the encoder's paths.
    const LENGTHS: [usize; 30] = [
        0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 66, 127, 128, 129, 255, 256, 257,
        299, 300, 4095, 4096, 4097, 4999, 5001, 8193,
    ];

    #[test]
    fn encoder_refuses_a_newline_at_every_position() {
        for len in LENGTHS {
            let clean: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            for crlf in [false, true] {
                check(&clean, crlf, 3).unwrap();
                // Every position for short lines, word edges and a few others for long ones.
                let positions: Vec<usize> = if len <= 300 {
                    (0..len).collect()
                } else {
                    [
                        0,
                        1,
                        7,
                        8,
                        31,
                        32,
                        63,
                        64,
                        127,
                        128,
                        4095,
                        4096,
                        len / 2,
                        len - 33,
                        len - 8,
                        len - 1,
                    ]
                    .into_iter()
                    .filter(|&p| p < len)
                    .collect()
                };
                for at in positions {
                    let mut with = clean.clone();
                    with[at] = b'\n';
                    check(&with, crlf, 3).unwrap();
                    if at + 1 < len {
                        with[len - 1] = b'\n'; // a later hit must not mask the first
                        check(&with, crlf, 5).unwrap();
                        with[len - 1] = b'\r'; // nor a trailing `\r`
                        check(&with, crlf, 0).unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn encoder_reports_the_first_newline_before_a_trailing_cr() {
        let lf = LinesCodec::default();
        let mut dst = BytesMut::from(&b"x"[..]);
        let at = |position| Err(EncodeError::ContainsDelimiter { position });
        assert_eq!(lf.encode(b"ab\ncd\r", &mut dst), at(2));
        assert_eq!(lf.frame_parts(b"ab\ncd\r").map(|_| ()), at(2));
        assert_eq!(lf.encode(b"abcdefghijk\r", &mut dst), at(11));
        assert_eq!(&dst[..], b"x");
        let too_long = LinesCodec::new(LinesConfig {
            max_frame_length: 3,
            ..LinesConfig::default()
        })
        .unwrap();
        assert_eq!(
            too_long.encode(b"a\nbc", &mut dst),
            Err(EncodeError::FrameTooLong {
                length: 4,
                limit: 3
            })
        );
        assert_eq!(&dst[..], b"x");
    }

    #[test]
    fn swar_test_is_exact_for_every_byte_value() {
        // The borrow of the zero-byte test must not turn a neighbour of `\n` (0x0b, 0x8a, ...)
        // into a hit, whatever its position in the word.
        for byte in 0..=255u8 {
            for at in 0..16 {
                let mut p = [b'a'; 16];
                p[at] = byte;
                assert_eq!(has_newline_swar(&p), byte == b'\n', "{byte:#x} at {at}");
                let mut q = [byte; 16];
                q[at] = b'\n';
                assert!(has_newline_swar(&q));
            }
        }
    }

    /// Payload bytes: mostly `\n`, `\r` and their neighbours, so hits and near misses are common.
    fn payload_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => any::<u8>(),
            1 => prop::sample::select(&[b'\n', b'\r', 0x0b, 0x09, 0x8a, 0x00, 0xff][..]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The encoder's check agrees with a naive `contains(&b'\n')` (and its first position).
        #[test]
        fn encoder_check_agrees_with_naive(
            payload in prop::collection::vec(payload_byte(), 0..300),
            crlf in any::<bool>(),
            prefix in 0usize..32,
        ) {
            check(&payload, crlf, prefix)?;
        }

        /// Clean lines near the 8/16/32/64-byte boundaries with one `\n` planted anywhere.
        #[test]
        fn encoder_finds_a_planted_newline(
            len in prop::sample::select(
                &[7usize, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200, 255, 256,
                  257, 299, 4990, 5000, 5007][..],
            ),
            at in any::<prop::sample::Index>(),
            seed in any::<u64>(),
            crlf in any::<bool>(),
            prefix in 1usize..32,
        ) {
            let mut payload: Vec<u8> = (0..len as u64)
                .map(|i| (seed.rotate_left(i as u32) as u8) | 0x40) // never `\n` nor `\r`
                .collect();
            check(&payload, crlf, prefix)?;
            payload[at.index(len)] = b'\n';
            prop_assert!(payload.contains(&b'\n'));
            check(&payload, crlf, prefix)?;
        }
    }
}
