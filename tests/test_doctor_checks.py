"""Unit tests of ``router.doctor``: ``explain``, the 40164 IP reader, the local checks (AES key, callback
token, store path) on configs the loader would refuse, ``run_checks`` as the daemon calls it, and the
text rendering. The checks that talk to WeChat are covered end to end in tests/test_doctor.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.config import Config
from kfrouter.router.doctor import (
    ADVICE,
    CHECKS,
    CheckResult,
    Probe,
    all_ok,
    as_json,
    check_aes_key,
    check_callback_token,
    check_store_path,
    check_upstream,
    explain,
    ip_from_errmsg,
    run_checks,
)
from kfrouter.router.doctor_cli import render_text
from kfrouter.router.edges.client import WeChatClient
from kfrouter.sim import fake_options as fo
from kfrouter.sim.fake_options import Fault
from kfrouter.sim.fake_server import FakeWeChat, running_fake
from kfrouter.sim.wechat_model import INVITE_TTL_S

APPID = "wx_doctor_unit"
SECRET = "unit_secret_value"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def make_config(
    tmp_path: Path,
    *,
    groups: list[dict[str, Any]] | None = None,
    upstream: str | None = None,
    **wechat: object,
) -> Config:
    data: dict[str, Any] = {
        "wechat": {"appid": APPID, "secret": SECRET, "token": "goodToken1", **wechat},
        "server": {"admin_token": "admin-token-0123456789"},
        "store": {"path": str(tmp_path / "kf.db")},
    }
    if groups is not None:
        data["groups"] = groups
    if upstream is not None:
        data["server"].update(upstream_url=upstream, upstream_timeout_s=0.2)
    return Config.from_dict(data, source="unit.toml", base_dir=tmp_path, env={})


def probe(cfg: Config) -> Probe:
    return Probe(cfg, cast(WeChatClient, None))  # local checks never touch the client


def with_wechat(cfg: Config, **changes: Any) -> Config:
    """A config the loader would refuse (the checks must still judge it)."""
    return attrs.evolve(cfg, wechat=attrs.evolve(cfg.wechat, **changes))


def with_store(cfg: Config, path: Path | str) -> Config:
    return attrs.evolve(cfg, store=attrs.evolve(cfg.store, path=Path(path)))


# ------------------------------------------------------------------------------------ explain


def test_explain_65400_names_the_feature_and_the_fix() -> None:
    text = explain(65400)
    assert text is not None
    assert "新版客服功能" in text and "What to do:" in text and "客服功能" in text


def test_explain_unknown_code_is_none() -> None:
    assert explain(0) is None
    assert explain(65414) is None  # served by another agent: routine, no operator needed
    assert explain(123456) is None


def test_explain_40001_depends_on_where_it_came_from() -> None:
    during = explain(40001)
    at_token = explain(40001, token_request=True)
    assert during is not None and at_token is not None
    assert "stable_token" in during and "AppSecret is wrong" not in during
    assert "AppSecret is wrong" in at_token and "开发者密码(AppSecret)" in at_token


@pytest.mark.parametrize("code", sorted(ADVICE))
def test_every_explanation_names_its_code_and_a_fix(code: int) -> None:
    text = explain(code)
    assert text is not None and f"({code})" in text
    meaning, _, fix = text.partition(" What to do: ")
    assert meaning and len(fix) > 20


# ------------------------------------------------------------------------------------ IP in 40164


@pytest.mark.parametrize(
    ("errmsg", "ip"),
    [
        ("invalid ip 47.100.1.2 ipv6 ::ffff:47.100.1.2, not in whitelist rid: 1-2-3", "47.100.1.2"),
        ("invalid ip 203.0.113.9, not in whitelist", "203.0.113.9"),
        ("invalid ip 203.0.113.9.", "203.0.113.9"),
        ("invalid ip 2001:db8::7 ipv6 2001:db8::7, not in whitelist", "2001:db8::7"),
        ("invalid ip, not in whitelist", None),
        ("invalid ip 999.1.1.1, not in whitelist", None),
        ("system error", None),
    ],
)
def test_ip_from_errmsg(errmsg: str, ip: str | None) -> None:
    assert ip_from_errmsg(errmsg) == ip


@given(st.text(max_size=200))
def test_ip_from_errmsg_is_total(errmsg: str) -> None:
    found = ip_from_errmsg(errmsg)
    if found is not None:
        ipaddress.ip_address(found)  # only real addresses are ever quoted back


@given(st.ip_addresses())
def test_ip_from_errmsg_reads_any_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    assert ip_from_errmsg(f"invalid ip {ip} ipv6 ::ffff:1.2.3.4, not in whitelist rid: ab") == str(ip)


# ------------------------------------------------------------------------------------ 5. AES key


async def test_aes_key_not_used_in_plain_mode(tmp_path: Path) -> None:
    r = await check_aes_key(probe(make_config(tmp_path)))
    assert r.status == "ok" and "not used" in r.title


async def test_aes_key_round_trips(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, encoding="safe", aes_key=AES_KEY)
    r = await check_aes_key(probe(cfg))
    assert r.status == "ok" and "round-trips a test message" in r.title and APPID in r.title


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (AES_KEY[:42], "must be 43 characters, got 42"),
        (AES_KEY[:42] + "+", "only ASCII letters and digits"),
    ],
)
async def test_aes_key_malformed(tmp_path: Path, key: str, why: str) -> None:
    cfg = with_wechat(make_config(tmp_path, encoding="safe", aes_key=AES_KEY), aes_key=key)
    r = await check_aes_key(probe(cfg))
    assert r.status == "problem" and "wechat.aes_key is not a valid EncodingAESKey" in r.title
    assert why in r.detail and "服务器配置" in r.fix and "EncodingAESKey" in r.fix
    assert key not in r.detail + r.fix + r.title


async def test_previous_aes_key_malformed(tmp_path: Path) -> None:
    cfg = with_wechat(make_config(tmp_path, encoding="safe", aes_key=AES_KEY), previous_aes_key="x" * 40)
    r = await check_aes_key(probe(cfg))
    assert r.status == "problem" and "previous_aes_key" in r.title


async def test_aes_key_with_an_appid_the_codec_refuses(tmp_path: Path) -> None:
    cfg = with_wechat(make_config(tmp_path, encoding="safe", aes_key=AES_KEY), appid="")
    r = await check_aes_key(probe(cfg))
    assert r.status == "problem" and "does not survive encryption" in r.title and "wechat.appid" in r.fix


# ------------------------------------------------------------------------------------ 6. callback token


@pytest.mark.parametrize(
    ("token", "why"),
    [("ab", "has 2 characters"), ("x" * 33, "has 33 characters"), ("bad-token!", "other than ASCII letters")],
)
async def test_callback_token_format(tmp_path: Path, token: str, why: str) -> None:
    r = await check_callback_token(probe(with_wechat(make_config(tmp_path), token=token)))
    assert r.status == "problem" and why in r.detail
    assert "服务器配置" in r.fix and "KFROUTER_TOKEN" in r.fix
    assert token not in r.detail


async def test_callback_token_ok(tmp_path: Path) -> None:
    assert (await check_callback_token(probe(make_config(tmp_path)))).status == "ok"


# ------------------------------------------------------------------------------------ 7. store


async def test_store_new_file_in_writable_directory(tmp_path: Path) -> None:
    r = await check_store_path(probe(make_config(tmp_path)))
    assert r.status == "ok" and "will be created" in r.title
    assert not (tmp_path / "kf.db").exists()


async def test_store_existing_database(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "kf.db"
    sqlite3.connect(db).execute("create table t (x)").connection.close()
    r = await check_store_path(probe(make_config(tmp_path)))
    assert r.status == "ok" and "exists and is writable" in r.title


async def test_store_path_is_a_directory(tmp_path: Path) -> None:
    r = await check_store_path(probe(with_store(make_config(tmp_path), tmp_path)))
    assert r.status == "problem" and "not a regular file" in r.title


async def test_store_parent_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "plain-file"
    f.write_text("x")
    r = await check_store_path(probe(with_store(make_config(tmp_path), f / "kf.db")))
    assert r.status == "problem" and "is not a directory" in r.title


async def test_store_in_memory_is_a_warning(tmp_path: Path) -> None:
    r = await check_store_path(probe(with_store(make_config(tmp_path), ":memory:")))
    assert r.status == "warning" and "lost" in r.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
async def test_store_directory_not_writable(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = await check_store_path(probe(with_store(make_config(tmp_path), ro / "kf.db")))
    finally:
        ro.chmod(0o755)
    assert r.status == "problem" and "not writable" in r.title


# ------------------------------------------------------------------------------------ texts against the fake

ALICE_AND_BOB = [{"name": "general", "agents": ["alice@test", "bob@test"]}]


def alice_online_bob_offline(fake: FakeWeChat) -> None:
    fake.model.set_agent("alice@test", fake.clock.now(), status=1)
    fake.model.set_agent("bob@test", fake.clock.now(), status=0)


async def texts(
    tmp_path: Path, setup: Callable[[FakeWeChat], None], **config: Any
) -> dict[str, tuple[str, str, str, str]]:
    """Each check's (status, title, detail, fix) against a fake WeChat that ``setup`` prepared."""
    async with running_fake(APPID, SECRET) as fake:
        setup(fake)
        cfg = make_config(tmp_path, api_base=fake.base_url, **config)
        async with aiohttp.ClientSession() as http:
            client = WeChatClient(http, APPID, SECRET, base_url=fake.base_url, retries=0)
            results = await run_checks(cfg, client)
    return {r.name: (r.status, r.title, r.detail, r.fix) for r in results}


