//! `framelink proxy LISTEN UPSTREAM`: the library's chaos proxy ([`framelink_chaos`]) from the
//! command line. It forwards every connection to UPSTREAM while splitting, gluing and delaying
//! the bytes and cutting the link (FIN, RST, blackhole, stall) at random or given points;
//! seeded, so a failure can be replayed. Connections and faults are reported on stderr, and
//! the totals on Ctrl-C (or `--max-duration`). With `--show SPEC`, the frames passing in both
//! directions are printed on stdout as they are forwarded ([`crate::tap`]).

use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use framelink_chaos::{
    ChaosConfig, ChaosEvent, ChaosProxy, Fault, FaultMix, FaultPlan, ScheduledFault, Trigger,
};

use framelink::Framing;

use crate::link_args::{parse_duration, show_duration, Interrupt};
use crate::tap::FrameTap;
use crate::OutputFormat;

/// Options of `framelink proxy`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --split 1..16 --delay 0..5ms
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --cut-every 64KiB --fault mix --seed 42
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --cut-at 10s --fault blackhole
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --cut-every 2s --fault stall:500ms,rst
  framelink proxy 127.0.0.1:7001 127.0.0.1:7000 --show length:4 --split 1..16

Sizes: 100000, 64KiB, 1MiB (also K, M, G). Durations: 500us, 5ms, 1.5s, 1m (a minute).
Byte counts are bytes forwarded on the connection, both directions together; the proxy stops
at exactly that count to inject the fault.

stderr: `[proxy] listening on ADDR -> UPSTREAM (seed N)` first (with the real port when LISTEN
ends in :0), then `+conn #ID from PEER`, `#ID fault: KIND after N bytes (T)` and
`-conn #ID closed (...)` lines, and the totals when it stops. The same seed and the same
traffic give the same pieces and the same faults.

stdout with --show: one line per frame as it is forwarded, `TIME #ID client->upstream
frame=N offset=O len=L PAYLOAD` (or upstream->client; JSON with --show-format json). A
direction that does not decode is reported on stderr (`[show] #ID DIRECTION: error ...`) and
no longer shown; forwarding goes on.")]
pub struct ProxyArgs {
    /// Address to listen on, e.g. `127.0.0.1:7001`; port 0 picks a free port (printed).
    #[arg(value_name = "LISTEN")]
    listen: String,

    /// Where to forward each connection, e.g. `127.0.0.1:7000` or `localhost:7000` (resolved
    /// for each connection).
    #[arg(value_name = "UPSTREAM")]
    upstream: String,

    /// Seed for everything random; by default a random one, printed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Cut the forwarded bytes into pieces of MIN to MAX bytes (inclusive), each written on
    /// its own; `N` for pieces of N bytes.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_split)]
    split: Option<RangeInclusive<usize>>,

    /// Hold bytes this long, so that several writes arrive glued together.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    coalesce: Option<Duration>,

