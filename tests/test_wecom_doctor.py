"""The [wecom] config table and the WeCom doctor checks against the fake WeCom over HTTP."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import MappingProxyType
from typing import Any

import aiohttp
import attrs
import pytest
from wecom_support import AES_KEY, CB_TOKEN, CORPID, SECRET, T0

from kfrouter.router import config as cfg
from kfrouter.router.clock import SteadyClock
from kfrouter.router.edges.wecom_client import WeComKfClient
from kfrouter.router.wecom_config import WeComConfig, load_wecom
from kfrouter.router.wecom_doctor import run_wecom_checks
from kfrouter.sim import wecom_options as wo
from kfrouter.sim.fake_options import Fault
from kfrouter.sim.wecom_server import FakeWeCom, running_fake_wecom

GOOD = f"""
[wecom]
corpid = "{CORPID}"
secret = "{SECRET}"
token = "{CB_TOKEN}"
aes_key = "{AES_KEY}"
open_kfids = ["wkA", "wkB"]
"""


def test_config_reads_and_validates() -> None:
    c = load_wecom(tomllib.loads(GOOD), env={})
    assert c == WeComConfig(
        corpid=CORPID, secret=SECRET, token=CB_TOKEN, aes_key=AES_KEY, open_kfids=("wkA", "wkB")
    )
    assert SECRET not in repr(c) and AES_KEY not in repr(c) and CB_TOKEN not in repr(c)
    bad = GOOD.replace('"wkA", "wkB"', '"wkA", 7').replace(AES_KEY, "short").replace(f'"{CORPID}"', '"w w"')
    bad += 'api_base = "http://qyapi.weixin.qq.com"\nsecrte = "typo"\n'
    with pytest.raises(cfg.ConfigError) as e:
        load_wecom(tomllib.loads(bad), source="kfrouter.toml", env={})
    lines = str(e.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "wecom.corpid",
        "wecom.aes_key",
        "wecom.open_kfids[1]",
        "wecom.api_base",
        "wecom.secrte",
    ]
    assert "got a value of 5 characters" in lines[1]  # the key itself is never printed
    with pytest.raises(cfg.ConfigError, match=r"wecom\.open_kfids: is required"):
        load_wecom(tomllib.loads(GOOD.replace('open_kfids = ["wkA", "wkB"]', "")), env={})
    with pytest.raises(cfg.ConfigError, match=r"\[wecom\] table is missing"):
        load_wecom({"wechat": {}}, env={})


def test_secret_from_the_environment_once_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        cfg, "ENV_VARS", MappingProxyType({**cfg.ENV_VARS, "wecom.secret": "KFROUTER_WECOM_SECRET"})
    )
    c = load_wecom(tomllib.loads(GOOD), env={"KFROUTER_WECOM_SECRET": "from-env"})
    assert c.secret == "from-env"
    c = load_wecom(
        tomllib.loads(GOOD.replace(f'secret = "{SECRET}"\n', "")), env={"KFROUTER_WECOM_SECRET": "only-env"}
    )
    assert c.secret == "only-env"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with running_fake_wecom(CORPID, SECRET, clock=SteadyClock(T0, frozen=True)) as f:
        for kfid in ("wkA", "wkB"):
            f.model.add_account(kfid, open_kfid=kfid)
            f.model.add_servicer(kfid, "alice")
        yield f


async def doctor(
    fake: FakeWeCom,
    http: aiohttp.ClientSession,
    *,
    retries: int = 0,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **changes: object,
) -> dict[str, tuple[str, str]]:
    """Each check's (status, 'title | detail | fix'); ``retries`` and ``pause`` (its sleep): the client's."""
    config = attrs.evolve(load_wecom(tomllib.loads(GOOD), env={}), api_base=fake.base_url, **changes)
    client = WeComKfClient(
        http, config.corpid, config.secret, base_url=config.api_base, retries=retries, sleep=pause
    )
    return {
        r.name: (r.status, f"{r.title} | {r.detail} | {r.fix}")
        for r in await run_wecom_checks(config, client)
    }


async def test_doctor_all_ok(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    results = await doctor(fake, http)
    assert {name: status for name, (status, _t) in results.items()} == {
        "wecom-credentials": "ok",
        "wecom-accounts": "ok",
        "wecom-servicers": "ok",
        "wecom-callback-token": "ok",
        "wecom-aes-key": "ok",
    }
    assert fake.model.calls["cgi-bin/kf/service_state/trans"] == 0  # read-only
    # each answer is fetched once in a run, however many checks read it
    assert fake.model.calls[wo.GETTOKEN] == fake.model.calls[wo.ACCOUNT_LIST] == 1
    assert fake.model.calls[wo.SERVICER_LIST] == 2  # one per configured kf account


async def test_doctor_credentials(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    results = await doctor(fake, http, secret="wrong-secret")
    assert (
        results["wecom-credentials"][0] == "problem" and "可调用接口的应用" in results["wecom-credentials"][1]
    )
    assert "wrong-secret" not in str(results)
    assert results["wecom-accounts"][0] == "warning" and "not checked" in results["wecom-accounts"][1]
    fake.options.ip_allowed = False
    results = await doctor(fake, http)
    assert "企业可信IP" in results["wecom-credentials"][1]


class GettokenAfterPause:
    """The client's sleep for a test: records each pause (no waiting) and then sets gettoken's fault to
    ``then``, so the fake answers the doctor's next ask differently."""

    def __init__(self, fake: FakeWeCom, then: Fault | None) -> None:
        self.fake, self.then = fake, then
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.fake.model.set_fault(wo.GETTOKEN, self.then)


