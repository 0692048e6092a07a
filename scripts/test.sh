#!/usr/bin/env bash
# Install Fruxon with its test extra into .venv, make sure PostgreSQL and Redis
# are up (and Debian's chromium is installed), and run the whole suite on
# PostgreSQL. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  for _ in $(seq 30); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 1; done
fi

# The admin's browser tests drive Debian's Chromium (Playwright never downloads a browser here).
if [ -z "${FRUXON_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the admin's browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/fruxon}"
# Tests that are about Redis or a real Celery worker use this; the rest run eager.
export FRUXON_TEST_REDIS_URL="${FRUXON_TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/15}"
export FRUXON_TESTING=1 FRUXON_FAIL_ON_SKIP=1
unset REDIS_URL
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
