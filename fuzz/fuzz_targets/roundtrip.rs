//! Encode then decode: payloads taken from the input, made encodable for the chosen framing
//! (delimiters removed, sized for a fixed length, cut to the limit), encoded with `encode` (and
//! checked against `encode_vectored`), then decoded from reads of fuzzer-chosen sizes. The frames
//! must come back exactly, with no error, nothing left over, and `consumed()` = the wire length.
//!
//! Input: spec index, the chunk table, then payloads as `<length byte><bytes>`.
#![no_main]

use bytes::{Buf, Bytes, BytesMut};
use framelink_fuzz::{drive, Chunker, Input, Limits};
use framelink_proto::codec::{AnyCodec, EncodeError, FrameEncoder, Framing};
use libfuzzer_sys::fuzz_target;

/// Framings covered, with the longest payload each can carry (the length byte gives at most 255).
/// Each `max` is small so that payloads at the limit occur.
const SPECS: &[&str] = &[
    "length:4",
    "length:2,le,max=300",
    "length:1",
    "length:2,strip=0",
    "length:3,le,adjust=-3",
    "length:8,le,max=64KiB",
    "length:4,adjust=2,strip=4,max=100",
    "length:2,strip=1",
    "varint",
    "varint,max=200,lenient,discard",
    "line",
    "line,crlf",
    "line,keep",
    "line,keep,crlf,max=100",
    "delim:00",
    "delim:\"\\r\\n\"|00,keep",
    "delim:\"ab\"|\"b\"|\"cab\",max=64",
    "delim:\"\\n\"|\"\\r\\n\",keep,max=1KiB",
    "delim:\"xyzzy\",discard",
    "delim:\"\\r\"|\"\\r\\n\"",
    "delim:\"ab\"|\"abc\"|\"b\",keep",
    "delim:\"||\"|\";\",max=32",
    "fixed:1",
    "fixed:7",
    "fixed:300",
    "netstring",
    "netstring,max=100,discard",
    "magic:cafe",
    "magic:\"FL\",len=1,crc=crc32,le",
    "magic:7e,len=2,crc=none,max=100,fail",
    "magic:\"FLK1\",len=4,crc=crc32c,le,max=64KiB",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let spec = SPECS[usize::from(input.u8()) % SPECS.len()];
    let framing = Framing::parse(spec).expect("the specs above are valid");
    let mut chunker = Chunker::from_input(&mut input);

    let mut wire = BytesMut::new();
    let mut expected: Vec<Bytes> = Vec::new();
    while !input.is_empty() {
        let len = usize::from(input.u8());
        let payload = make_encodable(&framing, input.bytes(len));
        let start = wire.len();
        framing
            .encode(&payload, &mut wire)
            .unwrap_or_else(|e| panic!("{spec}: cannot encode {payload:02x?}: {e}"));
        let mut vectored = framing
            .encode_vectored(Bytes::from(payload.clone()))
            .expect("encode_vectored agrees with encode");
        let vectored = vectored.copy_to_bytes(vectored.remaining());
        assert_eq!(
            vectored,
            wire[start..],
            "{spec}: encode_vectored differs from encode"
        );
        expected.push(decoded_form(&framing, &payload, &wire[start..]));
    }

    let limits = Limits {
        buffered_after_none: usize::MAX,
        max_frame: usize::MAX,
    };
    let outcome = drive(framing.reset(), &wire, &mut chunker, &limits, |_| {});
    assert!(
        outcome.fatal.is_none() && outcome.recoverable.is_empty(),
        "{spec}: errors decoding what was encoded: {:?} {:?}",
        outcome.recoverable,
        outcome.fatal
    );
    assert_eq!(
        outcome.frames, expected,
        "{spec}: frames differ from the payloads"
    );
});

/// What the decoder should return for a frame: the payload, or for framings that keep their
/// framing bytes, more of the frame.
fn decoded_form(framing: &Framing, payload: &[u8], frame: &[u8]) -> Bytes {
    match framing.codec() {
        AnyCodec::LengthField(c) => Bytes::copy_from_slice(&frame[c.config().strip..]),
        AnyCodec::Lines(c) if !c.config().strip => Bytes::copy_from_slice(frame),
        AnyCodec::Delimiter(c) if !c.config().strip => Bytes::copy_from_slice(frame),
        _ => Bytes::copy_from_slice(payload),
    }
}

/// Cuts, pads or filters `raw` so that the framing can carry it unambiguously.
fn make_encodable(framing: &Framing, raw: &[u8]) -> Vec<u8> {
    let mut p = raw.to_vec();
    match framing.codec() {
        AnyCodec::LengthField(c) => {
            let c = c.config();
            // frame = width + payload <= max; field value = payload - adjustment must fit.
            let mut limit = c.max_frame_length - c.width;
            if c.width < 8 {
                let field_max = (1i128 << (8 * c.width)) - 1;
                limit = limit.min((field_max + i128::from(c.adjustment)) as usize);
            }
            p.truncate(limit);
            // A negative field value cannot be written: pad up to the adjustment.
            if c.adjustment > 0 && p.len() < c.adjustment as usize {
                p.resize(c.adjustment as usize, 0);
            }
            // The decoder strips `strip` bytes of the whole frame; nothing to fix.
        }
        AnyCodec::Varint(c) => p.truncate(c.config().max_frame_length),
        AnyCodec::Netstring(c) => p.truncate(c.config().max_frame_length),
        AnyCodec::Magic(c) => p.truncate(c.config().max_frame_length),
        AnyCodec::Fixed(c) => p.resize(c.config().length, 0xa5),
        AnyCodec::Lines(c) => {
            p.truncate(c.config().max_frame_length);
            drop_refused_bytes(framing, &mut p);
        }
        AnyCodec::Delimiter(c) => {
            p.truncate(c.config().max_frame_length);
            drop_refused_bytes(framing, &mut p);
        }
    }
    p
}

/// Removes the bytes the encoder points at (a delimiter, or the start of one that would run into
/// the appended delimiter or the previous frame's) until it accepts the payload. The encoder
/// promises that whatever it accepts decodes back unchanged, whatever follows.
fn drop_refused_bytes(framing: &Framing, p: &mut Vec<u8>) {
    for _ in 0..=p.len() {
        match framing.frame_parts(p) {
            Ok(_) => return,
            Err(EncodeError::ContainsDelimiter { position }) => {
                assert!(
                    position < p.len(),
                    "refused at {position}, past the payload {p:02x?}"
                );
                p.remove(position);
            }
            Err(e) => panic!("unexpected encode error for {p:02x?}: {e}"),
        }
    }
    panic!("the encoder still refuses the empty payload");
}
