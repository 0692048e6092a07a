"""Metrics an operator scrapes (Prometheus) and runs exported as traces (OTLP, GenAI conventions).

Metrics (``GET /metrics``, served by ``fruxon.operations``) are recorded only while
``FRUXON_METRICS_TOKEN`` is set. Under several worker processes they are aggregated
with prometheus_client's multiprocess mode: every process writes its values to
``PROMETHEUS_MULTIPROC_DIR`` (``gunicorn.conf.py`` creates and cleans it at start
and marks dead workers), and a scrape, whichever worker answers it, sums them all.
The variable must be set before this module is imported (prometheus_client picks
its value store at import).

Label cardinality (docs/observability.md): ``org`` and ``agent`` are slugs,
``revision`` a revision id; every series belongs to one org's agent, so the number
of series grows with the agents (and, for ``fruxon_executions_total``, their
executed revisions) an org has, times the small fixed sets of ``status`` (5),
``source`` (5), token ``kind`` (4) and refusal ``reason`` (2).

Recording is on the execute hot path, so it must stay cheap: no query (slugs come
from the agent the request already holds, remembered per process), a few counter
increments, and for tracing only a queue hand-off: the spans are built and
exported by a background thread (``_Exporter``), never by the request.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

EXECUTIONS = Counter("fruxon_executions", "Runs recorded, by agent, revision, status and source.",
                     ["org", "agent", "revision", "status", "source"], registry=REGISTRY)
DURATION = Histogram("fruxon_execute_duration_seconds", "A run's wall time (engine), by agent and source.",
                     ["org", "agent", "source"], registry=REGISTRY,
                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
OVERHEAD = Histogram("fruxon_execute_overhead_seconds",
                     "Server time of an execute request minus the time spent waiting on model providers "
                     "(X-Fruxon-Overhead-Ms), by agent.",
                     ["org", "agent"], registry=REGISTRY,
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
TOKENS = Counter("fruxon_tokens", "Model tokens of recorded runs, by agent and kind (input, output, cached, reasoning).",
                 ["org", "agent", "kind"], registry=REGISTRY)
COST = Counter("fruxon_cost_usd", "Cost of recorded runs in USD, by agent.", ["org", "agent"], registry=REGISTRY)
LEDGER_REFUSALS = Counter("fruxon_ledger_refusals",
                          "Model calls the budget ledger refused: budget_exceeded (the cap) or ledger_unavailable "
                          "(fail closed), by agent.", ["org", "agent", "reason"], registry=REGISTRY)
RATE_LIMITED = Counter("fruxon_rate_limited", "Requests refused with 429 rate_limited, by limit scope and org.",
                       ["scope", "org"], registry=REGISTRY)
TRACES_DROPPED = Counter("fruxon_otel_dropped_runs", "Runs not exported over OTLP because the export queue was full.",
                         registry=REGISTRY)


def metrics_enabled() -> bool:
    return bool(settings.FRUXON_METRICS_TOKEN)


# --- names for labels, without a query on the hot path ------------------------------------------

_org_slugs: dict[int, str] = {}
_agent_slugs: dict[int, str] = {}


def remember_agent(agent) -> None:
    """Note ``agent``'s slug (and its org's when loaded with it) for the labels of its runs. No query."""
    _agent_slugs[agent.pk] = agent.slug
    org = agent._state.fields_cache.get("organization")
    if org is not None:
        _org_slugs[org.pk] = org.slug


def remember_org(organization) -> None:
    _org_slugs[organization.pk] = organization.slug


def _names(organization_id: int, agent_id: int) -> tuple[str, str]:
    """The org and agent slugs; read once per process for ids not remembered (paths other than execute)."""
    org, agent = _org_slugs.get(organization_id), _agent_slugs.get(agent_id)
    if org is None or agent is None:
        from agents.models import Agent

        row = Agent.objects.filter(pk=agent_id).values_list("slug", "organization__slug").first()
        agent, org = row if row else (str(agent_id), str(organization_id))
        _agent_slugs[agent_id], _org_slugs[organization_id] = agent, org
    return org, agent


# --- recording -----------------------------------------------------------------------------------

def run_recorded(run, result) -> None:
    """Count a recorded run and queue it for OTLP export, once its transaction commits.

    Never raises: observing a run must not fail it.
    """
    metrics, tracing = metrics_enabled(), _exporter.enabled
    if not (metrics or tracing):
        return
    if connection.in_atomic_block:  # counted when (if) the caller's transaction commits
        transaction.on_commit(lambda: _observe(run, result, metrics, tracing))
    else:  # committed already (the execute path); on_commit would also ask the connection its autocommit
        _observe(run, result, metrics, tracing)


# The labelled children of one (org, agent, revision, status, source), looked up once per process:
# ``labels()`` validates and locks on every call, a few microseconds each.
_children: dict[tuple, tuple] = {}


def _series(org: str, agent: str, revision: str, status: str, source: str) -> tuple:
    key = (org, agent, revision, status, source)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (
            EXECUTIONS.labels(org, agent, revision, status, source), DURATION.labels(org, agent, source),
            TOKENS.labels(org, agent, "input"), TOKENS.labels(org, agent, "output"),
            TOKENS.labels(org, agent, "cached"), TOKENS.labels(org, agent, "reasoning"), COST.labels(org, agent))
    return found


def _observe(run, result, metrics: bool, tracing: bool) -> None:
    try:
        org, agent = _names(run.organization_id, run.agent_id)
        if metrics:
            executions, duration, inputs, outputs, cached, reasoning, cost = _series(
                org, agent, run.revision_id, run.status, run.source)
            executions.inc()
            duration.observe(run.latency_ms / 1000.0)
            for child, value in ((inputs, run.input_tokens), (outputs, run.output_tokens),
                                 (cached, run.cached_input_tokens), (reasoning, run.reasoning_tokens)):
                if value:
                    child.inc(value)
            if run.cost_usd:
                cost.inc(float(run.cost_usd))
        if tracing:
            _exporter.submit(run, result, org, agent)
    except Exception:
        logger.exception("could not observe run %s", getattr(run, "id", "?"))


def execute_overhead(*, organization, agent, seconds: float) -> None:
    """Observe an execute answer's overhead (server time minus model-provider wait)."""
    if metrics_enabled():
        key = (organization.slug, agent.slug)
        child = _overhead_children.get(key)
        if child is None:
            child = _overhead_children[key] = OVERHEAD.labels(*key)
        child.observe(max(0.0, seconds))


