"""router.config: the example parses, every kind of problem names its key path, env secrets, engine config."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kfrouter.router.config import Config, ConfigError, load_config
from kfrouter.router.core.engine import Engine, EngineConfig
from kfrouter.router.core.events import AgentConfigured, AgentsSeen
from kfrouter.router.core.model import AgentRow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kfrouter.toml"
AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
AES2 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg"

MINIMAL: dict[str, Any] = {
    "wechat": {"appid": "wx0123456789abcdef", "secret": "s3cret", "token": "tok123"},
    "server": {"admin_token": "a" * 16},
}


def base() -> dict[str, Any]:
    """A valid document with two groups, to mutate in error tests."""
    doc = copy.deepcopy(MINIMAL)
    doc["groups"] = [
        {"name": "general", "agents": ["alice@shop", "bob@shop"]},
        {"name": "billing", "agents": ["carol@shop"], "overflow": [{"group": "general", "after_s": 30}]},
    ]
    doc["routing"] = {"default_group": "general"}
    return doc


def problems(doc: dict[str, Any], env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(doc, source="test.toml", env=env or {})
    return list(info.value.problems)


# ---------------------------------------------------------------------------------------------- valid


def test_example_parses_completely() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert [g.name for g in cfg.groups] == ["general", "billing", "vip"]
    assert sorted(cfg.agents) == ["alice@shop", "bob@shop", "carol@shop", "dave@shop", "erin@shop"]
    assert cfg.agents["alice@shop"].groups == {"general", "billing"}
    assert cfg.agents["carol@shop"].max_sessions == 5
    assert cfg.group("vip") is not None and cfg.group("vip").priority == 10  # type: ignore[union-attr]
    assert cfg.wechat.encoding == "safe" and cfg.wechat.aes_key == AES
    assert cfg.routing.mode == "keywords" and len(cfg.routing.rules) == 3
    assert cfg.routing.customers["oVIPcustomer0000000000000002"].group == "vip"
    # relative store path resolves against the config file's directory, not the working directory
    assert cfg.store.path == EXAMPLE.parent / "kfrouter.db"
    # a template override replaces one template and keeps the built-in others
    assert cfg.notify.template("assigned").startswith("您好，客服 {agent}")
    assert "{position}" in cfg.notify.template("queued")
    assert cfg.notify.template("queued", "en").startswith("You're in line")
    assert set(cfg.secret_sources.values()) == {"file"}


def test_example_documents_every_key_in_docs() -> None:
    """Every key the example uses appears in docs/config.md (and the example uses every section)."""
    docs = (EXAMPLE.parent.parent / "docs" / "config.md").read_text(encoding="utf-8")
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))

    def keys(obj: Any) -> set[str]:
        out: set[str] = set()
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.add(k)
                out |= keys(v)
        elif isinstance(obj, list):
            for v in obj:
                out |= keys(v)
        return out

    structural = {"zh", "en", "小王", "1001", "Bob", "carol@shop"}  # table keys that are data, not settings
    # documented as `key`, or as a section heading such as `[routing.aliases]` / `[[groups]]`
    missing = sorted(
        k for k in keys(data) - structural if not re.search(rf"[`.\[]{re.escape(k)}[`.\]]", docs)
    )
    assert missing == []


def test_minimal_config_takes_documented_defaults() -> None:
    cfg = Config.from_dict(MINIMAL, env={})
    assert cfg.groups == ()
    assert cfg.wechat.api_base == "https://api.weixin.qq.com"
    assert cfg.wechat.token_mode == "stable" and cfg.wechat.callback_path == "/wechat"
    assert cfg.wechat.encoding == "plain" and cfg.wechat.aes_key is None
    assert (cfg.server.host, cfg.server.port, cfg.server.upstream_url) == ("127.0.0.1", 8080, None)
    assert cfg.engine.default_capacity == 3 and cfg.engine.default_policy == "least-load"
    assert cfg.routing.mode == "always" and cfg.routing.cancel_keywords == ("取消", "不等了", "cancel")
    assert cfg.routing.default_group is None
    assert (
        cfg.notify.language == "zh"
        and cfg.notify.max_per_customer == 2
        and cfg.notify.eta_change_min_s == 60.0
    )
    assert cfg.store.path.name == "kfrouter.db" and cfg.log.level == "info" and cfg.log.json is False


def test_secrets_are_not_in_repr() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["wechat"] |= {"secret": "SECRETVALUE", "token": "TOKENVALUE", "encoding": "safe", "aes_key": AES}
    doc["server"]["admin_token"] = "ADMINTOKENVALUE0"
    text = repr(Config.from_dict(doc, env={}))
    for secret in ("SECRETVALUE", "TOKENVALUE", AES, "ADMINTOKENVALUE0"):
        assert secret not in text


def test_engine_config_runs_a_real_engine() -> None:
    from kfrouter.policies.registry import load_policy

    cfg = load_config(EXAMPLE, env={})
    ec = cfg.engine_config()
    assert isinstance(ec, EngineConfig)
    assert ec.routes["vip"].policy == "sticky"
    assert ec.routes["vip"].overflow == (("billing", 30.0), ("general", 90.0))
    assert ec.default_route.policy == "least-load" and ec.sticky_window_s == 604800.0
    engine = Engine(ec, {name: load_policy(name) for name in cfg.policy_names()})
    for e in cfg.agent_events():
        engine.handle(e, 0.0)
    rows = tuple(AgentRow(kf_account=kf, status=1) for kf in cfg.agents)
    engine.handle(AgentsSeen(rows=rows), 0.0)  # type: ignore[arg-type]  # attrs converter=tuple
    carol = engine.agent("carol@shop")
    assert carol is not None and carol.capacity == 5 and carol.groups == {"general"}


def test_agent_events_carry_groups_and_capacity() -> None:
    cfg = load_config(EXAMPLE, env={})
    by_kf = {e.kf_account: e for e in cfg.agent_events()}
    assert by_kf["carol@shop"] == AgentConfigured(kf_account="carol@shop", groups={"general"}, max_sessions=5)
    assert (
        by_kf["alice@shop"].groups == frozenset({"general", "billing"})
        and by_kf["alice@shop"].max_sessions is None
    )


def test_skills_and_a_policy_with_options_reach_a_real_engine() -> None:
    """[groups.skills] gives agents a proficiency for a group; best-fit with options routes on it."""
    doc = base()
    doc["engine"] = {"default_policy": "best-fit(unlisted_skill=0.8)"}
    doc["groups"][1]["skills"] = {"alice@shop": 0.6, "carol@shop": 0.9}
    cfg = Config.from_dict(doc, env={})
    assert cfg.group("billing").skills == {"alice@shop": 0.6, "carol@shop": 0.9}  # type: ignore[union-attr]
    assert cfg.agents["alice@shop"].skills == (("billing", 0.6),) and cfg.agents["bob@shop"].skills == ()
    events = {e.kf_account: e for e in cfg.agent_events()}
    assert events["alice@shop"].skills == (("billing", 0.6),) and events["bob@shop"].skills is None
    from kfrouter.policies.registry import load_policies

    engine = Engine(cfg.engine_config(), load_policies(sorted(cfg.policy_names())))
    for e in cfg.agent_events():
        engine.handle(e, 0.0)
    engine.handle(AgentsSeen(rows=tuple(AgentRow(kf_account=kf, status=1) for kf in cfg.agents)), 0.0)  # type: ignore[arg-type]
    alice = engine.agent("alice@shop")
    assert alice is not None and alice.proficiency("billing") == 0.6 and alice.proficiency("general") == 1.0
    policy = engine._policies["best-fit(unlisted_skill=0.8)"]
    assert policy.name == "best-fit" and policy.unlisted_skill == 0.8  # type: ignore[attr-defined]


def test_check_config_names_a_bad_skill_and_a_bad_policy_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kfrouter.router.cli import main

    text = EXAMPLE.read_text(encoding="utf-8")
    good = tmp_path / "good.toml"
    good.write_text(
        text.replace('default_policy = "least-load"', 'default_policy = "best-fit(slowdown_weight=2)"')
        + '\n[groups.skills]\n"alice@shop" = 0.5\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(good)]) == 0
    assert "best-fit(slowdown_weight=2)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace('default_policy = "least-load"', 'default_policy = "best-fit(slowdown_weight=-1)"')
        + '\n[groups.skills]\n"alice@shop" = 2\n',
        encoding="utf-8",
    )
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert 'groups[2].skills."alice@shop": must be <= 1, got 2' in err
    assert "engine.default_policy: best-fit: slowdown_weight must be a number >= 0, got -1" in err


# ---------------------------------------------------------------------------------------------- errors


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set doc[path] where path is like 'groups.1.overflow.0.after_s'; value DELETE removes it."""
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for p in parts[:-1]:
        node = node[p] if isinstance(p, int) else node.setdefault(p, {})
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value


