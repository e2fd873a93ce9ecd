#!/usr/bin/env bash
# The docker-compose topology as local processes, for machines without a Docker engine.
#
# Usage: scripts/local-cluster.sh <command> [options]
#
#   up [--embedded] [--build] [--pitr]
#                               start everything (idempotent: running parts are left alone)
#   down [--purge]              stop every process `up` started (--purge also deletes logs, data and the secret)
#   status                      show each part and its health; exit 0 only if all parts run
#   logs [PART]                 last lines of every log, or of one part (zone-a, zone-b, prometheus, nginx, migrate)
#   check-config                render the Prometheus and nginx configs and check them (promtool, nginx -t); starts
#                               nothing (scripts/validate-deploy.sh runs this)
#
#   compose service     here                                      address
#   postgres-primary    scripts/services.sh (shared with tests)   127.0.0.1:5432
#   postgres-replica    scripts/services.sh (streaming replica)   127.0.0.1:5433
#   redis               scripts/services.sh                       127.0.0.1:6379
#   migrate             realm-server migrate (one shot, before the zones)
#   zone-a              realm-server, starter-vale                game 127.0.0.1:7777 tcp+udp, admin :9101
#   zone-b              realm-server, dark-forest                 game 127.0.0.1:7787 tcp+udp, admin :9102
#   prometheus          Debian `prometheus`, monitoring/prometheus.yml + alerts.yml, zone targets on loopback
#   nginx               Debian `nginx`, TCP stream proxy          127.0.0.1:7700 -> 127.0.0.1:7777
#   grafana             not run (no Debian package); Prometheus' own UI at http://127.0.0.1:9090
#
# --pitr puts the world (a primary database and two shard databases) on its own PostgreSQL cluster with WAL
# archiving, like compose's primary (scripts/pitr-cluster.sh: 127.0.0.1:$REALM_LOCAL_PITR_PORT, default 5434, data
# $STATE/pg-pitr, archive $STATE/wal-archive), instead of the shared cluster of scripts/services.sh, which runs
# without archiving and must not be reconfigured under the tests; no read replica then. Back it up and restore it
# with scripts/backup.sh and scripts/restore.sh (README "Backups and recovery"); `down` stops that cluster.
# --embedded runs the zones without PostgreSQL/Redis (in-memory store, nothing persists) and skips services.sh
# and the migration. --build runs `cargo build --release --bin realm-server` first (otherwise an existing
# target/release/realm-server is used; set REALM_SERVER_BIN to use another binary).
# PostgreSQL and Redis are shared with scripts/test.sh, so `down` never stops them.
#
# State (pid files, logs, generated configs, Prometheus data, the shared token secret) lives in
# $REALM_LOCAL_STATE (default /var/tmp/realm-local-cluster). Ports: REALM_LOCAL_PROMETHEUS_PORT (9090),
# REALM_LOCAL_NGINX_PORT (7700). Every process runs in the background in its own session, survives this script,
# and is stopped by `down` (SIGTERM, then SIGKILL after its grace period) after checking the pid is still ours.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

STATE=${REALM_LOCAL_STATE:-/var/tmp/realm-local-cluster}
BIN=${REALM_SERVER_BIN:-$ROOT/target/release/realm-server}
PROM_PORT=${REALM_LOCAL_PROMETHEUS_PORT:-9090}
NGINX_PORT=${REALM_LOCAL_NGINX_PORT:-7700}
DB_NAME=${REALM_LOCAL_DB:-realm_local}
PG_PORT=${REALM_PG_PORT:-5432}
REPLICA_PORT=${REALM_PG_REPLICA_PORT:-5433}
REDIS_PORT=${REALM_REDIS_PORT:-6379}
ZONE_READY_SECS=${REALM_LOCAL_READY_SECS:-60}
PITR_PORT=${REALM_LOCAL_PITR_PORT:-5434}
PITR=0
SHARD_URLS=""

