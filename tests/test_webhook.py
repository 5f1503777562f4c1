"""Push receiver over real HTTP on 127.0.0.1: verification, plain / compatible / safe mode, signatures,
freshness, dedup of WeChat's retries, hostile bodies, and callback failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from kfrouter.router.edges.webhook import (
    CALLBACK_FAILED_STATUS,
    RECEIVER_KEY,
    PushReceiver,
    WebhookConfig,
    make_webhook_app,
)
from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.push import KfCloseSession, Push, UserMessage

TOKEN = "AAAAA"
APPID = "wx1234567890abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OLD_AES_KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
NOW = 1_714_036_504
RANDOM16 = b"0123456789abcdef"


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    """An ``on_push`` that records what it got and answers ``reply`` (or runs ``hook``)."""

    def __init__(self, reply: str | None = None) -> None:
        self.reply = reply
        self.calls: list[tuple[Push, str]] = []
        self.hook: Callable[[Push], Awaitable[None]] | None = None

    async def __call__(self, push: Push, raw: str) -> str | None:
        self.calls.append((push, raw))
        if self.hook is not None:
            await self.hook(push)
        return self.reply


class Harness:
    def __init__(
        self, server: TestServer, session: aiohttp.ClientSession, rec: Recorder, clock: Clock
    ) -> None:
        self.server = server
        self.session = session
        self.rec = rec
        self.clock = clock
        self.receiver: PushReceiver = server.app[RECEIVER_KEY]

    def url(self, query: str = "") -> str:
        return str(self.server.make_url("/wechat")) + (f"?{query}" if query else "")

    async def post(self, body: bytes | str, params: dict[str, str], **kw: Any) -> tuple[int, str]:
        data = body.encode("utf-8") if isinstance(body, str) else body
        async with self.session.post(self.url(), params=params, data=data, **kw) as resp:
            return resp.status, await resp.text()

    async def get(self, params: dict[str, str]) -> tuple[int, str]:
        async with self.session.get(self.url(), params=params) as resp:
            return resp.status, await resp.text()


async def _start(
    config: WebhookConfig, rec: Recorder, clock: Clock
) -> tuple[TestServer, aiohttp.ClientSession]:
    app = make_webhook_app(config, rec, clock=clock)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server, aiohttp.ClientSession()


@pytest.fixture
async def plain() -> AsyncIterator[Harness]:
    rec, clock = Recorder(), Clock()
    server, session = await _start(WebhookConfig(token=TOKEN, appid=APPID), rec, clock)
    yield Harness(server, session, rec, clock)
    await session.close()
    await server.close()


@pytest.fixture
async def safe() -> AsyncIterator[Harness]:
    rec, clock = Recorder(), Clock()
    config = WebhookConfig(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY, previous_aes_key=OLD_AES_KEY)
    server, session = await _start(config, rec, clock)
    yield Harness(server, session, rec, clock)
    await session.close()
    await server.close()


def signed(timestamp: int = NOW, nonce: str = "1514711492") -> dict[str, str]:
    return {
        "signature": signature.sign(TOKEN, str(timestamp), nonce),
        "timestamp": str(timestamp),
        "nonce": nonce,
        "openid": "oUSER1",
    }


def text_push(msg_id: int = 1234567890123456, content: str = "hello", openid: str = "oUSER1") -> str:
    return replies.build_text_message("gh_account", openid, NOW - 1, content, msg_id)


def safe_push(
    xml: str, *, key: str = AES_KEY, appid: str = APPID, timestamp: int = NOW, nonce: str = "777"
) -> tuple[str, dict[str, str]]:
    crypto = SafeModeCrypto(TOKEN, key, appid)
    body, msg_sig = crypto.encrypt_push(xml, str(timestamp), nonce, RANDOM16, to_user="gh_account")
    params = signed(timestamp, nonce) | {"encrypt_type": "aes", "msg_signature": msg_sig}
    return body, params


# ------------------------------------------------------------------------------------------------ GET


async def test_get_verification_echoes_echostr_official_example(plain: Harness) -> None:
    params = {
        "signature": "f464b24fc39322e44b38aa78f5edd27bd1441696",
        "timestamp": "1714036504",
        "nonce": "1514711492",
        "echostr": "4375120948345356249",
    }
    assert await plain.get(params) == (200, "4375120948345356249")


async def test_get_wrong_signature_is_403_and_stale_is_403(plain: Harness) -> None:
    params = signed() | {"echostr": "42"}
    bad = params | {"signature": "0" * 40}
    assert (await plain.get(bad))[0] == 403
    plain.clock.t = NOW + 301
    assert (await plain.get(params))[0] == 403
    plain.clock.t = NOW + 299
    assert await plain.get(params) == (200, "42")


async def test_get_missing_or_malformed_params_are_400(plain: Harness) -> None:
    assert (await plain.get(signed()))[0] == 400  # no echostr
    assert (await plain.get({"echostr": "1", "timestamp": str(NOW), "nonce": "1"}))[0] == 400
    assert (await plain.get(signed() | {"echostr": "1", "timestamp": "12ab"}))[0] == 400


# --------------------------------------------------------------------------------------- plain POST


async def test_plain_push_is_handed_on_and_default_reply_is_success(plain: Harness) -> None:
    xml = text_push(content="你好")
    status, text = await plain.post(xml, signed())
    assert (status, text) == (200, "success")
    [(push, raw)] = plain.rec.calls
    assert isinstance(push, UserMessage)
    assert push.content == "你好" and push.openid == "oUSER1"
    assert raw == xml


async def test_plain_push_reply_body_is_returned_verbatim(plain: Harness) -> None:
    reply = replies.transfer_customer_service("oUSER1", "gh_account", NOW, "test1@test")
    plain.rec.reply = reply
    status, text = await plain.post(text_push(), signed())
    assert status == 200 and text == reply


async def test_plain_push_wrong_signature_is_403_and_not_handed_on(plain: Harness) -> None:
    params = signed() | {"signature": signature.sign("other", str(NOW), "1514711492")}
    assert (await plain.post(text_push(), params))[0] == 403
    params = signed()
    del params["signature"]
    assert (await plain.post(text_push(), params))[0] == 400
    assert plain.rec.calls == []
    assert plain.receiver.stats["bad_signature"] == 1 and plain.receiver.stats["bad_request"] == 1


@pytest.mark.parametrize("offset", [-301, 301, -10_000_000])
async def test_stale_or_future_timestamp_is_403(plain: Harness, offset: int) -> None:
    # A correctly signed push whose timestamp is outside the 300 s window is a replay: refused.
    assert (await plain.post(text_push(), signed(NOW + offset)))[0] == 403
    assert plain.rec.calls == []
    assert plain.receiver.stats["stale"] == 1


async def test_event_push_parsed(plain: Harness) -> None:
    xml = replies.build_kf_close_session("gh_account", "oUSER2", NOW, "test1@test")
    assert await plain.post(xml, signed()) == (200, "success")
    [(push, _raw)] = plain.rec.calls
    assert push == KfCloseSession(
        to_user="gh_account", openid="oUSER2", create_time=NOW, kf_account="test1@test"
    )


# ---------------------------------------------------------------------------------------- safe mode


async def test_safe_mode_push_decrypted_and_reply_encrypted(safe: Harness) -> None:
    xml = text_push(content="secret text")
    reply = replies.text_reply("oUSER1", "gh_account", NOW, "答复")
    safe.rec.reply = reply
    body, params = safe_push(xml)
    assert "secret text" not in body
    status, text = await safe.post(body, params)
    assert status == 200
    [(push, raw)] = safe.rec.calls
    assert isinstance(push, UserMessage) and push.content == "secret text" and raw == xml
    assert "答复" not in text
    decrypted = SafeModeCrypto(TOKEN, AES_KEY, APPID).decrypt_reply(text)
    assert decrypted.text == reply


async def test_safe_mode_success_reply_stays_plain(safe: Harness) -> None:
    body, params = safe_push(text_push())
    assert await safe.post(body, params) == (200, "success")


async def test_safe_mode_previous_key_accepted_and_reply_uses_it(safe: Harness) -> None:
    safe.rec.reply = replies.text_reply("oUSER1", "gh_account", NOW, "rotated")
    body, params = safe_push(text_push(), key=OLD_AES_KEY)
    status, text = await safe.post(body, params)
    assert status == 200
    assert SafeModeCrypto(TOKEN, OLD_AES_KEY, APPID).decrypt_reply(text).text == safe.rec.reply


async def test_safe_mode_bad_msg_signature_is_403(safe: Harness) -> None:
    body, params = safe_push(text_push())
    params["msg_signature"] = "f" * 40
    assert (await safe.post(body, params))[0] == 403
    body, params = safe_push(text_push())
    del params["msg_signature"]
    assert (await safe.post(body, params))[0] == 400
    assert safe.rec.calls == []


async def test_safe_mode_other_appid_is_400(safe: Harness) -> None:
    body, params = safe_push(text_push(), appid="wxSOMEONEELSE")
    assert (await safe.post(body, params))[0] == 400
    assert safe.rec.calls == []


async def test_compatible_mode_uses_the_authenticated_ciphertext(safe: Harness) -> None:
    encrypted_xml = text_push(content="from ciphertext")
    inner_body, params = safe_push(encrypted_xml)
    encrypt_elem = inner_body[
        inner_body.index("<Encrypt>") : inner_body.index("</Encrypt>") + len("</Encrypt>")
    ]
    # Compatible mode: plaintext fields and <Encrypt> in one body; only the ciphertext is signed.
    body = text_push(content="from plaintext").replace("</xml>", encrypt_elem + "\n</xml>")
    status, _ = await safe.post(body, params)
    assert status == 200
    [(push, _raw)] = safe.rec.calls
    assert isinstance(push, UserMessage) and push.content == "from ciphertext"


async def test_compatible_mode_without_key_falls_back_to_signed_plaintext(plain: Harness) -> None:
    body = text_push(content="plain part").replace("</xml>", "<Encrypt><![CDATA[AAAA]]></Encrypt></xml>")
    params = signed() | {"encrypt_type": "aes", "msg_signature": "0" * 40}
    assert await plain.post(body, params) == (200, "success")
    assert isinstance(plain.rec.calls[0][0], UserMessage)
    assert plain.rec.calls[0][0].content == "plain part"


async def test_plaintext_refused_when_safe_mode_required() -> None:
    rec, clock = Recorder(), Clock()
    config = WebhookConfig(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY, accept_plaintext=False)
    server, session = await _start(config, rec, clock)
    try:
        h = Harness(server, session, rec, clock)
        assert (await h.post(text_push(), signed()))[0] == 403
        body, params = safe_push(text_push())
        assert (await h.post(body, params))[0] == 200
    finally:
        await session.close()
        await server.close()


async def test_unknown_encrypt_type_is_400(plain: Harness) -> None:
    assert (await plain.post(text_push(), signed() | {"encrypt_type": "des"}))[0] == 400


# -------------------------------------------------------------------------------------------- dedup


async def test_duplicate_delivery_handled_once_and_answered_alike(plain: Harness) -> None:
    reply = replies.transfer_customer_service("oUSER1", "gh_account", NOW)
    plain.rec.reply = reply
    first = await plain.post(text_push(msg_id=77), signed(nonce="1"))
    second = await plain.post(text_push(msg_id=77), signed(nonce="2"))  # WeChat's retry: new nonce
    assert first == second == (200, reply)
    assert len(plain.rec.calls) == 1
    assert plain.receiver.stats["duplicate"] == 1
    # A different message is handed on.
    await plain.post(text_push(msg_id=78), signed())
    assert len(plain.rec.calls) == 2


async def test_duplicate_while_first_is_in_flight_waits_for_it(plain: Harness) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hook(_push: Push) -> None:
        entered.set()
        await release.wait()

    plain.rec.hook = hook
    plain.rec.reply = "<xml>r</xml>"
    cache = plain.receiver._dedup
    real_get = cache.get
    retry_seen = asyncio.Event()

    def spy_get(key: str) -> Any:
        hit = real_get(key)
        if hit is not None:
            retry_seen.set()
        return hit

    cache.get = spy_get  # type: ignore[method-assign]
    first = asyncio.create_task(plain.post(text_push(msg_id=5), signed()))
    await asyncio.wait_for(entered.wait(), 5)
    second = asyncio.create_task(plain.post(text_push(msg_id=5), signed(nonce="9")))
    await asyncio.wait_for(retry_seen.wait(), 5)  # the retry found the in-flight first delivery
    assert not first.done() and not second.done()
    release.set()
    assert await asyncio.wait_for(first, 5) == (200, "<xml>r</xml>")
    assert await asyncio.wait_for(second, 5) == (200, "<xml>r</xml>")
    assert len(plain.rec.calls) == 1


async def test_dedup_entries_expire_after_ttl(plain: Harness) -> None:
    await plain.post(text_push(msg_id=9), signed())
    plain.clock.t = NOW + 61  # past the 60 s TTL (the timestamp is still fresh)
    await plain.post(text_push(msg_id=9), signed(NOW + 61))
    assert len(plain.rec.calls) == 2


async def test_dedup_cache_is_bounded() -> None:
    rec, clock = Recorder(), Clock()
    server, session = await _start(WebhookConfig(token=TOKEN, appid=APPID, dedup_max_entries=3), rec, clock)
    try:
        h = Harness(server, session, rec, clock)
        for msg_id in range(1, 6):
            await h.post(text_push(msg_id=msg_id), signed())
        assert len(h.receiver._dedup) == 3
        await h.post(text_push(msg_id=1), signed())  # evicted: handed on again
        await h.post(text_push(msg_id=5), signed())  # still cached
        assert [p.msg_id for p, _ in rec.calls if isinstance(p, UserMessage)] == [1, 2, 3, 4, 5, 1]
    finally:
        await session.close()
        await server.close()


async def test_callback_failure_is_not_success_and_retry_is_handed_on(plain: Harness) -> None:
    failures = [RuntimeError("disk full")]

    async def hook(_push: Push) -> None:
        if failures:
            raise failures.pop()

    plain.rec.hook = hook
    status, _ = await plain.post(text_push(msg_id=11), signed())
    assert status == CALLBACK_FAILED_STATUS
    assert await plain.post(text_push(msg_id=11), signed()) == (200, "success")
    assert len(plain.rec.calls) == 2


# ---------------------------------------------------------------------------------- hostile bodies

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><ToUserName>a</ToUserName><FromUserName>&lol4;</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>x</Content><MsgId>1</MsgId></xml>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>a</ToUserName><FromUserName>&xxe;</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>x</Content><MsgId>1</MsgId></xml>"""

