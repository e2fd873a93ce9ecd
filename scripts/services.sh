#!/usr/bin/env bash
# Brings up, on loopback, the services Realm's tests (and scripts/local-cluster.sh) need, when they are not already
# up: PostgreSQL primary (127.0.0.1:5432), a streaming replica (127.0.0.1:5433), shard databases, Redis (6379).
# Installs the Debian packages when missing (needs root). Idempotent: running it twice changes nothing.
# Prints `export NAME=value` lines for the tests; source it or eval its output:  eval "$(scripts/services.sh)"
set -euo pipefail

PG_PORT=${REALM_PG_PORT:-5432}
REPLICA_PORT=${REALM_PG_REPLICA_PORT:-5433}
REPLICA_DIR=${REALM_PG_REPLICA_DIR:-/var/tmp/realm-pg-replica}
REDIS_PORT=${REALM_REDIS_PORT:-6379}
TEST_DB=realm_test
SHARD_DBS=(realm_shard_0 realm_shard_1)

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "$* missing and not root: install it (apt-get install $*) or run as root"
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

psql_primary() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtAX "$@"; }

wait_for() { # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

ensure_primary() {
  if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
    if [ -z "$(pg_bindir)" ] || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version primary on $PG_PORT"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    wait_for 30 pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL primary did not start on $PG_PORT"
  fi
  # Trust on loopback for the test user and for replication connections (the replica's pg_basebackup).
  local hba
  hba=$(psql_primary -c "show hba_file")
  if ! grep -qE '^host\s+replication\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    log "allowing loopback replication connections in $hba"
    echo "host replication all 127.0.0.1/32 trust" >>"$hba"
    psql_primary -c "select pg_reload_conf()" >/dev/null
  fi
  for db in "$TEST_DB" "${SHARD_DBS[@]}"; do
    if [ "$(psql_primary -c "select 1 from pg_database where datname = '$db'")" != 1 ]; then
      log "creating database $db"
      psql_primary -c "create database $db" >/dev/null
    fi
  done
}

replica_ok() {
  [ "$(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -qtAX -c 'select pg_is_in_recovery()' 2>/dev/null)" = t ]
}

ensure_replica() {
  replica_ok && return 0
  local bin
  bin=$(pg_bindir)
  # A replica directory that exists but does not run is started once before being rebuilt.
  if [ -f "$REPLICA_DIR/standby.signal" ]; then
    as_postgres "$bin/pg_ctl" -D "$REPLICA_DIR" -l "$REPLICA_DIR/server.log" -w -t 30 start >&2 || true
    if wait_for 20 replica_ok; then return 0; fi
    as_postgres "$bin/pg_ctl" -D "$REPLICA_DIR" -m immediate stop >&2 || true
  fi
  log "creating streaming replica in $REPLICA_DIR (port $REPLICA_PORT)"
  rm -rf "$REPLICA_DIR"
  mkdir -p "$(dirname "$REPLICA_DIR")"
  install -d -o postgres -g postgres -m 700 "$REPLICA_DIR"
  as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$REPLICA_DIR" -R -X stream -c fast >&2
  # Debian keeps postgresql.conf and pg_hba.conf in /etc: the copy needs its own.
  as_postgres tee "$REPLICA_DIR/postgresql.conf" >/dev/null <<CONF
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$REPLICA_DIR'
hot_standby = on
hot_standby_feedback = on
max_connections = 100
CONF
  as_postgres tee "$REPLICA_DIR/pg_hba.conf" >/dev/null <<CONF
local all all trust
host all all 127.0.0.1/32 trust
CONF
  as_postgres "$bin/pg_ctl" -D "$REPLICA_DIR" -l "$REPLICA_DIR/server.log" -w -t 60 start >&2
  wait_for 30 replica_ok || die "replica on $REPLICA_PORT is not in recovery (see $REPLICA_DIR/server.log)"
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server redis-tools
  log "starting Redis on $REDIS_PORT"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/realm-test.log >&2
  wait_for 20 sh -c "redis-cli -h 127.0.0.1 -p $REDIS_PORT ping | grep -q PONG" || die "Redis did not start on $REDIS_PORT"
}

command -v pg_isready >/dev/null || apt_install postgresql-client
command -v redis-cli >/dev/null || apt_install redis-tools
ensure_primary
ensure_replica
ensure_redis

shards=""
for db in "${SHARD_DBS[@]}"; do shards="${shards:+$shards,}postgres://postgres@127.0.0.1:$PG_PORT/$db"; done
cat <<ENV
export REALM_TEST_PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/$TEST_DB
export REALM_TEST_PG_REPLICA_URL=postgres://postgres@127.0.0.1:$REPLICA_PORT/$TEST_DB
export REALM_TEST_PG_SHARD_URLS=$shards
export REALM_TEST_PG_REPLICA_DIR=$REPLICA_DIR
export REALM_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/
export REALM_TEST_REQUIRE_SERVICES=1
ENV