DELETE = object()

ERROR_CASES: list[tuple[str, Any, str, str]] = [
    # (path to set, value, expected key path, expected fragment of the reason)
    ("groups.1.overflow.0.after_s", -5, "groups[1].overflow[0].after_s", "must be >= 0, got -5"),
    ("wechta", {}, "wechta", "unknown key"),
    ("groups.0.agent", ["x@y"], "groups[0].agent", "unknown key"),
    ("server.portt", 1, "server.portt", "unknown key"),
    ("server.port", "8080", "server.port", "must be an integer, got '8080'"),
    ("server.port", 70000, "server.port", "must be <= 65535"),
    ("engine.default_capacity", True, "engine.default_capacity", "must be an integer, got true"),
    ("engine.default_capacity", 0, "engine.default_capacity", "must be >= 1"),
    ("engine.avoid_s", float("nan"), "engine.avoid_s", "finite"),
    ("engine.reservation_timeout_s", 0, "engine.reservation_timeout_s", "must be >= 2.5"),
    ("engine.priorities", "yes", "engine.priorities", "true or false"),
    ("engine.default_policy", "fastest", "engine.default_policy", "unknown policy 'fastest'"),
    ("groups.0.policy", "fastest", "groups[0].policy", "unknown policy 'fastest' (installed: "),
    ("groups.1.overflow.0.group", "nope", "groups[1].overflow[0].group", "unknown group 'nope'"),
    ("groups.1.overflow.0.group", "billing", "groups[1].overflow[0].group", "to itself"),
    ("groups.1.overflow", {"group": "general"}, "groups[1].overflow", "array of tables"),
    ("groups.1.overflow.0.after_s", DELETE, "groups[1].overflow[0].after_s", "is required"),
    ("groups.1.name", "general", "groups[1].name", "already defined at groups[0].name"),
    ("groups.0.name", "has space", "groups[0].name", "without spaces"),
    ("groups.0.agents", ["alice@shop", "alice"], "groups[0].agents[1]", "kf_account"),
    ("groups.0.agents", ["alice@shop", "alice@shop"], "groups[0].agents[1]", "listed twice"),
    ("groups.0.agents", "alice@shop", "groups[0].agents", "array of strings"),
    ("groups.0.capacity", {"zed@shop": 2}, 'groups[0].capacity."zed@shop"', "not in this group's agents"),
    ("groups.0.capacity", {"alice@shop": 0}, 'groups[0].capacity."alice@shop"', "must be >= 1"),
    ("groups.0.on_agent_offline", "drop", "groups[0].on_agent_offline", "one of 'keep', 'reassign'"),
    ("groups.0.offline_grace_s", 10, "groups[0].offline_grace_s", "only applies when"),
    ("groups.1.skills", {"alice@shop": 0}, 'groups[1].skills."alice@shop"', "must be > 0, got 0"),
    ("groups.1.skills", {"alice@shop": 1.5}, 'groups[1].skills."alice@shop"', "must be <= 1"),
    ("groups.1.skills", {"alice@shop": "x"}, 'groups[1].skills."alice@shop"', "must be a number"),
    ("groups.1.skills", {"alice": 0.5}, "groups[1].skills.alice", "must be a kf_account"),
    ("groups.1.skills", {"zed@shop": 0.5}, 'groups[1].skills."zed@shop"', "not in any group's agents"),
    ("groups.1.skills", 0.5, "groups[1].skills", "must be a table"),
    ("engine.default_policy", "best-fit(horizon=0)", "engine.default_policy", "horizon must be an integer"),
    ("engine.default_policy", "best-fit(speed=2)", "engine.default_policy", "speed"),
    ("engine.default_policy", "best-fit(unlisted_skill=", "engine.default_policy", "expected NAME"),
    ("groups.1.policy", "fastest(x=1)", "groups[1].policy", "unknown policy 'fastest'"),
    ("wechat.token", "ab", "wechat.token", "3-32 letters or digits"),
    ("wechat.token", "tok-123", "wechat.token", "3-32 letters or digits"),
    ("wechat.secret", DELETE, "wechat.secret", "KFROUTER_SECRET"),
    ("wechat.secret", "", "wechat.secret", "KFROUTER_SECRET"),
    ("wechat.appid", DELETE, "wechat.appid", "KFROUTER_APPID"),
    ("wechat.encoding", "safe", "wechat.aes_key", "KFROUTER_AES_KEY"),
    ("wechat.encoding", "aes", "wechat.encoding", "one of 'plain', 'compatible', 'safe'"),
    ("wechat.aes_key", AES[:-1], "wechat.aes_key", "43 letters or digits"),
    ("wechat.previous_aes_key", AES2, "wechat.previous_aes_key", "only used when encoding"),
    ("wechat.api_base", "http://api.weixin.qq.com", "wechat.api_base", "must use https"),
    ("wechat.api_base", "api.weixin.qq.com", "wechat.api_base", "http(s) URL"),
    ("wechat.token_mode", "cached", "wechat.token_mode", "one of 'stable', 'classic'"),
    ("wechat.callback_path", "wechat", "wechat.callback_path", "absolute URL path"),
    ("server.admin_token", "short", "server.admin_token", "at least 16 characters"),
    ("server.admin_token", DELETE, "server.admin_token", "KFROUTER_ADMIN_TOKEN"),
    ("server.upstream_timeout_s", 5, "server.upstream_timeout_s", "must be <= 4.5"),
    ("server.upstream_url", "ftp://host/x", "server.upstream_url", "http(s) URL"),
    ("routing.default_group", "sales", "routing.default_group", "unknown group 'sales'"),
    ("routing.mode", "smart", "routing.mode", "one of 'always', 'keywords'"),
    ("routing.rules", [{"keywords": ["退款"], "group": "x"}], "routing.rules[0].group", "unknown group 'x'"),
    ("routing.rules", [{"group": "billing"}], "routing.rules[0]", "needs keywords or menu_keys"),
    ("routing.rules", [{"keywords": ["a"]}], "routing.rules[0]", "does nothing"),
    (
        "routing.rules",
        [{"keywords": ["a"], "group": "billing", "prio": 1}],
        "routing.rules[0].prio",
        "unknown",
    ),
    (
        "routing.customers",
        [{"openids": ["o1"], "priority": 5}, {"openids": ["o2", "o1"], "group": "billing"}],
        "routing.customers[1].openids[1]",
        "already listed at routing.customers[0].openids[0]",
    ),
    ("routing.customers", [{"group": "billing"}], "routing.customers[0].openids", "is required"),
    ("routing.keywords", ["人工", "取消"], "routing.keywords", "also a cancel keyword"),
    ("routing.aliases", {"小王": "not-an-account"}, "routing.aliases.小王", "kf_account"),
    ("routing.aliases", {"Bob": "bob@shop", "bob": "bob@shop"}, "routing.aliases.bob", "ignore case"),
    ("polling.online_fast_s", 20, "polling.online_fast_s", "must be <= online_slow_s"),
    ("polling.waitcase_fast_s", 0.5, "polling.waitcase_fast_s", "must be >= 1"),
    ("polling.jitter", 0.9, "polling.jitter", "must be <= 0.5"),
    ("notify.max_per_customer", 6, "notify.max_per_customer", "must be <= 5"),
    ("notify.language", "fr", "notify.language", "no templates for 'fr'"),
    ("notify.templates", {"zh": {"queued": "前面 {pos} 位"}}, "notify.templates.zh.queued", "{pos}"),
    ("notify.templates", {"zh": {"queued": "前面 {position"}}, "notify.templates.zh.queued", "not a valid"),
    (
        "notify.templates",
        {"zh": {"assigned": "{position}"}},
        "notify.templates.zh.assigned",
        "allowed: {agent}",
    ),
    ("notify.templates", {"zh": {"welcome": "hi"}}, "notify.templates.zh.welcome", "unknown key"),
    ("notify.templates", {"fr": {"queued": "{position}"}}, "notify.templates.fr", "missing eta, assigned"),
    ("store.dedup_keep_s", 5, "store.dedup_keep_s", "must be >= 20"),
    ("log.level", "verbose", "log.level", "one of 'debug'"),
    ("log.json", 1, "log.json", "true or false"),
]


