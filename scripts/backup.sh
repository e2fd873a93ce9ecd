#!/usr/bin/env bash
# Backups of Realm's databases: logical dump sets with retention, and physical base backups for point-in-time
# recovery (PITR). scripts/restore.sh restores both; tests/backup_drill.rs proves it on every CI run.
#
# Usage: scripts/backup.sh [dump|base|prune] [options]
#
#   dump (default)  one consistent dump set of the primary and every shard into DEST/dumps/<UTC time>/:
#                   <role>.dump files (pg_dump custom format, compressed), manifest.json (time, schema migration
#                   version, shard map, per-file size and SHA-256, per-table row counts and checksums taken in the
#                   dump's own snapshot) and SHA256SUMS; then the retention policy (prune). The set is written
#                   under DEST/dumps/.partial-<time> and renamed only when complete: a set directory is never half.
#   base            a base backup (pg_basebackup, tar + gzip, with the WAL needed to be consistent) of the cluster
#                   that --primary points at, into DEST/base/<UTC time>/; keeps the newest --keep-base (2) and
#                   removes archived WAL older than the oldest kept one (pg_archivecleanup) when --wal-archive is set.
#                   WAL archiving itself is the server's archive_command (scripts/wal-archive.sh).
#   prune           only the retention policy over DEST/dumps (--now TIME pretends it is TIME: tests, dry runs).
#
# Options (environment variable in brackets):
#   --dest DIR              backup root [REALM_BACKUP_DIR, default /var/backups/realm]
#   --primary URL           primary database [REALM_BACKUP_PRIMARY_URL, else REALM_DATABASE_URL, else DATABASE_URL]
#   --shard URL             a shard database, in database.shard_urls order; repeat per shard
#                           [REALM_BACKUP_SHARD_URLS, else REALM_DATABASE_SHARD_URLS: comma-separated]. None: the
#                           primary holds everything (database.shard_urls = []).
#   --keep-daily N          newest set of each of the last N days    [REALM_BACKUP_KEEP_DAILY, 7]
#   --keep-weekly N         newest set of each of the last N weeks   [REALM_BACKUP_KEEP_WEEKLY, 4]
#   --keep-monthly N        newest set of each of the last N months  [REALM_BACKUP_KEEP_MONTHLY, 12]
#   --keep-base N           base backups kept                        [REALM_BACKUP_KEEP_BASE, 2]
#   --wal-archive DIR       WAL archive of the cluster (base: recorded, and pruned) [REALM_BACKUP_WAL_ARCHIVE]
#   --no-prune              dump without applying retention
#   --now TIME              prune as if the time were TIME (anything `date -d` reads)
#   --textfile FILE         Prometheus textfile-collector file to write [REALM_BACKUP_TEXTFILE, default
#                           DEST/realm_backup.prom]; node_exporter --collector.textfile.directory must contain it
#   --pushgateway URL       also push the same metrics to a Pushgateway [REALM_BACKUP_PUSHGATEWAY] (batch jobs on
#                           Kubernetes have no node-local textfile directory)
#   --upload-cmd CMD        object-storage hook [REALM_BACKUP_UPLOAD_CMD]: after a set (or base backup) is complete
#                           and checksummed, `sh -c "$CMD" realm-backup-upload SETDIR` runs; e.g.
#                           'aws s3 sync "$1" "s3://my-bucket/realm/$(basename "$1")"' or
#                           'rclone copy "$1" "remote:realm/$(basename "$1")"'. Its failure fails the backup (exit 5);
#                           the local set is kept.
#
# Retention (grandfather-father-son): a set is kept if it is the newest set of its UTC day and that day is one of
# the last 7 (today included), or the newest of its ISO week within the last 4 weeks, or the newest of its month
# within the last 12 months. The newest complete set is always kept; .partial-* directories older than a day
# (a crashed run) are removed.
#
# Exit codes: 0 ok; 2 usage or configuration; 3 a database could not be dumped (unreachable, pg_dump failed,
# schema versions differ between databases); 4 the written set failed verification (checksum, pg_restore --list);
# 5 the upload hook failed; 6 retention failed. Every run ends with one line an operator can grep or ship to a log
# pipeline:  realm-backup kind=dump status=ok set=... bytes=... duration_s=... kept=... pruned=...
# and the metrics realm_backup_last_success_timestamp_seconds{kind}, realm_backup_last_run_timestamp_seconds{kind},
# realm_backup_last_status{kind} (1 ok, 0 failed), realm_backup_last_duration_seconds{kind},
# realm_backup_last_size_bytes{kind}, realm_backup_sets{kind}. monitoring/alerts.yml alerts when the last success
# is older than 26 h.
set -euo pipefail

