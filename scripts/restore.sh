#!/usr/bin/env bash
# Restores Realm's databases from scripts/backup.sh output, and makes the restored world safe to serve.
#
# Usage:
#   scripts/restore.sh --set DIR --primary URL [--shard URL]... [options]
#       Logical restore of one dump set (DEST/dumps/<time>) into the primary and shard databases given (in
#       database.shard_urls order; as many as the set's shard map has). Databases that do not exist are created;
#       a database that holds any table is refused unless --force (which drops and recreates it).
#   scripts/restore.sh --to-time TIME --base DIR --wal-archive DIR --pgdata NEWDIR --port PORT
#                      --primary URL [--shard URL]... [options]
#       Point-in-time recovery: the base backup DIR (DEST/base/<time>, taken before TIME) is unpacked into the new,
#       empty data directory NEWDIR, archived WAL is replayed up to TIME (recovery_target_time, exclusive: a
#       transaction that committed exactly at TIME is not included), and the recovered cluster is promoted and left
#       running on 127.0.0.1:PORT. --primary/--shard name its databases (URLs on that port) for the steps below.
#   scripts/restore.sh --fence-only --primary URL [--shard URL]... [--redis URL --key-prefix P]
#       Only steps 1-4 below, on databases restored by other means (a managed service's or an operator's
#       point-in-time restore, a snapshot of the volume) or after a run whose fencing failed (exit 7).
#
# Both modes, before anything is written: the manifest is verified (format, SHA256SUMS and each file's SHA-256,
# shard count against the --shard URLs, schema version known to this checkout's migrations/). After restoring, the
# logical mode checks every table's row count and checksum against the manifest (taken in the dump's snapshot).
#
# Then, in both modes, what a zone needs so that nothing from before the restore can touch the restored world
# (README "Backups and recovery"):
#   1. owner_epoch of every player is raised by --id-gap and owner_zone cleared: a zone that owned a player before
#      the restore holds an epoch at most (restored epoch + claims since the backup), far below the new one, so its
#      fenced saves and item grants match 0 rows (OwnershipLost) and it drops the player instead of saving;
#   2. item_id_seq (primary) is set to --id-gap past the largest of its own value and every item_id on every shard,
#      and the players' id sequence likewise past every players.id and every shard's player_id: ids handed out after
#      the backup (now lost, but seen by clients, logs and other systems) are never handed out again;
#   3. every login session is expired (sessions.expires_at = now): a session revoked after the backup (logout,
#      password change) must not come back to life; the rows stay, so "logged in from this address" history used
#      by lockouts survives;
#   4. with --redis, the player ownership locks and zone-transfer tokens under --key-prefix are deleted: locks held
#      by zones of the old world would otherwise keep restored players out until they expire, and a transfer token
#      issued before the restore must not admit anyone into the restored world.
# Zones of the old world must be stopped (or pointed at the restored databases and restarted) before players come
# back; step 1 makes a forgotten one harmless.
#
# Options:
#   --force            drop and recreate non-empty target databases (logical mode) / remove a non-empty NEWDIR
#   --redis URL        Redis of the zones (redis://[:password@]host:port/db) [REALM_RESTORE_REDIS_URL]
#   --key-prefix P     redis.key_prefix of the zones (default realm)
#   --id-gap N         how far epochs and id sequences jump (default 4294967296 = 2^32: more claims per player, and
#                      more item ids, than any world makes between a backup and a restore)
#   --jobs N           parallel pg_restore jobs per database (default 2)
#   --migrations DIR   migrations/ to check the schema version against (default: this checkout's)
#   --skip-fence       restore only, no steps 1-4 (forensics: looking at a backup, never serving it)
#
# Exit codes: 0 restored and fenced; 2 usage; 3 the manifest or a file does not verify; 4 a target is not empty
# (no --force) or cannot be created; 5 pg_restore or recovery failed; 6 the restored tables do not match the
# manifest; 7 fencing (steps 1-4) failed. The last line is `realm-restore status=ok|failed exit=N ...`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SET=""
TO_TIME=""
BASE=""
WAL_ARCHIVE=""
PGDATA_NEW=""
PORT=""
PRIMARY=""
SHARDS=()
FORCE=0
REDIS=${REALM_RESTORE_REDIS_URL:-}
KEY_PREFIX=realm
ID_GAP=4294967296
JOBS=2
MIGRATIONS=$ROOT/migrations
FENCE=1
FENCE_ONLY=0
MODE_NAME=dump
START=$(date +%s)

