"""Structured diff between two revision specs.

Lists with identities are keyed before comparing (steps by ``name``, tools by
``name``, sub-agents by ``agent``), so reordering is not a change and paths
read like ``steps.answer.model.temperature``. The result has:

* ``changes``: ``[{"path", "change": "added|removed|changed", "before", "after"}]``
* ``summary``: steps, tools and sub-agents added/removed/changed (a tool's description or
  parameters, a sub-agent's pin), secrets and integrations referenced added/removed, models changed
* ``promptDiff``: a unified diff of every prompt text (system and user prompts, output)
* ``secretDestinations``: ``{"before": [...], "after": [...]}``, every secret each spec sends
  from a credential position, with the position's path and the host it goes to
"""
from __future__ import annotations

import difflib
from typing import Any

from . import engine
from .engine import destinations

_MISSING = object()


def _keyed(spec: dict) -> dict:
    out = dict(spec)
    steps = {}
    for step in spec.get("steps", []):
        step = dict(step)
        step["tools"] = {t.get("name"): t for t in step.get("tools", [])}
        step["subAgents"] = {s.get("agent"): s for s in step.get("subAgents", [])}
        steps[step.get("name")] = step
    out["steps"] = steps
    return out


def _walk(path: str, before: Any, after: Any, out: list[dict]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            _walk(f"{path}.{key}" if path else str(key), before.get(key, _MISSING), after.get(key, _MISSING), out)
        return
    if before == after:
        return
    if before is _MISSING:
        out.append({"path": path, "change": "added", "before": None, "after": after})
    elif after is _MISSING:
        out.append({"path": path, "change": "removed", "before": before, "after": None})
    else:
        out.append({"path": path, "change": "changed", "before": before, "after": after})


def _prompt_texts(keyed: dict) -> dict[str, str]:
    texts = {}
    for name, step in keyed["steps"].items():
        for field in ("systemPrompt", "prompt"):
            if isinstance(step.get(field), str):
                texts[f"steps.{name}.{field}"] = step[field]
    if isinstance(keyed.get("output"), str):
        texts["output"] = keyed["output"]
    return texts


def _set_delta(before: set, after: set) -> dict:
    return {"added": sorted(after - before), "removed": sorted(before - after)}


def diff_specs(before: dict, after: dict) -> dict:
    kb, ka = _keyed(before), _keyed(after)
    changes: list[dict] = []
    _walk("", kb, ka, changes)

    steps_b, steps_a = set(kb["steps"]), set(ka["steps"])
    changed_steps = sorted(n for n in steps_b & steps_a if kb["steps"][n] != ka["steps"][n])
    tools = lambda k: {f"{s}.{t}" for s, step in k["steps"].items() for t in step["tools"]}  # noqa: E731
    changed_tools = sorted(f"{n}.{t}" for n in steps_b & steps_a
                           for t in set(kb["steps"][n]["tools"]) & set(ka["steps"][n]["tools"])
                           if kb["steps"][n]["tools"][t] != ka["steps"][n]["tools"][t])
    sub = lambda k, n: k["steps"][n]["subAgents"]  # noqa: E731
    changed_subagents = sorted({a for n in steps_b & steps_a for a in set(sub(kb, n)) & set(sub(ka, n))
                                if sub(kb, n)[a] != sub(ka, n)[a]})
    models_changed = [
        {"step": n, "before": kb["steps"][n].get("model"), "after": ka["steps"][n].get("model")}
        for n in sorted(steps_b & steps_a) if kb["steps"][n].get("model") != ka["steps"][n].get("model")
    ]
    summary = {
        "steps": {**_set_delta(steps_b, steps_a), "changed": changed_steps},
        "tools": {**_set_delta(tools(kb), tools(ka)), "changed": changed_tools},
        "subAgents": {**_set_delta({r.agent for r in engine.referenced_subagents(before)},
                                   {r.agent for r in engine.referenced_subagents(after)}),
                      "changed": changed_subagents},
        "secrets": _set_delta(engine.referenced_secrets(before), engine.referenced_secrets(after)),
        "integrations": _set_delta(engine.referenced_integrations(before), engine.referenced_integrations(after)),
        "modelsChanged": models_changed,
        "changeCount": len(changes),
    }

    tb, ta = _prompt_texts(kb), _prompt_texts(ka)
    lines: list[str] = []
    for key in sorted(set(tb) | set(ta)):
        old, new = tb.get(key, ""), ta.get(key, "")
        if old != new:
            lines.extend(difflib.unified_diff(old.splitlines(), new.splitlines(), f"a/{key}", f"b/{key}", lineterm=""))
    return {"changes": changes, "summary": summary, "promptDiff": "\n".join(lines),
            "secretDestinations": {"before": _destinations(before), "after": _destinations(after)}}


def _destinations(spec: dict) -> list[dict]:
    """Each secret use of a spec: ``{"secret", "path", "host"}`` (``host`` None when not fixed in the spec)."""
    return [use.to_dict() for use in destinations.secret_destinations(spec)]