_overhead_children: dict[tuple, object] = {}


def ledger_refused(*, organization_id: int, agent_id: int, reason: str) -> None:
    """Count a model call the budget ledger refused (``budget_exceeded`` or ``ledger_unavailable``)."""
    if not metrics_enabled():
        return
    try:
        LEDGER_REFUSALS.labels(*_names(organization_id, agent_id), reason).inc()
    except Exception:
        logger.exception("could not count a ledger refusal")


def rate_limited(scope: str, org: str = "") -> None:
    """Count one request refused with 429 ``rate_limited``.

    ``scope`` names the limit that refused it, from a small fixed set (e.g.
    ``org:requests``, ``key:executions``, ``key:tokens``); ``org`` is the org's slug.
    Never an API key id or a client address here: that would make the series unbounded.
    """
    if metrics_enabled():
        RATE_LIMITED.labels(scope, org).inc()


# --- scrape --------------------------------------------------------------------------------------

_QUEUE_CLIENTS: dict[str, object] = {}


def celery_queues() -> list[str]:
    """The queues the project routes tasks to (the default queue and every routed one)."""
    names = [settings.CELERY_TASK_DEFAULT_QUEUE]
    for route in (settings.CELERY_TASK_ROUTES or {}).values():
        name = route.get("queue") if isinstance(route, dict) else None
        if name and name not in names:
            names.append(name)
    return names


