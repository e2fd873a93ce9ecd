#!/usr/bin/env bash
# The tick benchmark of DESIGN.md §11: realm-server at 20 Hz with 20,000 NPCs (config/zones/perf-20k.toml) and
# realm-bots on the same machine, stepping the bot count; finds the largest count with tick p99 <= 10 ms,
# input->snapshot p99 <= 2 ticks and no overruns.
#
#   perf/bench.sh [--steps "100 250 500 1000 2000"] [--duration S] [--zone NAME|FILE] [--behaviour B]
#                 [--login-rate R] [--threads T] [--sim-nice N] [--sim-rt P] [--io-nice N]
#                 [--settle S] [--transport tls|ws] [--protocol 1|2] [--no-build]
#
# Each step: a fresh server (fresh in-memory accounts), bots ramped at --login-rate logins/s (argon2id at OWASP
# parameters, 2 at a time, is the limit), then a --duration window measured by both sides: tick histogram, overruns
# and late ticks from the admin /metrics (scraped at the window's start and end), latency from the bots' report.
# Results: perf/out/bench-<UTC time>/results.jsonl, table.md and perf/bench-curve.svg (perf/bench_report.py).
# --sim-nice N starts the server with server.sim_nice = N (the simulation thread's nice value; below 0 it wins the
# CPU over the bots sharing the machine, as it would over anything else on a production host; needs root or
# CAP_SYS_NICE). Default 0: every thread at the same priority.
# --sim-rt P starts it with server.sim_realtime_priority = P (SCHED_FIFO: the tick runs ahead of every normal
# thread on its core; needs root or CAP_SYS_NICE). Default 0: off.
# --io-nice N starts it with server.io_nice = N (the io threads' nice value). Default 0.
# --transport ws runs the bots over the browser transport (HTTP login, one WebSocket each) instead of TLS + UDP.
# --protocol 1 has the bots speak protocol v1 (full snapshots) instead of v2 (delta snapshots), to compare them.
# --settle S waits S whole seconds after the ramp before the window (default 10): logins the server could not hash as
# fast as the ramp asked finish first, so the window measures play, not the end of the login rush.
set -euo pipefail
# shellcheck source=perf/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SETTLE=10 IO_NICE=0 SIM_RT=0 SIM_NICE=0 STEPS="100 250 500 1000 2000" DURATION=60 ZONE=perf-20k BEHAVIOUR=walk LOGIN_RATE=15 BOT_THREADS=2 BUILD=1
while (($#)); do
  case "$1" in
    --steps) STEPS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --behaviour) BEHAVIOUR="$2"; shift 2 ;;
    --login-rate) LOGIN_RATE="$2"; shift 2 ;;
    --threads) BOT_THREADS="$2"; shift 2 ;;
    --sim-nice) SIM_NICE="$2"; shift 2 ;;
    --sim-rt) SIM_RT="$2"; shift 2 ;;
    --io-nice) IO_NICE="$2"; shift 2 ;;
    --settle) SETTLE="$2"; shift 2 ;;
    --transport) TRANSPORT="$2"; shift 2 ;;
    --protocol) PROTOCOL="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

ZONE_FILE="$(zone_file "$ZONE")"
[[ -f "$ZONE_FILE" ]] || die "no zone file $ZONE_FILE"
OUT="$PERF_DIR/out/bench-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
if ((BUILD)); then
  (cd "$REPO" && cargo build --release --bin realm-server --bin realm-bots >&2)
fi
# Private copies of the binaries: other builds may replace target/release/* while the steps run.
mkdir -p "$OUT/bin"
cp "$REPO/target/release/realm-server" "$REPO/target/release/realm-bots" "$OUT/bin/"
export SERVER_BIN="$OUT/bin/realm-server"
BOTS_BIN="$OUT/bin/realm-bots"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "rustc: $(rustc --version)"
  echo "commit: $(cd "$REPO" && git rev-parse --short HEAD) (+ working tree)"
  echo "transport: ${TRANSPORT:-tls}; protocol v${PROTOCOL:-2}"
  echo "zone: $ZONE_FILE; behaviour $BEHAVIOUR; window ${DURATION}s per step; login rate ${LOGIN_RATE}/s; sim nice $SIM_NICE; sim real-time priority $SIM_RT; io nice $IO_NICE"
} | tee "$OUT/machine.txt" >&2

