"""Issue 13 item 3: one production command serves all of /v1, /admin and its static files.

The command is the production one (docs/serving.md), run as a new deploy runs it (``DEBUG`` off, no test settings,
``manage.py collectstatic`` first, gunicorn reading ./gunicorn.conf.py)::

    DB_POOL_MAX_SIZE=16 gunicorn fruxon.asgi:application -k uvicorn_worker.UvicornWorker --workers 2

Its static files come from ``STATIC_ROOT`` through ``fruxon.static_files`` (WhiteNoise, made
async-capable). The first tests check that middleware without a server: in async mode it answers
exactly what WhiteNoise answers in sync mode (status, headers, body: 200, HEAD, ranges, 304, 405,
a compressed variant) with an async body Django's ASGI handler need not read in a thread; the
last ones start the command against the test database and use it over HTTP and in Chromium.
"""
from __future__ import annotations

import asyncio
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.http import HttpResponse
from django.test import AsyncRequestFactory, RequestFactory, override_settings

from fruxon.static_files import StaticFilesMiddleware

from . import factories as f
from .server import ROOT, gunicorn
from .test_admin_browser import browser  # noqa: F401  (the browser fixture)

SHOTS = Path(os.environ.get("FRUXON_SCREENSHOT_DIR", "/tmp/fruxon-admin-shots"))
CSS = "body { color: #123456; }\n" * 400  # about 10 KB: a body of a single read and a compressed variant


# --- the middleware in async mode answers as WhiteNoise does in sync mode --------------------------------------


def _passed_on(request):
    return HttpResponse("passed on", status=299)


async def _apassed_on(request):
    return HttpResponse("passed on", status=299)


@pytest.fixture
def static_root(tmp_path):
    root = tmp_path / "static"
    (root / "app").mkdir(parents=True)
    (root / "app" / "site.css").write_text(CSS)
    (root / "app" / "site.css.gz").write_bytes(gzip.compress(CSS.encode()))
    (root / "app" / "big.js").write_bytes(bytes(range(256)) * 1024)  # 256 KiB: several chunks
    return root


def _release(response) -> None:
    """What ``response.close()`` releases (the file), without its request_finished signal (database cleanup)."""
    for closer in response._resource_closers:
        closer()


def _sync_answer(response) -> tuple[int, dict, bytes]:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    _release(response)
    return response.status_code, dict(response.items()), body


async def _async_answer(response) -> tuple[int, dict, bytes]:
    assert response.streaming and response.is_async or not response.streaming, \
        "a sync body would be read whole in a thread by Django's ASGI handler (with a warning)"
    body = b"".join([part async for part in response]) if response.streaming else response.content
    _release(response)
    return response.status_code, dict(response.items()), body


CASES = [
    ("GET", "/static/app/site.css", {}),
    ("HEAD", "/static/app/site.css", {}),
    ("GET", "/static/app/site.css", {"Range": "bytes=0-9"}),
    ("GET", "/static/app/site.css", {"Range": "bytes=-5"}),
    ("GET", "/static/app/site.css", {"Range": "bytes=999999-"}),
    ("GET", "/static/app/site.css", {"Accept-Encoding": "gzip, deflate"}),
    ("GET", "/static/app/big.js", {}),
    ("GET", "/static/app/big.js", {"Range": "bytes=70000-200000"}),
    ("POST", "/static/app/site.css", {}),
    ("GET", "/static/app/missing.css", {}),
    ("GET", "/v1/orgs", {}),
]


@pytest.mark.parametrize("autorefresh", [False, True], ids=["collected", "autorefresh"])
def test_async_mode_answers_as_whitenoise_does(static_root, autorefresh):
    with override_settings(STATIC_ROOT=str(static_root), WHITENOISE_USE_FINDERS=False,
                           WHITENOISE_AUTOREFRESH=autorefresh):
        sync_mw, async_mw = StaticFilesMiddleware(_passed_on), StaticFilesMiddleware(_apassed_on)
    assert asyncio.iscoroutinefunction(async_mw) and not asyncio.iscoroutinefunction(sync_mw)
    etag = sync_mw(RequestFactory().get("/static/app/site.css"))["ETag"]
    cases = [*CASES, ("GET", "/static/app/site.css", {"If-None-Match": etag})]
    seen = set()
    for method, path, headers in cases:
        sync_request = RequestFactory().generic(method, path, headers=headers)
        async_request = AsyncRequestFactory().generic(method, path, headers=headers)
        expected = _sync_answer(sync_mw(sync_request))
        got = asyncio.run(_async_answer_of(async_mw, async_request))
        assert got == expected, (method, path, headers)
        seen.add(got[0])
    assert seen == {200, 206, 304, 405, 416, 299}
    gz = asyncio.run(_async_answer_of(async_mw, AsyncRequestFactory().get("/static/app/site.css",
                                                                          headers={"Accept-Encoding": "gzip"})))
    assert gz[1]["Content-Encoding"] == "gzip" and gzip.decompress(gz[2]) == CSS.encode()


