"""Issue 14 item 2: webhooks that arrive.

Alerts are rows with a delivery row per channel; a webhook is signed per the Standard
Webhooks specification and retried with backoff for 24 hours, the HTTP call made with
no transaction open and no row lock held; owners list alerts, see delivery status and
redeliver; the signing secret rotates with a grace period.

The receiver is a loopback server (agents.engine.testing). Signatures are checked by
``tests.standard_webhooks.verify``, written from the specification (not the
``standardwebhooks`` package the product signs with). Retries are driven by calling the beat tick's function with a
clock set to each delivery's next attempt time, not by sleeping.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from agents.engine.testing import StubReply, start_json_server
from monitoring import alerts
from monitoring.models import Alert, AlertDelivery
from orgs.models import AuditEvent, Organization

from . import factories as f
from .conftest import Api
from .standard_webhooks import TOLERANCE, Rejected, verify

pytestmark = pytest.mark.django_db(transaction=True)


# --- fixtures --------------------------------------------------------------------------------------------
class Receiver:
    """A loopback webhook endpoint answering from a script of replies (the last one repeats)."""

    def __init__(self, replies, on_request=None):
        self.replies = list(replies)
        self.on_request = on_request
        self.calls = 0
        self.lock = threading.Lock()
        base, self.server = start_json_server(self._handle)
        self.url = f"{base}/hooks/fruxon"

    def _handle(self, request):
        with self.lock:
            index = self.calls
            self.calls += 1
        if self.on_request is not None:
            self.on_request(request)
        return self.replies[min(index, len(self.replies) - 1)]

    @property
    def requests(self):
        return self.server.requests

    def close(self):
        self.server.close()


@pytest.fixture
def receivers():
    made = []

    def make(replies, on_request=None):
        made.append(Receiver(replies, on_request))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def acme():
    return f.OrganizationFactory(slug="acme")


def _raise(org, url="", emails=None, n=0):
    return alerts.raise_alert(organization=org, kind="budget.threshold", subject=f"support reached 80% ({n})",
                              payload={"agent": "support", "threshold": 0.8, "n": n}, webhook=url, emails=emails,
                              dedupe_key=f"test:{n}")


def _delivery(alert, channel="webhook") -> AlertDelivery:
    return AlertDelivery.objects.get(alert=alert, channel=channel)


def _tick_when_due(delivery: AlertDelivery) -> int:
    """The beat tick, run at the moment the delivery's next attempt is due."""
    return alerts.deliver_due(now=delivery.next_attempt_at)


def _secret(org) -> str:
    return Organization.objects.get(pk=org.pk).webhook_secret


# --- retries until it arrives ---------------------------------------------------------------------------
def test_a_receiver_failing_twice_gets_the_alert_once_it_accepts(acme, receivers):
    hook = receivers([StubReply(500, {"detail": "upstream-internal-detail"}), StubReply(503), StubReply(204, b"")])
    alert = _raise(acme, hook.url)
    # First attempt at once (after commit): refused with 500; the next one waits for the backoff.
    assert hook.calls == 1
    first = _delivery(alert)
    assert (first.status, first.attempts, first.last_error) == ("pending", 1, "webhook answered HTTP 500")
    assert "upstream-internal-detail" not in first.last_error
    assert first.next_attempt_at > first.last_attempt_at
    assert alerts.deliver_due(now=first.next_attempt_at - timedelta(seconds=1)) == 0  # not due yet
    assert hook.calls == 1

    assert _tick_when_due(first) == 1  # 503
    second = _delivery(alert)
    assert (second.status, second.attempts, second.last_error) == ("pending", 2, "webhook answered HTTP 503")
    # exponential: the second wait is about twice the first (each +-25% jitter)
    assert (second.next_attempt_at - second.last_attempt_at) > (first.next_attempt_at - first.last_attempt_at) * 1.1

    assert _tick_when_due(second) == 1  # accepted
    done = _delivery(alert)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 3, "")
    assert done.next_attempt_at is None and Alert.objects.get(pk=alert.pk).delivered_at is not None
    assert alerts.deliver_due(now=timezone.now() + timedelta(days=2)) == 0  # nothing more to send
    assert hook.calls == 3

    secret = _secret(acme)
    bodies = [verify(secret, r.headers, r.raw) for r in hook.requests]
    assert {r.headers["webhook-id"] for r in hook.requests} == {f"msg_alert_{alert.pk}"}  # one id: receivers dedupe
    assert bodies[0] == bodies[2] and bodies[2]["type"] == "budget.threshold"
    assert bodies[2]["data"] == {"agent": "support", "threshold": 0.8, "n": 0}


