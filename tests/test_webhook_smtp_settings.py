"""Issue 14 item 2: SMTP settings for alert emails gain user, password and TLS, from the environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .server import ROOT


def _settings_in_a_process(env: dict) -> subprocess.CompletedProcess:
    code = ("import django, json; django.setup(); from django.conf import settings as s; print(json.dumps("
            "[s.EMAIL_HOST_USER, s.EMAIL_HOST_PASSWORD, s.EMAIL_USE_TLS, s.EMAIL_USE_SSL]))")
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMAIL_")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**base, "DJANGO_SETTINGS_MODULE": "fruxon.settings", **env})


def test_smtp_settings_read_user_password_and_tls_from_the_environment():
    done = _settings_in_a_process({"EMAIL_HOST_USER": "mailer", "EMAIL_HOST_PASSWORD": "pw", "EMAIL_USE_TLS": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["mailer", "pw", True, False]
    ssl = _settings_in_a_process({"EMAIL_USE_SSL": "true"})
    assert json.loads(ssl.stdout.strip().splitlines()[-1]) == ["", "", False, True]
    both = _settings_in_a_process({"EMAIL_USE_TLS": "1", "EMAIL_USE_SSL": "1"})
    assert both.returncode != 0 and "EMAIL_USE_TLS and EMAIL_USE_SSL" in both.stderr