# The zones, as in docker-compose.yml. Ports 7777/7787 are the ones written in the zone files' portals.
ZONES=(zone-a zone-b)
declare -A ZONE_NAME=([zone-a]=starter-vale [zone-b]=dark-forest)
declare -A ZONE_PORT=([zone-a]=7777 [zone-b]=7787)
declare -A ZONE_ADMIN=([zone-a]=9101 [zone-b]=9102)
# Zone data files; REALM_LOCAL_ZONE_A_FILE / REALM_LOCAL_ZONE_B_FILE override them (the end-to-end test uses a
# small map whose portal is a few steps from the spawn point).
declare -A ZONE_FILE=(
  [zone-a]=${REALM_LOCAL_ZONE_A_FILE:-$ROOT/config/zones/starter-vale.toml}
  [zone-b]=${REALM_LOCAL_ZONE_B_FILE:-$ROOT/config/zones/dark-forest.toml}
)
# Two zones on a small machine: keep their simulation threads on different cores (io threads start from core 0,
# an automatic sim thread takes the last core, so zone-b's goes to core 0).
declare -A ZONE_SIM_CORE=([zone-a]=-1 [zone-b]=0)
PARTS=(zone-a zone-b prometheus nginx)

RUN=$STATE/run
LOGS=$STATE/logs

log() { echo "local-cluster: $*" >&2; }
die() { echo "local-cluster: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; }

# --- process bookkeeping -----------------------------------------------------------------------------------------
pid_of() { [ -f "$RUN/$1.pid" ] && cat "$RUN/$1.pid"; }
# The program a part runs; a pid is only ours if its command line still starts with it (pids get reused).
program_of() {
  case "$1" in
    zone-*) echo "$BIN" ;;
    prometheus) command -v prometheus || echo prometheus ;;
    nginx) command -v nginx || echo nginx ;;
  esac
}
is_running() {
  local pid prog
  pid=$(pid_of "$1") || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  prog=$(program_of "$1")
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "^$prog\b\|^$(basename "$prog")\b\|^nginx: master"
}

# alive PART: the process this run just started is still there. While a part starts, its pid is a forked shell,
# then `setsid`, then the program: is_running's command-line check would call it gone (seen under load in CI: a
# starting prometheus declared "exited" and killed by the cleanup). A pid this run started cannot be reused yet.
alive() {
  local pid
  pid=$(pid_of "$1") || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# start_bg PART COMMAND...: background, own session (setsid: a Ctrl-C in this terminal does not reach it), log
# appended, pid recorded.
start_bg() {
  local part=$1; shift
  echo "=== $(date -Is) starting: $*" >>"$LOGS/$part.log"
  setsid "$@" >>"$LOGS/$part.log" 2>&1 </dev/null &
  echo $! >"$RUN/$part.pid"
  STARTED+=("$part")
}

# stop PART [GRACE_SECS]
stop() {
  local part=$1 grace=${2:-10} pid
  if ! is_running "$part"; then
    rm -f "$RUN/$part.pid"
    return 0
  fi
  pid=$(pid_of "$part")
  log "stopping $part (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$part did not stop within ${grace}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$RUN/$part.pid"
}
grace_of() { case "$1" in zone-*) echo 30 ;; *) echo 10 ;; esac; }  # zones drain within 20 s (server grace)

port_busy() { # port_busy PORT [tcp|udp]
  local flag=-t
  [ "${2:-tcp}" = udp ] && flag=-u
  [ -n "$(ss -Hln "$flag" "sport = :$1" 2>/dev/null)" ]
}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

