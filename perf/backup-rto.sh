#!/usr/bin/env bash
# Recovery-time and recovery-point figures for README "Backups and recovery" and BENCHMARKS.md: a synthetic world
# of PLAYERS accounts (each with progress on one of two shards, ITEMS_PER_PLAYER items and LOG_PER_PLAYER combat
# log rows), then
#   dump:  scripts/backup.sh dump, scripts/restore.sh --set into fresh databases (restore + verify + fence);
#   pitr:  a WAL-archiving cluster (scripts/pitr-cluster.sh) with the same world, a base backup, one more write
#          burst (WAL to replay), pg_switch_wal -> archived latency, scripts/restore.sh --to-time.
# Usage: perf/backup-rto.sh [PLAYERS] (default 100000). Needs scripts/services.sh's PostgreSQL on 5432 (fresh
# databases with unique names, dropped at the end) and runs as root or postgres. Prints one line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PLAYERS=${1:-100000}
ITEMS_PER_PLAYER=${ITEMS_PER_PLAYER:-10}
LOG_PER_PLAYER=${LOG_PER_PLAYER:-10}
PG=postgres://postgres@127.0.0.1:5432
TAG=rto_$$
WORK=/var/tmp/realm-$TAG
BIN=${REALM_SERVER_BIN:-$ROOT/target/release/realm-server}
PSQL=(psql -qtAX -v ON_ERROR_STOP=1)