MODE=dump
case "${1:-}" in dump | base | prune) MODE=$1; shift ;; esac

DEST=${REALM_BACKUP_DIR:-/var/backups/realm}
PRIMARY=${REALM_BACKUP_PRIMARY_URL:-${REALM_DATABASE_URL:-${DATABASE_URL:-}}}
SHARDS_CSV=${REALM_BACKUP_SHARD_URLS:-${REALM_DATABASE_SHARD_URLS:-}}
KEEP_DAILY=${REALM_BACKUP_KEEP_DAILY:-7}
KEEP_WEEKLY=${REALM_BACKUP_KEEP_WEEKLY:-4}
KEEP_MONTHLY=${REALM_BACKUP_KEEP_MONTHLY:-12}
KEEP_BASE=${REALM_BACKUP_KEEP_BASE:-2}
WAL_ARCHIVE=${REALM_BACKUP_WAL_ARCHIVE:-}
TEXTFILE=${REALM_BACKUP_TEXTFILE:-}
PUSHGATEWAY=${REALM_BACKUP_PUSHGATEWAY:-}
UPLOAD_CMD=${REALM_BACKUP_UPLOAD_CMD:-}
PRUNE=1
NOW=""
SHARDS=()
shards_given=0

usage() { sed -n '2,53p' "$0" | sed 's/^# \{0,1\}//'; }
log() { echo "backup: $*" >&2; }
die_usage() { echo "backup: ERROR: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST=$2; shift 2 ;;
    --primary) PRIMARY=$2; shift 2 ;;
    --shard) SHARDS+=("$2"); shards_given=1; shift 2 ;;
    --keep-daily) KEEP_DAILY=$2; shift 2 ;;
    --keep-weekly) KEEP_WEEKLY=$2; shift 2 ;;
    --keep-monthly) KEEP_MONTHLY=$2; shift 2 ;;
    --keep-base) KEEP_BASE=$2; shift 2 ;;
    --wal-archive) WAL_ARCHIVE=$2; shift 2 ;;
    --no-prune) PRUNE=0; shift ;;
    --now) NOW=$2; shift 2 ;;
    --textfile) TEXTFILE=$2; shift 2 ;;
    --pushgateway) PUSHGATEWAY=$2; shift 2 ;;
    --upload-cmd) UPLOAD_CMD=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die_usage "unknown argument: $1 (see --help)" ;;
  esac
done
if [ "$shards_given" = 0 ] && [ -n "$SHARDS_CSV" ]; then IFS=, read -r -a SHARDS <<<"$SHARDS_CSV"; fi
for n in "$KEEP_DAILY" "$KEEP_WEEKLY" "$KEEP_MONTHLY" "$KEEP_BASE"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die_usage "retention counts must be whole numbers, got '$n'"
done
TEXTFILE=${TEXTFILE:-$DEST/realm_backup.prom}

# PostgreSQL client tools: the newest installed version (Debian keeps them out of PATH), else PATH.
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1 || true)
pgtool() { if [ -n "$PG_BIN" ] && [ -x "$PG_BIN/$1" ]; then echo "$PG_BIN/$1"; else command -v "$1"; fi; }

# Writing to a psql coprocess that died must be an error we report, not SIGPIPE killing the script silently.
trap '' PIPE

START=$(date +%s)
SET_BYTES=0
SETS_KEPT=0
PRUNED=0
SET_NAME=-
WORK=""