def test_a_replayed_delivery_with_an_old_timestamp_is_rejected(acme, receivers):
    hook = receivers([StubReply(204, b"")])
    _raise(acme, hook.url)
    (request,) = hook.requests
    secret = _secret(acme)
    stamp = int(request.headers["webhook-timestamp"])
    assert abs(stamp - time.time()) < 60  # the attempt's own time
    assert verify(secret, request.headers, request.raw)["type"] == "budget.threshold"
    # the same bytes and headers replayed six minutes later: refused
    with pytest.raises(Rejected, match="tolerance"):
        verify(secret, request.headers, request.raw, now=stamp + TOLERANCE + 60)
    # a replay with a fresh timestamp header no longer matches the signature
    with pytest.raises(Rejected, match="no matching signature"):
        verify(secret, {**request.headers, "webhook-timestamp": str(stamp + 1)}, request.raw)
    with pytest.raises(Rejected, match="no matching signature"):
        verify(secret, request.headers, request.raw.replace(b"0.8", b"0.1"))
    with pytest.raises(Rejected, match="no matching signature"):
        verify("whsec_" + base64.b64encode(b"x" * 32).decode(), request.headers, request.raw)


def test_after_24_hours_of_failures_the_delivery_is_failed(acme, receivers):
    hook = receivers([StubReply(500, {"detail": "upstream-internal-detail"})])
    alert = _raise(acme, hook.url)
    start = _delivery(alert).series_started_at
    waits = []
    for _ in range(200):  # bounded: backoff caps at an hour, so 24 h is ~35 attempts
        delivery = _delivery(alert)
        if delivery.status != "pending":
            break
        waits.append(delivery.next_attempt_at - delivery.last_attempt_at)
        assert _tick_when_due(delivery) == 1
    delivery = _delivery(alert)
    assert delivery.status == "failed" and delivery.next_attempt_at is None
    assert delivery.attempts == hook.calls == len(waits) + 1
    assert delivery.last_attempt_at - start >= timedelta(hours=24)  # retried for at least 24 hours
    assert delivery.last_error == "webhook answered HTTP 500"
    assert max(waits) <= timedelta(seconds=3600 * 1.25) and waits[0] < timedelta(seconds=60)
    assert Alert.objects.get(pk=alert.pk).delivered_at is None
    assert alerts.deliver_due(now=timezone.now() + timedelta(days=30)) == 0  # failed is final until a redeliver


def test_unreachable_and_refused_receivers_are_retried_with_generic_errors(acme, receivers, settings):
    hook = receivers([StubReply(204, b"")])
    dead = hook.url.replace(str(hook.server.server_address[1]), "1")  # nothing listens on port 1
    unreachable = _raise(acme, dead, n=1)
    assert _delivery(unreachable).last_error == "webhook could not be reached"
    settings.FRUXON_EGRESS_ALLOW = ""
    from fruxon import egress

    egress.configure_from_settings()
    try:
        refused = _raise(acme, hook.url, n=2)
    finally:
        settings.FRUXON_EGRESS_ALLOW = "127.0.0.1"
        egress.configure_from_settings()
    denied = _delivery(refused)
    assert denied.status == "pending" and "not allowed by the egress policy" in denied.last_error
    assert hook.calls == 0  # the policy held: nothing reached the loopback receiver
    assert alerts.deliver_due(now=denied.next_attempt_at, alert_id=refused.pk) == 1  # allowed again: it arrives
    assert _delivery(refused).status == "delivered" and hook.calls == 1


