//! Shared harness for the framelink fuzz targets (see `README.md`).
//!
//! Every `decode_*` target reads a codec configuration from the front of the fuzzer input, then a
//! small table of chunk sizes, and feeds the rest of the input to the decoder in chunks of those
//! sizes, as TCP reads would deliver it. [`drive`] checks the invariants every decoder must keep;
//! a violated invariant is a panic, which libFuzzer reports as a crash.

use bytes::{Bytes, BytesMut};
use framelink_proto::codec::{DecodeError, DecodeErrorKind, FrameDecoder};

/// Reads configuration values off the front of the fuzzer input. Past the end it yields zeros, so
/// every input, even an empty one, gives a configuration.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzzer input.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// True when all the input has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Everything not read yet: the byte stream.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Sizes of the reads that deliver the stream: 1 to 8 sizes taken from the input, used in turn.
/// A size may be 0 (the decoder is called again with nothing new) or large (several frames in one
/// read).
#[derive(Debug, Clone)]
pub struct Chunker {
    sizes: Vec<usize>,
    next: usize,
}

impl Chunker {
    /// Reads the size table: a count byte, then one byte per size.
    pub fn from_input(input: &mut Input<'_>) -> Self {
        let count = usize::from(input.u8() % 8) + 1;
        let mut sizes: Vec<usize> = (0..count).map(|_| Self::size(input.u8())).collect();
        if sizes.iter().all(|&s| s == 0) {
            sizes.push(1);
        }
        Chunker { sizes, next: 0 }
    }

    /// One read of everything.
    pub fn whole() -> Self {
        Chunker {
            sizes: vec![usize::MAX],
            next: 0,
        }
    }

    /// `0..=127` as is, then steps of 16 up to 1792, then steps of 4 KiB up to 64 KiB.
    fn size(b: u8) -> usize {
        let b = usize::from(b);
        match b {
            0..=127 => b,
            128..=239 => (b - 127) * 16,
            _ => (b - 239) * 4096,
        }
    }

    /// The size of the next read.
    pub fn next_size(&mut self) -> usize {
        let size = self.sizes[self.next];
        self.next = (self.next + 1) % self.sizes.len();
        size
    }
}

/// What a decoder must respect, per codec and configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes the read buffer may hold after `decode` returned `Ok(None)`: the maximum frame
    /// plus the codec's header / delimiter overhead. Buffers must never grow with garbage.
    pub buffered_after_none: usize,
    /// Longest frame `decode` may return.
    pub max_frame: usize,
}

/// Everything a decoder produced from one stream.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The frames, in order.
    pub frames: Vec<Bytes>,
    /// Recoverable errors, in order.
    pub recoverable: Vec<DecodeError>,
    /// The fatal error that ended decoding, if any.
    pub fatal: Option<DecodeError>,
    /// Whether the fatal error came from `decode_eof`.
    pub fatal_at_eof: bool,
}

/// Consecutive non-`Ok(None)` results that may leave `consumed()` unchanged before the decoder is
/// considered stuck (a caller looping on `decode` would spin forever).
const MAX_STALLS: usize = 2;

struct Driver<'l, D, F> {
    codec: D,
    limits: &'l Limits,
    check_frame: F,
    buf: BytesMut,
    fed: u64,
    consumed: u64,
    stalls: usize,
    out: Outcome,
}

/// What one `decode` / `decode_eof` call meant for the caller's loop.
enum Step {
    /// `Ok(None)`: wait for more bytes (or, at EOF, done).
    Done,
    /// A frame or a recoverable error: call again.
    Again,
    /// A fatal error: stop.
    Stop,
}

impl<D: FrameDecoder, F: FnMut(&Bytes)> Driver<'_, D, F> {
    fn call(&mut self, eof: bool) -> Step {
        let what = if eof { "decode_eof" } else { "decode" };
        let result = if eof {
            self.codec.decode_eof(&mut self.buf)
        } else {
            self.codec.decode(&mut self.buf)
        };
        let consumed = self.codec.consumed();
        assert!(
            consumed >= self.consumed,
            "{what}: consumed() went backwards from {} to {consumed}",
            self.consumed
        );
        let progressed = consumed > self.consumed;
        self.consumed = consumed;
        assert_eq!(
            consumed + self.buf.len() as u64,
            self.fed,
            "{what}: consumed() = {consumed} with {} bytes still buffered, but {} bytes were fed \
             (result {result:?})",
            self.buf.len(),
            self.fed
        );
        match result {
            Ok(None) => {
                self.stalls = 0;
                if eof {
                    assert!(
                        self.buf.is_empty(),
                        "decode_eof returned Ok(None) with {} bytes left in the buffer",
                        self.buf.len()
                    );
                } else {
                    assert!(
                        self.buf.len() <= self.limits.buffered_after_none,
                        "decode returned Ok(None) with {} bytes buffered, over the bound of {}",
                        self.buf.len(),
                        self.limits.buffered_after_none
                    );
                }
                Step::Done
            }
            Ok(Some(frame)) => {
                assert!(
                    progressed,
                    "{what} returned a {}-byte frame without consuming any bytes",
                    frame.len()
                );
                self.stalls = 0;
                assert!(
                    frame.len() <= self.limits.max_frame,
                    "{what} returned a {}-byte frame, over the limit of {}",
                    frame.len(),
                    self.limits.max_frame
                );
                (self.check_frame)(&frame);
                self.out.frames.push(frame);
                Step::Again
            }
            Err(e) => {
                assert!(
                    e.offset() <= consumed,
                    "{what}: error offset {} is past consumed() = {consumed}: {e}",
                    e.offset()
                );
                if let DecodeErrorKind::Truncated { buffered, expected } = e.kind() {
                    assert!(eof, "decode (not at EOF) returned {e}");
                    assert_eq!(
                        *buffered,
                        self.buf.len(),
                        "Truncated error with a wrong count: {e}"
                    );
                    if let Some(expected) = expected {
                        assert!(
                            *expected > *buffered as u64,
                            "Truncated error for a frame that is complete: {e}"
                        );
                    }
                }
                if !e.is_recoverable() {
                    self.out.fatal = Some(e);
                    self.out.fatal_at_eof = eof;
                    return Step::Stop;
                }
                if progressed {
                    self.stalls = 0;
                } else {
                    self.stalls += 1;
                    assert!(
                        self.stalls <= MAX_STALLS,
                        "{what}: {} recoverable errors in a row without consuming a byte: {e}",
                        self.stalls
                    );
                }
                self.out.recoverable.push(e);
                Step::Again
            }
        }
    }
}

