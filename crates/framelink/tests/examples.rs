//! Runs the examples of `framelink` and `framelink-proto` that end on their own, and the echo
//! server with its client, and checks what they print and their exit status.
//!
//! The example binaries are found next to this test's own (`target/<profile>/examples/`),
//! where `cargo test` builds them (`cargo test --workspace` builds every example before it runs
//! a test). A binary that is missing, or older than its source file (`cargo test -p framelink
//! --test examples` builds no example), is built here with `cargo build --example`: no example
//! is skipped.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// No example takes nearly this long; a hung one is killed and fails its test.
const LIMIT: Duration = Duration::from_secs(40);

/// `target/<profile>`: this test binary lives in its `deps/` directory.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// The binary of example `name` of `package`, built first with the profile this test was
/// built with if it is missing or older than its source.
fn example(package: &str, name: &str) -> PathBuf {
    let dir = profile_dir();
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(package)
        .join("examples")
        .join(format!("{name}.rs"));
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (modified(&path), modified(&source)) {
        (Some(built), Some(written)) => built >= written,
        _ => false,
    };
    if fresh {
        return path;
    }
    let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "--quiet",
        "-p",
        package,
        "--example",
        name,
    ]);
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    // Build into the directory this test runs from, wherever the target directory is.
    if let Some(target) = dir.parent() {
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            cargo.env("CARGO_TARGET_DIR", target);
        }
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "cargo build --example {name} failed");
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Kills the child when dropped (a failed assertion must not leave a server running).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `program` with `args` to completion (killed after [`LIMIT`]); returns its output.
fn run(program: &PathBuf, args: &[&str]) -> Output {
    let mut child = Guard(
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the example starts"),
    );
    let stdout = drain(child.0.stdout.take().expect("piped stdout"));
    let stderr = drain(child.0.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("the example's status") {
            break status;
        }
        // The guard kills the example when this fails.
        assert!(
            started.elapsed() < LIMIT,
            "{} did not finish within {LIMIT:?}",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Reads a pipe to its end on a thread (so a chatty child never blocks on a full pipe).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Asserts the example exited with status 0 and printed `expected`; returns its stdout.
fn check(name: &str, output: &Output, expected: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(expected),
        "{name}: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    stdout
}

#[test]
fn blocking_driver_talks_to_its_own_server() {
    let bin = example("framelink-proto", "blocking_driver");
    let output = run(&bin, &[]);
    let stdout = check("blocking_driver", &output, "[client] OK: 3 echoes");
    assert!(
        stdout.contains("[server] closed with Normal (by the client: true)"),
        "{stdout}"
    );
}

#[test]
fn raw_keepalive_matches_pongs() {
    let bin = example("framelink", "raw_keepalive");
    let output = run(&bin, &[]);
    check(
        "raw_keepalive",
        &output,
        "[client] OK: 3 echoes, 3 heartbeats",
    );
}

#[test]
fn sessions_deliver_exactly_once_across_cuts() {
    let bin = example("framelink", "sessions");
    let output = run(&bin, &[]);
    let stdout = check("sessions", &output, "every one exactly once and in order");
    assert!(
        stdout.contains("session resumed"),
        "no resumption shown:\n{stdout}"
    );
}

/// The client starts before the server (it retries until the server is up), then both the
/// tokio client and the blocking driver talk to the echo server.
#[test]
fn echo_client_reconnects_until_the_server_is_up() {
    let server_bin = example("framelink", "echo_server");
    let client_bin = example("framelink", "echo_client");
    let driver_bin = example("framelink-proto", "blocking_driver");

    // A free port, released for the server to take a moment after the client starts.
    let addr = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("its address").to_string()
    };
    let (client_done, client_output) = mpsc::channel();
    let client_addr = addr.clone();
    std::thread::spawn(move || {
        let _ = client_done.send(run(&client_bin, &[&client_addr]));
    });
    std::thread::sleep(Duration::from_millis(300));

    let mut server = Guard(
        Command::new(&server_bin)
            .arg(&addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("echo_server starts"),
    );
    let mut lines = BufReader::new(server.0.stdout.take().expect("piped stdout")).lines();
    let first = lines.next().expect("a first line").expect("text");
    assert_eq!(first, format!("listening on {addr}"));
    // Keep draining the server's output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    let started = Instant::now();
    let output = client_output
        .recv_timeout(LIMIT)
        .expect("echo_client finished");
    let stdout = check(
        "echo_client",
        &output,
        "[client] OK: 5 of 5 messages echoed",
    );
    assert!(stdout.contains("attempt 1 failed"), "{stdout}");
    assert!(stdout.contains("[client] echo: message 5 of 5"), "{stdout}");
    assert!(started.elapsed() < LIMIT);

    let output = run(&driver_bin, &[&addr]);
    check("blocking_driver", &output, "[client] OK: 3 echoes");
}
