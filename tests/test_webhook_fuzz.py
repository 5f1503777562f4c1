"""Hypothesis fuzz of the push receiver over real HTTP: random bodies, query strings and methods —
unsigned, correctly signed, and correctly signed *and* encrypted — never produce a 5xx, and the
server keeps answering afterwards."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import quote

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from kfrouter.router.edges.webhook import RECEIVER_KEY, WebhookConfig, make_webhook_app
from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.push import Push, UserMessage

TOKEN = "fuzzToken1"
APPID = "wxfuzz000000000001"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
NOW = 1_700_000_000
CRYPTO = SafeModeCrypto(TOKEN, AES_KEY, APPID)

KEYS = ["signature", "timestamp", "nonce", "echostr", "encrypt_type", "msg_signature", "openid"]
junk_text = st.text(st.characters(codec="utf-8"), max_size=60)
ascii_junk = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)

xml_tags = st.sampled_from(
    [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Content",
        "MsgId",
        "Event",
        "KfAccount",
        "FromKfAccount",
        "ToKfAccount",
        "EventKey",
        "Encrypt",
        "xml",
        "TransInfo",
    ]
)
xml_values = st.one_of(
    junk_text,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(
        [
            "text",
            "event",
            "kf_create_session",
            "kf_close_session",
            "kf_switch_session",
            "CLICK",
            "subscribe",
            "image",
            "",
            "]]>",
            "<![CDATA[x]]>",
            "&amp;",
            "&lol;",
        ]
    ),
)


@st.composite
def xml_bodies(draw: st.DrawFn) -> str:
    parts = []
    for tag, value in draw(st.lists(st.tuples(xml_tags, xml_values), max_size=10)):
        if draw(st.booleans()):
            parts.append(f"<{tag}><![CDATA[{value}]]></{tag}>")
        else:
            parts.append(f"<{tag}>{value}</{tag}>")
    root = draw(st.sampled_from(["xml", "xml", "root", "XML"]))
    prefix = draw(st.sampled_from(["", '<?xml version="1.0"?>', "<!DOCTYPE xml>", "\ufeff", "  \n"]))
    return f"{prefix}<{root}>{''.join(parts)}</{root}>"


def valid_push(msg_id: int, content: str, event: str | None) -> str:
    if event is None:
        return replies.build_text_message("gh_fuzz", "oFUZZ", NOW, content, msg_id)
    return replies.build_event("gh_fuzz", "oFUZZ", NOW, event, KfAccount="a@b")


safe_content = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)
valid_pushes = st.builds(
    valid_push, st.integers(0, 2**64 - 1), safe_content, st.sampled_from([None, "kf_create_session", "x"])
).map(str.encode)
bodies = st.one_of(
    st.binary(max_size=3000),
    junk_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    xml_bodies().map(lambda t: t.encode("utf-8", "surrogatepass")),
    valid_pushes,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(method, raw query string, body) in one of four flavours, from junk to fully valid."""
    method = draw(st.sampled_from(["POST", "POST", "GET"]))
    body: bytes = draw(bodies)
    flavour = draw(st.sampled_from(["junk", "fields", "signed", "safe"]))
    if flavour == "junk":
        return method, draw(ascii_junk), body
    fields: dict[str, str] = {k: draw(junk_text) for k in draw(st.lists(st.sampled_from(KEYS), max_size=7))}
    if flavour in ("signed", "safe"):
        ts = str(NOW + draw(st.integers(-400, 400)))
        nonce = draw(st.text("0123456789", min_size=1, max_size=10))
        fields |= {"timestamp": ts, "nonce": nonce, "signature": signature.sign(TOKEN, ts, nonce)}
        if draw(st.booleans()):
            fields["echostr"] = draw(ascii_junk)
        if flavour == "safe":
            if draw(st.booleans()):
                inner = draw(st.one_of(valid_pushes, valid_pushes, bodies)).decode("utf-8", "replace")
                try:
                    body_s, msg_sig = CRYPTO.encrypt_push(inner, ts, nonce, b"r" * 16, to_user="gh_fuzz")
                except Exception:
                    body_s = "<xml><Encrypt>AAAA</Encrypt></xml>"
                    msg_sig = signature.sign(TOKEN, ts, nonce, "AAAA")
            else:
                encrypt = draw(
                    st.one_of(ascii_junk, st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()))
                )
                body_s = f"<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
                msg_sig = signature.sign(TOKEN, ts, nonce, encrypt)
            body = body_s.encode("utf-8", "surrogatepass")
            fields |= {
                "encrypt_type": draw(st.sampled_from(["aes", "AES", "raw", "x"])),
                "msg_signature": msg_sig,
            }
    query = "&".join(
        f"{quote(k, safe='')}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in fields.items()
    )
    return method, query, body


