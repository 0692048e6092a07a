"""Settings come from the environment; production values pass `check --deploy`."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in {"FRUXON_TESTING", "DEBUG", "SECRET_KEY", "FRUXON_ENCRYPTION_KEY"}}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=60)


def test_production_settings_pass_deploy_checks():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", SECRET_KEY=secrets.token_urlsafe(64),
                     FRUXON_ENCRYPTION_KEY=Fernet.generate_key().decode(), ALLOWED_HOSTS="fruxon.example.com")
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_keys():
    result = _manage("check")
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr
    result = _manage("check", SECRET_KEY=secrets.token_urlsafe(64))
    assert result.returncode != 0 and "FRUXON_ENCRYPTION_KEY must be set" in result.stderr
