"""Async client for the WeChat Official Account customer-service API (spec §2, §6).

One method per endpoint, on one shared ``aiohttp.ClientSession``. What every call goes through is
``router.edges.api_base.ApiClientBase``, with the Official Account's errcode table:

* the access_token from a ``TokenHolder`` (single-flight, compare-and-swap), in the query string;
* on 40001 / 40014 / 42001 / 41001: invalidate that token, refresh, retry **once** — a token that
  keeps failing is surfaced as ``TokenError`` after one refresh (wechatpy's recursion, spec §8);
* on -1 / -1000, timeouts, connection errors and 5xx: bounded exponential backoff with full jitter
  (``retries`` extra attempts, delay ``uniform(0, min(cap, base * 2**n))``, rng and sleep injectable);
* 45009 / 45011 (rate limits), 45015 / 45047 (window closed) and every other errcode: raised at once
  as the typed exceptions of ``router.edges.errors``.

Answers are parsed leniently (errcode absent or 0, errcode as a string, ``kf_id`` string or number,
legacy and current field names) but their shape is validated (``router.edges.answers``); a malformed
answer raises ``BadResponse`` naming the endpoint and the field. Per-endpoint counters and latencies
live in ``client.stats``. Logs go to ``kfrouter.client`` with ``access_token=`` / ``secret=`` redacted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Literal, Unpack

import aiohttp
from attrs import frozen

from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.model import AgentRow
from kfrouter.router.edges.answers import (
    get_id,
    get_int,
    get_opt_str,
    get_str,
    require_field_text,
    require_text,
    rows,
    where,
)
from kfrouter.router.edges.api_base import (
    MAX_RESPONSE_BYTES,
    ApiClientBase,
    CallOptions,
    ClientStats,
    EndpointStats,
)
from kfrouter.router.edges.errors import BadResponse
from kfrouter.router.edges.token import TokenMode, parse_token_response, token_request

log = logging.getLogger("kfrouter.client")

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
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

__all__ = [  # re-exported for callers that imported them from here
    "MAX_RESPONSE_BYTES",
    "ClientStats",
    "EndpointStats",
]


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


class WeChatClient(ApiClientBase):
    """The customer-service API of one Official Account (``appid``). See the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        appid: str,
        secret: str,
        base_url: str = DEFAULT_BASE_URL,
        token_mode: TokenMode = "stable",
        **options: Unpack[CallOptions],
    ) -> None:
        require_text("appid", appid)
        require_text("secret", secret)
        if token_mode not in ("stable", "basic"):
            raise ValueError(f"token_mode must be 'stable' or 'basic', got {token_mode!r}")
        self.appid = appid
        self._secret = secret
        self.token_mode: TokenMode = token_mode
        super().__init__(session, base_url, **options)

    def __repr__(self) -> str:  # never show the secret
        return (
            f"WeChatClient(appid={self.appid!r}, base_url={self.base_url!r}, token_mode={self.token_mode!r})"
        )

    # ---------------------------------------------------------------------------------- accounts

    async def add_kf_account(self, kf_account: str, nickname: str) -> None:
        """``kfaccount/add`` (§2.1): ``kf_account`` is ``prefix@wechat_id``, nickname ≤ 16 chars."""
        body = {
            "kf_account": require_text("kf_account", kf_account),
            "nickname": require_text("nickname", nickname),
        }
        await self._call(KF_ADD, "POST", json_body=body)

    async def update_kf_account(self, kf_account: str, nickname: str) -> None:
        """``kfaccount/update`` (§2.2)."""
        body = {
            "kf_account": require_text("kf_account", kf_account),
            "nickname": require_text("nickname", nickname),
        }
        await self._call(KF_UPDATE, "POST", json_body=body)

    async def delete_kf_account(self, kf_account: str, *, method: Literal["POST", "GET"] = "POST") -> None:
        """``kfaccount/del`` (§2.3): POST with a JSON body (current doc) or GET with a query (legacy).
        The POST also carries ``kf_account`` in the query so either server reading works."""
        kf_account = require_text("kf_account", kf_account)
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
        kf_account = require_text("kf_account", kf_account)
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
            "kf_account": require_text("kf_account", kf_account),
            "invite_wx": require_text("invite_wx", invite_wx),
        }
        await self._call(KF_INVITE, "POST", json_body=body)

    async def get_kf_list(self) -> list[KfAccountInfo]:
        """``getkflist`` (§2.6): every kf account, bound or not."""
        data = await self._call(KF_LIST, "GET")
        out = []
        for path, row in rows(KF_LIST, data, "kf_list"):
            out.append(
                KfAccountInfo(
                    kf_account=get_str(KF_LIST, row, "kf_account", f"{path}.kf_account"),
                    kf_id=get_id(KF_LIST, row, "kf_id", f"{path}.kf_id"),
                    nickname=get_str(KF_LIST, row, "kf_nick", f"{path}.kf_nick", default=""),
                    headimgurl=get_str(KF_LIST, row, "kf_headimgurl", f"{path}.kf_headimgurl", default=""),
                    kf_wx=get_opt_str(KF_LIST, row, "kf_wx", f"{path}.kf_wx"),
                    invite_wx=get_opt_str(KF_LIST, row, "invite_wx", f"{path}.invite_wx"),
                    invite_expire_time=(
                        None
                        if row.get("invite_expire_time") in (None, "")
                        else get_int(KF_LIST, row, "invite_expire_time", f"{path}.invite_expire_time")
                    ),
                    invite_status=get_opt_str(KF_LIST, row, "invite_status", f"{path}.invite_status"),
                )
            )
        return out

    async def get_online_kf_list(self) -> list[AgentRow]:
        """``getonlinekflist`` (§2.7) as validated ``AgentRow``s. Rows with an empty ``kf_account``
        (seen in the new doc's example) cannot be routed to and are skipped with a log line."""
        data = await self._call(KF_ONLINE_LIST, "GET")
        out = []
        for path, row in rows(KF_ONLINE_LIST, data, "kf_online_list"):
            account = get_str(KF_ONLINE_LIST, row, "kf_account", f"{path}.kf_account")
            status = get_int(KF_ONLINE_LIST, row, "status", f"{path}.status")
            accepted = get_int(KF_ONLINE_LIST, row, "accepted_case", f"{path}.accepted_case", default=0)
            auto_accept = get_int(KF_ONLINE_LIST, row, "auto_accept", f"{path}.auto_accept", default=0)
            kf_id = get_id(KF_ONLINE_LIST, row, "kf_id", f"{path}.kf_id")
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
            "kf_account": require_text("kf_account", kf_account),
            "openid": require_text("openid", openid),
        }
        await self._call(SESSION_CREATE, "POST", json_body=body)

    async def close_session(self, openid: str, kf_account: str) -> None:
        """``kfsession/close`` (§2.9). Raises ``NoSession`` (65413) when there is none."""
        body = {
            "kf_account": require_text("kf_account", kf_account),
            "openid": require_text("openid", openid),
        }
        await self._call(SESSION_CLOSE, "POST", json_body=body)

    async def get_session(self, openid: str) -> SessionInfo:
        """``kfsession/getsession`` (§2.10); an empty ``kf_account`` means nobody serves the user."""
        data = await self._call(SESSION_GET, "GET", query={"openid": require_text("openid", openid)})
        account = get_str(SESSION_GET, data, "kf_account", "kf_account", default="")
        createtime = get_int(SESSION_GET, data, "createtime", "createtime", default=0)
        return SessionInfo(kf_account=account or None, createtime=createtime)

    async def get_session_list(self, kf_account: str) -> list[SessionEntry]:
        """``kfsession/getsessionlist`` (§2.11): the customers this agent serves now."""
        query = {"kf_account": require_text("kf_account", kf_account)}
        data = await self._call(SESSION_LIST, "GET", query=query)
        return [
            SessionEntry(
                openid=require_field_text(SESSION_LIST, row, "openid", path),
                createtime=get_int(SESSION_LIST, row, "createtime", f"{path}.createtime", default=0),
            )
            for path, row in rows(SESSION_LIST, data, "sessionlist", default_empty=True)
        ]

    async def get_wait_case(self) -> WaitCase:
        """``kfsession/getwaitcase`` (§2.12), current shape (``latest_time``) or legacy
        (``createtime`` + ``kf_account``)."""
        data = await self._call(SESSION_WAITCASE, "GET")
        entries = []
        for path, row in rows(SESSION_WAITCASE, data, "waitcaselist", default_empty=True):
            key = "latest_time" if "latest_time" in row else "createtime"
            entries.append(
                WaitEntry(
                    openid=require_field_text(SESSION_WAITCASE, row, "openid", path),
                    latest_time=get_int(SESSION_WAITCASE, row, key, f"{path}.{key}", default=0),
                    kf_account=get_opt_str(SESSION_WAITCASE, row, "kf_account", f"{path}.kf_account"),
                )
            )
        count = get_int(SESSION_WAITCASE, data, "count", "count", default=len(entries))
        if count < len(entries):
            raise where(SESSION_WAITCASE, "count", f"is {count} but waitcaselist has {len(entries)} rows")
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
                openid=get_str(MSG_LIST, row, "openid", f"{path}.openid"),
                opercode=get_int(MSG_LIST, row, "opercode", f"{path}.opercode"),
                text=get_str(MSG_LIST, row, "text", f"{path}.text", default=""),
                time=get_int(MSG_LIST, row, "time", f"{path}.time"),
                worker=get_str(MSG_LIST, row, "worker", f"{path}.worker", default=""),
            )
            for path, row in rows(MSG_LIST, data, "recordlist", default_empty=True)
        )
        returned_number = get_int(MSG_LIST, data, "number", "number", default=len(records))
        returned_msgid = get_int(MSG_LIST, data, "msgid", "msgid", default=msgid)
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
            "touser": require_text("openid", openid),
            "msgtype": "text",
            "text": {"content": require_text("content", content)},
        }
        if kf_account is not None:
            body["customservice"] = {"kf_account": require_text("kf_account", kf_account)}
        await self._call(CUSTOM_SEND, "POST", json_body=body)

    async def typing(self, openid: str, typing: bool = True) -> None:
        """``message/custom/typing`` (§6.2): ``Typing`` or ``CancelTyping``."""
        body = {"touser": require_text("openid", openid), "command": "Typing" if typing else "CancelTyping"}
        await self._call(CUSTOM_TYPING, "POST", json_body=body)

    # ---------------------------------------------------------------------------------- machinery

    async def _fetch_token(self, force_refresh: bool) -> tuple[str, float]:
        method, path, query, body = token_request(
            self.token_mode, self.appid, self._secret, force_refresh=force_refresh
        )
        return await self._token_call(method, path, query, body, parse_token_response)
