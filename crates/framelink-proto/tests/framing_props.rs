//! Property tests over every framing through the `Framing` type: for random payloads cut into
//! random reads (1 byte at a time, all at once, random sizes), decoding returns exactly what was
//! encoded; for random hostile bytes, decoding never panics, `consumed` stays exact and the
//! buffer never holds more than the limit allows.

use bytes::BytesMut;
use framelink_proto::codec::{AnyCodec, FrameDecoder, FrameEncoder, Framing, MAX_FRAME_OVERHEAD};
use proptest::prelude::*;

/// One spec per framing kind and the interesting option combinations, with small limits so that
/// random inputs reach them.
const SPECS: &[&str] = &[
    "length:1,max=255",
    "length:2,le,max=4KiB",
    "length:3,adjust=-3,strip=3,max=4KiB",
    "length:4,max=4KiB,discard",
    "length:8,le,max=4KiB",
    "varint,max=4KiB",
    "varint,max=4KiB,discard,lenient",
    "line,max=4KiB",
    "line,max=4KiB,crlf,discard",
    "delim:00,max=4KiB",
    "delim:\"\\r\\n\"|\"END\"|00,max=4KiB,discard",
    "fixed:7",
    "netstring,max=4KiB",
    "netstring,max=4KiB,discard",
    "magic:cafe,len=2,crc=crc32c,max=4KiB",
    "magic:\"FL1\",len=4,le,crc=crc32,max=4KiB,fail",
    "magic:a5,len=1,crc=none,max=255",
];

fn max_frame(framing: &Framing) -> usize {
    match framing.codec() {
        AnyCodec::LengthField(c) => c.config().max_frame_length,
        AnyCodec::Varint(c) => c.config().max_frame_length,
        AnyCodec::Delimiter(c) => c.config().max_frame_length,
        AnyCodec::Lines(c) => c.config().max_frame_length,
        AnyCodec::Fixed(c) => c.config().length,
        AnyCodec::Netstring(c) => c.config().max_frame_length,
        AnyCodec::Magic(c) => c.config().max_frame_length,
    }
}

/// Makes `raw` encodable by `framing`: fixed size, no delimiter bytes, within the limit.
fn fit(framing: &Framing, raw: &[u8]) -> Vec<u8> {
    let max_payload = max_frame(framing).saturating_sub(MAX_FRAME_OVERHEAD);
    match framing.codec() {
        AnyCodec::Fixed(c) => {
            let n = c.config().length;
            raw.iter()
                .copied()
                .cycle()
                .take(n)
                .chain(std::iter::repeat(0))
                .take(n)
                .collect()
        }
        AnyCodec::Lines(_) | AnyCodec::Delimiter(_) => raw
            .iter()
            .take(max_payload)
            .map(|b| b'a' + b % 26)
            .collect(),
        _ => raw.iter().take(max_payload).copied().collect(),
    }
}

/// How the stream is cut into reads.
#[derive(Debug, Clone)]
enum Chunking {
    OneByte,
    AllAtOnce,
    Random(Vec<usize>),
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![
        Just(Chunking::OneByte),
        Just(Chunking::AllAtOnce),
        prop::collection::vec(1usize..600, 1..40).prop_map(Chunking::Random),
    ]
}

fn pieces<'a>(wire: &'a [u8], chunking: &Chunking) -> Vec<&'a [u8]> {
    match chunking {
        Chunking::OneByte => wire.chunks(1).collect(),
        Chunking::AllAtOnce => vec![wire],
        Chunking::Random(sizes) => {
            let mut out = Vec::new();
            let mut rest = wire;
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                out.push(&rest[..n]);
                rest = &rest[n..];
                i += 1;
            }
            out
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn decode_of_encode_is_identity_for_every_framing_and_split(
        spec_index in 0..SPECS.len(),
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 0..24),
        chunks in chunking(),
    ) {
        let spec = SPECS[spec_index];
        let mut framing: Framing = spec.parse().unwrap();
        let payloads: Vec<Vec<u8>> = raw.iter().map(|r| fit(&framing, r)).collect();
        let mut wire = BytesMut::new();
        for p in &payloads {
            framing.encode(p, &mut wire).unwrap();
        }
        let bound = max_frame(&framing) + MAX_FRAME_OVERHEAD;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces(&wire, &chunks) {
            buf.extend_from_slice(piece);
            while let Some(frame) = framing.decode(&mut buf).unwrap() {
                out.push(frame.to_vec());
            }
            prop_assert!(buf.len() <= bound, "{}: {} bytes buffered, bound {}", spec, buf.len(), bound);
        }
        prop_assert_eq!(framing.decode_eof(&mut buf).unwrap(), None);
        prop_assert_eq!(&out, &payloads, "{}", spec);
        prop_assert_eq!(framing.consumed(), wire.len() as u64);
    }

    #[test]
    fn hostile_bytes_never_panic_and_stay_bounded(
        spec_index in 0..SPECS.len(),
        noise in prop::collection::vec(any::<u8>(), 0..6000),
        chunks in chunking(),
    ) {
        let spec = SPECS[spec_index];
        let mut framing: Framing = spec.parse().unwrap();
        let bound = max_frame(&framing) + MAX_FRAME_OVERHEAD;
        let mut buf = BytesMut::new();
        let mut fed = 0u64;
        'feed: for piece in pieces(&noise, &chunks) {
            buf.extend_from_slice(piece);
            fed += piece.len() as u64;
            loop {
                let before = framing.consumed();
                match framing.decode(&mut buf) {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= max_frame(&framing)),
                    Ok(None) => break,
                    Err(e) if e.is_recoverable() => {}
                    Err(_) => break 'feed,
                }
                prop_assert!(framing.consumed() >= before);
            }
            prop_assert!(buf.len() <= bound, "{}: {} bytes buffered, bound {}", spec, buf.len(), bound);
            prop_assert_eq!(framing.consumed() + buf.len() as u64, fed);
        }
    }
}