class QueueDepthCollector:
    """``fruxon_celery_queue_depth{queue}`` read from the Redis broker at scrape time (1 s timeout).

    Counts the messages waiting in each queue (all of kombu's priority lists), not
    those a worker has taken. ``fruxon_celery_broker_up`` is 0 when the broker did not answer.
    """

    def collect(self):
        url = settings.CELERY_BROKER_URL or ""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return  # the in-memory broker (no REDIS_URL): tasks run eagerly, no queue to measure
        up = GaugeMetricFamily("fruxon_celery_broker_up", "1 when the Celery broker answered the scrape's queue query.")
        depth = GaugeMetricFamily("fruxon_celery_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])
        queues = celery_queues()
        try:
            client = _QUEUE_CLIENTS.get(url)
            if client is None:
                import redis

                client = _QUEUE_CLIENTS[url] = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            pipe = client.pipeline(transaction=False)
            for name in queues:
                # kombu's Redis transport keeps priorities 0, 3, 6, 9 in separate lists (0 under the plain name).
                for key in (name, *(f"{name}\x06\x16{p}" for p in (3, 6, 9))):
                    pipe.llen(key)
            lengths = pipe.execute()
        except Exception as exc:
            logger.warning("queue depth: the Celery broker did not answer (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for index, name in enumerate(queues):
            depth.add_metric([name], sum(lengths[index * 4:index * 4 + 4]))
        yield up
        yield depth


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> tuple[bytes, str]:
    """The metrics of every worker process (or of this one, without a multiprocess directory)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Own())
    registry.register(QueueDepthCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Own:
    def collect(self):
        yield from REGISTRY.collect()


# --- OTLP export of runs -------------------------------------------------------------------------

def capture_content() -> bool:
    """Whether exported spans carry prompts, completions, tool arguments and results (opt-in)."""
    value = getattr(settings, "FRUXON_OTEL_CAPTURE_CONTENT", None)
    if value is None:
        value = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _ns(moment) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000


def _end_ns(started, latency_ms: float) -> int:
    return _ns(started + timedelta(milliseconds=max(0.0, float(latency_ms or 0))))


def _content(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


_OPERATION = {"llm": "chat", "tool": "execute_tool", "subAgent": "invoke_agent"}


def span_attributes(record, capture: bool) -> tuple[str, dict]:
    """The OTel span name and attributes of one recorded span (GenAI semantic conventions).

    Only counts, names, models and ids by default; the trace's contents (messages,
    tool arguments and results, outputs) only with ``capture``. Spans hold no secret
    value either way (the engine redacts them before a run is returned).
    """
    kind = record.kind
    attributes = {"fruxon.span.kind": kind, "fruxon.span.id": record.id, "fruxon.span.status": record.status}
    if record.error:
        attributes["error.type"] = str(record.error.get("code") or "error")
    operation = _OPERATION.get(kind)
    if operation:
        attributes["gen_ai.operation.name"] = operation
    if kind == "llm":
        name = f"chat {record.model or record.name}"
        extra = record.attributes or {}
        attributes |= {
            "gen_ai.provider.name": record.provider or "", "gen_ai.system": record.provider or "",
            "gen_ai.request.model": record.model or record.name,
            "gen_ai.usage.input_tokens": record.input_tokens, "gen_ai.usage.output_tokens": record.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": record.cached_input_tokens,
            "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
            "fruxon.cost_usd": float(record.cost_usd or 0),
        }
        if isinstance(extra.get("maxTokens"), int):
            attributes["gen_ai.request.max_tokens"] = extra["maxTokens"]
        if isinstance(extra.get("temperature"), (int, float)):
            attributes["gen_ai.request.temperature"] = float(extra["temperature"])
        host = urlsplit(extra["baseUrl"]).hostname if isinstance(extra.get("baseUrl"), str) else None
        if host:
            attributes["server.address"] = host
        if capture:
            if isinstance(record.input, dict) and "messages" in record.input:
                attributes["gen_ai.input.messages"] = _content(record.input["messages"])
            if record.output is not None:
                attributes["gen_ai.output.messages"] = _content(record.output)
    elif kind == "tool":
        name = f"execute_tool {record.name}"
        attributes |= {"gen_ai.tool.name": record.name, "gen_ai.tool.type": "extension"}
        integration = (record.attributes or {}).get("integration")
        if isinstance(integration, str):
            attributes["fruxon.integration"] = integration
        if capture:
            attributes["gen_ai.tool.call.arguments"] = _content(record.input)
            attributes["gen_ai.tool.call.result"] = _content(record.output)
    elif kind == "subAgent":
        name = f"invoke_agent {record.name}"
        attributes["gen_ai.agent.name"] = record.name
        revision = (record.attributes or {}).get("revisionId")
        if isinstance(revision, str):
            attributes["fruxon.revision.id"] = revision
        if capture:
            attributes["fruxon.input"] = _content(record.input)
            attributes["fruxon.output"] = _content(record.output)
    else:
        name = f"step {record.name}"
        attributes["fruxon.step.name"] = record.name
    return name, attributes


class _Exporter:
    """Builds and exports runs' traces on a background thread (one per process, started on first use).

    The request only puts ``(run, result, org, agent)`` on a bounded queue; when it is
    full the run is not exported (``fruxon_otel_dropped_runs_total``) rather than
    slowing executes down. Spans go out through a ``BatchSpanProcessor`` to the OTLP
    HTTP exporter configured by the standard ``OTEL_EXPORTER_OTLP_*`` variables.
    """

    def __init__(self):
        self.provider = None
        self._configured = False
        self._queue: queue.Queue | None = None
        self._pid = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        if not self._configured:
            self._configure_from_environment()
        return self.provider is not None

    def _configure_from_environment(self) -> None:
        with self._lock:
            if self._configured:
                return
            if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                self._install(BatchSpanProcessor(OTLPSpanExporter()))
            self._configured = True

    def configure(self, processor) -> None:
        """Export through ``processor`` instead (tests: a ``SimpleSpanProcessor`` on an in-memory exporter)."""
        with self._lock:
            self.flush()
            if processor is None:
                self.provider = None
            else:
                self._install(processor)
            self._configured = True

    def _install(self, processor) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "fruxon"}
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(processor)
        self.provider = provider
        self.tracer = provider.get_tracer("fruxon")

    def submit(self, run, result, org: str, agent: str) -> None:
        if self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait((run, result, org, agent))
        except queue.Full:
            if metrics_enabled():
                TRACES_DROPPED.inc()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.Queue(maxsize=settings.FRUXON_OTEL_QUEUE_SIZE)
            threading.Thread(target=self._work, args=(self._queue,), name="fruxon-otlp", daemon=True).start()
            self._pid = os.getpid()
            atexit.register(self.flush, 5.0)

    def _work(self, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            try:
                if self.provider is not None:
                    export_run(self.tracer, *job)
            except Exception:
                logger.exception("could not export a run's trace")
            finally:
                jobs.task_done()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued run has been handed to the exporter, then flush it."""
        if self._queue is not None and self._pid == os.getpid():
            done = threading.Event()

            def wait():
                self._queue.join()
                done.set()

            threading.Thread(target=wait, daemon=True).start()
            done.wait(timeout)
        if self.provider is not None:
            self.provider.force_flush(int(timeout * 1000))


_exporter = _Exporter()
configure_tracing = _exporter.configure
flush_traces = _exporter.flush


def export_run(tracer, run, result, org: str, agent: str) -> None:
    """One run as one trace: an ``invoke_agent`` span with its recorded spans below it, at their real times."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    capture = capture_content()
    root_attributes = {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "gen_ai.agent.id": str(run.agent_id),
        "fruxon.run.id": run.id, "fruxon.org": org, "fruxon.revision.id": run.revision_id,
        "fruxon.run.status": run.status, "fruxon.run.source": run.source, "fruxon.cost_usd": float(run.cost_usd or 0),
        "gen_ai.usage.input_tokens": run.input_tokens, "gen_ai.usage.output_tokens": run.output_tokens,
    }
    if run.conversation_id:
        root_attributes["gen_ai.conversation.id"] = str(run.conversation_id)
    if result.error:
        root_attributes["error.type"] = str(result.error.get("code") or run.status)
    if capture:
        root_attributes["fruxon.input"] = _content(run.input)
        if run.output is not None:
            root_attributes["fruxon.output"] = _content(run.output)
    root = tracer.start_span(f"invoke_agent {agent}", context=otel_context.Context(), kind=SpanKind.INTERNAL,
                             attributes=root_attributes, start_time=_ns(result.started_at))
    if run.status != "ok":
        root.set_status(Status(StatusCode.ERROR, run.status))
    opened = {}
    for record in result.spans:  # start order: a parent always comes before its children
        parent = opened.get(record.parent_id, root)
        name, attributes = span_attributes(record, capture)
        span = tracer.start_span(name, context=trace.set_span_in_context(parent),
                                 kind=SpanKind.CLIENT if record.kind == "llm" else SpanKind.INTERNAL,
                                 attributes=attributes, start_time=_ns(record.started_at))
        if record.status not in ("ok", "skipped"):
            span.set_status(Status(StatusCode.ERROR, str((record.error or {}).get("code") or record.status)))
        opened[record.id] = span
    for record in reversed(result.spans):
        opened[record.id].end(end_time=_end_ns(record.started_at, record.latency_ms))
    root.end(end_time=_end_ns(result.started_at, result.latency_ms))
