"""TLS and mutual TLS from Python, with the certificates ``framelink cert`` writes: the same
Rust TLS layer as the CLI and the library (no second implementation), reached through the
``tls*`` keyword arguments."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

import framelink
import framelink.blocking
from framelink import events as ev

from conftest import TIMEOUT, CliServerFn, EventLog, echo_handler


@pytest.fixture
def certs(framelink_bin: Path, tmp_path: Path) -> Path:
    """A directory with ca.pem, server.pem/.key and client.pem/.key from ``framelink cert``."""
    out = tmp_path / "certs"
    done = subprocess.run(
        [str(framelink_bin), "cert", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        assert name in done.stdout
    return out


async def test_echo_over_tls_with_the_cli_certificates(certs: Path) -> None:
    async with framelink.serve(
        echo_handler,
        "127.0.0.1",
        0,
        tls_cert=certs / "server.pem",
        tls_key=str(certs / "server.key"),
    ) as server:
        async with framelink.connect("localhost", server.port, tls_ca=certs / "ca.pem") as client:
            for payload in (b"hello", b"x" * 100_000):
                await client.send(payload)
                assert await asyncio.wait_for(client.recv(), TIMEOUT) == payload


async def test_mutual_tls_shows_the_client_identity(certs: Path) -> None:
    seen: List[Optional[Tuple[str, List[str], bytes]]] = []

    async def handler(conn: framelink.Connection) -> None:
        seen.append(conn.peer_certificate)
        await echo_handler(conn)

    async with framelink.serve(
        handler,
        "127.0.0.1",
        0,
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
    ) as server:
        async with framelink.connect(
            "127.0.0.1",
            server.port,
            tls_ca=certs / "ca.pem",
            tls_cert=certs / "client.pem",
            tls_key=certs / "client.key",
        ) as client:
            await client.send(b"me")
            assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"me"
        assert seen and seen[0] is not None
        subject, names, der = seen[0]
        assert subject == "CN=framelink-client"
        assert names == ["framelink-client"]
        assert der[:1] == b"\x30"  # a DER SEQUENCE

        # Without a client certificate: refused, with the reason.
        log = EventLog()
        with pytest.raises(framelink.ConnectionClosed):
            await asyncio.wait_for(
                framelink.connect(
                    "127.0.0.1", server.port, tls_ca=certs / "ca.pem", reconnect=False, on_event=log
                ),
                TIMEOUT,
            )
        failures = [e.error for e in log.of(ev.ConnectFailed)]
        assert any("client certificate is required" in f for f in failures), failures


async def test_unknown_ca_is_reported(certs: Path, framelink_bin: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(
        [str(framelink_bin), "cert", "--out", str(other)], check=True, capture_output=True
    )
    async with framelink.serve(
        echo_handler, "127.0.0.1", 0, tls_cert=certs / "server.pem", tls_key=certs / "server.key"
    ) as server:
        log = EventLog()
        with pytest.raises(framelink.ConnectionClosed):
            await asyncio.wait_for(
                framelink.connect(
                    "localhost", server.port, tls_ca=other / "ca.pem", reconnect=False, on_event=log
                ),
                TIMEOUT,
            )
        failures = [e.error for e in log.of(ev.ConnectFailed)]
        assert any("unknown CA" in f for f in failures), failures


def test_blocking_client_over_tls(certs: Path, cli_server: CliServerFn) -> None:
    _, port = cli_server("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"))
    client = framelink.blocking.connect(
        "localhost", port, tls_ca=certs / "ca.pem", timeout=TIMEOUT
    )
    try:
        client.send(b"blocking")
        assert client.recv(timeout=TIMEOUT) == b"blocking"
    finally:
        client.close(timeout=TIMEOUT)


def test_bad_tls_options_name_the_problem(certs: Path) -> None:
    with pytest.raises(framelink.ConfigError, match="nope.pem"):
        framelink.connect("localhost", 1, tls_ca=certs / "nope.pem")
    with pytest.raises(framelink.ConfigError, match="tls_cert needs tls_key"):
        framelink.connect("localhost", 1, tls_ca=certs / "ca.pem", tls_cert=certs / "client.pem")
    with pytest.raises(framelink.ConfigError, match="does not match"):
        framelink.serve(
            echo_handler,
            "127.0.0.1",
            0,
            tls_cert=certs / "server.pem",
            tls_key=certs / "client.key",
        )
