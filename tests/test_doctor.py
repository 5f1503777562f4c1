"""``kfrouter doctor`` end to end: the real CLI against the fake WeChat server, one misconfiguration each.

Every test writes a config file in tmp_path whose ``api_base`` points at a fake on 127.0.0.1, drives
``router.cli.main(["doctor", "--config", path])`` in a worker thread (the CLI runs its own event loop;
the fake keeps serving on the test's loop) and asserts the exit code and that the printed message names
both the cause and the fix. The fake is switched into each failure with its misconfiguration options,
``errmsg_overrides`` or per-endpoint fault injection.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kfrouter.router.cli import main
from kfrouter.sim import fake_options as fo
from kfrouter.sim.fake_options import Fault
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_doctor_test_app"
SECRET = "doctor_secret_value_never_printed"
CB_TOKEN = "cbToken123"
ADMIN = "admin-token-0123456789"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    """A well-configured account: two bound agents (alice online, bob offline)."""
    async with running_fake(APPID, SECRET) as f:
        now = f.clock.now()
        f.model.set_agent("alice@test", now, status=1)
        f.model.set_agent("bob@test", now, status=0)
        yield f


def write_config(
    tmp_path: Path,
    fake: FakeWeChat,
    *,
    appid: str = APPID,
    secret: str = SECRET,
    token_mode: str = "stable",
    groups: str | None = None,
    store: str | None = None,
    upstream: str | None = None,
    safe: bool = False,
) -> Path:
    if groups is None:
        groups = '[[groups]]\nname = "general"\nagents = ["alice@test", "bob@test"]\n'
    store_path = store if store is not None else str(tmp_path / "kfrouter.db")
    server = f'[server]\nadmin_token = "{ADMIN}"\n'
    if upstream is not None:
        server += f'upstream_url = "{upstream}"\nupstream_timeout_s = 2.0\n'
    enc = f'encoding = "safe"\naes_key = "{AES_KEY}"\n' if safe else ""
    text = (
        f'[wechat]\nappid = "{appid}"\nsecret = "{secret}"\ntoken = "{CB_TOKEN}"\n'
        f'api_base = "{fake.base_url}"\ntoken_mode = "{token_mode}"\n{enc}\n'
        f"{server}\n{groups}\n[store]\npath = {json.dumps(store_path)}\n"
    )
    path = tmp_path / "kfrouter.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def doctor(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[int, str]:
    code = await asyncio.to_thread(main, ["doctor", "--config", str(path), *extra])
    out = capsys.readouterr().out
    assert SECRET not in out
    return code, out


def line(out: str, name: str) -> str:
    """The status line of check ``name`` plus its means/fix lines, whitespace collapsed."""
    lines = out.splitlines()
    for i, text in enumerate(lines):
        parts = text.split()
        if len(parts) >= 2 and parts[1] == name and parts[0] in ("ok", "warning", "problem"):
            block = [text]
            for follow in lines[i + 1 :]:
                if not follow.startswith(" "):
                    break
                block.append(follow)
            return " ".join(" ".join(block).split())
    raise AssertionError(f"no line for check {name!r} in:\n{out}")


def status(out: str, name: str) -> str:
    return line(out, name).split()[0]


# ------------------------------------------------------------------------------------------ clean


async def test_clean_run_exits_0_with_every_check(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await doctor(capsys, write_config(tmp_path, fake, safe=True))
    assert code == 0, out
    names = [
        "credentials",
        "kf-api",
        "agents",
        "agents-bound",
        "agents-online",
        "group-agents",
        "aes-key",
        "callback-token",
        "store",
        "upstream",
    ]
    for name in names:
        assert status(out, name) == "ok", line(out, name)
    assert "1 agent online: alice@test" in line(out, "agents-online")
    assert "round-trips a test message" in line(out, "aes-key")
    assert out.rstrip().endswith("all checks passed")


async def test_json_output_shape(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await doctor(capsys, write_config(tmp_path, fake), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert [c["name"] for c in data["checks"]][:3] == ["credentials", "kf-api", "agents"]
    for c in data["checks"]:
        assert set(c) == {"name", "status", "title", "detail", "fix"}
        assert c["status"] == "ok"


async def test_doctor_is_read_only(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "kfrouter.db"
    await doctor(capsys, write_config(tmp_path, fake))
    called = {ep for ep, n in fake.model.calls.items() if n}
    assert called <= {fo.STABLE_TOKEN, fo.KF_LIST, fo.KF_ONLINE}, called
    assert fake.model.calls[fo.STABLE_TOKEN] == 1
    # each answer is fetched once in a run, however many checks read it
    assert fake.model.calls[fo.KF_LIST] == fake.model.calls[fo.KF_ONLINE] == 1
    assert not store.exists()  # the store is checked, never created


# ------------------------------------------------------------------------------------------ 1. credentials


@pytest.mark.parametrize(
    ("token_mode", "how", "code_shown"),
    [
        ("stable", "wrong_secret", "40125"),
        ("classic", "wrong_secret", "40001"),
        ("stable", "reject_secret", "40125"),
    ],
)
async def test_wrong_secret(
    fake: FakeWeChat,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    token_mode: str,
    how: str,
    code_shown: str,
) -> None:
    if how == "reject_secret":
        fake.options.reject_secret = True
        cfg = write_config(tmp_path, fake, token_mode=token_mode)
    else:
        cfg = write_config(tmp_path, fake, token_mode=token_mode, secret="not_the_right_one")
    code, out = await doctor(capsys, cfg)
    assert code == 1
    text = line(out, "credentials")
    assert text.startswith("problem") and "AppSecret is wrong" in text and code_shown in text
    assert "开发者密码(AppSecret)" in text and "基本配置" in text and "KFROUTER_SECRET" in text
    assert status(out, "kf-api") == "warning" and "not checked" in line(out, "kf-api")
    assert "not_the_right_one" not in out


async def test_wrong_appid(fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await doctor(capsys, write_config(tmp_path, fake, appid="wx_someone_else"))
    assert code == 1
    text = line(out, "credentials")
    assert "does not know this AppID (40013)" in text
    assert "开发者ID(AppID)" in text and "wechat.appid" in text


async def test_ip_not_whitelisted_names_the_ip_wechat_saw(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.options.update(
        {
            "ip_whitelisted": False,
            "errmsg_overrides": {40164: "invalid ip 203.0.113.9 ipv6 ::ffff:203.0.113.9, not in whitelist"},
        }
    )
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    assert code == 1
    text = line(out, "credentials")
    assert "IP address 203.0.113.9 is not on the IP whitelist (40164)" in text
    assert "Add 203.0.113.9 to IP白名单" in text and "基本配置" in text


async def test_ip_not_whitelisted_without_ip_in_errmsg(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.options.ip_whitelisted = False  # the fake's default text has no address in it
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "credentials")
    assert code == 1 and "not on the IP whitelist (40164)" in text
    assert "public (egress) IP to IP白名单" in text
    assert not re.search(r"\d+\.\d+\.\d+\.\d+ is not", text)


async def test_secret_frozen(fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake.model.set_fault(fo.STABLE_TOKEN, Fault(errcode=40243))
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "credentials")
    assert code == 1 and "AppSecret is frozen (40243)" in text and "解冻" in text


async def test_token_endpoint_busy(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.model.set_fault(fo.STABLE_TOKEN, Fault(errcode=-1))
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "credentials")
    assert code == 1 and "system busy" in text and "again in a few minutes" in text
    assert fake.model.calls[fo.STABLE_TOKEN] == 2  # one retry, then the doctor reports


async def test_wechat_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Nowhere:
        base_url = f"http://127.0.0.1:{port}"

    code, out = await doctor(capsys, write_config(tmp_path, Nowhere()))  # type: ignore[arg-type]
    text = line(out, "credentials")
    assert code == 1 and "cannot reach the WeChat API" in text and "api_base" in text


# ------------------------------------------------------------------------------------------ 2. kf API


async def test_kf_api_not_enabled(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.options.kf_api_enabled = False
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    assert code == 1
    assert status(out, "credentials") == "ok"
    text = line(out, "kf-api")
    assert text.startswith("problem") and "新版客服功能" in text and "65400" in text
    assert "客服功能" in text and "wait a few minutes" in text
    for dependent in ("agents", "agents-bound", "agents-online", "group-agents"):
        assert status(out, dependent) == "warning" and "not checked" in line(out, dependent)


async def test_system_busy_on_every_kf_call_reads_as_not_enabled(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for ep in (fo.KF_LIST, fo.KF_ONLINE):
        fake.model.set_fault(ep, Fault(errcode=-1))
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "kf-api")
    assert code == 1 and "every customer-service call answers 'system busy' (-1)" in text
    assert "新版客服功能" in text


async def test_one_busy_answer_is_only_a_warning(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.model.set_fault(fo.KF_LIST, Fault(errcode=-1))  # getonlinekflist still works
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    assert status(out, "kf-api") == "warning" and "briefly busy" in line(out, "kf-api")
    # A transient busy answer is no misconfiguration: the run passes, and the checks that needed the
    # account list say they were not checked.
    assert code == 0
    for dependent in ("agents", "agents-bound", "group-agents"):
        assert status(out, dependent) == "warning" and "not checked" in line(out, dependent)
    assert status(out, "agents-online") == "ok"


async def test_kf_api_unauthorised(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.model.set_fault(fo.KF_LIST, Fault(errcode=48001))
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "kf-api")
    assert code == 1 and "not authorised" in text and "接口权限" in text


# ------------------------------------------------------------------------------------------ 3. agents


async def test_no_agent_accounts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_fake(APPID, SECRET) as f:
        code, out = await doctor(capsys, write_config(tmp_path, f, groups=""))
    text = line(out, "agents")
    assert code == 1 and "no customer-service (agent) accounts" in text and "kfaccount/add" in text


async def test_unbound_agents(fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = fake.clock.now()
    fake.model.set_agent("carol@test", now, bound=False)
    fake.model.set_agent("dave@test", now, bound=False)
    assert fake.model.invite_worker("dave@test", "dave_wechat", now)["errcode"] == 0
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "agents-bound")
    assert code == 1 and text.startswith("problem")
    assert "2 of 4 agent accounts are not bound" in text
    assert "carol@test (never invited)" in text
    expires = datetime.fromtimestamp(fake.model.agents["dave@test"].invite_expire, UTC)
    until = expires.strftime("%Y-%m-%d %H:%M UTC")
    assert f"dave@test (invitation for dave_wechat waiting to be accepted until {until})" in text
    assert "65402" in text and "inviteworker" in text and "accepts the invitation" in text


async def test_agents_unbound_switch(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.options.agents_unbound = True
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    assert code == 1 and "2 of 2 agent accounts are not bound" in line(out, "agents-bound")


async def test_nobody_online_is_a_warning(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.model.set_agent("alice@test", fake.clock.now(), status=0)
    code, out = await doctor(capsys, write_config(tmp_path, fake))
    text = line(out, "agents-online")
    assert text.startswith("warning") and "no agent is online" in text and "mpkf.weixin.qq.com" in text
    assert code == 0  # warnings do not fail the run
    assert "no problems, 1 warning" in out


# ------------------------------------------------------------------------------------------ 4. groups


async def test_groups_name_missing_agents(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = (
        '[[groups]]\nname = "general"\nagents = ["alice@test", "zoe@test"]\n'
        '[[groups]]\nname = "vip"\nagents = ["alice@shop"]\n'
        '[routing.aliases]\n"Zoe" = "zoe@test"\n'
    )
    code, out = await doctor(capsys, write_config(tmp_path, fake, groups=groups))
    text = line(out, "group-agents")
    assert code == 1 and text.startswith("problem")
    assert "2 agents named in the config do not exist in WeChat: zoe@test, alice@shop" in text
    assert "zoe@test (in groups[0] 'general', routing.aliases 'Zoe')" in text
    assert "alice@shop (in groups[1] 'vip')" in text
    assert "end in @test" in text and "kfrouter.toml" in text


# ------------------------------------------------------------------------------------------ 7, 8: local


async def test_store_directory_missing(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    code, out = await doctor(capsys, write_config(tmp_path, fake, store=str(missing / "kf.db")))
    text = line(out, "store")
    assert code == 1 and f"the store directory {missing} does not exist" in text and "mkdir -p" in text
    assert not missing.exists()


async def test_store_not_sqlite(fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello, not a database\n")
    code, out = await doctor(capsys, write_config(tmp_path, fake, store=str(other)))
    assert code == 1 and "is not a SQLite database" in line(out, "store")


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=405)  # a POST-only bot: still reachable

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield f"http://127.0.0.1:{server.port}/bot"


async def test_upstream_reachable(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str], upstream: str
) -> None:
    code, out = await doctor(capsys, write_config(tmp_path, fake, upstream=upstream))
    text = line(out, "upstream")
    assert code == 0 and text.startswith("ok") and "HTTP 405" in text and upstream in text


async def test_upstream_unreachable_hides_userinfo(
    fake: FakeWeChat, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://bot:hunter2pass@127.0.0.1:{port}/hook"
    code, out = await doctor(capsys, write_config(tmp_path, fake, upstream=url))
    text = line(out, "upstream")
    assert code == 1 and f"the upstream http://127.0.0.1:{port}/hook cannot be reached" in text
    assert "hunter2pass" not in out


# ------------------------------------------------------------------------------------------ config


async def test_config_that_does_not_load_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[wechat]\nappid = "wx1"\n')
    code = await asyncio.to_thread(main, ["doctor", "--config", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "wechat.secret: is required" in err
    code = await asyncio.to_thread(main, ["doctor", "--config", str(bad), "--json"])
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 2 and data["ok"] is False and data["checks"][0]["name"] == "config"


async def test_one_agent_account_is_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Issue 15 item 8: "1 agent accounts" read wrong.
    async with running_fake(APPID, SECRET) as f:
        f.model.set_agent("alice@test", f.clock.now(), status=1)
        groups = '[[groups]]\nname = "general"\nagents = ["alice@test"]\n'
        _code, out = await doctor(capsys, write_config(tmp_path, f, groups=groups))
    assert "1 agent accounts" not in out and "all 1 agent" not in out
    assert line(out, "agents").startswith("ok agents 1 agent account: alice@test")
    assert "(1 agent account)" in line(out, "kf-api")
    assert "the only agent account is bound to a WeChat user" in line(out, "agents-bound")
