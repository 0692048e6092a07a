"""Evaluations endpoints: datasets, cases, runs -> cases, evaluations, compare, schedules."""
from __future__ import annotations

from django.db.models import Count
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from fruxon.api.base import Access, OrgScopedAPIView, OrgScopedGenericAPIView, OrgScopedViewSet
from fruxon.api.serializers import validated
from fruxon.errors import InvalidRequest, NotFound
from monitoring.models import Run
from orgs.actor import Actor
from orgs.roles import EDITOR, VIEWER

from ..models import Case, Dataset, EvaluationRun, EvaluationSchedule
from ..services import compare as comparing
from ..services import datasets, runs, scheduled
from . import serializers as s

DATASET_ACCESS = {"GET": Access(VIEWER, "datasets:read"), "POST": Access(EDITOR, "datasets:write"),
                  "PATCH": Access(EDITOR, "datasets:write"), "DELETE": Access(EDITOR, "datasets:write")}


def _actor(request) -> Actor:
    return Actor.from_request(request)


class DatasetViewSet(OrgScopedViewSet):
    queryset = Dataset.objects.all()
    serializer_class = s.DatasetSerializer
    lookup_field = "slug"
    lookup_url_kwarg = "dataset"
    ordering = "slug"
    access = DATASET_ACCESS

    def refine_queryset(self, queryset):
        return queryset.annotate(case_count=Count("cases"))

    def list(self, request, tenant):
        return self.paginated_response()

    @extend_schema(request=s.DatasetCreate, responses={201: s.DatasetSerializer})
    def create(self, request, tenant):
        data = validated(s.DatasetCreate, request.data)
        dataset = datasets.create_dataset(actor=_actor(request), organization=self.organization, **data)
        return Response(self.get_serializer(dataset).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, tenant, dataset):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=s.DatasetPatch, responses=s.DatasetSerializer)
    def partial_update(self, request, tenant, dataset):
        changes = dict(validated(s.DatasetPatch, request.data))
        updated = datasets.update_dataset(actor=_actor(request), dataset=self.object, changes=changes)
        return Response(self.get_serializer(updated).data)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="the dataset gates an agent's deploys")})
    def destroy(self, request, tenant, dataset):
        datasets.delete_dataset(actor=_actor(request), dataset=self.object)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CaseViewSet(OrgScopedViewSet):
    queryset = Case.objects.all()
    serializer_class = s.CaseSerializer
    lookup_url_kwarg = "case"
    lookup_field = "pk"
    ordering = "id"
    access = DATASET_ACCESS

    def _dataset(self) -> Dataset:
        return datasets.get_dataset(organization=self.organization, slug=self.kwargs["dataset"])

    def refine_queryset(self, queryset):
        return queryset.filter(dataset__slug=self.kwargs["dataset"])

    def list(self, request, tenant, dataset):
        self._dataset()
        return self.paginated_response()

    @extend_schema(request=s.CaseWrite, responses={201: s.CaseSerializer},
                   description='One case, or many at once as {"cases": [...]} (all or nothing; answers {"results": [...]}).')
    def create(self, request, tenant, dataset):
        target = self._dataset()
        if isinstance(request.data, dict) and "cases" in request.data:
            data = validated(s.CasesBulk, request.data)
            rows = datasets.add_cases_bulk(actor=_actor(request), dataset=target, cases=data["cases"],
                                           visible_agents=self.keys_agents())
            return Response({"results": self.get_serializer(rows, many=True).data}, status=status.HTTP_201_CREATED)
        data = validated(s.CaseWrite, request.data)
        case = datasets.add_case(actor=_actor(request), dataset=target, visible_agents=self.keys_agents(), **data)
        return Response(self.get_serializer(case).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, tenant, dataset, case):
        return Response(self.get_serializer(self.object).data)

    @extend_schema(request=s.CasePatch, responses=s.CaseSerializer)
    def partial_update(self, request, tenant, dataset, case):
        changes = dict(validated(s.CasePatch, request.data))
        case = datasets.update_case(actor=_actor(request), case=self.object, changes=changes,
                                    visible_agents=self.keys_agents())
        return Response(self.get_serializer(case).data)

    @extend_schema(responses={204: None, 409: OpenApiResponse(description="an unfinished evaluation includes the case")})
    def destroy(self, request, tenant, dataset, case):
        datasets.delete_case(actor=_actor(request), case=self.object)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AddToDatasetView(OrgScopedGenericAPIView):
    """A (failing) production run becomes a regression case."""

    queryset = Run.objects.all()
    lookup_url_kwarg = "run"
    lookup_field = "pk"
    access = {"POST": Access(EDITOR, "datasets:write")}
    agent_from_object = "agent"  # the run's agent: per-agent grants apply

    def refine_queryset(self, queryset):
        return self.only_keys_agents(queryset)  # a key limited to some agents sees only their runs

    @extend_schema(request=s.AddToDataset, responses={201: s.CaseSerializer})
    def post(self, request, tenant, run):
        found = self.object
        data = validated(s.AddToDataset, request.data)
        dataset = datasets.get_dataset(organization=self.organization, slug=data["dataset"])
        case = datasets.case_from_run(actor=_actor(request), run=found, dataset=dataset, expected=data.get("expected"),
                                      critical=data["critical"], tags=data["tags"])
        return Response(s.CaseSerializer(case).data, status=status.HTTP_201_CREATED)