# aiohttp itself sends an idempotent GET again once when the connection drops, so the dropped gettoken
# fails until the doctor pauses (then the fake answers normally).
@pytest.mark.parametrize("fault", [{"errcode": -1}, {"drop_connection": True}], ids=["busy", "network"])
async def test_doctor_asks_for_the_token_again_after_a_busy_or_network_failure(
    fake: FakeWeCom, http: aiohttp.ClientSession, fault: dict[str, Any]
) -> None:
    fake.model.set_fault(wo.GETTOKEN, Fault(**fault))
    pause = GettokenAfterPause(fake, None)
    results = await doctor(fake, http, retries=2, pause=pause)
    assert results["wecom-credentials"] == (
        "ok",
        "corp id and secret accepted (access token from gettoken) |  | ",
    )
    assert {status for status, _text in results.values()} == {"ok"}
    assert pause.pauses == [0.2]  # one more ask, after the client's backoff_base


@pytest.mark.parametrize(
    ("first", "then", "title"),
    [
        ({"drop_connection": True}, {"errcode": -1}, "WeCom answered 'system busy' (-1)"),
        ({"errcode": -1}, {"drop_connection": True}, "cannot reach the WeCom API"),
    ],
    ids=["network-then-busy", "busy-then-network"],
)
async def test_doctor_gives_up_on_the_token_naming_the_last_error(
    fake: FakeWeCom, http: aiohttp.ClientSession, first: dict[str, Any], then: dict[str, Any], title: str
) -> None:
    fake.model.set_fault(wo.GETTOKEN, Fault(**first))
    pause = GettokenAfterPause(fake, Fault(**then))
    results = await doctor(fake, http, retries=2, pause=pause)
    status, text = results["wecom-credentials"]
    assert status == "problem" and said(text)[0] == title
    assert pause.pauses == [0.2, 0.4]  # client.retries more asks, backing off from client.backoff_base
    assert results["wecom-accounts"] == results["wecom-servicers"] == NO_TOKEN


async def test_doctor_does_not_ask_again_after_an_answer_a_retry_cannot_change(
    fake: FakeWeCom, http: aiohttp.ClientSession
) -> None:
    fake.model.set_fault(wo.GETTOKEN, Fault(errcode=-1, times=1))  # busy once, then the IP is refused
    fake.options.ip_allowed = False
    pause = GettokenAfterPause(fake, None)
    status, text = (await doctor(fake, http, retries=2, pause=pause))["wecom-credentials"]
    assert status == "problem" and said(text)[0] == ADVICE_60020 and "企业可信IP" in text
    assert pause.pauses == [0.2] and fake.model.calls[wo.GETTOKEN] == 2


