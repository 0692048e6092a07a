"""Datasets and cases. Metrics are validated when set; cases are plain JSON."""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from fruxon import egress
from fruxon.errors import Conflict, InvalidRequest, NotFound
from monitoring.models import Run
from orgs.actor import Actor
from orgs.models import Organization
from orgs.services import audit
from orgs.services import secrets as secret_services

from .. import metrics as metric_lib
from ..models import Case, Dataset, EvaluationRun


def _check_metrics(metrics: list) -> None:
    problems = metric_lib.validate_metrics(metrics)
    if problems:
        raise InvalidRequest("Invalid metrics: " + "; ".join(f"{p['path']}: {p['message']}" for p in problems),
                             code="invalid_metrics", details={"problems": problems})
    for index, metric in enumerate(metrics):  # an llmJudge model is called like an agent's (400 egress_denied)
        if isinstance(metric.get("model"), dict):
            egress.check_url(metric["model"].get("baseUrl"), f"metrics[{index}].model.baseUrl")


def _check_judge_secrets(organization_id: int, metrics: list) -> None:
    """400 secret_destination: an llmJudge model sends a secret only to a host it allows, as an agent's model."""
    for index, metric in enumerate(metrics):
        if isinstance(metric.get("model"), dict):
            secret_services.check_destinations(organization_id=organization_id, spec={"steps": [{"model": metric["model"]}]},
                                               model_path=f"$.metrics[{index}].model")


def create_dataset(*, actor: Actor, organization: Organization, slug: str, name: str = "", description: str = "",
                   metrics: list | None = None, pass_threshold: float = 1.0) -> Dataset:
    metrics = metrics if metrics is not None else [{"type": "exact"}]
    _check_metrics(metrics)
    _check_judge_secrets(organization.pk, metrics)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(organization=organization, slug=slug, name=name or slug,
                                             description=description, metrics=metrics, pass_threshold=pass_threshold)
            audit.record(organization=organization, actor=actor, action="dataset.created", target_type="dataset",
                         target_id=slug, data={"metrics": [m.get("type") for m in metrics]})
    except IntegrityError:
        raise InvalidRequest(f"A dataset '{slug}' already exists.", code="slug_taken",
                             details={"fields": {"slug": ["Already taken."]}}) from None
    return dataset


def update_dataset(*, actor: Actor, dataset: Dataset, changes: dict) -> Dataset:
    if "metrics" in changes:
        _check_metrics(changes["metrics"])
        _check_judge_secrets(dataset.organization_id, changes["metrics"])
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
        for field, value in changes.items():
            setattr(locked, field, value)
        locked.updated_at = timezone.now()
        locked.save()
        audit.record(organization=locked.organization, actor=actor, action="dataset.updated", target_type="dataset",
                     target_id=locked.slug, data={"changed": sorted(changes)})
    return locked


def delete_dataset(*, actor: Actor, dataset: Dataset) -> None:
    with transaction.atomic():
        gated = sorted(dataset.gated_agents.values_list("slug", flat=True))
        if gated:
            raise Conflict(f"Dataset '{dataset.slug}' gates deploys of {', '.join(gated)}; unset it there first.",
                           details={"gatedAgents": gated})
        audit.record(organization=dataset.organization, actor=actor, action="dataset.deleted", target_type="dataset",
                     target_id=dataset.slug)
        dataset.delete()


def get_dataset(*, organization: Organization, slug: str) -> Dataset:
    dataset = Dataset.objects.filter(organization=organization, slug=slug).first()
    if dataset is None:
        raise NotFound(f"Dataset '{slug}' not found.")
    return dataset


def check_source_runs(*, organization_id: str, run_ids, agents: list[str] | None = None) -> None:
    """Every non-empty ``sourceRunId`` must name a run of this organization (of ``agents`` when given).

    400 ``unknown_run`` otherwise; another organization's run is as unknown as
    one that never existed (nothing tells them apart).
    """
    wanted = {run_id for run_id in run_ids if run_id}
    if not wanted:
        return
    found = Run.objects.filter(organization_id=organization_id, pk__in=wanted)
    if agents:
        found = found.filter(agent__slug__in=agents)
    missing = sorted(wanted - set(found.values_list("pk", flat=True)))
    if missing:
        raise InvalidRequest(f"Unknown run(s) in this organization: {', '.join(missing)}.", code="unknown_run",
                             details={"fields": {"sourceRunId": [f"Unknown run '{run_id}'." for run_id in missing]}})