@pytest.mark.parametrize(("path", "value", "key", "fragment"), ERROR_CASES, ids=[c[2] for c in ERROR_CASES])
def test_each_problem_names_its_key_path(path: str, value: Any, key: str, fragment: str) -> None:
    doc = base()
    _set(doc, path, value)
    found = problems(doc)
    assert any(k == key and fragment in reason for k, reason in found), found


def test_capacity_conflict_between_groups_names_both_places() -> None:
    doc = base()
    doc["groups"][0]["capacity"] = {"alice@shop": 2}
    doc["groups"][1]["agents"].append("alice@shop")
    doc["groups"][1]["capacity"] = {"alice@shop": 4}
    found = problems(doc)
    assert (
        'groups[1].capacity."alice@shop"',
        'capacity 4 contradicts 2 given at groups[0].capacity."alice@shop"',
    ) in found


def test_overflow_must_be_listed_in_order() -> None:
    doc = base()
    doc["groups"].append(
        {
            "name": "vip",
            "overflow": [{"group": "billing", "after_s": 60}, {"group": "general", "after_s": 10}],
        }
    )
    found = problems(doc)
    assert any(k == "groups[2].overflow[1].after_s" and "previous entry's 60" in r for k, r in found)


def test_keywords_mode_needs_some_trigger() -> None:
    doc = base()
    doc["routing"] |= {"mode": "keywords", "keywords": []}
    assert any(k == "routing.mode" and "nobody could reach a human" in r for k, r in problems(doc))


