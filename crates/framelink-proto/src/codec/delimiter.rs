//! Delimiter framing: [`DelimiterCodec`] ends frames with any of a set of byte sequences (the
//! decoding rules of Netty's `DelimiterBasedFrameDecoder`); [`LinesCodec`](super::LinesCodec)
//! (in `lines.rs`) does the same with `\n` or `\r\n`. This module owns the delimiter search and
//! the scan state and frame-length limit both codecs share, and the encoders' refusal of payloads
//! the peer would split differently. The tests here cover both codecs.
//!
//! The rules (which delimiter ends a frame, limits, the oversize policies, what the encoders
//! refuse) are documented on [`DelimiterCodec`]; [`LinesCodec`](super::LinesCodec) follows them for `\r\n` and `\n`.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

use super::{
    ConfigError, DecodeError, DecodeErrorKind, EncodeError, FrameDecoder, FrameEncoder, FrameParts,
    OversizePolicy, DEFAULT_MAX_LINE_LENGTH,
};

/// Parameters of a [`DelimiterCodec`]. Field names follow Netty's `DelimiterBasedFrameDecoder`.
///
/// ```
/// use framelink_proto::codec::{DelimiterCodec, DelimiterConfig, OversizePolicy};
///
/// // NUL-terminated messages of at most 1 KiB, keeping the NUL, skipping over-long ones.
/// let cfg = DelimiterConfig {
///     strip: false,
///     max_frame_length: 1024,
///     oversize: OversizePolicy::Discard,
///     ..DelimiterConfig::nul()
/// };
/// assert!(DelimiterCodec::new(cfg).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelimiterConfig {
    /// The delimiters, each 1 to [`MAX_DELIMITER_LENGTH`](Self::MAX_DELIMITER_LENGTH) bytes. Any of
    /// them ends a frame (see [`DelimiterCodec`] for which one when several match); the encoder
    /// appends the first.
    pub delimiters: Vec<Vec<u8>>,
    /// Remove the delimiter from decoded frames (Netty `stripDelimiter`); when false it is kept at
    /// the end of the frame.
    pub strip: bool,
    /// Largest accepted frame, delimiter excluded (Netty `maxFrameLength`).
    pub max_frame_length: usize,
    /// What to do with a frame over `max_frame_length`.
    pub oversize: OversizePolicy,
}

impl DelimiterConfig {
    /// Longest supported delimiter, in bytes.
    pub const MAX_DELIMITER_LENGTH: usize = 32;

    /// Frames ended by any of `delimiters`, stripped from decoded frames, with the default 64 KiB
    /// limit and fatal errors on over-long frames.
    pub fn new(delimiters: Vec<Vec<u8>>) -> Self {
        DelimiterConfig {
            delimiters,
            strip: true,
            max_frame_length: DEFAULT_MAX_LINE_LENGTH,
            oversize: OversizePolicy::Fail,
        }
    }

    /// Netty's `Delimiters.lineDelimiter()`: `\r\n` or `\n` ends a frame; the encoder appends
    /// `\r\n`. Decodes like [`LinesCodec`](super::LinesCodec).
    pub fn line() -> Self {
        Self::new(vec![b"\r\n".to_vec(), b"\n".to_vec()])
    }

    /// Netty's `Delimiters.nulDelimiter()`: a NUL byte ends a frame.
    pub fn nul() -> Self {
        Self::new(vec![vec![0]])
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.delimiters.is_empty() {
            return Err(ConfigError::EmptyDelimiter);
        }
        for d in &self.delimiters {
            if d.is_empty() {
                return Err(ConfigError::EmptyDelimiter);
            }
            if d.len() > Self::MAX_DELIMITER_LENGTH {
                return Err(ConfigError::TooLong {
                    what: "delimiter",
                    length: d.len(),
                    max: Self::MAX_DELIMITER_LENGTH,
                });
            }
        }
        Ok(())
    }
}

/// Decoding state shared by both codecs (this one and [`LinesCodec`](super::LinesCodec)).
#[derive(Debug, Clone, Default)]
pub(crate) struct ScanState {
    /// No delimiter starts before this offset of the buffer: where the next search resumes.
    pub(crate) searched: usize,
    /// Dropping the rest of an oversized frame (discard policy).
    pub(crate) discarding: bool,
    /// Bytes taken off the front of buffers.
    pub(crate) consumed: u64,
}

impl ScanState {
    /// Where to resume searching a buffer of `len` bytes. A buffer shorter than what was searched
    /// is not the one searched: start over.
    #[inline]
    pub(crate) fn resume_at(&self, len: usize) -> usize {
        if self.searched <= len {
            self.searched
        } else {
            0
        }
    }

    /// Drops `n` bytes off the front of `buf`; the next search starts afresh.
    #[inline]
    pub(crate) fn drop_front(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.consumed += n as u64;
        self.searched = 0;
    }

    /// Splits the `n`-byte frame (delimiter included) off `buf`, keeping its first `keep` bytes.
    #[inline]
    pub(crate) fn take_frame(&mut self, buf: &mut BytesMut, n: usize, keep: usize) -> Bytes {
        let mut frame = buf.split_to(n);
        frame.truncate(keep);
        self.consumed += n as u64;
        self.searched = 0;
        frame.freeze()
    }

    /// The error for an oversized frame at the front of `buf`. Under the discard policy the
    /// frame's first `drop` bytes go, and `discarding` says whether more of it is to come.
    #[cold]
    pub(crate) fn oversize(
        &mut self,
        policy: OversizePolicy,
        kind: DecodeErrorKind,
        buf: &mut BytesMut,
        drop: usize,
        discarding: bool,
    ) -> DecodeError {
        let offset = self.consumed;
        match policy {
            OversizePolicy::Fail => DecodeError::fatal(kind, offset),
            OversizePolicy::Discard => {
                self.drop_front(buf, drop);
                self.discarding = discarding;
                DecodeError::recoverable(kind, offset)
            }
        }
    }
}

