//! Options shared by `framelink serve` and `framelink connect`: the protocol (framelink v1, or
//! raw mode with the peer's framing), heartbeats, and the value syntaxes (durations, payloads).
//!
//! - **Durations**: a number with a unit, `us`, `ms`, `s`, `m` or `h`; decimals allowed
//!   (`500ms`, `5s`, `1.5s`, `1m`); `0` alone is zero.
//! - **Payloads** (`--ping`, `--pong`, `--answer`): text as given, or `hex:` followed by hex
//!   bytes written as in `encode --input-format hex` (`hex:50494e47`, `hex:` is empty).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use framelink::connection::ConnectionConfig;
use framelink::proto::raw::Answer;
use framelink::{FrameMatcher, Framing, Protocol, RawConfig};

use crate::stream_tools::{escape_text, parse_hex_line};

/// Protocol and heartbeat options.
#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    /// Raw mode: speak the peer's own framing (a spec as for `decode`, e.g. `length:4`, `line`)
    /// instead of framelink protocol v1. Each message is one frame.
    #[arg(short, long, value_name = "SPEC", value_parser = crate::parse_framing)]
    pub framing: Option<Framing>,

    /// Heartbeat: after this long without receiving anything, send a ping (`500ms`, `5s`, `1m`;
    /// `off`: never). Protocol mode: default 15s. Raw mode: default off, or 15s with `--ping`;
    /// with `--ping-interval` but no `--ping` nothing is sent and the peer is only declared
    /// dead after `ping-interval + ping-timeout` of silence.
    #[arg(long, value_name = "DUR|off", value_parser = parse_interval)]
    pub ping_interval: Option<Interval>,

    /// Declare the peer dead when nothing at all arrives this long after a ping. Default 10s.
    #[arg(long, value_name = "DUR", value_parser = parse_nonzero_duration)]
    pub ping_timeout: Option<Duration>,

    /// Raw mode: the payload of the ping frame (text, or `hex:` and hex bytes).
    #[arg(long, value_name = "PAYLOAD", requires = "framing", value_parser = parse_payload)]
    pub ping: Option<Bytes>,

    /// Raw mode: the peer's pong is a frame of exactly this payload. A pong answering our ping
    /// gives an RTT sample and is not delivered; the same frame arriving while no ping is
    /// outstanding is the peer's data and is delivered (see --pong-always).
    #[arg(
        long,
        value_name = "PAYLOAD",
        requires = "framing",
        group = "pong_matcher",
        value_parser = parse_payload
    )]
    pub pong: Option<Bytes>,

    /// Raw mode: the peer's pong is a frame starting with these bytes (not delivered).
    #[arg(
        long,
        value_name = "PAYLOAD",
        requires = "framing",
        group = "pong_matcher",
        value_parser = parse_nonempty_payload
    )]
    pub pong_prefix: Option<Bytes>,

    /// Raw mode: any frame after a ping answers it and is still delivered (the default).
    #[arg(long, requires = "framing", group = "pong_matcher")]
    pub pong_any: bool,

    /// Raw mode: the peer sends pongs on its own too: swallow frames matching --pong or
    /// --pong-prefix even when no ping of ours is outstanding.
    #[arg(long, requires = "framing")]
    pub pong_always: bool,

    /// Close a connection whose peer starts a message (raw mode: a frame) and has not sent all
    /// of it this long after its first byte (CLOSE code 3 in protocol mode), however steadily
    /// it trickles bytes (`off`: no bound). Default 30s.
    #[arg(long, value_name = "DUR|off", value_parser = parse_interval)]
    pub frame_timeout: Option<Interval>,

    /// Raw mode: answer the peer's own heartbeats: when a frame equal to MATCH arrives, send
    /// REPLY (e.g. `PING=PONG`; either side may be `hex:...`). Matched frames are not delivered.
    #[arg(
        long,
        value_name = "MATCH=REPLY",
        requires = "framing",
        value_parser = parse_answer
    )]
    pub answer: Option<Answer>,
}

/// Ctrl-C (SIGINT), with the handler installed at creation, so that an interrupt arriving right
/// after the startup message is not the default "terminate at once".
pub struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    /// Installs the handler (call inside the runtime). Without one, `recv` never resolves.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Interrupt {
                signal: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Interrupt {}
    }

    /// The next Ctrl-C, or the end of `max_duration` if one is given; says which.
    pub async fn recv_or_after(&mut self, max_duration: Option<Duration>) -> &'static str {
        match max_duration {
            Some(d) => tokio::select! {
                () = self.recv() => "interrupted",
                () = tokio::time::sleep(d) => "--max-duration reached",
            },
            None => {
                self.recv().await;
                "interrupted"
            }
        }
    }

    /// The next Ctrl-C.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.signal {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A heartbeat interval: `None` is `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