async def test_doctor_accounts(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    results = await doctor(fake, http, open_kfids=("wkA", "wkGONE"))
    status, text = results["wecom-accounts"]
    assert status == "problem" and "wkGONE" in text and "wkA (wkA)" in text
    fake.model.set_manage_privilege("wkB", False)
    status, text = (await doctor(fake, http))["wecom-accounts"]
    assert status == "problem" and "wkB" in text and "通过API管理微信客服账号" in text
    fake.options.refuse_kf_calls = 95012
    status, text = (await doctor(fake, http))["wecom-accounts"]
    assert status == "problem" and "95012" in text and "可调用接口的应用" in text


async def test_doctor_servicers(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    fake.model.add_account("empty", open_kfid="wkEMPTY")
    status, text = (await doctor(fake, http, open_kfids=("wkA", "wkEMPTY")))["wecom-servicers"]
    assert status == "problem" and "wkEMPTY" in text and "接待人员" in text
    fake.model.add_department("wkEMPTY", 5)
    assert (await doctor(fake, http, open_kfids=("wkEMPTY",)))["wecom-servicers"][0] == "warning"
    fake.model.set_servicer_status("alice", 1, T0)
    status, text = (await doctor(fake, http))["wecom-servicers"]
    assert status == "warning" and "接待中" in text


async def test_doctor_counts_each_servicer_once(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    # alice serves both wkA and wkB: one person 接待中
    assert (await doctor(fake, http))["wecom-servicers"] == (
        "ok",
        "servicers bound; 1 servicer 接待中 now |  | ",
    )
    fake.model.add_servicer("wkB", "bob")
    fake.model.add_servicer("wkB", "carol", status=1)  # 停止接待: bound but not counted
    assert (await doctor(fake, http))["wecom-servicers"] == (
        "ok",
        "servicers bound; 2 servicers 接待中 now |  | ",
    )


async def test_doctor_callback_settings(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    results = await doctor(fake, http, token="t!", aes_key="x" * 42)
    assert results["wecom-callback-token"][0] == "problem"
    assert results["wecom-aes-key"][0] == "problem" and "43" in results["wecom-aes-key"][1]
    assert "x" * 42 not in str(results)


# The words of every check, pinned: the checks share their code with the Official Account doctor
# (router/doctor_base.py), and a change there must not change what a WeCom operator reads.

NO_TOKEN = ("warning", "not checked: no access token (see wecom-credentials) |  | ")
ADVICE_60020 = "this server's IP address is not a trusted IP of the app (60020)"
ADMIN = "the WeCom admin console (企业微信管理后台, work.weixin.qq.com)"
CALLBACK = f"{ADMIN} → 应用管理 → 微信客服 → API → 接收事件服务器 (URL, Token, EncodingAESKey)"
SWITCH_ON = (
    f"Switch the API on in {ADMIN} → 应用管理 → 微信客服 → API, and list kfrouter's app in "
    "应用管理 → 微信客服 → API → 可调用接口的应用."
)


def said(text: str) -> tuple[str, str, str]:
    """(title, the detail up to WeCom's own errmsg, fix) of a 'title | detail | fix' text."""
    title, detail, fix = text.split(" | ")
    return title, detail.partition(": ")[0], fix


async def test_doctor_texts_when_all_is_well(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    assert await doctor(fake, http) == {
        "wecom-credentials": ("ok", "corp id and secret accepted (access token from gettoken) |  | "),
        "wecom-accounts": ("ok", "all 2 configured kf accounts exist and are managed by this app |  | "),
        "wecom-servicers": ("ok", "servicers bound; 1 servicer 接待中 now |  | "),
        "wecom-callback-token": ("ok", "callback Token has WeCom's format (3-32 letters/digits) |  | "),
        "wecom-aes-key": (
            "ok",
            f"EncodingAESKey is 43 characters and round-trips a test message for {CORPID} |  | ",
        ),
    }
    assert (await doctor(fake, http, open_kfids=("wkA",)))["wecom-accounts"] == (
        "ok",
        "the only configured kf account exists and is managed by this app |  | ",
    )


async def test_doctor_texts_of_a_busy_or_unknown_token_answer(
    fake: FakeWeCom, http: aiohttp.ClientSession
) -> None:
    fake.model.set_fault(wo.GETTOKEN, Fault(errcode=-1))
    results = await doctor(fake, http)
    status, text = results["wecom-credentials"]
    assert status == "problem"
    assert said(text) == (
        "WeCom answered 'system busy' (-1)",
        "/cgi-bin/gettoken",
        "Run the doctor again in a few minutes.",
    )
    assert results["wecom-accounts"] == results["wecom-servicers"] == NO_TOKEN
    fake.model.set_fault(wo.GETTOKEN, Fault(errcode=40999))
    status, text = (await doctor(fake, http))["wecom-credentials"]
    assert status == "problem"
    assert said(text) == (
        "WeCom answered errcode 40999",
        "/cgi-bin/gettoken",
        "Look the errcode up at https://open.work.weixin.qq.com/devtool/query and run the doctor again.",
    )


async def test_doctor_texts_when_the_kf_api_is_off(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    fake.options.refuse_kf_calls = 95017
    results = await doctor(fake, http)
    status, text = results["wecom-accounts"]
    title, detail, fix = text.split(" | ")
    assert status == "problem" and title == "the 微信客服 API is switched off (95017)" and fix == SWITCH_ON
    assert detail.startswith("The API switch of 微信客服 is off, so every kf call is refused. (WeCom said: ")
    assert results["wecom-servicers"] == (
        "warning",
        "not checked: the kf account list could not be read (see wecom-accounts) |  | ",
    )


async def test_doctor_texts_of_servicer_list_answers(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    fake.model.set_fault(wo.SERVICER_LIST, Fault(errcode=95017))
    status, text = (await doctor(fake, http))["wecom-servicers"]
    assert status == "problem" and text.startswith("the 微信客服 API is switched off (95017) | ")
    assert text.endswith(f" | {SWITCH_ON}")
    fake.model.set_fault(wo.SERVICER_LIST, None)
    for kfid in ("wkD", "wkE"):
        fake.model.add_account(kfid, open_kfid=kfid)
        fake.model.add_department(kfid, 5)
    means = (
        " | kf/servicer/list names departments, not people, so kfrouter cannot see who is 接待中."
        " | Add the people as 接待人员 individually so kfrouter can route to them."
    )
    assert (await doctor(fake, http, open_kfids=("wkD",)))["wecom-servicers"] == (
        "warning",
        "wkD has only departments as servicers" + means,
    )
    assert (await doctor(fake, http, open_kfids=("wkD", "wkE")))["wecom-servicers"] == (
        "warning",
        "wkD, wkE have only departments as servicers" + means,
    )


async def test_doctor_texts_of_bad_callback_settings(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    results = await doctor(fake, http, token="t!", aes_key="x" * 42)
    assert results["wecom-callback-token"] == (
        "problem",
        "the callback Token is not in WeCom's format"
        " | token has 2 characters; WeChat requires 3 to 32. WeCom signs every push with this Token; a"
        " mismatch rejects every push."
        f" | Set wecom.token to exactly the Token shown in {CALLBACK}.",
    )
    assert results["wecom-aes-key"] == (
        "problem",
        "wecom.aes_key is not a valid EncodingAESKey"
        " | wecom.aes_key must be 43 characters, got 42 characters. An EncodingAESKey is 43 letters or"
        " digits (base64 of a 32-byte AES key); WeCom always encrypts callbacks."
        f" | Copy the key again from {CALLBACK}, or generate a new one there (随机生成) and update both sides.",
    )