    /// Delay the bytes of each read by a random time from MIN to MAX (`0..20ms`, `5..50ms`),
    /// or by DUR; bytes are never reordered.
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_delay)]
    delay: Option<RangeInclusive<Duration>>,

    /// Inject a fault at random points of every connection: on average every BYTES forwarded
    /// (`64KiB`) or every DUR (`2s`).
    #[arg(long, value_name = "BYTES|DUR", value_parser = parse_mean, group = "cuts")]
    cut_every: Option<Trigger>,

    /// Inject a fault at these points of every connection: BYTES forwarded or DUR after it was
    /// accepted, comma-separated (`100000,10s`).
    #[arg(long, value_name = "BYTES|DUR,...", value_parser = parse_trigger,
          value_delimiter = ',', group = "cuts")]
    cut_at: Vec<Trigger>,

    /// Which fault: `fin` (orderly close), `rst` (reset), `blackhole` (swallow everything,
    /// close nothing: a vanished peer), `stall:DUR` (freeze, then carry on; `stall` alone:
    /// freeze for good), a comma-separated list to draw from, or `mix` (fin, rst, blackhole).
    #[arg(long, value_name = "KIND", default_value = "mix", value_parser = parse_faults,
          requires = "cuts")]
    fault: FaultMix,

    /// Stop (as on Ctrl-C) after this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    max_duration: Option<Duration>,

    /// Print every frame passing through, both directions, decoded with this framing spec
    /// (`length:4`, `line`, `magic:cafe`; as for `decode`), with its time, connection and
    /// direction, on stdout. Each direction has its own decoder, bounded by the spec's `max`.
    #[arg(long, value_name = "SPEC", value_parser = crate::parse_framing)]
    show: Option<Framing>,

    /// How `--show` prints each frame.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, requires = "show")]
    show_format: OutputFormat,

    /// Print only the listening line, faults and the totals.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: ProxyArgs) -> Result<ExitCode> {
    let config = ChaosConfig {
        seed: args
            .seed
            .unwrap_or_else(|| u64::from(rand::random::<u32>())),
        split: args.split.clone(),
        coalesce: args.coalesce,
        delay: args.delay.clone(),
        faults: match (&args.cut_every, args.cut_at.as_slice()) {
            (Some(every), _) => FaultPlan::Random {
                every: *every,
                faults: args.fault.clone(),
            },
            (None, []) => FaultPlan::None,
            (None, points) => FaultPlan::Scheduled(
                points
                    .iter()
                    .map(|&at| ScheduledFault::new(at, args.fault.clone()))
                    .collect(),
            ),
        },
        ..ChaosConfig::default()
    };
    if let Err(e) = config.validate() {
        eprintln!("framelink: {e}");
        return Ok(ExitCode::from(2));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let code = runtime.block_on(proxy(args, config));
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

async fn proxy(args: ProxyArgs, config: ChaosConfig) -> Result<ExitCode> {
    let mut interrupt = Interrupt::new();
    let seed = config.seed;
    let chaos = describe(&config);
    let tap = args
        .show
        .clone()
        .map(|framing| Arc::new(FrameTap::new(framing, args.show_format)));
    let proxy = match &tap {
        Some(tap) => {
            ChaosProxy::start_with_tap(args.listen.as_str(), &args.upstream, config, tap.clone())
                .await
        }
        None => ChaosProxy::start(args.listen.as_str(), &args.upstream, config).await,
    }
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut events = proxy.events();
    eprintln!(
        "[proxy] listening on {} -> {} (seed {seed})",
        proxy.local_addr(),
        args.upstream
    );
    eprintln!("[proxy] {chaos}");
    if let Some(framing) = &args.show {
        eprintln!("[proxy] showing frames as {framing}");
    }

    let why = {
        let stop = interrupt.recv_or_after(args.max_duration);
        tokio::pin!(stop);
        let mut missed = 0;
        loop {
            tokio::select! {
                why = &mut stop => break why,
                event = events.next() => {
                    let Some(event) = event else { break "the proxy stopped" };
                    if events.missed() > missed {
                        eprintln!(
                            "[proxy] ({} events not shown: too many)",
                            events.missed() - missed
                        );
                        missed = events.missed();
                    }
                    let show = !args.quiet
                        || matches!(
                            event,
                            ChaosEvent::Fault { .. } | ChaosEvent::UpstreamFailed { .. }
                        );
                    if show {
                        eprintln!("[proxy] {event}");
                    }
                }
            }
        }
    };
    let stats = proxy.stats();
    let faults = stats.faults;
    eprintln!(
        "[proxy] {why}: {} connection(s) ({} open, {} upstream failures), {} bytes up, {} bytes \
         down, {} writes ({} split pieces), {} bytes discarded; faults: {} fin, {} rst, {} \
         blackhole, {} stall (seed {seed})",
        stats.connections,
        stats.open,
        stats.upstream_failures,
        stats.bytes_to_upstream,
        stats.bytes_to_downstream,
        stats.writes,
        stats.pieces,
        stats.bytes_discarded,
        faults.fin,
        faults.rst,
        faults.blackhole,
        faults.stall,
    );
    if tokio::time::timeout(Duration::from_secs(2), proxy.shutdown())
        .await
        .is_err()
    {
        eprintln!("[proxy] connections still closing after 2s: exiting anyway");
    }
    if let Some(tap) = tap {
        tap.finish();
    }
    Ok(ExitCode::SUCCESS)
}

/// One line saying what the proxy does to the links.
fn describe(config: &ChaosConfig) -> String {
    let mut parts = Vec::new();
    if let Some(split) = &config.split {
        parts.push(format!("split {}..{} bytes", split.start(), split.end()));
    }
    if let Some(hold) = config.coalesce {
        parts.push(format!("coalesce {}", show_duration(hold)));
    }
    if let Some(delay) = &config.delay {
        parts.push(format!(
            "delay {}..{}",
            show_duration(*delay.start()),
            show_duration(*delay.end())
        ));
    }
    match &config.faults {
        FaultPlan::None => {}
        FaultPlan::Random { every, faults } => {
            parts.push(format!("{faults} every ~{}", show_trigger(every)));
        }
        FaultPlan::Scheduled(list) => {
            let points: Vec<String> = list.iter().map(|s| show_trigger(&s.at)).collect();
            let kinds = list
                .first()
                .map(|s| s.fault.to_string())
                .unwrap_or_default();
            parts.push(format!("{kinds} at {}", points.join(", ")));
        }
        _ => {}
    }
    if parts.is_empty() {
        "forwarding faithfully (no chaos options)".into()
    } else {
        format!("chaos: {}", parts.join(", "))
    }
}

fn show_trigger(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Bytes(n) => match show_size(*n) {
            plain if plain.bytes().all(|b| b.is_ascii_digit()) => format!("{plain} bytes"),
            with_unit => with_unit,
        },
        Trigger::After(d) => show_duration(*d),
        _ => format!("{trigger}"),
    }
}