cleanup() {
  for db in p s0 s1 rp rs0 rs1; do "${PSQL[@]}" "$PG/postgres" -c "DROP DATABASE IF EXISTS ${TAG}_$db WITH (FORCE)" >/dev/null 2>&1 || true; done
  scripts/pitr-cluster.sh stop --pgdata "$WORK/rec" || true
  scripts/pitr-cluster.sh stop --pgdata "$WORK/data" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK"

load() { # load PRIMARY_URL SHARD0_URL SHARD1_URL: migrate, then the synthetic world
  REALM_DATABASE_URL=$1 REALM_DATABASE_SHARD_URLS="$2,$3" "$BIN" migrate >/dev/null
  "${PSQL[@]}" "$1" -c "INSERT INTO players (username, password_hash, last_login)
    SELECT 'player' || g, '\$argon2id\$v=19\$m=19456,t=2,p=1\$' || md5(g::text) || '\$' || md5((g * 7)::text), now()
    FROM generate_series(1, $PLAYERS) g" \
    -c "SELECT setval('item_id_seq', $PLAYERS * $ITEMS_PER_PLAYER)" \
    -c "INSERT INTO sessions (player_id, token_hash, expires_at, ip_address)
        SELECT g, sha256(g::text::bytea), now() + interval '1 day', '10.0.0.' || (g % 250) FROM generate_series(1, $PLAYERS) g"
  local shard url
  for shard in 0 1; do
    url=$([ "$shard" = 0 ] && echo "$2" || echo "$3")
    "${PSQL[@]}" "$url" -c "INSERT INTO player_progress (player_id, zone, pos_x, pos_y, level, experience, health, owner_epoch, updated_at)
        SELECT g, 'starter-vale', random() * 2000, random() * 2000, 1 + g % 60, g * 13, 100, 1 + g % 5, now()
        FROM generate_series(1, $PLAYERS) g WHERE g % 2 = $shard" \
      -c "INSERT INTO inventory_items (item_id, player_id, item_kind, quantity)
        SELECT (g - 1) * $ITEMS_PER_PLAYER + k, g, k, 1 + k % 3
        FROM generate_series(1, $PLAYERS) g, generate_series(1, $ITEMS_PER_PLAYER) k WHERE g % 2 = $shard" \
      -c "CREATE TABLE IF NOT EXISTS combat_log_p$(date -u +%Y%m%d) PARTITION OF combat_log
        FOR VALUES FROM ('$(date -u +%F)') TO ('$(date -u -d tomorrow +%F)')" \
      -c "INSERT INTO combat_log (at, zone, actor, target, kind, amount)
        SELECT now(), 'starter-vale', g, NULL, 1, k FROM generate_series(1, $PLAYERS) g,
        generate_series(1, $LOG_PER_PLAYER) k WHERE g % 2 = $shard" \
      -c "VACUUM ANALYZE"
  done
}

secs() { echo "$(( $2 - $1 ))" | awk '{printf "%.1f", $1 / 1e9}'; }

# --- dump / restore ----------------------------------------------------------------------------------------------
for db in p s0 s1; do "${PSQL[@]}" "$PG/postgres" -c "CREATE DATABASE ${TAG}_$db"; done
t=$(date +%s%N); load "$PG/${TAG}_p" "$PG/${TAG}_s0" "$PG/${TAG}_s1"; echo "load: $(secs "$t" "$(date +%s%N)") s"
size=$("${PSQL[@]}" "$PG/postgres" -c "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database WHERE datname LIKE '${TAG}_%'")
echo "world: $PLAYERS players, $((PLAYERS * ITEMS_PER_PLAYER)) items, $((PLAYERS * LOG_PER_PLAYER)) combat log rows, $PLAYERS sessions; databases $size"
t=$(date +%s%N)
scripts/backup.sh --dest "$WORK/bk" --primary "$PG/${TAG}_p" --shard "$PG/${TAG}_s0" --shard "$PG/${TAG}_s1" >"$WORK/dump.log" 2>&1 ||
  { cat "$WORK/dump.log" >&2; exit 1; }
echo "dump: $(secs "$t" "$(date +%s%N)") s, set $(du -sh "$WORK"/bk/dumps/2* | cut -f1)"
t=$(date +%s%N)
scripts/restore.sh --set "$(ls -d "$WORK"/bk/dumps/2*)" --primary "$PG/${TAG}_rp" --shard "$PG/${TAG}_rs0" --shard "$PG/${TAG}_rs1" >"$WORK/restore.log" 2>&1 ||
  { cat "$WORK/restore.log" >&2; exit 1; }
echo "restore (verify manifest, pg_restore x3, table checksums, fence): $(secs "$t" "$(date +%s%N)") s"

# --- PITR ----------------------------------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
scripts/pitr-cluster.sh start --pgdata "$WORK/data" --port "$port" --archive "$WORK/wal" --db p --db s0 --db s1 2>/dev/null
L=postgres://postgres@127.0.0.1:$port
load "$L/p" "$L/s0" "$L/s1"
t=$(date +%s%N)
scripts/backup.sh base --dest "$WORK/bk" --primary "$L/postgres" --wal-archive "$WORK/wal" --textfile "$WORK/m.prom" >"$WORK/base.log" 2>&1 ||
  { cat "$WORK/base.log" >&2; exit 1; }
echo "base backup: $(secs "$t" "$(date +%s%N)") s, $(du -sh "$WORK"/bk/base/2* | cut -f1)"
# WAL to replay: a tenth of the items again, then the target, then one more write that must not come back.
"${PSQL[@]}" "$L/s0" -c "INSERT INTO inventory_items (item_id, player_id, item_kind, quantity)
  SELECT $PLAYERS * $ITEMS_PER_PLAYER + g, g, 1, 1 FROM generate_series(1, $PLAYERS) g"
sleep 1; target=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ); sleep 1
"${PSQL[@]}" "$L/s0" -c "UPDATE player_progress SET level = 99 WHERE player_id = 2"
t=$(date +%s%N); scripts/pitr-cluster.sh switch-wal --port "$port"
echo "pg_switch_wal -> segment archived: $(secs "$t" "$(date +%s%N)") s"
echo "WAL to replay: $(du -sh "$WORK/wal" | cut -f1) archived"
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t=$(date +%s%N)
scripts/restore.sh --to-time "$target" --base "$(ls -d "$WORK"/bk/base/2*)" --wal-archive "$WORK/wal" --pgdata "$WORK/rec" \
  --port "$rport" --primary "postgres://postgres@127.0.0.1:$rport/p" --shard "postgres://postgres@127.0.0.1:$rport/s0" \
  --shard "postgres://postgres@127.0.0.1:$rport/s1" >"$WORK/pitr.log" 2>&1 || { cat "$WORK/pitr.log" >&2; exit 1; }
echo "point-in-time recovery (unpack, replay, promote, fence): $(secs "$t" "$(date +%s%N)") s"
level=$("${PSQL[@]}" "postgres://postgres@127.0.0.1:$rport/s0" -c "SELECT level FROM player_progress WHERE player_id = 2")
[ "$level" != 99 ] || { echo "ERROR: the write after the target time was recovered" >&2; exit 1; }
echo "recovered world: the write after $target is absent (level $level)"