impl LinkArgs {
    /// The connection settings these options describe.
    pub fn protocol(&self) -> Protocol {
        match &self.framing {
            None => {
                let mut config = ConnectionConfig::default();
                if let Some(Interval(interval)) = self.ping_interval {
                    config.ping_interval = interval;
                }
                if let Some(timeout) = self.ping_timeout {
                    config.ping_timeout = timeout;
                }
                if let Some(Interval(bound)) = self.frame_timeout {
                    config.frame_timeout = bound;
                }
                Protocol::Framelink(config)
            }
            Some(framing) => {
                let mut config = RawConfig::new(framing.clone());
                // RawConfig's own default interval (15 s) applies only when there is a ping to
                // send: a raw peer that is merely quiet is not declared dead unless asked for.
                config.ping_interval = match self.ping_interval {
                    Some(Interval(interval)) => interval,
                    None if self.ping.is_some() => config.ping_interval,
                    None => None,
                };
                if let Some(timeout) = self.ping_timeout {
                    config.ping_timeout = timeout;
                }
                config.ping = self.ping.clone();
                config.pong = match (&self.pong, &self.pong_prefix) {
                    (Some(exact), _) => FrameMatcher::Exact(exact.clone()),
                    (None, Some(prefix)) => FrameMatcher::Prefix(prefix.clone()),
                    (None, None) => FrameMatcher::Any,
                };
                config.answer = self.answer.clone();
                config.pong_always = self.pong_always;
                if let Some(Interval(bound)) = self.frame_timeout {
                    config.frame_timeout = bound;
                }
                Protocol::Raw(Box::new(config))
            }
        }
    }
}

/// One line saying what a connection speaks, for the startup messages.
pub fn describe(protocol: &Protocol) -> String {
    match protocol {
        Protocol::Framelink(config) => {
            let mut s = String::from("framelink protocol v1");
            match config.ping_interval {
                Some(interval) => {
                    let _ = write!(
                        s,
                        ", ping after {} quiet, timeout {}",
                        show_duration(interval),
                        show_duration(config.ping_timeout)
                    );
                }
                None => s.push_str(", no pings"),
            }
            s
        }
        Protocol::Raw(config) => {
            let mut s = format!("raw mode, framing {}", config.framing);
            match (&config.ping, config.ping_interval) {
                (Some(ping), Some(interval)) => {
                    let _ = write!(
                        s,
                        ", ping \"{}\" after {} quiet, timeout {}",
                        escape_text(ping),
                        show_duration(interval),
                        show_duration(config.ping_timeout)
                    );
                    match &config.pong {
                        FrameMatcher::Exact(p) => {
                            let _ = write!(s, ", pong \"{}\"", escape_text(p));
                        }
                        FrameMatcher::Prefix(p) => {
                            let _ = write!(s, ", pong \"{}...\"", escape_text(p));
                        }
                        _ => s.push_str(", any frame answers"),
                    }
                }
                (None, Some(interval)) => {
                    let _ = write!(
                        s,
                        ", peer dead after {} of silence",
                        show_duration(interval + config.ping_timeout)
                    );
                }
                _ => s.push_str(", no heartbeat"),
            }
            if let Some(answer) = &config.answer {
                if let FrameMatcher::Exact(m) = &answer.matcher {
                    let _ = write!(
                        s,
                        ", answers \"{}\" with \"{}\"",
                        escape_text(m),
                        escape_text(&answer.reply)
                    );
                }
            }
            s
        }
    }
}

/// `1 unacknowledged message`, `3 unacknowledged messages`.
pub fn unacked_messages(n: usize) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{n} unacknowledged message{s}")
}

/// A duration for people: `250ms`, `1.5s`, `2m`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if d.is_zero() {
        "0s".into()
    } else if ms < 1.0 {
        format!("{}us", d.as_micros())
    } else if ms < 1000.0 {
        trim_float(ms, "ms")
    } else if d.as_secs_f64() < 120.0 {
        trim_float(d.as_secs_f64(), "s")
    } else {
        trim_float(d.as_secs_f64() / 60.0, "m")
    }
}

fn trim_float(value: f64, unit: &str) -> String {
    let s = format!("{value:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{unit}")
}

/// Parses `500ms`, `5s`, `1.5s`, `1m`, `2h`, `100us`, or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?} (expected e.g. 500ms, 5s, 1.5s, 1m)");
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let duration = Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| bad())?;
    // Deadlines are `Instant + duration`, which overflows (and panics) far below what f64
    // seconds can say: a year is beyond any timeout or delay this tool needs.
    if duration > MAX_DURATION {
        return Err(format!("duration {text:?} is over the limit of 365 days"));
    }
    Ok(duration)
}

