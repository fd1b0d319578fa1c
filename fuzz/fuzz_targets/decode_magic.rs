//! `MagicCodec` decoding arbitrary streams, with resynchronisation.
//!
//! Input: `flags` (length width, byte order, checksum, resync policy, structured mode), magic
//! length and bytes, `max` (2 bytes), the chunk table, then the stream. In structured mode the
//! stream is built from operations (valid frame, garbage, bit flip, truncated frame) so that valid
//! checksummed frames and corruption mix, which random bytes almost never give.
#![no_main]

use bytes::BytesMut;
use framelink_fuzz::{drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{
    ByteOrder, Checksum, FrameEncoder, MagicCodec, MagicConfig, ResyncPolicy,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let length_width = [1, 2, 4, 3][usize::from(flags & 3)]; // 3 exercises validation
    let order = if flags & 4 != 0 {
        ByteOrder::LittleEndian
    } else {
        ByteOrder::BigEndian
    };
    let checksum =
        [Checksum::None, Checksum::Crc32, Checksum::Crc32c][usize::from((flags >> 3) & 3) % 3];
    let resync = if flags & 0x20 != 0 {
        ResyncPolicy::Fail
    } else {
        ResyncPolicy::Resync
    };
    let structured = flags & 0x40 != 0;
    let magic_len = match input.u8() {
        0xff => 0,  // invalid
        0xfe => 17, // invalid
        b => usize::from(b % 4) + 1,
    };
    let magic = input.bytes(magic_len).to_vec();
    let config = MagicConfig {
        magic,
        length_width,
        order,
        checksum,
        max_frame_length: usize::from(input.u16()),
        resync,
    };
    let Ok(encoder) = MagicCodec::new(config.clone()) else {
        assert!(
            length_width == 3 || config.magic.is_empty() || config.magic.len() > 16,
            "valid magic config rejected: {config:?}"
        );
        return;
    };
    let max = config.max_frame_length;
    let header = config.header_length();
    let make = || MagicCodec::new(config.clone()).expect("accepted above");
    let mut chunker = Chunker::from_input(&mut input);
    let built;
    let stream = if structured {
        built = build_stream(&encoder, input, max);
        &built[..]
    } else {
        input.rest()
    };
    let limits = Limits {
        // A partial frame: header plus at most max payload bytes (while resynchronising, less
        // than one magic).
        buffered_after_none: header + max,
        max_frame: max,
    };
    drive_and_compare(make, stream, &mut chunker, &limits, |_| {});
});

/// Builds a stream of valid frames, garbage and corruption from the rest of the input.
fn build_stream(encoder: &MagicCodec, mut input: Input<'_>, max: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    while !input.is_empty() {
        let op = input.u8();
        match op % 4 {
            0 | 3 => {
                let len = usize::from(input.u8()).min(max);
                let payload = input.bytes(len);
                let start = out.len();
                encoder
                    .encode(payload, &mut out)
                    .expect("payload within the limit and the field width");
                if op % 4 == 3 {
                    // A frame cut short (the sender died mid-frame, or bytes were lost).
                    let cut = usize::from(input.u8()) % (out.len() - start);
                    out.truncate(out.len() - cut - 1);
                }
            }
            1 => {
                let len = usize::from(input.u8() % 32);
                out.extend_from_slice(input.bytes(len));
            }
            _ => {
                let at = usize::from(input.u16());
                let mask = input.u8() | 1;
                if !out.is_empty() {
                    let at = at % out.len();
                    out[at] ^= mask;
                }
            }
        }
    }
    out.to_vec()
}
