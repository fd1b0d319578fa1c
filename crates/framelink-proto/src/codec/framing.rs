//! [`Framing`]: any of the codecs behind one type, built from a text spec, so that configuration
//! files, the CLI and bindings can choose a framing at run time.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};

use super::{
    spec, ConfigError, DecodeError, DelimiterCodec, EncodeError, EncodedFrame, FixedLengthCodec,
    FrameDecoder, FrameEncoder, FrameParts, LengthFieldCodec, LinesCodec, MagicCodec,
    NetstringCodec, VarintCodec,
};

/// One of framelink's framings, chosen at run time.
///
/// Build it from a codec (`Framing::from(codec)`) or from a [spec](super::spec) string; its
/// `Display` prints the canonical spec back. It implements [`FrameDecoder`] and [`FrameEncoder`]
/// and, with the `tokio-codec` feature, tokio-util's `Decoder`/`Encoder`, so
/// `tokio_util::codec::Framed::new(stream, framing)` works.
///
/// Recoverable decode errors (an oversized frame discarded, bytes skipped to resynchronise) are
/// returned by [`FrameDecoder::decode`] like any error. Through tokio-util's `Framed`, which ends
/// the stream on the first error, they are not returned: decoding goes on and they are kept for
/// [`take_recovered_errors`](Framing::take_recovered_errors).
///
/// ```
/// use bytes::BytesMut;
/// use framelink_proto::{Framing, FrameDecoder, FrameEncoder};
///
/// let mut framing: Framing = "length:2,le,max=1KiB".parse().unwrap();
/// let mut wire = BytesMut::new();
/// framing.encode(b"hi", &mut wire).unwrap();
/// assert_eq!(&wire[..], b"\x02\x00hi");
/// assert_eq!(framing.decode(&mut wire).unwrap().unwrap(), "hi");
/// assert_eq!(framing.to_string(), "length:2,le,strip=2,max=1KiB");
/// ```
#[derive(Debug, Clone)]
pub struct Framing {
    codec: AnyCodec,
    recovered: RecoveredErrors,
}

/// The codec inside a [`Framing`].
#[derive(Debug, Clone)]
pub enum AnyCodec {
    /// Length field (Netty `LengthFieldBasedFrameDecoder` options).
    LengthField(LengthFieldCodec),
    /// Unsigned LEB128 length prefix.
    Varint(VarintCodec),
    /// Byte-sequence delimiters.
    Delimiter(DelimiterCodec),
    /// `\n` / `\r\n` lines.
    Lines(LinesCodec),
    /// Fixed-size frames.
    Fixed(FixedLengthCodec),
    /// Netstrings.
    Netstring(NetstringCodec),
    /// Magic + length + checksum header.
    Magic(MagicCodec),
}

/// Calls `$body` with `$c` bound to the codec inside any variant.
macro_rules! dispatch_ref {
    ($self:expr, $c:ident => $body:expr) => {
        match &$self.codec {
            AnyCodec::LengthField($c) => $body,
            AnyCodec::Varint($c) => $body,
            AnyCodec::Delimiter($c) => $body,
            AnyCodec::Lines($c) => $body,
            AnyCodec::Fixed($c) => $body,
            AnyCodec::Netstring($c) => $body,
            AnyCodec::Magic($c) => $body,
        }
    };
}

/// Like `dispatch_ref!`, with the codec borrowed mutably.
macro_rules! dispatch {
    ($self:expr, $c:ident => $body:expr) => {
        match &mut $self.codec {
            AnyCodec::LengthField($c) => $body,
            AnyCodec::Varint($c) => $body,
            AnyCodec::Delimiter($c) => $body,
            AnyCodec::Lines($c) => $body,
            AnyCodec::Fixed($c) => $body,
            AnyCodec::Netstring($c) => $body,
            AnyCodec::Magic($c) => $body,
        }
    };
}

