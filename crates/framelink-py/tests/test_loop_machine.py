"""The event-loop-driven machine prototype (``LoopMachine``) behind the ``loop-raw`` and
``loop-proto`` bench variants: every echo checked, against the CLI's echo servers."""

from typing import Any

import pytest

from framelink import bench


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