async def test_texts_of_a_clean_run(tmp_path: Path) -> None:
    got = await texts(tmp_path, alice_online_bob_offline, groups=ALICE_AND_BOB)
    talking_to_wechat = ("credentials", "kf-api", "agents", "agents-bound", "group-agents")
    assert {name: got[name] for name in talking_to_wechat} == {
        "credentials": (
            "ok",
            "AppID and AppSecret accepted (access token from /cgi-bin/stable_token)",
            "",
            "",
        ),
        "kf-api": ("ok", "customer-service API available (2 agent accounts)", "", ""),
        "agents": ("ok", "2 agent accounts: alice@test, bob@test", "", ""),
        "agents-bound": ("ok", "all 2 agent accounts are bound to a WeChat user", "", ""),
        "group-agents": ("ok", "all 2 agents named in the config exist", "", ""),
    }
    one = await texts(tmp_path, alice_online_bob_offline, groups=[{"name": "g", "agents": ["bob@test"]}])
    assert one["group-agents"] == ("ok", "the only agent named in the config exists", "", "")


async def test_texts_without_agent_accounts_or_named_agents(tmp_path: Path) -> None:
    got = await texts(tmp_path, lambda _fake: None)
    assert got["agents-bound"] == ("ok", "no agent accounts to check (see agents)", "", "")
    assert got["group-agents"] == (
        "ok",
        "the config names no agents (every agent serves every customer)",
        "",
        "",
    )


