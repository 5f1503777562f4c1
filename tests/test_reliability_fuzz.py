"""Hostile input at the push receiver, beyond tests/test_webhook_fuzz.py: Hypothesis over XML structure,
encodings, signatures and sizes, against the real ``PushReceiver`` in aiohttp test servers on 127.0.0.1
(plain, compatible and safe mode).

- structure: valid pushes mutated — elements dropped, repeated, renamed, nested, given attributes or
  odd values (``]]>``, entities, huge numbers), comments, processing instructions, namespaces, a second
  root, DOCTYPEs, junk before and after;
- encodings: XML declarations naming GBK, UTF-16, ...; bodies encoded in GBK, GB18030, UTF-16 (LE/BE,
  with and without BOM), UTF-32, Latin-1; BOMs that do or do not match; the same inside the AES envelope,
  and AES buffers with lying length fields, foreign appids and bad padding;
- signatures: every query parameter mutated, dropped, duplicated or re-encoded;
- sizes: around the 64 KiB cap, with Content-Length, chunked, gzip-compressed (bombs), undecodable
  Content-Encoding, a client hanging up mid-body.

Properties: never a 5xx; never the receiver's "unexpected error" path (``stats['error']`` stays 0: every
refusal is deliberate); a push is handed on only with a valid signature (and ``msg_signature`` in safe
mode), only when its body is UTF-8, and with exactly the content sent; every valid UTF-8 push is handed on
whatever its XML declaration says.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import struct
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from kfrouter.router.edges.webhook import RECEIVER_KEY, PushReceiver, WebhookConfig, make_webhook_app
from kfrouter.router.wechat import signature
from kfrouter.router.wechat.crypto import SafeModeCrypto, decode_aes_key, pkcs7_pad
from kfrouter.router.wechat.push import Push, UserMessage
from kfrouter.router.wechat.xml import MAX_BODY_BYTES

TOKEN = "relFuzzToken7"
APPID = "wxrelfuzz000000001"
AES_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij0123456"
NOW = 1_700_000_000
CRYPTO = SafeModeCrypto(TOKEN, AES_KEY, APPID)
CAP = MAX_BODY_BYTES
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------------------------------ rig


@dataclass
class Outcome:
    status: int
    handed: list[tuple[Push, str]]
    stats: dict[str, int]  # what changed in the receiver's counters


@dataclass
class Rig:
    """Three receivers (plain / compatible / safe) behind real HTTP; ``post`` is called from the
    Hypothesis thread and runs on the test's event loop."""

    loop: asyncio.AbstractEventLoop
    http: aiohttp.ClientSession
    servers: dict[str, TestServer]
    received: dict[str, list[tuple[Push, str]]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def receiver(self, name: str) -> PushReceiver:
        return self.servers[name].app[RECEIVER_KEY]

    def fresh(self) -> int:
        return next(self.ids)

    async def _send(self, name: str, query: str, body: Any, headers: dict[str, str] | None) -> int:
        url = URL(str(self.servers[name].make_url("/wechat")) + ("?" + query if query else ""), encoded=True)
        async with self.http.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    def post(self, name: str, query: str, body: Any, headers: dict[str, str] | None = None) -> Outcome:
        receiver = self.receiver(name)
        before = dict(receiver.stats)
        n = len(self.received[name])
        status = asyncio.run_coroutine_threadsafe(self._send(name, query, body, headers), self.loop).result(
            30
        )
        delta = {k: v - before.get(k, 0) for k, v in receiver.stats.items() if v != before.get(k, 0)}
        return Outcome(status, self.received[name][n:], delta)


def check_outcome(out: Outcome) -> None:
    """What holds for every request, whatever it was."""
    assert out.status < 500, out
    assert out.stats.get("error", 0) == 0, f"the receiver's unexpected-error path was taken: {out}"
    if out.handed:
        assert out.status == 200, out


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    configs = {
        "plain": WebhookConfig(token=TOKEN, appid=APPID),
        "compatible": WebhookConfig(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY),
        "safe": WebhookConfig(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY, accept_plaintext=False),
    }
    servers: dict[str, TestServer] = {}
    received: dict[str, list[tuple[Push, str]]] = {}
    for name, config in configs.items():
        got: list[tuple[Push, str]] = []
        received[name] = got

        async def on_push(push: Push, raw: str, got: list[tuple[Push, str]] = got) -> str | None:
            got.append((push, raw))
            return None

        server = TestServer(make_webhook_app(config, on_push, clock=lambda: NOW), host="127.0.0.1", port=0)
        await server.start_server()
        servers[name] = server
    # a new connection per request: a refused request may leave its connection unusable
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        r = Rig(asyncio.get_running_loop(), http, servers, received)
        try:
            yield r
        finally:
            for server in servers.values():
                await server.close()
    for name in servers:
        assert servers[name].app[RECEIVER_KEY].stats.get("error", 0) == 0, name


async def in_thread(fn: Any) -> None:
    await asyncio.to_thread(fn)


# ------------------------------------------------------------------------------------------ builders


def signed_query(ts: str = str(NOW), nonce: str = "424242", **extra: str) -> str:
    fields = {"signature": signature.sign(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce, **extra}
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in fields.items())


def aes_encrypt_raw(
    msg: bytes, *, appid: bytes = APPID.encode(), length: int | None = None, pad: bool = True
) -> str:
    """The AES ``Encrypt`` text of any bytes, with the length field and padding under our control."""
    buf = b"r" * 16 + struct.pack(">I", len(msg) if length is None else length) + msg + appid
    if pad:
        buf = pkcs7_pad(buf)
    else:
        buf += b"\x00" * (-len(buf) % 32)
    key = decode_aes_key(AES_KEY)
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(buf) + enc.finalize()).decode("ascii")


