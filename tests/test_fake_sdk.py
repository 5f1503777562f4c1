"""A third-party SDK works unchanged against the fake: wechatpy's WeChatClient (sync, requests-based)
drives the customer-service API. Only the network is redirected: wechatpy hard-codes
``https://api.weixin.qq.com`` for most kf calls, so a requests transport adapter rewrites that origin
to the fake's base URL (the way a hosts-file entry would). Skipped when wechatpy is not installed
(it is a dev-only extra: ``pip install wechatpy``)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

wechatpy = pytest.importorskip("wechatpy")
requests = pytest.importorskip("requests")

from wechatpy.exceptions import WeChatClientException  # noqa: E402

from kfrouter.router.clock import SteadyClock  # noqa: E402
from kfrouter.sim.fake_options import Fault  # noqa: E402
from kfrouter.sim.fake_server import FakeWeChat, running_fake  # noqa: E402

T0 = 1_700_000_000.0
REAL_ORIGIN = "https://api.weixin.qq.com"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Redirect(requests.adapters.HTTPAdapter):  # type: ignore[misc,name-defined]
    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def send(self, request: Any, **kwargs: Any) -> Any:
        request.url = request.url.replace(REAL_ORIGIN, self.base_url, 1)
        return super().send(request, **kwargs)


@pytest.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    async with running_fake("wxSDK", "SDKSECRET", clock=SteadyClock(T0, frozen=True)) as f:
        yield f


def client_for(fake: FakeWeChat) -> Any:
    client = wechatpy.WeChatClient("wxSDK", "SDKSECRET")
    client._http.mount(REAL_ORIGIN + "/", _Redirect(fake.base_url))
    return client


async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_wechatpy_customservice_end_to_end(fake: FakeWeChat) -> None:
    client = client_for(fake)
    cs = client.customservice
    assert (await run(cs.add_account, "kf1@test", "客服一", "pwd"))["errcode"] == 0
    assert (await run(cs.add_account, "kf2@test", "客服二", "pwd"))["errcode"] == 0
    assert (await run(cs.update_account, "kf1@test", "Alice", "pwd"))["errcode"] == 0
    accounts = await run(cs.get_accounts)  # /cgi-bin/customservice/getkflist via API_BASE_URL
    assert [(a["kf_account"], a["kf_nick"]) for a in accounts] == [
        ("kf1@test", "Alice"),
        ("kf2@test", "客服二"),
    ]
    jpeg = io.BytesIO(b"\xff\xd8\xff\xe0" + b"\0" * 64)
    jpeg.name = "head.jpg"
    assert (await run(cs.upload_headimg, "kf1@test", jpeg))["errcode"] == 0

    # the agents log in (the fake's control side), a customer writes and waits
    fake.model.set_agent(
        "kf1@test", T0, status=1, auto_accept=3, bound=True
    )  # accounts added by API are unbound
    fake.model.set_agent("kf2@test", T0, status=1, auto_accept=3, bound=True)
    fake.model.customer_message("oUSER1", T0, "人工")
    fake.model.transfer("oUSER1", T0)
    wait = await run(cs.get_wait_case)
    assert wait["count"] == 1 and wait["waitcaselist"][0]["openid"] == "oUSER1"
    online = await run(cs.get_online_accounts)
    assert {o["kf_account"] for o in online} == {"kf1@test", "kf2@test"}

    assert (await run(cs.create_session, "oUSER1", "kf1@test", text="VIP"))["errcode"] == 0
    with pytest.raises(WeChatClientException) as exc:
        await run(cs.create_session, "oUSER1", "kf2@test")
    assert exc.value.errcode == 65414
    session = await run(cs.get_session, "oUSER1")
    assert session["kf_account"] == "kf1@test"
    assert [s["openid"] for s in await run(cs.get_session_list, "kf1@test")] == ["oUSER1"]

    # a message as a given agent: /cgi-bin/message/custom/send with customservice.kf_account
    assert (await run(client.message.send_text, "oUSER1", "您好", account="kf1@test"))["errcode"] == 0
    assert fake.model.sent["oUSER1"][0]["kf_account"] == "kf1@test"
    records = await run(cs.get_records, int(T0) - 60, int(T0) + 60)
    assert records["recordlist"][0]["opercode"] == 2002

    assert (await run(cs.close_session, "oUSER1", "kf1@test"))["errcode"] == 0
    with pytest.raises(WeChatClientException) as exc:
        await run(cs.close_session, "oUSER1", "kf1@test")
    assert exc.value.errcode == 65413
    # delete builds its query by hand with an unencoded '@' (wechatpy#59)
    assert (await run(cs.delete_account, "kf2@test"))["errcode"] == 0
    assert [a["kf_account"] for a in await run(cs.get_accounts)] == ["kf1@test"]
    assert fake.model.calls["cgi-bin/token"] == 1


async def test_wechatpy_refreshes_once_after_42001(fake: FakeWeChat) -> None:
    client = client_for(fake)
    await run(client.customservice.get_wait_case)
    fake.clock.advance(7200)  # the fake's token expires; wechatpy's own clock does not know
    assert (await run(client.customservice.get_wait_case))["count"] == 0
    assert fake.model.calls["cgi-bin/token"] == 2


async def test_wechatpy_sees_errcodes_as_exceptions(fake: FakeWeChat) -> None:
    client = client_for(fake)
    with pytest.raises(WeChatClientException) as exc:
        await run(client.customservice.add_account, "waytoolongprefix@test", "n", "p")
    assert exc.value.errcode == 65404
    fake.model.set_fault("getkflist", Fault(errcode=45009))
    with pytest.raises(WeChatClientException) as exc:
        await run(client.customservice.get_accounts)
    assert exc.value.errcode == 45009
