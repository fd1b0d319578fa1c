//! What the CLI's integration tests share: running the real `framelink` binary as a child
//! process that is killed when its guard drops (also when an assertion fails), with its output
//! collected by threads and every wait bounded.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Generous bound for anything that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running `framelink` process: its output is collected by threads; killed on drop.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

pub fn framelink(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_framelink"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run framelink");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        collect(child.stdout.take().unwrap(), stdout.clone()),
        collect(child.stderr.take().unwrap(), stderr.clone()),
    ];
    Proc {
        name: format!("framelink {}", args.join(" ")),
        stdin: child.stdin.take(),
        child,
        stdout,
        stderr,
        readers,
    }
}

impl Proc {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn write(&mut self, input: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(input).unwrap();
        stdin.flush().unwrap();
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until stderr satisfies `done`; panics (killing the process) after `PATIENCE`.
    pub fn wait_stderr(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let err = self.stderr();
            if done(&err) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} on stderr within {PATIENCE:?}:\n{err}",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until stdout satisfies `done`; panics (killing the process) after `within`.
    pub fn wait_stdout(&self, what: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.stdout();
            if done(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} on stdout within {within:?}:\nstdout:\n{out}\nstderr:\n{}",
                self.name,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit (and its output to be collected); panics after `within`.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {within:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        status
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The address from the `listening on ADDR` line that `serve` and `proxy` print first
    /// (with the real port when they were given port 0).
    pub fn listening_addr(&self) -> String {
        let err = self.wait_stderr("listening address", |e| {
            e.split("listening on ")
                .nth(1)
                .is_some_and(|r| r.contains(' ') || r.contains('\n'))
        });
        let addr = err
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address after `listening on`")
            .to_string();
        assert!(!addr.ends_with(":0"), "{err}");
        addr
    }

    #[cfg(unix)]
    pub fn interrupt(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    }
}

/// Starts `framelink serve 127.0.0.1:0 EXTRA...` and returns it with the address it listens on.
pub fn serve(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["serve", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = framelink(&args);
    let addr = server.listening_addr();
    (server, addr)
}

/// Runs `framelink ARGS` with `stdin` as its input to the end; panics (killing it) if it is
/// still running after `within`.
pub fn run(args: &[&str], stdin: &[u8], within: Duration) -> Output {
    let mut proc = framelink(args);
    proc.write(stdin);
    proc.close_stdin();
    let status = proc.wait(within);
    let stdout = proc.stdout.lock().unwrap().clone();
    let stderr = proc.stderr.lock().unwrap().clone();
    Output {
        status,
        stdout,
        stderr,
    }
}