BARE_DTD = '<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml></xml>'


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        BARE_DTD,
        "not xml at all",
        '{"json": true}',
        "",
        "<xml><ToUserName>a</ToUserName>",  # truncated
        "<html><body>hi</body></html>",  # wrong root
        b"\xff\xfe<\x00x\x00m\x00l\x00>\x00",  # UTF-16
        b"<xml>\x80\x81</xml>",  # not UTF-8
        "<xml><MsgType>text</MsgType></xml>",  # missing elements
    ],
)
async def test_hostile_or_malformed_bodies_are_400(plain: Harness, body: str | bytes) -> None:
    status, _ = await plain.post(body, signed())
    assert status == 400
    assert plain.rec.calls == []
    assert sum(plain.receiver.stats[k] for k in ("rejected_xml", "bad_request")) == 1


async def test_hostile_body_in_safe_mode_ciphertext_is_400(safe: Harness) -> None:
    body, params = safe_push(BILLION_LAUGHS)
    assert (await safe.post(body, params))[0] == 400
    body, params = safe_push(text_push())
    params["msg_signature"] = signature.sign(TOKEN, str(NOW), "777", "bm90IGFlcw==")
    assert (await safe.post(BILLION_LAUGHS, params))[0] == 400


async def test_oversize_body_is_413_by_length_and_by_stream(plain: Harness) -> None:
    big = "<xml>" + "a" * (64 * 1024) + "</xml>"
    assert (await plain.post(big, signed()))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"a" * 8192

    # Chunked transfer: no Content-Length, the cap applies while reading.
    async with plain.session.post(plain.url(), params=signed(), data=chunks()) as resp:
        assert resp.status == 413
    assert plain.rec.calls == []


