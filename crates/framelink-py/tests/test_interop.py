"""The Python package against the Rust CLI (``framelink serve`` / ``framelink connect``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import List

import pytest

import framelink
from framelink import events as ev

from conftest import TIMEOUT, CliServerFn, EventLog, SpawnFn


async def test_python_client_against_cli_echo_server(cli_server: CliServerFn) -> None:
    child, port = cli_server()
    log = EventLog()
    async with framelink.connect("127.0.0.1", port, on_event=log) as client:
        payloads = [b"hello", b"", bytes(range(256)), b"x" * 200_000]
        await client.send_many(payloads)
        got = [await asyncio.wait_for(client.recv(), TIMEOUT) for _ in payloads]
        assert got == payloads
        many = [b"%05d" % i for i in range(5000)]
        await client.send_many(many)
        got = []
        while len(got) < len(many):
            got += await asyncio.wait_for(client.recv_many(), TIMEOUT)
        assert got == many
        connected = log.of(ev.Connected)[0]
        assert connected.peer_ping_interval == pytest.approx(15.0)
    await child.await_line(r"\+conn #\d+")
    await child.await_line(r"-conn #\d+ closed")


async def test_python_client_sees_cli_ping_settings(cli_server: CliServerFn) -> None:
    child, port = cli_server("--ping-interval", "700ms", "--ping-timeout", "2s")
    log = EventLog()
    async with framelink.connect("127.0.0.1", port, on_event=log, ping_interval=0.2) as client:
        assert log.of(ev.Connected)[0].peer_ping_interval == pytest.approx(0.7)
        rtt = await log.wait(lambda e: isinstance(e, ev.Rtt), seen_ok=True)
        assert 0 <= rtt.latest < 5 and rtt.samples >= 1
        assert client.rtt is not None


async def test_python_raw_client_against_cli_raw_server(cli_server: CliServerFn) -> None:
    child, port = cli_server("--framing", "length:4")
    async with framelink.connect("127.0.0.1", port, framing="length:4") as client:
        payloads = [b"raw-%d" % i for i in range(1000)] + [b"", b"y" * 70_000]
        await client.send_many(payloads)
        got: List[bytes] = []
        while len(got) < len(payloads):
            got += await asyncio.wait_for(client.recv_many(), TIMEOUT)
        assert got == payloads


async def test_raw_mode_never_eats_a_message_equal_to_the_pong(cli_server: CliServerFn) -> None:
    # An echo server echoes a message equal to the pong while no ping is outstanding: it is
    # data and must be delivered (before, every frame equal to the pong was swallowed).
    child, port = cli_server("--framing", "length:4")
    async with framelink.connect(
        "127.0.0.1", port, framing="length:4", ping=b"PONG", pong=b"PONG", ping_interval=30.0
    ) as client:
        payloads = [b"before", b"PONG", b"after", b"PONG"]
        await client.send_many(payloads)
        got: List[bytes] = []
        while len(got) < len(payloads):
            got += await asyncio.wait_for(client.recv_many(), TIMEOUT)
        assert got == payloads
    # With pong_always, the same frames are taken as the server's own keep-alives.
    async with framelink.connect(
        "127.0.0.1", port, framing="length:4", ping=b"PONG", pong=b"PONG",
        ping_interval=30.0, pong_always=True,
    ) as client:
        await client.send_many([b"PONG", b"only this"])
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"only this"


async def test_python_line_client_against_cli_line_server_with_answer(cli_server: CliServerFn) -> None:
    # The CLI answers PING with PONG and does not echo the PING; our client pings with PING.
    child, port = cli_server("--framing", "line", "--answer", "PING=PONG")
    log = EventLog()
    async with framelink.connect(
        "127.0.0.1",
        port,
        framing="line",
        ping=b"PING",
        pong=b"PONG",
        ping_interval=0.2,
        ping_timeout=5,
        on_event=log,
    ) as client:
        await log.wait(lambda e: isinstance(e, ev.Rtt), seen_ok=True)
        await client.send(b"after-pings")
        assert await asyncio.wait_for(client.recv(), TIMEOUT) == b"after-pings"


async def test_cli_connect_against_python_server(framelink_bin: Path, spawn: SpawnFn) -> None:
    async def upper(conn: framelink.Connection) -> None:
        async for m in conn:
            await conn.send(b"echo:" + m.upper())

    async with framelink.serve(upper, "127.0.0.1", 0) as server:
        child = spawn(framelink_bin, "connect", f"127.0.0.1:{server.port}", "--eof-wait", "1s", stdin=True)
        await child.await_line(r"connected to 127\.0\.0\.1:%d" % server.port)
        lines = [b"alpha", b"beta", b"gamma with spaces"]
        child.send_stdin(b"".join(l + b"\n" for l in lines), close=True)
        rc = await asyncio.get_running_loop().run_in_executor(None, child.wait, 30)
        assert rc == 0, child.stderr
        assert child.stdout == ["echo:ALPHA", "echo:BETA", "echo:GAMMA WITH SPACES"]


async def test_cli_connect_json_output_binary_messages(framelink_bin: Path, spawn: SpawnFn) -> None:
    async def reply(conn: framelink.Connection) -> None:
        async for m in conn:
            await conn.send(bytes.fromhex(m.decode()) + b"\xff\x00")

    async with framelink.serve(reply, "127.0.0.1", 0) as server:
        child = spawn(
            framelink_bin, "connect", f"127.0.0.1:{server.port}", "--format", "json",
            "--eof-wait", "1s", stdin=True,
        )
        child.send_stdin(b"0102\n616263\n", close=True)
        rc = await asyncio.get_running_loop().run_in_executor(None, child.wait, 30)
        assert rc == 0, child.stderr
        objs = [json.loads(line) for line in child.stdout]
        assert [o["hex"] for o in objs] == ["0102ff00", "616263ff00"]
        assert [o["length"] for o in objs] == [4, 5]


async def test_cli_connect_raw_against_python_raw_server(framelink_bin: Path, spawn: SpawnFn) -> None:
    async with framelink.serve(
        lambda conn: _reverse(conn), "127.0.0.1", 0, framing="length:2"
    ) as server:
        child = spawn(
            framelink_bin, "connect", f"127.0.0.1:{server.port}", "--framing", "length:2",
            "--eof-wait", "1s", stdin=True,
        )
        child.send_stdin(b"abc\nxyz\n", close=True)
        rc = await asyncio.get_running_loop().run_in_executor(None, child.wait, 30)
        assert rc == 0, child.stderr
        assert child.stdout == ["cba", "zyx"]


async def _reverse(conn: framelink.Connection) -> None:
    async for m in conn:
        await conn.send(m[::-1])


async def test_cli_connect_reports_python_server_close(framelink_bin: Path, spawn: SpawnFn) -> None:
    server = await framelink.serve(_reverse, "127.0.0.1", 0)
    child = spawn(framelink_bin, "connect", f"127.0.0.1:{server.port}", "--no-reconnect", stdin=True)
    await child.await_line(r"connected to")
    await server.close()
    rc = await asyncio.get_running_loop().run_in_executor(None, child.wait, 30)
    assert rc == 1
    assert any("GoingAway" in line or "going" in line.lower() for line in child.stderr), child.stderr
