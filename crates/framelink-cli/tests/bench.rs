//! `framelink bench` as a user runs it: short runs against the in-process servers, against a
//! `framelink serve` child process, and (`--framing`) against echo servers written here with the
//! standard library alone, one of them broken on purpose. Every run is bounded (killed after
//! `PATIENCE`), and every child is killed when its guard drops.

mod common;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
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

/// A clean run: something measured, nothing lost, reordered or altered, percentiles in order.
fn assert_clean(v: &Value) {
    assert!(num(v, "msgs_per_sec") > 0.0, "{v}");
    assert!(num(v, "mb_per_sec") > 0.0, "{v}");
    assert_eq!(num(v, "errors"), 0.0, "{v}");
    for key in [
        "lost",
        "out_of_order",
        "bad_length",
        "corrupt",
        "unexpected",
    ] {
        assert_eq!(num(v, key), 0.0, "{key}: {v}");
    }
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
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
    assert_eq!(runs[0]["mode"], "tcp");
    assert_eq!(runs[1]["mode"], "framelink");
    for run in &runs {
        assert_clean(run);
        assert_eq!(run["messages"], 20000, "{run}");
        assert_eq!(run["bytes"], 20000 * 256, "{run}");
        // The warm-up's messages went through too, but are not counted.
        assert!(num(run, "sent_total") >= 20000.0, "{run}");
    }
    assert_eq!(runs[1]["vs"]["baseline"], "tcp");
    assert!(runs[1]["vs"]["msgs_per_sec"].as_f64().unwrap() > 0.0);
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
    assert!(stdout.lines().any(|l| l.starts_with("tcp ")), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("framelink ")),
        "{stdout}"
    );
    assert!(stdout.contains("framelink/tcp: "), "{stdout}");
    assert!(!stdout.contains("raw"), "{stdout}");
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
        &["bench", "127.0.0.1:9", "--mode", "all"],
        &[
            "bench",
            "--mode",
            "framelink",
            "--tcp-addr",
            "127.0.0.1:9",
            "127.0.0.1:9",
        ],
        // Several servers, or named ones, are for --framing.
        &["bench", "127.0.0.1:9", "127.0.0.1:10"],
        &["bench", "a=127.0.0.1:9"],
        &["bench", "--framing", "length:4", "=127.0.0.1:9"],
        // --framing is its own mode.
        &["bench", "--framing", "length:4", "--mode", "both"],
        &[
            "bench",
            "--framing",
            "length:4",
            "--tcp-addr",
            "127.0.0.1:9",
            "127.0.0.1:9",
        ],
        &["bench", "--framing", "length:9"],
        // Messages the framing cannot carry, or too small for its text messages.
        &["bench", "--framing", "length:1", "--size", "300"],
        &["bench", "--framing", "line,max=100", "--size", "200"],
        &["bench", "--framing", "line", "--size", "8"],
        &["bench", "--framing", "fixed:4"],
        &["bench", "--framing", "fixed:64", "--size", "32"],
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
    let modes = ["tcp", "framelink", "framelink+sessions"];
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
        if *mode == "tcp" {
            assert!(summary.get("vs").is_none(), "{summary}");
            continue;
        }
        // From each round's own ratio, not from the medians.
        assert_eq!(summary["vs"]["baseline"], "tcp", "{summary}");
        let ratio = |run: &Value| run["vs"]["msgs_per_sec"].as_f64().unwrap();
        let (a, b) = (ratio(this_mode[0]), ratio(this_mode[1]));
        let (median, min, max) = spread(&summary["vs"], "msgs_per_sec");
        assert!(close(median, (a + b) / 2.0), "{summary}");
        assert_eq!((min, max), (a.min(b), a.max(b)), "{summary}");
        spread(&summary["vs"], "mb_per_sec");
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
    assert_eq!(stdout.matches("framelink/tcp: ").count(), 4, "{stdout}");
    let summary = stdout
        .split("\nsummary of 3 rounds: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert!(summary.lines().any(|l| l.starts_with("tcp ")), "{stdout}");
    let ratio = summary
        .lines()
        .find(|l| l.starts_with("framelink/tcp: "))
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

    // The tcp baseline against a server that echoes fixed-size frames: no framing on the wire.
    let (_tcp_server, tcp_addr) = serve(&["--framing", "fixed:64"]);
    let runs = json_runs(&[
        "bench", &tcp_addr, "--mode", "tcp", "--count", "5000", "--warmup", "0s", "--json",
    ]);
    assert_eq!(runs[0]["mode"], "tcp");
    assert_eq!(runs[0]["messages"], 5000);
    assert_clean(&runs[0]);
    // `raw`, its former name, still works.
    let runs = json_runs(&[
        "bench", &tcp_addr, "--mode", "raw", "--count", "100", "--warmup", "0s", "--json",
    ]);
    assert_eq!(runs[0]["mode"], "tcp");
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

// ---------------------------------------------------------------------------------------------
// `--framing`: echo servers that are not framelink's.

/// What a test echo server does wrong, to the 11th frame of every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Echoes the 12th frame before the 11th.
    Swap,
    /// Never echoes the 11th frame.
    Drop,
    /// Echoes the 11th frame twice.
    Repeat,
    /// Flips one bit in the middle of the 11th frame.
    Corrupt,
}

