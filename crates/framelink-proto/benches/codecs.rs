//! Codec benchmarks: framelink against tokio-util, in the same run and on the same input.
//!
//! Run (all groups, default criterion timing: about 20 minutes on an idle 2-core machine):
//!
//! ```text
//! cargo bench -p framelink-proto --features tokio-codec --bench codecs
//! cargo bench -p framelink-proto --features tokio-codec --bench codecs -- decode_length   # one family
//! cargo bench -p framelink-proto --features tokio-codec --bench codecs -- /frames         # half the time
//! python3 crates/framelink-proto/benches/summarize.py                                   # Markdown tables
//! ```
//!
//! With `/frames` only, `summarize.py` derives GB/s from frames/s x payload size (payload bytes).
//!
//! # Groups
//!
//! Every comparison exists twice, with the same routine: `<family>/frames` reports
//! `Throughput::Elements` (frames per second) and `<family>/bytes` reports `Throughput::Bytes`
//! (wire bytes per second: payloads plus headers or delimiters, i.e. what crosses the socket).
//! Benchmark ids are `<implementation>/<payload size in bytes>`.
//!
//! - `decode_length_prefixed`: 4-byte big-endian length prefix, stripped. framelink
//!   `LengthFieldCodec` (`LengthFieldConfig::new(4)`) vs `tokio_util::codec::LengthDelimitedCodec`
//!   (default builder), both with an 8 MiB limit.
//! - `encode_length_prefixed`: the same frames encoded into one `BytesMut` (cleared per batch, its
//!   capacity kept). Ids: `framelink` = `FrameEncoder::encode` (copies the payload);
//!   `framelink-vectored` = `FrameEncoder::encode_vectored`, which only builds the header and keeps a
//!   reference to the payload: it measures *building* the frame for a `writev`, not writing it, so
//!   it is not comparable byte for byte with the copying encoders; `tokio-util` =
//!   `Encoder<Bytes>` (the item type of `Framed<_, LengthDelimitedCodec>`; the payload `Bytes` is
//!   cloned, one atomic increment and decrement, as for `framelink-vectored`); `tokio-util-slice` =
//!   `Encoder<&[u8]>`, the like-for-like counterpart of `framelink`.
//! - `decode_lines`: `\n`-terminated ASCII lines. framelink `LinesCodec` vs
//!   `tokio_util::codec::LinesCodec` (returns a `String`: it validates UTF-8 and copies every line,
//!   where framelink returns a zero-copy `Bytes`) and `tokio_util::codec::AnyDelimiterCodec` with
//!   `\n` (`tokio-util-any-delimiter`, returns zero-copy `Bytes` but scans byte by byte). Limits
//!   128 KiB for all.
//! - `encode_lines`: framelink `LinesCodec` `encode` vs tokio-util `LinesCodec` and
//!   `AnyDelimiterCodec` (`\n`), both `Encoder<&str>`, all on the same input (`texts`). framelink
//!   refuses a payload holding `\n` (or ending in `\r`); neither tokio-util encoder checks.
//! - `decode_other/frames`, `encode_other/frames`: framelink's other codecs at 256-byte payloads
//!   (no competitor), with the length-field and lines codecs as reference points.
//!
//! # Harness
//!
//! Payload sizes are 16 B, 256 B, 4 KiB and 64 KiB; each stream holds `max(1 MiB / size, 64)`
//! frames (1 MiB of payload, 4 MiB for 64 KiB frames) of seeded random bytes (printable ASCII for
//! text framings). Streams are built by hand from the wire format, not by either library.
//!
//! Decoding feeds the pre-encoded stream into a fresh `BytesMut` in 64 KiB "reads"
//! (`extend_from_slice`, as a socket read would append), and after each read decodes every complete
//! frame and drops it through `black_box`. Both implementations get exactly the same buffer
//! handling; differences in how a decoder reserves buffer space for a partial frame are part of
//! what is measured. Before timing, each benchmark checks once that its implementation yields
//! exactly the reference payloads (so all implementations agree on frame count and bytes), and each
//! encoder that its output is exactly the reference stream.