def safe_request(encrypt: str, ts: str = str(NOW), nonce: str = "515151") -> tuple[str, bytes]:
    body = f"<xml><ToUserName><![CDATA[gh_rel]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    query = signed_query(
        ts, nonce, encrypt_type="aes", msg_signature=signature.sign(TOKEN, ts, nonce, encrypt)
    )
    return query, body.encode("ascii")


TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "text": [
        ("ToUserName", "gh_rel"),
        ("FromUserName", "oREL{id}"),
        ("CreateTime", "{ct}"),
        ("MsgType", "text"),
        ("Content", "{content}"),
        ("MsgId", "{id}"),
    ],
    "kf_create_session": [
        ("ToUserName", "gh_rel"),
        ("FromUserName", "oREL{id}"),
        ("CreateTime", "{ct}"),
        ("MsgType", "event"),
        ("Event", "kf_create_session"),
        ("KfAccount", "a1@rel"),
    ],
    "click": [
        ("ToUserName", "gh_rel"),
        ("FromUserName", "oREL{id}"),
        ("CreateTime", "{ct}"),
        ("MsgType", "event"),
        ("Event", "CLICK"),
        ("EventKey", "HUMAN"),
    ],
    "image": [
        ("ToUserName", "gh_rel"),
        ("FromUserName", "oREL{id}"),
        ("CreateTime", "{ct}"),
        ("MsgType", "image"),
        ("PicUrl", "http://x/{id}.jpg"),
        ("MediaId", "m{id}"),
        ("MsgId", "{id}"),
    ],
}


def render(elements: list[tuple[str, str]], n: int, content: str) -> list[tuple[str, str]]:
    return [
        (tag, value.replace("{id}", str(n)).replace("{ct}", str(NOW + n)).replace("{content}", content))
        for tag, value in elements
    ]


def cdata(value: str) -> str:
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def xml_of(elements: list[tuple[str, str]], root: str = "xml") -> str:
    return f"<{root}>" + "".join(f"<{t}>{cdata(v)}</{t}>" for t, v in elements) + f"</{root.split()[0]}>"