/// Which frame the faults hit (counting from 0).
const FAULTY_FRAME: usize = 10;

/// A thread-per-connection echo server on 127.0.0.1 written with the standard library alone;
/// `frames` serves one connection. Returns its address; it lives as long as the test process.
fn std_echo_server(frames: fn(TcpStream)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || frames(stream));
        }
    });
    addr
}

/// Reads 4-byte big-endian length-prefixed frames and echoes them (as Netty's
/// `LengthFieldBasedFrameDecoder(max, 0, 4, 0, 4)` + `LengthFieldPrepender(4)` would), doing
/// `fault` to the 11th. Writes are flushed once no more input is buffered.
fn length4_echo(stream: TcpStream, fault: Fault) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = BufWriter::new(stream);
    let mut held: Option<Vec<u8>> = None;
    let mut index = 0;
    loop {
        let mut header = [0u8; 4];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let mut frame = vec![0u8; u32::from_be_bytes(header) as usize];
        if reader.read_exact(&mut frame).is_err() {
            break;
        }
        let mut echo = |frame: &[u8]| {
            writer.write_all(&(frame.len() as u32).to_be_bytes())?;
            writer.write_all(frame)
        };
        let written = match (fault, index) {
            (Fault::Swap, FAULTY_FRAME) => {
                held = Some(frame);
                Ok(())
            }
            (Fault::Swap, i) if i == FAULTY_FRAME + 1 => {
                echo(&frame).and_then(|()| echo(&held.take().unwrap_or_default()))
            }
            (Fault::Drop, FAULTY_FRAME) => Ok(()),
            (Fault::Repeat, FAULTY_FRAME) => echo(&frame).and_then(|()| echo(&frame)),
            (Fault::Corrupt, FAULTY_FRAME) => {
                let middle = frame.len() / 2;
                frame[middle] ^= 0x10;
                echo(&frame)
            }
            _ => echo(&frame),
        };
        index += 1;
        if written.is_err() || (reader.buffer().is_empty() && writer.flush().is_err()) {
            return;
        }
    }
    let _ = writer.flush();
    let _ = writer.get_ref().shutdown(Shutdown::Write);
}

/// Echoes `\n`-terminated lines as they are.
fn line_echo(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = BufWriter::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if writer.write_all(&line).is_err()
            || (reader.buffer().is_empty() && writer.flush().is_err())
        {
            return;
        }
    }
    let _ = writer.flush();
    let _ = writer.get_ref().shutdown(Shutdown::Write);
}

#[test]
fn framing_length4_against_framelink_serve() {
    let (_server, addr) = serve(&["--framing", "length:4"]);
    let runs = json_runs(&[
        "bench",
        "--framing",
        "length:4",
        &addr,
        "-c",
        "2",
        "--count",
        "10000",
        "--warmup",
        "100ms",
        "--json",
    ]);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(run["mode"], "framing");
    assert_eq!(run["framing"], "length:4,strip=4,max=8MiB");
    assert_eq!(run["server"], addr.as_str());
    assert_eq!(run["name"], addr.as_str());
    assert_eq!(run["wire_bytes"], 68);
    assert_eq!(run["messages"], 10000);
    assert_clean(run);

    // Large messages, several batches in flight.
    let runs = json_runs(&[
        "bench",
        "--framing",
        "length:4",
        &addr,
        "--size",
        "64KiB",
        "--count",
        "300",
        "--warmup",
        "0s",
        "--window",
        "256KiB",
        "--json",
    ]);
    assert_eq!(runs[0]["bytes"], 300 * 65536);
    assert_eq!(runs[0]["wire_bytes"], 65540);
    assert_clean(&runs[0]);
}