use std::fmt::Debug;
use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use framelink_proto::codec::{
    DelimiterCodec, DelimiterConfig, FixedLengthCodec, FixedLengthConfig, FrameDecoder,
    FrameEncoder, LengthFieldCodec, LengthFieldConfig, LinesCodec, LinesConfig, MagicCodec,
    MagicConfig, NetstringCodec, VarintCodec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::codec::{AnyDelimiterCodec, Decoder, Encoder, LengthDelimitedCodec};

/// Payload sizes of the comparison groups.
const SIZES: [usize; 4] = [16, 256, 4 * 1024, 64 * 1024];
/// Size of one simulated socket read.
const READ_SIZE: usize = 64 * 1024;
/// Payload bytes per stream (at least `MIN_FRAMES` frames).
const STREAM_PAYLOAD: usize = 1024 * 1024;
/// Minimum frames per stream, so that 64 KiB frames straddle several reads.
const MIN_FRAMES: usize = 64;
/// Frame limit of the length-prefixed codecs.
const MAX_LENGTH_PREFIXED: usize = 8 * 1024 * 1024;
/// Line limit of the line codecs (above the largest line).
const MAX_LINE: usize = 128 * 1024;
/// Payload size of the `*_other` groups.
const OTHER_SIZE: usize = 256;

// ---------------------------------------------------------------------------------------------
// Workloads

/// The frames of one benchmark and their wire encoding.
struct Workload {
    /// Payload size in bytes.
    size: usize,
    /// The payloads, slices of one shared buffer (cloning one is a reference-count increment).
    payloads: Vec<Bytes>,
    /// The payloads as text (text workloads only), for `Encoder<&str>`.
    texts: Vec<String>,
    /// Every frame encoded, back to back.
    stream: Vec<u8>,
}

impl Workload {
    /// `frame_count(size)` payloads of `size` bytes, random bytes or printable ASCII, framed by
    /// `frame` (which appends one frame to the stream).
    fn new(size: usize, ascii: bool, frame: impl Fn(&[u8], &mut Vec<u8>)) -> Self {
        let count = frame_count(size);
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + size as u64);
        let mut all = vec![0u8; size * count];
        if ascii {
            all.iter_mut().for_each(|b| *b = rng.gen_range(b' '..=b'~'));
        } else {
            rng.fill(&mut all[..]);
        }
        let all = Bytes::from(all);
        let payloads: Vec<Bytes> = (0..count)
            .map(|i| all.slice(i * size..(i + 1) * size))
            .collect();
        let texts = if ascii {
            payloads
                .iter()
                .map(|p| String::from_utf8(p.to_vec()).expect("ASCII payload"))
                .collect()
        } else {
            Vec::new()
        };
        let mut stream = Vec::with_capacity(count * (size + 16));
        for p in &payloads {
            frame(p, &mut stream);
        }
        Workload {
            size,
            payloads,
            texts,
            stream,
        }
    }

    /// 4-byte big-endian length prefix, binary payloads.
    fn length_prefixed(size: usize) -> Self {
        Self::new(size, false, |p, out| {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        })
    }

    /// `\n`-terminated ASCII lines.
    fn lines(size: usize) -> Self {
        Self::new(size, true, |p, out| {
            out.extend_from_slice(p);
            out.push(b'\n');
        })
    }

    fn frames(&self) -> u64 {
        self.payloads.len() as u64
    }

    fn throughput(&self, unit: Unit) -> Throughput {
        match unit {
            Unit::Frames => Throughput::Elements(self.frames()),
            Unit::Bytes => Throughput::Bytes(self.stream.len() as u64),
        }
    }
}

fn frame_count(size: usize) -> usize {
    (STREAM_PAYLOAD / size).max(MIN_FRAMES)
}

/// The two reporting units of each comparison: one criterion group each.
#[derive(Clone, Copy)]
enum Unit {
    Frames,
    Bytes,
}

impl Unit {
    const ALL: [Unit; 2] = [Unit::Frames, Unit::Bytes];

