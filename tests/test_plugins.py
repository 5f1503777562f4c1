"""Plug-in policies: the example package really installs and loads; broken plug-ins fail with a message
naming the plug-in and its distribution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], extra_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "kfrouter.router.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(ROOT / "examples" / "kfrouter-vip-first"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_example_plugin_is_listed_with_its_distribution(installed_example: Path) -> None:
    out = run_cli(["policies"], installed_example)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "least-load\tbuilt-in" in lines
    assert "vip-first\tkfrouter-vip-first 0.1.0" in lines


def test_example_plugin_routes(installed_example: Path) -> None:
    code = (
        "from policies.registry import load_policy\n"
        "from router.core import *\n"
        "from kfrouter.router.core.model import AgentRow\n"
        "e = Engine(EngineConfig(default_route=Route(policy='vip-first')), {'vip-first': load_policy('vip-first')})\n"
        "e.handle(AgentConfigured(kf_account='senior@x', tags=frozenset({'senior'})), 0)\n"
        "e.handle(AgentsSeen(rows=[AgentRow(kf_account=k, status=1) for k in ['a@x', 'senior@x']]), 0)\n"
        "print(e.handle(CustomerRequested(openid='v', tags=frozenset({'vip'})), 1)[0].kf_account)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(installed_example))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "senior@x"


def fake_distribution(site: Path, name: str, entry: str) -> None:
    info = site / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[kfrouter.policies]\n{entry}\n")


def test_broken_plugin_names_itself_and_its_distribution(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "acme-routing", "acme = acme_missing_module:Policy")
    code = "from policies.registry import load_policy\nload_policy('acme')\n"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode != 0
    assert "policy plug-in 'acme' from acme-routing 1.2.3" in out.stderr
    assert "ModuleNotFoundError" in out.stderr


def test_plugin_with_wrong_name_or_signature_is_refused(tmp_path: Path) -> None:
    (tmp_path / "acme_bad.py").write_text(
        "class WrongName:\n    name = 'other'\n    def pick(self, pool, customer, now): return None\n"
        "class NoNow:\n    name = 'nonow'\n    def pick(self, pool, customer): return None\n"
    )
    fake_distribution(tmp_path, "acme-bad", "wrongname = acme_bad:WrongName\nnonow = acme_bad:NoNow")
    code = (
        "from policies.registry import load_policy, PluginError\n"
        "for n in ['wrongname', 'nonow']:\n"
        "    try:\n        load_policy(n)\n    except PluginError as e:\n        print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert "'wrongname' from acme-bad 1.2.3" in first and "expected 'wrongname'" in first
    assert "'nonow' from acme-bad 1.2.3" in second and "(pool, customer, now)" in second