/// One search over the buffer, for one or more delimiters.
#[derive(Debug, Clone)]
enum Matcher {
    /// Exactly the delimiters `\n` and `\r\n`: one `memchr` for `\n`, then a look at the byte
    /// before it.
    Line,
    /// Up to three single-byte delimiters.
    Byte1(u8),
    Byte2(u8, u8),
    Byte3(u8, u8, u8),
    /// One delimiter of two bytes or more.
    Seq(Box<memmem::Finder<'static>>),
}

impl Matcher {
    /// The first delimiter starting in `from..to` (`to <= buf.len()`), as (start, length). It may
    /// extend past `to`.
    #[inline]
    fn find(&self, buf: &[u8], from: usize, to: usize) -> Option<(usize, usize)> {
        if from >= to {
            return None;
        }
        match *self {
            Matcher::Byte1(a) => memchr::memchr(a, &buf[from..to]).map(|i| (from + i, 1)),
            Matcher::Byte2(a, b) => memchr::memchr2(a, b, &buf[from..to]).map(|i| (from + i, 1)),
            Matcher::Byte3(a, b, c) => {
                memchr::memchr3(a, b, c, &buf[from..to]).map(|i| (from + i, 1))
            }
            Matcher::Line => {
                let end = buf.len().min(to + 1);
                let nl = from + memchr::memchr(b'\n', &buf[from..end])?;
                if nl > from && buf[nl - 1] == b'\r' {
                    Some((nl - 1, 2))
                } else if nl < to {
                    Some((nl, 1))
                } else {
                    None
                }
            }
            Matcher::Seq(ref finder) => {
                let len = finder.needle().len();
                let end = buf.len().min(to + len - 1);
                finder.find(&buf[from..end]).map(|i| (from + i, len))
            }
        }
    }
}

/// Haystack searched by every matcher before any is given more, when there are several: the
/// windows double, so a matcher whose delimiter is absent costs at most about twice the frame.
const FIRST_WINDOW: usize = 64;

/// Decoder and encoder for frames ended by one or more delimiters, with the parameters of a
/// [`DelimiterConfig`].
///
/// # Decoding
///
/// * **Earliest delimiter wins.** With several delimiters a frame ends at the delimiter that
///   *starts* first, so the shortest possible frame is returned. When two delimiters start at the
///   same position the **longer** one is taken: with `\r` and `\r\n` configured, `a\r\n` is the
///   frame `a` and no stray `\n` is left for the next frame. Two delimiters of the same length
///   starting at the same position are the same bytes, so the result never depends on the order of
///   the list (Netty takes the first in list order instead).
/// * **Same frames however the stream is split into reads.** A delimiter found in the buffer is
///   acted on only when no delimiter that would beat it can still be completed by the next read:
///   a buffer ending in `\r` with `\r` and `\r\n` configured waits for one more byte.
///   [`decode_eof`](FrameDecoder::decode_eof) settles such a wait. (Netty decides on the first
///   delimiter it sees, so its frames can depend on the read sizes.)
/// * **Limit.** `max_frame_length` counts the frame *without* its delimiter. A frame is over the
///   limit as soon as the buffered bytes rule out a delimiter starting within `max_frame_length`
///   bytes of the frame's first byte ([`DelimiterNotFound`](DecodeErrorKind::DelimiterNotFound)),
///   or when its delimiter is found further away ([`FrameTooLong`](DecodeErrorKind::FrameTooLong),
///   with the frame's length). Errors are raised as soon as they are certain (Netty's
///   `failFast = true`). While waiting for a delimiter a decoder holds at most
///   `max_frame_length + longest delimiter - 1` bytes: the extra bytes are a possible delimiter
///   start, so `max_frame_length` bytes followed by a delimiter are accepted whatever the reads.
/// * **Oversize policy.** Under [`OversizePolicy::Fail`] the error is fatal and the buffer is left
///   as it was. Under [`OversizePolicy::Discard`] the error is recoverable and reported once, with
///   the offset of the frame's first byte; the frame's bytes are then dropped as they arrive (only a
///   possible delimiter start, shorter than the longest delimiter, is kept across reads) up to and
///   including its delimiter, and decoding carries on with the next frame. If the stream ends
///   during a discard, the rest of the discarded frame is dropped without a second error.
/// * **Incremental search.** A decoder remembers how far the buffer has been searched and resumes
///   there (less the longest delimiter's length minus one, for a delimiter straddling two reads),
///   so a long frame arriving in small reads is searched in linear time. Single-byte delimiters are
///   found with `memchr`/`memchr2`/`memchr3`, longer ones with a `memchr::memmem::Finder` built
///   with the codec; with several searches they run over doubling windows of the buffer, so a
///   delimiter that never occurs does not cost a pass over the whole buffer per frame.
/// * Frames share memory with the read buffer (no copy). A partial frame at the end of the stream
///   is reported by [`decode_eof`](FrameDecoder::decode_eof) as
///   [`Truncated`](DecodeErrorKind::Truncated).
///
/// # Encoding
///
/// The encoder appends the first delimiter. It refuses with [`EncodeError::FrameTooLong`] a
/// payload over `max_frame_length`, and with [`EncodeError::ContainsDelimiter`] (giving the
/// position of the first offending byte) every payload the decoder might not give back unchanged:
///
/// * one containing a delimiter;
/// * one whose last bytes begin a delimiter that would start before the appended one: `a|` with the
///   delimiter `||`, or `x\r` when `\n` is written and `\r\n` is also a delimiter; also when such a
///   delimiter could only be completed by the next frame;
/// * when the first delimiter is the start of a longer one (`\r` and `\r\n`), one that begins with
///   the rest of the longer one (`\n...`), as it would extend the previous frame's delimiter. This
///   is checked for the first frame of a stream too.
///
/// So a stream of frames this encoder accepted decodes, with the same configuration, to the same
/// payloads however it is split into reads.
///
/// # Example
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::codec::{DelimiterCodec, DelimiterConfig, FrameDecoder, FrameEncoder};
///
/// let mut codec = DelimiterCodec::new(DelimiterConfig::new(vec![b";".to_vec(), b"||".to_vec()])).unwrap();
/// let mut wire = BytesMut::new();
/// codec.encode(b"one", &mut wire).unwrap(); // appends the first delimiter
/// wire.extend_from_slice(b"two||three");
/// assert_eq!(&wire[..], b"one;two||three");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "one");
/// assert_eq!(codec.decode(&mut wire).unwrap().unwrap(), "two");
/// assert_eq!(codec.decode(&mut wire).unwrap(), None); // "three" waits for its delimiter
/// // A payload holding a delimiter would arrive as two frames: refused.
/// assert!(codec.encode(b"a||b", &mut wire).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct DelimiterCodec {
    config: DelimiterConfig,
    /// The searches that together find every delimiter, built once.
    matchers: Vec<Matcher>,
    /// The distinct delimiters, for checks at the end of the buffer or payload.
    distinct: Vec<Vec<u8>>,
    /// Length of the longest delimiter.
    max_len: usize,
    /// Delimiters of different lengths: a delimiter found may still lose to a longer one.
    mixed_lengths: bool,
    state: ScanState,
}