/// `65536` -> `64KiB`; sizes that are not whole units stay in bytes.
fn show_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// `100000`, `64KiB`, `1MiB`, `2G`: a byte count (`B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A byte count or a duration.
fn parse_trigger(text: &str) -> Result<Trigger, String> {
    if let Some(n) = parse_size(text) {
        return Ok(Trigger::Bytes(n));
    }
    parse_duration(text).map(Trigger::After).map_err(|_| {
        format!("{text:?} is neither a byte count (65536, 64KiB) nor a duration (500ms, 2s)")
    })
}

fn parse_mean(text: &str) -> Result<Trigger, String> {
    match parse_trigger(text)? {
        Trigger::Bytes(0) => Err("must be more than 0 bytes".into()),
        Trigger::After(d) if d.is_zero() => Err("must be longer than 0".into()),
        t => Ok(t),
    }
}

/// `MIN..MAX` (`..=` too) or `N`.
fn split_range(text: &str) -> (&str, Option<&str>) {
    match text.split_once("..") {
        Some((lo, hi)) => (lo.trim(), Some(hi.trim_start_matches('=').trim())),
        None => (text.trim(), None),
    }
}

fn parse_split(text: &str) -> Result<RangeInclusive<usize>, String> {
    let bad = || format!("bad split {text:?} (expected MIN..MAX bytes, e.g. 1..64, or N)");
    let number = |s: &str| s.parse::<usize>().map_err(|_| bad());
    let (lo, hi) = match split_range(text) {
        (lo, Some(hi)) => (number(lo)?, number(hi)?),
        (n, None) => (number(n)?, number(n)?),
    };
    if lo == 0 || lo > hi {
        return Err(format!(
            "bad split {text:?}: pieces must be at least 1 byte, MIN <= MAX"
        ));
    }
    Ok(lo..=hi)
}

