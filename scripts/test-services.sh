#!/usr/bin/env bash
# What the integration tests need beside Ray, made ready (idempotent, seconds when
# already done): Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 with the
# pgvector extension built and installed, and the test database with the extension
# created.  Started only when not already running.
set -euo pipefail

PG_DB=${ASTROMESH_TEST_PG_DB:-astromesh_test}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Redis --------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null || { as_root apt-get update -qq; as_root apt-get install -y -qq redis-server; }
  mkdir -p /tmp/astromesh-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/astromesh-redis --logfile /tmp/astromesh-redis/redis.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 ping >/dev/null

# --- PostgreSQL -----------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq postgresql
fi
PG_VERSION=$(ls /etc/postgresql | sort -V | tail -n 1)
PG_CONFIG=/usr/lib/postgresql/$PG_VERSION/bin/pg_config
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
  for _ in $(seq 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q

# pgvector: no Debian package for this PostgreSQL in bookworm, so it is built from
# Debian's own source package (trixie), against the server headers.
if [ ! -f "$("$PG_CONFIG" --sharedir 2>/dev/null || echo /nonexistent)/extension/vector.control" ]; then
  # The PGXS makefiles can be there without the server headers (another package
  # ships them): check for both.
  if [ ! -f "$("$PG_CONFIG" --pgxs 2>/dev/null || echo /nonexistent)" ] \
    || [ ! -f "$("$PG_CONFIG" --includedir-server 2>/dev/null || echo /nonexistent)/postgres.h" ] \
    || ! command -v dpkg-source >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq "postgresql-server-dev-$PG_VERSION" dpkg-dev
  fi
  src=/etc/apt/sources.list.d/astromesh-trixie-src.sources
  if [ ! -f "$src" ]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | as_root tee "$src" >/dev/null
  fi
  as_root apt-get update -qq
  build=$(mktemp -d)
  (cd "$build" && apt-get source --download-only pgvector >/dev/null 2>&1 && tar xzf pgvector_*.orig.tar.gz)
  make -s -C "$build"/pgvector-* PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null
  as_root make -s -C "$build"/pgvector-* PG_CONFIG="$PG_CONFIG" install >/dev/null
  rm -rf "$build"
fi

psql_() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
  psql_ -d postgres -c "CREATE DATABASE \"$PG_DB\""
fi
psql_ -d "$PG_DB" -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
echo "test services: redis 127.0.0.1:6379, postgresql 127.0.0.1:5432/$PG_DB with pgvector $(psql_ -d "$PG_DB" -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")"
