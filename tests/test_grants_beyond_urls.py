"""Per-agent grants also apply where the agent is not in the URL (DESIGN rule 2: every role check).

``POST /evaluations`` names its agent in the body; ``runs/{id}:pin`` and
``runs/{id}:add-to-dataset`` act on the run's agent; ``evaluations/{id}:cancel``
on the evaluation's agent. A grant raises or lowers the org role there exactly as
on ``/agents/{agent}/...`` routes, and a key limited to other agents is refused.
"""
from __future__ import annotations

import pytest

from agents import grants
from evaluations.models import Case, EvaluationRun
from monitoring.models import Run

from . import factories as f
from .builders import SYSTEM, agent_with_revision, run_once


@pytest.fixture
def world(org, editor, viewer, owner, api):
    support, rev = agent_with_revision(org, "support")
    billing, _ = agent_with_revision(org, "billing")
    owner_client = api.as_user(owner)
    assert owner_client.post("/v1/acme/datasets", {"slug": "golden", "metrics": [{"type": "contains"}]},
                             format="json").status_code == 201
    assert owner_client.post("/v1/acme/datasets/golden/cases", {"input": {"question": "q"}, "expected": "q"},
                             format="json").status_code == 201
    # vera (org viewer) is an editor on support; eddie (org editor) only a viewer on support
    grants.set_grant(actor=SYSTEM, agent=support, username=viewer.username, role="editor")
    grants.set_grant(actor=SYSTEM, agent=support, username=editor.username, role="viewer")
    return {"support": support, "billing": billing, "rev": rev, "support_run": run_once(support),
            "billing_run": run_once(billing)}


def _evaluate(client, agent: str, revision_id: str):
    return client.post("/v1/acme/evaluations", {"agent": agent, "revisionId": revision_id, "dataset": "golden"},
                       format="json")


def test_body_named_agent_honours_grants(world, viewer, editor, api, django_capture_on_commit_callbacks):
    vera, eddie = api.as_user(viewer), api.as_user(editor)
    billing_rev = world["billing"].deployed_revision_id
    with django_capture_on_commit_callbacks(execute=True):
        raised = _evaluate(vera, "support", world["rev"].id)
    assert raised.status_code == 202, raised.content  # the grant raises vera on support
    denied = _evaluate(vera, "billing", billing_rev)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    lowered = _evaluate(eddie, "support", world["rev"].id)
    assert lowered.status_code == 403  # the grant lowers eddie on support
    with django_capture_on_commit_callbacks(execute=True):
        assert _evaluate(eddie, "billing", billing_rev).status_code == 202
    assert EvaluationRun.objects.filter(agent=world["support"]).count() == 1
    assert EvaluationRun.objects.filter(agent=world["billing"]).count() == 1
    # an unknown agent in the body resolves inside the org: 404, nothing written
    missing = _evaluate(vera, "nope", world["rev"].id)
    assert missing.status_code == 404 and EvaluationRun.objects.count() == 2


def test_object_agent_honours_grants(world, viewer, editor, api):
    vera, eddie = api.as_user(viewer), api.as_user(editor)
    support_run, billing_run = world["support_run"], world["billing_run"]
    assert vera.post(f"/v1/acme/runs/{support_run.id}:pin", {}, format="json").status_code == 200
    assert vera.post(f"/v1/acme/runs/{billing_run.id}:pin", {}, format="json").status_code == 403
    assert eddie.post(f"/v1/acme/runs/{support_run.id}:pin", {"pinned": False}, format="json").status_code == 403
    assert eddie.post(f"/v1/acme/runs/{billing_run.id}:pin", {}, format="json").status_code == 200
    assert set(Run.objects.filter(pinned=True).values_list("id", flat=True)) == {support_run.id, billing_run.id}

    body = {"dataset": "golden", "expected": "regression"}
    assert vera.post(f"/v1/acme/runs/{support_run.id}:add-to-dataset", body, format="json").status_code == 201
    assert vera.post(f"/v1/acme/runs/{billing_run.id}:add-to-dataset", body, format="json").status_code == 403
    assert eddie.post(f"/v1/acme/runs/{support_run.id}:add-to-dataset", body, format="json").status_code == 403
    assert Case.objects.filter(source_run_id=support_run.id).count() == 1
    assert not Case.objects.filter(source_run_id=billing_run.id).exists()


def test_keys_limited_to_other_agents_are_refused(world, org, api, django_capture_on_commit_callbacks):
    _, key = f.api_key(org, preset="admin", agents=["billing"])
    client = api.as_key(key)
    refused = _evaluate(client, "support", world["rev"].id)
    assert refused.status_code == 403 and not EvaluationRun.objects.filter(agent=world["support"]).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert _evaluate(client, "billing", world["billing"].deployed_revision_id).status_code == 202
    # runs of agents outside the key's list are invisible to it, as in GET /runs
    assert client.post(f"/v1/acme/runs/{world['support_run'].id}:pin", {}, format="json").status_code == 404
    assert client.post(f"/v1/acme/runs/{world['support_run'].id}:add-to-dataset", {"dataset": "golden"},
                       format="json").status_code == 404
    assert client.post(f"/v1/acme/runs/{world['billing_run'].id}:pin", {}, format="json").status_code == 200
