//! `NetstringCodec` decoding arbitrary streams.
//!
//! Input: `flags` (oversize policy), `max` (2 bytes), the chunk table, then the stream.
#![no_main]

use framelink_fuzz::{decimal_digits, drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{NetstringCodec, NetstringConfig, OversizePolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let config = NetstringConfig {
        max_frame_length: usize::from(input.u16()),
        oversize: if flags & 1 != 0 {
            OversizePolicy::Discard
        } else {
            OversizePolicy::Fail
        },
    };
    let max = config.max_frame_length;
    let make = || NetstringCodec::new(config.clone()).expect("every netstring config is valid");
    let mut chunker = Chunker::from_input(&mut input);
    let stream = input.rest();
    let limits = Limits {
        // `<digits>:<payload>,` with at most max payload bytes, so at most digits(max) digits.
        buffered_after_none: decimal_digits(max) + 1 + max + 1,
        max_frame: max,
    };
    drive_and_compare(make, stream, &mut chunker, &limits, |_| {});
});