async def _async_answer_of(middleware, request):
    return await _async_answer(await middleware(request))


def test_async_body_closes_its_file(static_root):
    with override_settings(STATIC_ROOT=str(static_root), WHITENOISE_USE_FINDERS=False, WHITENOISE_AUTOREFRESH=False):
        middleware = StaticFilesMiddleware(_apassed_on)

    async def scenario():
        opened = []
        real_open = open

        def spy(*args, **kwargs):
            handle = real_open(*args, **kwargs)
            opened.append(handle)
            return handle

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("builtins.open", spy)
            # a client that goes away after the first chunk: Django closes the body, then the response
            response = await middleware(AsyncRequestFactory().get("/static/app/big.js"))
            body = aiter(response)
            assert len(await anext(body)) == 64 * 1024
            await body.aclose()
            response.close()
            # a response whose body never ran (e.g. the send failed at once)
            (await middleware(AsyncRequestFactory().get("/static/app/big.js"))).close()
        assert len(opened) == 2 and all(handle.closed for handle in opened)

    asyncio.run(scenario())


def test_autorefresh_searches_only_under_static_prefixes(static_root):
    with override_settings(STATIC_ROOT=str(static_root), WHITENOISE_USE_FINDERS=False, WHITENOISE_AUTOREFRESH=True):
        middleware = StaticFilesMiddleware(_apassed_on)
    searched = []
    real_find = middleware.find_file
    middleware.find_file = lambda url: searched.append(url) or real_find(url)
    (static_root / "app" / "new.css").write_text("a{}")  # added after start: autorefresh finds it

    async def get(path):
        return (await middleware(AsyncRequestFactory().get(path))).status_code

    assert asyncio.run(get("/static/app/new.css")) == 200
    assert asyncio.run(get("/v1/acme/agents")) == 299
    assert asyncio.run(get("/admin/")) == 299
    assert searched == ["/static/app/new.css"]


# --- the production command, over HTTP and in a browser ---------------------------------------------------------


@pytest.fixture(scope="module")
def production(django_db_setup, django_db_blocker, tmp_path_factory):
    """The production command (tests/server.py's ``gunicorn``, ``kind="asgi"``) on the test database with
    production settings, after collectstatic into a temporary STATIC_ROOT. Yields the base URL.

    Settings fix STATIC_ROOT at BASE_DIR/staticfiles, so the server (and collectstatic) read it from a
    one-line settings module that imports fruxon.settings and sets only STATIC_ROOT.
    """
    tmp = tmp_path_factory.mktemp("serving")
    static_root, site = tmp / "staticfiles", tmp / "site"
    site.mkdir()
    (site / "serving_settings.py").write_text(
        f"from fruxon.settings import *  # noqa: F401,F403\nSTATIC_ROOT = {str(static_root)!r}\n")
    env = {
        "DJANGO_SETTINGS_MODULE": "serving_settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "FRUXON_TESTING": "0",  # production settings: STATIC_ROOT (no finders), secure cookies, PBKDF2
        "SECRET_KEY": "serving-" + Fernet.generate_key().decode(),
        "FRUXON_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DB_POOL_MAX_SIZE": "16",
    }
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
                   cwd=ROOT, env={**os.environ, **env}, check=True, timeout=120)
    assert (static_root / "admin" / "css" / "base.css").is_file()
    with django_db_blocker.unblock(), gunicorn(workers=2, extra_env=env, kind="asgi") as base:
        yield base


def _assets(html: str, tag: str, attribute: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf'<{tag}\b[^>]*\b{attribute}="([^"]+)"', html)]


def _is_error_shape(response, code: str) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body


