"""Runs every ```python block of README.md and README.zh-CN.md, so the code the READMEs show
keeps working. Each block runs on its own, in a fresh interpreter, and must exit with status 0;
a block that talks to a server on port 7000 without starting one (the README starts
``framelink serve`` there) gets one on a free port instead."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import CliServerFn

ROOT = Path(__file__).resolve().parents[3]
READMES = ("README.md", "README.zh-CN.md")
#: A block's own time limit (the longest ones run a server, a client and a reconnect).
TIMEOUT = 60.0


def _blocks() -> List[Tuple[str, int, str]]:
    found = []
    for name in READMES:
        path = ROOT / name
        if not path.is_file():
            continue
        code_blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
        found += [(name, i, code) for i, code in enumerate(code_blocks)]
    return found


BLOCKS = _blocks()


def test_the_readmes_have_python_blocks() -> None:
    if not (ROOT / "README.md").is_file():
        pytest.skip(f"READMEs not found under {ROOT}")
    assert {name for name, _, _ in BLOCKS} == set(READMES)


@pytest.mark.parametrize(
    "name, index, code", BLOCKS, ids=[f"{name}#{i}" for name, i, _ in BLOCKS]
)
def test_readme_block_runs(
    name: str, index: int, code: str, cli_server: CliServerFn, tmp_path: Path
) -> None:
    if re.search(r"\b7000\b", code) and "serve(" not in code:
        _, port = cli_server()
        code = re.sub(r"\b7000\b", str(port), code)
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"{name} block {index} failed:\n{code}\n---\n{proc.stdout}"