    fn group(self, family: &str) -> String {
        match self {
            Unit::Frames => format!("{family}/frames"),
            Unit::Bytes => format!("{family}/bytes"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding harness

/// A decoder under test, driven identically whichever library it comes from.
trait BenchDecoder {
    /// What the decoder returns for one frame.
    type Frame: AsRef<[u8]>;
    /// The next complete frame, `None` when more bytes are needed. Panics on a decode error.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<Self::Frame>;
}

/// A framelink codec through its native [`FrameDecoder`] API.
struct Framelink<D>(D);

impl<D: FrameDecoder> BenchDecoder for Framelink<D> {
    type Frame = Bytes;
    #[inline]
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<Bytes> {
        self.0.decode(buf).expect("framelink decode error")
    }
}

/// A tokio-util codec through its [`Decoder`] API.
struct TokioUtil<D>(D);

impl<D> BenchDecoder for TokioUtil<D>
where
    D: Decoder,
    D::Item: AsRef<[u8]>,
    D::Error: Debug,
{
    type Frame = D::Item;
    #[inline]
    fn next_frame(&mut self, buf: &mut BytesMut) -> Option<D::Item> {
        self.0.decode(buf).expect("tokio-util decode error")
    }
}

/// Feeds `stream` to `decoder` in `READ_SIZE` reads, calling `on_frame` for every frame in order.
#[inline]
fn feed<D: BenchDecoder>(decoder: &mut D, stream: &[u8], mut on_frame: impl FnMut(D::Frame)) {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    for read in stream.chunks(READ_SIZE) {
        buf.extend_from_slice(read);
        while let Some(frame) = decoder.next_frame(&mut buf) {
            on_frame(frame);
        }
    }
    assert!(buf.is_empty(), "bytes left after the last frame");
}

/// The timed routine: decodes the whole stream, drops every frame, returns the frame count.
fn decode_stream<D: BenchDecoder>(decoder: &mut D, stream: &[u8]) -> usize {
    let mut frames = 0;
    feed(decoder, stream, |frame| {
        black_box(frame);
        frames += 1;
    });
    frames
}

/// Checks, once and outside the timing loop, that `decoder` yields exactly the workload's payloads
/// through the same harness: same frame count and same bytes for every implementation.
fn verify_decoder<D: BenchDecoder>(name: &str, decoder: &mut D, w: &Workload) {
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(w.payloads.len());
    feed(decoder, &w.stream, |frame| {
        frames.push(frame.as_ref().to_vec())
    });
    assert_eq!(
        frames.len(),
        w.payloads.len(),
        "{name}/{}: wrong frame count",
        w.size
    );
    for (i, (got, want)) in frames.iter().zip(&w.payloads).enumerate() {
        assert!(got == want, "{name}/{}: frame {i} differs", w.size);
    }
}

/// Benchmarks one decoder on one workload. The decoder is built lazily, when criterion's filter
/// selects the benchmark, and verified before its first measurement.
fn bench_decoder<D: BenchDecoder>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    w: &Workload,
    make: impl Fn() -> D,
) {
    let mut state: Option<D> = None;
    g.bench_with_input(BenchmarkId::new(name, w.size), w, |b, w| {
        let decoder = state.get_or_insert_with(|| {
            let mut fresh = make();
            verify_decoder(name, &mut fresh, w);
            make()
        });
        b.iter(|| decode_stream(decoder, black_box(&w.stream)));
    });
}

// ---------------------------------------------------------------------------------------------
// Encoding harness

/// Benchmarks one encoder: `encode_all` appends every frame of the workload to `dst`, which is
/// cleared (capacity kept) before each batch. When `verify` is set, the output of one batch must be
/// exactly the reference stream.
fn bench_encoder(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    w: &Workload,
    verify: bool,
    mut encode_all: impl FnMut(&Workload, &mut BytesMut),
) {
    let mut dst = BytesMut::new();
    let mut verified = !verify;
    g.bench_with_input(BenchmarkId::new(name, w.size), w, |b, w| {
        if !verified {
            let mut out = BytesMut::new();
            encode_all(w, &mut out);
            assert!(out[..] == w.stream[..], "{name}/{}: wrong encoding", w.size);
            verified = true;
        }
        dst.reserve(w.stream.len());
        b.iter(|| {
            dst.clear();
            encode_all(black_box(w), &mut dst);
            black_box(&dst);
        });
    });
}

/// Checks `encode_vectored` once: header, payload and trailer chunks joined must be the reference
/// stream.
fn verify_vectored<E: FrameEncoder>(codec: &E, w: &Workload) {
    let mut out = BytesMut::new();
    for p in &w.payloads {
        out.put(codec.encode_vectored(p.clone()).expect("encode_vectored"));
    }
    assert!(
        out[..] == w.stream[..],
        "framelink-vectored/{}: wrong encoding",
        w.size
    );
}

// ---------------------------------------------------------------------------------------------
// Codec constructors

fn length_field() -> LengthFieldCodec {
    LengthFieldCodec::new(LengthFieldConfig {
        max_frame_length: MAX_LENGTH_PREFIXED,
        ..LengthFieldConfig::new(4)
    })
    .expect("length field config")
}

fn length_delimited() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_LENGTH_PREFIXED)
        .new_codec()
}

fn lines() -> LinesCodec {
    LinesCodec::new(LinesConfig {
        max_frame_length: MAX_LINE,
        ..Default::default()
    })
    .expect("lines config")
}

fn tokio_lines() -> tokio_util::codec::LinesCodec {
    tokio_util::codec::LinesCodec::new_with_max_length(MAX_LINE)
}

fn tokio_any_delimiter() -> AnyDelimiterCodec {
    AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), MAX_LINE)
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

