#!/usr/bin/env bash
# Profiles realm-server under realm-bots load: flame graph, perf stat counters, per-thread CPU, tick metrics.
#
#   perf/profile.sh [--bots N] [--seconds S] [--ramp R] [--zone NAME|FILE] [--behaviour B] [--call-graph fp|dwarf]
#                   [--threads T] [--no-build]
#
# Defaults: 500 bots, 30 s of recording after a 25 s ramp, zone perf-20k (20,000 NPCs), walk, frame pointers.
# Everything lands in perf/out/<UTC time>-<bots>bots/ (perf/out/latest points at it); see perf/README.md.
# Profiles the normal release build (frame pointers come from .cargo/config.toml).
# Only loopback traffic; only processes started here are signalled.
set -euo pipefail
# shellcheck source=perf/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BOTS=500 SECONDS_REC=30 RAMP=25 ZONE=perf-20k BEHAVIOUR=walk CALL_GRAPH=fp BOT_THREADS=2 BUILD=1
while (($#)); do
  case "$1" in
    --bots) BOTS="$2"; shift 2 ;;
    --seconds) SECONDS_REC="$2"; shift 2 ;;
    --ramp) RAMP="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --behaviour) BEHAVIOUR="$2"; shift 2 ;;
    --call-graph) CALL_GRAPH="$2"; shift 2 ;;
    --threads) BOT_THREADS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

ZONE_FILE="$(zone_file "$ZONE")"
[[ -f "$ZONE_FILE" ]] || die "no zone file $ZONE_FILE"
OUT="$PERF_DIR/out/$(date -u +%Y%m%dT%H%M%SZ)-${BOTS}bots"
mkdir -p "$OUT"
ln -sfn "$OUT" "$PERF_DIR/out/latest"

# 1. Tools: perf (Debian linux-perf) and inferno (cargo-installed, a tool not a dependency).
if ! command -v perf >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing linux-perf"; apt-get install -y linux-perf >&2 || log "apt-get install linux-perf failed"
  else
    log "perf missing: apt-get install linux-perf (as root)"
  fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
  log "installing inferno (cargo install inferno)"; cargo install inferno --locked >&2 || log "inferno install failed"
fi
SUPPORT="$(perf_support)"
case "$SUPPORT" in
  hw) EVENT=cycles; STAT_EVENTS=task-clock,context-switches,cpu-migrations,page-faults,cycles,instructions,branches,branch-misses,cache-misses ;;
  sw) EVENT=cpu-clock; STAT_EVENTS=task-clock,context-switches,cpu-migrations,page-faults
      log "hardware counters are NOT supported here (VM without a PMU): sampling cpu-clock (software timer) and"
      log "counting software events only; no cycles/instructions/IPC in perf-stat.txt" ;;
  none) log "perf cannot run here (missing or perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null));"
        log "continuing with per-thread CPU and tick metrics only" ;;
esac
echo "$SUPPORT" >"$OUT/perf-support.txt"

# 2. Build. Every build of this repository has frame pointers (.cargo/config.toml) and the release profile
# carries line tables, so the normal release binaries are the ones to profile (no separate build).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
if ((BUILD)); then
  log "building release into $CARGO_TARGET_DIR"
  (cd "$REPO" && cargo build --release --bin realm-server --bin realm-bots >&2)
fi
# Run private copies: a concurrent `cargo build` replacing target/*/realm-server mid-run would make perf resolve
# the samples against the wrong binary (plausible-looking but wrong symbols).
mkdir -p "$OUT/bin"
cp "$CARGO_TARGET_DIR/release/realm-server" "$CARGO_TARGET_DIR/release/realm-bots" "$OUT/bin/"
export SERVER_BIN="$OUT/bin/realm-server"
BOTS_BIN="$OUT/bin/realm-bots"