# --- metrics and the final log line --------------------------------------------------------------------------------
# The last success is carried over from the previous file, so a failed run keeps the alert's clock running.
previous_success() {
  [ -f "$TEXTFILE" ] || { echo 0; return; }
  sed -n "s/^realm_backup_last_success_timestamp_seconds{kind=\"$MODE\"} \([0-9.e+]*\)$/\1/p" "$TEXTFILE" | head -n 1 |
    grep . || echo 0
}

write_metrics() { # write_metrics STATUS(1|0)
  local status=$1 now success tmp dir
  now=$(date +%s)
  success=$(previous_success)
  [ "$status" = 1 ] && success=$now
  dir=$(dirname "$TEXTFILE")
  mkdir -p "$dir" 2>/dev/null || true
  tmp="$TEXTFILE.$$.tmp"
  # Other kinds' lines are kept: dump and base runs share one file.
  {
    if [ -f "$TEXTFILE" ]; then grep -v "kind=\"$MODE\"" "$TEXTFILE" | grep -v '^#' || true; fi
    echo "realm_backup_last_success_timestamp_seconds{kind=\"$MODE\"} $success"
    echo "realm_backup_last_run_timestamp_seconds{kind=\"$MODE\"} $now"
    echo "realm_backup_last_status{kind=\"$MODE\"} $status"
    echo "realm_backup_last_duration_seconds{kind=\"$MODE\"} $((now - START))"
    echo "realm_backup_last_size_bytes{kind=\"$MODE\"} $SET_BYTES"
    echo "realm_backup_sets{kind=\"$MODE\"} $SETS_KEPT"
  } >"$tmp.body" 2>/dev/null || { log "cannot write metrics to $TEXTFILE"; return 0; }
  {
    echo "# HELP realm_backup_last_success_timestamp_seconds Unix time of the last successful backup run."
    echo "# TYPE realm_backup_last_success_timestamp_seconds gauge"
    echo "# HELP realm_backup_last_run_timestamp_seconds Unix time of the last backup run, successful or not."
    echo "# TYPE realm_backup_last_run_timestamp_seconds gauge"
    echo "# HELP realm_backup_last_status 1 if the last backup run succeeded, 0 if it failed."
    echo "# TYPE realm_backup_last_status gauge"
    echo "# HELP realm_backup_last_duration_seconds Duration of the last backup run."
    echo "# TYPE realm_backup_last_duration_seconds gauge"
    echo "# HELP realm_backup_last_size_bytes Bytes written by the last backup run."
    echo "# TYPE realm_backup_last_size_bytes gauge"
    echo "# HELP realm_backup_sets Backup sets kept after retention."
    echo "# TYPE realm_backup_sets gauge"
    sort "$tmp.body"
  } >"$tmp"
  rm -f "$tmp.body"
  mv -f "$tmp" "$TEXTFILE"
  if [ -n "$PUSHGATEWAY" ]; then
    grep -v '^#' "$TEXTFILE" | grep "kind=\"$MODE\"" |
      curl -fsS --max-time 20 --data-binary @- "${PUSHGATEWAY%/}/metrics/job/realm_backup/kind/$MODE" >/dev/null ||
      log "could not push metrics to $PUSHGATEWAY"
  fi
}

finish() { # finish EXIT_CODE REASON
  local rc=$1 reason=$2 status=ok
  [ "$rc" = 0 ] || status=failed
  if [ "$MODE" != prune ] || [ "$rc" != 0 ]; then write_metrics "$([ "$rc" = 0 ] && echo 1 || echo 0)"; fi
  echo "realm-backup kind=$MODE status=$status exit=$rc set=$SET_NAME bytes=$SET_BYTES duration_s=$(($(date +%s) - START)) kept=$SETS_KEPT pruned=$PRUNED reason=\"$reason\""
  exit "$rc"
}
fail() {
  log "ERROR: $2"
  # A failed run leaves no half set behind (the reason is in the log line).
  case "${WORK:-}" in */.partial-*) rm -rf "$WORK" ;; esac
  finish "$1" "$2"
}

