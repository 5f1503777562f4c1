"""router.config with ``[[accounts]]`` and ``[defaults]``: every account complete, defaults merged key by key,
problems named where they are written (``accounts[2].wechat.appid``, ``defaults.engine.avoid_s``), duplicate
appids refused, one SQLite file per account, per-account secrets from the environment; a file of one
account is unchanged."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.config import Config, ConfigError, env_suffix

SERVER = {"admin_token": "a" * 16}


def account(appid: str, **extra: Any) -> dict[str, Any]:
    return {"wechat": {"appid": appid, "secret": f"secret-{appid}", "token": "tok123"}, **extra}


def doc(*accounts: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"server": SERVER, "accounts": list(accounts), **top}


def load(data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> Config:
    return Config.from_dict(data, source="k.toml", base_dir=tmp_path, env=env or {})


def problems(
    data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(data, tmp_path, env)
    return list(info.value.problems)


def test_each_account_is_a_complete_config_over_the_defaults(tmp_path: Path) -> None:
    data = doc(
        account("wxA"),
        account(
            "wxB",
            engine={"default_capacity": 7},
            groups=[{"name": "vip", "agents": ["v1@b"]}],
            routing={"default_group": "vip"},
        ),
        account("wxC", notify={"enabled": False}),
        defaults={
            "wechat": {"api_base": "http://127.0.0.1:9000", "token_mode": "classic"},
            "engine": {"default_capacity": 2, "avoid_s": 30},
            "groups": [{"name": "general", "agents": ["g1@x", "g2@x"]}],
            "routing": {"default_group": "general", "cancel_keywords": ["stop"]},
            "polling": {"online_slow_s": 20},
        },
    )
    cfg = load(data, tmp_path)
    assert cfg.wechat is None and [a.account for a in cfg.accounts] == ["wxA", "wxB", "wxC"]
    assert cfg.every_account == cfg.accounts
    a, b, c = cfg.accounts
    assert a.wechat is not None and a.wechat.api_base == "http://127.0.0.1:9000"
    assert a.wechat.token_mode == "classic" and a.wechat.secret == "secret-wxA"
    assert a.engine.default_capacity == 2 and a.engine.avoid_s == 30
    # a table merges key by key; an array (groups) is replaced whole
    assert b.engine.default_capacity == 7 and b.engine.avoid_s == 30
    assert [g.name for g in b.groups] == ["vip"] and b.routing.default_group == "vip"
    assert b.routing.cancel_keywords == ("stop",)  # the rest of [defaults.routing] still applies
    assert [g.name for g in a.groups] == ["general"] and not c.notify.enabled and a.notify.enabled
    assert all(x.polling.online_slow_s == 20 for x in cfg.accounts)
    # shared tables, one SQLite file per account by default
    assert all(x.server is cfg.server for x in cfg.accounts)
    assert [x.store.path for x in cfg.accounts] == [
        tmp_path / f"kfrouter-{x}.db" for x in ("wxA", "wxB", "wxC")
    ]
    assert cfg.for_account("wxB") is b
    with pytest.raises(KeyError):
        cfg.for_account("wxZ")
    with pytest.raises(ConfigError, match="3 \\[\\[accounts\\]\\]"):
        cfg.oa  # noqa: B018


def test_a_file_of_one_account_is_its_own_only_account(tmp_path: Path) -> None:
    cfg = load({"server": SERVER, **account("wxA")}, tmp_path)
    assert cfg.accounts == () and cfg.every_account == (cfg,) and cfg.oa.appid == "wxA"
    assert cfg.store.path == tmp_path / "kfrouter.db"


def test_store_path_placeholder_directory_and_postgres(tmp_path: Path) -> None:
    two = (account("wxA"), account("wxB"))
    cfg = load(doc(*two, store={"path": "data/{appid}/kf.db"}), tmp_path)
    assert [x.store.path for x in cfg.accounts] == [tmp_path / "data/wxA/kf.db", tmp_path / "data/wxB/kf.db"]
    (tmp_path / "dbs").mkdir()
    cfg = load(doc(*two, store={"path": "dbs"}), tmp_path)
    assert [x.store.path for x in cfg.accounts] == [tmp_path / "dbs/wxA.db", tmp_path / "dbs/wxB.db"]
    url = "postgresql://kf@db/kf"
    cfg = load(doc(*two, store={"url": url}), tmp_path)
    assert all(x.store.url == url for x in cfg.accounts)
    assert (
        "store.path",
        "2 accounts cannot share one SQLite file: put {appid} in it (e.g. "
        "'kfrouter-{appid}.db') or name a directory",
    ) in problems(doc(*two, store={"path": "one.db"}), tmp_path)
    # one account may keep a plain file
    assert (
        load(doc(account("wxA"), store={"path": "one.db"}), tmp_path).accounts[0].store.path
        == tmp_path / "one.db"
    )


def test_problems_name_the_account_and_the_key(tmp_path: Path) -> None:
    bad = account("wxC")
    bad["wechat"]["appid"] = "wx C!"
    data = doc(
        account("wxA"),
        account("wxB", engine={"avoid_s": -1}, colour="red"),
        bad,
        account("wxA"),
        {"wechat": {"appid": "wxE", "token": "tok123"}},
        defaults={"engine": {"reservation_timeout_s": "soon"}},
    )
    found = dict(problems(data, tmp_path))
    assert found["accounts[1].engine.avoid_s"].startswith("must be > 0")
    assert found["accounts[1].colour"].startswith("unknown key")
    assert found["accounts[2].wechat.appid"].startswith("must be an appid")
    assert found["accounts[3].wechat.appid"] == "'wxA' is already the appid of accounts[0]"
    assert found["accounts[4].wechat.secret"] == (
        "is required: set it in the file or in the environment variable KFROUTER_SECRET_WXE"
    )
    # a default's problem is named once, where it is written
    assert found["defaults.engine.reservation_timeout_s"].startswith("must be a number")
    assert [k for k, _ in problems(data, tmp_path)].count("defaults.engine.reservation_timeout_s") == 1


def test_what_cannot_be_where(tmp_path: Path) -> None:
    found = dict(
        problems(
            doc(
                account("wxA", server={"port": 1}),
                {"wecom": {"corpid": "ww0123456789"}},
                wechat={"appid": "wxTop"},
                defaults={"wechat": {"appid": "wxD", "callback_path": "/x"}, "server": {}},
            ),
            tmp_path,
        )
    )
    assert found["accounts[0].server"] == "is shared by every account: set it at the top level"
    assert found["accounts[1].wecom"].startswith("WeCom 微信客服 runs one account per daemon")
    assert found["wechat"].startswith("with [[accounts]] this belongs inside each account")
    assert found["defaults.wechat.appid"] == "is each account's own: set it in [[accounts]]"
    assert found["defaults.wechat.callback_path"] == "is each account's own: set it in [[accounts]]"
    assert found["defaults.server"].startswith("cannot be a default")
    assert dict(problems({"server": SERVER, **account("wxA"), "defaults": {}}, tmp_path))[
        "defaults"
    ].startswith("only applies to [[accounts]]")
    assert dict(problems(doc(), tmp_path))["accounts"].startswith("must be a non-empty array")


def test_explicit_callback_paths_must_differ(tmp_path: Path) -> None:
    a, b = account("wxA"), account("wxB")
    a["wechat"]["callback_path"] = b["wechat"]["callback_path"] = "/cb"
    found = dict(problems(doc(a, b), tmp_path))
    assert found["accounts[1].wechat.callback_path"] == "'/cb' is already the callback path of accounts[0]"


def test_secrets_per_account_from_the_environment(tmp_path: Path) -> None:
    data = doc({"wechat": {"appid": "wx-b_1"}}, account("wxA"))
    env = {
        "KFROUTER_SECRET_WX_B_1": "from-env",
        "KFROUTER_TOKEN_WX_B_1": "envtok1",
        "KFROUTER_SECRET": "global",
    }
    cfg = load(data, tmp_path, env)
    b, a = cfg.accounts
    assert b.oa.secret == "from-env" and b.oa.token == "envtok1"
    assert a.oa.secret == "secret-wxA"  # the single-account variable is not for [[accounts]]
    assert cfg.secret_sources["accounts[0].wechat.secret"] == "KFROUTER_SECRET_WX_B_1"
    assert b.secret_sources is cfg.secret_sources or b.secret_sources == cfg.secret_sources


@given(st.text(alphabet="abcXYZ019_-", min_size=1, max_size=20))
def test_env_suffix_is_a_variable_name(appid: str) -> None:
    suffix = env_suffix(appid)
    assert suffix.replace("_", "").isalnum() or set(suffix) == {"_"}
    assert suffix == suffix.upper() and len(suffix) == len(appid)


def test_defaults_do_not_leak_between_accounts(tmp_path: Path) -> None:
    data = doc(
        account("wxA", routing={"keywords": ["human"]}),
        account("wxB"),
        defaults={"routing": {"mode": "keywords", "keywords": ["agent"]}},
    )
    before = copy.deepcopy(data)
    a, b = load(data, tmp_path).accounts
    assert a.routing.keywords == ("human",) and b.routing.keywords == ("agent",)
    assert data == before  # the parsed document is not changed by merging


def test_check_config_summarises_each_account(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kfrouter.router.cli import main

    path = tmp_path / "kf.toml"
    path.write_text(
        '[server]\nadmin_token = "aaaaaaaaaaaaaaaa"\n'
        '[[accounts]]\nwechat = { appid = "wxA", secret = "s", token = "tok123" }\n'
        '[[accounts]]\nwechat = { appid = "wxB", secret = "s", token = "tok123" }\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ok: 2 accounts"
    assert lines[1].startswith("  wxA: 0 groups") and lines[1].endswith(f"store {tmp_path / 'kfrouter-wxA.db'}")
    assert lines[2].startswith("  wxB: ")
    assert main(["doctor", "--config", str(path)]) == 2
    assert "choose the account to check with --account (one of wxA, wxB)" in capsys.readouterr().err
