#!/usr/bin/env python3
"""Summarise criterion results of `benches/codecs.rs` as Markdown tables.

Usage (from the workspace root, after `cargo bench -p framelink-proto --features tokio-codec
--bench codecs`):

    python3 crates/framelink-proto/benches/summarize.py [--dir target/criterion] [--stat criterion|mean|median]

Reads `<dir>/**/new/benchmark.json` and the `estimates.json` next to it (the latest run of each
benchmark). A benchmark family is measured as two criterion groups, `<family>/frames`
(Throughput::Elements) and `<family>/bytes` (Throughput::Bytes, wire bytes); both are merged into
one section with a frames-per-second table and a GB/s table. When only the `/frames` group was run,
GB/s is derived as frames/s x payload size (payload bytes, headers excluded) and labelled so.

Units: M frames/s = 10^6 frames per second; GB/s = 10^9 bytes per second (criterion's console
output uses GiB/s). Ratios are throughput ratios: > 1 means the framelink variant is faster.

stdlib only.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

FAMILY_ORDER = [
    "decode_length_prefixed",
    "encode_length_prefixed",
    "decode_lines",
    "encode_lines",
    "decode_other",
    "encode_other",
]


def default_dir():
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        return Path(env) / "criterion"
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base / "target" / "criterion"
        if candidate.is_dir():
            return candidate
    return Path.cwd() / "target" / "criterion"


def seconds(estimates, stat):
    """Time per iteration in seconds."""
    if stat == "criterion":
        # What criterion prints: the slope of the linear regression when it has one.
        est = estimates.get("slope") or estimates["mean"]
    else:
        est = estimates[stat]
    return est["point_estimate"] * 1e-9


def load(directory, stat):
    """{family: {(function, value): {"frames": f/s, "bytes": B/s}}} plus first-seen order."""
    families = {}
    for bench in sorted(directory.glob("**/new/benchmark.json")):
        est_path = bench.with_name("estimates.json")
        if not est_path.exists():
            continue
        meta = json.loads(bench.read_text())
        estimates = json.loads(est_path.read_text())
        group = meta.get("group_id") or ""
        function = meta.get("function_id") or meta.get("title") or "?"
        value = meta.get("value_str") or ""
        throughput = meta.get("throughput") or {}
        t = seconds(estimates, stat)
        family, _, suffix = group.rpartition("/")
        if suffix not in ("frames", "bytes"):
            family = group
        entry = families.setdefault(family, {}).setdefault((function, value), {})
        if "Elements" in throughput:
            entry["frames"] = throughput["Elements"] / t
        for key in ("Bytes", "BytesDecimal"):
            if key in throughput:
                entry["bytes"] = throughput[key] / t
    return families


def size_of(value):
    try:
        return int(value)
    except ValueError:
        return None


def human_size(value):
    n = size_of(value)
    if n is None:
        return value
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def gbps(entry, value):
    """(GB/s, derived?) : wire bytes if measured, else payload bytes from frames/s x size."""
    if "bytes" in entry:
        return entry["bytes"] / 1e9, False
    n = size_of(value)
    if "frames" in entry and n is not None:
        return entry["frames"] * n / 1e9, True
    return None, False


def fmt(x, digits=2):
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def function_order(functions):
    def key(f):
        if f == "framelink":
            return (0, f)
        if f.startswith("framelink"):
            return (1, f)
        if f == "tokio-util":
            return (2, f)
        if f.startswith("tokio-util"):
            return (3, f)
        return (4, f)

    return sorted(functions, key=key)


def ratio_pairs(functions):
    """(numerator, denominator) columns: framelink against every tokio-util variant, and every
    other framelink variant against plain tokio-util."""
    ours = [f for f in functions if f.startswith("framelink")]
    theirs = [f for f in functions if f.startswith("tokio-util")]
    pairs = []
    if "framelink" in ours:
        pairs += [("framelink", t) for t in theirs]
    if "tokio-util" in theirs:
        pairs += [(o, "tokio-util") for o in ours if o != "framelink"]
    return pairs


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def comparison(family, results):
    functions = function_order({f for f, _ in results})
    values = sorted({v for _, v in results}, key=lambda v: (size_of(v) is None, size_of(v) or 0, v))
    pairs = ratio_pairs(functions)
    sections = []

    # Frames per second.
    rows = []
    for v in values:
        rates = {f: results.get((f, v), {}).get("frames") for f in functions}
        m = {f: (r / 1e6 if r is not None else None) for f, r in rates.items()}
        rows.append([human_size(v)] + [fmt(m[f]) for f in functions] + [fmt_ratio(m[a], m[b]) for a, b in pairs])
    if any(results.get((f, v), {}).get("frames") is not None for f in functions for v in values):
        header = ["size"] + [f"{f} (M frames/s)" for f in functions] + [f"{a} / {b}" for a, b in pairs]
        sections.append(table(header, rows))

    # GB/s.
    rows, derived_any, measured_any = [], False, False
    for v in values:
        g = {}
        for f in functions:
            rate, derived = gbps(results.get((f, v), {}), v)
            g[f] = rate
            derived_any |= derived and rate is not None
            measured_any |= (not derived) and rate is not None
        rows.append([human_size(v)] + [fmt(g[f]) for f in functions] + [fmt_ratio(g[a], g[b]) for a, b in pairs])
    if derived_any or measured_any:
        kind = "wire" if measured_any and not derived_any else ("payload" if derived_any and not measured_any else "wire or payload*")
        header = ["size"] + [f"{f} (GB/s {kind})" for f in functions] + [f"{a} / {b}" for a, b in pairs]
        sections.append(table(header, rows))
    return sections


def standalone(family, results):
    keys = sorted(results, key=lambda k: (size_of(k[1]) or 0, k[0]))
    rows = []
    derived_any = False
    for f, v in keys:
        entry = results[(f, v)]
        frames = entry.get("frames")
        rate, derived = gbps(entry, v)
        derived_any |= derived
        rows.append([f, human_size(v), fmt(frames / 1e6 if frames is not None else None), fmt(rate),
                     fmt(1e9 / frames, 1) if frames else "–"])
    kind = "payload" if derived_any else "wire"
    return [table(["codec", "size", "M frames/s", f"GB/s ({kind})", "ns / frame"], rows)]


def main():
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="criterion output directory (default: target/criterion)")
    parser.add_argument("--stat", choices=["criterion", "mean", "median"], default="criterion",
                        help="estimate used: criterion = slope if available else mean (what criterion prints)")
    args = parser.parse_args()
    directory = args.dir or default_dir()
    if not directory.is_dir():
        sys.exit(f"no criterion results in {directory}")
    families = load(directory, args.stat)
    if not families:
        sys.exit(f"no */new/benchmark.json under {directory}")

    order = [f for f in FAMILY_ORDER if f in families] + sorted(f for f in families if f not in FAMILY_ORDER)
    print(f"<!-- generated by summarize.py from {directory}, estimate: {args.stat} -->")
    for family in order:
        results = families[family]
        print(f"\n### {family}\n")
        has_competitor = any(f.startswith("tokio-util") for f, _ in results)
        sections = comparison(family, results) if has_competitor else standalone(family, results)
        print("\n\n".join(sections))
        if any("vectored" in f for f, _ in results):
            print("\n`framelink-vectored` builds each frame (header + reference to the payload) without copying"
                  " or writing the payload: its GB/s is not a copy rate, compare it in frames/s.")
        if any("wire or payload*" in s for s in sections):
            print("\n\\* wire bytes where the `/bytes` group was run, else payload bytes (frames/s × size).")


if __name__ == "__main__":
    main()