impl Framing {
    /// Parses a framing spec; see [`spec`](super::spec) for the grammar.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        spec::parse(text)
    }

    /// The codec inside.
    pub fn codec(&self) -> &AnyCodec {
        &self.codec
    }

    /// A fresh copy with the same configuration and no decoding state (for a new connection).
    pub fn reset(&self) -> Self {
        let codec = match &self.codec {
            AnyCodec::LengthField(c) => {
                LengthFieldCodec::new(c.config().clone()).map(AnyCodec::from)
            }
            AnyCodec::Varint(c) => VarintCodec::new(c.config().clone()).map(AnyCodec::from),
            AnyCodec::Delimiter(c) => DelimiterCodec::new(c.config().clone()).map(AnyCodec::from),
            AnyCodec::Lines(c) => LinesCodec::new(c.config().clone()).map(AnyCodec::from),
            AnyCodec::Fixed(c) => FixedLengthCodec::new(c.config().clone()).map(AnyCodec::from),
            AnyCodec::Netstring(c) => NetstringCodec::new(c.config().clone()).map(AnyCodec::from),
            AnyCodec::Magic(c) => MagicCodec::new(c.config().clone()).map(AnyCodec::from),
        };
        Framing::from(codec.expect("a config taken from a built codec is valid"))
    }

    /// Recoverable errors that the tokio-util adapter decoded past (oldest first), leaving none.
    /// At most [`RecoveredErrors::KEPT`] are kept; [`recovered_error_count`](Self::recovered_error_count)
    /// counts them all.
    pub fn take_recovered_errors(&mut self) -> Vec<DecodeError> {
        std::mem::take(&mut self.recovered.kept)
    }

    /// How many recoverable errors the tokio-util adapter has decoded past on this stream.
    pub fn recovered_error_count(&self) -> u64 {
        self.recovered.count
    }

    /// Decodes, keeping recoverable errors aside instead of returning them: the behaviour of the
    /// tokio-util adapter.
    pub fn decode_past_recoverable(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
    ) -> Result<Option<Bytes>, DecodeError> {
        loop {
            match self.decode_with_eof(buf, eof) {
                Err(e) if e.is_recoverable() => self.recovered.push(e),
                other => return other,
            }
        }
    }
}

/// Recoverable errors kept by a [`Framing`] for its owner to read.
#[derive(Debug, Clone, Default)]
pub struct RecoveredErrors {
    kept: Vec<DecodeError>,
    count: u64,
}

impl RecoveredErrors {
    /// How many errors are kept before the oldest are dropped (the count goes on).
    pub const KEPT: usize = 64;

    fn push(&mut self, e: DecodeError) {
        if self.kept.len() == Self::KEPT {
            self.kept.remove(0);
        }
        self.kept.push(e);
        self.count += 1;
    }
}

impl FrameDecoder for Framing {
    #[inline]
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        dispatch!(self, c => c.decode(buf))
    }
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
        dispatch!(self, c => c.decode_eof(buf))
    }
    #[inline]
    fn decode_visit<R>(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        visit: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, DecodeError> {
        dispatch!(self, c => c.decode_visit(buf, eof, visit))
    }
    fn decode_visit_all(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        visit: impl FnMut(&[u8]),
    ) -> Result<(), DecodeError> {
        dispatch!(self, c => c.decode_visit_all(buf, eof, visit))
    }
    fn consumed(&self) -> u64 {
        dispatch_ref!(self, c => c.consumed())
    }
    fn pending_frame_length(&self, buf: &BytesMut) -> Option<u64> {
        dispatch_ref!(self, c => c.pending_frame_length(buf))
    }
}

impl FrameEncoder for Framing {
    #[inline]
    fn check_payload(&self, payload: &[u8]) -> Result<(), EncodeError> {
        dispatch_ref!(self, c => c.check_payload(payload))
    }
    #[inline]
    fn frame_parts(&self, payload: &[u8]) -> Result<FrameParts, EncodeError> {
        dispatch_ref!(self, c => c.frame_parts(payload))
    }
    #[inline]
    fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
        dispatch_ref!(self, c => c.encode(payload, dst))
    }
    fn encode_vectored(&self, payload: Bytes) -> Result<EncodedFrame, EncodeError> {
        dispatch_ref!(self, c => c.encode_vectored(payload))
    }
}

impl FromStr for Framing {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        spec::parse(s)
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&spec::render(self))
    }
}

impl From<AnyCodec> for Framing {
    fn from(codec: AnyCodec) -> Self {
        Framing {
            codec,
            recovered: RecoveredErrors::default(),
        }
    }
}