# ------------------------------------------------------------------------------------------ structure

WECHAT_TAGS = [t for els in TEMPLATES.values() for t, _ in els] + ["Encrypt", "TransInfo", "ToKfAccount"]
odd_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "]]>",
            "&amp;",
            "&lol;",
            "&#0;",
            "&#x41;",
            "<",
            "-1",
            "1e3",
            "0x10",
            " 42 ",
            str(2**64),
            str(2**70),
        ]
    ),
    st.integers(-(2**80), 2**80).map(str),
)
names = st.one_of(
    st.sampled_from(WECHAT_TAGS),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    st.sampled_from(["a:b", "xml", "ns0:xml", "Ä", "数据"]),
)
junk_xml = st.sampled_from(
    [
        "<!-- c -->",
        "<?pi data?>",
        "text",
        "<Unknown/>",
        "<Unknown>x</Unknown>",
        "<![CDATA[x]]>",
        "&amp;",
        "&undefined;",
        "<!DOCTYPE xml>",
        '<!ENTITY e "x">',
        "<a><b><c/></b></a>",
        "</xml>",
        "<xml>",
    ]
)
mutation = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 7)),
    st.tuples(st.just("dup"), st.integers(0, 7)),
    st.tuples(st.just("rename"), st.integers(0, 7), names),
    st.tuples(st.just("value"), st.integers(0, 7), odd_values),
    st.tuples(st.just("nest"), st.integers(0, 7), names),
    st.tuples(st.just("attr"), st.integers(0, 7), st.sampled_from(['a="1"', 'xmlns="urn:x"', "b='&amp;'"])),
    st.tuples(st.just("insert"), st.integers(0, 7), junk_xml),
    st.tuples(st.just("plain"), st.integers(0, 7)),
    st.tuples(st.just("swap"), st.integers(0, 7), st.integers(0, 7)),
)
roots = st.sampled_from(["xml", "xml", "xml", 'xml xmlns="urn:x"', "XML", "root", 'xml a="1"'])
prologs = st.sampled_from(
    [
        "",
        "",
        '<?xml version="1.0"?>',
        '<?xml version="1.1"?>',
        "<!DOCTYPE xml>",
        "<!-- hi -->",
        "\n  ",
        "\ufeff",
    ]
)
trailers = st.sampled_from(["", "", "\n", "<!-- bye -->", "<xml/>", "tail", "<?pi?>"])


def apply_mutations(
    elements: list[tuple[str, str]], ops: list[tuple[Any, ...]]
) -> list[tuple[str, str | None, str, str]]:
    """(tag, attrs or None, inner XML, closing tag) per element after the mutations."""
    items: list[tuple[str, str | None, str, str]] = [(t, None, cdata(v), t) for t, v in elements]
    for op in ops:
        if not items:
            break
        i = op[1] % len(items)
        tag, attrs, inner, close = items[i]
        kind = op[0]
        if kind == "drop":
            del items[i]
        elif kind == "dup":
            items.insert(i, items[i])
        elif kind == "rename":
            items[i] = (op[2], attrs, inner, op[2])
        elif kind == "value":
            items[i] = (tag, attrs, cdata(op[2]) if "]]>" not in op[2] else op[2], close)
        elif kind == "nest":
            items[i] = (tag, attrs, f"<{op[2]}>{inner}</{op[2]}>", close)
        elif kind == "attr":
            items[i] = (tag, op[2], inner, close)
        elif kind == "insert":
            items.insert(i, ("", None, op[2], ""))
        elif kind == "plain":  # the value as plain text, escaped or not
            items[i] = (tag, attrs, inner.removeprefix("<![CDATA[").removesuffix("]]>"), close)
        elif kind == "swap":
            j = op[2] % len(items)
            items[i], items[j] = items[j], items[i]
    return items


