"""A third-party WeCom SDK works unchanged against the fake WeCom: wechatpy's enterprise ``WeChatClient``
(sync, requests-based) fetches its token from ``gettoken`` and calls the 微信客服 endpoints through its
generic ``get``/``post`` (wechatpy 1.8 has no kf helpers). Only the network is redirected: a requests
transport adapter rewrites ``https://qyapi.weixin.qq.com`` to the fake's base URL. Skipped when wechatpy
is not installed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

wechatpy_enterprise = pytest.importorskip("wechatpy.enterprise")
requests = pytest.importorskip("requests")

from wechatpy.exceptions import WeChatClientException  # noqa: E402
from wecom_support import CORPID, SECRET, T0  # noqa: E402

from kfrouter.router.clock import SteadyClock  # noqa: E402
from kfrouter.sim.wecom_server import FakeWeCom, running_fake_wecom  # noqa: E402

REAL_ORIGIN = "https://qyapi.weixin.qq.com"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Redirect(requests.adapters.HTTPAdapter):  # type: ignore[misc,name-defined]
    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def send(self, request: Any, **kwargs: Any) -> Any:
        request.url = request.url.replace(REAL_ORIGIN, self.base_url, 1)
        return super().send(request, **kwargs)


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeCom]:
    async with running_fake_wecom(CORPID, SECRET, clock=SteadyClock(T0, frozen=True)) as f:
        yield f


def sdk_for(fake: FakeWeCom) -> Any:
    client = wechatpy_enterprise.WeChatClient(CORPID, SECRET)
    client._http.mount(REAL_ORIGIN + "/", _Redirect(fake.base_url))
    return client


async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_wechatpy_enterprise_client_drives_kf(fake: FakeWeCom) -> None:
    m = fake.model
    kfid = m.add_account("咨询客服", open_kfid="wkSDK")
    m.add_servicer(kfid, "zhangsan")
    m.customer_message(kfid, "wmCUST", T0, "我要找人工")
    sdk = sdk_for(fake)
    accounts = await run(sdk.post, "kf/account/list", data={"offset": 0, "limit": 100})
    assert accounts["account_list"][0]["open_kfid"] == kfid
    servicers = await run(sdk.get, "kf/servicer/list", params={"open_kfid": kfid})
    assert servicers["servicer_list"] == [{"userid": "zhangsan", "status": 0}]
    synced = await run(sdk.post, "kf/sync_msg", data={"open_kfid": kfid, "limit": 1000})
    assert [x["text"]["content"] for x in synced["msg_list"]] == ["我要找人工"]
    pool = await run(
        sdk.post,
        "kf/service_state/trans",
        data={"open_kfid": kfid, "external_userid": "wmCUST", "service_state": 2},
    )
    sent = await run(
        sdk.post,
        "kf/send_msg_on_event",
        data={"code": pool["msg_code"], "msgtype": "text", "text": {"content": "请稍候，您排在第 1 位"}},
    )
    assert sent["errcode"] == 0 and m.sent[-1]["body"] == {"content": "请稍候，您排在第 1 位"}
    await run(
        sdk.post,
        "kf/service_state/trans",
        data={
            "open_kfid": kfid,
            "external_userid": "wmCUST",
            "service_state": 3,
            "servicer_userid": "zhangsan",
        },
    )
    state = await run(sdk.post, "kf/service_state/get", data={"open_kfid": kfid, "external_userid": "wmCUST"})
    assert (state["service_state"], state["servicer_userid"]) == (3, "zhangsan")
    with pytest.raises(WeChatClientException) as e:
        await run(
            sdk.post,
            "kf/service_state/trans",
            data={"open_kfid": kfid, "external_userid": "wmCUST", "service_state": 1},
        )
    assert e.value.errcode == 95016
    # WeCom revokes the token early: wechatpy's own retry on 40014 fetches a new one
    m.revoke_token()
    assert (await run(sdk.get, "kf/servicer/list", params={"open_kfid": kfid}))["errcode"] == 0
    assert m.calls["cgi-bin/gettoken"] == 2
