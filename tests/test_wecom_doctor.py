"""The [wecom] config table and the WeCom doctor checks against the fake WeCom over HTTP."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from types import MappingProxyType

import aiohttp
import attrs
import pytest
from wecom_support import AES_KEY, CB_TOKEN, CORPID, SECRET, T0

from kfrouter.router import config as cfg
from kfrouter.router.clock import SteadyClock
from kfrouter.router.edges.wecom_client import WeComKfClient
from kfrouter.router.wecom_config import WeComConfig, load_wecom
from kfrouter.router.wecom_doctor import run_wecom_checks
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
    fake: FakeWeCom, http: aiohttp.ClientSession, **changes: object
) -> dict[str, tuple[str, str]]:
    config = attrs.evolve(load_wecom(tomllib.loads(GOOD), env={}), api_base=fake.base_url, **changes)
    client = WeComKfClient(http, config.corpid, config.secret, base_url=config.api_base, retries=0)
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


async def test_doctor_callback_settings(fake: FakeWeCom, http: aiohttp.ClientSession) -> None:
    results = await doctor(fake, http, token="t!", aes_key="x" * 42)
    assert results["wecom-callback-token"][0] == "problem"
    assert results["wecom-aes-key"][0] == "problem" and "43" in results["wecom-aes-key"][1]
    assert "x" * 42 not in str(results)
