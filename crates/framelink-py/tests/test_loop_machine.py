"""The event-loop-driven machine prototype (``LoopMachine``) behind the ``loop-raw`` and
``loop-proto`` bench variants: every echo checked, against the CLI's echo servers."""

import time
from typing import Any

import pytest

from framelink import bench
from framelink._native import LoopMachine


@pytest.mark.parametrize(
    "variant, serve_args",
    [("loop-raw", ("--framing", "length:4")), ("loop-proto", ())],
)
def test_loop_machine_echoes_every_message(
    cli_server: Any, capsys: pytest.CaptureFixture[str], variant: str, serve_args: Any
) -> None:
    _child, port = cli_server(*serve_args)
    argv = ["--worker", variant, "--addr", f"127.0.0.1:{port}", "--size", "64",
            "--duration", "0.3", "--warmup", "0.1", "--window", "65536"]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert '"sent_total"' in out


def test_the_view_lent_is_released_before_the_machine_can_free_its_buffer() -> None:
    """A frame timeout frees the receive buffer at once: the view lent into it goes first."""
    m = LoopMachine({"framing": "length:4", "frame_timeout": 0.05}, 0.0)
    m.start()
    view = m.get_buffer()
    view[:6] = b"\x00\x00\x01\x00ab"  # 6 bytes of a 260-byte frame
    m.buffer_updated(6)
    view = m.get_buffer()
    time.sleep(0.1)
    events = m.timeout()[1]
    assert events is not None and events[0][:2] == ("closed", "peer_timed_out")
    with pytest.raises(ValueError):
        view[0] = 1
    with pytest.raises(BufferError):
        m.buffer_updated(1)


@pytest.mark.parametrize("call", ["send_many", "close", "drop"])
def test_the_view_lent_is_released_by_every_call_that_reaches_the_machine(call: str) -> None:
    m = LoopMachine({"framing": "length:4"}, 0.0)
    view = m.get_buffer()
    if call == "send_many":
        m.send_many([b"x"])
    elif call == "close":
        m.close()
    else:
        del m  # the machine, and its buffer, go at once
    with pytest.raises(ValueError):
        view[0] = 1