cleanup() {
  if [[ -n "${BOTS_PID:-}" ]]; then kill -TERM "$BOTS_PID" 2>/dev/null || true; fi
  if [[ -n "${SERVER_PID:-}" ]]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# 3. Server and bots. The bots play for ramp + recording + 5 s so the window is under steady load.
start_server "$ZONE_FILE" "$OUT/server.log"
"$BOTS_BIN" --server "$GAME_ADDR" --ca "$CERT" --bots "$BOTS" --threads "$BOT_THREADS" --ramp "$RAMP" \
  --duration "$((SECONDS_REC + 5))" --behaviour "$BEHAVIOUR" --login-timeout 120 --json --allow-failures \
  >"$OUT/bots.json" 2>"$OUT/bots.progress" &
BOTS_PID=$!
log "realm-bots pid $BOTS_PID: $BOTS bots, ramp $RAMP s; recording starts after the ramp"
sleep "$RAMP"
sleep 2

# 4. The window: metrics and /proc before, perf record + perf stat during, metrics and /proc after.
scrape "$OUT/metrics-before.txt"
thread_cpu "$SERVER_PID" >"$OUT/threads-before.txt"
T0=$(date +%s.%N)
STAT_PID='' STAT2_PID='' REC_PID=''
if [[ "$SUPPORT" != none ]]; then
  perf stat -e "$STAT_EVENTS" --per-thread -p "$SERVER_PID" -o "$OUT/perf-stat-threads.txt" -- sleep "$SECONDS_REC" &
  STAT_PID=$!
  perf stat -e "$STAT_EVENTS" -p "$SERVER_PID" -o "$OUT/perf-stat.txt" -- sleep "$SECONDS_REC" 2>/dev/null &
  STAT2_PID=$!
  if [[ "$CALL_GRAPH" == dwarf ]]; then CG=(--call-graph "dwarf,16384"); else CG=(--call-graph fp); fi
  perf record -e "$EVENT" -F 999 "${CG[@]}" -p "$SERVER_PID" -o "$OUT/perf.data" -- sleep "$SECONDS_REC" \
    2>"$OUT/perf-record.log" &
  REC_PID=$!
fi
top -H -b -n 1 -d 1 -p "$SERVER_PID" >"$OUT/top-H.txt" 2>/dev/null || true
sleep "$SECONDS_REC"
[[ -n "$REC_PID" ]] && wait "$REC_PID" || true
[[ -n "$STAT_PID" ]] && wait "$STAT_PID" "$STAT2_PID" || true
T1=$(date +%s.%N)
scrape "$OUT/metrics-after.txt"
thread_cpu "$SERVER_PID" >"$OUT/threads-after.txt"

# Per-thread CPU over the window: % of one core, from utime+stime deltas (threads with equal names summed).
python3 - "$OUT/threads-before.txt" "$OUT/threads-after.txt" "$(getconf CLK_TCK)" "$T0" "$T1" >"$OUT/threads-cpu.txt" <<'PY'
import sys
def load(p):
    rows = {}
    for line in open(p):
        parts = line.split()
        if len(parts) >= 3:
            rows[parts[0]] = (" ".join(parts[1:-1]), int(parts[-1]))
    return rows
before, after = load(sys.argv[1]), load(sys.argv[2])
hz, secs = float(sys.argv[3]), float(sys.argv[5]) - float(sys.argv[4])
cpu = {}
for tid, (name, ticks) in after.items():
    cpu[name] = cpu.get(name, 0.0) + (ticks - before.get(tid, (name, 0))[1]) / hz / secs * 100
for name, pct in sorted(cpu.items(), key=lambda kv: -kv[1]):
    print(f"{pct:6.1f} %  {name}")
PY
python3 "$PERF_DIR/promhist.py" "$OUT/metrics-before.txt" "$OUT/metrics-after.txt" >"$OUT/tick-window.json"

# 5. Flame graph and text summaries.
if [[ -f "$OUT/perf.data" ]]; then
  perf script -i "$OUT/perf.data" 2>/dev/null >"$OUT/perf.script" || true
  if command -v inferno-collapse-perf >/dev/null 2>&1; then
    inferno-collapse-perf <"$OUT/perf.script" >"$OUT/stacks.folded"
    inferno-flamegraph --title "realm-server, $BOTS bots ($BEHAVIOUR), $ZONE, ${SECONDS_REC}s $EVENT" \
      <"$OUT/stacks.folded" >"$OUT/flamegraph.svg"
    # Per-thread flame graphs: the folded stacks start with the thread name.
    for t in realm-sim realm-io; do
      grep "^$t" "$OUT/stacks.folded" | inferno-flamegraph --title "$t" >"$OUT/flamegraph-$t.svg" 2>/dev/null || true
    done
  fi
  perf report -i "$OUT/perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | sed '/^$/d' \
    | head -20 >"$OUT/report-threads.txt" || true
  perf report -i "$OUT/perf.data" --no-children --sort comm,symbol --stdio 2>/dev/null | grep -v '^#' | sed '/^$/d' \
    | grep '%' | head -60 >"$OUT/report-symbols.txt" || true
  rm -f "$OUT/perf.script"
fi

# 6. Let the bots finish, stop the server.
wait "$BOTS_PID" || true
BOTS_PID=
stop_server "$OUT/server.log" || log "realm-server exit code $?"
rm -f "$CERT"
trap - EXIT

{
  echo "== realm-server under $BOTS bots ($BEHAVIOUR), zone $ZONE, ${SECONDS_REC}s window, perf: $SUPPORT"
  echo "-- tick window (admin /metrics):"; cat "$OUT/tick-window.json"
  echo "-- per-thread CPU (% of one core):"; cat "$OUT/threads-cpu.txt"
  [[ -f "$OUT/report-threads.txt" ]] && { echo "-- samples by thread:"; cat "$OUT/report-threads.txt"; }
  [[ -f "$OUT/report-symbols.txt" ]] && { echo "-- top symbols (self):"; head -25 "$OUT/report-symbols.txt"; }
  echo "-- bots:"; python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ("connected","failed","inputs_per_sec","snapshots_per_sec")}, "latency ms", {k: r["latency_ms"][k] for k in ("p50","p99","p999")})' "$OUT/bots.json" 2>/dev/null || cat "$OUT/bots.json"
  echo "-- files: $OUT"
} | tee "$OUT/summary.txt"