cleanup() {
  if [[ -n "${BOTS_PID:-}" ]]; then kill -TERM "$BOTS_PID" 2>/dev/null || true; fi
  if [[ -n "${SERVER_PID:-}" ]]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

for N in $STEPS; do
  STEP="$OUT/$N"
  # The same count twice (repeat runs) gets its own directory.
  [[ -e "$STEP" ]] && STEP="$OUT/$N-$(date +%H%M%S)"
  mkdir -p "$STEP"
  RAMP=$(( (N + LOGIN_RATE - 1) / LOGIN_RATE ))
  ((RAMP >= 5)) || RAMP=5
  log "step $N bots: ramp ${RAMP}s, settle ${SETTLE}s, window ${DURATION}s"
  start_server "$ZONE_FILE" "$STEP/server.log"
  TARGET="$GAME_ADDR"
  [[ "${TRANSPORT:-tls}" == ws ]] && TARGET="$WEB_ADDR"
  "$BOTS_BIN" --transport "${TRANSPORT:-tls}" --protocol "${PROTOCOL:-2}" --server "$TARGET" --ca "$CERT" --bots "$N" --threads "$BOT_THREADS" --ramp "$RAMP" \
    --settle "$SETTLE" --duration "$DURATION" --behaviour "$BEHAVIOUR" --login-timeout 180 --json --allow-failures \
    >"$STEP/bots.json" 2>"$STEP/bots.progress" &
  BOTS_PID=$!
  # The bots measure from the end of their ramp plus the settle time; the server's window starts at the same moment.
  sleep $((RAMP + SETTLE))
  scrape "$STEP/metrics-before.txt"
  thread_cpu "$SERVER_PID" >"$STEP/threads-before.txt"
  T0=$(date +%s.%N)
  sleep "$DURATION"
  scrape "$STEP/metrics-after.txt"
  thread_cpu "$SERVER_PID" >"$STEP/threads-after.txt"
  T1=$(date +%s.%N)
  wait "$BOTS_PID" || true
  BOTS_PID=
  stop_server "$STEP/server.log" || log "realm-server exit code $?"
  rm -f "$CERT"
  python3 "$PERF_DIR/promhist.py" "$STEP/metrics-before.txt" "$STEP/metrics-after.txt" >"$STEP/tick-window.json"
  python3 - "$N" "$RAMP" "$STEP" "$T0" "$T1" "$(getconf CLK_TCK)" >>"$OUT/results.jsonl" <<'PY'
import json, re, sys
n, ramp, step, t0, t1, hz = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
def load_threads(p):
    rows = {}
    for line in open(p):
        parts = line.split()
        if len(parts) >= 3:
            rows[parts[0]] = (" ".join(parts[1:-1]), int(parts[-1]))
    return rows
before, after = load_threads(f"{step}/threads-before.txt"), load_threads(f"{step}/threads-after.txt")
cpu = {}
for tid, (name, ticks) in after.items():
    key = re.sub(r"-\d+$", "-*", name)
    cpu[key] = round(cpu.get(key, 0.0) + (ticks - before.get(tid, (name, 0))[1]) / hz / (t1 - t0) * 100, 1)
try:
    bots = json.load(open(f"{step}/bots.json"))
except (OSError, ValueError):
    bots = {}
tick = json.load(open(f"{step}/tick-window.json"))
stop = re.findall(r"stopped after (\d+) ticks \((\d+) overruns, (\d+) late, (\d+) dropped\)", open(f"{step}/server.log").read())
print(json.dumps({"bots": n, "ramp_secs": ramp, "window_secs": round(t1 - t0, 1), "tick": tick, "server_cpu_pct": cpu,
                  "stop_line": dict(zip(["ticks", "overruns", "late", "dropped"], map(int, stop[-1]))) if stop else None,
                  "report": bots}))
PY
  tail -1 "$OUT/results.jsonl" | python3 "$PERF_DIR/bench_report.py" --row >&2 || true
done
trap - EXIT
python3 "$PERF_DIR/bench_report.py" "$OUT/results.jsonl" --svg "$PERF_DIR/bench-curve.svg" | tee "$OUT/table.md"
log "results in $OUT; curve in perf/bench-curve.svg"