# --- outside transactions and locks; claims ----------------------------------------------------------------
def test_no_http_call_happens_inside_a_transaction_or_under_a_row_lock(acme, receivers):
    seen = []

    def while_receiving(request):
        # The receiver's thread has its own database connection: if the delivering worker still
        # held a lock on the alert or its delivery row (select_for_update in an open transaction),
        # NOWAIT would fail at once.
        alert_id = int(request.headers["webhook-id"].rsplit("_", 1)[1])
        try:
            with transaction.atomic():
                Alert.objects.select_for_update(nowait=True).get(pk=alert_id)
                AlertDelivery.objects.select_for_update(nowait=True).get(alert_id=alert_id, channel="webhook")
            seen.append("unlocked")
        except DatabaseError:
            seen.append("locked")
        finally:
            connection.close()

    def on_send(request):
        # An httpx event hook runs in the delivering thread, as the request goes out.
        seen.append("in a transaction" if connection.in_atomic_block else "no transaction")

    hook = receivers([StubReply(500), StubReply(204, b"")], on_request=while_receiving)
    hooks = alerts.webhook_client().event_hooks
    hooks["request"].append(on_send)
    try:
        with transaction.atomic():
            alert = _raise(acme, hook.url)
            assert hook.calls == 0  # raised inside a transaction: nothing is sent before it commits
        assert hook.calls == 1
        assert _tick_when_due(_delivery(alert)) == 1  # the retry, from the beat tick
    finally:
        hooks["request"].remove(on_send)
    assert seen == ["no transaction", "unlocked", "no transaction", "unlocked"]
    assert _delivery(alert).status == "delivered"


def test_two_ticks_racing_deliver_once(acme, receivers):
    hook = receivers([StubReply(500)] * 6 + [StubReply(204, b"", delay_ms=200)])
    raised = [_raise(acme, hook.url, n=n) for n in range(6)]  # six first attempts, all refused
    assert hook.calls == 6
    due = max(_delivery(a).next_attempt_at for a in raised)
    gate = threading.Barrier(4)
    counts = []

    def tick():
        try:
            gate.wait(timeout=30)
            counts.append(alerts.deliver_due(now=due))
        finally:
            connection.close()

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(counts) == 6  # each due delivery claimed by exactly one tick
    assert hook.calls == 12
    second_ids = [r.headers["webhook-id"] for r in hook.requests[6:]]
    assert sorted(second_ids) == sorted(f"msg_alert_{a.pk}" for a in raised)  # once each
    assert all(_delivery(a).status == "delivered" and _delivery(a).attempts == 2 for a in raised)


def test_a_claim_of_a_killed_worker_is_retried_after_its_lease(acme, receivers):
    hook = receivers([StubReply(500), StubReply(204, b"")])
    alert = _raise(acme, hook.url)
    delivery = _delivery(alert)
    # A worker claims the delivery and dies before calling the receiver.
    claimed = alerts._claim(now=delivery.next_attempt_at, alert_id=None, limit=10)
    assert [pk for pk, _ in claimed] == [delivery.pk]
    assert alerts.deliver_due(now=delivery.next_attempt_at) == 0  # another tick sees it claimed
    leased = _delivery(alert)
    assert alerts.deliver_due(now=leased.next_attempt_at) == 1  # the lease ran out: claimed again
    assert _delivery(alert).status == "delivered" and hook.calls == 2