def rejected_and_expired_invitations(fake: FakeWeChat) -> None:
    alice_online_bob_offline(fake)
    now = fake.clock.now()
    for kf, wx in (("carol@test", "carol_wx"), ("dave@test", "dave_wx")):
        fake.model.set_agent(kf, now, bound=False)
        assert fake.model.invite_worker(kf, wx, now)["errcode"] == 0
    assert fake.model.answer_invite("carol@test", False, now)["errcode"] == 0
    fake.clock.advance(INVITE_TTL_S)
    fake.model.set_fault(fo.KF_ONLINE, Fault(errcode=48001))


async def test_texts_of_rejected_and_expired_invitations_and_an_online_list_error(tmp_path: Path) -> None:
    got = await texts(tmp_path, rejected_and_expired_invitations)
    status, title, _detail, _fix = got["agents-bound"]
    assert status == "problem"
    assert title == (
        "2 of 4 agent accounts are not bound to a WeChat user: carol@test (invitation rejected), "
        "dave@test (invitation expired)"
    )
    # getkflist answered, getonlinekflist did not: agents-online reads the error itself.
    status, title, detail, fix = got["agents-online"]
    assert (status, title) == ("problem", "this account is not authorised for the API (48001)")
    assert detail.startswith(f"{ADVICE[48001].meaning} (WeChat said: ") and fix == ADVICE[48001].fix


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """An upstream that answers /broken with HTTP 502 and never answers /stuck."""
    never = asyncio.Event()

    async def broken(_request: web.Request) -> web.Response:
        return web.Response(status=502)

    async def stuck(_request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("HEAD", "/broken", broken)
    app.router.add_route("HEAD", "/stuck", stuck)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/broken",
            (
                "warning",
                "the upstream {url} answered HTTP 502",
                "It is reachable but reports a server error; forwarded pushes may fail.",
                "Check the upstream service's logs.",
            ),
        ),
        (
            "/stuck",
            (
                "problem",
                "the upstream {url} did not answer within 0.2 s",
                "Pushes that are not for kfrouter are forwarded there; WeChat gives up after 5 s.",
                "Start or speed up the upstream service, or fix server.upstream_url / upstream_timeout_s.",
            ),
        ),
    ],
)
async def test_upstream_that_errs_or_does_not_answer_in_time(
    tmp_path: Path, upstream: str, path: str, expected: tuple[str, str, str, str]
) -> None:
    url = upstream + path
    r = await check_upstream(probe(make_config(tmp_path, upstream=url)))
    status, title, detail, fix = expected
    assert (r.status, r.title, r.detail, r.fix) == (status, title.format(url=url), detail, fix)