@pytest.mark.django_db(transaction=True)
def test_production_command_serves_api_admin_and_static_files(production):
    base = production
    with httpx.Client(base_url=base, timeout=15) as http:
        health = http.get("/healthz")
        assert health.json() == {"status": "ok"} and health.headers["server"] == "uvicorn"

        login = http.get("/admin/login/")
        assert login.status_code == 200 and login.headers["content-type"].startswith("text/html")
        sheets = [href for href in _assets(login.text, "link", "href") if href.endswith(".css")]
        assert "/static/admin/css/base.css" in sheets and "/static/admin/css/login.css" in sheets, sheets
        for href in sheets:
            sheet = http.get(href)
            assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/css"), href
            assert len(sheet.content) > 100 and sheet.content == (_collected(href)), href

        css = http.get("/static/admin/css/base.css")
        max_age = int(re.fullmatch(r"max-age=(\d+), public(, immutable)?", css.headers["cache-control"]).group(1))
        assert max_age >= 60, css.headers
        assert css.headers["etag"] and css.headers["last-modified"] and css.headers["x-content-type-options"] == "nosniff"
        head = http.head("/static/admin/css/base.css")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(css.content))
        part = http.get("/static/admin/css/base.css", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == css.content[10:20]
        assert http.get("/static/admin/css/base.css", headers={"If-None-Match": css.headers["etag"]}).status_code == 304

        missing = http.get("/static/x.css")
        assert missing.status_code == 404
        _is_error_shape(missing, "not_found")

        docs = http.get("/v1/docs")
        assert docs.status_code == 200
        scripts = _assets(docs.text, "script", "src")
        sidecar = [src for src in scripts if src.startswith("/static/drf_spectacular_sidecar/")]
        assert {src.rsplit("/", 1)[-1] for src in sidecar} >= {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"}
        for src in scripts:
            script = http.get(src)
            assert script.status_code == 200 and "javascript" in script.headers["content-type"], src
        bundle = http.get(next(src for src in sidecar if src.endswith("swagger-ui-bundle.js")))
        assert len(bundle.content) > 500_000 and bundle.content == _collected(bundle.url.path)  # many chunks, intact

        token = http.post("/v1/auth/token", json={"username": "nobody", "password": "wrong"})
        assert token.status_code in (400, 401)
        _is_error_shape(token, "unauthenticated" if token.status_code == 401 else "invalid_request")
        assert float(token.headers["x-fruxon-overhead-ms"]) >= 0


def _collected(url_path: str) -> bytes:
    """The file collectstatic put at STATIC_URL path ``url_path`` (it is the app's own file)."""
    from django.contrib.staticfiles import finders

    found = finders.find(url_path.removeprefix("/static/"))
    assert found, url_path
    return Path(found).read_bytes()


@pytest.mark.django_db(transaction=True)
def test_admin_is_styled_in_chromium_under_the_production_command(production, browser):  # noqa: F811
    base = production
    org = f.OrganizationFactory(slug="acme", name="Acme")
    owner = f.member(org, "owner", "olivia")
    # The server runs production settings (PBKDF2), not the suite's fast test hasher.
    owner.password = PBKDF2PasswordHasher().encode(f.PASSWORD, "servingsalt", iterations=1000)
    owner.save(update_fields=["password"])

    page = browser.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
    page.goto(f"{base}/admin/login/")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", f.PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")
    page.wait_for_load_state("load")
    body = page.inner_text("body")
    assert "welcome, olivia" in body.lower() and "Organizations" in body, body  # logged in: the session cookie held
    # every style sheet loaded and applies: the header takes base.css's colours, not the browser's defaults
    sheets = page.evaluate("[...document.styleSheets].map(s => [s.href, s.cssRules.length])")
    assert sheets and all(count > 0 for _href, count in sheets), sheets
    assert any(href.endswith("/static/admin/css/base.css") for href, _ in sheets), sheets
    header = page.evaluate("getComputedStyle(document.querySelector('#header')).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent"), header
    font = page.evaluate("getComputedStyle(document.body).fontFamily")
    assert "Times" not in font, font
    assert failed == [], failed
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "admin-production-command.png"), full_page=True)
    page.close()


@pytest.mark.django_db(transaction=True)
def test_forwarded_for_is_believed_only_as_the_application_says():
    """The uvicorn worker would rewrite the client address from X-Forwarded-For on loopback connections
    (gunicorn's default); gunicorn.conf.py turns that off, so the login throttle's per-address limit
    holds against a client that sends a new X-Forwarded-For with every attempt."""
    env = {"FRUXON_LOGIN_MAX_FAILURES_PER_ADDRESS": "3", "FRUXON_LOGIN_MAX_FAILURES_PER_ACCOUNT": "100"}
    with gunicorn(workers=1, extra_env=env) as base, httpx.Client(base_url=base, timeout=30) as client:
        codes = [client.post("/v1/auth/token", json={"username": f"nobody{n}", "password": "wrong"},
                             headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code for n in range(6)]
    assert codes[:3] == [401] * 3 and codes[3:] == [429] * 3, codes
