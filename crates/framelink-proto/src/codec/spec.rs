//! The framing spec: one line of text that names a framing and its options, used by the CLI,
//! configuration files and bindings. [`parse`] turns it into a [`Framing`]; [`render`] (and
//! `Framing`'s `Display`) prints the canonical form back, which parses to the same framing.
//!
//! # Grammar
//!
//! ```text
//! spec    = kind [ ":" argument ] { "," option }
//! size    = integer [ "B" | "KiB" | "MiB" | "GiB" ]        (binary units; also K, M, G)
//! ```
//!
//! | kind | argument | options (defaults first) |
//! |---|---|---|
//! | `length` (`len`) | field width: 1, 2, 3, 4, 8 | `be`/`le`, `offset=N` (0), `adjust=±N` (0), `strip=N` (offset+width), `max=size` (8MiB), `fail`/`discard` |
//! | `varint` | — | `max=size` (8MiB), `fail`/`discard`, `strict`/`lenient` (accept non-minimal prefixes) |
//! | `line` (`lines`) | — | `max=size` (64KiB), `strip`/`keep`, `lf`/`crlf` (encoder's line ending), `fail`/`discard` |
//! | `delim` (`delimiter`) | delimiters separated by `\|`: hex (`0d0a`) or quoted (`"\r\n"`) | `max=size` (64KiB), `strip`/`keep`, `fail`/`discard` |
//! | `fixed` | frame size in bytes | — |
//! | `netstring` | — | `max=size` (8MiB), `fail`/`discard` |
//! | `magic` | magic bytes in hex (`cafe`) or quoted | `len=1\|2\|4` (4), `be`/`le`, `crc=crc32c\|crc32\|none` (crc32c), `max=size` (8MiB), `resync`/`fail` |
//!
//! `fail` / `discard` choose the [`OversizePolicy`] (`oversize=fail` also
//! works). Quoted strings take the escapes `\r \n \t \0 \\ \" \xHH`; a quoted string may contain
//! commas and `|`.
//!
//! ```
//! use framelink_proto::codec::spec;
//!
//! for text in [
//!     "length:4",                                   // 4-byte big-endian prefix, stripped
//!     "length:2,le,offset=1,adjust=-3,strip=3,max=64KiB,discard",
//!     "varint,max=1MiB",
//!     "line,max=8KiB,keep",
//!     "delim:\"\\r\\n\"|00,max=1KiB",
//!     "fixed:128",
//!     "netstring",
//!     "magic:cafe,len=2,crc=crc32",
//! ] {
//!     let framing = spec::parse(text).unwrap();
//!     // The canonical form parses back to the same framing.
//!     assert_eq!(spec::parse(&framing.to_string()).unwrap().to_string(), framing.to_string());
//! }
//! let err = spec::parse("length:4,max=lots").unwrap_err();
//! assert_eq!(err.to_string(), r#"invalid framing spec "length:4,max=lots": bad size "lots" for max (expected e.g. 65536, 64KiB, 16MiB)"#);
//! ```

use super::{
    AnyCodec, ByteOrder, Checksum, ConfigError, DelimiterCodec, DelimiterConfig, FixedLengthCodec,
    FixedLengthConfig, Framing, LengthFieldCodec, LengthFieldConfig, LinesCodec, LinesConfig,
    MagicCodec, MagicConfig, NetstringCodec, NetstringConfig, OversizePolicy, ResyncPolicy,
    VarintCodec, VarintConfig,
};

/// Parses a framing spec (see the [module docs](self) for the grammar).
pub fn parse(text: &str) -> Result<Framing, ConfigError> {
    let spec_error = |reason: String| ConfigError::Spec {
        spec: text.to_string(),
        reason,
    };
    Parser::new(text).parse().map_err(spec_error)?
}

