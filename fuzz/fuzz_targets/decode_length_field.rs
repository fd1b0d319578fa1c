//! `LengthFieldCodec` decoding arbitrary streams under arbitrary (valid) configurations.
//!
//! Input: `flags` (width, byte order, oversize policy, adjustment range), `offset`, `adjustment`,
//! `strip`, `max` (2 bytes), the chunk table, then the stream.
#![no_main]

use framelink_fuzz::{drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{
    ByteOrder, FrameDecoder, LengthFieldCodec, LengthFieldConfig, OversizePolicy,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let width = [1, 2, 3, 4, 8][usize::from(flags & 0x07) % 5];
    let order = if flags & 0x08 != 0 {
        ByteOrder::LittleEndian
    } else {
        ByteOrder::BigEndian
    };
    let oversize = if flags & 0x10 != 0 {
        OversizePolicy::Discard
    } else {
        OversizePolicy::Fail
    };
    let offset = match input.u8() {
        // Offsets near usize::MAX: the config must be rejected, without overflowing.
        b @ 0xf0.. => usize::MAX - usize::from(b - 0xf0),
        b => usize::from(b % 5),
    };
    let adj = input.u8();
    let adjustment = match flags >> 5 {
        0..=5 => i64::from(adj as i8),
        6 => i64::MAX - i64::from(adj),
        _ => i64::MIN + i64::from(adj),
    };
    let Some(header) = offset.checked_add(width).filter(|&h| h <= 64) else {
        let config = LengthFieldConfig {
            offset,
            width,
            max_frame_length: 65536,
            ..LengthFieldConfig::new(width)
        };
        assert!(
            LengthFieldCodec::new(config.clone()).is_err(),
            "a header longer than the limit was accepted: {config:?}"
        );
        return;
    };
    let strip = match input.u8() {
        0xff => header, // the usual configuration: strip the whole header
        b => usize::from(b) % (header + 5),
    };
    // Small limits (at most 64 KiB) so that the oversize paths are reached.
    let max = header + usize::from(input.u16()) % (65536 - header + 1);
    let config = LengthFieldConfig {
        offset,
        width,
        order,
        adjustment,
        strip,
        max_frame_length: max,
        oversize,
    };
    let make = || LengthFieldCodec::new(config.clone()).expect("valid by construction");
    let mut chunker = Chunker::from_input(&mut input);
    let stream = input.rest();
    let limits = Limits {
        // A partial header, or a partial frame whose declared length is at most max.
        buffered_after_none: max,
        // The whole frame is at most max; `strip` bytes of it are not returned.
        max_frame: max.saturating_sub(strip),
    };
    let codec = make();
    assert!(codec.pending_frame_length(&Default::default()).is_none());
    drive_and_compare(make, stream, &mut chunker, &limits, |_| {});
});
