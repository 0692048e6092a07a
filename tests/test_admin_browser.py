"""The admin in a real browser (Playwright driving Debian's Chromium against a live server).

What a person does: log in through the form, open a candidate's deploy confirm
page, read the checklist and the prompt diff, press Deploy, see the result. A
viewer sees the same page without any button to press; a secret's page never
shows its value. The Django-client admin tests cover every rule; this one
proves the pages work as pages (forms, CSRF, redirects, messages) in a browser.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.urls import reverse
from playwright.sync_api import sync_playwright

from agents.models import Agent
from agents.services import create_revision
from deployments import services

from . import factories as f
from .builders import SYSTEM, agent_with_revision, local_spec

CHROMIUM = os.environ.get("FRUXON_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# The flags this machine needs: no sandbox as root, and no background traffic to a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("FRUXON_SCREENSHOT_DIR", "/tmp/fruxon-admin-shots"))

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}; scripts/test.sh installs Debian's chromium"
    # Playwright's sync API keeps an event loop on this thread, which Django takes for an async
    # context; the test's own ORM calls are plain synchronous code, so allow them here only.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def ship(db):
    org = f.OrganizationFactory(slug="acme", name="Acme")
    editor = f.member(org, "editor", "eddie")
    viewer = f.member(org, "viewer", "vera")
    owner = f.member(org, "owner", "olivia")
    f.secret(org, "SHOP_TOKEN", "s3cr3t-value-never-shown")
    agent, v1 = agent_with_revision(org, "support", local_spec("v1 says {{input.question}}"), deploy=False)
    services.deploy(actor=SYSTEM, agent=agent, revision_id=v1.id, reason="launch")
    v2 = create_revision(actor=SYSTEM, agent=agent, message="sharper prompt",
                         spec=local_spec("v2 says {{input.question}}", prompt="Answer briefly: {{input.question}}"))
    return {"agent": agent, "v1": v1, "v2": v2, "editor": editor, "viewer": viewer, "owner": owner}


def _login(browser, base: str, username: str):
    page = browser.new_page()
    page.goto(f"{base}/admin/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f.PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")
    return page


def _deploy_url(base: str, agent, revision) -> str:
    return f"{base}{reverse('admin:agents_agent_deploy', args=[agent.pk])}?revision={revision.id}"


def test_editor_deploys_from_the_confirm_page(browser, live_server, ship):
    agent, v2 = ship["agent"], ship["v2"]
    page = _login(browser, live_server.url, "eddie")
    page.goto(_deploy_url(live_server.url, agent, v2))
    body = page.inner_text("body")
    for check in ("evaluation", "diff", "integrations", "secrets", "subAgents", "budget", "rollbackTarget"):
        assert check in body, check
    assert "+Answer briefly: {{input.question}}" in body  # the prompt diff
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "deploy-confirm.png"), full_page=True)

    page.fill("[name=reason]", "ship it from the browser")
    page.click("[name=_deploy]")
    page.wait_for_load_state()
    assert f"Deployed {v2.id}" in page.inner_text("body")
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == v2.id
    page.close()


def test_viewer_sees_the_checklist_but_cannot_act(browser, live_server, ship):
    agent, v2 = ship["agent"], ship["v2"]
    page = _login(browser, live_server.url, "vera")
    page.goto(_deploy_url(live_server.url, agent, v2))
    assert "rollbackTarget" in page.inner_text("body")
    assert page.locator("[name=_deploy]").count() == 0 and page.locator("[name=_force]").count() == 0
    page.goto(f"{live_server.url}{reverse('admin:agents_agent_change', args=[agent.pk])}")
    assert page.get_by_text("Deploy…").count() == 0
    assert Agent.objects.get(pk=agent.pk).deployed_revision_id == ship["v1"].id
    page.close()


def test_a_secret_page_never_shows_its_value(browser, live_server, ship):
    page = _login(browser, live_server.url, "olivia")
    page.goto(f"{live_server.url}{reverse('admin:orgs_secret_changelist')}")
    page.get_by_text("SHOP_TOKEN").first.click()
    page.wait_for_load_state()
    assert "SHOP_TOKEN" in page.content()
    assert "s3cr3t-value-never-shown" not in page.content()
    values = page.locator("input").evaluate_all("inputs => inputs.map(i => i.value)")
    assert "s3cr3t-value-never-shown" not in values
    page.close()
