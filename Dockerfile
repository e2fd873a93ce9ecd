# syntax=docker/dockerfile:1
#
# Realm zone server image.
#
#   docker build -t realm-server:dev .
#   docker run --rm -p 7777:7777/tcp -p 7777:7777/udp -p 8080:8080/tcp \
#     -p 127.0.0.1:9100:9100 -e REALM_ADMIN_HOST=0.0.0.0 realm-server:dev
#
# 8080 is the browser endpoint (web client, login API, WebSocket game sessions: server.ws_port / SERVER_WS_PORT).
#
# The admin listener binds loopback unless told otherwise: the HEALTHCHECK below reaches it there; publishing the
# admin port (or scraping it from another container) needs REALM_ADMIN_HOST=0.0.0.0, as the compose file and the
# Kubernetes config set.
#
# Stage 1 builds the dependency graph alone (from the manifests and stub sources), so editing Realm's own code
# reuses that layer and only recompiles the `realm` crate. Stage 2 is a minimal Debian runtime running as an
# unprivileged user. The binary is static apart from glibc: rustls (ring) does TLS and the PostgreSQL/Redis clients
# are pure Rust, so the runtime needs no OpenSSL.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm
ARG NODE_VERSION=20

############################################################################### frontend
# The web client (web/): TypeScript and the protobuf code generated from proto/, bundled by esbuild into web/dist.
# The repository also carries that bundle (so `cargo build` works without npm, and `scripts/web.sh check` proves the
# two agree); the image builds it from source here, with the lock file, and the server embeds the result.
FROM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS frontend
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY proto /src/proto
COPY web/tsconfig.json ./
COPY web/static static
COPY web/tools tools
COPY web/src src
RUN node tools/build.mjs --outdir dist

############################################################################### builder
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src

# --- dependency layer ---------------------------------------------------------------------------------------------
# Only the manifests, plus one stub per target they declare: cargo refuses a manifest whose [lib], [[bin]] or
# [[bench]] file is missing. The stub list is read from Cargo.toml (explicit `path`, else benches/<name>.rs), so
# a new bench or binary needs no Dockerfile change (the benches stay stubs: the image builds realm-server only).
# build.rs is stubbed too: with a build script present cargo compiles the build-dependencies (prost-build,
# protox) here, and the real script (which needs proto/) runs in the next layer.
COPY Cargo.toml Cargo.lock ./
COPY loom-tests/Cargo.toml loom-tests/Cargo.toml
RUN echo 'fn main() {}' > build.rs \
 && mkdir -p loom-tests/src && touch loom-tests/src/lib.rs \
 && awk ' \
      function flush() { \
        if (path == "" && kind == "bench" && name != "") path = "benches/" name ".rs"; \
        if (path != "") print path; \
        kind = ""; name = ""; path = "" } \
      /^\[/ { flush(); if ($0 ~ /^\[\[bench\]\]/) kind = "bench"; else if ($0 ~ /^\[(\[bin\]|\[test\]|\[example\]|lib)\]/) kind = "target"; next } \
      kind != "" && /^name *=/ { split($0, q, "\""); name = q[2] } \
      kind != "" && /^path *=/ { split($0, q, "\""); path = q[2] } \
      END { flush() }' Cargo.toml > /tmp/stubs \
 && while read -r stub; do \
      mkdir -p "$(dirname "$stub")"; \
      case "$stub" in */lib.rs) : > "$stub" ;; *) echo 'fn main() {}' > "$stub" ;; esac; \
    done < /tmp/stubs \
 && cat /tmp/stubs
# The registry cache mount keeps downloaded crates across builds even when Cargo.lock changes (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --bin realm-server

# --- the real build -----------------------------------------------------------------------------------------------
COPY build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
COPY --from=frontend /src/web/dist web/dist
# `cargo clean -p` drops the stub artifacts of our own crate, so the real sources are rebuilt whatever their mtimes
# (COPY keeps the mtimes of the build context, which may be older than the stub build).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo clean --release -p realm \
 && cargo build --release --locked --bin realm-server \
 && install -D -m 0755 target/release/realm-server /out/realm-server

############################################################################### backup
# The backup image (docker build --target backup -t realm-backup .): scripts/backup.sh, restore.sh and
# wal-archive.sh of this release with the PostgreSQL 15 client tools (pg_dump, pg_restore, pg_basebackup,
# pg_archivecleanup) of the official image, plus jq (restore.sh reads manifests), redis-cli (restore.sh clears
# ownership locks) and curl (optional Pushgateway). Runs the compose `backup` service and the Kubernetes CronJob.
# Not the default target: `docker build .` still ends at the runtime stage below.
FROM postgres:15-bookworm AS backup
# Not version-pinned (DL3008): same reasoning as the runtime stage (security updates, archive churn).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends jq redis-tools curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/backup.sh scripts/restore.sh scripts/wal-archive.sh /opt/realm/scripts/
COPY migrations /opt/realm/migrations
# /backups owned by the image's user: a new named volume mounted there starts with that ownership.
RUN mkdir -p /backups/metrics && chown -R 999:999 /backups
ENV REALM_BACKUP_DIR=/backups
# The image's postgres user (uid 999): backups need no privileges in the container, only database credentials.
USER 999:999
ENTRYPOINT ["/opt/realm/scripts/backup.sh"]
CMD ["dump"]

############################################################################### runtime
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: for TLS to managed databases/Redis. Nothing else: the HEALTHCHECK below uses bash's /dev/tcp
# instead of curl, which would add ~10 packages (libcurl, nghttp2, ...) of attack surface for one HTTP GET.
# Not version-pinned (DL3008) on purpose: the trust store must follow Debian's security updates, and a pinned
# version disappears from the archive at the next point release, breaking the build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 realm \
 && useradd --system --uid 10001 --gid realm --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin realm

WORKDIR /app
COPY --from=builder /out/realm-server /usr/local/bin/realm-server
# config/: the documented defaults (realm.toml) and the zone data files (zones/*.toml), selected with
# REALM_GAME_ZONE_FILE. migrations/: embedded in the binary already; shipped for operators to read and diff.
COPY config /app/config
COPY migrations /app/migrations

# The server writes its self-signed development certificate to $TMPDIR when no certificate is configured; with a
# read-only root filesystem (Kubernetes) /tmp is an emptyDir. Zone data is selected per container.
ENV TMPDIR=/tmp \
    REALM_CONFIG=/app/config/realm.toml \
    LOG_FORMAT=json

# Numeric IDs, so Kubernetes' runAsNonRoot can verify the user without reading /etc/passwd.
USER 10001:10001

# 7777/tcp: TLS control channel; 7777/udp: sealed data channel (same port number by protocol design: LoginOk tells
# the client to use the TCP port's number for UDP); 9100: admin HTTP (/metrics /health /ready).
EXPOSE 7777/tcp 7777/udp 8080/tcp 9100/tcp

# /health answers 200 while the zone is starting, serving or draining, 503 when the tick is frozen or a configured
# backend is down. One HTTP/1.0 GET over bash's /dev/tcp (no curl in the image); the admin port honours the same
# variables as the server (REALM_ADMIN_PORT wins over ADMIN_PORT).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${REALM_ADMIN_PORT:-${ADMIN_PORT:-9100}} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && read -r -t 2 _ status _ <&3 && [ \"$status\" = 200 ]"]

# The server handles SIGTERM itself (stop accepting, tell clients, save everyone, release locks, exit 0 within
# server.shutdown_grace_secs = 20 s); give it more than that: `docker stop -t 30`, compose stop_grace_period: 30s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/realm-server"]
CMD ["run"]