def test_an_agent_may_serve_several_groups() -> None:
    doc = base()
    doc["groups"][1]["agents"].append("alice@shop")
    cfg = Config.from_dict(doc, env={})
    assert cfg.agents["alice@shop"].groups == {"general", "billing"}


def test_all_problems_are_reported_at_once_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kf.toml"
    path.write_text(
        '[wechat]\nappid = "wx1"\nsecret = "s"\ntoken = "t"\n[server]\nadmin_token = "x"\nport = -1\n[lgo]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    err = info.value
    keys = [k for k, _ in err.problems]
    assert keys == ["wechat.token", "server.admin_token", "server.port", "lgo"]
    lines = str(err).splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{path}: ") for line in lines)
    assert f"{path}: server.port: must be >= 0, got -1" in lines
    assert err.file == str(path)


def test_bad_secret_value_is_never_printed() -> None:
    doc = base()
    doc["wechat"]["token"] = "not valid token!"
    found = problems(doc)
    assert ("wechat.token", "must be 3-32 letters or digits, got a value of 16 characters") in found
    assert "not valid token" not in str(found)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[wechat]\nappid = "wx1"\nsecret = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value).startswith(f"{path}: invalid TOML:") and "line 3" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.toml", env={})


def test_config_error_is_a_core_config_error() -> None:
    from kfrouter.router.core.errors import ConfigError as CoreConfigError

    assert issubclass(ConfigError, CoreConfigError)