def serialize(items: list[tuple[str, str | None, str, str]], root: str, prolog: str, trailer: str) -> str:
    parts = []
    for tag, attrs, inner, close in items:
        if not tag:
            parts.append(inner)
        else:
            parts.append(f"<{tag}{' ' + attrs if attrs else ''}>{inner}</{close}>")
    return f"{prolog}<{root}>{''.join(parts)}</{root.split()[0]}>{trailer}"


@st.composite
def structures(draw: st.DrawFn) -> tuple[str, list[tuple[Any, ...]], str, str, str, str]:
    return (
        draw(st.sampled_from(sorted(TEMPLATES))),
        draw(st.lists(mutation, max_size=6)),
        draw(roots),
        draw(prologs),
        draw(trailers),
        draw(st.sampled_from(["plain", "compatible"])),
    )


async def test_mutated_xml_structure_is_refused_cleanly_or_handed_on_whole(rig: Rig) -> None:
    seen: Counter[int] = Counter()

    @FUZZ
    @given(structures())
    @example(("text", [], "xml", "", "", "plain"))
    @example(("kf_create_session", [], "xml", '<?xml version="1.0"?>', "\n", "compatible"))
    def check(case: tuple[str, list[tuple[Any, ...]], str, str, str, str]) -> None:
        template, ops, root, prolog, trailer, server = case
        n = rig.fresh()
        elements = render(TEMPLATES[template], n, "hello")
        body = serialize(apply_mutations(elements, ops), root, prolog, trailer)
        out = rig.post(server, signed_query(), body.encode("utf-8", "surrogatepass"))
        check_outcome(out)
        seen[out.status] += 1
        assert out.status in (200, 400), out
        if out.status == 200:
            assert out.stats.get("accepted", 0) + out.stats.get("duplicate", 0) == 1, out
            for push, _raw in out.handed:
                assert push.openid and push.create_time >= 0
        if not ops and root == "xml" and prolog in ("", '<?xml version="1.0"?>') and trailer.strip() == "":
            assert out.status == 200 and len(out.handed) == 1, (body, out)

    await in_thread(check)
    assert seen[200] > 20 and seen[400] > 20, seen  # both the deep paths and the refusals were reached


# ------------------------------------------------------------------------------------------ encodings

DECLARATIONS = [
    "",
    "UTF-8",
    "utf8",
    "GBK",
    "GB2312",
    "GB18030",
    "UTF-16",
    "UTF-16LE",
    "UTF-32",
    "ISO-8859-1",
    "x-nope",
]
CODECS = [
    "utf-8",
    "utf-8",
    "gbk",
    "gb18030",
    "utf-16-le",
    "utf-16-be",
    "utf-16",
    "utf-32",
    "latin-1",
    "shift_jis",
]
BOMS = {
    "none": b"",
    "utf8": b"\xef\xbb\xbf",
    "utf8x2": b"\xef\xbb\xbf\xef\xbb\xbf",
    "utf16le": b"\xff\xfe",
    "utf16be": b"\xfe\xff",
    "utf32le": b"\xff\xfe\x00\x00",
}
contents = st.text(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.sampled_from("你好人工客服转接谢谢。，！？éü€😀"),
    ),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and "]]>" not in s)


