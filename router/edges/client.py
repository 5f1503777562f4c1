"""Async client for the WeChat Official Account customer-service API (spec §2, §6).

One method per endpoint, on one shared ``aiohttp.ClientSession``. What every call goes through
(``WeChatClient._call``):

* the access_token from a ``TokenHolder`` (single-flight, compare-and-swap), in the query string;
* on 40001 / 40014 / 42001 / 41001: invalidate that token, refresh, retry **once** — a token that
  keeps failing is surfaced as ``TokenError`` after one refresh (wechatpy's recursion, spec §8);
* on -1 / -1000, timeouts, connection errors and 5xx: bounded exponential backoff with full jitter
  (``retries`` extra attempts, delay ``uniform(0, min(cap, base * 2**n))``, rng and sleep injectable);
* 45009 / 45011 (rate limits), 45015 / 45047 (window closed) and every other errcode: raised at once
  as the typed exceptions of ``router.edges.errors``.

Answers are parsed leniently (errcode absent or 0, errcode as a string, ``kf_id`` string or number,
legacy and current field names) but their shape is validated; a malformed answer raises
``BadResponse`` naming the endpoint and the field. Per-endpoint counters and latencies live in
``client.stats``. Logs go to ``kfrouter.client`` with ``access_token=`` / ``secret=`` redacted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from attrs import define, field, frozen

from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.model import AgentRow
from kfrouter.router.edges.errors import (
    BadResponse,
    NetworkError,
    TokenError,
    WeChatError,
    raise_for_response,
    redact,
)
from kfrouter.router.edges.token import TokenHolder, TokenMode, parse_token_response, token_request

log = logging.getLogger("kfrouter.client")

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # getmsglist: up to 10 000 records per page
MAX_HEADIMG_BYTES = 5 * 1024 * 1024  # spec §2.4
MSGLIST_MAX_WINDOW_S = 86400  # spec §2.13: window <= 24 h
MSGLIST_MAX_NUMBER = 10000

# Endpoint paths (spec §1.2, §2): only the lists, custom send/typing and tokens live under /cgi-bin/.
KF_ADD = "/customservice/kfaccount/add"
KF_UPDATE = "/customservice/kfaccount/update"
KF_DEL = "/customservice/kfaccount/del"
KF_HEADIMG = "/customservice/kfaccount/uploadheadimg"
KF_INVITE = "/customservice/kfaccount/inviteworker"
KF_LIST = "/cgi-bin/customservice/getkflist"
KF_ONLINE_LIST = "/cgi-bin/customservice/getonlinekflist"
SESSION_CREATE = "/customservice/kfsession/create"
SESSION_CLOSE = "/customservice/kfsession/close"
SESSION_GET = "/customservice/kfsession/getsession"
SESSION_LIST = "/customservice/kfsession/getsessionlist"
SESSION_WAITCASE = "/customservice/kfsession/getwaitcase"
MSG_LIST = "/customservice/msgrecord/getmsglist"
CUSTOM_SEND = "/cgi-bin/message/custom/send"
CUSTOM_TYPING = "/cgi-bin/message/custom/typing"

Sleep = Callable[[float], Awaitable[Any]]


# --------------------------------------------------------------------------------------------------
# Answer models


@frozen(kw_only=True)
class KfAccountInfo:
    """One row of ``getkflist`` (spec §2.6)."""

    kf_account: str
    kf_id: str
    nickname: str = ""
    headimgurl: str = ""
    kf_wx: str | None = None
    invite_wx: str | None = None
    invite_expire_time: int | None = None
    invite_status: str | None = None


@frozen(kw_only=True)
class SessionInfo:
    """``getsession``: who serves the user; ``kf_account`` None when nobody does (spec §2.10)."""

    kf_account: str | None
    createtime: int


@frozen(kw_only=True)
class SessionEntry:
    """One row of ``getsessionlist``."""

    openid: str
    createtime: int


@frozen(kw_only=True)
class WaitEntry:
    """One row of ``getwaitcase``: ``latest_time`` (legacy rows: ``createtime``) and, in the legacy
    shape, the agent the user waits for."""

    openid: str
    latest_time: int
    kf_account: str | None = None


@frozen(kw_only=True)
class WaitCase:
    """``getwaitcase``: ``count`` is the whole queue, ``entries`` at most the 100 oldest."""

    count: int
    entries: tuple[WaitEntry, ...]


@frozen(kw_only=True)
class MsgRecord:
    """One chat record of ``getmsglist`` (opercode 2002 agent sent, 2003 agent received)."""

    openid: str
    opercode: int
    text: str
    time: int
    worker: str


@frozen(kw_only=True)
class MsgPage:
    """One ``getmsglist`` answer: the records, ``number`` returned and the ``msgid`` cursor."""

    records: tuple[MsgRecord, ...]
    number: int
    msgid: int


# --------------------------------------------------------------------------------------------------
# Stats


@define
class EndpointStats:
    """Counters for one endpoint. ``calls``: method calls; ``requests``: HTTP attempts (retries
    included); ``failures``: calls that raised; ``errcodes``: failed attempts by errcode."""

    calls: int = 0
    requests: int = 0
    failures: int = 0
    retries: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0
    errcodes: Counter[int] = field(factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "requests": self.requests,
            "failures": self.failures,
            "retries": self.retries,
            "latency_sum_s": self.latency_sum_s,
            "latency_max_s": self.latency_max_s,
            "errcodes": dict(self.errcodes),
        }


@define
class ClientStats:
    """Per-endpoint counters (keyed by path) plus token refreshes; read by the metrics layer."""

    endpoints: dict[str, EndpointStats] = field(factory=dict)
    token_refreshes: int = 0
    token_invalidations: int = 0

    def endpoint(self, path: str) -> EndpointStats:
        stats = self.endpoints.get(path)
        if stats is None:
            stats = self.endpoints[path] = EndpointStats()
        return stats

    def snapshot(self) -> dict[str, Any]:
        return {
            "endpoints": {path: s.as_dict() for path, s in sorted(self.endpoints.items())},
            "token_refreshes": self.token_refreshes,
            "token_invalidations": self.token_invalidations,
        }


# --------------------------------------------------------------------------------------------------
# Answer validation helpers: every message names the endpoint and the field.


def _where(endpoint: str, path: str, msg: str) -> BadResponse:
    return BadResponse(f"field {path!r} {msg}", endpoint)


def _get_int(
    endpoint: str, row: Mapping[str, Any], key: str, path: str, *, default: int | None = None
) -> int:
    raw = row.get(key)
    if raw is None:
        if default is not None:
            return default
        raise _where(endpoint, path, "is missing")
    if isinstance(raw, bool):
        raise _where(endpoint, path, f"must be an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if text.lstrip("-").isdigit() and len(text) <= 20:
            return int(text)
    raise _where(endpoint, path, f"must be an integer, got {str(raw)[:40]!r}")


def _get_str(
    endpoint: str, row: Mapping[str, Any], key: str, path: str, *, default: str | None = None
) -> str:
    raw = row.get(key)
    if raw is None:
        if default is not None:
            return default
        raise _where(endpoint, path, "is missing")
    if not isinstance(raw, str):
        raise _where(endpoint, path, f"must be a string, got {type(raw).__name__}")
    return raw


def _get_opt_str(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> str | None:
    raw = row.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise _where(endpoint, path, f"must be a string, got {type(raw).__name__}")
    return raw


def _get_id(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> str:
    """``kf_id`` arrives as a string in the examples and as a number per the newer doc (§2.6)."""
    raw = row.get(key)
    if raw is None:
        return ""
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise _where(endpoint, path, f"must be a string or an integer, got {type(raw).__name__}")
    return str(raw)


def _get_list(endpoint: str, data: Mapping[str, Any], key: str, *, default_empty: bool = False) -> list[Any]:
    raw = data.get(key)
    if raw is None and default_empty:
        return []
    if not isinstance(raw, list):
        what = "is missing" if raw is None else f"must be a list, got {type(raw).__name__}"
        raise _where(endpoint, key, what)
    return raw


def _rows(
    endpoint: str, data: Mapping[str, Any], key: str, *, default_empty: bool = False
) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for i, row in enumerate(_get_list(endpoint, data, key, default_empty=default_empty)):
        path = f"{key}[{i}]"
        if not isinstance(row, Mapping):
            raise _where(endpoint, path, f"must be an object, got {type(row).__name__}")
        out.append((path, row))
    return out


def _require_text(name: str, value: object, *, max_len: int | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if max_len is not None and len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")
    return value


def _query_string(query: Mapping[str, str]) -> str:
    # '@' stays literal: WeChat once rejected '%40' in kf_account (spec §1.8); everything else is quoted.
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='@')}" for k, v in query.items())


# --------------------------------------------------------------------------------------------------


class WeChatClient:
    """The customer-service API of one Official Account (``appid``). See the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        appid: str,
        secret: str,
        base_url: str = DEFAULT_BASE_URL,
        token_mode: TokenMode = "stable",
        retries: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        rng: random.Random | None = None,
        timeout_s: float = 10,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        token_margin_s: float = 120.0,
        tokens: TokenHolder | None = None,
    ) -> None:
        _require_text("appid", appid)
        _require_text("secret", secret)
        if token_mode not in ("stable", "basic"):
            raise ValueError(f"token_mode must be 'stable' or 'basic', got {token_mode!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not (backoff_base >= 0 and backoff_cap >= 0):
            raise ValueError(
                f"backoff_base and backoff_cap must be >= 0, got {backoff_base!r}, {backoff_cap!r}"
            )
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._session = session
        self.appid = appid
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self.token_mode: TokenMode = token_mode
        self.retries = retries
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self._rng = rng if rng is not None else random.Random()
        self._timeout = aiohttp.ClientTimeout(total=float(timeout_s))
        self._sleep = sleep
        self.stats = ClientStats()
        # told about every error a call finally ends with (the daemon explains operator problems once)
        self.on_error: Callable[[WeChatError], None] | None = None
        self.tokens = (
            tokens
            if tokens is not None
            else TokenHolder(self._fetch_token, margin_s=token_margin_s, clock=clock)
        )

    def __repr__(self) -> str:  # never show the secret
        return (
            f"WeChatClient(appid={self.appid!r}, base_url={self.base_url!r}, token_mode={self.token_mode!r})"
        )

    # ---------------------------------------------------------------------------------- accounts

    async def add_kf_account(self, kf_account: str, nickname: str) -> None:
        """``kfaccount/add`` (§2.1): ``kf_account`` is ``prefix@wechat_id``, nickname ≤ 16 chars."""
        body = {
            "kf_account": _require_text("kf_account", kf_account),
            "nickname": _require_text("nickname", nickname),
        }
        await self._call(KF_ADD, "POST", json_body=body)

    async def update_kf_account(self, kf_account: str, nickname: str) -> None:
        """``kfaccount/update`` (§2.2)."""
        body = {
            "kf_account": _require_text("kf_account", kf_account),
            "nickname": _require_text("nickname", nickname),
        }
        await self._call(KF_UPDATE, "POST", json_body=body)

    async def delete_kf_account(self, kf_account: str, *, method: Literal["POST", "GET"] = "POST") -> None:
        """``kfaccount/del`` (§2.3): POST with a JSON body (current doc) or GET with a query (legacy).
        The POST also carries ``kf_account`` in the query so either server reading works."""
        kf_account = _require_text("kf_account", kf_account)
        if method == "GET":
            await self._call(KF_DEL, "GET", query={"kf_account": kf_account})
        elif method == "POST":
            await self._call(
                KF_DEL, "POST", query={"kf_account": kf_account}, json_body={"kf_account": kf_account}
            )
        else:
            raise ValueError(f"method must be 'POST' or 'GET', got {method!r}")

    async def upload_kf_headimg(
        self,
        kf_account: str,
        image: bytes,
        *,
        filename: str = "headimg.jpg",
        content_type: str = "image/jpeg",
    ) -> None:
        """``kfaccount/uploadheadimg`` (§2.4): multipart field ``media``, ≤ 5 MB."""
        kf_account = _require_text("kf_account", kf_account)
        if not isinstance(image, bytes | bytearray) or not image:
            raise ValueError("image must be non-empty bytes")
        if len(image) > MAX_HEADIMG_BYTES:
            raise ValueError(f"image is {len(image)} bytes; WeChat accepts at most {MAX_HEADIMG_BYTES}")
        payload = bytes(image)

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("media", payload, filename=filename, content_type=content_type)
            return data

        await self._call(KF_HEADIMG, "POST", query={"kf_account": kf_account}, form=form)

    async def invite_kf_worker(self, kf_account: str, invite_wx: str) -> None:
        """``kfaccount/inviteworker`` (§2.5): invite a WeChat user to bind ``kf_account``."""
        body = {
            "kf_account": _require_text("kf_account", kf_account),
            "invite_wx": _require_text("invite_wx", invite_wx),
        }
        await self._call(KF_INVITE, "POST", json_body=body)

    async def get_kf_list(self) -> list[KfAccountInfo]:
        """``getkflist`` (§2.6): every kf account, bound or not."""
        data = await self._call(KF_LIST, "GET")
        out = []
        for path, row in _rows(KF_LIST, data, "kf_list"):
            out.append(
                KfAccountInfo(
                    kf_account=_get_str(KF_LIST, row, "kf_account", f"{path}.kf_account"),
                    kf_id=_get_id(KF_LIST, row, "kf_id", f"{path}.kf_id"),
                    nickname=_get_str(KF_LIST, row, "kf_nick", f"{path}.kf_nick", default=""),
                    headimgurl=_get_str(KF_LIST, row, "kf_headimgurl", f"{path}.kf_headimgurl", default=""),
                    kf_wx=_get_opt_str(KF_LIST, row, "kf_wx", f"{path}.kf_wx"),
                    invite_wx=_get_opt_str(KF_LIST, row, "invite_wx", f"{path}.invite_wx"),
                    invite_expire_time=(
                        None
                        if row.get("invite_expire_time") in (None, "")
                        else _get_int(KF_LIST, row, "invite_expire_time", f"{path}.invite_expire_time")
                    ),
                    invite_status=_get_opt_str(KF_LIST, row, "invite_status", f"{path}.invite_status"),
                )
            )
        return out

    async def get_online_kf_list(self) -> list[AgentRow]:
        """``getonlinekflist`` (§2.7) as validated ``AgentRow``s. Rows with an empty ``kf_account``
        (seen in the new doc's example) cannot be routed to and are skipped with a log line."""
        data = await self._call(KF_ONLINE_LIST, "GET")
        out = []
        for path, row in _rows(KF_ONLINE_LIST, data, "kf_online_list"):
            account = _get_str(KF_ONLINE_LIST, row, "kf_account", f"{path}.kf_account")
            status = _get_int(KF_ONLINE_LIST, row, "status", f"{path}.status")
            accepted = _get_int(KF_ONLINE_LIST, row, "accepted_case", f"{path}.accepted_case", default=0)
            auto_accept = _get_int(KF_ONLINE_LIST, row, "auto_accept", f"{path}.auto_accept", default=0)
            kf_id = _get_id(KF_ONLINE_LIST, row, "kf_id", f"{path}.kf_id")
            if not account:
                log.info("%s: %s has an empty kf_account (kf_id=%r); skipped", KF_ONLINE_LIST, path, kf_id)
                continue
            try:
                out.append(
                    AgentRow(
                        kf_account=account,
                        status=status,
                        accepted_case=accepted,
                        auto_accept=auto_accept,
                        kf_id=kf_id,
                    )
                )
            except CoreError as exc:
                raise BadResponse(f"{path}: {exc}", KF_ONLINE_LIST) from None
        return out

    # ---------------------------------------------------------------------------------- sessions

    async def create_session(self, openid: str, kf_account: str) -> None:
        """``kfsession/create`` (§2.8). Raises e.g. ``ServedByOther`` (65414), ``AgentOffline`` (65415)."""
        body = {
            "kf_account": _require_text("kf_account", kf_account),
            "openid": _require_text("openid", openid),
        }
        await self._call(SESSION_CREATE, "POST", json_body=body)

    async def close_session(self, openid: str, kf_account: str) -> None:
        """``kfsession/close`` (§2.9). Raises ``NoSession`` (65413) when there is none."""
        body = {
            "kf_account": _require_text("kf_account", kf_account),
            "openid": _require_text("openid", openid),
        }
        await self._call(SESSION_CLOSE, "POST", json_body=body)

    async def get_session(self, openid: str) -> SessionInfo:
        """``kfsession/getsession`` (§2.10); an empty ``kf_account`` means nobody serves the user."""
        data = await self._call(SESSION_GET, "GET", query={"openid": _require_text("openid", openid)})
        account = _get_str(SESSION_GET, data, "kf_account", "kf_account", default="")
        createtime = _get_int(SESSION_GET, data, "createtime", "createtime", default=0)
        return SessionInfo(kf_account=account or None, createtime=createtime)

    async def get_session_list(self, kf_account: str) -> list[SessionEntry]:
        """``kfsession/getsessionlist`` (§2.11): the customers this agent serves now."""
        query = {"kf_account": _require_text("kf_account", kf_account)}
        data = await self._call(SESSION_LIST, "GET", query=query)
        return [
            SessionEntry(
                openid=_require_field_text(SESSION_LIST, row, "openid", path),
                createtime=_get_int(SESSION_LIST, row, "createtime", f"{path}.createtime", default=0),
            )
            for path, row in _rows(SESSION_LIST, data, "sessionlist", default_empty=True)
        ]

    async def get_wait_case(self) -> WaitCase:
        """``kfsession/getwaitcase`` (§2.12), current shape (``latest_time``) or legacy
        (``createtime`` + ``kf_account``)."""
        data = await self._call(SESSION_WAITCASE, "GET")
        entries = []
        for path, row in _rows(SESSION_WAITCASE, data, "waitcaselist", default_empty=True):
            key = "latest_time" if "latest_time" in row else "createtime"
            entries.append(
                WaitEntry(
                    openid=_require_field_text(SESSION_WAITCASE, row, "openid", path),
                    latest_time=_get_int(SESSION_WAITCASE, row, key, f"{path}.{key}", default=0),
                    kf_account=_get_opt_str(SESSION_WAITCASE, row, "kf_account", f"{path}.kf_account"),
                )
            )
        count = _get_int(SESSION_WAITCASE, data, "count", "count", default=len(entries))
        if count < len(entries):
            raise _where(SESSION_WAITCASE, "count", f"is {count} but waitcaselist has {len(entries)} rows")
        return WaitCase(count=count, entries=tuple(entries))

    # ---------------------------------------------------------------------------------- records

    async def get_msg_list(
        self, starttime: int, endtime: int, msgid: int = 1, number: int = MSGLIST_MAX_NUMBER
    ) -> MsgPage:
        """One ``msgrecord/getmsglist`` page (§2.13): window ≤ 24 h, ``number`` ≤ 10 000, ``msgid`` ≥ 1."""
        for name, value in (
            ("starttime", starttime),
            ("endtime", endtime),
            ("msgid", msgid),
            ("number", number),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 0 < endtime - starttime <= MSGLIST_MAX_WINDOW_S:
            raise ValueError(
                f"endtime - starttime must be in (0, {MSGLIST_MAX_WINDOW_S}] s, got {endtime - starttime}"
            )
        if not 1 <= number <= MSGLIST_MAX_NUMBER:
            raise ValueError(f"number must be in [1, {MSGLIST_MAX_NUMBER}], got {number}")
        if msgid < 1:
            raise ValueError(f"msgid must be >= 1, got {msgid}")
        body = {"starttime": starttime, "endtime": endtime, "msgid": msgid, "number": number}
        data = await self._call(MSG_LIST, "POST", json_body=body)
        records = tuple(
            MsgRecord(
                openid=_get_str(MSG_LIST, row, "openid", f"{path}.openid"),
                opercode=_get_int(MSG_LIST, row, "opercode", f"{path}.opercode"),
                text=_get_str(MSG_LIST, row, "text", f"{path}.text", default=""),
                time=_get_int(MSG_LIST, row, "time", f"{path}.time"),
                worker=_get_str(MSG_LIST, row, "worker", f"{path}.worker", default=""),
            )
            for path, row in _rows(MSG_LIST, data, "recordlist", default_empty=True)
        )
        returned_number = _get_int(MSG_LIST, data, "number", "number", default=len(records))
        returned_msgid = _get_int(MSG_LIST, data, "msgid", "msgid", default=msgid)
        return MsgPage(records=records, number=returned_number, msgid=returned_msgid)

    async def iter_msg_records(
        self, starttime: int, endtime: int, *, number: int = MSGLIST_MAX_NUMBER
    ) -> AsyncIterator[MsgRecord]:
        """Every record in ``[starttime, endtime]``, in 24 h windows, paging each window (§2.13).

        A page is full when it holds ``number`` records; the next request passes the returned
        ``msgid``. Whether WeChat then repeats the record with that id is unconfirmed (spec §11.6),
        so a first record equal to the previous page's last is dropped (one overlap tolerated). Paging
        stops on a short or empty page, or if the cursor does not advance.
        """
        if not isinstance(starttime, int) or not isinstance(endtime, int) or endtime <= starttime:
            raise ValueError(f"need integer starttime < endtime, got {starttime!r}, {endtime!r}")
        window_start = starttime
        while window_start < endtime:
            window_end = min(window_start + MSGLIST_MAX_WINDOW_S, endtime)
            cursor = 1
            last: MsgRecord | None = None
            while True:
                page = await self.get_msg_list(window_start, window_end, msgid=cursor, number=number)
                records = page.records
                if last is not None and records and records[0] == last:
                    records = records[1:]
                for record in records:
                    yield record
                if records:
                    last = records[-1]
                if len(page.records) < number or page.msgid <= cursor:
                    break
                cursor = page.msgid
            window_start = window_end

    # ---------------------------------------------------------------------------------- messages

    async def send_text(self, openid: str, content: str, *, kf_account: str | None = None) -> None:
        """``message/custom/send`` text (§6.1), optionally as agent ``kf_account``.
        Raises ``WindowClosed`` (45015 / 45047) — never retried."""
        body: dict[str, Any] = {
            "touser": _require_text("openid", openid),
            "msgtype": "text",
            "text": {"content": _require_text("content", content)},
        }
        if kf_account is not None:
            body["customservice"] = {"kf_account": _require_text("kf_account", kf_account)}
        await self._call(CUSTOM_SEND, "POST", json_body=body)

    async def typing(self, openid: str, typing: bool = True) -> None:
        """``message/custom/typing`` (§6.2): ``Typing`` or ``CancelTyping``."""
        body = {"touser": _require_text("openid", openid), "command": "Typing" if typing else "CancelTyping"}
        await self._call(CUSTOM_TYPING, "POST", json_body=body)

    # ---------------------------------------------------------------------------------- machinery

    async def _fetch_token(self, force_refresh: bool) -> tuple[str, float]:
        method, path, query, body = token_request(
            self.token_mode, self.appid, self._secret, force_refresh=force_refresh
        )
        stats = self.stats.endpoint(path)
        stats.calls += 1
        try:
            data = await self._request(
                stats, method, path, query, (lambda: body) if body is not None else None, "application/json"
            )
            result = parse_token_response(path, data)
        except WeChatError as exc:
            stats.failures += 1
            stats.errcodes[exc.errcode] += 1
            raise
        self.stats.token_refreshes += 1
        return result

    async def _call(
        self,
        path: str,
        method: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        """``_attempts``, telling ``on_error`` (when set) about the error a call finally ends with."""
        try:
            return await self._attempts(path, method, query=query, json_body=json_body, form=form)
        except WeChatError as exc:
            if self.on_error is not None:
                self.on_error(exc)
            raise

    async def _attempts(
        self,
        path: str,
        method: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        """Call ``path`` with token, one token retry and bounded backoff; the parsed JSON on success."""
        stats = self.stats.endpoint(path)
        stats.calls += 1
        body_factory: Callable[[], Any] | None
        content_type: str | None = None
        if form is not None:
            body_factory = form
        elif json_body is not None:
            encoded = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            body_factory = functools.partial(bytes, encoded)
            content_type = "application/json; charset=utf-8"
        else:
            body_factory = None
        token_retry_used = False
        attempt = 0
        while True:
            token: str | None = None
            try:
                token = await self.tokens.get()
                full_query = {"access_token": token, **(query or {})}
                data = await self._request(stats, method, path, full_query, body_factory, content_type)
                raise_for_response(path, data)
                return data
            except TokenError as exc:
                stats.errcodes[exc.errcode] += 1
                if token_retry_used or token is None:
                    stats.failures += 1
                    log.warning(
                        "%s: token rejected again after a refresh (errcode %s); giving up", path, exc.errcode
                    )
                    raise
                token_retry_used = True
                stats.retries += 1
                if self.tokens.invalidate(token):
                    self.stats.token_invalidations += 1
                log.info("%s: token rejected (errcode %s); refreshing and retrying once", path, exc.errcode)
            except WeChatError as exc:
                if exc.endpoint == path:
                    stats.errcodes[exc.errcode] += 1
                if not exc.retryable or attempt >= self.retries:
                    stats.failures += 1
                    raise
                delay = self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))
                attempt += 1
                stats.retries += 1
                log.info("%s: %s; retry %d/%d in %.3fs", path, exc, attempt, self.retries, delay)
                await self._sleep(delay)

    async def _request(
        self,
        stats: EndpointStats,
        method: str,
        path: str,
        query: Mapping[str, str],
        body_factory: Callable[[], Any] | None,
        content_type: str | None,
    ) -> dict[str, Any]:
        """One HTTP attempt: the JSON object answered, or ``NetworkError`` / ``BadResponse``."""
        url = f"{self.base_url}{path}"
        if query:
            url = f"{url}?{_query_string(query)}"
        headers = {"Content-Type": content_type} if content_type else None
        stats.requests += 1
        started = time.perf_counter()
        status = 0
        try:
            async with self._session.request(
                method,
                url,
                data=body_factory() if body_factory is not None else None,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await _read_capped(resp, path)
        except TimeoutError:
            raise NetworkError(f"no answer within {self._timeout.total}s", path) from None
        except aiohttp.ClientError as exc:
            raise NetworkError(f"{type(exc).__name__}: {redact(str(exc))}", path) from None
        finally:
            elapsed = time.perf_counter() - started
            stats.latency_sum_s += elapsed
            stats.latency_max_s = max(stats.latency_max_s, elapsed)
            log.debug("%s %s -> HTTP %s in %.1f ms", method, redact(url), status, elapsed * 1000)
        if status >= 500:
            raise NetworkError(f"HTTP {status}", path)
        if status != 200:
            raise BadResponse(f"HTTP {status} (expected 200)", path)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadResponse(
                f"answer is not UTF-8 JSON ({type(exc).__name__}, {len(raw)} bytes)", path
            ) from None
        if not isinstance(data, dict):
            raise BadResponse(f"answer must be a JSON object, got {type(data).__name__}", path)
        return data


def _require_field_text(endpoint: str, row: Mapping[str, Any], key: str, path: str) -> str:
    value = _get_str(endpoint, row, key, f"{path}.{key}")
    if not value:
        raise _where(endpoint, f"{path}.{key}", "must not be empty")
    return value


async def _read_capped(resp: aiohttp.ClientResponse, path: str) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
        raise BadResponse(f"answer of {resp.content_length} bytes exceeds {MAX_RESPONSE_BYTES}", path)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise BadResponse(f"answer exceeds {MAX_RESPONSE_BYTES} bytes", path)
        chunks.append(chunk)
    return b"".join(chunks)