# ---------------------------------------------------------------------------------------------- env


def test_env_fills_missing_secrets() -> None:
    doc = {"server": {}, "wechat": {"encoding": "safe"}}
    env = {
        "KFROUTER_APPID": "wxfromenv",
        "KFROUTER_SECRET": "envsecret",
        "KFROUTER_TOKEN": "envtoken",
        "KFROUTER_AES_KEY": AES,
        "KFROUTER_ADMIN_TOKEN": "e" * 20,
    }
    cfg = Config.from_dict(doc, env=env)
    assert (cfg.wechat.appid, cfg.wechat.secret, cfg.wechat.token, cfg.wechat.aes_key) == (
        "wxfromenv",
        "envsecret",
        "envtoken",
        AES,
    )
    assert cfg.server.admin_token == "e" * 20
    assert cfg.secret_sources["wechat.secret"] == "KFROUTER_SECRET"
    assert cfg.secret_sources["server.admin_token"] == "KFROUTER_ADMIN_TOKEN"


def test_env_wins_over_the_file_and_empty_env_is_ignored() -> None:
    env = {"KFROUTER_SECRET": "fromenv", "KFROUTER_TOKEN": ""}
    cfg = Config.from_dict(MINIMAL, env=env)
    assert cfg.wechat.secret == "fromenv" and cfg.secret_sources["wechat.secret"] == "KFROUTER_SECRET"
    assert cfg.wechat.token == "tok123" and cfg.secret_sources["wechat.token"] == "file"