# --- configuration -----------------------------------------------------------------------------------------------
render_configs() {
  mkdir -p "$STATE/prometheus" "$STATE/nginx" "$LOGS" "$RUN"
  # Prometheus: the compose file with the zone targets on loopback. Fails loudly if the targets it rewrites move.
  local src=monitoring/prometheus.yml dst=$STATE/prometheus/prometheus.yml
  if ! grep -q '"zone-a:9100"' "$src" || ! grep -q '"zone-b:9100"' "$src"; then
    die "$src no longer lists zone-a:9100 and zone-b:9100; update render_configs in $0"
  fi
  sed -e "s/\"zone-a:9100\"/\"127.0.0.1:${ZONE_ADMIN[zone-a]}\"/" \
      -e "s/\"zone-b:9100\"/\"127.0.0.1:${ZONE_ADMIN[zone-b]}\"/" \
      -e "s/\"localhost:9090\"/\"127.0.0.1:$PROM_PORT\"/" \
      -e "s/realm_deployment: compose/realm_deployment: local-cluster/" \
      "$src" >"$dst"
  cp monitoring/alerts.yml "$STATE/prometheus/alerts.yml"

  # nginx: the stream server of nginx/nginx.conf on loopback ports. The prefix holds Debian's module path.
  ln -sfn /usr/lib/nginx/modules "$STATE/nginx/modules"
  cat >"$STATE/nginx/nginx.conf" <<EOF
# Generated by scripts/local-cluster.sh from the design of nginx/nginx.conf (compose): TCP pass-through to
# zone-a; UDP goes straight to zone-a's port ${ZONE_PORT[zone-a]}. Do not edit: rewritten by every \`up\`.
include /etc/nginx/modules-enabled/*.conf;
worker_processes 1;
pid $STATE/nginx/nginx.pid;
error_log $LOGS/nginx-error.log warn;
events { worker_connections 1024; }
stream {
    log_format realm '\$remote_addr [\$time_local] \$protocol \$status sent=\$bytes_sent received=\$bytes_received '
                     'session=\${session_time}s upstream=\$upstream_addr';
    access_log $LOGS/nginx-access.log realm;
    limit_conn_zone \$binary_remote_addr zone=realm_per_ip:1m;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        proxy_pass 127.0.0.1:${ZONE_PORT[zone-a]};
        limit_conn realm_per_ip 16;
        proxy_connect_timeout 3s;
        proxy_timeout 10m;
        tcp_nodelay on;
    }
}
EOF
}

check_configs() {
  command -v promtool >/dev/null || die "promtool missing (scripts/tools.sh installs it)"
  command -v nginx >/dev/null || die "nginx missing (scripts/tools.sh installs it)"
  promtool check config "$STATE/prometheus/prometheus.yml" >&2 || die "generated Prometheus config is invalid"
  nginx -t -q -p "$STATE/nginx/" -e "$LOGS/nginx-error.log" -c "$STATE/nginx/nginx.conf" ||
    die "generated nginx config is invalid (see above)"
  log "configs ok: $STATE/prometheus/prometheus.yml, $STATE/nginx/nginx.conf"
}

token_secret() { # one shared secret for both zones (zone-transfer tokens), kept across restarts
  local f=$STATE/token-secret
  if [ ! -s "$f" ]; then
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$f")
  fi
  cat "$f"
}

# --- up ----------------------------------------------------------------------------------------------------------
STARTED=()
UP_OK=0
cleanup_failed_up() {
  [ "$UP_OK" = 1 ] && return 0
  [ "${#STARTED[@]}" -eq 0 ] && return 0
  log "up failed: stopping what this run started (${STARTED[*]})"
  local i
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop "${STARTED[$i]}" "$(grace_of "${STARTED[$i]}")"; done
}

# zone_env PART: the zone's environment (operator names as in docker-compose.yml). env -i keeps the caller's
# REALM_* variables from leaking in; RUST_LOG passes through for debugging.
zone_env() {
  local part=$1
  ZONE_ENV=(
    env -i "PATH=$PATH" "HOME=${HOME:-/root}" "TMPDIR=$STATE/tmp"
    ${RUST_LOG:+"RUST_LOG=$RUST_LOG"}
    "SERVER_ENV=development" "LOG_LEVEL=${LOG_LEVEL:-info}" "LOG_FORMAT=${LOG_FORMAT:-text}"
    "SERVER_ZONE=${ZONE_NAME[$part]}" "REALM_GAME_ZONE_FILE=${ZONE_FILE[$part]}"
    "SERVER_HOST=127.0.0.1" "SERVER_PORT=${ZONE_PORT[$part]}"
    "REALM_ADMIN_HOST=127.0.0.1" "ADMIN_PORT=${ZONE_ADMIN[$part]}"
    "JWT_SECRET=$SECRET"
    "REALM_SERVER_IO_THREADS=1" "REALM_WORKERS_THREADS=2" "REALM_SERVER_SIM_CORE=${ZONE_SIM_CORE[$part]}"
  )
  if [ "$EMBEDDED" = 0 ]; then
    ZONE_ENV+=(
      "DATABASE_URL=$DATABASE_URL" "REALM_DATABASE_REPLICA_URLS=$REPLICA_URL" "REDIS_URL=$REDIS_URL"
      "REALM_DATABASE_SHARD_URLS=$SHARD_URLS"
      "REALM_REDIS_KEY_PREFIX=realm-local" "REALM_DATABASE_MIGRATE_ON_START=false"
    )
  fi
}

wait_zone() { # wait_zone PART: /ready 200, or a clear failure
  local part=$1 admin=${ZONE_ADMIN[$1]} deadline=$((SECONDS + ZONE_READY_SECS)) code
  while :; do
    if ! alive "$part"; then
      echo "----- last lines of $LOGS/$part.log -----" >&2
      tail -n 15 "$LOGS/$part.log" >&2
      echo "-----" >&2
      if grep -q 'only wires the embedded store' "$LOGS/$part.log"; then
        die "$part exited: this realm-server build cannot use PostgreSQL/Redis yet (the backends are not wired). Run \`$0 up --embedded\` for the in-memory topology until they land."
      fi
      die "$part (${ZONE_NAME[$part]}) exited during start-up; see $LOGS/$part.log"
    fi
    code=$(http_code "http://127.0.0.1:$admin/ready")
    [ "$code" = 200 ] && { log "$part (${ZONE_NAME[$part]}) ready: game 127.0.0.1:${ZONE_PORT[$part]}, admin :$admin"; return 0; }
    if [ "$SECONDS" -ge "$deadline" ]; then
      if [ "$code" = 000 ] && port_busy "${ZONE_PORT[$part]}"; then
        log "WARNING: $part runs and its game port ${ZONE_PORT[$part]} is open, but nothing answers on admin port $admin: this build has no admin listener, so readiness is unverified"
        return 0
      fi
      die "$part not ready after ${ZONE_READY_SECS}s (/ready answered ${code/000/nothing}); see $LOGS/$part.log"
    fi
    sleep 0.5
  done
}

up() {
  EMBEDDED=0
  local build=0 arg
  for arg in "$@"; do
    case "$arg" in
      --embedded) EMBEDDED=1 ;;
      --build) build=1 ;;
      --pitr) PITR=1 ;;
      *) die "up: unknown option $arg (see --help)" ;;
    esac
  done
  trap cleanup_failed_up EXIT

  # Tools and binary.
  if ! command -v prometheus >/dev/null || ! command -v nginx >/dev/null || ! command -v promtool >/dev/null; then
    scripts/tools.sh || die "prometheus/promtool/nginx missing and scripts/tools.sh could not install them"
  fi
  command -v curl >/dev/null || die "curl is required (apt-get install curl)"
  if [ "$build" = 1 ]; then
    log "building realm-server (release)"
    cargo build --release --bin realm-server >&2
  fi
  [ -x "$BIN" ] || die "no realm-server binary at $BIN: run with --build, or cargo build --release --bin realm-server"

  # Ports: free, or held by our own running part.
  local part
  for part in "${ZONES[@]}"; do
    is_running "$part" && continue
    for p in "${ZONE_PORT[$part]}/tcp" "${ZONE_PORT[$part]}/udp" "${ZONE_ADMIN[$part]}/tcp"; do
      ! port_busy "${p%/*}" "${p#*/}" || die "port $p (for $part) is in use by another process"
    done
  done
  is_running prometheus || ! port_busy "$PROM_PORT" || die "port $PROM_PORT (prometheus) is in use; set REALM_LOCAL_PROMETHEUS_PORT"
  is_running nginx || ! port_busy "$NGINX_PORT" || die "port $NGINX_PORT (nginx) is in use; set REALM_LOCAL_NGINX_PORT"

  mkdir -p "$STATE/tmp" "$LOGS" "$RUN"
  render_configs
  check_configs
  SECRET=$(token_secret)

  # Data tier + schema.
  if [ "$EMBEDDED" = 0 ]; then
    log "services: PostgreSQL primary :$PG_PORT, replica :$REPLICA_PORT, Redis :$REDIS_PORT (scripts/services.sh)"
    local services_env
    services_env=$(scripts/services.sh) || die "scripts/services.sh failed: PostgreSQL/Redis are not up"
    eval "$services_env"
    if [ "$(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qtAX -c "select 1 from pg_database where datname = '$DB_NAME'")" != 1 ]; then
      log "creating database $DB_NAME"
      psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qtAX -v ON_ERROR_STOP=1 -c "create database $DB_NAME" >/dev/null ||
        die "cannot create database $DB_NAME on 127.0.0.1:$PG_PORT"
    fi
    DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB_NAME
    REPLICA_URL=postgres://postgres@127.0.0.1:$REPLICA_PORT/$DB_NAME
    if [ "$PITR" = 1 ]; then
      scripts/pitr-cluster.sh start --pgdata "$STATE/pg-pitr" --port "$PITR_PORT" --archive "$STATE/wal-archive" \
        --db "$DB_NAME" --db "${DB_NAME}_shard_0" --db "${DB_NAME}_shard_1" || die "scripts/pitr-cluster.sh failed"
      DATABASE_URL=postgres://postgres@127.0.0.1:$PITR_PORT/$DB_NAME
      SHARD_URLS=postgres://postgres@127.0.0.1:$PITR_PORT/${DB_NAME}_shard_0,postgres://postgres@127.0.0.1:$PITR_PORT/${DB_NAME}_shard_1
      REPLICA_URL=""
      log "PITR: world on 127.0.0.1:$PITR_PORT ($DB_NAME + 2 shards), WAL archived into $STATE/wal-archive"
    fi
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
    log "migrate: realm-server migrate on $DATABASE_URL"
    zone_env zone-a
    echo "=== $(date -Is) realm-server migrate" >>"$LOGS/migrate.log"
    if ! "${ZONE_ENV[@]}" "$BIN" migrate >>"$LOGS/migrate.log" 2>&1; then
      tail -n 15 "$LOGS/migrate.log" >&2
      die "migrations failed (realm-server migrate, log $LOGS/migrate.log); zones not started"
    fi
    tail -n 1 "$LOGS/migrate.log" | sed 's/^/local-cluster: migrate: /' >&2
  else
    log "embedded mode: no PostgreSQL/Redis, no migrations; players live in memory"
  fi

  # Zones, then what depends on them (as compose's depends_on).
  for part in "${ZONES[@]}"; do
    if is_running "$part"; then log "$part already running (pid $(pid_of "$part"))"; continue; fi
    zone_env "$part"
    start_bg "$part" "${ZONE_ENV[@]}" "$BIN" run
  done
  for part in "${ZONES[@]}"; do wait_zone "$part"; done

  if is_running prometheus; then
    log "prometheus already running (pid $(pid_of prometheus))"
  else
    start_bg prometheus prometheus --config.file="$STATE/prometheus/prometheus.yml" \
      --storage.tsdb.path="$STATE/prometheus/data" --storage.tsdb.retention.time=2d \
      --web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-lifecycle
    local deadline=$((SECONDS + 30))
    until [ "$(http_code "http://127.0.0.1:$PROM_PORT/-/ready")" = 200 ]; do
      alive prometheus || die "prometheus exited; see $LOGS/prometheus.log"
      [ "$SECONDS" -lt "$deadline" ] || die "prometheus not ready after 30 s; see $LOGS/prometheus.log"
      sleep 0.5
    done
    log "prometheus ready: http://127.0.0.1:$PROM_PORT (alerts: /alerts, targets: /targets)"
  fi

  if is_running nginx; then
    log "nginx already running (pid $(pid_of nginx))"
  else
    start_bg nginx nginx -p "$STATE/nginx/" -e "$LOGS/nginx-error.log" -c "$STATE/nginx/nginx.conf" -g 'daemon off;'
    local deadline=$((SECONDS + 10))
    until port_busy "$NGINX_PORT"; do
      alive nginx || die "nginx exited; see $LOGS/nginx.log and $LOGS/nginx-error.log"
      [ "$SECONDS" -lt "$deadline" ] || die "nginx is not listening on $NGINX_PORT after 10 s"
      sleep 0.2
    done
    log "nginx ready: TCP 127.0.0.1:$NGINX_PORT -> zone-a 127.0.0.1:${ZONE_PORT[zone-a]}"
  fi

  UP_OK=1
  log "up. Players: TLS 127.0.0.1:$NGINX_PORT (via nginx) or :${ZONE_PORT[zone-a]}; UDP :${ZONE_PORT[zone-a]}; portal to :${ZONE_PORT[zone-b]}. \`$0 status\` / \`$0 down\`."
}

