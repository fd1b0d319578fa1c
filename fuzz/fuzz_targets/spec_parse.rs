//! `spec::parse` on arbitrary text: never panics, and whatever parses renders to a canonical spec
//! that parses back to the same configuration and the same text.
#![no_main]

use framelink_proto::codec::{spec, AnyCodec, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(framing) = spec::parse(text) else {
        return;
    };
    let canonical = framing.to_string();
    let again = spec::parse(&canonical).unwrap_or_else(|e| {
        panic!("{text:?} parsed, but its canonical form {canonical:?} does not: {e}")
    });
    assert_eq!(
        again.to_string(),
        canonical,
        "{text:?}: the canonical form does not render to itself"
    );
    assert!(
        same_config(&framing, &again),
        "{text:?} and its canonical form {canonical:?} give different configurations:\n{:?}\n{:?}",
        framing.codec(),
        again.codec()
    );
    // `FromStr` is the same parser; `reset` rebuilds the codec from its config.
    let via_from_str: Framing = text.parse().expect("FromStr agrees with spec::parse");
    assert_eq!(via_from_str.to_string(), canonical);
    assert_eq!(framing.reset().to_string(), canonical);
});

fn same_config(a: &Framing, b: &Framing) -> bool {
    match (a.codec(), b.codec()) {
        (AnyCodec::LengthField(a), AnyCodec::LengthField(b)) => a.config() == b.config(),
        (AnyCodec::Varint(a), AnyCodec::Varint(b)) => a.config() == b.config(),
        (AnyCodec::Delimiter(a), AnyCodec::Delimiter(b)) => a.config() == b.config(),
        (AnyCodec::Lines(a), AnyCodec::Lines(b)) => a.config() == b.config(),
        (AnyCodec::Fixed(a), AnyCodec::Fixed(b)) => a.config() == b.config(),
        (AnyCodec::Netstring(a), AnyCodec::Netstring(b)) => a.config() == b.config(),
        (AnyCodec::Magic(a), AnyCodec::Magic(b)) => a.config() == b.config(),
        _ => false,
    }
}