def test_a_broker_down_when_the_alert_is_raised_loses_nothing(acme, receivers, monkeypatch, settings):
    from kombu.exceptions import OperationalError

    from monitoring import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    hook = receivers([StubReply(204, b"")])
    settings.CELERY_TASK_ALWAYS_EAGER = False  # as with a real broker
    monkeypatch.setattr(tasks.deliver_alert, "delay", broker_down)
    alert = _raise(acme, hook.url)  # no exception for the caller
    assert alert is not None and hook.calls == 0
    delivery = _delivery(alert)
    assert delivery.status == "pending" and delivery.next_attempt_at <= timezone.now()
    assert tasks.deliver_due_alerts.apply().get() == 1  # the beat tick sweeps due rows
    assert _delivery(alert).status == "delivered" and hook.calls == 1


def test_email_deliveries_are_retried_too(acme, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 2  # nothing listens
    alert = _raise(acme, emails=["oncall@example.com"])
    delivery = _delivery(alert, "email")
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, "email could not be sent")
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert _tick_when_due(delivery) == 1
    assert _delivery(alert, "email").status == "delivered"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["oncall@example.com"]


# --- the API ------------------------------------------------------------------------------------------------
@pytest.fixture
def people(acme):
    return {role: f.member(acme, role, f"acme-{role}") for role in ("owner", "editor", "viewer")}


def _fail_for_a_day(alert):
    """Tick (for this alert only) at each next attempt time until its webhook delivery is final."""
    for _ in range(200):
        delivery = _delivery(alert)
        if delivery.status != "pending":
            return
        alerts.deliver_due(now=delivery.next_attempt_at, alert_id=alert.pk)


def test_the_alerts_list_shows_status_attempts_and_last_error(acme, people, receivers):
    ok = receivers([StubReply(204, b"")])
    broken = receivers([StubReply(500)])
    delivered = _raise(acme, ok.url, emails=["oncall@example.com"], n=1)
    retrying = _raise(acme, broken.url, n=2)
    failed = _raise(acme, broken.url, n=3)
    _fail_for_a_day(failed)
    other = f.OrganizationFactory(slug="other")
    _raise(other, ok.url, n=4)
    client = Api.as_user(people["owner"])

    listed = client.get("/v1/acme/alerts")
    assert listed.status_code == 200
    rows = {row["id"]: row for row in listed.json()["results"]}
    assert set(rows) == {delivered.pk, retrying.pk, failed.pk}  # never another org's
    assert rows[delivered.pk]["status"] == "delivered"
    assert [(d["channel"], d["status"], d["attempts"]) for d in rows[delivered.pk]["deliveries"]] == [
        ("webhook", "delivered", 1), ("email", "delivered", 1)]
    pending = rows[retrying.pk]
    assert pending["status"] == "pending" and pending["deliveries"][0]["lastError"] == "webhook answered HTTP 500"
    assert pending["deliveries"][0]["attempts"] == 1 and pending["deliveries"][0]["nextAttemptAt"]
    gone = rows[failed.pk]["deliveries"][0]
    assert rows[failed.pk]["status"] == "failed" and gone["status"] == "failed" and gone["attempts"] > 20
    assert rows[failed.pk]["payload"] == {"agent": "support", "threshold": 0.8, "n": 3}
    assert rows[failed.pk]["webhookId"] == f"msg_alert_{failed.pk}"

    def ids(query):
        response = client.get(f"/v1/acme/alerts{query}")
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids("?status=failed") == [failed.pk]
    assert ids("?status=pending") == [retrying.pk]
    assert ids("?status=delivered") == [delivered.pk]
    assert set(ids("?kind=budget")) == set(ids("?kind=budget.threshold")) == set(rows)
    assert ids("?kind=evaluation") == []
    assert ids(f"?since={(timezone.now() + timedelta(minutes=1)).isoformat().replace('+00:00', 'Z')}") == []
    bad = client.get("/v1/acme/alerts?status=lost")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    page = client.get("/v1/acme/alerts?limit=2").json()
    assert len(page["results"]) == 2 and page["next"]
    assert len(client.get(page["next"]).json()["results"]) == 1

    detail = client.get(f"/v1/acme/alerts/{failed.pk}")
    assert detail.status_code == 200 and detail.json()["deliveries"][0]["status"] == "failed"
    assert Api.as_user(people["owner"]).get(f"/v1/other/alerts/{failed.pk}").status_code == 404
    assert client.get(f"/v1/acme/alerts/{Alert.objects.get(organization=other).pk}").status_code == 404
    for role in ("editor", "viewer"):
        refused = Api.as_user(people[role]).get("/v1/acme/alerts")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    _, reader = f.api_key(acme, scopes=["org:read"])
    assert Api.as_key(reader).get("/v1/acme/alerts").status_code == 200
    _, runner = f.api_key(acme, preset="runner")
    assert Api.as_key(runner).get("/v1/acme/alerts").status_code == 403


