//! The harnesses still work: `idle_connections --smoke` (64 connections, 200 ms heartbeats, 1 s
//! measured, with checks) in its two processes, and `--help` of both binaries.

use std::process::Command;

#[test]
fn idle_connections_smoke_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_idle_connections"))
        .arg("--smoke")
        .output()
        .expect("running idle_connections");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    if cfg!(target_os = "linux") {
        assert!(
            stdout.contains("idle_connections smoke run: ok"),
            "{stdout}\n{stderr}"
        );
    }
}

#[test]
fn both_harnesses_list_their_options() {
    for (exe, option) in [
        (
            env!("CARGO_BIN_EXE_idle_connections"),
            "--connect-concurrency",
        ),
        (env!("CARGO_BIN_EXE_memory_attack"), "--budget-mib"),
    ] {
        let out = Command::new(exe)
            .arg("--help")
            .output()
            .expect("running --help");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(option));
    }
}
