#!/usr/bin/env bash
# A PostgreSQL cluster with WAL archiving on, on loopback, for point-in-time recovery where the shared cluster of
# scripts/services.sh (which other tests use, and which runs without archiving) must not be reconfigured: the
# backup drill (tests/backup_drill.rs) and `scripts/local-cluster.sh up --pitr`.
#
# Usage:
#   scripts/pitr-cluster.sh start --pgdata DIR --port PORT --archive DIR [--db NAME]...
#       initdb DIR when it is empty (trust on loopback, user postgres), configure archiving into --archive through
#       scripts/wal-archive.sh (archive_timeout 60 s bounds how old the newest archived WAL can be, i.e. the
#       recovery point when the cluster is lost), start it on 127.0.0.1:PORT and create each --db. Idempotent.
#   scripts/pitr-cluster.sh switch-wal --port PORT
#       close the current WAL segment now (it is archived at once): what a test or an operator does to make the
#       latest writes recoverable without waiting for archive_timeout.
#   scripts/pitr-cluster.sh stop --pgdata DIR
#
# Runs the server as postgres when invoked as root (PostgreSQL refuses to run as root), like scripts/services.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

cmd=${1:-}
[ $# -gt 0 ] && shift
PGDATA_DIR="" PORT="" ARCHIVE="" DBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pgdata) PGDATA_DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --archive) ARCHIVE=$2; shift 2 ;;
    --db) DBS+=("$2"); shift 2 ;;
    *) echo "pitr-cluster: unknown argument $1" >&2; exit 2 ;;
  esac
done

BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$BIN" ] || BIN=$(dirname "$(command -v pg_ctl)")
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
own() { if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$@"; fi; }
psql_port() { "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -qtAX -v ON_ERROR_STOP=1 "$@"; }

case "$cmd" in
  start)
    if [ -z "$PGDATA_DIR" ] || [ -z "$PORT" ] || [ -z "$ARCHIVE" ]; then
      echo "pitr-cluster: start needs --pgdata --port --archive" >&2
      exit 2
    fi
    mkdir -p "$ARCHIVE" "$PGDATA_DIR"
    chmod 700 "$PGDATA_DIR"
    own "$ARCHIVE" "$PGDATA_DIR"
    if [ ! -s "$PGDATA_DIR/PG_VERSION" ]; then
      as_postgres "$BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
      cat >>"$PGDATA_DIR/postgresql.conf" <<CONF
# scripts/pitr-cluster.sh
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
wal_level = replica
archive_mode = on
archive_command = '$ROOT/scripts/wal-archive.sh push %p %f $ARCHIVE'
archive_timeout = 60
max_wal_senders = 4
fsync = on
CONF
      echo "host replication all 127.0.0.1/32 trust" >>"$PGDATA_DIR/pg_hba.conf"
    fi
    if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
      as_postgres "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/server.log" -w -t 60 start >/dev/null
    fi
    for db in "${DBS[@]}"; do
      if [ "$(psql_port -c "SELECT count(*) FROM pg_database WHERE datname = '$db'")" = 0 ]; then
        psql_port -c "CREATE DATABASE \"$db\""
      fi
    done
    echo "pitr-cluster: up on 127.0.0.1:$PORT, data $PGDATA_DIR, WAL archive $ARCHIVE" >&2
    ;;
  switch-wal)
    [ -n "$PORT" ] || { echo "pitr-cluster: switch-wal needs --port" >&2; exit 2; }
    psql_port -c "SELECT pg_switch_wal()" >/dev/null
    # Wait until the segment just closed is archived (last_archived_wal catches up with the switch).
    for _ in $(seq 1 100); do
      [ "$(psql_port -c "SELECT last_failed_time IS NULL OR last_archived_time >= last_failed_time FROM pg_stat_archiver")" = t ] &&
        [ "$(psql_port -c "SELECT last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver")" = t ] && exit 0
      sleep 0.1
    done
    echo "pitr-cluster: the WAL segment was not archived within 10 s (see pg_stat_archiver)" >&2
    exit 1
    ;;
  stop)
    [ -n "$PGDATA_DIR" ] || { echo "pitr-cluster: stop needs --pgdata" >&2; exit 2; }
    as_postgres "$BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
