"""router/wechat stays pure: no I/O, clock or global randomness imported anywhere in the package."""

from __future__ import annotations

import ast
from pathlib import Path

import kfrouter.router.wechat

FORBIDDEN = {
    "asyncio",
    "aiohttp",
    "socket",
    "time",
    "random",
    "secrets",
    "os",
    "sqlite3",
    "threading",
    "logging",
    "subprocess",
    "urllib",
    "http",
    "requests",
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_io_clock_or_random_imports() -> None:
    package = Path(kfrouter.router.wechat.__file__).parent
    files = sorted(package.glob("*.py"))
    assert len(files) >= 7
    for path in files:
        bad = imported_roots(path) & FORBIDDEN
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_every_module_has_a_docstring() -> None:
    for path in Path(kfrouter.router.wechat.__file__).parent.glob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text("utf-8"))), path.name
