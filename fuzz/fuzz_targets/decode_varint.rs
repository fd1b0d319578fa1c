//! `VarintCodec` decoding arbitrary streams.
//!
//! Input: `flags` (oversize policy, strict), `max` (2 bytes), the chunk table, then the stream.
#![no_main]

use framelink_fuzz::{drive_and_compare, Chunker, Input, Limits};
use framelink_proto::codec::{OversizePolicy, VarintCodec, VarintConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let config = VarintConfig {
        max_frame_length: usize::from(input.u16()),
        oversize: if flags & 1 != 0 {
            OversizePolicy::Discard
        } else {
            OversizePolicy::Fail
        },
        strict: flags & 2 == 0,
    };
    let max = config.max_frame_length;
    let make = || VarintCodec::new(config.clone()).expect("every varint config is valid");
    let mut chunker = Chunker::from_input(&mut input);
    let stream = input.rest();
    let limits = Limits {
        // A partial prefix (under 10 bytes), or a prefix and a partial payload of at most max.
        buffered_after_none: max + VarintCodec::MAX_PREFIX_LEN,
        max_frame: max,
    };
    drive_and_compare(make, stream, &mut chunker, &limits, |_| {});
});
