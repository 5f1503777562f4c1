"""``kfrouter agents|queue|sessions`` driven through ``router.cli.main`` against a daemon running in this
process (the CLI is synchronous, so it runs in a worker thread while the daemon serves on the loop)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, CB_TOKEN, config_dict, free_port, toml_text
from test_admin import APPID, GROUPS, JPEG, SECRET, Env, in_session

from kfrouter.router.cli import main
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import running_fake


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.delenv("KFROUTER_ADMIN_TOKEN", raising=False)
    opts = FakeOptions()
    opts.update({"check_openid": False})
    async with (
        running_fake(APPID, SECRET, token=CB_TOKEN, options=opts) as fake,
        aiohttp.ClientSession() as http,
    ):
        e = Env(fake, http, tmp_path / "kfrouter.db")
        await e.ctl.agents("a1@test", "a2@test", auto_accept=2)
        await e.start()
        try:
            yield e
        finally:
            await e.stop()


class Run(NamedTuple):
    code: int
    out: str
    err: str


async def kfrouter(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run ``kfrouter ARGV`` in a thread: its exit code, stdout and stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return Run(code, out, err)


def conn(e: Env) -> list[str]:
    return ["--url", e.url, "--admin-token", ADMIN_TOKEN]


async def test_agents_list_table_and_json(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    await env.ctl.say("c1", "buy human")
    await in_session(env, "c1", "a1@test")
    r = await kfrouter(capsys, "agents", "list", *conn(env))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["AGENT", "NICKNAME", "STATUS", "GROUPS", "LOAD", "LAST", "ASSIGNED"]
    a1 = next(line for line in lines if line.startswith("a1@test"))
    assert "online" in a1 and "sales" in a1 and "1/2" in a1 and "ago" in a1
    r = await kfrouter(capsys, "agents", "list", "--json", *conn(env))
    assert r.code == 0
    data = json.loads(r.out)
    assert {a["kf_account"] for a in data["agents"]} == {"a1@test", "a2@test"}
    r = await kfrouter(capsys, "agents", "list", "--wechat", *conn(env))
    assert r.code == 0 and "WECHAT" in r.out and "bound to" in r.out


async def test_agent_management_through_the_cli(
    env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = env.fake.model
    r = await kfrouter(
        capsys, "agents", "add", "new1@test", "--nickname", "Newbie", "--groups", "sales,support", *conn(env)
    )
    assert r.code == 0, r.err
    assert "added new1@test" in r.out and model.agents["new1@test"].nickname == "Newbie"
    assert sorted(env.d.engine.agent("new1@test").groups) == ["sales", "support"]  # type: ignore[union-attr]

    r = await kfrouter(capsys, "agents", "update", "new1@test", "--nickname", "Renamed", *conn(env))
    assert r.code == 0, r.err
    assert model.agents["new1@test"].nickname == "Renamed"

    r = await kfrouter(
        capsys, "agents", "set", "new1@test", "--capacity", "4", "--pause", "--groups", "support", *conn(env)
    )
    assert r.code == 0, r.err
    view = env.d.engine.agent("new1@test")
    assert view is not None and (view.capacity, view.paused, sorted(view.groups)) == (4, True, ["support"])
    r = await kfrouter(capsys, "agents", "set", "new1@test", "--resume", "--clear-capacity", *conn(env))
    assert r.code == 0, r.err
    view = env.d.engine.agent("new1@test")
    assert view is not None and view.paused is False and view.capacity == 3  # [engine] default_capacity

    img = tmp_path / "me.jpg"
    img.write_bytes(JPEG)
    r = await kfrouter(capsys, "agents", "avatar", "new1@test", str(img), *conn(env))
    assert r.code == 0, r.err
    assert f"{len(JPEG)} bytes" in r.out and model.agents["new1@test"].headimgurl

    r = await kfrouter(capsys, "agents", "invite", "new1@test", "new_worker_1", *conn(env))
    assert r.code == 0, r.err
    assert model.agents["new1@test"].invite_wx == "new_worker_1"

    r = await kfrouter(capsys, "agents", "delete", "new1@test", *conn(env))
    assert r.code == 0, r.err
    assert "new1@test" not in model.agents and env.d.engine.agent("new1@test") is None


async def test_queue_and_sessions_commands(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    r = await kfrouter(capsys, "agents", "set", "a2@test", "--pause", *conn(env))
    assert r.code == 0, r.err
    await env.ctl.say("w1", "human please")  # support: a2 is paused, so w1 waits
    await env.ctl.say("c1", "buy human")
    await in_session(env, "c1", "a1@test")
    r = await kfrouter(capsys, "queue", *conn(env))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split()[:4] == ["POS", "CUSTOMER", "GROUP", "PRIO"]
    assert lines[1].split()[:3] == ["1", "w1", "support"]
    r = await kfrouter(capsys, "sessions", "list", *conn(env))
    assert r.code == 0, r.err
    assert r.out.splitlines()[1].split()[:2] == ["c1", "a1@test"]

    r = await kfrouter(capsys, "agents", "set", "a2@test", "--resume", *conn(env))
    assert r.code == 0
    await in_session(env, "w1", "a2@test")
    r = await kfrouter(capsys, "sessions", "reassign", "c1", "--to", "a2@test", *conn(env))
    assert r.code == 0, r.err
    assert "closing the session of c1 with a1@test" in r.out
    await in_session(env, "c1", "a2@test")
    r = await kfrouter(capsys, "sessions", "close", "c1", *conn(env))
    assert r.code == 0, r.err
    assert "closed the session of c1 with a2@test" in r.out
    assert "c1" not in await env.ctl.sessions()
    r = await kfrouter(capsys, "sessions", "close", "c1", "--json", *conn(env))
    assert r.code == 1 and "HTTP 404" in r.err and "'c1'" in r.err
    r = await kfrouter(capsys, "queue", "--json", *conn(env))
    assert r.code == 0 and json.loads(r.out)["count"] == 0


async def test_errors_refused_connection_bad_token_unknown_agent(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    r = await kfrouter(capsys, "agents", "list", "--url", dead, "--admin-token", ADMIN_TOKEN)
    assert r.code == 3
    assert f"the kfrouter daemon is not running at {dead} (connection refused)" in r.err

    r = await kfrouter(capsys, "queue", "--url", env.url, "--admin-token", "wrong-token-000000000")
    assert r.code == 1
    assert "refused the admin token" in r.err and "wrong admin token" in r.err
    assert "wrong-token" not in r.err  # the token itself is never echoed

    r = await kfrouter(capsys, "queue", "--url", env.url)
    assert r.code == 2 and "no admin token" in r.err

    monkeypatch.setenv("KFROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    r = await kfrouter(capsys, "queue", "--url", env.url)
    assert r.code == 0, r.err

    r = await kfrouter(capsys, "agents", "update", "ghost@test", "--nickname", "x", *conn(env))
    assert r.code == 1 and "HTTP 404" in r.err and "ghost@test" in r.err
    r = await kfrouter(capsys, "agents", "add", "a1@test", "--nickname", "dup", *conn(env))
    assert r.code == 1 and "WeChat errcode 65406" in r.err
    r = await kfrouter(capsys, "agents", "set", "a1@test", *conn(env))
    assert r.code == 2 and "nothing to set" in r.err
    r = await kfrouter(capsys, "agents", "avatar", "a1@test", str(tmp_path / "missing.jpg"), *conn(env))
    assert r.code == 2 and "cannot read" in r.err
    r = await kfrouter(capsys, "queue", "--url", "ftp://x", "--admin-token", ADMIN_TOKEN)
    assert r.code == 2 and "--url" in r.err


async def test_url_and_token_from_config(
    env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data: dict[str, Any] = config_dict(
        api_base=env.fake.base_url,
        store=tmp_path / "other.db",
        groups=GROUPS,
        routing={"default_group": "sales"},
    )
    data["server"]["port"] = env.h.port
    path = tmp_path / "kfrouter.toml"
    path.write_text(toml_text(data))
    r = await kfrouter(capsys, "sessions", "list", "--config", str(path))
    assert r.code == 0, r.err
    assert "no open sessions" in r.out
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'x'\n")
    r = await kfrouter(capsys, "queue", "--config", str(bad))
    assert r.code == 2 and "bad.toml" in r.err