impl DelimiterCodec {
    /// Builds a codec, checking the configuration: at least one delimiter, each 1 to
    /// [`DelimiterConfig::MAX_DELIMITER_LENGTH`] bytes.
    pub fn new(config: DelimiterConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut distinct = config.delimiters.clone();
        distinct.sort();
        distinct.dedup();
        let max_len = distinct.iter().map(Vec::len).max().unwrap_or(1);
        let mixed_lengths = distinct.iter().any(|d| d.len() != max_len);
        let matchers = if distinct == [b"\n".to_vec(), b"\r\n".to_vec()]
            || distinct == [b"\r\n".to_vec(), b"\n".to_vec()]
        {
            vec![Matcher::Line]
        } else {
            let singles: Vec<u8> = distinct
                .iter()
                .filter(|d| d.len() == 1)
                .map(|d| d[0])
                .collect();
            let mut matchers: Vec<Matcher> = singles
                .chunks(3)
                .map(|c| match *c {
                    [a] => Matcher::Byte1(a),
                    [a, b] => Matcher::Byte2(a, b),
                    [a, b, c] => Matcher::Byte3(a, b, c),
                    _ => unreachable!("chunks of 1 to 3 bytes"),
                })
                .collect();
            matchers.extend(
                distinct
                    .iter()
                    .filter(|d| d.len() > 1)
                    .map(|d| Matcher::Seq(Box::new(memmem::Finder::new(d).into_owned()))),
            );
            matchers
        };
        Ok(DelimiterCodec {
            config,
            matchers,
            distinct,
            max_len,
            mixed_lengths,
            state: ScanState::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DelimiterConfig {
        &self.config
    }

    /// The first delimiter starting at or after `from`, as (start, length); the longest of those
    /// starting there.
    #[inline]
    fn find_first(&self, buf: &[u8], from: usize) -> Option<(usize, usize)> {
        if let [only] = &self.matchers[..] {
            return only.find(buf, from, buf.len());
        }
        let mut lo = from;
        let mut window = FIRST_WINDOW;
        while lo < buf.len() {
            let hi = buf.len().min(lo.saturating_add(window));
            let mut best: Option<(usize, usize)> = None;
            for m in &self.matchers {
                // Only a delimiter starting no later than the best so far can beat it.
                let to = best.map_or(hi, |(p, _)| p + 1);
                if let Some((q, len)) = m.find(buf, lo, to) {
                    if best.is_none_or(|(p, l)| q < p || (q == p && len > l)) {
                        best = Some((q, len));
                    }
                }
            }
            if best.is_some() {
                return best;
            }
            lo = hi;
            window = window.saturating_mul(2);
        }
        None
    }

    /// The earliest position, no later than `found`'s start, where `buf` ends with the beginning of
    /// a longer delimiter: one that would win over `found` (or be the first delimiter) once the
    /// next bytes arrive.
    fn open_start(&self, buf: &[u8], found: Option<(usize, usize)>) -> Option<usize> {
        let len = buf.len();
        let last = found.map_or(len, |(p, _)| p + 1);
        let first = len.saturating_sub(self.max_len - 1);
        (first..last).find(|&q| {
            let tail = &buf[q..];
            self.distinct
                .iter()
                .any(|d| d.len() > tail.len() && d.starts_with(tail))
        })
    }

    /// [`decode`](FrameDecoder::decode), or with `eof` the same once no more bytes can come.
    fn decode_inner(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Bytes>, DecodeError> {
        let max = self.config.max_frame_length;
        loop {
            let len = buf.len();
            let from = self.state.resume_at(len);
            let found = self.find_first(buf, from);
            // Ok: the frame ends at this delimiter. Err: no delimiter yet, and the earliest
            // position one may still start at.
            let settled = match found {
                Some(m) if eof || !self.mixed_lengths => Ok(m),
                Some(m) => self.open_start(buf, Some(m)).map_or(Ok(m), Err),
                // At the end of the stream a discarded frame's last bytes all go.
                None if eof && self.state.discarding => Err(len),
                None if !(self.state.discarding || len > max) => Err(len),
                None => Err(self.open_start(buf, None).unwrap_or(len)),
            };
            match settled {
                Ok((start, delim_len)) => {
                    let n = start + delim_len;
                    if self.state.discarding {
                        self.state.drop_front(buf, n);
                        self.state.discarding = false;
                        continue;
                    }
                    if start > max {
                        let kind = DecodeErrorKind::FrameTooLong {
                            length: start as u64,
                            limit: max,
                        };
                        return Err(self
                            .state
                            .oversize(self.config.oversize, kind, buf, n, false));
                    }
                    let keep = if self.config.strip { start } else { n };
                    return Ok(Some(self.state.take_frame(buf, n, keep)));
                }
                Err(earliest) => {
                    if self.state.discarding {
                        self.state.drop_front(buf, earliest);
                        return Ok(None);
                    }
                    if earliest > max {
                        let kind = DecodeErrorKind::DelimiterNotFound { limit: max };
                        return Err(self.state.oversize(
                            self.config.oversize,
                            kind,
                            buf,
                            earliest,
                            true,
                        ));
                    }
                    self.state.searched = len.saturating_sub(self.max_len - 1);
                    return Ok(None);
                }
            }
        }
    }

    /// Position of the first byte of `payload` that would make the peer see a frame boundary
    /// elsewhere than after `payload` + `tail`.
    fn forbidden_position(&self, payload: &[u8], tail: &[u8]) -> Option<usize> {
        // A payload starting with the rest of a longer delimiter that begins with `tail` would
        // extend the previous frame's delimiter (e.g. "\n..." after "\r" when "\r\n" is one).
        let extends_previous = self.distinct.iter().any(|d| {
            d.len() > tail.len() && d.starts_with(tail) && agrees(&d[tail.len()..], payload, tail)
        });
        if extends_previous {
            return Some(0);
        }
        let inside = self.find_first(payload, 0).map(|(p, _)| p);
        // A delimiter starting in the payload's last bytes and running into the appended one
        // (and maybe into the next frame).
        let straddling =
            (payload.len().saturating_sub(self.max_len - 1)..payload.len()).find(|&q| {
                let rest = &payload[q..];
                self.distinct
                    .iter()
                    .any(|d| d.len() > rest.len() && agrees(d, rest, tail))
            });
        match (inside, straddling) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// True when `d` may be the start of `a` followed by `b` followed by unknown bytes.
fn agrees(d: &[u8], a: &[u8], b: &[u8]) -> bool {
    let n = d.len().min(a.len());
    let (d_a, d_b) = d.split_at(n);
    let m = d_b.len().min(b.len());
    d_a == &a[..n] && d_b[..m] == b[..m]
}

impl FrameDecoder for DelimiterCodec {
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        self.decode_inner(buf, false)
    }

    /// As [`decode`](Self::decode), but a delimiter that could still have grown into a longer one
    /// ends the frame, and the rest of a frame being discarded is dropped silently. Bytes left
    /// without a delimiter are a [`Truncated`](DecodeErrorKind::Truncated) frame.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        match self.decode_inner(buf, true)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(DecodeError::fatal(
                DecodeErrorKind::Truncated {
                    buffered: buf.len(),
                    expected: None,
                },
                self.state.consumed,
            )),
        }
    }

    fn consumed(&self) -> u64 {
        self.state.consumed
    }
}

impl FrameEncoder for DelimiterCodec {
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        let limit = self.config.max_frame_length;
        if payload.len() > limit {
            return Err(EncodeError::FrameTooLong {
                length: payload.len(),
                limit,
            });
        }
        let tail = &self.config.delimiters[0];
        if let Some(position) = self.forbidden_position(payload, tail) {
            return Err(EncodeError::ContainsDelimiter { position });
        }
        Ok(FrameParts::with_tail(tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_support::{decode_to_eof, split_cycling, CheckedDecoder, Run};
    use crate::codec::{LinesCodec, LinesConfig};
    use proptest::prelude::*;

    fn delim(delimiters: &[&[u8]]) -> DelimiterConfig {
        DelimiterConfig::new(delimiters.iter().map(|d| d.to_vec()).collect())
    }

    fn codec(cfg: DelimiterConfig) -> DelimiterCodec {
        DelimiterCodec::new(cfg).unwrap()
    }

    fn lines(cfg: LinesConfig) -> LinesCodec {
        LinesCodec::new(cfg).unwrap()
    }

    /// Most bytes a decoder may hold after returning `Ok(None)`, checked by the decode helpers.
    impl CheckedDecoder for DelimiterCodec {
        fn buffer_bound(&self) -> Option<usize> {
            Some(if self.state.discarding {
                self.max_len - 1
            } else {
                self.config.max_frame_length + self.max_len - 1
            })
        }
    }
    impl CheckedDecoder for LinesCodec {
        fn buffer_bound(&self) -> Option<usize> {
            Some(if self.state.discarding {
                0
            } else {
                self.config.max_frame_length + 1
            })
        }
    }

    /// Feeds `input` in pieces whose sizes cycle through `chunks`, decoding after each piece and
    /// checking the buffer bound after every `Ok(None)`; then `decode_eof` until done. Stops at
    /// the first fatal error.
    fn feed<D: CheckedDecoder>(codec: &mut D, input: &[u8], chunks: &[usize]) -> Run {
        decode_to_eof(codec, split_cycling(input, chunks))
    }

    fn frames(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    /// Decodes `input` with a fresh codec at every chunk size and at every two-piece split, and
    /// checks the frames and the clean end each time.
    fn check_all_splits<D: CheckedDecoder>(make: impl Fn() -> D, input: &[u8], expected: &[&str]) {
        let expected = frames(expected);
        for chunk in 1..=input.len().max(1) {
            let run = feed(&mut make(), input, &[chunk]);
            assert_eq!(run.frames, expected, "chunk {chunk}");
            assert!(
                run.errors.is_empty() && run.eof.is_ok(),
                "chunk {chunk}: {run:?}"
            );
        }
        for split in 0..=input.len() {
            let run = feed(&mut make(), input, &[split, usize::MAX]);
            assert_eq!(run.frames, expected, "split at {split}");
            assert!(
                run.errors.is_empty() && run.eof.is_ok(),
                "split {split}: {run:?}"
            );
        }
    }

    // ---------------------------------------------------------------- delimiter codec

    #[test]
    fn single_delimiter_vectors_strip_and_keep() {
        check_all_splits(
            || codec(DelimiterConfig::nul()),
            b"a\0bc\0\0def\0",
            &["a", "bc", "", "def"],
        );
        check_all_splits(
            || {
                codec(DelimiterConfig {
                    strip: false,
                    ..DelimiterConfig::nul()
                })
            },
            b"a\0bc\0\0",
            &["a\0", "bc\0", "\0"],
        );
        // A multi-byte delimiter, including a self-overlapping one: "abab" in "xabababy".
        check_all_splits(
            || codec(delim(&[b"<END>"])),
            b"one<END>two<EN<END><END>",
            &["one", "two<EN", ""],
        );
        check_all_splits(|| codec(delim(&[b"abab"])), b"xabababyabab", &["x", "aby"]);
        check_all_splits(
            || {
                codec(DelimiterConfig {
                    strip: false,
                    ..delim(&[b"<END>"])
                })
            },
            b"one<END>two<END>",
            &["one<END>", "two<END>"],
        );
    }

    #[test]
    fn several_delimiters_shortest_frame_wins() {
        // The delimiter starting first ends the frame, whatever its place in the list.
        for list in [&[&b";"[..], b"||"][..], &[b"||", b";"]] {
            check_all_splits(
                || codec(delim(list)),
                b"a;b||c||d;e;;",
                &["a", "b", "c", "d", "e", ""],
            );
        }
        // "xaby" starts before "ab" inside it: the frame before "xaby" is the shorter one.
        check_all_splits(
            || codec(delim(&[b"ab", b"xaby"])),
            b"1xaby2xab3ab",
            &["1", "2x", "3"],
        );
        // Four single-byte delimiters (two memchr searches) and a long one.
        check_all_splits(
            || codec(delim(&[b",", b";", b":", b"|", b"--"])),
            b"a,b;c:d|e--f,",
            &["a", "b", "c", "d", "e", "f"],
        );
    }

    #[test]
    fn tie_at_one_position_takes_the_longest_delimiter() {
        for list in [&[&b"\r"[..], b"\r\n"][..], &[b"\r\n", b"\r"]] {
            check_all_splits(
                || codec(delim(list)),
                b"a\r\nb\rc\r\r\nd\r",
                &["a", "b", "c", "", "d"],
            );
            // Kept delimiters show which one was taken.
            check_all_splits(
                || {
                    codec(DelimiterConfig {
                        strip: false,
                        ..delim(list)
                    })
                },
                b"a\r\nb\r",
                &["a\r\n", "b\r"],
            );
        }
    }

    #[test]
    fn a_delimiter_that_may_still_grow_waits_for_the_next_byte() {
        let mut c = codec(delim(&[b"\r", b"\r\n"]));
        let mut buf = BytesMut::from(&b"abc\r"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"abc\r");
        buf.extend_from_slice(b"\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "abc");
        assert!(buf.is_empty());
        // At the end of the stream the shorter delimiter is final.
        buf.extend_from_slice(b"xy\r");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "xy");
        assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(c.consumed(), 8);
        // A longer delimiter that may start *before* the one found also waits.
        let mut c = codec(delim(&[b"ab", b"xaby"]));
        let mut buf = BytesMut::from(&b"1xab"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"z");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "1x");
        assert_eq!(&buf[..], b"z");
    }

    #[test]
    fn netty_line_delimiters_decode_like_lines() {
        check_all_splits(
            || codec(DelimiterConfig::line()),
            b"a\r\nb\nc\rd\n\r\n\n",
            &["a", "b", "c\rd", "", ""],
        );
        let c = codec(DelimiterConfig::line());
        assert!(matches!(c.matchers[..], [Matcher::Line]));
        let mut wire = BytesMut::new();
        c.encode(b"hi", &mut wire).unwrap();
        assert_eq!(&wire[..], b"hi\r\n");
    }

    #[test]
    fn frame_found_beyond_the_limit_is_too_long() {
        let cfg = DelimiterConfig {
            max_frame_length: 4,
            ..delim(&[b"--"])
        };
        // Exactly at the limit is accepted, delimiter not counted.
        let mut c = codec(cfg.clone());
        let mut buf = BytesMut::from(&b"abcd--abcde--"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "abcd");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 5,
                limit: 4
            }
        );
        assert_eq!(err.offset(), 6);
        assert!(!err.is_recoverable());
        // Fatal: the buffer is left alone, and the error repeats.
        assert_eq!(&buf[..], b"abcde--");
        assert_eq!(c.decode(&mut buf).unwrap_err(), err);
        assert_eq!(c.consumed(), 6);
    }