usage() { sed -n '2,52p' "$0" | sed 's/^# \{0,1\}//'; }
log() { echo "restore: $*" >&2; }
finish() {
  local rc=$1 reason=$2
  echo "realm-restore status=$([ "$rc" = 0 ] && echo ok || echo failed) exit=$rc mode=$MODE_NAME duration_s=$(($(date +%s) - START)) reason=\"$reason\""
  exit "$rc"
}
fail() { log "ERROR: $2"; finish "$1" "$2"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --set) SET=$2; shift 2 ;;
    --to-time) TO_TIME=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --wal-archive) WAL_ARCHIVE=$2; shift 2 ;;
    --pgdata) PGDATA_NEW=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --primary) PRIMARY=$2; shift 2 ;;
    --shard) SHARDS+=("$2"); shift 2 ;;
    --force) FORCE=1; shift ;;
    --redis) REDIS=$2; shift 2 ;;
    --key-prefix) KEY_PREFIX=$2; shift 2 ;;
    --id-gap) ID_GAP=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --migrations) MIGRATIONS=$2; shift 2 ;;
    --skip-fence) FENCE=0; shift ;;
    --fence-only) FENCE_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) fail 2 "unknown argument: $1 (see --help)" ;;
  esac
done
[[ "$ID_GAP" =~ ^[1-9][0-9]{0,17}$ ]] || fail 2 "--id-gap must be a positive whole number below 10^18, got '$ID_GAP'"
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || fail 2 "--jobs must be a positive whole number"
[[ "$KEY_PREFIX" =~ ^[A-Za-z0-9_.:-]+$ ]] || fail 2 "--key-prefix '$KEY_PREFIX' has characters a Redis pattern would read"
[ -n "$PRIMARY" ] || fail 2 "--primary URL is required"
if [ "$FENCE_ONLY" = 1 ]; then
  MODE_NAME=fence-only
  if [ -n "$SET" ] || [ -n "$TO_TIME" ]; then fail 2 "--fence-only restores nothing: no --set or --to-time"; fi
  [ "$FENCE" = 1 ] || fail 2 "--fence-only and --skip-fence contradict each other"
elif [ -n "$TO_TIME" ]; then
  MODE_NAME=pitr
  [ -z "$SET" ] || fail 2 "--set and --to-time are two different restores: choose one"
  if [ -z "$BASE" ] || [ -z "$WAL_ARCHIVE" ] || [ -z "$PGDATA_NEW" ] || [ -z "$PORT" ]; then
    fail 2 "--to-time needs --base, --wal-archive, --pgdata and --port"
  fi
else
  [ -n "$SET" ] || fail 2 "choose a backup: --set DIR (a dump set) or --to-time TIME (point in time)"
fi
command -v jq >/dev/null || fail 2 "jq is needed to read manifests (apt-get install jq)"

PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)
pgtool() { if [ -n "$PG_BIN" ] && [ -x "$PG_BIN/$1" ]; then echo "$PG_BIN/$1"; else command -v "$1"; fi; }
psql_q() { local url=$1; shift; "$(pgtool psql)" "$url" -qtAX -v ON_ERROR_STOP=1 --no-password "$@"; }
redact() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }
db_name_of() { local rest=${1#*://}; rest=${rest#*/}; rest=${rest%%\?*}; echo "$rest"; }
# The same server's maintenance database (to create and drop the target).
maintenance_url() { local base=${1%%\?*}; echo "${base%/*}/postgres${1#"$base"}"; }
# PostgreSQL refuses to run as root: server-side commands run as postgres when we are root.
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# Must match scripts/backup.sh (the checksums are compared, so the text of a row must be produced the same way).
TABLE_LIST_SQL="SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname;"
table_checksums() { # table_checksums URL: "name|rows|checksum" lines
  local url=$1 table
  for table in $(psql_q "$url" -c "$TABLE_LIST_SQL"); do
    psql_q "$url" -c "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;" \
      -c "SELECT '$table', count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric) || ':' || sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), '') FROM (SELECT md5(t::text) AS h FROM public.\"$table\" t) r;"
  done
}

latest_migration() { find "$MIGRATIONS" -maxdepth 1 -name '*.sql' -printf '%f\n' 2>/dev/null | sed 's/\.sql$//' | sort | tail -n 1; }

verify_checksums() { # verify_checksums DIR: SHA256SUMS lists every file and all verify
  local dir=$1
  [ -f "$dir/manifest.json" ] || fail 3 "$dir has no manifest.json (not a backup, or an incomplete one)"
  [ -f "$dir/SHA256SUMS" ] || fail 3 "$dir has no SHA256SUMS"
  (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS) || fail 3 "checksums of $dir do not verify: corrupted or tampered"
  jq -e '.format == "realm-backup/1"' "$dir/manifest.json" >/dev/null ||
    fail 3 "$dir/manifest.json: unknown format $(jq -c .format "$dir/manifest.json" 2>/dev/null || echo '(not JSON)')"
}

# --- steps 1-4: fencing the restored world -------------------------------------------------------------------------
fence() {
  local shard_urls=("${SHARDS[@]}")
  # No shards: the primary holds player data too.
  [ "${#shard_urls[@]}" -gt 0 ] || shard_urls=("$PRIMARY")
  local url max_item=0 max_player=0 v epochs=0
  for url in "${shard_urls[@]}"; do
    v=$(psql_q "$url" -c "UPDATE player_progress SET owner_epoch = owner_epoch + $ID_GAP, owner_zone = NULL" \
      -c "SELECT count(*) FROM player_progress") || return 1
    epochs=$((epochs + v))
    v=$(psql_q "$url" -c "SELECT coalesce(max(item_id), 0) FROM inventory_items") || return 1
    [ "$v" -gt "$max_item" ] && max_item=$v
    v=$(psql_q "$url" -c "SELECT greatest(coalesce((SELECT max(player_id) FROM player_progress), 0),
                                          coalesce((SELECT max(player_id) FROM inventory_items), 0))") || return 1
    [ "$v" -gt "$max_player" ] && max_player=$v
  done
  local item_next player_next expired
  item_next=$(psql_q "$PRIMARY" -c "SELECT setval('item_id_seq',
      greatest((SELECT last_value FROM item_id_seq), $max_item) + $ID_GAP, true)") || return 1
  player_next=$(psql_q "$PRIMARY" -c "SELECT setval(pg_get_serial_sequence('players', 'id'),
      greatest((SELECT coalesce(max(id), 0) FROM players), $max_player,
               (SELECT last_value FROM players_id_seq)) + $ID_GAP, true)") || return 1
  expired=$(psql_q "$PRIMARY" -c "WITH e AS (UPDATE sessions SET expires_at = now() WHERE expires_at > now() RETURNING 1)
      SELECT count(*) FROM e") || return 1
  log "fenced: owner_epoch +$ID_GAP on $epochs players; item ids resume after $item_next (largest restored $max_item);" \
    "player ids after $player_next; $expired sessions expired"
  if [ -n "$REDIS" ]; then
    command -v redis-cli >/dev/null || { log "redis-cli not found (apt-get install redis-tools)"; return 1; }
    local pattern deleted=0 key
    for pattern in "$KEY_PREFIX:lock:player:*" "$KEY_PREFIX:transfer:*"; do
      while IFS= read -r key; do
        [ -n "$key" ] || continue
        redis-cli -u "$REDIS" --no-auth-warning DEL "$key" >/dev/null || return 1
        deleted=$((deleted + 1))
      done < <(redis-cli -u "$REDIS" --no-auth-warning --scan --pattern "$pattern")
    done
    log "redis: deleted $deleted ownership locks and transfer tokens under '$KEY_PREFIX:'"
  else
    log "no --redis: delete the zones' '$KEY_PREFIX:lock:player:*' and '$KEY_PREFIX:transfer:*' keys yourself" \
      "(or wait lock_ttl_ms); the epochs already fence any old owner"
  fi
}

# --- logical restore ---------------------------------------------------------------------------------------------
restore_dump() {
  verify_checksums "$SET"
  local manifest=$SET/manifest.json count schema latest
  count=$(jq -r '.shard_map.count' "$manifest")
  [ "$count" = "${#SHARDS[@]}" ] ||
    fail 3 "the set has $count shards ($(jq -r '.shard_map.databases | join(", ")' "$manifest")), ${#SHARDS[@]} --shard given: the shard map must match (player -> shard placement depends on the count)"
  schema=$(jq -r '.schema_version' "$manifest")
  latest=$(latest_migration)
  [ -n "$latest" ] || fail 2 "no migrations found in $MIGRATIONS"
  [[ ! "$schema" > "$latest" ]] ||
    fail 3 "the set's schema $schema is newer than this checkout's migrations ($latest): restore with the release that made it"
  # Each file's SHA-256 as the manifest records it (SHA256SUMS covers the manifest itself).
  local file sum
  while IFS='|' read -r file sum; do
    [ "$(sha256sum "$SET/$file" | cut -d' ' -f1)" = "$sum" ] || fail 3 "$file does not match its manifest checksum"
    "$(pgtool pg_restore)" --list "$SET/$file" >/dev/null || fail 3 "$file is not a readable pg_dump archive"
  done < <(jq -r '.databases[] | "\(.file)|\(.sha256)"' "$manifest")
  log "manifest ok: set $(jq -r .set "$manifest"), schema $schema, $count shards, taken $(jq -r .started_at "$manifest")"

  # Targets: file -> URL. Every one is checked before any is written.
  local -a files=(primary.dump) urls=("$PRIMARY")
  local i
  for i in "${!SHARDS[@]}"; do files+=("shard-$i.dump"); urls+=("${SHARDS[$i]}"); done
  for i in "${!urls[@]}"; do
    local url=${urls[$i]} name exists used
    name=$(db_name_of "$url")
    [[ "$name" =~ ^[A-Za-z0-9_]+$ ]] || fail 2 "database name '$name' of $(redact "$url") is not a plain name"
    exists=$(psql_q "$(maintenance_url "$url")" -c "SELECT count(*) FROM pg_database WHERE datname = '$name'") ||
      fail 4 "cannot reach the server of $(redact "$url")"
    if [ "$exists" = 1 ]; then
      used=$(psql_q "$url" -c "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
        AND n.nspname NOT LIKE 'pg_temp%'") || fail 4 "cannot inspect $(redact "$url")"
      if [ "$used" != 0 ] && [ "$FORCE" = 0 ]; then
        fail 4 "$(redact "$url") is not empty ($used relations): refusing to overwrite it without --force"
      fi
    fi
  done
  for i in "${!urls[@]}"; do
    local url=${urls[$i]} name
    name=$(db_name_of "$url")
    if [ "$FORCE" = 1 ]; then
      psql_q "$(maintenance_url "$url")" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" ||
        fail 4 "cannot drop $name"
    fi
    if [ "$(psql_q "$(maintenance_url "$url")" -c "SELECT count(*) FROM pg_database WHERE datname = '$name'")" = 0 ]; then
      psql_q "$(maintenance_url "$url")" -c "CREATE DATABASE \"$name\"" || fail 4 "cannot create $name"
    fi
    log "restoring ${files[$i]} into $(redact "$url")"
    # --no-owner: objects belong to the restoring role (the backup may come from another environment).
    "$(pgtool pg_restore)" --exit-on-error --no-owner --jobs="$JOBS" --dbname="$url" "$SET/${files[$i]}" ||
      fail 5 "pg_restore of ${files[$i]} into $(redact "$url") failed"
  done
  # What landed must be exactly what was dumped: every table's count and checksum, before fencing changes rows.
  for i in "${!urls[@]}"; do
    local want got
    want=$(jq -r --arg f "${files[$i]}" '.databases[] | select(.file == $f) | .tables | to_entries[] |
      "\(.key)|\(.value.rows)|\(.value.checksum)"' "$manifest" | sort)
    got=$(table_checksums "${urls[$i]}" | sort) || fail 6 "cannot checksum $(redact "${urls[$i]}")"
    if [ "$want" != "$got" ]; then
      diff <(echo "$want") <(echo "$got") >&2 || true
      fail 6 "restored tables of ${files[$i]} differ from the manifest"
    fi
  done
  log "every table of every database matches the manifest (rows and checksums)"
}

# --- point-in-time recovery --------------------------------------------------------------------------------------
restore_pitr() {
  verify_checksums "$BASE"
  jq -e '.kind == "base"' "$BASE/manifest.json" >/dev/null || fail 3 "$BASE is not a base backup"
  local target_s base_s
  target_s=$(date -u -d "$TO_TIME" +%s) || fail 2 "--to-time '$TO_TIME' is not a time"
  base_s=$(date -u -d "$(jq -r .finished_at "$BASE/manifest.json")" +%s)
  [ "$target_s" -ge "$base_s" ] ||
    fail 3 "--to-time $TO_TIME is before the end of base backup $(jq -r .set "$BASE/manifest.json"): choose an older base backup"
  [ -d "$WAL_ARCHIVE" ] || fail 2 "WAL archive $WAL_ARCHIVE does not exist"
  if [ -e "$PGDATA_NEW" ] && [ -n "$(ls -A "$PGDATA_NEW" 2>/dev/null)" ]; then
    [ "$FORCE" = 1 ] || fail 4 "$PGDATA_NEW is not empty: refusing without --force"
    rm -rf "$PGDATA_NEW"
  fi
  mkdir -p "$PGDATA_NEW"
  chmod 700 "$PGDATA_NEW"
  tar -xzf "$BASE/base.tar.gz" -C "$PGDATA_NEW" || fail 5 "cannot unpack $BASE/base.tar.gz"
  mkdir -p "$PGDATA_NEW/pg_wal"
  tar -xzf "$BASE/pg_wal.tar.gz" -C "$PGDATA_NEW/pg_wal" || fail 5 "cannot unpack $BASE/pg_wal.tar.gz"
  local target
  target=$(date -u -d "$TO_TIME" '+%Y-%m-%d %H:%M:%S.%6N+00')
  # Settings of the recovered copy (postgresql.auto.conf is read last): its own port and socket directory, no
  # archiving (it must not write into the old cluster's archive; enable it again once it is the new primary).
  cat >>"$PGDATA_NEW/postgresql.auto.conf" <<CONF
# scripts/restore.sh --to-time $TO_TIME
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA_NEW'
archive_mode = off
restore_command = '$ROOT/scripts/wal-archive.sh fetch %f %p $WAL_ARCHIVE'
recovery_target_time = '$target'
recovery_target_inclusive = off
recovery_target_action = 'promote'
CONF
  touch "$PGDATA_NEW/recovery.signal"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PGDATA_NEW"; fi
  log "recovering $BASE to $target on port $PORT (data $PGDATA_NEW)"
  as_postgres "$(pgtool pg_ctl)" -D "$PGDATA_NEW" -l "$PGDATA_NEW/recovery.log" -w -t 300 start >&2 ||
    fail 5 "the recovered cluster did not start (see $PGDATA_NEW/recovery.log)"
  local deadline=$((SECONDS + 300)) state=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(psql_q "$(maintenance_url "$PRIMARY")" -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)
    [ "$state" = f ] && break
    grep -q 'FATAL' "$PGDATA_NEW/recovery.log" && break
    sleep 0.2
  done
  if [ "$state" != f ]; then
    tail -n 20 "$PGDATA_NEW/recovery.log" >&2 || true
    fail 5 "recovery did not reach $TO_TIME and promote (see $PGDATA_NEW/recovery.log; a target after the last archived WAL cannot be reached)"
  fi
  grep -E 'recovery stopping|recovery has paused|selected new timeline|archive recovery complete' "$PGDATA_NEW/recovery.log" >&2 || true
  grep -q 'recovery stopping before' "$PGDATA_NEW/recovery.log" ||
    log "note: no transaction committed after $TO_TIME was found in the archive; recovered to the end of the archived WAL"
}

if [ "$FENCE_ONLY" = 1 ]; then
  log "--fence-only: fencing $(redact "$PRIMARY") and ${#SHARDS[@]} shards as restored databases"
elif [ -n "$TO_TIME" ]; then
  restore_pitr
else
  restore_dump
fi
if [ "$FENCE" = 1 ]; then
  fence || fail 7 "fencing the restored databases failed (do not start zones on them: run scripts/restore.sh --fence-only with the same --primary/--shard/--redis)"
else
  log "--skip-fence: NOT safe to serve (epochs, id sequences, sessions and Redis locks are as in the backup)"
fi
finish 0 ""