def test_bad_env_value_names_the_variable() -> None:
    found = problems(MINIMAL, env={"KFROUTER_AES_KEY": "short", "KFROUTER_TOKEN": "bad token"})
    assert (
        "wechat.token",
        "must be 3-32 letters or digits (from KFROUTER_TOKEN), got a value of 9 characters",
    ) in found
    # an AES key is validated even in plain mode (it is still a setting that will be used once switched)
    assert any(k == "wechat.aes_key" and "KFROUTER_AES_KEY" in r for k, r in found)


def test_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFROUTER_SECRET", "process-env")
    assert Config.from_dict(MINIMAL).wechat.secret == "process-env"


def test_offline_and_stale_settings_reach_the_engine() -> None:
    doc = base()
    doc["engine"] = {"stale_session_s": 3600, "stale_message": "bye"}
    doc["groups"] = [{"name": "g", "agents": ["a@x"], "on_agent_offline": "reassign", "offline_grace_s": 30}]
    doc["routing"] = {"default_group": "g"}
    ec = Config.from_dict(doc, env={}).engine_config()
    assert (ec.stale_session_s, ec.stale_message) == (3600.0, "bye")
    assert (ec.routes["g"].on_agent_offline, ec.routes["g"].offline_grace_s) == ("reassign", 30.0)
    doc["engine"] = {"stale_message": "bye"}
    assert ("engine.stale_message", "only applies when stale_session_s is set") in problems(doc)


def test_store_url_selects_postgresql_from_the_file_or_the_environment() -> None:
    doc = copy.deepcopy(MINIMAL)
    doc["store"] = {"url": "postgresql://kf:pw@db:5432/kf"}
    cfg = Config.from_dict(doc, source="test.toml", env={})
    assert cfg.store.url == "postgresql://kf:pw@db:5432/kf" and "pw" not in repr(cfg.store)
    env = {"KFROUTER_STORE_URL": "postgres://db/other"}
    assert Config.from_dict(doc, source="test.toml", env=env).store.url == "postgres://db/other"
    assert Config.from_dict(copy.deepcopy(MINIMAL), source="test.toml", env={}).store.url is None
    doc["store"] = {"url": "mysql://kf:secret-pw@db/kf"}
    [(key, message)] = problems(doc)
    assert key == "store.url" and "postgresql:// URL" in message and "secret-pw" not in message
