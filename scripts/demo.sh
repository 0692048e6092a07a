#!/usr/bin/env bash
# Install Fruxon into .venv and start the demo: SQLite, Celery eager, seeded org,
# API and admin on http://127.0.0.1:8000. Extra arguments go to `manage.py demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
# The demo is the embedded setup by definition: no external database or broker.
unset DATABASE_URL REDIS_URL
export DEBUG=1
exec .venv/bin/python manage.py demo "$@"