/// The longest duration any option takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

/// A size in bytes: `65536`, `64KiB`, `64K`, `1MiB`, `1GiB`, `100B` (binary units).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || format!("bad size {text:?} (expected e.g. 64, 16KiB, 1MiB)");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "k" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// A size as [`parse_size`], with binary units when whole (`64 MiB`).
pub fn show_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// A duration, or `off` / `none` / `0` for none.
pub fn parse_interval(text: &str) -> Result<Interval, String> {
    match text.trim() {
        "off" | "none" | "never" => Ok(Interval(None)),
        other => parse_duration(other).map(|d| Interval((!d.is_zero()).then_some(d))),
    }
}

/// Text as is, or `hex:` and hex bytes.
pub fn parse_payload(text: &str) -> Result<Bytes, String> {
    match text.strip_prefix("hex:") {
        Some(hex) => parse_hex_line(hex)
            .map(Bytes::from)
            .ok_or_else(|| format!("{hex:?} is not hex (two digits per byte)")),
        None => Ok(Bytes::copy_from_slice(text.as_bytes())),
    }
}

fn parse_nonempty_payload(text: &str) -> Result<Bytes, String> {
    match parse_payload(text)? {
        p if p.is_empty() => Err("must not be empty (use --pong-any)".into()),
        p => Ok(p),
    }
}

/// `MATCH=REPLY`, split at the first `=`.
fn parse_answer(text: &str) -> Result<Answer, String> {
    let (matcher, reply) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected MATCH=REPLY, e.g. PING=PONG"))?;
    Ok(Answer {
        matcher: FrameMatcher::Exact(parse_payload(matcher)?),
        reply: parse_payload(reply)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("5s"), Ok(ms(5000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("1m"), Ok(ms(60_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        // A year at most: `Instant + d` must not overflow.
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_duration("8761h").unwrap_err().contains("365 days"));
        assert!(parse_duration("10000000000000000000s").is_err());
        for bad in [
            "",
            "5",
            "s",
            "1.s",
            ".5s",
            "1.2.3s",
            "5 parsecs",
            "-1s",
            "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_interval("off"), Ok(Interval(None)));
        assert_eq!(parse_interval("0"), Ok(Interval(None)));
        assert_eq!(parse_interval("100ms"), Ok(Interval(Some(ms(100)))));
        assert!(parse_nonzero_duration("0s").is_err());
    }

    #[test]
    fn sizes_and_the_frame_timeout_option() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("1.5GiB").is_err());
        assert_eq!(show_size(64 << 20), "64 MiB");
        assert_eq!(show_size(1 << 30), "1 GiB");
        assert_eq!(show_size(1000), "1000 B");
        let args = |frame_timeout| LinkArgs {
            framing: None,
            ping_interval: None,
            ping_timeout: None,
            ping: None,
            pong: None,
            pong_prefix: None,
            pong_any: false,
            pong_always: false,
            frame_timeout,
            answer: None,
        };
        let timeout_of = |protocol: Protocol| match protocol {
            Protocol::Framelink(c) => c.frame_timeout,
            Protocol::Raw(c) => c.frame_timeout,
        };
        assert_eq!(
            timeout_of(args(None).protocol()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            timeout_of(args(Some(parse_interval("5s").unwrap())).protocol()),
            Some(ms(5000))
        );
        assert_eq!(
            timeout_of(args(Some(parse_interval("off").unwrap())).protocol()),
            None
        );
        let mut raw = args(Some(Interval(Some(ms(700)))));
        raw.framing = Some(crate::parse_framing("line").unwrap());
        assert_eq!(timeout_of(raw.protocol()), Some(ms(700)));
    }

    #[test]
    fn shown_durations() {
        assert_eq!(show_duration(ms(150)), "150ms");
        assert_eq!(show_duration(ms(1500)), "1.5s");
        assert_eq!(show_duration(Duration::from_micros(231)), "231us");
        assert_eq!(show_duration(Duration::from_micros(1250)), "1.25ms");
        assert_eq!(show_duration(ms(600_000)), "10m");
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_payload("PING").unwrap(), &b"PING"[..]);
        assert_eq!(parse_payload("hex:00ff").unwrap(), &b"\x00\xff"[..]);
        assert_eq!(parse_payload("hex:").unwrap(), &b""[..]);
        assert!(parse_payload("hex:0").is_err());
        assert!(parse_nonempty_payload("").is_err());
        let answer = parse_answer("PING=hex:504f4e47").unwrap();
        assert!(answer.matcher.matches(b"PING"));
        assert_eq!(answer.reply, &b"PONG"[..]);
        assert_eq!(parse_answer("a==b").unwrap().reply, &b"=b"[..]);
        assert!(parse_answer("PING").is_err());
    }
}
