"""pyproject.toml declares what the package imports: every third-party module imported anywhere in
draftsmith/ belongs to a declared distribution (importlib.metadata's own module -> distribution
map is the reference), and one imported at module level belongs to a core dependency."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return core, extras


def _imports() -> dict[str, bool]:
    """top-level module -> imported at module level somewhere (else only inside functions)."""
    found: dict[str, bool] = {}
    for path in (REPO / "draftsmith").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root == "draftsmith" or root in sys.stdlib_module_names:
                    continue
                found[root] = found.get(root, False) or id(node) in top
    return found


def test_every_imported_distribution_is_declared():
    core, extras = _declared()
    dists = packages_distributions()
    missing, not_core = [], []
    for module, at_top in sorted(_imports().items()):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & (core | extras):
            missing.append(f"{module} ({', '.join(sorted(names))})")
        elif at_top and not names & core:
            not_core.append(module)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert not not_core, f"imported at module level but only in an extra: {not_core}"


def test_installed_versions_meet_the_declared_lower_bounds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    bounds = {_name(r): r.split(">=", 1)[1].split(",")[0] for r in project["dependencies"] if ">=" in r}
    for name in ("torch", "transformers"):
        have = tuple(int(x) for x in re.findall(r"\d+", version(name))[:2])
        want = tuple(int(x) for x in bounds[name].split(".")[:2])
        assert have >= want, f"{name} {version(name)} is below the declared lower bound {bounds[name]}"