async def test_unexpected_error_in_receiver_is_logged_400_not_500(
    plain: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    plain.receiver._dedup.get = None  # type: ignore[assignment,method-assign]  # sabotage: TypeError inside
    status, _ = await plain.post(text_push(), signed())
    assert status == 400
    assert "unexpected error" in caplog.text


async def test_reply_of_wrong_type_becomes_success(plain: Harness) -> None:
    plain.rec.reply = 42  # type: ignore[assignment]
    assert await plain.post(text_push(), signed()) == (200, "success")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="token"):
        WebhookConfig(token="a b", appid=APPID)
    with pytest.raises(ValueError, match="appid"):
        WebhookConfig(token=TOKEN, appid="")
    with pytest.raises(ValueError, match="max_body_bytes"):
        WebhookConfig(token=TOKEN, appid=APPID, max_body_bytes=0)
    with pytest.raises(ValueError, match="previous_aes_key"):
        WebhookConfig(token=TOKEN, appid=APPID, previous_aes_key=AES_KEY)
    assert TOKEN not in repr(WebhookConfig(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY))


async def test_routes_mount_on_an_existing_app() -> None:
    receiver = PushReceiver(WebhookConfig(token=TOKEN, appid=APPID), Recorder(), clock=Clock())
    app = web.Application()
    app.add_routes(receiver.routes("/cb/wx1"))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as s:
            url = str(server.make_url("/cb/wx1"))
            async with s.get(url, params=signed() | {"echostr": "abc"}) as resp:
                assert (resp.status, await resp.text()) == (200, "abc")
            async with s.put(url) as resp:
                assert resp.status == 405
    finally:
        await server.close()


