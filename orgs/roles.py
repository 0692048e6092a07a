"""Roles and API-key scopes: the vocabulary every permission check speaks.

Org roles are ordered ``viewer < editor < owner``. Per-agent grants add
``admin`` (manage that agent's collaborators); on an agent, an ``admin`` grant
ranks between editor and owner.
"""
from __future__ import annotations

VIEWER, EDITOR, ADMIN, OWNER = "viewer", "editor", "admin", "owner"
ORG_ROLES = (OWNER, EDITOR, VIEWER)
ORG_ROLE_CHOICES = [(OWNER, "Owner"), (EDITOR, "Editor"), (VIEWER, "Viewer")]
RANK = {VIEWER: 1, EDITOR: 2, ADMIN: 3, OWNER: 4}


def role_at_least(role: str | None, required: str) -> bool:
    return role is not None and RANK[role] >= RANK[required]


RESOURCES = (
    "agents", "revisions", "runs", "datasets", "evaluations", "integrations",
    "secrets", "members", "keys", "budgets", "org",
)
ALL_SCOPES: tuple[str, ...] = tuple(
    [f"{r}:{a}" for r in RESOURCES for a in ("read", "write")] + ["agents:execute", "revisions:deploy"]
)
PRESETS: dict[str, tuple[str, ...]] = {
    "runner": ("agents:execute",),
    "builder": tuple(
        [f"{r}:{a}" for r in ("agents", "revisions", "datasets", "evaluations", "integrations") for a in ("read", "write")]
        + ["runs:read"]
    ),
    "readonly": tuple(s for s in ALL_SCOPES if s.endswith(":read")),
    "admin": ALL_SCOPES,
}


def expand_scopes(scopes: list[str] | None, preset: str | None) -> list[str]:
    """Scopes a key is created with: the preset's expansion plus explicit scopes, sorted."""
    out = set(scopes or [])
    if preset:
        out.update(PRESETS[preset])
    return sorted(out)