def _signed_query(fields: dict[str, str]) -> str:
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items())


def _valid_plain() -> tuple[str, str, bytes]:
    ts, nonce = str(NOW), "12345"
    query = _signed_query({"timestamp": ts, "nonce": nonce, "signature": signature.sign(TOKEN, ts, nonce)})
    return "POST", query, valid_push(1, "hello", None).encode()


def _valid_safe() -> tuple[str, str, bytes]:
    ts, nonce = str(NOW), "67890"
    body, msg_sig = CRYPTO.encrypt_push(valid_push(2, "你好", None), ts, nonce, b"r" * 16, to_user="gh_fuzz")
    fields = {"timestamp": ts, "nonce": nonce, "signature": signature.sign(TOKEN, ts, nonce)}
    fields |= {"encrypt_type": "aes", "msg_signature": msg_sig}
    return "POST", _signed_query(fields), body.encode()


async def on_push(push: Push, raw: str) -> str | None:
    if isinstance(push, UserMessage) and push.content:
        return replies.text_reply(push.openid, push.to_user, NOW, push.content)  # may raise on odd text
    return None


async def test_fuzz_never_5xx() -> None:
    configs = [
        WebhookConfig(token=TOKEN, appid=APPID),
        WebhookConfig(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY),
    ]
    servers = []
    for config in configs:
        server = TestServer(make_webhook_app(config, on_push, clock=lambda: NOW), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
    loop = asyncio.get_running_loop()
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:

        async def send(server: TestServer, method: str, query: str, body: bytes) -> int:
            url = str(server.make_url("/wechat")) + ("?" + query if query else "")
            async with session.request(method, URL(url, encoded=True), data=body) as resp:
                await resp.read()
                return resp.status

        @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(requests(), st.integers(0, len(servers) - 1))
        @example(_valid_plain(), 0)
        @example(_valid_safe(), 1)
        def check(req: tuple[str, str, bytes], which: int) -> None:
            method, query, body = req
            status = asyncio.run_coroutine_threadsafe(send(servers[which], method, query, body), loop).result(
                30
            )
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (method, query, body[:200], status)

        try:
            await asyncio.to_thread(check)
            # Still alive and correct after the barrage.
            params = {
                "signature": signature.sign(TOKEN, str(NOW), "1"),
                "timestamp": str(NOW),
                "nonce": "1",
                "echostr": "alive",
            }
            async with session.get(servers[0].make_url("/wechat"), params=params) as resp:
                assert (resp.status, await resp.text()) == (200, "alive")
        finally:
            for server in servers:
                await server.close()
    # The generator reached the deep paths, not just the 400s of the query checks: pushes were handed
    # on in both plain and safe mode.
    assert statuses.get(200, 0) > 0 and statuses.get(403, 0) > 0 and statuses.get(400, 0) > 0, statuses
    accepted = [server.app[RECEIVER_KEY].stats["accepted"] for server in servers]
    assert all(n > 0 for n in accepted), accepted