# --- helpers -----------------------------------------------------------------------------------------------------
# A URL with its password replaced, for manifests and logs.
redact() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }
# The database name of a postgres:// URL.
db_name_of() { local rest=${1#*://}; rest=${rest#*/}; rest=${rest%%\?*}; echo "$rest"; }
json_str() { printf '"%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"$1")"; }

# A psql session kept open (a coprocess) so that a snapshot it exports stays valid while pg_dump uses it.
# sql LINE... sends statements and prints their rows until the end marker.
open_session() {
  coproc PSQL { "$(pgtool psql)" "$1" -qtAX -v ON_ERROR_STOP=1 2>&1; }
}
sql() {
  # The coprocess is gone when psql could not connect (or died): bash then unsets PSQL.
  [ -n "${PSQL[1]:-}" ] || { log "psql session ended"; return 1; }
  printf '%s\n' "$@" '\echo __realm_end__' >&"${PSQL[1]}" || return 1
  local line
  # No short timeout: a checksum of a very large table prints nothing for a long time (the CronJob has a deadline).
  while IFS= read -r -t 21600 line <&"${PSQL[0]}"; do
    [ "$line" = __realm_end__ ] && return 0
    case "$line" in psql:* | ERROR:* | FATAL:*) log "$line"; return 1 ;; esac
    printf '%s\n' "$line"
  done
  return 1
}
close_session() {
  [ -n "${PSQL[1]:-}" ] || return 0
  { printf '%s\n' 'COMMIT;' '\q' >&"${PSQL[1]}"; } 2>/dev/null || true
  wait "$PSQL_PID" 2>/dev/null || true
}

# Per-table row counts and order-independent checksums, for every table holding rows (leaf partitions included) of
# schema public: the md5 of each row's text, split into two 64-bit halves, each summed over the table (exact
# numeric sums: constant memory at any table size, and equal rows do not cancel out). TimeZone, DateStyle and
# extra_float_digits are fixed so a row's text does not depend on the session. restore.sh runs the same query on
# what it restored and compares; the files themselves are covered by SHA-256.
TABLE_LIST_SQL="SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname;"
table_checksum_sql() {
  echo "SELECT '$1', count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric) || ':' || sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), '') FROM (SELECT md5(t::text) AS h FROM public.\"$1\" t) r;"
}

# --- retention ---------------------------------------------------------------------------------------------------
set_epoch() { # set name YYYYmmddTHHMMSSZ -> unix seconds
  local n=$1
  date -u -d "${n:0:4}-${n:4:2}-${n:6:2} ${n:9:2}:${n:11:2}:${n:13:2}" +%s
}

prune() {
  local dumps=$DEST/dumps now_s today week_now month_now
  [ -d "$dumps" ] || { SETS_KEPT=0; return 0; }
  if [ -n "$NOW" ]; then now_s=$(date -u -d "$NOW" +%s) || return 1; else now_s=$(date -u +%s); fi
  today=$((now_s / 86400))
  # Monday of the current ISO week, in days since the epoch (1970-01-01 was a Thursday).
  week_now=$(((today + 3) / 7))
  month_now=$((10#$(date -u -d "@$now_s" +%Y) * 12 + 10#$(date -u -d "@$now_s" +%m) - 1))
  local -A seen_day=() seen_week=() seen_month=()
  local name t day week month keep newest=1 kept=0 removed=0
  # Newest first: the first set met in a period is that period's newest.
  while IFS= read -r name; do
    [ -f "$dumps/$name/manifest.json" ] || continue
    t=$(set_epoch "$name") || continue
    day=$((t / 86400)); week=$(((day + 3) / 7))
    month=$((10#$(date -u -d "@$t" +%Y) * 12 + 10#$(date -u -d "@$t" +%m) - 1))
    keep=0
    if [ "$newest" = 1 ]; then keep=1; newest=0; fi
    if [ -z "${seen_day[$day]:-}" ]; then
      seen_day[$day]=1
      if [ $((today - day)) -lt "$KEEP_DAILY" ]; then keep=1; fi
    fi
    if [ -z "${seen_week[$week]:-}" ]; then
      seen_week[$week]=1
      if [ $((week_now - week)) -lt "$KEEP_WEEKLY" ]; then keep=1; fi
    fi
    if [ -z "${seen_month[$month]:-}" ]; then
      seen_month[$month]=1
      if [ $((month_now - month)) -lt "$KEEP_MONTHLY" ]; then keep=1; fi
    fi
    if [ "$keep" = 1 ]; then
      kept=$((kept + 1))
    else
      log "retention: removing $name"
      rm -rf "${dumps:?}/$name" || return 1
      removed=$((removed + 1))
    fi
  done < <(find "$dumps" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
    -regex '.*/[0-9]{8}T[0-9]{6}Z' -printf '%f\n' | sort -r)
  # Leftovers of crashed runs.
  find "$dumps" -mindepth 1 -maxdepth 1 -type d -name '.partial-*' -mmin +1440 -exec rm -rf {} + || true
  SETS_KEPT=$kept
  PRUNED=$removed
  log "retention: kept $kept sets, removed $removed (daily $KEEP_DAILY, weekly $KEEP_WEEKLY, monthly $KEEP_MONTHLY)"
}

run_upload() { # run_upload DIR
  [ -n "$UPLOAD_CMD" ] || return 0
  log "upload hook: $UPLOAD_CMD $1"
  sh -c "$UPLOAD_CMD" realm-backup-upload "$1"
}

# --- dump --------------------------------------------------------------------------------------------------------
dump_one() { # dump_one URL FILE ROLE INDEX: pg_dump in an exported snapshot, table checksums in the same snapshot
  local url=$1 file=$2 role=$3 index=$4 snapshot tables table rows versions
  open_session "$url"
  snapshot=$(sql "SET TimeZone = 'UTC';" "SET DateStyle = 'ISO, YMD';" "SET extra_float_digits = 1;" \
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;" "SELECT pg_export_snapshot();") || {
    close_session; return 1; }
  [ -n "$snapshot" ] || { close_session; return 1; }
  # Migrations recorded in this database (the schema version).
  versions=$(sql "SELECT string_agg(version, ',' ORDER BY version) FROM schema_migrations;") || { close_session; return 1; }
  if ! "$(pgtool pg_dump)" --format=custom --compress=6 --snapshot="$snapshot" --no-password \
    --file="$WORK/$file" "$url"; then
    close_session; return 1
  fi
  tables=$(sql "$TABLE_LIST_SQL") || { close_session; return 1; }
  rows=""
  for table in $tables; do
    rows+=$(sql "$(table_checksum_sql "$table")") || { close_session; return 1; }
    rows+=$'\n'
  done
  close_session
  local bytes sha
  bytes=$(stat -c %s "$WORK/$file")
  sha=$(sha256sum "$WORK/$file" | cut -d' ' -f1)
  SET_BYTES=$((SET_BYTES + bytes))
  echo "$versions" >"$WORK/.versions-$role$index"
  # One JSON object per database.
  {
    printf '    {"role": %s, "index": %s, "database": %s, "url": %s, "file": %s, "bytes": %s, "sha256": %s,\n' \
      "$(json_str "$role")" "${index:-null}" "$(json_str "$(db_name_of "$url")")" "$(json_str "$(redact "$url")")" \
      "$(json_str "$file")" "$bytes" "$(json_str "$sha")"
    printf '     "migrations": [%s],\n' "$(sed 's/[^,][^,]*/"&"/g; s/,/, /g' <<<"$versions")"
    printf '     "tables": {'
    local first=1 name count sum
    while IFS='|' read -r name count sum; do
      [ -n "$name" ] || continue
      [ "$first" = 1 ] || printf ', '
      first=0
      printf '\n       %s: {"rows": %s, "checksum": %s}' "$(json_str "$name")" "$count" "$(json_str "$sum")"
    done <<<"$rows"
    printf '}}'
  } >"$WORK/.db-$role$index.json"
  log "$role${index:+ $index} ($(db_name_of "$url")): $bytes bytes, $(wc -w <<<"$tables") tables, snapshot $snapshot"
}

do_dump() {
  [ -n "$PRIMARY" ] || fail 2 "no primary database: --primary URL, REALM_BACKUP_PRIMARY_URL or DATABASE_URL"
  local name
  name=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$DEST/dumps" || fail 2 "cannot create $DEST/dumps"
  # One set per second at most: a second run within the same second waits for the next one.
  while [ -e "$DEST/dumps/$name" ]; do sleep 1; name=$(date -u +%Y%m%dT%H%M%SZ); done
  SET_NAME=$name
  WORK="$DEST/dumps/.partial-$name"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  local started
  started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  # Shards first, the primary last: the primary holds the allocators (players' identity, item_id_seq) and the
  # accounts, so every player id and item id found on a shard was already allocated when the primary's snapshot
  # was taken, and every player with progress on a shard has an account in the set. (restore.sh still moves the
  # sequences past every id it finds, whatever the order.)
  local i
  for i in "${!SHARDS[@]}"; do
    dump_one "${SHARDS[$i]}" "shard-$i.dump" shard "$i" || fail 3 "dump of shard $i ($(redact "${SHARDS[$i]}")) failed"
  done
  dump_one "$PRIMARY" primary.dump primary "" || fail 3 "dump of the primary ($(redact "$PRIMARY")) failed"
  local finished versions v
  finished=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  versions=$(cat "$WORK/.versions-primary")
  for i in "${!SHARDS[@]}"; do
    v=$(cat "$WORK/.versions-shard$i")
    [ "$v" = "$versions" ] || fail 3 "shard $i has migrations [$v], the primary [$versions]: migrate every database first"
  done
  local shard_json="" dbs_json=""
  for i in "${!SHARDS[@]}"; do
    shard_json+="${shard_json:+, }$(json_str "$(db_name_of "${SHARDS[$i]}")")"
    dbs_json+="$(cat "$WORK/.db-shard$i.json"),"$'\n'
  done
  dbs_json+="$(cat "$WORK/.db-primary.json")"
  {
    echo "{"
    echo "  \"format\": \"realm-backup/1\","
    echo "  \"kind\": \"dump\","
    echo "  \"set\": \"$name\","
    echo "  \"started_at\": \"$started\","
    echo "  \"finished_at\": \"$finished\","
    echo "  \"schema_version\": $(json_str "${versions##*,}"),"
    echo "  \"migrations\": [$(sed 's/[^,][^,]*/"&"/g; s/,/, /g' <<<"$versions")],"
    echo "  \"shard_map\": {\"scheme\": \"jump-consistent-hash-1024-buckets\", \"count\": ${#SHARDS[@]}, \"databases\": [$shard_json]},"
    echo "  \"pg_dump\": $(json_str "$("$(pgtool pg_dump)" --version)"),"
    echo "  \"databases\": ["
    echo "$dbs_json"
    echo "  ]"
    echo "}"
  } >"$WORK/manifest.json"
  rm -f "$WORK"/.versions-* "$WORK"/.db-*.json
  (cd "$WORK" && sha256sum -- *.dump manifest.json >SHA256SUMS)
  # Verify what was written before calling it a backup: checksums, and every archive's table of contents.
  (cd "$WORK" && sha256sum --quiet -c SHA256SUMS) || fail 4 "checksums of $WORK do not verify"
  local f
  for f in "$WORK"/*.dump; do
    "$(pgtool pg_restore)" --list "$f" >/dev/null || fail 4 "pg_restore --list $f failed"
  done
  sync -f "$WORK" 2>/dev/null || sync
  mv "$WORK" "$DEST/dumps/$name"
  log "set $DEST/dumps/$name complete ($SET_BYTES bytes, schema $versions)"
  run_upload "$DEST/dumps/$name" || fail 5 "upload hook failed for $DEST/dumps/$name (the local set is kept)"
  if [ "$PRUNE" = 1 ]; then prune || fail 6 "retention failed"; else SETS_KEPT=$(find "$DEST/dumps" -mindepth 1 -maxdepth 1 -name '2*' | wc -l); fi
}

# --- base backup (PITR) ------------------------------------------------------------------------------------------
do_base() {
  [ -n "$PRIMARY" ] || fail 2 "no primary database: --primary URL"
  local name dir
  name=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$DEST/base" || fail 2 "cannot create $DEST/base"
  while [ -e "$DEST/base/$name" ]; do sleep 1; name=$(date -u +%Y%m%dT%H%M%SZ); done
  SET_NAME=$name
  WORK="$DEST/base/.partial-$name"
  rm -rf "$WORK"
  mkdir -p "$WORK"
  local started
  started=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
  # -X stream: the WAL written during the copy is in the backup, so it is consistent on its own; later WAL comes
  # from the archive. --checkpoint=fast: do not wait for the next scheduled checkpoint.
  "$(pgtool pg_basebackup)" -d "$PRIMARY" -D "$WORK" -Ft -z -X stream --checkpoint=fast --no-password \
    --label="realm-$name" || fail 3 "pg_basebackup of $(redact "$PRIMARY") failed"
  local finished start_wal
  finished=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
  # The first WAL segment the backup needs (pg_archivecleanup keeps it and everything after it).
  start_wal=$(tar -xzOf "$WORK/base.tar.gz" backup_label 2>/dev/null | sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]*\))$/\1/p')
  SET_BYTES=$(du -sb "$WORK" | cut -f1)
  {
    echo "{"
    echo "  \"format\": \"realm-backup/1\","
    echo "  \"kind\": \"base\","
    echo "  \"set\": \"$name\","
    echo "  \"started_at\": \"$started\","
    echo "  \"finished_at\": \"$finished\","
    echo "  \"start_wal\": \"$start_wal\","
    echo "  \"wal_archive\": $(json_str "$WAL_ARCHIVE"),"
    echo "  \"cluster\": $(json_str "$(redact "$PRIMARY")"),"
    echo "  \"pg_basebackup\": $(json_str "$("$(pgtool pg_basebackup)" --version)")"
    echo "}"
  } >"$WORK/manifest.json"
  (cd "$WORK" && sha256sum -- *.tar.gz backup_manifest manifest.json >SHA256SUMS) || fail 4 "cannot checksum $WORK"
  mv "$WORK" "$DEST/base/$name"
  log "base backup $DEST/base/$name complete ($SET_BYTES bytes, starts at WAL $start_wal)"
  run_upload "$DEST/base/$name" || fail 5 "upload hook failed for $DEST/base/$name (the local copy is kept)"
  # Retention: the newest KEEP_BASE base backups; WAL older than the oldest kept one cannot be used any more.
  local all oldest_kept
  mapfile -t all < <(find "$DEST/base" -mindepth 1 -maxdepth 1 -type d -name '2*' -printf '%f\n' | sort -r)
  local k
  for k in "${!all[@]}"; do
    if [ "$k" -ge "$KEEP_BASE" ]; then
      log "retention: removing base backup ${all[$k]}"
      rm -rf "${DEST:?}/base/${all[$k]}"
      PRUNED=$((PRUNED + 1))
    fi
  done
  SETS_KEPT=$(( ${#all[@]} < KEEP_BASE ? ${#all[@]} : KEEP_BASE ))
  oldest_kept=$(find "$DEST/base" -mindepth 1 -maxdepth 1 -type d -name '2*' -printf '%f\n' | sort | head -n 1)
  if [ -n "$WAL_ARCHIVE" ] && [ -n "$oldest_kept" ]; then
    local wal
    wal=$(sed -n 's/^  "start_wal": "\([0-9A-F]*\)",$/\1/p' "$DEST/base/$oldest_kept/manifest.json")
    if [ -n "$wal" ]; then
      "$(pgtool pg_archivecleanup)" "$WAL_ARCHIVE" "$wal" || fail 6 "pg_archivecleanup $WAL_ARCHIVE $wal failed"
      log "retention: WAL before $wal removed from $WAL_ARCHIVE"
    fi
  fi
}

case "$MODE" in
  dump) do_dump ;;
  base) do_base ;;
  prune) prune || fail 6 "retention failed" ;;
esac
finish 0 ""