fn decode_length_prefixed(c: &mut Criterion) {
    let workloads: Vec<Workload> = SIZES
        .iter()
        .map(|&s| Workload::length_prefixed(s))
        .collect();
    for unit in Unit::ALL {
        let mut g = c.benchmark_group(unit.group("decode_length_prefixed"));
        for w in &workloads {
            g.throughput(w.throughput(unit));
            bench_decoder(&mut g, "framelink", w, || Framelink(length_field()));
            bench_decoder(&mut g, "tokio-util", w, || TokioUtil(length_delimited()));
        }
        g.finish();
    }
}

fn encode_length_prefixed(c: &mut Criterion) {
    let workloads: Vec<Workload> = SIZES
        .iter()
        .map(|&s| Workload::length_prefixed(s))
        .collect();
    for unit in Unit::ALL {
        let mut g = c.benchmark_group(unit.group("encode_length_prefixed"));
        for w in &workloads {
            g.throughput(w.throughput(unit));

            let codec = length_field();
            bench_encoder(&mut g, "framelink", w, true, |w, dst| {
                for p in &w.payloads {
                    codec.encode(p, dst).expect("encode");
                }
            });

            // Builds each frame (header + reference to the payload) and drops it: no bytes are
            // copied or written, so `dst` stays empty.
            let codec = length_field();
            let mut verified = false;
            bench_encoder(&mut g, "framelink-vectored", w, false, |w, _dst| {
                if !verified {
                    verify_vectored(&codec, w);
                    verified = true;
                }
                for p in &w.payloads {
                    black_box(codec.encode_vectored(p.clone()).expect("encode_vectored"));
                }
            });

            let mut codec = length_delimited();
            bench_encoder(&mut g, "tokio-util", w, true, |w, dst| {
                for p in &w.payloads {
                    Encoder::<Bytes>::encode(&mut codec, p.clone(), dst).expect("encode");
                }
            });

            let mut codec = length_delimited();
            bench_encoder(&mut g, "tokio-util-slice", w, true, |w, dst| {
                for p in &w.payloads {
                    Encoder::<&[u8]>::encode(&mut codec, p, dst).expect("encode");
                }
            });
        }
        g.finish();
    }
}

fn decode_lines(c: &mut Criterion) {
    let workloads: Vec<Workload> = SIZES.iter().map(|&s| Workload::lines(s)).collect();
    for unit in Unit::ALL {
        let mut g = c.benchmark_group(unit.group("decode_lines"));
        for w in &workloads {
            g.throughput(w.throughput(unit));
            bench_decoder(&mut g, "framelink", w, || Framelink(lines()));
            bench_decoder(&mut g, "tokio-util", w, || TokioUtil(tokio_lines()));
            bench_decoder(&mut g, "tokio-util-any-delimiter", w, || {
                TokioUtil(tokio_any_delimiter())
            });
        }
        g.finish();
    }
}

fn encode_lines(c: &mut Criterion) {
    let workloads: Vec<Workload> = SIZES.iter().map(|&s| Workload::lines(s)).collect();
    for unit in Unit::ALL {
        let mut g = c.benchmark_group(unit.group("encode_lines"));
        for w in &workloads {
            g.throughput(w.throughput(unit));

            // All three read the same `texts` (framelink as bytes), so the input memory is the same.
            let codec = lines();
            bench_encoder(&mut g, "framelink", w, true, |w, dst| {
                for t in &w.texts {
                    codec.encode(t.as_bytes(), dst).expect("encode");
                }
            });

            let mut codec = tokio_lines();
            bench_encoder(&mut g, "tokio-util", w, true, |w, dst| {
                for t in &w.texts {
                    Encoder::<&str>::encode(&mut codec, t.as_str(), dst).expect("encode");
                }
            });

            let mut codec = tokio_any_delimiter();
            bench_encoder(&mut g, "tokio-util-any-delimiter", w, true, |w, dst| {
                for t in &w.texts {
                    Encoder::<&str>::encode(&mut codec, t.as_str(), dst).expect("encode");
                }
            });
        }
        g.finish();
    }
}