fn parse_delay(text: &str) -> Result<RangeInclusive<Duration>, String> {
    let (lo, hi) = match split_range(text) {
        (d, None) => {
            let d = parse_duration(d)?;
            return Ok(d..=d);
        }
        (lo, Some(hi)) => (lo, hi),
    };
    let max = parse_duration(hi)?;
    // `5..50ms`: a bare number takes the unit of the maximum.
    let min = parse_duration(lo).or_else(|e| {
        let unit = hi.trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        let bare = !lo.is_empty() && lo.chars().all(|c| c.is_ascii_digit() || c == '.');
        if bare {
            parse_duration(&format!("{lo}{unit}"))
        } else {
            Err(e)
        }
    })?;
    if min > max {
        return Err(format!("bad delay {text:?}: MIN is above MAX"));
    }
    Ok(min..=max)
}

/// `fin`, `rst`, `blackhole`, `stall`, `stall:DUR`, `mix`, or a comma-separated list of them.
fn parse_faults(text: &str) -> Result<FaultMix, String> {
    let mut choices = Vec::new();
    for kind in text.split(',').map(str::trim) {
        match kind {
            "fin" => choices.push((Fault::Fin, 1)),
            "rst" | "reset" => choices.push((Fault::Rst, 1)),
            "blackhole" => choices.push((Fault::Blackhole, 1)),
            "stall" => choices.push((Fault::Stall(None), 1)),
            "mix" => choices.extend(FaultMix::standard().choices().iter().copied()),
            other => match other.strip_prefix("stall:") {
                Some(d) => choices.push((Fault::Stall(Some(parse_duration(d)?)), 1)),
                None => {
                    return Err(format!(
                        "unknown fault {other:?} (expected fin, rst, blackhole, stall[:DUR] or mix)"
                    ))
                }
            },
        }
    }
    Ok(FaultMix::new(choices))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn values() {
        assert_eq!(parse_split("1..3"), Ok(1..=3));
        assert_eq!(parse_split("1..=64"), Ok(1..=64));
        assert_eq!(parse_split("8"), Ok(8..=8));
        for bad in ["0..3", "5..2", "a..b", "", "1..", "-1..2"] {
            assert!(parse_split(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_delay("0..20ms"), Ok(Duration::ZERO..=ms(20)));
        assert_eq!(parse_delay("5..50ms"), Ok(ms(5)..=ms(50)));
        assert_eq!(parse_delay("1ms..1s"), Ok(ms(1)..=ms(1000)));
        assert_eq!(parse_delay("20ms"), Ok(ms(20)..=ms(20)));
        assert!(parse_delay("50ms..5ms").is_err());
        assert!(parse_delay("5..50").is_err());
        assert_eq!(parse_trigger("100000"), Ok(Trigger::Bytes(100_000)));
        assert_eq!(parse_trigger("64KiB"), Ok(Trigger::Bytes(65_536)));
        assert_eq!(parse_trigger("2M"), Ok(Trigger::Bytes(2 << 20)));
        assert_eq!(parse_trigger("1m"), Ok(Trigger::After(ms(60_000))));
        assert_eq!(parse_trigger("1.5s"), Ok(Trigger::After(ms(1500))));
        assert!(parse_trigger("lots").is_err());
        assert!(parse_mean("0").is_err());
        assert_eq!(show_size(65_536), "64KiB");
        assert_eq!(show_size(100_000), "100000");
        assert_eq!(parse_faults("mix"), Ok(FaultMix::standard()));
        assert_eq!(
            parse_faults("stall:500ms, rst"),
            Ok(FaultMix::new([
                (Fault::Stall(Some(ms(500))), 1),
                (Fault::Rst, 1)
            ]))
        );
        assert!(parse_faults("explode").is_err());
        assert!(parse_faults("stall:soon").is_err());
    }
}
