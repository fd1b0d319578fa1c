"""framelink's sans-IO ``Decoder.feed`` against the pure-Python splitters people write by hand,
on the same bytes, interleaved.

    python benches/python/decode_feed.py [--rounds 15] [--sizes 16,64,1024] [--read 65536]

For each framing (``length:4``, ``line``) and message size, 1 MiB of frames is fed in reads of
``--read`` bytes (frames straddle reads) to each decoder in turn, every round; the figure is
the best round, in ns per frame. The baselines keep their partial frame across reads as a real
reader must:

- ``length:4``: ``framelink.bench.LengthPrefixSplitter``, the reader of the asyncio
  ``Protocol`` baseline (``struct.unpack_from``, a ``bytes`` per payload);
- ``line``: ``bytes.split(b"\\n")`` of buffer + read, the last piece kept (C's loop: the fastest
  pure-Python line splitter, with no length limit).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List

from framelink import Decoder, Encoder
from framelink.bench import LengthPrefixSplitter

Feed = Callable[[bytes], List[bytes]]


def python_length4() -> Feed:
    return LengthPrefixSplitter().feed


def python_lines() -> Feed:
    pending = b""

    def feed(data: bytes) -> List[bytes]:
        nonlocal pending
        parts = (pending + data).split(b"\n")
        pending = parts.pop()
        return parts

    return feed


def framelink_decoder(spec: str) -> Feed:
    return Decoder(spec).feed


def run(spec: str, size: int, rounds: int, read: int) -> Dict[str, float]:
    count = max(1, (1 << 20) // size)
    payloads = [bytes([97 + i % 26]) * size for i in range(count)]
    wire = Encoder(spec).encode_many(payloads)
    reads = [wire[i : i + read] for i in range(0, len(wire), read)]
    makers: Dict[str, Callable[[], Feed]] = {
        "framelink": lambda: framelink_decoder(spec + ",max=16MiB"),
        "python": python_length4 if spec.startswith("length") else python_lines,
    }
    best = {name: float("inf") for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            feed = make()
            t0 = time.perf_counter()
            got = 0
            for chunk in reads:
                got += len(feed(chunk))
            elapsed = time.perf_counter() - t0
            assert got == count, (name, got, count)
            best[name] = min(best[name], elapsed / count * 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--sizes", default="16,64,1024")
    p.add_argument("--read", type=int, default=65536, help="bytes per read (default 64 KiB)")
    args = p.parse_args()
    print("| framing | size | framelink ns/frame | pure Python ns/frame | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for spec in ("length:4", "line"):
        for size in (int(s) for s in args.sizes.split(",")):
            best = run(spec, size, args.rounds, args.read)
            f, py = best["framelink"], best["python"]
            print(f"| {spec} | {size} B | {f:.1f} | {py:.1f} | {py / f:.2f}× |")


if __name__ == "__main__":
    main()
