//! Test scaffolding shared by the codec tests: cutting a byte stream into the pieces a decoder is
//! fed ([`Feed`], [`split_cycling`]), feeding them and collecting frames and errors while checking
//! the decoder's invariants ([`decode_pieces`], [`decode_to_eof`]), and hex test vectors.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::{DecodeError, FrameDecoder};

/// The bytes written as hex digits in `s` ("cafe0009").
pub(super) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// How a test feeds a byte stream to the decoder.
#[derive(Debug, Clone)]
pub(super) enum Feed {
    Bytewise,
    AllAtOnce,
    /// Piece sizes, used in turn.
    Random(Vec<usize>),
}

impl Feed {
    /// `input` cut into the pieces this feed delivers.
    pub(super) fn pieces<'a>(&self, input: &'a [u8]) -> Vec<&'a [u8]> {
        match self {
            Feed::Bytewise => input.chunks(1).collect(),
            Feed::AllAtOnce => vec![input],
            Feed::Random(sizes) => split_cycling(input, sizes),
        }
    }
}

/// Any [`Feed`]; random ones use 1 to 15 piece sizes of 1 to 79 bytes.
pub(super) fn feed() -> impl Strategy<Value = Feed> {
    prop_oneof![
        Just(Feed::Bytewise),
        Just(Feed::AllAtOnce),
        proptest::collection::vec(1usize..80, 1..16).prop_map(Feed::Random),
    ]
}

/// `input` cut into pieces whose sizes cycle through `sizes`; a size of 0 counts as 1 and the last
/// piece may be shorter.
pub(super) fn split_cycling<'a>(input: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    assert!(!sizes.is_empty(), "no piece sizes");
    let mut out = Vec::new();
    let mut rest = input;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.clamp(1, rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// What the decode helpers below assert about a decoder while they feed it, on top of what each
/// test checks in the frames and errors.
pub(super) trait CheckedDecoder: FrameDecoder {
    /// Whether to assert after every call that [`consumed`](FrameDecoder::consumed) plus the bytes
    /// still buffered is the number of bytes fed.
    const CHECK_CONSUMED: bool = false;

    /// Most bytes the decoder, in its present state, may leave buffered when it returns
    /// `Ok(None)`; `None` checks nothing.
    fn buffer_bound(&self) -> Option<usize>;
}

/// What decoding a whole stream gave.
#[derive(Debug, PartialEq)]
pub(super) struct Run {
    pub(super) frames: Vec<Bytes>,
    /// Every error from `decode`, and the recoverable ones from `decode_eof`.
    pub(super) errors: Vec<DecodeError>,
    /// The fatal error `decode_eof` returned at the end of the stream, if any.
    pub(super) eof: Result<(), DecodeError>,
}

/// Feeds `pieces` to `decoder` one at a time, decoding after each until `Ok(None)`; returns the
/// frames and the errors, stopping at the first fatal one. Checks the decoder's
/// [`CheckedDecoder`] invariants on the way. Does not end the stream.
pub(super) fn decode_pieces<'a, D: CheckedDecoder>(
    decoder: &mut D,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Bytes>, Vec<DecodeError>) {
    let run = decode_stream(decoder, pieces, false);
    (run.frames, run.errors)
}

/// [`decode_pieces`] with `input` fed in pieces of `chunk` bytes (0 counts as 1).
pub(super) fn decode_chunked<D: CheckedDecoder>(
    decoder: &mut D,
    input: &[u8],
    chunk: usize,
) -> (Vec<Bytes>, Vec<DecodeError>) {
    decode_pieces(decoder, input.chunks(chunk.max(1)))
}

/// [`decode_pieces`] with `input[..at]` fed, then `input[at..]`.
pub(super) fn decode_split<D: CheckedDecoder>(
    decoder: &mut D,
    input: &[u8],
    at: usize,
) -> (Vec<Bytes>, Vec<DecodeError>) {
    let (a, b) = input.split_at(at);
    decode_pieces(decoder, [a, b])
}

/// [`decode_pieces`], then the end of the stream (unless `decode` failed fatally): `decode_eof`
/// until it returns `Ok(None)`, asserting that nothing is left buffered, or a fatal error, which
/// goes to [`Run::eof`].
pub(super) fn decode_to_eof<'a, D: CheckedDecoder>(
    decoder: &mut D,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Run {
    decode_stream(decoder, pieces, true)
}

fn decode_stream<'a, D: CheckedDecoder>(
    decoder: &mut D,
    pieces: impl IntoIterator<Item = &'a [u8]>,
    to_eof: bool,
) -> Run {
    let mut run = Run {
        frames: Vec::new(),
        errors: Vec::new(),
        eof: Ok(()),
    };
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        fed += piece.len();
        if let Err(fatal) = drain(decoder, D::decode, &mut buf, fed, &mut run) {
            run.errors.push(fatal);
            return run;
        }
    }
    if to_eof {
        if let Err(fatal) = drain(decoder, D::decode_eof, &mut buf, fed, &mut run) {
            run.eof = Err(fatal);
            return run;
        }
        assert!(
            buf.is_empty(),
            "{} bytes left buffered at the end of the stream",
            buf.len()
        );
    }
    run
}

type DecodeFn<D> = fn(&mut D, &mut BytesMut) -> Result<Option<Bytes>, DecodeError>;

/// Calls `decode` until it returns `Ok(None)` or a fatal error, which is returned; frames and
/// recoverable errors go to `run`.
fn drain<D: CheckedDecoder>(
    decoder: &mut D,
    decode: DecodeFn<D>,
    buf: &mut BytesMut,
    fed: usize,
    run: &mut Run,
) -> Result<(), DecodeError> {
    loop {
        let result = decode(decoder, buf);
        if D::CHECK_CONSUMED {
            assert_eq!(
                decoder.consumed() + buf.len() as u64,
                fed as u64,
                "consumed + buffered != fed"
            );
        }
        match result {
            Ok(Some(frame)) => run.frames.push(frame),
            Ok(None) => {
                if let Some(bound) = decoder.buffer_bound() {
                    assert!(
                        buf.len() <= bound,
                        "{} bytes left buffered, bound {bound}",
                        buf.len()
                    );
                }
                return Ok(());
            }
            Err(e) if e.is_recoverable() => run.errors.push(e),
            Err(e) => return Err(e),
        }
    }
}
