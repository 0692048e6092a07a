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


# --- what each role amounts to in scopes (no one grants more than they hold) ---------------
# A role is compared with an API key through these sets: a key may give a role (membership,
# invitation or per-agent grant) only when it holds every scope of the role, and, for an org
# role, is limited to no agents (an org role reaches every agent). The sets follow the access
# maps of the API views (tests/test_security_keys.py checks that they agree).
_VIEWER_SCOPES = frozenset({
    "agents:read", "revisions:read", "runs:read", "datasets:read", "evaluations:read", "budgets:read", "org:read",
})
_EDITOR_SCOPES = _VIEWER_SCOPES | {
    "agents:write", "agents:execute", "revisions:write", "revisions:deploy", "runs:write", "datasets:write",
    "evaluations:write", "integrations:read", "secrets:read",
}
ROLE_SCOPES: dict[str, frozenset[str]] = {
    VIEWER: _VIEWER_SCOPES,
    EDITOR: frozenset(_EDITOR_SCOPES),
    # An agent admin is an editor of that agent who also manages its collaborators.
    ADMIN: frozenset(_EDITOR_SCOPES | {"members:read", "members:write"}),
    OWNER: frozenset(ALL_SCOPES),
}
