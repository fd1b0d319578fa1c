//! Writes a small seed corpus for every fuzz target into `fuzz/corpus/<target>/` (run from
//! `fuzz/`: `cargo run --example gen_corpus`). The seeds are well-formed inputs in each target's
//! input layout, so the fuzzer starts from valid frames instead of having to discover the formats.
//! Existing files are overwritten; other corpus files are left alone.

use std::fs;
use std::path::Path;

use framelink_proto::codec::Checksum;

/// Chunk table: 3 sizes (1, 5, 64).
const CHUNKS: &[u8] = &[2, 1, 5, 64];
/// Chunk table: one read of 4 KiB.
const ONE_READ: &[u8] = &[0, 240];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    let mut put = |target: &str, name: &str, bytes: Vec<u8>| {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        fs::write(dir.join(name), bytes).expect("write seed");
        written += 1;
    };
    let seed = |config: &[u8], chunks: &[u8], stream: &[u8]| -> Vec<u8> {
        [config, chunks, stream].concat()
    };

    // decode_length_field: flags, offset, adjustment, strip, max (LE u16), chunks, stream.
    let frames_2be: Vec<u8> = [
        &b"\x00\x05hello"[..],
        b"\x00\x00",
        b"\x00\x03abc",
        b"\xff\xff",
    ]
    .concat();
    put(
        "decode_length_field",
        "be2",
        seed(&[1, 0, 0, 0xff, 0x00, 0x04], CHUNKS, &frames_2be),
    );
    put(
        "decode_length_field",
        "be2_discard",
        seed(&[0x11, 0, 0, 0xff, 0x10, 0x00], CHUNKS, &frames_2be),
    );
    put(
        "decode_length_field",
        "le4",
        seed(
            &[0x0b, 0, 0, 0xff, 0, 1],
            ONE_READ,
            b"\x02\x00\x00\x00hi\x00\x00\x00\x00",
        ),
    );
    // Netty example: offset 1, width 2, adjustment -3, strip 3.
    put(
        "decode_length_field",
        "netty",
        seed(
            &[1, 1, 0xfd, 3, 0, 4],
            CHUNKS,
            b"\xca\x00\x10\xfeHELLO, WORLD",
        ),
    );

    // decode_varint: flags, max, chunks, stream.
    let varints: Vec<u8> = [&b"\x02hi"[..], b"\x00", b"\xac\x02", &[7; 300], b"\x80\x00"].concat();
    put(
        "decode_varint",
        "strict",
        seed(&[0, 0, 4], CHUNKS, &varints),
    );
    put(
        "decode_varint",
        "lenient_discard",
        seed(&[3, 0x40, 0], CHUNKS, &varints),
    );
    put(
        "decode_varint",
        "overflow",
        seed(&[0, 0xff, 0xff], ONE_READ, &[0xff; 12]),
    );

    // decode_lines: flags, max, chunks, stream.
    let lines = b"hello\r\nworld\n\nno end\r";
    put("decode_lines", "strip", seed(&[0, 16, 0], CHUNKS, lines));
    put(
        "decode_lines",
        "keep_discard",
        seed(&[3, 6, 0], CHUNKS, lines),
    );

    // decode_delimiter: flags (count << 2), per delimiter length + bytes, max, chunks, stream.
    put(
        "decode_delimiter",
        "crlf_nul",
        seed(
            &[2 << 2, 2, b'\r', b'\n', 1, 0, 32, 0],
            CHUNKS,
            b"ab\r\ncd\0\0ef\r",
        ),
    );
    put(
        "decode_delimiter",
        "overlap_keep",
        seed(
            &[(2 << 2) | 3, 2, b'a', b'b', 1, b'b', 4, 0],
            CHUNKS,
            b"xxabyyybzzzzzzab",
        ),
    );

    // decode_fixed: length, chunks, stream.
    put("decode_fixed", "len3", seed(&[3, 0], CHUNKS, b"abcdefgh"));

    // decode_netstring: flags, max, chunks, stream.
    let netstrings = b"5:hello,0:,12:hello world!,3:abc";
    put(
        "decode_netstring",
        "fail",
        seed(&[0, 16, 0], CHUNKS, netstrings),
    );
    put(
        "decode_netstring",
        "discard",
        seed(&[1, 4, 0], CHUNKS, netstrings),
    );
    put(
        "decode_netstring",
        "bad",
        seed(&[0, 0, 1], CHUNKS, b"05:hello,:x"),
    );

    // decode_magic: flags, magic length-1 (mod 4) + magic, max, chunks, stream.
    let magic_frame = |magic: &[u8], payload: &[u8], crc: Checksum| -> Vec<u8> {
        let mut f = magic.to_vec();
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        if let Some(sum) = crc.compute(payload) {
            f.extend_from_slice(&sum.to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    };
    let mut magic_stream = magic_frame(b"FL", b"one", Checksum::Crc32c);
    magic_stream.extend_from_slice(b"garbageF");
    magic_stream.extend(magic_frame(b"FL", b"two", Checksum::Crc32c));
    let mut bad = magic_frame(b"FL", b"three", Checksum::Crc32c);
    bad[9] ^= 0x40;
    magic_stream.extend(bad);
    magic_stream.extend(magic_frame(b"FL", b"four", Checksum::Crc32c));
    // width 2 (flags & 3 = 1), crc32c ((flags >> 3) & 3 = 2), resync.
    put(
        "decode_magic",
        "resync",
        seed(&[0x11, 1, b'F', b'L', 0, 1], CHUNKS, &magic_stream),
    );
    put(
        "decode_magic",
        "fail",
        seed(&[0x31, 1, b'F', b'L', 0, 1], CHUNKS, &magic_stream),
    );
    // Structured mode: frame, garbage, frame, flip, truncated frame.
    put(
        "decode_magic",
        "structured",
        seed(
            &[0x51, 1, 0xca, 0xfe, 0, 1],
            CHUNKS,
            b"\x00\x03abc\x01\x04xxxx\x00\x02hi\x02\x05\x00\x10\x03\x04data\x01",
        ),
    );

    // spec_parse: the documented examples.
    for (i, spec) in [
        "length:4",
        "length:2,le,offset=1,adjust=-3,strip=3,max=64KiB,discard",
        "len:8,oversize=discard,max=100",
        "varint,max=1MiB,lenient",
        "line,max=8KiB,keep,crlf",
        "delim:\"\\r\\n\"|00,max=1KiB",
        "delim:\"a,b|c\"|\"\\x00\\t\"|0a",
        "fixed:128",
        "netstring,max=4KiB,discard",
        "magic:cafe,len=2,crc=crc32",
        "magic:\"FL\",len=4,le,crc=none,max=8MiB,fail",
    ]
    .iter()
    .enumerate()
    {
        put("spec_parse", &format!("spec{i}"), spec.as_bytes().to_vec());
    }

    // roundtrip: every spec index with a few payloads.
    let payloads: Vec<u8> = [
        &b"\x05hello"[..],
        b"\x00",
        b"\x03a\nb",
        b"\x04\r\n\x00c",
        b"\x0cHELLO, WORLD",
    ]
    .concat();
    for spec in 0..31u8 {
        put(
            "roundtrip",
            &format!("spec{spec}"),
            seed(&[spec], CHUNKS, &payloads),
        );
    }

    println!("wrote {written} seeds under {}", root.display());
}
