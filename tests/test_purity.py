"""The pure layers stay pure: ``router/core`` (engine, Desk, estimator, notifier), ``router/wechat`` (wire
codecs) and ``policies`` import no I/O, no clock and no global randomness, and import nothing of kfrouter
above them (core: only core; wechat: only wechat; policies: only core and policies)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "asyncio",
    "aiohttp",
    "socket",
    "time",
    "datetime",
    "random",
    "secrets",
    "os",
    "sqlite3",
    "threading",
    "multiprocessing",
    "logging",
    "subprocess",
    "urllib",
    "http",
    "requests",
}

# package folder -> the kfrouter packages it may import
LAYERS = {
    "router/core": ("kfrouter.router.core",),
    "router/wechat": ("kfrouter.router.wechat",),
    "policies": ("kfrouter.router.core", "kfrouter.policies"),
}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth: module level, under TYPE_CHECKING, in functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_no_io_clock_or_random_imports(folder: str) -> None:
    files = sorted((ROOT / folder).glob("*.py"))
    assert len(files) >= 3
    for path in files:
        bad = {m.split(".")[0] for m in imports(path)} & FORBIDDEN
        assert not bad, f"{folder}/{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_pure_layers_import_nothing_above_them(folder: str) -> None:
    allowed = LAYERS[folder]
    for path in sorted((ROOT / folder).glob("*.py")):
        ours = {m for m in imports(path) if m.split(".")[0] == "kfrouter"}
        above = {m for m in ours if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert not above, f"{folder}/{path.name} imports {sorted(above)}"


def test_the_checks_see_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import time\n    from kfrouter.router.daemon import Daemon\n")
    assert {"time", "kfrouter.router.daemon"} <= imports(bad)


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_every_module_has_a_docstring(folder: str) -> None:
    for path in (ROOT / folder).glob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text("utf-8"))), f"{folder}/{path.name}"
