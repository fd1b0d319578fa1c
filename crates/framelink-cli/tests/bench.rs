//! `framelink bench` as a user runs it: short runs against the in-process servers and against a
//! `framelink serve` child process. Every run is bounded (killed after `PATIENCE`), and every
//! child is killed when its guard drops.

mod common;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

/// Far more than any of these runs needs (a few seconds at most, in a debug build).
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `framelink ARGS` to the end (killing it after `PATIENCE`).
fn framelink(args: &[&str]) -> Output {
    common::run(args, b"", PATIENCE)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON objects of a `--json` run that must have succeeded.
fn json_runs(args: &[&str]) -> Vec<Value> {
    let out = framelink(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "framelink {}: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        args.join(" "),
        out.status
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

fn latency(v: &Value, key: &str) -> f64 {
    v["latency_us"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("latency_us.{key} missing: {v}"))
}

/// A clean run: something measured, nothing lost or reordered, percentiles in order.
fn assert_clean(v: &Value) {
    assert!(num(v, "msgs_per_sec") > 0.0, "{v}");
    assert!(num(v, "mb_per_sec") > 0.0, "{v}");
    assert_eq!(num(v, "errors"), 0.0, "{v}");
    assert_eq!(num(v, "lost"), 0.0, "{v}");
    assert_eq!(num(v, "out_of_order"), 0.0, "{v}");
    assert_eq!(v["sent_total"], v["received_total"], "{v}");
    let (p50, p99, p999, max) = (
        latency(v, "p50"),
        latency(v, "p99"),
        latency(v, "p999"),
        latency(v, "max"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{v}");
}

#[test]
fn framelink_in_process_for_a_duration() {
    let runs = json_runs(&["bench", "--duration", "1s", "--warmup", "0s", "--json"]);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["mode"], "framelink");
    assert_eq!(run["server"], "in-process");
    assert!(
        run.get("round").is_none(),
        "one round: as before --rounds: {run}"
    );
    assert_clean(run);
    assert_eq!(
        run["messages"], run["sent_total"],
        "no warm-up: all counted"
    );
    let elapsed = num(run, "elapsed_s");
    assert!((0.9..3.0).contains(&elapsed), "{run}");
}

#[test]
fn both_modes_measure_the_same_count() {
    let runs = json_runs(&[
        "bench",
        "--mode",
        "both",
        "--count",
        "20000",
        "--size",
        "256",
        "--warmup",
        "200ms",
        "--connections",
        "2",
        "--json",
    ]);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["mode"], "raw");
    assert_eq!(runs[1]["mode"], "framelink");
    for run in &runs {
        assert_clean(run);
        assert_eq!(run["messages"], 20000, "{run}");
        assert_eq!(run["bytes"], 20000 * 256, "{run}");
        // The warm-up's messages went through too, but are not counted.
        assert!(num(run, "sent_total") >= 20000.0, "{run}");
    }
    assert!(runs[1]["vs_raw"]["msgs_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_fixed_rate_is_kept() {
    let runs = json_runs(&[
        "bench",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "-c",
        "2",
        "--json",
    ]);
    let run = &runs[0];
    assert_clean(run);
    let rate = num(run, "msgs_per_sec");
    assert!((1400.0..=2600.0).contains(&rate), "{rate} msgs/s: {run}");
    assert!(run["max_send_lag_us"].is_number(), "{run}");
}

#[test]
fn human_table_with_the_overhead_ratio() {
    let out = framelink(&[
        "bench", "--mode", "both", "--count", "2000", "--warmup", "0s", "--size", "16",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("msgs/s"), "{stdout}");
    assert!(stdout.contains("p99.9"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("raw ")), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("framelink ")),
        "{stdout}"
    );
    assert!(stdout.contains("framelink/raw: "), "{stdout}");
    // One round: no round headings, no summary.
    assert!(!stdout.contains("round"), "{stdout}");
    assert!(!stdout.contains("summary"), "{stdout}");
    // Not a terminal: no progress bar.
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["bench", "--size", "4"][..],
        &["bench", "--size", "5MiB"],
        &["bench", "--rate", "0"],
        &["bench", "--count", "10", "--duration", "1s"],
        &["bench", "127.0.0.1:9", "--mode", "both"],
        &[
            "bench",
            "--mode",
            "framelink",
            "--raw-addr",
            "127.0.0.1:9",
            "127.0.0.1:9",
        ],
    ] {
        let out = framelink(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `v[key]` as median, min and max, with the median in range.
fn spread(v: &Value, key: &str) -> (f64, f64, f64) {
    let figure = |part: &str| {
        v[key][part]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}.{part} missing: {v}"))
    };
    let (median, min, max) = (figure("median"), figure("min"), figure("max"));
    assert!(min <= median && median <= max, "{key}: {v}");
    (median, min, max)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

#[test]
fn rounds_interleave_the_modes_and_summarise_them() {
    let lines = json_runs(&[
        "bench", "--mode", "all", "--rounds", "2", "--count", "2000", "--warmup", "0s", "--json",
    ]);
    assert_eq!(lines.len(), 9, "{lines:?}");
    let (runs, summaries) = lines.split_at(6);
    let modes = ["raw", "framelink", "framelink+sessions"];
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["mode"], modes[i % 3], "{run}");
        assert_eq!(run["round"], i / 3 + 1, "{run}");
        assert!(run.get("summary").is_none(), "{run}");
        assert_eq!(run["messages"], 2000, "{run}");
        assert_clean(run);
    }
    for (mode, summary) in modes.iter().zip(summaries) {
        assert_eq!(summary["summary"], true, "{summary}");
        assert_eq!(summary["mode"], *mode, "{summary}");
        assert_eq!(summary["rounds"], 2, "{summary}");
        let this_mode: Vec<&Value> = runs.iter().filter(|r| r["mode"] == *mode).collect();
        // Two rounds: the median is the mean of the two, min and max are the two.
        for key in ["msgs_per_sec", "mb_per_sec"] {
            let (a, b) = (num(this_mode[0], key), num(this_mode[1], key));
            let (median, min, max) = spread(summary, key);
            assert!(close(median, (a + b) / 2.0), "{key}: {summary}");
            assert_eq!((min, max), (a.min(b), a.max(b)), "{key}: {summary}");
        }
        for key in ["p50", "p99"] {
            let (a, b) = (latency(this_mode[0], key), latency(this_mode[1], key));
            assert!(
                close(latency(summary, key), (a + b) / 2.0),
                "{key}: {summary}"
            );
        }
        if *mode == "raw" {
            assert!(summary.get("vs_raw").is_none(), "{summary}");
            continue;
        }
        // From each round's own ratio, not from the medians.
        let ratio = |run: &Value| run["vs_raw"]["msgs_per_sec"].as_f64().unwrap();
        let (a, b) = (ratio(this_mode[0]), ratio(this_mode[1]));
        let (median, min, max) = spread(&summary["vs_raw"], "msgs_per_sec");
        assert!(close(median, (a + b) / 2.0), "{summary}");
        assert_eq!((min, max), (a.min(b), a.max(b)), "{summary}");
        spread(&summary["vs_raw"], "mb_per_sec");
    }
}

#[test]
fn rounds_table_shows_each_round_then_the_summary() {
    let out = framelink(&[
        "bench", "--mode", "both", "--rounds", "3", "--count", "2000", "--warmup", "0s",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let headings: Vec<&str> = stdout.lines().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(
        headings,
        ["round 1/3", "round 2/3", "round 3/3"],
        "{stdout}"
    );
    assert_eq!(stdout.matches("framelink/raw: ").count(), 4, "{stdout}");
    let summary = stdout
        .split("\nsummary of 3 rounds: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert!(summary.lines().any(|l| l.starts_with("raw ")), "{stdout}");
    let ratio = summary
        .lines()
        .find(|l| l.starts_with("framelink/raw: "))
        .unwrap_or_else(|| panic!("no summary ratio: {stdout}"));
    assert!(ratio.contains("x [") && ratio.contains("msgs/s"), "{ratio}");
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn rounds_are_one_to_a_hundred() {
    for rounds in ["0", "101", "many"] {
        let out = framelink(&["bench", "--rounds", rounds, "--count", "10"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rounds {rounds}: {stderr}");
        assert!(stderr.contains("--rounds"), "{stderr}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}

/// Ctrl-C: no further rounds; the rounds before the interrupted one are summarised.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_rounds_and_summarises_the_complete_ones() {
    let mut bench = common::framelink(&[
        "bench",
        "--rounds",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--json",
    ]);
    // A round takes a second and a bit: this lands in round 2 or 3 (round 1 if very busy).
    std::thread::sleep(Duration::from_millis(2500));
    bench.interrupt();
    let status = bench.wait(PATIENCE);
    let stdout = bench.stdout();
    assert!(status.success(), "{status:?}\n{stdout}\n{}", bench.stderr());
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let (summaries, runs): (Vec<&Value>, Vec<&Value>) =
        lines.iter().partition(|v| v["summary"] == true);
    assert!((1..10).contains(&runs.len()), "{stdout}");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["round"], i + 1, "{run}");
    }
    assert!(summaries.len() <= 1, "{stdout}");
    // The interrupted run is reported, not summarised (unless it had just ended).
    let complete = summaries.first().map_or(0, |summary| {
        spread(summary, "msgs_per_sec");
        summary["rounds"].as_u64().unwrap() as usize
    });
    assert!(
        complete + 1 == runs.len() || complete == runs.len(),
        "{stdout}"
    );
}

/// Starts `framelink serve 127.0.0.1:0 --quiet EXTRA`; returns it (killed on drop) and its
/// address.
fn serve(extra: &[&str]) -> (common::Proc, String) {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    common::serve(&args)
}

#[test]
fn against_a_framelink_serve_process() {
    let (server, addr) = serve(&[]);
    let runs = json_runs(&[
        "bench",
        &addr,
        "-c",
        "3",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--size",
        "1KiB",
        "--json",
    ]);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["server"], addr.as_str());
    assert_eq!(runs[0]["connections"], 3);
    assert_clean(&runs[0]);
    drop(server);

    // The raw baseline against a server that echoes fixed-size frames: no framing on the wire.
    let (_raw_server, raw_addr) = serve(&["--framing", "fixed:64"]);
    let runs = json_runs(&[
        "bench", &raw_addr, "--mode", "raw", "--count", "5000", "--warmup", "0s", "--json",
    ]);
    assert_eq!(runs[0]["mode"], "raw");
    assert_eq!(runs[0]["messages"], 5000);
    assert_clean(&runs[0]);
}

#[test]
fn refused_connection_is_an_error() {
    // Bound, then released: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = framelink(&["bench", &addr, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}