# ------------------------------------------------------------------------------------ run_checks


async def test_run_checks_as_the_daemon_calls_it(tmp_path: Path) -> None:
    async with running_fake(APPID, SECRET) as fake:
        fake.model.set_agent("alice@test", fake.clock.now(), status=1)
        fake.options.kf_api_enabled = False
        cfg = make_config(tmp_path, api_base=fake.base_url)
        async with aiohttp.ClientSession() as http:
            client = WeChatClient(http, APPID, SECRET, base_url=fake.base_url, retries=0)
            results = await run_checks(cfg, client)
    assert [r.name for r in results][:2] == ["credentials", "kf-api"]
    assert len(results) == len(CHECKS)
    kf = results[1]
    assert kf.status == "problem" and "新版客服功能" in kf.title
    assert not all_ok(results)
    assert as_json(results)["ok"] is False


async def test_a_crashing_check_becomes_a_problem_and_the_rest_still_run(tmp_path: Path) -> None:
    async def check_broken(_p: Probe) -> CheckResult:
        raise RuntimeError("boom")

    results = await run_checks(
        make_config(tmp_path), cast(WeChatClient, None), checks=(check_broken, check_callback_token)
    )
    assert results[0].name == "broken" and results[0].status == "problem"
    assert "RuntimeError: boom" in results[0].detail
    assert results[1].status == "ok"


def test_check_result_refuses_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        CheckResult(name="x", status="fine", title="t")  # type: ignore[arg-type]


def test_render_text_layout() -> None:
    results = [
        CheckResult(name="credentials", status="ok", title="fine"),
        CheckResult(name="kf-api", status="problem", title="broken", detail="what", fix="do this"),
        CheckResult(name="agents-online", status="warning", title="nobody", detail="wait", fix="log in"),
    ]
    lines = render_text(results, source="k.toml").splitlines()
    assert lines[0] == "kfrouter doctor: k.toml"
    assert lines[1].split() == ["ok", "credentials", "fine"]
    assert lines[2].split() == ["problem", "kf-api", "broken"]
    assert lines[3].strip() == "means: what" and lines[4].strip() == "fix:   do this"
    assert lines[-1].startswith("1 problem, 1 warning")
    assert render_text(results[:1]).splitlines() == ["ok       credentials  fine", "all checks passed"]