/// Prints the canonical spec of a framing: every option that matters for the wire, sizes in the
/// largest exact binary unit.
pub fn render(framing: &Framing) -> String {
    let mut out = String::new();
    match framing.codec() {
        AnyCodec::LengthField(c) => {
            let c = c.config();
            out += &format!("length:{}", c.width);
            push_order(&mut out, c.order);
            if c.offset != 0 {
                out += &format!(",offset={}", c.offset);
            }
            if c.adjustment != 0 {
                out += &format!(",adjust={}", c.adjustment);
            }
            out += &format!(",strip={},max={}", c.strip, render_size(c.max_frame_length));
            push_oversize(&mut out, c.oversize);
        }
        AnyCodec::Varint(c) => {
            let c = c.config();
            out += &format!("varint,max={}", render_size(c.max_frame_length));
            push_oversize(&mut out, c.oversize);
            if !c.strict {
                out += ",lenient";
            }
        }
        AnyCodec::Lines(c) => {
            let c = c.config();
            out += &format!("line,max={}", render_size(c.max_frame_length));
            if !c.strip {
                out += ",keep";
            }
            if c.crlf {
                out += ",crlf";
            }
            push_oversize(&mut out, c.oversize);
        }
        AnyCodec::Delimiter(c) => {
            let c = c.config();
            let delims: Vec<String> = c.delimiters.iter().map(|d| render_bytes(d)).collect();
            out += &format!(
                "delim:{},max={}",
                delims.join("|"),
                render_size(c.max_frame_length)
            );
            if !c.strip {
                out += ",keep";
            }
            push_oversize(&mut out, c.oversize);
        }
        AnyCodec::Fixed(c) => out += &format!("fixed:{}", c.config().length),
        AnyCodec::Netstring(c) => {
            let c = c.config();
            out += &format!("netstring,max={}", render_size(c.max_frame_length));
            push_oversize(&mut out, c.oversize);
        }
        AnyCodec::Magic(c) => {
            let c = c.config();
            out += &format!("magic:{},len={}", render_bytes(&c.magic), c.length_width);
            push_order(&mut out, c.order);
            out += match c.checksum {
                Checksum::None => ",crc=none",
                Checksum::Crc32 => ",crc=crc32",
                Checksum::Crc32c => ",crc=crc32c",
            };
            out += &format!(",max={}", render_size(c.max_frame_length));
            out += match c.resync {
                ResyncPolicy::Resync => ",resync",
                ResyncPolicy::Fail => ",fail",
            };
        }
    }
    out
}

fn push_order(out: &mut String, order: ByteOrder) {
    if order == ByteOrder::LittleEndian {
        out.push_str(",le");
    }
}

fn push_oversize(out: &mut String, policy: OversizePolicy) {
    if policy == OversizePolicy::Discard {
        out.push_str(",discard");
    }
}

/// `65536` → `64KiB`; sizes that are not whole units stay in bytes.
fn render_size(n: usize) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// Hex for binary bytes, a quoted string when every byte is printable or a common escape.
fn render_bytes(bytes: &[u8]) -> String {
    let printable = bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\r' || b == b'\n' || b == b'\t');
    if !printable || bytes.iter().all(u8::is_ascii_hexdigit) {
        return bytes.iter().map(|b| format!("{b:02x}")).collect();
    }
    let mut s = String::from("\"");
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            _ => s.push(char::from(b)),
        }
    }
    s.push('"');
    s
}

/// A hand-written parser: the grammar is small, and its error messages name the offending part.
struct Parser<'a> {
    text: &'a str,
}

type ParseResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text }
    }

    fn parse(&self) -> ParseResult<Result<Framing, ConfigError>> {
        let parts = split_unquoted(self.text.trim(), ',')?;
        let (head, options) = parts.split_first().ok_or("empty spec")?;
        let (kind, arg) = match head.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (head.trim(), None),
        };
        let mut opts = Options::new(options)?;
        let framing = match kind {
            "length" | "len" => {
                let width = parse_int(required(arg, "length", "a field width, e.g. length:4")?)?;
                let mut c = LengthFieldConfig::new(to_usize(width)?);
                c.order = opts.order()?;
                c.offset = opts.int("offset")?.map_or(Ok(0), to_usize)?;
                c.adjustment = opts.int("adjust")?.map_or(Ok(0), |v| {
                    i64::try_from(v).map_err(|_| format!("adjust={v} is out of range"))
                })?;
                c.strip = opts
                    .int("strip")?
                    .map_or(Ok(c.header_length()), to_usize)?;
                c.max_frame_length = opts.size("max")?.unwrap_or(c.max_frame_length);
                c.oversize = opts.oversize()?;
                opts.finish()?;
                LengthFieldCodec::new(c).map(Framing::from)
            }
            "varint" => {
                no_arg(arg, kind)?;
                let mut c = VarintConfig::default();
                c.max_frame_length = opts.size("max")?.unwrap_or(c.max_frame_length);
                c.oversize = opts.oversize()?;
                c.strict = opts.choice(&["strict", "lenient"])? != Some("lenient");
                opts.finish()?;
                VarintCodec::new(c).map(Framing::from)
            }
            "line" | "lines" => {
                no_arg(arg, kind)?;
                let mut c = LinesConfig::default();
                c.max_frame_length = opts.size("max")?.unwrap_or(c.max_frame_length);
                c.strip = opts.strip()?;
                c.crlf = opts.choice(&["lf", "crlf"])?.is_some_and(|f| f == "crlf");
                c.oversize = opts.oversize()?;
                opts.finish()?;
                LinesCodec::new(c).map(Framing::from)
            }
            "delim" | "delimiter" => {
                let arg = required(arg, kind, "delimiters, e.g. delim:0d0a or delim:\"\\r\\n\"")?;
                let delimiters = split_unquoted(arg, '|')?
                    .iter()
                    .map(|d| parse_bytes(d))
                    .collect::<ParseResult<Vec<_>>>()?;
                let mut c = DelimiterConfig::new(delimiters);
                c.max_frame_length = opts.size("max")?.unwrap_or(c.max_frame_length);
                c.strip = opts.strip()?;
                c.oversize = opts.oversize()?;
                opts.finish()?;
                DelimiterCodec::new(c).map(Framing::from)
            }
            "fixed" => {
                let n = parse_size(required(arg, kind, "a frame size, e.g. fixed:128")?)
                    .ok_or_else(|| format!("bad frame size {:?} for fixed", arg.unwrap_or("")))?;
                opts.finish()?;
                FixedLengthCodec::new(FixedLengthConfig { length: n }).map(Framing::from)
            }
            "netstring" => {
                no_arg(arg, kind)?;
                let mut c = NetstringConfig::default();
                c.max_frame_length = opts.size("max")?.unwrap_or(c.max_frame_length);
                c.oversize = opts.oversize()?;
                opts.finish()?;
                NetstringCodec::new(c).map(Framing::from)
            }
            "magic" => {
                let magic = parse_bytes(required(arg, kind, "magic bytes, e.g. magic:cafe")?)?;
                let mut c = MagicConfig::new(magic);
                c.length_width = opts.int("len")?.map_or(Ok(c.length_width), to_usize)?;
                c.order = opts.order()?;
                c.checksum = match opts.value("crc")? {
                    None | Some("crc32c") => Checksum::Crc32c,
                    Some("crc32") => Checksum::Crc32,
                    Some("none") => Checksum::None,
                    Some(other) => {
                        return Err(format!(
                            "unknown checksum {other:?} (expected crc32c, crc32 or none)"
                        ))
                    }
                };
                c.max_frame_length = opts.size("max")?.unwrap_or(c.max_frame_length);
                c.resync = match opts.choice(&["resync", "fail"])? {
                    Some("fail") => ResyncPolicy::Fail,
                    _ => ResyncPolicy::Resync,
                };
                opts.finish()?;
                MagicCodec::new(c).map(Framing::from)
            }
            "" => return Err("empty spec".into()),
            other => {
                return Err(format!(
                "unknown framing {other:?} (expected length, varint, line, delim, fixed, netstring or magic)"
            ))
            }
        };
        Ok(framing)
    }
}