# ------------------------------------------------------------- issue 15 item 5: a missing `signature`


async def test_safe_mode_push_without_signature_is_authenticated_by_msg_signature(safe: Harness) -> None:
    # WeChat's own SDKs check msg_signature alone in safe mode; it covers the ciphertext too.
    body, params = safe_push(text_push(content="no plain signature"))
    del params["signature"]
    assert await safe.post(body, params) == (200, "success")
    [(push, _raw)] = safe.rec.calls
    assert isinstance(push, UserMessage) and push.content == "no plain signature"
    body, params = safe_push(text_push(msg_id=2))
    del params["signature"]
    params["msg_signature"] = "f" * 40
    assert (await safe.post(body, params))[0] == 403  # then msg_signature is all there is, and it fails
    body, params = safe_push(text_push(msg_id=3))
    params["signature"] = "f" * 40
    assert (await safe.post(body, params))[0] == 403  # a signature that is sent must hold
    assert len(safe.rec.calls) == 1


async def test_a_push_nothing_authenticates_is_400(plain: Harness) -> None:
    params = signed()
    del params["signature"]
    assert (await plain.post(text_push(), params))[0] == 400  # plain mode: signature is required
    # compatible mode without a key: msg_signature cannot be checked, so signature is required
    body = text_push().replace("</xml>", "<Encrypt><![CDATA[AAAA]]></Encrypt></xml>")
    assert (await plain.post(body, params | {"encrypt_type": "aes", "msg_signature": "0" * 40}))[0] == 400
    assert plain.rec.calls == []
    assert plain.receiver.stats["bad_request"] == 2


def test_the_receivers_docstring_says_when_signature_may_be_missing() -> None:
    from kfrouter.router.edges import webhook

    doc = " ".join((webhook.__doc__ or "").split())
    assert "``signature`` (plain mode; in safe mode optional, checked when present" in doc