def add_case(*, actor: Actor, dataset: Dataset, input: dict, expected=None, critical: bool = False,
             tags: list | None = None, source_run_id: str = "", visible_agents: list[str] | None = None) -> Case:
    """One case. ``source_run_id``, when given, must be a run of the dataset's organization."""
    check_source_runs(organization_id=dataset.organization_id, run_ids=[source_run_id], agents=visible_agents)
    return _create_case(dataset=dataset, input=input, expected=expected, critical=critical, tags=tags,
                        source_run_id=source_run_id)


def _create_case(*, dataset: Dataset, input: dict, expected, critical: bool, tags: list | None,
                 source_run_id: str) -> Case:
    """The insert itself; ``source_run_id`` already checked by the caller."""
    with transaction.atomic():
        case = Case.objects.create(organization_id=dataset.organization_id, dataset=dataset, input=input,
                                   expected=expected, critical=critical, tags=tags or [], source_run_id=source_run_id)
        Dataset.objects.filter(pk=dataset.pk).update(updated_at=timezone.now())
    return case


def update_case(*, actor: Actor, case: Case, changes: dict, visible_agents: list[str] | None = None) -> Case:
    """Change some of a case's fields (``changes`` by model field name); audited."""
    if "source_run_id" in changes:
        check_source_runs(organization_id=case.organization_id, run_ids=[changes["source_run_id"]],
                          agents=visible_agents)
    with transaction.atomic():
        for field, value in changes.items():
            setattr(case, field, value)
        case.save()
        Dataset.objects.filter(pk=case.dataset_id).update(updated_at=timezone.now())
        audit.record(organization=case.organization, actor=actor, action="dataset.case_updated",
                     target_type="dataset", target_id=case.dataset.slug,
                     data={"caseId": case.pk, "fields": sorted(changes)})
    return case


def delete_case(*, actor: Actor, case: Case) -> None:
    """Delete one case; the results past evaluations have for it go with it (their aggregates stay frozen).

    Refused (409) while a queued or running evaluation includes the case: its
    result could never be written, and the evaluation would never complete.
    """
    with transaction.atomic():
        locked = Case.objects.select_for_update().select_related("dataset", "organization").filter(pk=case.pk).first()
        if locked is None:
            raise NotFound(f"Case {case.pk} not found.")
        busy = sorted(e.id for e in EvaluationRun.objects.filter(dataset_id=locked.dataset_id,
                                                                  status__in=("queued", "running"))
                      .only("id", "case_ids") if locked.pk in e.case_ids)
        if busy:
            raise Conflict(f"Case {locked.pk} is part of unfinished evaluation(s) {', '.join(busy)}; cancel them or "
                           "wait for them to complete first.", details={"evaluations": busy})
        audit.record(organization=locked.organization, actor=actor, action="dataset.case_deleted",
                     target_type="dataset", target_id=locked.dataset.slug,
                     data={"caseId": locked.pk, "critical": locked.critical, "sourceRunId": locked.source_run_id})
        locked.delete()
        Dataset.objects.filter(pk=locked.dataset_id).update(updated_at=timezone.now())


def add_cases_bulk(*, actor: Actor, dataset: Dataset, cases: list[dict],
                   visible_agents: list[str] | None = None) -> list[Case]:
    """All or nothing: one bad case (an unknown ``sourceRunId`` included) leaves the dataset as it was."""
    check_source_runs(organization_id=dataset.organization_id, run_ids=[c.get("source_run_id") for c in cases],
                      agents=visible_agents)
    with transaction.atomic():
        rows = Case.objects.bulk_create([
            Case(organization_id=dataset.organization_id, dataset=dataset, input=c["input"], expected=c.get("expected"),
                 critical=c.get("critical", False), tags=c.get("tags", []), source_run_id=c.get("source_run_id", ""))
            for c in cases
        ])
        audit.record(organization=dataset.organization, actor=actor, action="dataset.cases_added", target_type="dataset",
                     target_id=dataset.slug, data={"count": len(rows)})
    return rows


def case_from_run(*, actor: Actor, run: Run, dataset: Dataset, expected=None, critical: bool = True,
                  tags: list | None = None) -> Case:
    """A production run becomes a regression case: its input copied, its id kept as ``sourceRunId``."""
    if dataset.organization_id != run.organization_id:
        raise NotFound(f"Dataset '{dataset.slug}' not found.")
    with transaction.atomic():
        # The run is in hand and in the dataset's organization: no lookup of it again.
        case = _create_case(dataset=dataset, input=dict(run.input or {}), expected=expected, critical=critical,
                            tags=list(tags or []) + ["from-production"], source_run_id=run.id)
        audit.record(organization=dataset.organization, actor=actor, action="dataset.case_from_run",
                     target_type="dataset", target_id=dataset.slug, data={"runId": run.id, "caseId": case.pk})
    return case