def utf8_body(data: bytes) -> str | None:
    """The text of ``data`` if it is UTF-8 (after one optional UTF-8 BOM) and free of NUL, else None."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


@st.composite
def encoded_pushes(draw: st.DrawFn) -> tuple[str, str, str, str, str]:
    return (
        draw(contents),
        draw(st.sampled_from(DECLARATIONS)),
        draw(st.sampled_from(CODECS)),
        draw(st.sampled_from(sorted(BOMS))),
        draw(st.sampled_from(["plain", "compatible", "safe"])),
    )


async def test_only_utf8_bodies_are_handed_on_and_with_the_content_sent(rig: Rig) -> None:
    seen: Counter[str] = Counter()

    @FUZZ
    @given(encoded_pushes())
    @example(("你好 human", "GBK", "utf-8", "none", "plain"))
    @example(("你好 human", "UTF-16", "utf-8", "utf8", "safe"))
    @example(("human", "", "utf-16-le", "none", "plain"))
    @example(("human", "", "utf-16-le", "none", "safe"))
    @example(("你好", "GBK", "gbk", "none", "compatible"))
    def check(case: tuple[str, str, str, str, str]) -> None:
        content, declared, codec, bom, server = case
        n = rig.fresh()
        decl = f'<?xml version="1.0" encoding="{declared}"?>' if declared else ""
        text = decl + xml_of(render(TEMPLATES["text"], n, content))
        try:
            data = text.encode(codec)
            exact = True
        except UnicodeEncodeError:
            data, exact = text.encode(codec, "replace"), False
        data = BOMS[bom] + data
        if server == "safe":
            query, body = safe_request(aes_encrypt_raw(data))
        else:
            query, body = signed_query(), data
        out = rig.post(server, query, body)
        check_outcome(out)
        seen["handed" if out.handed else f"refused_{out.status}"] += 1
        as_utf8 = utf8_body(data)
        if out.handed:
            assert as_utf8 is not None, f"a {codec} body with BOM {bom} was handed on: {out}"
            push = out.handed[0][0]
            assert isinstance(push, UserMessage)
            if exact:  # read as UTF-8, whatever it was meant to be ('转' in GBK is 'ת' in UTF-8)
                assert push.content == content.encode(codec).decode("utf-8"), (push.content, content)
        if as_utf8 is not None and exact and bom in ("none", "utf8"):
            # valid UTF-8: handed on whatever the declaration says (WeChat only sends UTF-8)
            assert out.status == 200 and len(out.handed) == 1, (case, out)

    await in_thread(check)
    assert seen["handed"] > 20 and seen["refused_400"] > 20, seen


async def test_lying_aes_framing_is_refused(rig: Rig) -> None:
    @FUZZ
    @given(
        st.sampled_from(
            ["length_long", "length_short", "length_huge", "appid", "appid_empty", "nopad", "tiny"]
        ),
        st.sampled_from(["compatible", "safe"]),
        st.binary(max_size=64),
    )
    def check(kind: str, server: str, noise: bytes) -> None:
        n = rig.fresh()
        msg = xml_of(render(TEMPLATES["text"], n, "human")).encode()
        if kind == "length_long":
            encrypt = aes_encrypt_raw(msg, length=len(msg) + 1 + len(noise))
        elif kind == "length_short":
            encrypt = aes_encrypt_raw(msg, length=max(0, len(msg) - 1 - len(noise)))
        elif kind == "length_huge":
            encrypt = aes_encrypt_raw(msg, length=0xFFFFFFFF)
        elif kind == "appid":
            encrypt = aes_encrypt_raw(msg, appid=b"wxother" + noise)
        elif kind == "appid_empty":
            encrypt = aes_encrypt_raw(msg, appid=b"")
        elif kind == "nopad":
            encrypt = aes_encrypt_raw(msg + noise, pad=False)
        else:
            key = decode_aes_key(AES_KEY)
            enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
            encrypt = base64.b64encode(enc.update(pkcs7_pad(noise[:8])) + enc.finalize()).decode()
        query, body = safe_request(encrypt)
        out = rig.post(server, query, body)
        check_outcome(out)
        assert out.status in (400, 403) and not out.handed, (kind, out)

    await in_thread(check)


# ------------------------------------------------------------------------------------------ signatures

PARAMS = ["signature", "timestamp", "nonce", "msg_signature", "encrypt_type"]
value_mutations = st.one_of(
    st.just(("upper",)),
    st.just(("drop",)),
    st.just(("empty",)),
    st.tuples(st.just("flip"), st.integers(0, 39)),
    st.tuples(st.just("truncate"), st.integers(0, 39)),
    st.tuples(st.just("append"), st.sampled_from([" ", "0", "%00", "\u00e9", "a" * 200, "\n"])),
    st.tuples(st.just("replace"), st.text(max_size=20)),
    st.tuples(
        st.just("replace"),
        st.sampled_from(["0" + str(NOW), str(NOW + 301), str(NOW - 299), "１７", "+1", "1.7e9"]),
    ),
    st.tuples(
        st.just("other_token"),
    ),
    st.tuples(st.just("dup_before"), st.text(max_size=10)),
    st.tuples(st.just("dup_after"), st.text(max_size=10)),
)


def mutate_query(
    pairs: list[tuple[str, str]], ops: list[tuple[str, tuple[Any, ...]]]
) -> list[tuple[str, str]]:
    out = list(pairs)
    for param, op in ops:
        idx = next((i for i, (k, _v) in enumerate(out) if k == param), None)
        if idx is None:
            continue
        k, v = out[idx]
        kind = op[0]
        if kind == "upper":
            out[idx] = (k, v.upper())
        elif kind == "drop":
            del out[idx]
        elif kind == "empty":
            out[idx] = (k, "")
        elif kind == "flip" and v:
            i = op[1] % len(v)
            out[idx] = (k, v[:i] + ("0" if v[i] != "0" else "1") + v[i + 1 :])
        elif kind == "truncate":
            out[idx] = (k, v[: op[1] % (len(v) + 1)])
        elif kind in ("append",):
            out[idx] = (k, v + op[1])
        elif kind == "replace":
            out[idx] = (k, op[1])
        elif kind == "other_token":
            out[idx] = (k, signature.sign("someOtherToken", str(NOW), "1"))
        elif kind == "dup_before":
            out.insert(idx, (k, op[1]))
        elif kind == "dup_after":
            out.insert(idx + 1, (k, op[1]))
    return out


def first_values(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        out.setdefault(k, v)
    return out


async def test_a_push_is_handed_on_only_with_valid_signatures(rig: Rig) -> None:
    seen: Counter[int] = Counter()

    @FUZZ
    @given(
        st.sampled_from(["plain", "compatible", "safe"]),
        st.booleans(),
        st.lists(st.tuples(st.sampled_from(PARAMS), value_mutations), max_size=4),
    )
    @example("plain", False, [])
    @example("compatible", True, [])
    @example("safe", True, [])
    def check(server: str, encrypted: bool, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        n = rig.fresh()
        xml = xml_of(render(TEMPLATES["text"], n, "human"))
        ts, nonce = str(NOW), str(100000 + n)
        pairs = [("signature", signature.sign(TOKEN, ts, nonce)), ("timestamp", ts), ("nonce", nonce)]
        encrypt = ""
        if encrypted:
            body_s, msg_sig = CRYPTO.encrypt_push(xml, ts, nonce, b"q" * 16)
            encrypt = CRYPTO.encrypt(xml, b"q" * 16)
            pairs += [("encrypt_type", "aes"), ("msg_signature", msg_sig)]
            body = body_s.encode()
        else:
            body = xml.encode()
        pairs = mutate_query(pairs, ops)
        query = "&".join(
            f"{quote(k, safe='')}={quote(v, safe='', encoding='utf-8', errors='surrogatepass')}"
            for k, v in pairs
        )
        out = rig.post(server, query, body)
        check_outcome(out)
        seen[out.status] += 1
        q = first_values(query)
        if out.handed:
            ts_, nonce_ = q.get("timestamp", ""), q.get("nonce", "")
            assert abs(int(ts_) - NOW) <= 300, (q, out)
            if q.get("encrypt_type", "raw").lower() == "aes" and server != "plain":
                assert signature.verify(q.get("msg_signature", ""), TOKEN, ts_, nonce_, encrypt), (q, out)
                if "signature" in q:
                    assert signature.verify(q["signature"], TOKEN, ts_, nonce_), (q, out)
            else:
                assert signature.verify(q.get("signature", ""), TOKEN, ts_, nonce_), (q, out)
        if not ops and (server == "compatible" or (server == "safe") == encrypted):
            assert out.status == 200 and len(out.handed) == 1, (server, encrypted, out)

    await in_thread(check)
    assert seen[200] > 20 and seen[403] > 20 and seen[400] > 20, seen


# ------------------------------------------------------------------------------------------ sizes


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def padded_push(n: int, size: int) -> bytes:
    """A valid text push of exactly ``size`` bytes (ASCII padding in an extra element)."""
    base = xml_of(render(TEMPLATES["text"], n, "human"))
    empty = base.replace("</xml>", "<Pad></Pad></xml>")
    pad = max(0, size - len(empty.encode()))
    return empty.replace("<Pad></Pad>", "<Pad>" + "p" * pad + "</Pad>").encode()


async def test_sizes_around_the_cap_with_every_transfer_coding(rig: Rig) -> None:
    @FUZZ
    @given(
        st.one_of(st.integers(CAP - 40, CAP + 40), st.sampled_from([400, CAP * 2, CAP * 8])),
        st.sampled_from(["length", "chunked", "gzip", "deflate"]),
        st.sampled_from(["plain", "compatible"]),
    )
    @example(CAP, "length", "plain")
    @example(CAP + 1, "chunked", "plain")
    def check(size: int, coding: str, server: str) -> None:
        data = padded_push(rig.fresh(), size)
        headers: dict[str, str] = {}
        body: Any = data
        if coding == "chunked":
            body = _chunks(data, 7000)
        elif coding == "gzip":
            body, headers = gzip.compress(data), {"Content-Encoding": "gzip"}
        elif coding == "deflate":
            body, headers = zlib.compress(data), {"Content-Encoding": "deflate"}
        out = rig.post(server, signed_query(), body, headers)
        check_outcome(out)
        if len(data) > CAP:
            assert out.status == 413 and not out.handed, (len(data), coding, out)
        else:
            assert out.status == 200 and len(out.handed) == 1, (len(data), coding, out)

    await in_thread(check)


async def test_a_safe_mode_envelope_over_the_cap_is_413(rig: Rig) -> None:
    def check() -> None:
        for size, expected in ((CAP // 2, 200), (CAP, 413)):
            query, body = safe_request(aes_encrypt_raw(padded_push(rig.fresh(), size)))
            out = rig.post("safe", query, body)
            check_outcome(out)
            assert out.status == expected, (size, len(body), out)

    await in_thread(check)


async def test_gzip_bomb_and_undecodable_content_encodings(rig: Rig) -> None:
    bomb = gzip.compress(b"<xml>" + b" " * (32 * 1024 * 1024) + b"</xml>")
    assert len(bomb) < 64 * 1024  # small on the wire
    valid = padded_push(1, 300)

    def check() -> None:
        cases = [
            (bomb, {"Content-Encoding": "gzip"}, 413),
            (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400),
            (valid, {"Content-Encoding": "deflate"}, 400),  # not compressed at all
            (gzip.compress(valid)[:40], {"Content-Encoding": "gzip"}, 400),  # truncated stream
        ]
        for body, headers, expected in cases:
            out = rig.post("plain", signed_query(nonce=str(rig.fresh())), body, headers)
            check_outcome(out)
            assert out.status == expected and not out.handed, (headers, body[:20], out)

    await in_thread(check)


async def test_a_client_hanging_up_mid_body_is_not_an_error(rig: Rig) -> None:
    server = rig.servers["plain"]
    valid = padded_push(rig.fresh(), 2000)
    for cut in (0, 10, 1000, 1999):
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = f"POST /wechat?{signed_query()} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(valid)}\r\n\r\n"
        writer.write(head.encode() + valid[:cut])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    # the server is still there and answers a whole push; nothing was handed on from the cut ones
    out = await asyncio.to_thread(rig.post, "plain", signed_query(nonce="77"), padded_push(rig.fresh(), 500))
    assert out.status == 200 and len(out.handed) == 1
    assert rig.receiver("plain").stats.get("error", 0) == 0
    assert len(rig.received["plain"]) == 1
