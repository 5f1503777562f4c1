"""No import cycle anywhere in ``router/``, ``policies/`` or ``sim/``: every import counts — at module level,
under ``TYPE_CHECKING`` and inside functions. The layers (docs/architecture.md) only import downwards."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "policies", "sim")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "kfrouter." + ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from X import Y``: Y when it is a module, else X)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from pkg import mod`` imports the module mod (pkg's __init__ runs first in any case, as for
            # every submodule import: that implied edge is not counted); ``from mod import name`` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_project() -> None:
    g = graph()
    assert "kfrouter.router.core.engine" in g and "kfrouter.sim.runner" in g
    assert cycles(g) == []


# The layers of docs/architecture.md, lowest first; a module may import its own layer and those below.
# "app" and "sim" are siblings: the daemon and the simulator both stand on core and edges, never on each
# other. Every module must be placed (a new module is placed on purpose).
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (
        "router.core",
        "router.wechat",
        "policies.builtin",
        "policies.registry",
        "policies.bestfit",
        "policies",
    ),
    "edges": (
        "router.edges",
        "router.config",
        "router.clock",
        "router.rules",
        "router.doctor",
        "router.problems",
        "router.cluster_settings",
        "router.lease_plan",
        "router",
    ),
    "app": (
        "router.observe",
        "router.logs",
        "router.inbox",
        "router.executor",
        "router.ownership",
        "router.shared_inbox",
        "router.pollers",
        "router.desk_setup",
        "router.desk_driver",
        "router.daemon",
        "router.host",
        "router.cluster",
        "router.wecom_daemon",
        "router.view",
    ),
    "sim": ("sim",),
    "http": (
        "router.admin",
        "router.metrics",
        "router.supervisor",
        "router.access",
        "router.history",
        "router.notice_log",
    ),
    "cli": ("router.app", "router.cli", "router.demo", "policies.cli", "sim.cli", "sim.fake_cli"),
}
RANK = {"core": 0, "edges": 1, "app": 2, "sim": 2, "http": 3, "cli": 4}
SUFFIX_CLI = "_cli"


def layer_of(module: str) -> str:
    name = module.removeprefix("kfrouter.")
    if name.endswith(SUFFIX_CLI):
        return "cli"
    best = ""
    found = ""
    for layer, prefixes in LAYERS.items():
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > len(best):
                best, found = p, layer
    assert found, f"{module} is in no layer: place it in tests/test_import_cycles.py LAYERS"
    return found


def upward(g: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer, or sideways between the daemon's and the simulator's."""
    wrong = []
    for module, deps in sorted(g.items()):
        mine = layer_of(module)
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if RANK[theirs] > RANK[mine] or {mine, theirs} == {"app", "sim"}:
                wrong.append(f"{module} ({mine}) imports {dep} ({theirs})")
    return wrong


def test_the_layer_check_sees_a_wrong_way_import() -> None:
    d, a, r, c = (
        "kfrouter.router.daemon",
        "kfrouter.router.admin",
        "kfrouter.sim.runner",
        "kfrouter.router.core.desk",
    )
    assert upward({d: {a}, r: {d}, c: set(), a: {c}}) == [
        f"{d} (app) imports {a} (http)",
        f"{r} (sim) imports {d} (app)",
    ]


def test_imports_only_go_down_the_layers() -> None:
    assert upward(graph()) == []