# --- down / status / logs ------------------------------------------------------------------------------------------
down() {
  local purge=0 arg i
  for arg in "$@"; do
    case "$arg" in
      --purge) purge=1 ;;
      *) die "down: unknown option $arg (see --help)" ;;
    esac
  done
  # Reverse start order: the entry point first, the zones last (each drains and saves its players).
  for ((i = ${#PARTS[@]} - 1; i >= 0; i--)); do stop "${PARTS[$i]}" "$(grace_of "${PARTS[$i]}")"; done
  # The archiving cluster of `up --pitr` is ours (the shared one of scripts/services.sh is not).
  if [ -f "$STATE/pg-pitr/postmaster.pid" ]; then
    scripts/pitr-cluster.sh stop --pgdata "$STATE/pg-pitr"
    log "stopped the PITR cluster ($STATE/pg-pitr)"
  fi
  if [ "$purge" = 1 ]; then
    case "$STATE" in /|/var|/var/tmp|/tmp|"$HOME") die "refusing to delete $STATE" ;; esac
    rm -rf "$STATE"
    log "purged $STATE"
  fi
  log "down (PostgreSQL and Redis are shared with the tests and keep running)"
}

status() {
  local all=0 part code
  printf '%-12s %-8s %-8s %s\n' PART STATE PID DETAIL
  for part in "${PARTS[@]}"; do
    if is_running "$part"; then
      case "$part" in
        zone-*)
          code=$(http_code "http://127.0.0.1:${ZONE_ADMIN[$part]}/ready")
          local health
          health=$(curl -s --max-time 2 "http://127.0.0.1:${ZONE_ADMIN[$part]}/health" 2>/dev/null | tr -d '\n' | cut -c1-160)
          printf '%-12s %-8s %-8s %s\n' "$part" running "$(pid_of "$part")" \
            "${ZONE_NAME[$part]} game :${ZONE_PORT[$part]} admin :${ZONE_ADMIN[$part]} /ready=${code/000/no-answer} ${health:+/health=$health}" ;;
        prometheus)
          local targets
          targets=$(curl -s --max-time 2 "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" 2>/dev/null |
            grep -o '"health":"[a-z]*"' | sort | uniq -c | tr -s ' ' | tr '\n' ' ')
          printf '%-12s %-8s %-8s %s\n' prometheus running "$(pid_of prometheus)" \
            "http://127.0.0.1:$PROM_PORT /-/ready=$(http_code "http://127.0.0.1:$PROM_PORT/-/ready") targets:${targets:- none}" ;;
        nginx)
          printf '%-12s %-8s %-8s %s\n' nginx running "$(pid_of nginx)" "TCP 127.0.0.1:$NGINX_PORT -> 127.0.0.1:${ZONE_PORT[zone-a]}" ;;
      esac
    else
      printf '%-12s %-8s %-8s %s\n' "$part" stopped - ""
      all=1
    fi
  done
  local pg replica redis
  pg=$(pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null && echo up || echo down)
  replica=$(pg_isready -q -h 127.0.0.1 -p "$REPLICA_PORT" 2>/dev/null && echo up || echo down)
  redis=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && echo up || echo down)
  echo "services (scripts/services.sh, shared): postgres :$PG_PORT $pg, replica :$REPLICA_PORT $replica, redis :$REDIS_PORT $redis"
  echo "state: $STATE"
  return "$all"
}

logs() {
  local part
  [ $# -gt 0 ] || set -- "${PARTS[@]}" migrate
  for part in "$@"; do
    [ -f "$LOGS/$part.log" ] || continue
    echo "===== $LOGS/$part.log"
    tail -n 40 "$LOGS/$part.log"
  done
}

# --- main --------------------------------------------------------------------------------------------------------
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) up "$@" ;;
  down) down "$@" ;;
  status) status ;;
  logs) logs "$@" ;;
  check-config) render_configs; check_configs ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) echo "local-cluster: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
