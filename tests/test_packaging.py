"""Installed names: the wheel holds only ``kfrouter/`` at its top level, and nothing imports the bare
``router``/``policies``/``sim`` names (another distribution, or a local folder, could shadow them)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BARE = {"router", "policies", "sim"}


def test_wheel_top_level_is_only_kfrouter(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("kfrouter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"kfrouter", next(t for t in tops if t.endswith(".dist-info"))}
    for module in (
        "kfrouter/router/core/engine.py",
        "kfrouter/policies/builtin.py",
        "kfrouter/sim/runner.py",
        "kfrouter/router/static/supervisor.js",
    ):
        assert module in names


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [
                f"{path}:{node.lineno} import {a.name}" for a in node.names if a.name.split(".")[0] in BARE
            ]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] in BARE
        ):
            found.append(f"{path}:{node.lineno} from {node.module}")
    return found


def test_no_module_imports_the_bare_names() -> None:
    found: list[str] = []
    for folder in ("router", "policies", "sim", "tests", "bench", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if {"build", ".venv"} & set(path.relative_to(ROOT).parts):
                continue  # what a local build or environment left behind is not the project's source
            found += _bare_imports(path)
    assert found == []