/// Encodes every payload with a framelink codec.
fn framelink_stream<E: FrameEncoder>(codec: &E, w: &Workload) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in &w.payloads {
        codec.encode(p, &mut out).expect("encode");
    }
    out.to_vec()
}

/// Decode benchmark of a framelink codec without competitor. The stream is encoded by the codec
/// itself, on first use (so that a codec being rewritten cannot break the other groups), and
/// decoding it must give back the payloads.
fn other_decode<C: FrameDecoder + FrameEncoder>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    ascii: bool,
    make: fn() -> C,
) {
    let mut w = Workload::new(OTHER_SIZE, ascii, |_, _| {});
    let mut decoder: Option<Framelink<C>> = None;
    g.throughput(Throughput::Elements(w.frames()));
    g.bench_function(BenchmarkId::new(name, OTHER_SIZE), |b| {
        let decoder = decoder.get_or_insert_with(|| {
            w.stream = framelink_stream(&make(), &w);
            verify_decoder(name, &mut Framelink(make()), &w);
            Framelink(make())
        });
        b.iter(|| decode_stream(decoder, black_box(&w.stream)));
    });
}

/// Encode benchmark of a framelink codec without competitor; its output must decode back to the
/// payloads.
fn other_encode<C: FrameDecoder + FrameEncoder>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    ascii: bool,
    make: fn() -> C,
) {
    let w = Workload::new(OTHER_SIZE, ascii, |_, _| {});
    let codec = make();
    let mut verified = false;
    g.throughput(Throughput::Elements(w.frames()));
    bench_encoder(g, name, &w, false, |w, dst| {
        if !verified {
            let checked = Workload {
                size: w.size,
                payloads: w.payloads.clone(),
                texts: Vec::new(),
                stream: framelink_stream(&codec, w),
            };
            verify_decoder(name, &mut Framelink(make()), &checked);
            verified = true;
        }
        for p in &w.payloads {
            codec.encode(p, dst).expect("encode");
        }
    });
}

fn varint() -> VarintCodec {
    VarintCodec::default()
}

fn netstring() -> NetstringCodec {
    NetstringCodec::default()
}

fn magic_crc32c() -> MagicCodec {
    MagicCodec::new(MagicConfig::new(b"\xca\xfe".to_vec())).expect("magic config")
}

fn delimiter_nul() -> DelimiterCodec {
    DelimiterCodec::new(DelimiterConfig::new(vec![vec![0]])).expect("delimiter config")
}

fn fixed() -> FixedLengthCodec {
    FixedLengthCodec::new(FixedLengthConfig { length: OTHER_SIZE }).expect("fixed config")
}

/// framelink's other codecs at 256 B payloads, with the length-field and lines codecs as reference
/// points. Frames per second only: at one payload size, payload bytes per second is frames per
/// second times 256 (`summarize.py` derives it).
fn other_codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_other/frames");
    other_decode(&mut g, "length-field", false, length_field);
    other_decode(&mut g, "lines", true, lines);
    other_decode(&mut g, "varint", false, varint);
    other_decode(&mut g, "netstring", false, netstring);
    other_decode(&mut g, "magic-crc32c", false, magic_crc32c);
    other_decode(&mut g, "delimiter-nul", true, delimiter_nul);
    other_decode(&mut g, "fixed", false, fixed);
    g.finish();

    let mut g = c.benchmark_group("encode_other/frames");
    other_encode(&mut g, "length-field", false, length_field);
    other_encode(&mut g, "lines", true, lines);
    other_encode(&mut g, "varint", false, varint);
    other_encode(&mut g, "netstring", false, netstring);
    other_encode(&mut g, "magic-crc32c", false, magic_crc32c);
    other_encode(&mut g, "delimiter-nul", true, delimiter_nul);
    other_encode(&mut g, "fixed", false, fixed);
    g.finish();
}

criterion_group!(
    benches,
    decode_length_prefixed,
    encode_length_prefixed,
    decode_lines,
    encode_lines,
    other_codecs
);
criterion_main!(benches);
