# Shared by perf/profile.sh and perf/bench.sh (source it; not executable on its own).
#
# Starts a release realm-server on loopback with any free game/admin port, parses what it logged (game address,
# development certificate, admin address), and stops it with SIGTERM, recording the "stopped after" line.
# Only processes started here are signalled, by PID.

PERF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$PERF_DIR/.." && pwd)"

log() { echo "perf: $*" >&2; }
die() { echo "perf: ERROR: $*" >&2; exit 1; }

# A zone name or a file: "perf-20k" -> config/zones/perf-20k.toml.
zone_file() {
  local z="$1"
  if [[ -f "$z" ]]; then echo "$z"; else echo "$REPO/config/zones/$z.toml"; fi
}

# The `name = "..."` of a zone file.
zone_name() {
  sed -n 's/^name *= *"\(.*\)".*/\1/p' "$1" | head -1
}

# start_server ZONE_FILE LOG: starts realm-server, waits until ready, sets SERVER_PID GAME_ADDR ADMIN_ADDR CERT
# WEB_ADDR (the browser endpoint, plain HTTP on a free port).
# Extra REALM_* variables in the caller's environment pass through. Every bot connects from 127.0.0.1, so the
# per-address limits (connection rate, open and unauthenticated connections, registrations) are lifted.
start_server() {
  local zone="$1" logfile="$2" bin="${SERVER_BIN:-$REPO/target/release/realm-server}"
  [[ -x "$bin" ]] || die "$bin not built (cargo build --release --bin realm-server)"
  # A fresh log: the readiness wait and the address parsing below read it (a step run twice reuses the path).
  : >"$logfile"
  REALM_SERVER_HOST=127.0.0.1 REALM_SERVER_PORT=0 REALM_SERVER_WS_PORT=0 REALM_ADMIN_HOST=127.0.0.1 REALM_ADMIN_PORT=0 \
    REALM_GAME_ZONE_FILE="$zone" REALM_SERVER_ZONE="$(zone_name "$zone")" \
    REALM_GAME_TICK_RATE="${TICK_RATE:-20}" \
    REALM_GAME_MAX_PLAYERS="${REALM_GAME_MAX_PLAYERS:-10000}" \
    REALM_NET_CONNECT_RATE_MAX="${REALM_NET_CONNECT_RATE_MAX:-1000000}" \
    REALM_NET_MAX_CONNECTIONS="${REALM_NET_MAX_CONNECTIONS:-10000}" \
    REALM_NET_MAX_CONNECTIONS_PER_IP="${REALM_NET_MAX_CONNECTIONS_PER_IP:-0}" \
    REALM_NET_MAX_UNAUTHENTICATED_PER_IP="${REALM_NET_MAX_UNAUTHENTICATED_PER_IP:-0}" \
    REALM_SECURITY_REGISTER_RATE_MAX="${REALM_SECURITY_REGISTER_RATE_MAX:-1000000}" \
    REALM_SECURITY_MAX_CONCURRENT_HASHES="${REALM_SECURITY_MAX_CONCURRENT_HASHES:-2}" \
    REALM_SERVER_SIM_NICE="${SIM_NICE:-0}" \
    REALM_SERVER_SIM_REALTIME_PRIORITY="${SIM_RT:-0}" \
    REALM_SERVER_IO_NICE="${IO_NICE:-0}" \
    RUST_LOG="${RUST_LOG:-info}" \
    "$bin" >"$logfile" 2>&1 &
  SERVER_PID=$!
  local waited=0
  until grep -q 'ready: game on' "$logfile" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$logfile" >&2; die "realm-server exited during start"; }
    sleep 0.2
    waited=$((waited + 1))
    ((waited < 300)) || die "realm-server not ready after 60 s (see $logfile)"
  done
  GAME_ADDR="$(sed -n 's/.*listening on \([0-9.:]*\) .*/\1/p' "$logfile" | head -1)"
  ADMIN_ADDR="$(sed -n 's#.*admin listener on http://\([0-9.:]*\) .*#\1#p' "$logfile" | head -1)"
  CERT="$(sed -n 's/.*written to \(.*\.pem\)).*/\1/p' "$logfile" | head -1)"
  WEB_ADDR="$(sed -n 's#.*play in a browser: http://\([0-9.:]*\)/.*#\1#p' "$logfile" | head -1)"
  [[ -n "$GAME_ADDR" && -n "$CERT" ]] || die "could not parse the game address / certificate from $logfile"
  log "realm-server pid $SERVER_PID: game $GAME_ADDR, admin ${ADMIN_ADDR:-none}, cert $CERT"
}

# stop_server LOG: SIGTERM, wait for exit (up to 30 s), print the "stopped after" line; returns the exit code.
stop_server() {
  local logfile="$1" rc=0
  [[ -n "${SERVER_PID:-}" ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local waited=0
  while kill -0 "$SERVER_PID" 2>/dev/null && ((waited < 300)); do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "realm-server did not stop in 30 s: SIGKILL"
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || rc=$?
  grep -o 'stopped after.*' "$logfile" | tail -1 >&2 || true
  SERVER_PID=
  return $rc
}

# scrape FILE: the admin /metrics text (empty file when there is no admin listener).
scrape() {
  if [[ -n "${ADMIN_ADDR:-}" ]]; then
    curl -sf --max-time 5 "http://$ADMIN_ADDR/metrics" >"$1" || : >"$1"
  else
    : >"$1"
  fi
}

# thread_cpu PID: "tid name utime+stime(ticks)" per thread, from /proc (field 2 may contain spaces).
thread_cpu() {
  local pid="$1" t
  for t in /proc/"$pid"/task/*; do
    [[ -r "$t/stat" ]] || continue
    awk -v tid="${t##*/}" '{ s = $0; sub(/^[^(]*\(/, "", s); name = s; sub(/\).*$/, "", name); sub(/^.*\) /, "", s);
      split(s, f, " "); print tid, name, f[12] + f[13] }' "$t/stat"
  done
}

# perf_support: prints "hw" when hardware counters work, "sw" when only software events do, "none" otherwise.
perf_support() {
  command -v perf >/dev/null 2>&1 || { echo none; return; }
  local out
  out="$(perf stat -x, -e instructions true 2>&1 || true)"
  if grep -q 'not supported\|not counted' <<<"$out"; then
    perf stat -x, -e task-clock true >/dev/null 2>&1 && echo sw || echo none
  elif grep -q 'instructions' <<<"$out"; then
    echo hw
  else
    perf stat -x, -e task-clock true >/dev/null 2>&1 && echo sw || echo none
  fi
}
