"""Is a deploy healthy? The new revision's runs since the deploy against the
previous revision's last runs before it.

Samples: live traffic only (sources ``api`` and ``canary``), the new side from
the deploy until the next deploy of the agent (or now), the baseline the last
``BASELINE_RUNS`` runs of the previous revision before the deploy.

Verdict, with at least ``MIN_SAMPLE`` runs on each side (else
``insufficient_data``; a first deploy has no baseline and is judged on its own
error rate once it has ``MIN_SAMPLE`` runs):

* ``degraded`` when the error rate rose by ``ERROR_RATE_MARGIN`` (5 points) or
  more, or p95 latency grew past ``LATENCY_FACTOR`` (1.5x) the baseline plus
  ``LATENCY_SLACK_MS`` (100 ms), or cost per run grew past ``COST_FACTOR``
  (1.5x) the baseline; for a first deploy, an error rate of
  ``FIRST_DEPLOY_MAX_ERROR_RATE`` (20%) or more;
* ``healthy`` otherwise.
"""
from __future__ import annotations

import math
from decimal import Decimal

from monitoring.models import Run

from .models import Deployment

MIN_SAMPLE = 20
BASELINE_RUNS = 200
MAX_SAMPLE = 5000
ERROR_RATE_MARGIN = 0.05
LATENCY_FACTOR = 1.5
LATENCY_SLACK_MS = 100
COST_FACTOR = Decimal("1.5")
FIRST_DEPLOY_MAX_ERROR_RATE = 0.20
LIVE_SOURCES = ("api", "canary")

THRESHOLDS = {
    "minSample": MIN_SAMPLE, "baselineRuns": BASELINE_RUNS, "errorRateMargin": ERROR_RATE_MARGIN,
    "latencyFactor": LATENCY_FACTOR, "latencySlackMs": LATENCY_SLACK_MS, "costFactor": str(COST_FACTOR),
    "firstDeployMaxErrorRate": FIRST_DEPLOY_MAX_ERROR_RATE,
}


def percentile(values: list[int], fraction: float) -> float | None:
    """Nearest-rank percentile (the value at rank ceil(fraction * n)); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


def _stats(rows: list[tuple[str, int, Decimal]]) -> dict:
    count = len(rows)
    errors = sum(1 for status, _, _ in rows if status != "ok")
    cost = sum((c for _, _, c in rows), Decimal("0"))
    return {
        "runs": count,
        "errors": errors,
        "errorRate": errors / count if count else None,
        "p95LatencyMs": percentile([latency for _, latency, _ in rows], 0.95),
        "costPerRunUsd": (cost / count).quantize(Decimal("0.00000001")) if count else None,
    }


def _fmt(stats: dict) -> dict:
    return stats | {"costPerRunUsd": None if stats["costPerRunUsd"] is None else format(stats["costPerRunUsd"], "f")}


def deployment_health(deployment: Deployment) -> dict:
    nxt = (Deployment.objects.filter(agent_id=deployment.agent_id, at__gt=deployment.at).order_by("at", "id")
           .values_list("at", flat=True).first())
    current = Run.objects.filter(agent_id=deployment.agent_id, revision_id=deployment.to_revision_id,
                                 source__in=LIVE_SOURCES, created_at__gte=deployment.at)
    if nxt:
        current = current.filter(created_at__lt=nxt)
    new_rows = list(current.order_by("-created_at").values_list("status", "latency_ms", "cost_usd")[:MAX_SAMPLE])
    base_rows = []
    if deployment.from_revision_id:
        base_rows = list(
            Run.objects.filter(agent_id=deployment.agent_id, revision_id=deployment.from_revision_id,
                               source__in=LIVE_SOURCES, created_at__lt=deployment.at)
            .order_by("-created_at").values_list("status", "latency_ms", "cost_usd")[:BASELINE_RUNS]
        )
    new, base = _stats(new_rows), _stats(base_rows)
    verdict, reasons = _verdict(new, base, has_baseline=bool(deployment.from_revision_id))
    return {
        "deploymentId": deployment.pk, "revisionId": deployment.to_revision_id,
        "baselineRevisionId": deployment.from_revision_id, "since": deployment.at, "until": nxt,
        "current": _fmt(new), "baseline": _fmt(base), "verdict": verdict, "reasons": reasons, "thresholds": THRESHOLDS,
    }


def _verdict(new: dict, base: dict, *, has_baseline: bool) -> tuple[str, list[str]]:
    if new["runs"] < MIN_SAMPLE:
        return "insufficient_data", [f"{new['runs']} run(s) since the deploy; {MIN_SAMPLE} needed"]
    if not has_baseline:
        if new["errorRate"] >= FIRST_DEPLOY_MAX_ERROR_RATE:
            return "degraded", [f"error rate {new['errorRate']:.1%} on a first deploy"]
        return "healthy", []
    if base["runs"] < MIN_SAMPLE:
        return "insufficient_data", [f"{base['runs']} baseline run(s); {MIN_SAMPLE} needed"]
    reasons = []
    if new["errorRate"] - base["errorRate"] >= ERROR_RATE_MARGIN:
        reasons.append(f"error rate {base['errorRate']:.1%} -> {new['errorRate']:.1%}")
    if new["p95LatencyMs"] > base["p95LatencyMs"] * LATENCY_FACTOR + LATENCY_SLACK_MS:
        reasons.append(f"p95 latency {base['p95LatencyMs']:.0f} ms -> {new['p95LatencyMs']:.0f} ms")
    if base["costPerRunUsd"] and new["costPerRunUsd"] > base["costPerRunUsd"] * COST_FACTOR:
        reasons.append(f"cost per run ${base['costPerRunUsd']} -> ${new['costPerRunUsd']}")
    return ("degraded" if reasons else "healthy"), reasons
