#!/usr/bin/env python3
"""A/B of two builds of the tick benchmark (`cargo bench --bench tick`), run in turn on one machine.

Usage: perf/tick-ab.py A_BINARY B_BINARY [RUNS]

Each binary is a built tick benchmark (`target/release/deps/tick-*`; build the other commit in a `git worktree`
with its own CARGO_TARGET_DIR). Every run of a binary makes v1 and v2 take turns tick by tick and prints both
snapshot phases; this prints, per build and layout, v2 / v1 of each run and the median. The machine's speed
drifts between runs, the ratio within a run much less: compare the medians, and repeat the series before
believing a few percent.
"""
import statistics
import subprocess
import sys


def ratios(binary):
    p = subprocess.run([binary], capture_output=True, text=True, check=True)
    rows = [line.split("|") for line in (p.stdout + p.stderr).splitlines() if line.startswith("| players")]
    phase = {r[1].strip(): float(r[5]) for r in rows}
    out = {}
    for layout in ("spread", "crowded"):
        v1 = next(v for k, v in phase.items() if layout in k and "v1" in k)
        v2 = next(v for k, v in phase.items() if layout in k and "v2" in k)
        out[layout] = v2 / v1
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    builds = {"A": sys.argv[1], "B": sys.argv[2]}
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    seen = {k: {"spread": [], "crowded": []} for k in builds}
    for _ in range(runs):
        for name, binary in builds.items():
            for layout, r in ratios(binary).items():
                seen[name][layout].append(r)
    for name in builds:
        for layout, r in seen[name].items():
            print(name, layout, " ".join(f"{x:.2f}" for x in r), f"median {statistics.median(r):.3f}")


if __name__ == "__main__":
    main()