/// Feeds `stream` to `codec` in reads sized by `chunker`, calling `decode` after every read until
/// it returns `Ok(None)`, then `decode_eof` until it returns `Ok(None)`; stops at the first fatal
/// error. `check_frame` sees every frame. Panics when an invariant breaks:
///
/// - `consumed()` never decreases and always equals the bytes fed minus the bytes still buffered;
/// - after `Ok(None)` from `decode` at most `limits.buffered_after_none` bytes are buffered; after
///   `Ok(None)` from `decode_eof` none are;
/// - every frame is at most `limits.max_frame` bytes and is taken off the buffer (a frame that
///   consumes nothing would make callers loop forever), and a decoder cannot return recoverable
///   errors forever without consuming;
/// - error offsets are not past `consumed()`; `Truncated` only comes at EOF, with the true number
///   of buffered bytes and an expected length larger than that;
/// - `decode_eof` terminates (it is called at most a bounded number of times).
pub fn drive<D: FrameDecoder>(
    codec: D,
    stream: &[u8],
    chunker: &mut Chunker,
    limits: &Limits,
    check_frame: impl FnMut(&Bytes),
) -> Outcome {
    assert_eq!(codec.consumed(), 0, "a new decoder has consumed bytes");
    let mut d = Driver {
        codec,
        limits,
        check_frame,
        buf: BytesMut::new(),
        fed: 0,
        consumed: 0,
        stalls: 0,
        out: Outcome::default(),
    };
    let mut pos = 0;
    while pos < stream.len() {
        let n = chunker.next_size().min(stream.len() - pos);
        d.buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        d.fed += n as u64;
        loop {
            match d.call(false) {
                Step::Done => break,
                Step::Again => {}
                Step::Stop => return d.out,
            }
        }
    }
    // Every frame or error at EOF takes at least one byte, with at most MAX_STALLS exceptions in a
    // row: so this many calls are always enough.
    let bound = (d.buf.len() + 1) * (MAX_STALLS + 1) + 8;
    for _ in 0..bound {
        match d.call(true) {
            Step::Done | Step::Stop => return d.out,
            Step::Again => {}
        }
    }
    panic!("decode_eof did not finish within {bound} calls");
}

/// Runs [`drive`] twice, once with the fuzzer's chunking and once with the whole stream in one
/// read, and checks that the chunking changed nothing: same frames, a fatal error in both runs or
/// in neither, and without one the same number of recoverable errors. Returns the chunked run's
/// outcome.
pub fn drive_and_compare<D: FrameDecoder>(
    mut make_codec: impl FnMut() -> D,
    stream: &[u8],
    chunker: &mut Chunker,
    limits: &Limits,
    mut check_frame: impl FnMut(&Bytes),
) -> Outcome {
    let chunked = drive(make_codec(), stream, chunker, limits, &mut check_frame);
    let whole = drive(
        make_codec(),
        stream,
        &mut Chunker::whole(),
        limits,
        &mut check_frame,
    );
    assert_eq!(
        chunked.frames, whole.frames,
        "frames depend on how the stream was split into reads ({chunker:?})"
    );
    assert_eq!(
        chunked.fatal.is_some(),
        whole.fatal.is_some(),
        "a fatal error in one run only: chunked {:?} vs whole {:?}",
        chunked.fatal,
        whole.fatal
    );
    // When the stream ends in a fatal error, a decoder fed in small reads may first report the
    // bad frame as recoverable and only find out later that it cannot be skipped (a netstring
    // length that turns out to overflow u64): compare the counts only for streams that decode
    // to the end.
    if chunked.fatal.is_none() {
        assert_eq!(
            chunked.recoverable.len(),
            whole.recoverable.len(),
            "recoverable errors depend on the reads: chunked {:?} vs whole {:?}",
            chunked.recoverable,
            whole.recoverable
        );
    }
    chunked
}

/// Number of decimal digits of `n`.
pub fn decimal_digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}
