#!/usr/bin/env python3
"""Server CPU per echo of two (or more) `framelink` binaries, alternated in one session.

    scripts/serve-cpu-ab.py BEFORE/framelink AFTER/framelink [MORE/framelink...] [ROUNDS] [DURATION]

Each round runs, for BEFORE, AFTER (and any more, in order), `framelink serve 127.0.0.1:PORT --framing length:4 -q`
from that binary, drives it with the same client (BEFORE's `framelink bench --framing length:4
ADDR --duration DURATION --warmup 0.5s --json`: 64 B, one connection, 1 MiB window) and divides
the server's CPU time (user + system from /proc/PID/stat, over the whole run) by the echoes
received (`received_total`, warm-up included). Prints each round, the medians, and each
binary's ratios to the one before it, taken within each round. Linux only.
"""
import json
import os
import statistics
import subprocess
import sys
import time

paths = [a for a in sys.argv[1:] if os.sep in a]
rest = sys.argv[1 + len(paths):]
rounds = int(rest[0]) if rest else 5
duration = rest[1] if len(rest) > 1 else "3s"
before = paths[0]
names = ["before", "after"] + [f"after{i}" for i in range(2, len(paths))]
bins = dict(zip(names, paths))
ticks = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


results = {name: [] for name in bins}
port = 47900
for r in range(rounds):
    for name, binary in bins.items():
        port += 1
        server = subprocess.Popen(
            [binary, "serve", f"127.0.0.1:{port}", "--framing", "length:4", "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            start = cpu_seconds(server.pid)
            out = subprocess.run(
                [before, "bench", "--framing", "length:4", f"127.0.0.1:{port}",
                 "--duration", duration, "--warmup", "0.5s", "--json"],
                capture_output=True, text=True, check=True,
            ).stdout
            used = cpu_seconds(server.pid) - start
        finally:
            server.terminate()
            server.wait()
        run = json.loads(out.splitlines()[0])
        rate, ns = run["msgs_per_sec"], used / run["received_total"] * 1e9
        results[name].append((rate, ns))
        print(f"round {r + 1} {name}: {rate / 1e6:.3f} M msgs/s, server {ns:.0f} ns CPU/msg",
              flush=True)
for name in bins:
    print(f"{name}: median {statistics.median(x[0] for x in results[name]) / 1e6:.3f} M msgs/s, "
          f"median server {statistics.median(x[1] for x in results[name]):.0f} ns CPU/msg")
for older, newer in zip(names, names[1:]):
    for i, what in ((0, "msgs/s"), (1, "server CPU/msg")):
        ratios = sorted(a[i] / b[i] for a, b in zip(results[newer], results[older]))
        print(f"{newer}/{older} {what} per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.2f}")
