//! `framelink cert`, and `serve` / `connect` over TLS and mutual TLS as a user runs them: real
//! processes over loopback TCP, with the certificates `framelink cert` writes. A standard TLS
//! client (Python's `ssl` module) talks to a raw-mode TLS server made this way.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{serve, PATIENCE};

/// What a finished `framelink` run printed.
struct Out {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `framelink ARGS` with `stdin` to the end, within [`PATIENCE`].
fn run(args: &[&str], stdin: &[u8]) -> Out {
    let output = common::run(args, stdin, PATIENCE);
    Out {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `framelink cert --out DIR` in a fresh directory and returns it.
fn certs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let output = run(&["cert", "--out", out.to_str().unwrap()], b"");
    assert!(output.status.success(), "{}", output.stderr);
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(out.join(name).is_file(), "{name} missing");
        assert!(
            output.stdout.contains(name),
            "{name} not printed: {}",
            output.stdout
        );
    }
    (dir, out)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[test]
fn cert_refuses_to_overwrite_without_force() {
    let (_dir, out) = certs();
    let again = run(&["cert", "--out", out.to_str().unwrap()], b"");
    assert!(!again.status.success());
    assert!(again.stderr.contains("exists"), "{}", again.stderr);
    let forced = run(&["cert", "--out", out.to_str().unwrap(), "--force"], b"");
    assert!(forced.status.success(), "{}", forced.stderr);
}

#[test]
fn connect_echoes_over_tls_and_mutual_tls() {
    let (_dir, out) = certs();
    let (cert, key, ca) = (
        path(&out, "server.pem"),
        path(&out, "server.key"),
        path(&out, "ca.pem"),
    );
    let (client_cert, client_key) = (path(&out, "client.pem"), path(&out, "client.key"));

    // TLS, verified for localhost.
    let (_server, addr) = serve(&["--tls-cert", &cert, "--tls-key", &key]);
    let port = addr.rsplit(':').next().unwrap();
    let target = format!("localhost:{port}");
    let output = run(&["connect", &target, "--tls-ca", &ca], b"a\nb\n");
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(output.stdout, "a\nb\n", "{}", output.stderr);
    assert!(
        output.stderr.contains("TLS for localhost"),
        "{}",
        output.stderr
    );

    // Mutual TLS: the server names the client; a client without a certificate is refused.
    let (server, addr) = serve(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ]);
    let output = run(
        &[
            "connect",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
        ],
        b"hello\n",
    );
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(output.stdout, "hello\n");
    let err = server.wait_stderr("+conn line", |e| e.contains("+conn #0"));
    assert!(err.contains("client CN=framelink-client"), "{err}");
    let output = run(
        &["connect", &addr, "--tls-ca", &ca, "--no-reconnect"],
        b"x\n",
    );
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("client certificate is required"),
        "{}",
        output.stderr
    );
    let err = server.wait_stderr("failure line", |e| e.contains("none was presented"));
    assert!(err.contains("TLS with client 127.0.0.1:"), "{err}");
}

#[test]
fn raw_mode_connect_over_tls_and_unknown_ca() {
    let (_dir, out) = certs();
    let (cert, key, ca) = (
        path(&out, "server.pem"),
        path(&out, "server.key"),
        path(&out, "ca.pem"),
    );
    let (_server, addr) = serve(&["--framing", "line", "--tls-cert", &cert, "--tls-key", &key]);
    let output = run(
        &["connect", &addr, "--framing", "line", "--tls-ca", &ca],
        b"one\ntwo\n",
    );
    assert!(output.status.success(), "{}", output.stderr);
    assert_eq!(output.stdout, "one\ntwo\n", "{}", output.stderr);

    // Trusting another development CA fails, and says why.
    let (_dir2, other) = certs();
    let output = run(
        &[
            "connect",
            &addr,
            "--framing",
            "line",
            "--tls-ca",
            &path(&other, "ca.pem"),
            "--no-reconnect",
        ],
        b"x\n",
    );
    assert!(!output.status.success());
    assert!(output.stderr.contains("unknown CA"), "{}", output.stderr);
}

#[test]
fn bad_certificate_files_are_named() {
    let (_dir, out) = certs();
    let missing = path(&out, "missing.pem");
    let output = run(
        &[
            "serve",
            "127.0.0.1:0",
            "--tls-cert",
            &missing,
            "--tls-key",
            &path(&out, "server.key"),
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(2), "{}", output.stderr);
    assert!(
        output.stderr.contains("missing.pem: cannot read"),
        "{}",
        output.stderr
    );
    let output = run(
        &[
            "serve",
            "127.0.0.1:0",
            "--tls-cert",
            &path(&out, "server.pem"),
            "--tls-key",
            &path(&out, "client.key"),
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(2), "{}", output.stderr);
    assert!(
        output.stderr.contains("does not match"),
        "{}",
        output.stderr
    );
}

#[test]
fn python_ssl_talks_to_a_raw_mode_tls_server() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: skipped");
        return;
    }
    let (_dir, out) = certs();
    let (cert, key, ca) = (
        path(&out, "server.pem"),
        path(&out, "server.key"),
        path(&out, "ca.pem"),
    );
    let (_server, addr) = serve(&["--framing", "line", "--tls-cert", &cert, "--tls-key", &key]);
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let script = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"ping from python\n")
        got = b""
        while not got.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            got += chunk
        print(tls.version(), got.decode().strip())
"#;
    let mut child = python(script, &port, &ca);
    let output = child.wait_with_output_bounded();
    assert!(output.0, "{}\n{}", output.1, output.2);
    assert!(output.1.contains("ping from python"), "{}", output.1);
}

/// A `python3 -c SCRIPT PORT CA` child.
struct Python(std::process::Child);

fn python(script: &str, port: &str, ca: &str) -> Python {
    Python(
        Command::new("python3")
            .args(["-c", script, port, ca])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

impl Python {
    /// Waits at most [`PATIENCE`] (then kills it): (success, stdout, stderr).
    fn wait_with_output_bounded(&mut self) -> (bool, String, String) {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut stdout = String::new();
                let mut stderr = String::new();
                use std::io::Read;
                self.0
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut stdout)
                    .unwrap();
                self.0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status.success(), stdout, stderr);
            }
            if start.elapsed() > PATIENCE {
                let _ = self.0.kill();
                panic!("python3 still running after {PATIENCE:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