def test_redeliver_sends_it_again_and_is_owner_only(acme, people, receivers):
    hook = receivers([StubReply(500)])
    alert = _raise(acme, hook.url)
    _fail_for_a_day(alert)
    sent = hook.calls
    for role in ("editor", "viewer"):
        refused = Api.as_user(people[role]).post(f"/v1/acme/alerts/{alert.pk}:redeliver")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    _, reader = f.api_key(acme, scopes=["org:read"])
    assert Api.as_key(reader).post(f"/v1/acme/alerts/{alert.pk}:redeliver").status_code == 403
    assert hook.calls == sent and _delivery(alert).status == "failed"

    hook.replies = [StubReply(204, b"")]  # the receiver is fixed
    response = Api.as_user(people["owner"]).post(f"/v1/acme/alerts/{alert.pk}:redeliver")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "delivered"
    assert response.json()["deliveries"][0]["attempts"] == 1  # a new series
    assert hook.calls == sent + 1
    assert hook.requests[-1].headers["webhook-id"] == f"msg_alert_{alert.pk}"
    verify(_secret(acme), hook.requests[-1].headers, hook.requests[-1].raw)
    event = AuditEvent.objects.get(organization=acme, action="alert.redelivered")
    assert event.target_id == str(alert.pk) and event.actor_user == people["owner"]
    other = f.OrganizationFactory(slug="other")
    outsider = f.member(other, "owner", "other-owner")
    assert Api.as_user(outsider).post(f"/v1/acme/alerts/{alert.pk}:redeliver").status_code == 404
    assert Api.as_user(outsider).post(f"/v1/other/alerts/{alert.pk}:redeliver").status_code == 404