macro_rules! from_codec {
    ($($codec:ident => $variant:ident),*) => {$(
        impl From<$codec> for AnyCodec {
            fn from(c: $codec) -> Self {
                AnyCodec::$variant(c)
            }
        }
        impl From<$codec> for Framing {
            fn from(c: $codec) -> Self {
                Framing::from(AnyCodec::$variant(c))
            }
        }
    )*};
}
from_codec!(LengthFieldCodec => LengthField, VarintCodec => Varint, DelimiterCodec => Delimiter,
    LinesCodec => Lines, FixedLengthCodec => Fixed, NetstringCodec => Netstring, MagicCodec => Magic);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One spec per codec, with limits small enough for random payloads to cross them.
    const SPECS: &[&str] = &[
        "length:1",
        "length:2,le,offset=1,adjust=-3,max=300",
        "length:4,max=100",
        "length:3,adjust=5,max=1KiB",
        "varint,max=200",
        "lines,max=150",
        "lines,crlf,max=150",
        "delim:\"\\r\\n\"|00,max=250",
        "fixed:64",
        "netstring,max=120",
        "magic:cafe,len=1,crc=crc32",
        "magic:cafe,len=2,crc=crc32c,max=400",
    ];

    proptest! {
        /// `check_payload` answers exactly as `frame_parts` does, error values included.
        #[test]
        fn check_payload_agrees_with_frame_parts(
            spec in prop::sample::select(SPECS),
            payload in prop::collection::vec(
                prop_oneof![8 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(0u8)],
                0..600,
            ),
        ) {
            let framing: Framing = spec.parse().unwrap();
            let checked = framing.check_payload(&payload);
            let framed = framing.frame_parts(&payload).map(|_| ());
            prop_assert_eq!(format!("{checked:?}"), format!("{framed:?}"), "{}", spec);
        }
    }

    /// More specs for `decode_visit`: the ones it decodes on its own (length fields, lines)
    /// with every option that changes the frame it lends.
    const VISIT_SPECS: [&str; 5] = [
        "length:4,max=100,discard",
        "length:2,strip=0,max=300",
        "lines,keep,max=150",
        "lines,max=60,discard",
        "lines,keep,crlf,max=40,discard",
    ];

    /// Every event of a decode run, to the end of the stream: frames, and errors as text.
    /// `step` decodes from the buffer after each read, recording the frames it finds; `Ok(true)`
    /// asks to be called again, `Ok(false)` waits for the next read.
    fn decode_run(
        spec: &str,
        stream: &[u8],
        chunks: &[usize],
        mut step: impl FnMut(
            &mut Framing,
            &mut BytesMut,
            bool,
            &mut Vec<String>,
        ) -> Result<bool, DecodeError>,
    ) -> (Vec<String>, u64) {
        let mut framing: Framing = spec.parse().unwrap();
        let (mut buf, mut seen, mut at) = (BytesMut::new(), Vec::new(), 0);
        for &n in chunks.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at + n.min(stream.len() - at);
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            let eof = at == stream.len();
            loop {
                match step(&mut framing, &mut buf, eof, &mut seen) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        seen.push(format!("{e:?}"));
                        if !e.is_recoverable() {
                            return (seen, framing.consumed());
                        }
                    }
                }
            }
            if eof {
                break;
            }
        }
        (seen, framing.consumed())
    }

    proptest! {
        /// `decode_visit` sees exactly the frames and errors `decode_with_eof` returns, at the
        /// same stream offsets, over any split of any stream (valid frames and junk).
        #[test]
        fn decode_visit_agrees_with_decode(
            spec in prop::sample::select(
                [SPECS, &VISIT_SPECS[..]].concat(),
            ),
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..8),
            junk in prop::collection::vec(any::<u8>(), 0..12),
            junk_at in any::<prop::sample::Index>(),
            chunks in prop::collection::vec(1usize..64, 0..40),
        ) {
            let framing: Framing = spec.parse().unwrap();
            let mut stream = BytesMut::new();
            for p in &payloads {
                let _ = framing.encode(p, &mut stream); // payloads it cannot frame are left out
            }
            let at = junk_at.index(stream.len() + 1);
            let mut stream = stream.to_vec();
            stream.splice(at..at, junk);
            let record = |frame: &[u8], seen: &mut Vec<String>| seen.push(format!("{:?}", frame.to_vec()));
            let owned = decode_run(spec, &stream, &chunks, |f, b, eof, seen| {
                Ok(f.decode_with_eof(b, eof)?.map(|frame| record(&frame, seen)).is_some())
            });
            let visited = decode_run(spec, &stream, &chunks, |f, b, eof, seen| {
                Ok(f.decode_visit(b, eof, |frame| record(frame, seen))?.is_some())
            });
            let visited_all = decode_run(spec, &stream, &chunks, |f, b, eof, seen| {
                f.decode_visit_all(b, eof, |frame| record(frame, seen)).map(|()| false)
            });
            prop_assert_eq!(&owned, &visited, "{}", spec);
            prop_assert_eq!(owned, visited_all, "{}", spec);
        }
    }

    #[test]
    fn check_payload_finds_each_limit() {
        for (spec, ok, too_long) in [
            ("length:1", 255, 256),
            ("varint,max=200", 200, 201),
            ("fixed:64", 64, 65),
            ("netstring,max=120", 120, 121),
            ("magic:cafe,len=1,crc=crc32", 255, 256),
        ] {
            let framing: Framing = spec.parse().unwrap();
            assert!(framing.check_payload(&vec![b'a'; ok]).is_ok(), "{spec}");
            assert!(
                framing.check_payload(&vec![b'a'; too_long]).is_err(),
                "{spec}"
            );
        }
    }
}
