#!/usr/bin/env python3
"""Turns perf/bench.sh's results.jsonl into a Markdown table and an SVG curve.

    bench_report.py RESULTS.jsonl [--svg OUT.svg]   -> Markdown table on stdout (+ the SVG)
    bench_report.py --row < ONE_LINE.json           -> a one-line summary of one step (progress)

A step passes when the tick p99 <= 10 ms (exact: at least 99 % of the window's ticks in the <= 10 ms bucket),
input->snapshot p99 <= 2 ticks, no overrun in the window, and every bot got in and saw itself move.
Standard library only.
"""

import json
import sys


def get(d, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def verdict(row):
    tick, report = row.get("tick", {}), row.get("report", {})
    reasons = []
    if not tick.get("available"):
        reasons.append("no /metrics")
    else:
        if (get(tick, "tick", "le_10ms") or 0) < 0.99:
            reasons.append("tick p99 > 10 ms")
        if tick.get("overruns", 0) > 0:
            reasons.append(f"{tick['overruns']} overruns")
    if (get(report, "latency_ticks", "p99") or 99) > 2.0:
        reasons.append("latency p99 > 2 ticks")
    if report.get("failed", 1) > 0:
        reasons.append(f"{report.get('failed', '?')} bots failed")
    return ("PASS", "") if not reasons else ("FAIL", "; ".join(reasons))


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def row_cells(row):
    t, r = row.get("tick", {}), row.get("report", {})
    ok, why = verdict(row)
    cpu = row.get("server_cpu_pct", {})
    return [
        str(row["bots"]),
        fmt(get(t, "tick", "p50_ms")),
        fmt(get(t, "tick", "p99_ms")),
        fmt(get(t, "tick", "p999_ms")),
        str(t.get("overruns", "-")),
        str(t.get("late", "-")),
        fmt(get(r, "latency_ms", "p50"), 1),
        fmt(get(r, "latency_ms", "p99"), 1),
        fmt(get(r, "latency_ticks", "p99")),
        f"{r.get('snapshots_per_sec', 0):.0f}",
        f"{cpu.get('realm-sim', 0):.0f} / {cpu.get('realm-io-*', 0):.0f}",
        f"{r.get('connected', 0)}/{r.get('bots', row['bots'])}",
        ok + (f" ({why})" if why else ""),
    ]


HEADER = ["bots", "tick p50 ms", "tick p99 ms", "tick p99.9 ms", "overruns", "late", "in->snap p50 ms",
          "in->snap p99 ms", "in->snap p99 ticks", "snapshots/s", "CPU % sim / io", "in game", "verdict"]


def table(rows):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    passing = [r["bots"] for r in rows if verdict(r)[0] == "PASS"]
    lines.append("")
    lines.append(f"Largest passing bot count: {max(passing) if passing else 'none'}")
    return "\n".join(lines)


def svg(rows, path):
    rows = sorted(rows, key=lambda r: r["bots"])
    w, h, left, right, top, gap, ph = 760, 520, 70, 20, 40, 60, 180
    xs = [r["bots"] for r in rows]
    xmax = max(xs) * 1.05 if xs else 1
    sx = lambda x: left + (w - left - right) * x / xmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">realm-server, perf-20k (20,000 NPCs), '
           '20 Hz, bots on the same 2-core machine</text>']

    def panel(y0, title, series, threshold, unit):
        vals = [v for _, pts, _ in series for _, v in pts if v is not None] + [threshold]
        ymax = max(vals) * 1.15 if vals else 1
        sy = lambda v: y0 + ph - ph * min(v, ymax) / ymax
        out.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{left}" y1="{y0 + ph}" x2="{w - right}" y2="{y0 + ph}" stroke="black"/>')
        out.append(f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y0 + ph}" stroke="black"/>')
        for i in range(5):
            v = ymax * i / 4
            out.append(f'<text x="{left - 6}" y="{sy(v) + 4}" text-anchor="end">{v:.1f}</text>')
            out.append(f'<line x1="{left}" y1="{sy(v)}" x2="{w - right}" y2="{sy(v)}" stroke="#eee"/>')
        out.append(f'<text x="14" y="{y0 + ph / 2}" transform="rotate(-90 14 {y0 + ph / 2})" '
                   f'text-anchor="middle">{unit}</text>')
        out.append(f'<line x1="{left}" y1="{sy(threshold)}" x2="{w - right}" y2="{sy(threshold)}" stroke="red" '
                   'stroke-dasharray="6 4"/>')
        out.append(f'<text x="{w - right}" y="{sy(threshold) - 4}" text-anchor="end" fill="red">target '
                   f'{threshold:g} {unit}</text>')
        for x in xs:
            out.append(f'<text x="{sx(x)}" y="{y0 + ph + 16}" text-anchor="middle">{x}</text>')
        for j, (name, pts, color) in enumerate(series):
            pts = [(x, v) for x, v in pts if v is not None]
            if pts:
                path_d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(v):.1f}" for i, (x, v) in enumerate(pts))
                out.append(f'<path d="{path_d}" fill="none" stroke="{color}" stroke-width="2"/>')
                out.extend([f'<circle cx="{sx(x):.1f}" cy="{sy(v):.1f}" r="3" fill="{color}"/>' for x, v in pts])
            out.append(f'<text x="{left + 10 + 150 * j}" y="{y0 + 14}" fill="{color}">{name}</text>')

    tick = lambda key: [(r["bots"], get(r, "tick", "tick", key)) for r in rows]
    lat = lambda key: [(r["bots"], get(r, "report", "latency_ticks", key) if get(r, "report", "latency_ticks", "count")
                        else None) for r in rows]
    panel(top + 20, "Tick duration (server /metrics, measurement window)",
          [("tick p99", tick("p99_ms"), "#c0392b"), ("tick p50", tick("p50_ms"), "#2980b9")], 10.0, "ms")
    panel(top + 20 + ph + gap, "Input -> snapshot latency (bots)",
          [("p99", lat("p99"), "#c0392b"), ("p50", lat("p50"), "#2980b9")], 2.0, "ticks")
    out.append(f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">bots</text>')
    out.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def main():
    args = sys.argv[1:]
    if args[:1] == ["--row"]:
        row = json.loads(sys.stdin.read())
        print("  ".join(f"{h}={c}" for h, c in zip(HEADER, row_cells(row))))
        return
    if not args:
        sys.exit(__doc__)
    with open(args[0], encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: r["bots"])
    print(table(rows))
    if "--svg" in args:
        svg(rows, args[args.index("--svg") + 1])


if __name__ == "__main__":
    main()