#[test]
fn framing_line_against_a_line_echo_server() {
    let addr = std_echo_server(line_echo);
    let out = framelink(&[
        "bench",
        "--framing",
        "line",
        &addr,
        "-c",
        "3",
        "--size",
        "100",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("framing line,max=64KiB (101 bytes a message on the wire)"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&addr))
        .unwrap_or_else(|| panic!("no row for {addr}: {stdout}"));
    assert!(row.trim_end().ends_with(" 0"), "errors: {row}");

    // CRLF line endings from the encoder, 16-byte messages (the timestamp alone, as text).
    let runs = json_runs(&[
        "bench",
        "--framing",
        "line,crlf",
        &addr,
        "--size",
        "16",
        "--count",
        "2000",
        "--warmup",
        "0s",
        "--json",
    ]);
    assert_eq!(runs[0]["wire_bytes"], 18);
    assert_clean(&runs[0]);
}

#[test]
fn framing_compares_servers_round_by_round() {
    let (_server, framelink_addr) = serve(&["--framing", "length:4"]);
    let std_addr = std_echo_server(|stream| length4_echo(stream, Fault::None));
    let named = [
        format!("framelink={framelink_addr}"),
        format!("std={std_addr}"),
    ];
    let lines = json_runs(&[
        "bench",
        "--framing",
        "length:4",
        &named[0],
        &named[1],
        "--rounds",
        "2",
        "--count",
        "3000",
        "--warmup",
        "0s",
        "--json",
    ]);
    assert_eq!(lines.len(), 6, "{lines:?}");
    let (runs, summaries) = lines.split_at(4);
    for (i, run) in runs.iter().enumerate() {
        let (name, addr) = [("framelink", &framelink_addr), ("std", &std_addr)][i % 2];
        assert_eq!(run["name"], name, "{run}");
        assert_eq!(run["server"], addr.as_str(), "{run}");
        assert_eq!(run["round"], i / 2 + 1, "{run}");
        assert_clean(run);
        if name == "std" {
            assert_eq!(run["vs"]["baseline"], "framelink", "{run}");
        } else {
            assert!(run.get("vs").is_none(), "{run}");
        }
    }
    assert_eq!(summaries[0]["name"], "framelink");
    assert_eq!(summaries[1]["name"], "std");
    assert_eq!(summaries[1]["vs"]["baseline"], "framelink");
    spread(&summaries[1]["vs"], "msgs_per_sec");
}

/// A run against a length-prefixed echo server that does `fault`: it must fail (exit status 1)
/// and say what came back wrong. Returns the JSON report and the table.
fn broken_run(fault: Fault) -> (Value, String) {
    let addr = match fault {
        Fault::None => unreachable!("a broken server"),
        Fault::Swap => std_echo_server(|stream| length4_echo(stream, Fault::Swap)),
        Fault::Drop => std_echo_server(|stream| length4_echo(stream, Fault::Drop)),
        Fault::Repeat => std_echo_server(|stream| length4_echo(stream, Fault::Repeat)),
        Fault::Corrupt => std_echo_server(|stream| length4_echo(stream, Fault::Corrupt)),
    };
    let args = [
        "bench",
        "--framing",
        "length:4",
        &addr,
        "--count",
        "1000",
        "--warmup",
        "0s",
    ];
    let out = framelink(&[&args[..], &["--json"]].concat());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{fault:?}: {}",
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(num(&report, "errors") > 0.0, "{fault:?}: {report}");
    let out = framelink(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{fault:?}: {}",
        text(&out.stderr)
    );
    (report, text(&out.stdout))
}

#[test]
fn framing_catches_a_swapped_echo() {
    let (report, table) = broken_run(Fault::Swap);
    // 11 before 10, then 10 where 12 was due, then 12 where 11 was due.
    assert_eq!(report["out_of_order"], 3, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["sent_total"], report["received_total"], "{report}");
    assert_eq!(
        report["problems"][0],
        "connection #0: echo 11 is message 11, expected message 10 (an echo swapped, repeated \
         or missing)",
        "{report}"
    );
    assert!(
        table.contains("3 out of order, 0 wrong length, 0 wrong content, 0 lost, 0 unexpected"),
        "{table}"
    );
    assert!(
        table.contains("echo 11 is message 11, expected message 10"),
        "{table}"
    );
}

#[test]
fn framing_catches_a_repeated_echo() {
    let (report, _) = broken_run(Fault::Repeat);
    assert_eq!(report["unexpected"], 1, "{report}");
    assert_eq!(report["out_of_order"], 1, "{report}");
    assert_eq!(
        num(&report, "received_total"),
        num(&report, "sent_total") + 1.0,
        "{report}"
    );
    assert_eq!(
        report["problems"][0],
        "connection #0: echo 12 is message 10, expected message 11 (an echo swapped, repeated \
         or missing)",
        "{report}"
    );
}

#[test]
fn framing_catches_an_altered_echo() {
    let (report, table) = broken_run(Fault::Corrupt);
    assert_eq!(report["corrupt"], 1, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    // The 64-byte message's byte 32 (the frame's middle) is filler.
    assert_eq!(
        report["problems"][0],
        "connection #0: echo 11: byte 32 differs from what this connection sent",
        "{report}"
    );
    assert!(table.contains("1 wrong content"), "{table}");
}

/// Slow: a missing echo is only known to be lost once the drain timeout (10 s) has passed.
#[test]
fn framing_catches_a_dropped_echo() {
    let (report, table) = broken_run(Fault::Drop);
    assert_eq!(report["lost"], 1, "{report}");
    assert_eq!(
        num(&report, "received_total"),
        num(&report, "sent_total") - 1.0,
        "{report}"
    );
    assert_eq!(
        report["problems"][0],
        "connection #0: echo 11 is message 11, expected message 10 (an echo swapped, repeated \
         or missing)",
        "{report}"
    );
    assert_eq!(
        report["connection_errors"][0],
        "connection #0: echoes still missing 10s after the last send",
        "{report}"
    );
    assert!(table.contains("1 lost"), "{table}");
}
