"""The engine is pure Python: no Django or ORM import anywhere in it."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ENGINE = pathlib.Path(__file__).resolve().parents[2] / "agents" / "engine"
REPO = ENGINE.parents[1]


def test_engine_imports_without_django_in_a_fresh_interpreter():
    modules = sorted(f"agents.engine.{path.relative_to(ENGINE).with_suffix('').as_posix().replace('/', '.')}"
                     for path in ENGINE.rglob("*.py") if path.name != "__init__.py")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "assert not leaked, leaked\n"
        "print(len(sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert completed.returncode == 0, completed.stderr
    assert len(modules) >= 15


def test_no_engine_source_imports_django():
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names
                          if name.split(".")[0] in {"django", "rest_framework", "guardian", "celery"}]
    assert offenders == []