# --- the signing secret --------------------------------------------------------------------------------------
def test_secret_rotation_signs_with_both_secrets_during_the_grace_period(acme, people, receivers):
    hook = receivers([StubReply(204, b"")])
    old = _secret(acme)
    owner = Api.as_user(people["owner"])
    assert "webhookSecret" not in owner.get("/v1/acme/settings").json()  # shown once, at rotation
    for role in ("editor", "viewer"):
        assert Api.as_user(people[role]).post("/v1/acme/settings/webhook-secret:rotate").status_code == 403
    assert _secret(acme) == old

    rotated = owner.post("/v1/acme/settings/webhook-secret:rotate", {}, format="json")
    assert rotated.status_code == 200, rotated.content
    new = rotated.json()["webhookSecret"]
    assert new.startswith("whsec_") and new != old and len(base64.b64decode(new[6:])) == 32
    assert rotated.json()["previousSecretSignsUntil"]
    assert owner.get("/v1/acme/settings").json()["webhookSecretPreviousUntil"]
    event = AuditEvent.objects.get(organization=acme, action="org.webhook_secret_rotated")
    assert new not in json.dumps(event.data) and old not in json.dumps(event.data)

    _raise(acme, hook.url, n=1)
    request = hook.requests[-1]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verify(new, request.headers, request.raw)  # receivers that switched ...
    verify(old, request.headers, request.raw)  # ... and those that have not yet

    immediate = owner.post("/v1/acme/settings/webhook-secret:rotate", {"graceSeconds": 0}, format="json")
    newest = immediate.json()["webhookSecret"]
    assert immediate.json()["previousSecretSignsUntil"] is None
    _raise(acme, hook.url, n=2)
    request = hook.requests[-1]
    verify(newest, request.headers, request.raw)
    for stale in (new, old):
        with pytest.raises(Rejected):
            verify(stale, request.headers, request.raw)

    # a grace period that has ended signs with the current secret only
    owner.post("/v1/acme/settings/webhook-secret:rotate", {}, format="json")
    Organization.objects.filter(pk=acme.pk).update(webhook_secret_previous_until=timezone.now() - timedelta(seconds=1))
    _raise(acme, hook.url, n=3)
    assert len(hook.requests[-1].headers["webhook-signature"].split(" ")) == 1
    with pytest.raises(Rejected):
        verify(newest, hook.requests[-1].headers, hook.requests[-1].raw)
    bad = owner.post("/v1/acme/settings/webhook-secret:rotate", {"graceSeconds": -1}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


@override_settings(FRUXON_ALERT_RETRY_HOURS=1)
def test_the_retry_window_is_a_setting(acme, receivers):
    hook = receivers([StubReply(500)])
    alert = _raise(acme, hook.url)
    _fail_for_a_day(alert)
    delivery = _delivery(alert)
    assert delivery.status == "failed"
    assert timedelta(hours=1) <= delivery.last_attempt_at - delivery.series_started_at < timedelta(hours=3)


# --- the admin --------------------------------------------------------------------------------------------------
def test_admin_lists_alerts_with_delivery_status_and_owners_redeliver(acme, people, receivers):
    from django.test import Client
    from django.urls import reverse

    hook = receivers([StubReply(500)])
    alert = _raise(acme, hook.url)
    other = f.OrganizationFactory(slug="other")
    theirs = _raise(other, receivers([StubReply(204, b"")]).url, n=9)

    def login(user):
        client = Client()
        client.force_login(user)
        return client

    owner = login(people["owner"])
    changelist = owner.get(reverse("admin:monitoring_alert_changelist"))
    assert changelist.status_code == 200
    text = changelist.content.decode()
    assert "support reached 80% (0)" in text and "webhook: pending, 1 attempt(s), webhook answered HTTP 500" in text
    assert "(9)" not in text  # never another org's alert
    page = owner.get(reverse("admin:monitoring_alert_change", args=[alert.pk]))
    assert page.status_code == 200 and "webhook answered HTTP 500" in page.content.decode()
    assert f"msg_alert_{alert.pk}" in page.content.decode()
    assert owner.get(reverse("admin:monitoring_alert_change", args=[theirs.pk])).status_code == 302  # "doesn't exist"

    # editors and viewers see no alerts and cannot redeliver
    for role in ("editor", "viewer"):
        client = login(people[role])
        assert client.get(reverse("admin:monitoring_alert_changelist")).status_code == 403
        refused = client.post(reverse("admin:monitoring_alert_changelist"),
                              {"action": "redeliver", "_selected_action": [alert.pk]})
        assert refused.status_code == 403
    assert hook.calls == 1

    hook.replies = [StubReply(204, b"")]
    done = owner.post(reverse("admin:monitoring_alert_changelist"), {"action": "redeliver",
                                                                   "_selected_action": [alert.pk]})
    assert done.status_code == 302
    assert hook.calls == 2 and _delivery(alert).status == "delivered" and _delivery(alert).attempts == 1
    assert AuditEvent.objects.filter(organization=acme, action="alert.redelivered",
                                     actor_user=people["owner"]).count() == 1


def test_rotate_refuses_a_body_that_is_not_an_object(acme, people):
    owner = Api.as_user(people["owner"])
    old = _secret(acme)
    for body in ("null", "[]", '"x"'):
        refused = owner.post("/v1/acme/settings/webhook-secret:rotate", body, content_type="application/json")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request", body
    assert _secret(acme) == old
    assert owner.post("/v1/acme/settings/webhook-secret:rotate").status_code == 200  # no body: the defaults