/// The options after the kind: `key=value` pairs and bare flags, each used at most once.
struct Options<'a> {
    items: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> Options<'a> {
    fn new(parts: &[&'a str]) -> ParseResult<Self> {
        let mut items: Vec<(&str, Option<&str>)> = Vec::new();
        for part in parts {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (part.trim(), None),
            };
            if key.is_empty() {
                return Err("empty option (two commas in a row?)".into());
            }
            items.push((key, value));
        }
        Ok(Options { items })
    }

    fn take(&mut self, key: &str) -> Option<(&'a str, Option<&'a str>)> {
        let i = self.items.iter().position(|(k, _)| *k == key)?;
        Some(self.items.remove(i))
    }

    fn value(&mut self, key: &str) -> ParseResult<Option<&'a str>> {
        match self.take(key) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v)),
            Some((_, None)) => Err(format!("option {key} needs a value ({key}=...)")),
        }
    }

    fn int(&mut self, key: &str) -> ParseResult<Option<i128>> {
        self.value(key)?
            .map(|v| parse_int(v).map_err(|_| format!("bad number {v:?} for {key}")))
            .transpose()
    }

    fn size(&mut self, key: &str) -> ParseResult<Option<usize>> {
        self.value(key)?
            .map(|v| {
                parse_size(v).ok_or_else(|| {
                    format!("bad size {v:?} for {key} (expected e.g. 65536, 64KiB, 16MiB)")
                })
            })
            .transpose()
    }

    /// At most one of the mutually exclusive bare flags in `flags`.
    fn choice(&mut self, flags: &[&'static str]) -> ParseResult<Option<&'static str>> {
        let mut found = None;
        for &flag in flags {
            if let Some((_, value)) = self.take(flag) {
                if value.is_some() {
                    return Err(format!("flag {flag} takes no value"));
                }
                if let Some(previous) = found {
                    return Err(format!("{previous} and {flag} cannot both be given"));
                }
                found = Some(flag);
            }
        }
        Ok(found)
    }

    fn order(&mut self) -> ParseResult<ByteOrder> {
        Ok(match self.choice(&["be", "le"])? {
            Some("le") => ByteOrder::LittleEndian,
            _ => ByteOrder::BigEndian,
        })
    }

    fn strip(&mut self) -> ParseResult<bool> {
        Ok(self.choice(&["strip", "keep"])? != Some("keep"))
    }

    fn oversize(&mut self) -> ParseResult<OversizePolicy> {
        let flag = self.choice(&["fail", "discard"])?;
        let keyed = self.value("oversize")?;
        match (flag, keyed) {
            (Some(_), Some(_)) => Err("oversize policy given twice".into()),
            (Some("discard"), None) | (None, Some("discard")) => Ok(OversizePolicy::Discard),
            (Some(_), None) | (None, Some("fail")) | (None, None) => Ok(OversizePolicy::Fail),
            (None, Some(other)) => Err(format!(
                "unknown oversize policy {other:?} (expected fail or discard)"
            )),
        }
    }

    fn finish(self) -> ParseResult<()> {
        match self.items.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!("unknown or repeated option {key:?}")),
        }
    }
}

fn required<'a>(arg: Option<&'a str>, kind: &str, what: &str) -> ParseResult<&'a str> {
    match arg {
        Some(a) if !a.is_empty() => Ok(a),
        _ => Err(format!("{kind} needs {what}")),
    }
}

fn no_arg(arg: Option<&str>, kind: &str) -> ParseResult<()> {
    match arg {
        None => Ok(()),
        Some(a) => Err(format!("{kind} takes no argument (got {a:?})")),
    }
}

fn to_usize(v: i128) -> ParseResult<usize> {
    usize::try_from(v).map_err(|_| format!("{v} is out of range"))
}

fn parse_int(s: &str) -> ParseResult<i128> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16)
    } else {
        digits.parse::<i128>()
    }
    .map_err(|_| format!("bad number {s:?}"))?;
    Ok(if neg { -v } else { v })
}

/// `65536`, `64KiB`, `64K`, `16MiB`, `1GiB`, `100B`.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().ok()?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1usize.checked_shl(shift)?)
}

/// Hex (`0d0a`, `0x0d0a`) or a quoted string with escapes.
fn parse_bytes(s: &str) -> ParseResult<Vec<u8>> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quoted string {s}"))?;
        return unescape(inner);
    }
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "bad bytes {s:?} (expected hex such as 0d0a, or a quoted string such as \"\\r\\n\")"
        ));
    }
    Ok((0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex"))
        .collect())
}

fn unescape(s: &str) -> ParseResult<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let escaped = match bytes.next() {
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(b'\\') => b'\\',
            Some(b'"') => b'"',
            Some(b'x') => {
                let hi = bytes.next();
                let lo = bytes.next();
                match (hi, lo) {
                    (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                        let pair = [h, l];
                        let text = std::str::from_utf8(&pair).expect("ascii");
                        u8::from_str_radix(text, 16).expect("checked hex")
                    }
                    _ => return Err(format!("bad \\x escape in {s:?}")),
                }
            }
            Some(other) => return Err(format!("unknown escape \\{} in {s:?}", char::from(other))),
            None => return Err(format!("dangling backslash in {s:?}")),
        };
        out.push(escaped);
    }
    Ok(out)
}

