"""Issue 12, item 12: a content security policy on the admin and the docs, and /v1/docs served
from the project's own static files (Swagger UI from drf-spectacular-sidecar), so it works offline.

The Django-client tests check the headers and the page; the browser test (Playwright driving
Debian's Chromium against a live server, with no network) checks that Swagger UI renders and that
no admin page or the docs raise a CSP violation.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from monitoring.models import Run

from . import factories as f
from .builders import agent_with_revision, run_once
from .test_admin_browser import CHROMIUM, CHROMIUM_ARGS, _login, browser  # noqa: F401  (the browser fixture)

ROOT = Path(__file__).resolve().parent.parent


def _directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def _assert_policy(response):
    policy = _directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no host
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Frame-Options"] == "DENY"


def test_item12_csp_on_admin_and_docs(client, db):
    org = f.OrganizationFactory(slug="acme")
    owner = f.member(org, "owner", "olivia")
    agent, _ = agent_with_revision(org, "support")
    run = run_once(agent)
    for url in ("/v1/docs", "/v1/docs?script=", "/admin/login/", "/v1/schema", "/v1/orgs"):
        response = client.get(url)
        assert response.status_code in (200, 401), (url, response.status_code)
        _assert_policy(response)
    client.force_login(owner)
    pages = ["/admin/", reverse("admin:agents_agent_change", args=[agent.pk]),
             reverse("admin:monitoring_run_change", args=[run.pk]), reverse("admin:agents_revision_add")]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        _assert_policy(response)
        html = response.content.decode()
        # no inline script and no inline <style> block: the policy would block them
        inline_scripts = [m for m in re.findall(r"<script\b[^>]*>", html) if "src=" not in m]
        assert inline_scripts == [], (url, inline_scripts)
        assert "<style" not in html, url
        assert not re.search(r"\son[a-z]+=", html), url  # no inline event handler either
    # the run trace's styles now come from a static file
    assert "/static/fruxon/admin.css" in client.get(pages[2]).content.decode()


def test_item12_docs_served_offline(client, db):
    response = client.get("/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<style" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert not re.match(r"(?i)^(https?:)?//", asset), f"external asset {asset}"
    static = [a for a in assets if a.startswith("/static/")]
    names = {a.rsplit("/", 1)[-1] for a in static}
    assert {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css", "docs.css"} <= names
    assert not re.search(r"cdn\.|jsdelivr|unpkg|https?://", html), "no CDN anywhere in the page"
    # each asset is served by this server (WhiteNoise), as a script or style sheet
    for asset in static:
        served = client.get(asset)
        assert served.status_code == 200, asset
        body = b"".join(served.streaming_content) if served.streaming else served.content
        assert len(body) > 0, asset
    script = client.get("/v1/docs?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "/v1/schema" in script.content.decode() and "validatorUrl" in script.content.decode()


def test_item12_collectstatic_collects_the_sidecar_and_project_files(tmp_path):
    """What `manage.py collectstatic` (the README's deploy step) puts in STATIC_ROOT."""
    env = {"STATIC_ROOT_OVERRIDE": str(tmp_path)}
    code = ("import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'fruxon.settings'); django.setup(); "
            "from django.conf import settings; settings.STATIC_ROOT = os.environ['STATIC_ROOT_OVERRIDE']; "
            "from django.core.management import call_command; call_command('collectstatic', '--noinput', verbosity=0)")
    import os

    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, check=True, timeout=120)
    for path in ("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js",
                 "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css", "fruxon/admin.css", "fruxon/docs.css",
                 "admin/js/core.js"):
        assert (tmp_path / path).is_file(), path


# --- in a browser, with no network -------------------------------------------------------------------
CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e => window.__csp.push(
  e.violatedDirective + ' ' + e.blockedURI + ' ' + (e.sourceFile || '') + ':' + e.lineNumber));
"""


def _watched_page(browser, base: str, *, login_as: str | None = None):  # noqa: F811
    page = _login(browser, base, login_as) if login_as else browser.new_page()
    page.add_init_script(CSP_WATCH)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    outside: list[str] = []
    page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(base) and
            not req.url.startswith("data:") else None)
    return page, errors, outside


@pytest.mark.django_db(transaction=True)
def test_item12_docs_render_and_admin_raises_no_csp_violation(browser, live_server):  # noqa: F811
    base = live_server.url
    org = f.OrganizationFactory(slug="acme")
    f.member(org, "owner", "olivia")
    agent, _ = agent_with_revision(org, "support")
    # Playwright's sync API runs an event loop in this thread, and the engine's sync entry point
    # refuses to block a running loop: record the run from a thread of its own, as a sync view would.
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_once, agent).result()
    assert Run.objects.filter(pk=run.pk).exists()

    page, errors, outside = _watched_page(browser, base)
    page.goto(f"{base}/v1/docs")
    page.wait_for_selector(".swagger-ui .information-container", timeout=30_000)
    page.wait_for_selector(".opblock-tag", timeout=30_000)  # the operations, from /v1/schema
    assert "Fruxon API" in page.inner_text(".swagger-ui .info")
    assert page.locator(".opblock").count() > 50
    assert page.evaluate("window.__csp") == [], page.evaluate("window.__csp")
    assert [e for e in errors if "Content Security Policy" in e] == [], errors
    assert outside == [], outside
    # control: the policy is enforced and the listener sees it (an injected inline script is refused)
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1';"
                  " document.body.appendChild(s); }")
    page.wait_for_function("window.__csp.length > 0")
    assert page.evaluate("window.__ran") is None
    assert page.evaluate("window.__csp")[0].startswith("script-src")
    page.close()

    page, errors, outside = _watched_page(browser, base, login_as="olivia")
    for url in ("/admin/", reverse("admin:agents_agent_changelist"), reverse("admin:agents_agent_change", args=[agent.pk]),
                reverse("admin:agents_revision_add"), reverse("admin:monitoring_run_change", args=[run.pk]),
                reverse("admin:orgs_apikey_add"), reverse("admin:agents_agent_deploy", args=[agent.pk])):
        page.goto(f"{base}{url}")
        page.wait_for_load_state("load")
        assert page.locator("#header, #site-name").count() > 0, url
        violations = page.evaluate("window.__csp")
        assert violations == [], (url, violations)
    assert [e for e in errors if "Content Security Policy" in e or "Refused" in e] == [], errors
    assert outside == [], outside
    # the admin's own style sheet applies (a static file, not an inline block)
    page.goto(f"{base}{reverse('admin:monitoring_run_change', args=[run.pk])}")
    border = page.evaluate("getComputedStyle(document.querySelector('.fruxon-span')).borderLeftStyle")
    assert border == "solid"
    page.close()
