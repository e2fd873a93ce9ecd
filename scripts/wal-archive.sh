#!/usr/bin/env bash
# WAL archiving for point-in-time recovery: PostgreSQL's archive_command and restore_command.
#
#   archive_command = '/path/to/scripts/wal-archive.sh push %p %f /wal-archive'
#   restore_command = '/path/to/scripts/wal-archive.sh fetch %f %p /wal-archive'   (scripts/restore.sh writes it)
#
# push copies the segment to ARCHIVE/<name>.tmp, fsyncs it and renames it into place, so the archive never holds a
# torn segment under its final name. A segment already archived with identical content is success (PostgreSQL
# retries after a crash between our rename and its bookkeeping); with different content it is an error: two
# clusters writing into one archive, which would make recovery replay the wrong history. Any non-zero exit makes
# PostgreSQL keep the segment and retry (pg_stat_archiver.failed_count counts it: alert on it).
# fetch copies ARCHIVE/<name> to the path PostgreSQL asks for; a missing file is exit 1, which PostgreSQL reads as
# "end of the archive". For object storage, replace the cp of push/fetch with your tool (aws s3 cp, rclone copyto)
# or sync ARCHIVE out from scripts/backup.sh's upload hook.
set -euo pipefail

mode=${1:-}
case "$mode" in
  push)
    [ $# -eq 4 ] || { echo "usage: $0 push %p %f ARCHIVE" >&2; exit 2; }
    src=$2 name=$3 archive=$4
    dst=$archive/$name
    if [ -f "$dst" ]; then
      if cmp -s "$src" "$dst"; then exit 0; fi
      echo "wal-archive: $dst exists with different content: refusing to overwrite (two clusters, one archive?)" >&2
      exit 1
    fi
    mkdir -p "$archive"
    cp "$src" "$dst.tmp"
    sync "$dst.tmp"
    mv "$dst.tmp" "$dst"
    sync "$archive"
    ;;
  fetch)
    [ $# -eq 4 ] || { echo "usage: $0 fetch %f %p ARCHIVE" >&2; exit 2; }
    name=$2 dst=$3 archive=$4
    [ -f "$archive/$name" ] || exit 1
    cp "$archive/$name" "$dst"
    ;;
  *)
    echo "usage: $0 push %p %f ARCHIVE | fetch %f %p ARCHIVE" >&2
    exit 2
    ;;
esac
