#!/usr/bin/env python3
"""Window statistics from two Prometheus text scrapes of realm-server's /metrics (before and after a window).

    promhist.py BEFORE AFTER            -> one JSON object on stdout:
      tick:    count, mean_ms, p50_ms, p99_ms, p999_ms (linear interpolation inside buckets, like PromQL's
               histogram_quantile), le_10ms (fraction of ticks <= 10 ms, exact: 10 ms is a bucket bound)
      phases:  mean_ms and p99_ms per tick phase (game_server_tick_phase_duration_seconds{phase=...})
      overruns, late: counter deltas; players_online (gauge, AFTER)

Empty inputs (no admin listener) give {"available": false}. Standard library only.
"""

import json
import math
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(path):
    samples = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            m = LINE.match(line.strip())
            if not m:
                continue
            labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
            try:
                samples[(m.group(1), labels)] = float(m.group(3))
            except ValueError:
                pass
    return samples


def delta(before, after, name, want=()):
    """Sum of after - before over series of `name` whose labels include `want`."""
    total = 0.0
    for (n, labels), v in after.items():
        if n == name and all(w in labels for w in want):
            total += v - before.get((n, labels), 0.0)
    return total


def buckets(before, after, name, want=()):
    """[(le, cumulative count delta)] sorted by le, for series matching `want` (other labels summed)."""
    acc = {}
    for (n, labels), v in after.items():
        if n != name + "_bucket" or not all(w in labels for w in want):
            continue
        le = dict(labels).get("le")
        if le is None:
            continue
        bound = math.inf if le == "+Inf" else float(le)
        acc[bound] = acc.get(bound, 0.0) + v - before.get((n, labels), 0.0)
    return sorted(acc.items())


def quantile(q, bs):
    """histogram_quantile: linear interpolation inside the bucket holding the q-th sample."""
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in bs:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return bs[-1][0]


def fraction_le(bound, bs):
    if not bs or bs[-1][1] <= 0:
        return None
    below = [c for le, c in bs if le <= bound + 1e-12]
    return (below[-1] if below else 0.0) / bs[-1][1]


def ms(v):
    return None if v is None else round(v * 1000.0, 3)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    before, after = parse(sys.argv[1]), parse(sys.argv[2])
    name = "game_server_tick_duration_seconds"
    if not any(n == name + "_count" for n, _ in after):
        print(json.dumps({"available": False}))
        return
    bs = buckets(before, after, name)
    count = delta(before, after, name + "_count")
    total = delta(before, after, name + "_sum")
    out = {
        "available": True,
        "tick": {
            "count": int(count),
            "mean_ms": ms(total / count) if count else None,
            "p50_ms": ms(quantile(0.5, bs)),
            "p99_ms": ms(quantile(0.99, bs)),
            "p999_ms": ms(quantile(0.999, bs)),
            "le_10ms": fraction_le(0.010, bs),
        },
        "overruns": int(delta(before, after, "game_server_tick_overruns_total")),
        "late": int(delta(before, after, "game_server_late_ticks_total")),
        "players_online": int(sum(v for (n, _), v in after.items() if n == "game_server_players_online")),
        "phases": {},
    }
    phase_name = "game_server_tick_phase_duration_seconds"
    phases = sorted({dict(l).get("phase") for (n, l) in after if n == phase_name + "_count"} - {None})
    for phase in phases:
        want = (("phase", phase),)
        c = delta(before, after, phase_name + "_count", want)
        s = delta(before, after, phase_name + "_sum", want)
        out["phases"][phase] = {
            "mean_ms": ms(s / c) if c else None,
            "p99_ms": ms(quantile(0.99, buckets(before, after, phase_name, want))),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