/// Splits on `sep` outside double quotes (a backslash escapes a quote inside them).
fn split_unquoted(s: &str, sep: char) -> ParseResult<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    if in_quotes {
        return Err(format!("unterminated quoted string in {s:?}"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text).unwrap_err() {
            ConfigError::Spec { reason, .. } => reason,
            other => other.to_string(),
        }
    }

    #[test]
    fn length_options() {
        let f = parse("length:2,le,offset=1,adjust=-3,strip=3,max=64KiB,discard").unwrap();
        let AnyCodec::LengthField(c) = f.codec() else {
            panic!("{f:?}")
        };
        let c = c.config();
        assert_eq!(c.width, 2);
        assert_eq!(c.order, ByteOrder::LittleEndian);
        assert_eq!((c.offset, c.adjustment, c.strip), (1, -3, 3));
        assert_eq!(c.max_frame_length, 65536);
        assert_eq!(c.oversize, OversizePolicy::Discard);
        assert_eq!(
            f.to_string(),
            "length:2,le,offset=1,adjust=-3,strip=3,max=64KiB,discard"
        );
        // Defaults: strip the whole header.
        assert_eq!(
            parse("len:4").unwrap().to_string(),
            "length:4,strip=4,max=8MiB"
        );
        assert_eq!(
            parse("length:4,oversize=discard,max=100")
                .unwrap()
                .to_string(),
            "length:4,strip=4,max=100,discard"
        );
    }

    #[test]
    fn every_kind_round_trips_through_its_canonical_form() {
        for text in [
            "length:8,le,strip=0,max=1GiB",
            "varint,max=1MiB,discard,lenient",
            "line,max=8KiB,keep,crlf",
            "delim:\"\\r\\n\"|00,max=1KiB,keep,discard",
            "delim:\"a,b|c\",max=64KiB",
            "fixed:128",
            "netstring,max=4KiB",
            "magic:cafe,len=2,le,crc=crc32,max=1MiB,fail",
            "magic:\"FL\",len=4,crc=none,max=8MiB,resync",
        ] {
            let framing = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(framing.to_string(), text);
        }
    }

    #[test]
    fn quoted_delimiters_and_escapes() {
        let f = parse(r#"delim:"a,b|c"|"\x00\t"|0a"#).unwrap();
        let AnyCodec::Delimiter(c) = f.codec() else {
            panic!()
        };
        assert_eq!(
            c.config().delimiters,
            vec![b"a,b|c".to_vec(), vec![0, b'\t'], vec![b'\n']]
        );
    }

    #[test]
    fn errors_name_the_offending_part() {
        assert!(err("").contains("empty spec"));
        assert!(err("lenght:4").contains("unknown framing \"lenght\""));
        assert!(err("length").contains("length needs a field width"));
        assert!(err("length:four").contains("bad number"));
        assert!(err("length:4,max=lots").contains("bad size \"lots\" for max"));
        assert!(err("length:4,be,le").contains("be and le cannot both be given"));
        assert!(err("length:4,fail,discard").contains("cannot both"));
        assert!(err("length:4,colour=red").contains("unknown or repeated option \"colour\""));
        assert!(err("length:4,max=1K,max=2K").contains("unknown or repeated option \"max\""));
        assert!(err("length:4,offset").contains("offset needs a value"));
        assert!(err("varint:3").contains("takes no argument"));
        assert!(err("delim:\"abc").contains("unterminated"));
        assert!(err("delim:0g").contains("bad bytes"));
        assert!(err("delim:\"\\q\"").contains("unknown escape"));
        assert!(err("magic:cafe,crc=md5").contains("unknown checksum"));
        assert!(err("length:4,max=99999999999999999999GiB").contains("bad size"));
        assert!(err("length:4,oversize=maybe").contains("unknown oversize policy"));
        // Found by the `spec_parse` fuzz target: these overflowed instead of failing.
        assert!(err("length:-2,le,offset=3").contains("-2 is out of range"));
        assert!(matches!(
            parse("length:4,offset=18446744073709551615"),
            Err(ConfigError::OutOfRange { name: "offset", .. })
        ));
        assert!(matches!(
            parse("length:8,offset=18446744073709551609"),
            Err(ConfigError::OutOfRange { name: "offset", .. })
        ));
        // Codec validation errors come through typed.
        assert!(matches!(
            parse("length:5"),
            Err(ConfigError::InvalidWidth { width: 5, .. })
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("12B"), Some(12));
        assert_eq!(parse_size("1.5MiB"), None);
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(render_size(3 << 20), "3MiB");
        assert_eq!(render_size(1000), "1000");
        assert_eq!(render_size(0), "0");
    }
}