    #[test]
    fn no_delimiter_within_the_limit() {
        let cfg = DelimiterConfig {
            max_frame_length: 4,
            ..delim(&[b"--"])
        };
        let mut c = codec(cfg.clone());
        let mut buf = BytesMut::from(&b"ok--abcd"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "ok");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        // "abcd-" may still be "abcd" + "--": max + delimiter - 1 bytes are held.
        buf.extend_from_slice(b"-");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"x");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::DelimiterNotFound { limit: 4 });
        assert_eq!(err.offset(), 4);
        assert!(!err.is_recoverable());
        assert_eq!(&buf[..], b"abcd-x");
        // The bytes after the limit decide, not the buffer length: "abcde" can no longer end
        // within 4 bytes.
        let mut c = codec(cfg);
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert!(matches!(
            c.decode(&mut buf).unwrap_err().kind(),
            DecodeErrorKind::DelimiterNotFound { limit: 4 }
        ));
    }

    #[test]
    fn max_zero_accepts_only_empty_frames() {
        let mut c = codec(DelimiterConfig {
            max_frame_length: 0,
            ..DelimiterConfig::nul()
        });
        let mut buf = BytesMut::from(&b"\0\0x"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "");
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::DelimiterNotFound { limit: 0 }
        );
    }

    #[test]
    fn discard_skips_to_the_next_frame_with_one_error() {
        let cfg = DelimiterConfig {
            max_frame_length: 4,
            oversize: OversizePolicy::Discard,
            ..delim(&[b"--", b";"])
        };
        let input = b"ab--0123456789-0123-;cd;".as_slice();
        for chunk in 1..=input.len() {
            let mut c = codec(cfg.clone());
            let run = feed(&mut c, input, &[chunk]);
            assert_eq!(run.frames, frames(&["ab", "cd"]), "chunk {chunk}");
            assert_eq!(run.errors.len(), 1, "chunk {chunk}: {:?}", run.errors);
            assert!(run.errors[0].is_recoverable());
            assert_eq!(run.errors[0].offset(), 4);
            let expected_kind = if chunk >= 21 {
                // The frame and its delimiter arrived in the first read holding more than the
                // limit: its length is known.
                DecodeErrorKind::FrameTooLong {
                    length: 16,
                    limit: 4,
                }
            } else {
                DecodeErrorKind::DelimiterNotFound { limit: 4 }
            };
            assert_eq!(run.errors[0].kind(), &expected_kind, "chunk {chunk}");
            assert_eq!(run.eof, Ok(()));
            assert_eq!(c.consumed(), input.len() as u64);
        }
    }

    #[test]
    fn discard_keeps_only_a_possible_delimiter_start() {
        let mut c = codec(DelimiterConfig {
            max_frame_length: 2,
            oversize: OversizePolicy::Discard,
            ..delim(&[b"<END>"])
        });
        let mut buf = BytesMut::from(&b"abcdefgh<EN"[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::DelimiterNotFound { limit: 2 });
        assert_eq!(err.offset(), 0);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], b"<EN");
        assert_eq!(c.consumed(), 8);
        buf.extend_from_slice(b"Dxyz");
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        buf.extend_from_slice(b"<END>ok<END>");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "ok");
        assert_eq!(c.consumed(), 8 + 7 + 5 + 7);
        // The stream ending in a discarded frame is not a second error.
        let mut buf = BytesMut::from(&b"toolong<E"[..]);
        assert!(c.decode(&mut buf).unwrap_err().is_recoverable());
        assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn truncated_at_eof() {
        let mut c = codec(delim(&[b"\r\n"]));
        let mut buf = BytesMut::from(&b"ok\r\npart\r"[..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "ok");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 5,
                expected: None
            }
        );
        assert_eq!(err.offset(), 4);
        assert!(!err.is_recoverable());
        assert_eq!(c.pending_frame_length(&buf), None);
    }

    #[test]
    fn long_frame_one_byte_at_a_time_is_searched_linearly() {
        // 256 KiB with two matchers (memchr + memmem): each call searches only the new byte and
        // the possible start of a delimiter before it.
        let n = 256 * 1024;
        let mut c = codec(DelimiterConfig {
            max_frame_length: n,
            ..delim(&[b"\0", b"<END>"])
        });
        let mut buf = BytesMut::new();
        for i in 0..n {
            buf.extend_from_slice(&[b'a' + (i % 26) as u8]);
            assert_eq!(c.decode(&mut buf).unwrap(), None);
            assert_eq!(c.state.searched, buf.len().saturating_sub(4));
        }
        buf.extend_from_slice(b"<END>");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().len(), n);
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut c = codec(delim(&[b"--"]));
        let mut buf = BytesMut::from(&b"abc--d--"[..]);
        let base = buf.as_ptr() as usize;
        let f1 = c.decode(&mut buf).unwrap().unwrap();
        let f2 = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(f1.as_ptr() as usize, base);
        assert_eq!(f2.as_ptr() as usize, base + 5);
    }

    #[test]
    fn a_buffer_replaced_between_calls_does_not_panic() {
        let mut c = codec(delim(&[b"\0", b"<END>"]));
        let mut buf = BytesMut::from(&[b'x'; 100][..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        let mut other = BytesMut::from(&b"y\0"[..]);
        assert_eq!(c.decode(&mut other).unwrap().unwrap(), "y");
        let mut l = LinesCodec::default();
        assert_eq!(l.decode(&mut buf).unwrap(), None);
        let mut other = BytesMut::from(&b"y\n"[..]);
        assert_eq!(l.decode(&mut other).unwrap().unwrap(), "y");
    }

    #[test]
    fn encoder_appends_the_first_delimiter() {
        let c = codec(delim(&[b"||", b";"]));
        let mut wire = BytesMut::new();
        c.encode(b"abc", &mut wire).unwrap();
        c.encode(b"", &mut wire).unwrap();
        assert_eq!(&wire[..], b"abc||||");
        let mut frame = c.encode_vectored(Bytes::from_static(b"xyz")).unwrap();
        let mut slices = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(frame.chunks_vectored(&mut slices), 2); // payload + delimiter
        assert_eq!(frame.copy_to_bytes(frame.remaining()), &b"xyz||"[..]);
    }

    #[test]
    fn encoder_refuses_what_would_not_decode_back() {
        let refuse =
            |list: &[&[u8]], payload: &[u8]| codec(delim(list)).frame_parts(payload).unwrap_err();
        let at = |position| EncodeError::ContainsDelimiter { position };
        // A delimiter inside, at its earliest position.
        assert_eq!(refuse(&[b"||", b";"], b"ab;c||d"), at(2));
        assert_eq!(refuse(&[b"||", b";"], b"ab||c;d"), at(2));
        // The payload's end and the delimiter form a delimiter: "a|" + "||" reads "a" + "|||".
        assert_eq!(refuse(&[b"||"], b"a|"), at(1));
        // Self-overlap: "ab" + "abab" reads as "" + "abab" + "ab".
        assert_eq!(refuse(&[b"abab"], b"xab"), at(1));
        // A longer delimiter may start in the payload and end in the next frame.
        assert_eq!(refuse(&[b"\n", b"a\nb"], b"xa"), at(1));
        // Lines with "\n" written: a trailing "\r" joins the terminator.
        assert_eq!(refuse(&[b"\n", b"\r\n"], b"x\r"), at(1));
        // "\r" written while "\r\n" is a delimiter: a payload starting with "\n" would extend
        // the previous frame's "\r".
        assert_eq!(refuse(&[b"\r", b"\r\n"], b"\nx"), at(0));
        // Over the limit, checked first.
        let c = codec(DelimiterConfig {
            max_frame_length: 3,
            ..DelimiterConfig::nul()
        });
        assert_eq!(
            c.encode(b"a\0cd", &mut BytesMut::new()),
            Err(EncodeError::FrameTooLong {
                length: 4,
                limit: 3
            })
        );
        // Nothing written on error; accepted neighbours of the refused cases.
        let mut wire = BytesMut::new();
        assert!(codec(delim(&[b"||"])).encode(b"a|", &mut wire).is_err());
        assert!(wire.is_empty());
        codec(delim(&[b"||"])).encode(b"|a", &mut wire).unwrap();
        codec(delim(&[b"\r\n", b"\n"]))
            .encode(b"x\r", &mut wire)
            .unwrap();
        codec(delim(&[b"\r", b"\r\n"]))
            .encode(b"x\n", &mut wire)
            .unwrap();
        assert_eq!(&wire[..], b"|a||x\r\r\nx\n\r");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert_eq!(
            DelimiterCodec::new(DelimiterConfig::new(vec![])).unwrap_err(),
            ConfigError::EmptyDelimiter
        );
        assert_eq!(
            DelimiterCodec::new(delim(&[b";", b""])).unwrap_err(),
            ConfigError::EmptyDelimiter
        );
        assert_eq!(
            DelimiterCodec::new(DelimiterConfig::new(vec![vec![b'x'; 33]])).unwrap_err(),
            ConfigError::TooLong {
                what: "delimiter",
                length: 33,
                max: 32
            }
        );
        let c = codec(DelimiterConfig::new(vec![vec![b'x'; 32]]));
        assert_eq!(c.config().delimiters[0].len(), 32);
        // Duplicates are harmless.
        check_all_splits(|| codec(delim(&[b";", b";"])), b"a;;", &["a", ""]);
    }

    // ---------------------------------------------------------------- lines codec

    #[test]
    fn lines_crlf_lf_and_lone_cr() {
        check_all_splits(
            LinesCodec::default,
            b"a\r\nb\nc\rd\n\r\n\n\r\r\n",
            &["a", "b", "c\rd", "", "", "\r"],
        );
        check_all_splits(
            || {
                lines(LinesConfig {
                    strip: false,
                    ..LinesConfig::default()
                })
            },
            b"a\r\nb\nc\rd\n",
            &["a\r\n", "b\n", "c\rd\n"],
        );
    }

    #[test]
    fn lines_limit_excludes_the_terminator() {
        let cfg = LinesConfig {
            max_frame_length: 4,
            ..LinesConfig::default()
        };
        check_all_splits(|| lines(cfg.clone()), b"abcd\nabcd\r\n", &["abcd", "abcd"]);
        // Too long, found whole.
        let mut c = lines(cfg.clone());
        let mut buf = BytesMut::from(&b"ok\nabcde\r\n"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "ok");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 5,
                limit: 4
            }
        );
        assert_eq!(err.offset(), 3);
        assert!(!err.is_recoverable());
        assert_eq!(&buf[..], b"abcde\r\n");
        // No terminator: "abcd\r" may still end well, "abcdx" cannot.
        let mut c = lines(cfg.clone());
        let mut buf = BytesMut::from(&b"abcd\r"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"x");
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::DelimiterNotFound { limit: 4 });
        assert_eq!(err.offset(), 0);
        let mut c = lines(cfg);
        let mut buf = BytesMut::from(&b"abcdx"[..]);
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::DelimiterNotFound { limit: 4 }
        );
    }

    #[test]
    fn lines_discard_skips_to_the_next_line_with_one_error() {
        let cfg = LinesConfig {
            max_frame_length: 3,
            oversize: OversizePolicy::Discard,
            ..LinesConfig::default()
        };
        let input = b"one\r\nabcdefgh\r\ntwo\n".as_slice();
        for chunk in 1..=input.len() {
            let mut c = lines(cfg.clone());
            let run = feed(&mut c, input, &[chunk]);
            assert_eq!(run.frames, frames(&["one", "two"]), "chunk {chunk}");
            assert_eq!(run.errors.len(), 1, "chunk {chunk}");
            assert!(run.errors[0].is_recoverable());
            assert_eq!(run.errors[0].offset(), 5);
            assert_eq!(run.eof, Ok(()));
            assert_eq!(c.consumed(), input.len() as u64);
        }
        // Whole line buffered: its length is reported.
        let mut c = lines(cfg);
        let mut buf = BytesMut::from(input);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "one");
        assert_eq!(
            c.decode(&mut buf).unwrap_err().kind(),
            &DecodeErrorKind::FrameTooLong {
                length: 8,
                limit: 3
            }
        );
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), "two");
    }

    #[test]
    fn lines_truncated_at_eof() {
        let mut c = LinesCodec::default();
        let mut buf = BytesMut::from(&b"a\nbc\r"[..]);
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap(), "a");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            &DecodeErrorKind::Truncated {
                buffered: 3,
                expected: None
            }
        );
        assert_eq!(err.offset(), 2);
    }

    #[test]
    fn a_megabyte_line_one_byte_at_a_time_is_searched_once() {
        let n = 1 << 20;
        let mut c = lines(LinesConfig {
            max_frame_length: n,
            ..LinesConfig::default()
        });
        let mut buf = BytesMut::new();
        for _ in 0..n {
            buf.extend_from_slice(b"x");
            assert_eq!(c.decode(&mut buf).unwrap(), None);
            // The next search starts after every byte already searched.
            assert_eq!(c.state.searched, buf.len());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().len(), n);
        assert_eq!(c.consumed(), n as u64 + 2);
    }

    #[test]
    fn lines_frames_share_the_read_buffer() {
        let mut c = LinesCodec::default();
        let mut buf = BytesMut::from(&b"ab\r\ncd\n"[..]);
        let base = buf.as_ptr() as usize;
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().as_ptr() as usize, base);
        assert_eq!(
            c.decode(&mut buf).unwrap().unwrap().as_ptr() as usize,
            base + 4
        );
    }

    #[test]
    fn lines_encoder() {
        let lf = LinesCodec::default();
        let crlf = lines(LinesConfig {
            crlf: true,
            max_frame_length: 4,
            ..LinesConfig::default()
        });
        let mut wire = BytesMut::new();
        lf.encode(b"a\rb", &mut wire).unwrap();
        crlf.encode(b"c\r", &mut wire).unwrap(); // "c\r" + "\r\n" reads back as "c\r"
        assert_eq!(&wire[..], b"a\rb\nc\r\r\n");
        let mut d = LinesCodec::default();
        assert_eq!(d.decode(&mut wire).unwrap().unwrap(), "a\rb");
        assert_eq!(d.decode(&mut wire).unwrap().unwrap(), "c\r");
        assert_eq!(
            lf.frame_parts(b"ab\ncd\n"),
            Err(EncodeError::ContainsDelimiter { position: 2 })
        );
        assert_eq!(
            lf.frame_parts(b"ab\r"),
            Err(EncodeError::ContainsDelimiter { position: 2 })
        );
        assert_eq!(
            crlf.frame_parts(b"abcde"),
            Err(EncodeError::FrameTooLong {
                length: 5,
                limit: 4
            })
        );
        assert_eq!(crlf.frame_parts(b"").unwrap().tail(), b"\r\n");
    }

    #[test]
    fn lines_defaults() {
        let c = LinesCodec::default();
        assert_eq!(c.config(), &LinesConfig::default());
        assert_eq!(c.config().max_frame_length, DEFAULT_MAX_LINE_LENGTH);
        assert!(c.config().strip && !c.config().crlf);
        assert_eq!(c.config().oversize, OversizePolicy::Fail);
        let d = DelimiterConfig::new(vec![vec![0]]);
        assert_eq!(d, DelimiterConfig::nul());
        assert!(d.strip);
        assert_eq!(d.max_frame_length, DEFAULT_MAX_LINE_LENGTH);
    }

    // ---------------------------------------------------------------- properties

    /// Bytes from a small alphabet so that delimiters, their prefixes and overlaps are common.
    fn alphabet_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(&b"ab\r\n"[..]), 0..max)
    }

    fn delimiter_set() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(
            prop::collection::vec(prop::sample::select(&b"ab\r\n"[..]), 1..4),
            1..4,
        )
    }

    fn chunkings() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(1usize..9, 1..8)
    }

    proptest! {
        #[test]
        fn lines_round_trip(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..12),
            cr in prop::collection::vec(any::<bool>(), 12),
            crlf in any::<bool>(),
            strip in any::<bool>(),
            chunks in chunkings(),
        ) {
            let cfg = LinesConfig { max_frame_length: 40, crlf, strip, ..LinesConfig::default() };
            let enc = lines(cfg.clone());
            let mut wire = BytesMut::new();
            let mut sent = Vec::new();
            for (mut p, cr) in payloads.into_iter().zip(cr) {
                p.retain(|&b| b != b'\n');
                if cr {
                    p.push(b'\r');
                }
                match enc.encode(&p, &mut wire) {
                    Ok(()) => {
                        if !strip {
                            p.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                        }
                        sent.push(Bytes::from(p));
                    }
                    Err(e) => {
                        prop_assert!(!crlf && p.last() == Some(&b'\r'));
                        prop_assert_eq!(e, EncodeError::ContainsDelimiter { position: p.len() - 1 });
                    }
                }
            }
            let mut dec = lines(cfg);
            let run = feed(&mut dec, &wire, &chunks);
            prop_assert_eq!(run, Run { frames: sent, errors: vec![], eof: Ok(()) });
            prop_assert_eq!(dec.consumed(), wire.len() as u64);
        }

        #[test]
        fn delimiter_round_trip(
            delimiters in delimiter_set(),
            payloads in prop::collection::vec(alphabet_bytes(12), 0..12),
            strip in any::<bool>(),
            chunks in chunkings(),
        ) {
            let cfg = DelimiterConfig { strip, max_frame_length: 12, ..DelimiterConfig::new(delimiters) };
            let enc = codec(cfg.clone());
            let tail = cfg.delimiters[0].clone();
            let mut wire = BytesMut::new();
            let mut sent = Vec::new();
            for mut p in payloads {
                if enc.encode(&p, &mut wire).is_ok() {
                    if !strip {
                        p.extend_from_slice(&tail);
                    }
                    sent.push(Bytes::from(p));
                }
            }
            let mut dec = codec(cfg);
            let run = feed(&mut dec, &wire, &chunks);
            prop_assert_eq!(run, Run { frames: sent, errors: vec![], eof: Ok(()) });
            prop_assert_eq!(dec.consumed(), wire.len() as u64);
        }

        /// With single-byte delimiters the encoder refuses exactly the payloads holding one.
        #[test]
        fn single_byte_delimiters_refuse_only_what_they_contain(
            delimiters in prop::collection::vec(prop::sample::select(&b"ab\r\n"[..]), 1..4),
            payload in alphabet_bytes(12),
        ) {
            let c = codec(DelimiterConfig::new(delimiters.iter().map(|&d| vec![d]).collect()));
            let first = payload.iter().position(|b| delimiters.contains(b));
            match first {
                Some(position) => prop_assert_eq!(
                    c.frame_parts(&payload),
                    Err(EncodeError::ContainsDelimiter { position })
                ),
                None => {
                    let parts = c.frame_parts(&payload).unwrap();
                    prop_assert_eq!(parts.tail(), &delimiters[..1]);
                }
            }
        }

        /// Any input, oversized frames discarded: the same frames and errors at the same offsets
        /// whatever the chunking, and the buffer bound holds (checked inside `feed`).
        #[test]
        fn delimiter_decoding_ignores_chunking(
            delimiters in delimiter_set(),
            input in alphabet_bytes(80),
            max in 0usize..8,
            chunks in chunkings(),
        ) {
            let cfg = DelimiterConfig {
                max_frame_length: max,
                oversize: OversizePolicy::Discard,
                ..DelimiterConfig::new(delimiters)
            };
            let whole = feed(&mut codec(cfg.clone()), &input, &[usize::MAX]);
            let mut c = codec(cfg);
            let chunked = feed(&mut c, &input, &chunks);
            prop_assert_eq!(&chunked.frames, &whole.frames);
            let offsets = |r: &Run| r.errors.iter().map(|e| e.offset()).collect::<Vec<_>>();
            prop_assert_eq!(offsets(&chunked), offsets(&whole));
            prop_assert_eq!(&chunked.eof, &whole.eof);
            if chunked.eof.is_ok() {
                prop_assert_eq!(c.consumed(), input.len() as u64);
            }
            for f in &chunked.frames {
                prop_assert!(f.len() <= max);
            }
        }

        #[test]
        fn lines_decoding_ignores_chunking(
            input in alphabet_bytes(80),
            max in 0usize..8,
            chunks in chunkings(),
        ) {
            let cfg = LinesConfig { max_frame_length: max, oversize: OversizePolicy::Discard, ..LinesConfig::default() };
            let whole = feed(&mut lines(cfg.clone()), &input, &[usize::MAX]);
            let chunked = feed(&mut lines(cfg.clone()), &input, &chunks);
            prop_assert_eq!(&chunked.frames, &whole.frames);
            let offsets = |r: &Run| r.errors.iter().map(|e| e.offset()).collect::<Vec<_>>();
            prop_assert_eq!(offsets(&chunked), offsets(&whole));
            prop_assert_eq!(&chunked.eof, &whole.eof);
            // The generic decoder with Netty's line delimiters agrees with the lines codec.
            let generic = feed(
                &mut codec(DelimiterConfig { max_frame_length: max, oversize: OversizePolicy::Discard, ..DelimiterConfig::line() }),
                &input,
                &chunks,
            );
            prop_assert_eq!(&generic.frames, &whole.frames);
            prop_assert_eq!(offsets(&generic), offsets(&whole));
            prop_assert_eq!(&generic.eof, &whole.eof);
        }
    }
}
