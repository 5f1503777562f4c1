"""``[wecom]`` inside ``kfrouter.toml``: a config is an Official Account or a WeCom account, never both or
neither; ``kfrouter check-config`` validates ``[wecom]`` naming the key (and refuses ``[cluster]`` with it);
OA configs are unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from kfrouter.router.app import build_cluster
from kfrouter.router.cli import main
from kfrouter.router.cluster_settings import ClusterSettings, cluster_problems
from kfrouter.router.config import Config, ConfigError, load_config

ADMIN = "admin-token-0123456789"
WECOM = {
    "corpid": "ww0123456789abcdef",
    "secret": "kf-app-secret-0123",
    "token": "kfrTestToken42",
    "aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "open_kfids": ["wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q"],
}
WECHAT = {"appid": "wx0123456789", "secret": "s", "token": "tok123"}


def load(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return Config.from_dict({"server": {"admin_token": ADMIN}, **data}, source="k.toml", env=env or {})


def test_wecom_config_loads_without_wechat() -> None:
    cfg = load({"wecom": WECOM})
    assert cfg.wechat is None and cfg.wecom is not None
    assert cfg.backend == "wecom" and cfg.account == "ww0123456789abcdef"
    assert cfg.wecom.open_kfids == ("wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q",)
    assert cfg.wecom.callback_path == "/wecom"
    with pytest.raises(ConfigError, match=r"\[wecom\]"):
        _ = cfg.oa


def test_oa_config_unchanged() -> None:
    cfg = load({"wechat": WECHAT})
    assert cfg.wecom is None and cfg.backend == "wechat" and cfg.oa.appid == "wx0123456789"


def test_both_tables_refused() -> None:
    with pytest.raises(ConfigError, match=r"wecom: a config serves one account"):
        load({"wechat": WECHAT, "wecom": WECOM})


def test_neither_table_refused_clearly() -> None:
    with pytest.raises(ConfigError) as info:
        load({})
    text = str(info.value)
    assert "wechat.appid" in text and "[wecom] table" in text


def test_oa_from_environment_alone_still_valid() -> None:
    env = {"KFROUTER_APPID": "wx0123456789", "KFROUTER_SECRET": "s", "KFROUTER_TOKEN": "tok123"}
    assert load({}, env).oa.appid == "wx0123456789"


def test_wecom_errors_name_the_key() -> None:
    bad = {**WECOM, "open_kfids": ["ok", "bad id"], "callback_path": "wecom"}
    with pytest.raises(ConfigError) as info:
        load({"wecom": bad})
    text = str(info.value)
    assert "wecom.open_kfids[1]" in text and "wecom.callback_path" in text


def test_wecom_secret_from_environment() -> None:
    data = {k: v for k, v in WECOM.items() if k != "secret"}
    cfg = load({"wecom": data}, {"KFROUTER_WECOM_SECRET": "from-env-secret"})
    assert cfg.wecom is not None and cfg.wecom.secret == "from-env-secret"
    assert cfg.secret_sources["wecom.secret"] == "KFROUTER_WECOM_SECRET"


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        return "[" + ", ".join(f'"{x}"' for x in v) + "]" if isinstance(v, list) else f'"{v}"'

    return "\n".join(
        f"[{name}]\n" + "\n".join(f"{k} = {value(v)}" for k, v in body.items()) + "\n"
        for name, body in tables.items()
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(_toml({"server": {"admin_token": ADMIN}, "wecom": WECOM}), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "kfrouter.router.cli", "check-config", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "wecom ww0123456789abcdef, 1 kf account(s)" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        _toml({"server": {"admin_token": ADMIN}, "wecom": {**WECOM, "aes_key": "short"}}), encoding="utf-8"
    )
    out = subprocess.run(
        [sys.executable, "-m", "kfrouter.router.cli", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "wecom.aes_key" in out.stderr and "short" not in out.stderr
    assert load_config(good).wecom is not None


def test_check_config_refuses_what_the_wecom_daemon_cannot_serve() -> None:
    """The daemon serves one kf account per process: a config listing two is refused by the loader (so
    check-config), naming the key, not accepted and then refused at start."""
    two = {**WECOM, "open_kfids": ["wkA_one", "wkB_two"]}
    with pytest.raises(ConfigError, match=r"wecom\.open_kfids: a daemon serves one kf account"):
        load({"wecom": two})


def test_check_config_refuses_cluster_with_wecom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several daemons share Official Accounts only: ``[cluster]`` with ``[wecom]`` is refused by
    check-config in one line naming the key — the rule ``build_cluster`` asks too, word for word."""
    monkeypatch.delenv("KFROUTER_STORE_URL", raising=False)
    tables = {"server": {"admin_token": ADMIN}, "wecom": WECOM}
    good = tmp_path / "good.toml"
    good.write_text(_toml(tables), encoding="utf-8")
    assert main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    bad = tmp_path / "bad.toml"
    bad.write_text(_toml({**tables, "cluster": {"daemon_id": "d1"}}), encoding="utf-8")
    assert main(["check-config", str(bad)]) == 2
    captured = capsys.readouterr()
    line = f"{bad}: cluster: is not supported with [wecom]: several daemons share Official Accounts only"
    assert captured.out == "" and captured.err.startswith(line) and captured.err.count("\n") == 1
    # a config made without the loader meets the same rule when the daemon is built
    config = attrs.evolve(load_config(good), cluster=ClusterSettings(daemon_id="d1"))
    with pytest.raises(ConfigError) as refused:
        build_cluster(config)
    assert refused.value.problems == (("cluster", captured.err.strip().split(": cluster: ", 1)[1]),)


def test_cluster_problems_names_each_reason() -> None:
    assert cluster_problems(store_url="postgresql://h/db", wecom=False) == []
    assert [k for k, _ in cluster_problems(store_url=None, wecom=False)] == ["cluster"]
    # with [wecom], whatever the store, the one thing to change is [cluster]
    assert cluster_problems(store_url=None, wecom=True) == cluster_problems(
        store_url="postgresql://h/db", wecom=True
    )
    with pytest.raises(ConfigError, match=r"cluster: is not supported with \[wecom\]") as info:
        load({"wecom": WECOM, "cluster": {}})
    assert "needs [store] url" not in str(info.value)


def test_a_wecom_account_refuses_a_store_url_it_would_not_use() -> None:
    """The WeCom daemon keeps its store and cursors in SQLite at [store] path: a url that validated would be
    silently ignored, so check-config refuses it, from the file or from the environment."""
    url = "postgresql://kf:pw@127.0.0.1:5432/kf"
    with pytest.raises(ConfigError, match=r"store\.url: is not used by a \[wecom\] account") as info:
        load({"wecom": WECOM, "store": {"url": url}})
    assert len(info.value.problems) == 1
    with pytest.raises(ConfigError, match=r"store\.url: is not used by a \[wecom\] account"):
        load({"wecom": WECOM}, env={"KFROUTER_STORE_URL": url})
    assert load({"wecom": WECOM}).store.url is None
    assert load({"wechat": WECHAT, "store": {"url": url}}).store.url == url  # an Official Account uses it