class EvaluationViewSet(OrgScopedViewSet):
    queryset = EvaluationRun.objects.all()
    serializer_class = s.EvaluationSerializer
    lookup_url_kwarg = "evaluation"
    lookup_field = "pk"
    ordering = ("-created_at", "-id")
    access = {"GET": Access(VIEWER, "evaluations:read"), "POST": Access(EDITOR, "evaluations:write")}
    # Per-agent grants apply: creating names the agent in the body; the rest act on the evaluation's agent.
    agent_from_body = {"POST": "agent"}
    agent_from_object = "agent"

    def refine_queryset(self, queryset):
        queryset = queryset.select_related("agent", "dataset").annotate(done_count=Count("results"))
        queryset = self.only_keys_agents(queryset)  # a key limited to some agents sees only their evaluations
        params = self.request.query_params
        for param, field in (("agent", "agent__slug"), ("revisionId", "revision_id"), ("dataset", "dataset__slug"),
                             ("status", "status")):
            if params.get(param):
                queryset = queryset.filter(**{field: params[param]})
        return queryset

    @extend_schema(parameters=[OpenApiParameter(p, str) for p in ("agent", "revisionId", "dataset", "status")])
    def list(self, request, tenant):
        return self.paginated_response()

    @extend_schema(request=s.EvaluationCreate, responses={
        202: s.EvaluationSerializer,
        400: OpenApiResponse(description="invalid_request; empty_dataset: the dataset has no cases")},
                   description="Queues a Celery evaluation; poll GET /evaluations/{id} for progress and results.")
    def create(self, request, tenant):
        data = validated(s.EvaluationCreate, request.data)
        agent = self.agent  # the body's agent, resolved (and its grants applied) by the base view
        dataset = datasets.get_dataset(organization=self.organization, slug=data["dataset"])
        evaluation = runs.start(actor=_actor(request), agent=agent, revision_id=data["revisionId"], dataset=dataset)
        evaluation = self.get_queryset().get(pk=evaluation.pk)
        return Response(self.get_serializer(evaluation).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=s.EvaluationDetail)
    def retrieve(self, request, tenant, evaluation):
        return Response(s.EvaluationDetail(self.object).data)

    @extend_schema(request=None, responses={200: s.EvaluationSerializer, 409: OpenApiResponse(description="finished")})
    def cancel(self, request, tenant, evaluation):
        runs.cancel(actor=_actor(request), evaluation=self.object)
        return Response(self.get_serializer(self.get_queryset().get(pk=self.object.pk)).data)

    @extend_schema(
        parameters=[OpenApiParameter(
            "baseline", str, description="an evaluation id, or 'deployed' (default): the latest completed evaluation "
            "of the deployed revision on the same dataset. When there is none, a caller with write rights on "
            "evaluations (editor, or a key with evaluations:write) starts it (baselineStarted: true); for anyone "
            "else nothing is started and the answer says so (baselineMissing: true). Either way the verdict is "
            "'pending' until the baseline completes.")],
        responses={200: s.CompareResponse, 400: OpenApiResponse(
            description="not_deployed: nothing to compare with; invalid_baseline: the baseline evaluation ran on "
                        "another dataset")})
    def compare(self, request, tenant, evaluation):
        target = self.object
        wanted = request.query_params.get("baseline", "deployed")
        if wanted == "deployed":
            # Reading a comparison must not spend the agent's budget for a reader: only a caller who
            # could POST /evaluations may trigger the missing baseline.
            return Response(comparing.compare_with_deployed(actor=_actor(request), evaluation=target,
                                                            may_start=self.permits("POST")))
        baseline = self.get_queryset().filter(pk=wanted).first()
        if baseline is None:
            raise NotFound(f"Evaluation '{wanted}' not found.")
        if baseline.dataset_id != target.dataset_id:  # cases are matched by id: only one dataset compares
            raise InvalidRequest(f"Evaluation '{wanted}' ran on dataset '{baseline.dataset.slug}', not "
                                 f"'{target.dataset.slug}'; a baseline must be an evaluation of the same dataset.",
                                 code="invalid_baseline", details={"fields": {"baseline": ["Another dataset."]}})
        body = comparing.compare(target, baseline, tolerance=target.agent.gate_tolerance)
        return Response(body | {"baselineStarted": False, "baselineMissing": False})


class EvaluationScheduleView(OrgScopedAPIView):
    access = {"GET": Access(EDITOR, "evaluations:read"), "PUT": Access(EDITOR, "evaluations:write")}

    def _body(self, schedule: EvaluationSchedule) -> dict:
        return {"everyHours": schedule.every_hours, "enabled": schedule.enabled, "nextRunAt": schedule.next_run_at,
                "alertWebhook": schedule.alert_webhook, "alertEmails": schedule.alert_emails,
                "dataset": getattr(self.agent.gating_dataset, "slug", None),
                "lastEvaluationId": schedule.last_evaluation_id}

    @extend_schema(responses={200: s.ScheduleSerializer, 404: OpenApiResponse(description="no schedule")})
    def get(self, request, tenant, agent):
        schedule = EvaluationSchedule.objects.filter(agent=self.agent).first()
        if schedule is None:
            raise NotFound(f"Agent '{self.agent.slug}' has no evaluation schedule.")
        return Response(self._body(schedule))

    @extend_schema(request=s.ScheduleSerializer, responses=s.ScheduleSerializer)
    def put(self, request, tenant, agent):
        data = validated(s.ScheduleSerializer, request.data)
        schedule = scheduled.set_schedule(actor=_actor(request), agent=self.agent, every_hours=data["everyHours"],
                                          enabled=data["enabled"], alert_webhook=data["alertWebhook"],
                                          alert_emails=data["alertEmails"])
        return Response(self._body(schedule))
