"""Runs every program in examples/python/ as its users would, and checks that it succeeds.

Each example checks its own result and exits with status 0 only when everything matched; here
we run it with this interpreter (so it uses the installed framelink), with a timeout, and look
for the line that reports success.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"
TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(
    not EXAMPLES.is_dir(), reason=f"examples not found at {EXAMPLES}"
)


def run_example(*args: str, timeout: float = TIMEOUT) -> "subprocess.CompletedProcess[str]":
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        cwd=str(EXAMPLES.parents[1]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, f"{args[0]} exited with {proc.returncode}:\n{proc.stdout}"
    return proc


@pytest.mark.parametrize(
    "args, expected",
    [
        (["echo_client.py", "--self-test"], r"OK: 2000 messages .* echoed exactly, in order"),
        (["blocking_decoder.py"], r"OK: all 3000 messages decoded exactly, in order"),
        (["raw_keepalive.py"], r"OK: raw-mode heartbeats kept the link alive"),
        (["sessions_flaky_link.py"], r"OK: every message arrived exactly once, in order, both ways"),
        (["blocking_client.py"], r"OK: blocking client sent, received, and reconnected"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_example(args: List[str], expected: str) -> None:
    proc = run_example(*args)
    assert re.search(expected, proc.stdout), proc.stdout


def test_blocking_decoder_sees_sticky_and_split_reads() -> None:
    out = run_example("blocking_decoder.py").stdout
    m = re.search(r"(\d+) held several messages \(粘包\), (\d+) ended inside a message", out)
    assert m, out
    assert int(m.group(2)) > 0, out        # 1..3072-byte pieces always split some messages
    assert "FrameTooLarge" in out, out


def test_raw_keepalive_reports_rtt_and_dead_peer() -> None:
    out = run_example("raw_keepalive.py").stdout
    assert re.search(r"\[client\] rtt \d+\.\d+ ms", out), out
    assert "PeerDead" in out and "dead server found after" in out, out


def test_sessions_flaky_link_reconnects() -> None:
    out = run_example("sessions_flaky_link.py", "--messages", "2000", "--cut-every", "20000").stdout
    m = re.search(r"(\d+) cuts, (\d+) reconnects", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, out


def test_echo_server_and_client_processes() -> None:
    """The two-process form: echo_server.py on a free port, echo_client.py against it, then
    the server stopped with SIGTERM (gracefully, exit status 0)."""
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "--port", "0", "--max-duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        m = re.search(r"listening on [\d.]+:(\d+)", first)
        assert m, first
        client = run_example("echo_client.py", "--port", m.group(1), "--count", "300")
        assert "OK: 300 messages" in client.stdout, client.stdout
        # Give the signal handler a moment to be in place, then stop the server gracefully.
        time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=TIMEOUT)
        assert server.returncode == 0, first + rest
        assert "[server] stopped" in rest, first + rest
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
