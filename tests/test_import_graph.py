"""The packages depend one way: every import between top-level packages is an arrow the table allows.

The table is the one in docs/architecture.md (and README, "How it is built"). Every import
statement counts, wherever it is (inside functions, under ``TYPE_CHECKING``), because a
lazy import is still a dependency. Relations by name (``"workers.Worker"``), URL includes
and ``INSTALLED_APPS`` strings are not imports. ``tests/`` and ``benchmarks/`` are not
checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_APPS = {"core", "accounts", "jobs", "workers", "notifications", "telegram_app", "ops"}

# package → the packages of this repository it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "statsbot_site": {*SERVER_APPS, "tg_sandbox", "tg_rules"},  # wiring: everything
    "manage": {"statsbot_site"},
    "core": set(),  # Django only
    "accounts": {"core"},
    "jobs": {"core", "accounts"},
    "workers": {"core", "accounts", "jobs"},
    "notifications": {"core", "accounts", "tg_rules"},
    "telegram_app": {"core", "accounts", "jobs", "workers", "notifications", "tg_sandbox", "tg_rules"},
    "ops": {"core", "accounts", "jobs", "workers", "notifications"},  # reads the others' rows
    "tg_sandbox": {"tg_rules"},  # nothing of the server
    "tg_rules": set(),  # standard library only
    "worker_script": set(),
    "client": set(),
    "examples": {"client"},
}
NOT_CHECKED = {"tests", "benchmarks", "docs"}
# Import names that are not the folder they live in.
MODULE_HOMES = {"experiment_bot": "client", "statsbot_worker": "worker_script"}


def packages() -> set[str]:
    """Every top-level folder holding Python files, and every top-level module."""
    found = {path.stem for path in ROOT.glob("*.py")}
    for folder in ROOT.iterdir():
        if folder.is_dir() and not folder.name.startswith(".") and any(folder.rglob("*.py")):
            found.add(folder.name)
    return found - NOT_CHECKED


def home(module: str) -> str:
    top = module.split(".")[0]
    return MODULE_HOMES.get(top, top)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def python_files(package: str) -> list[Path]:
    single = ROOT / f"{package}.py"
    if single.exists():
        return [single]
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def arrows(package: str) -> Iterator[tuple[str, str]]:
    """(where, target package) for every import of another package of this repository."""
    ours = packages() | set(MODULE_HOMES.values())
    for path in python_files(package):
        for line, module in imported_modules(path):
            target = home(module)
            if target in ours and target != package:
                yield f"{path.relative_to(ROOT)}:{line} imports {module}", target


def test_it_knows_every_package():
    assert packages() <= ALLOWED.keys(), "a new top-level package needs a row in ALLOWED (and in the docs)"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_it_allows_only_the_arrows_of_the_table(package):
    if not python_files(package):
        pytest.fail(f"{package} has no Python files; remove it from ALLOWED")
    refused = [where for where, target in arrows(package) if target not in ALLOWED[package]]
    assert refused == []


def test_it_has_no_circle_between_packages():
    graph = {package: {target for _, target in arrows(package)} for package in ALLOWED}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()) - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    assert [p for p in graph if reaches(p, p, set())] == []


def test_it_reads_lazy_imports_too(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("def f():\n    from workers.models import Worker\n", encoding="utf-8")
    assert list(imported_modules(source)) == [(2, "workers.models")]


def test_no_module_assigns_to_settings():
    """What a process learns while it runs lives in core.site, never in django.conf.settings."""
    assignments = []
    for package in [*SERVER_APPS, "statsbot_site"]:
        for path in python_files(package):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
                for target in targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                            and target.value.id == "settings":
                        assignments.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert assignments == []
