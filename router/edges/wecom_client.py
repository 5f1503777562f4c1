"""Async client for the WeCom 微信客服 API (qyapi ``cgi-bin/kf/…``, spec wecom-kf.md §A1–A4).

One method per endpoint kfrouter uses, on the shared call machinery of ``router.edges.api_base``
(token in the query string, one refresh-and-retry on a rejected token, bounded backoff on -1 and
network errors, per-endpoint stats) with the WeCom errcode table ``WECOM_FAMILIES``:

* ``gettoken?corpid=&corpsecret=`` — the kf app's secret. WeCom returns the *same* token while it is
  valid (unlike the Official Account's ``cgi-bin/token``), may revoke it early, and reports an expired
  token as 40014 as well as 42001: both refresh (``WeComTokenError``).
* ``kf/account/list`` (POST ``{offset, limit<=100}``, paged by ``list_all_accounts``),
  ``kf/servicer/list`` (GET ``?open_kfid=``; status 0 接待中 / 1 停止接待; department rows apart),
  ``kf/service_state/get|trans``, ``kf/sync_msg``, ``kf/send_msg_on_event``, ``kf/send_msg``.
* Errcodes become the typed exceptions of ``router.edges.wecom_errors`` (``ServicerUnavailable``,
  ``StateConflict``, ``MsgTokenInvalid``, ``SendRefused``, ``KfOperatorProblem`` …).

Arguments are checked before any request (``ValueError`` naming the argument); answers are validated
(``BadResponse`` naming the endpoint and the field) and read leniently where SDKs disagree
(``servicer_userid`` / ``service_userid``, numbers as strings, absent optional fields).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Unpack

import aiohttp
from attrs import field, frozen

from kfrouter.router.edges.answers import (
    get_int,
    get_opt_bool,
    get_opt_map,
    get_opt_str,
    get_str,
    require_field_text,
    require_text,
    rows,
    where,
)
from kfrouter.router.edges.api_base import ApiClientBase, CallOptions
from kfrouter.router.edges.token import parse_token_response
from kfrouter.router.edges.wecom_errors import WECOM_FAMILIES
from kfrouter.router.wechat import wecom_kf

DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com"
GETTOKEN = "/cgi-bin/gettoken"
ACCOUNT_LIST = "/cgi-bin/kf/account/list"
SERVICER_LIST = "/cgi-bin/kf/servicer/list"
STATE_GET = "/cgi-bin/kf/service_state/get"
STATE_TRANS = "/cgi-bin/kf/service_state/trans"
SYNC_MSG = "/cgi-bin/kf/sync_msg"
SEND_MSG = "/cgi-bin/kf/send_msg"
SEND_ON_EVENT = "/cgi-bin/kf/send_msg_on_event"

ACCOUNT_PAGE_MAX = 100  # kf/account/list limit 1..100
SYNC_LIMIT_MAX = 1000  # kf/sync_msg limit: default and maximum
CURSOR_MAX_BYTES = 64
SYNC_TOKEN_MAX_BYTES = 128
TEXT_MAX_BYTES = 2048  # text message content
_MSGID = re.compile(r"[0-9A-Za-z_-]{1,32}")  # send_msg / send_msg_on_event msgid


def _frozen_map(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


# --------------------------------------------------------------------------------------------------
# Answer models


@frozen(kw_only=True)
class KfAccount:
    """One row of ``kf/account/list``. ``manage_privilege``: whether this app may assign sessions and
    send for the account (None when not returned)."""

    open_kfid: str
    name: str = ""
    avatar: str = ""
    manage_privilege: bool | None = None


@frozen(kw_only=True)
class Servicer:
    """One person in ``kf/servicer/list``: ``status`` 0 接待中 / 1 停止接待; ``stop_type`` (only when
    stopped) 0 停止接待 / 1 暂时挂起."""

    userid: str
    status: int
    stop_type: int | None = None

    @property
    def receiving(self) -> bool:
        """Can take customers now (接待中): the online/offline of the Desk."""
        return self.status == wecom_kf.SERVICER_RECEIVING


@frozen(kw_only=True)
class ServicerList:
    """``kf/servicer/list``: the servicers (people) and the departments bound as a whole."""

    servicers: tuple[Servicer, ...]
    department_ids: tuple[int, ...] = ()


@frozen(kw_only=True)
class SessionState:
    """``kf/service_state/get``: the state (0–4) and, in state 3, who serves the customer."""

    service_state: int
    servicer_userid: str | None = None


@frozen(kw_only=True)
class EnterSession:
    """``enter_session``: the customer opened the chat; ``welcome_code`` (20 s, once) when WeCom lets
    the app send the welcome message."""

    open_kfid: str
    external_userid: str
    scene: str = ""
    scene_param: str = ""
    welcome_code: str | None = None


@frozen(kw_only=True)
class SessionStatusChange:
    """``session_status_change``: a servicer acted in the WeCom client. ``change_type`` 1 took the
    customer from the pool, 2 transferred, 3 ended, 4 re-joined an ended session; ``msg_code`` on 1 and 3."""

    open_kfid: str
    external_userid: str
    change_type: int
    old_servicer_userid: str | None = None
    new_servicer_userid: str | None = None
    msg_code: str | None = None


@frozen(kw_only=True)
class ServicerStatusChange:
    """``servicer_status_change``: ``status`` 1 接待中 / 2 停止接待 (event codes, not the list's 0/1)."""

    open_kfid: str
    servicer_userid: str
    status: int
    stop_type: int | None = None

    @property
    def receiving(self) -> bool:
        return self.status == wecom_kf.EVENT_SERVICER_RECEIVING


@frozen(kw_only=True)
class MsgSendFail:
    """``msg_send_fail``: a message sent through the API did not reach the customer (``fail_type``)."""

    open_kfid: str
    external_userid: str
    fail_msgid: str
    fail_type: int


@frozen(kw_only=True)
class OtherEvent:
    """Any other event (recalls, refusals …), kept with its fields."""

    event_type: str
    fields: Mapping[str, Any] = field(converter=_frozen_map, hash=False)


KfEvent = EnterSession | SessionStatusChange | ServicerStatusChange | MsgSendFail | OtherEvent


@frozen(kw_only=True)
class KfMessage:
    """One entry of ``kf/sync_msg``'s ``msg_list``. For events WeCom puts ``open_kfid`` and
    ``external_userid`` inside the event; here they are lifted to the top (``""`` when the event has
    none, e.g. ``servicer_status_change``). ``body`` is the object named by ``msgtype``."""

    msgid: str
    open_kfid: str
    external_userid: str
    send_time: int
    origin: int
    msgtype: str
    servicer_userid: str | None = None
    body: Mapping[str, Any] = field(factory=dict, converter=_frozen_map, hash=False)
    event: KfEvent | None = None

    @property
    def text(self) -> str | None:
        """The content of a text message (None for other types)."""
        if self.msgtype != "text":
            return None
        content = self.body.get("content")
        return content if isinstance(content, str) else None

    @property
    def from_customer(self) -> bool:
        return self.origin == wecom_kf.ORIGIN_CUSTOMER


@frozen(kw_only=True)
class SyncPage:
    """One ``kf/sync_msg`` answer. ``has_more`` may be True with no messages (keep pulling)."""

    next_cursor: str
    has_more: bool
    messages: tuple[KfMessage, ...]


# --------------------------------------------------------------------------------------------------
# Parsing helpers


def _parse_event(endpoint: str, ev: Mapping[str, Any], path: str) -> KfEvent:
    kind = require_field_text(endpoint, ev, "event_type", path)
    kfid = get_str(endpoint, ev, "open_kfid", f"{path}.open_kfid", default="")
    ext = get_str(endpoint, ev, "external_userid", f"{path}.external_userid", default="")
    if kind == "enter_session":
        return EnterSession(
            open_kfid=kfid,
            external_userid=ext,
            scene=get_str(endpoint, ev, "scene", f"{path}.scene", default=""),
            scene_param=get_str(endpoint, ev, "scene_param", f"{path}.scene_param", default=""),
            welcome_code=get_opt_str(endpoint, ev, "welcome_code", f"{path}.welcome_code"),
        )
    if kind == "session_status_change":
        return SessionStatusChange(
            open_kfid=kfid,
            external_userid=ext,
            change_type=get_int(endpoint, ev, "change_type", f"{path}.change_type"),
            old_servicer_userid=get_opt_str(
                endpoint, ev, "old_servicer_userid", f"{path}.old_servicer_userid"
            ),
            new_servicer_userid=get_opt_str(
                endpoint, ev, "new_servicer_userid", f"{path}.new_servicer_userid"
            ),
            msg_code=get_opt_str(endpoint, ev, "msg_code", f"{path}.msg_code"),
        )
    if kind == "servicer_status_change":
        stop = ev.get("stop_type")
        return ServicerStatusChange(
            open_kfid=kfid,
            servicer_userid=require_field_text(endpoint, ev, "servicer_userid", path),
            status=get_int(endpoint, ev, "status", f"{path}.status"),
            stop_type=None if stop is None else get_int(endpoint, ev, "stop_type", f"{path}.stop_type"),
        )
    if kind == "msg_send_fail":
        return MsgSendFail(
            open_kfid=kfid,
            external_userid=ext,
            fail_msgid=get_str(endpoint, ev, "fail_msgid", f"{path}.fail_msgid", default=""),
            fail_type=get_int(endpoint, ev, "fail_type", f"{path}.fail_type", default=0),
        )
    return OtherEvent(event_type=kind, fields=ev)


def parse_sync_message(endpoint: str, msg: Mapping[str, Any], path: str) -> KfMessage:
    """Validate one ``msg_list`` entry (see ``KfMessage``)."""
    msgtype = require_field_text(endpoint, msg, "msgtype", path)
    body = get_opt_map(endpoint, msg, msgtype, f"{path}.{msgtype}") or {}
    event: KfEvent | None = None
    kfid = get_str(endpoint, msg, "open_kfid", f"{path}.open_kfid", default="")
    ext = get_str(endpoint, msg, "external_userid", f"{path}.external_userid", default="")
    if msgtype == "event":
        if not body:
            raise where(endpoint, f"{path}.event", "is missing")
        event = _parse_event(endpoint, body, f"{path}.event")
        kfid = kfid or get_str(endpoint, body, "open_kfid", f"{path}.event.open_kfid", default="")
        ext = ext or get_str(endpoint, body, "external_userid", f"{path}.event.external_userid", default="")
    return KfMessage(
        msgid=require_field_text(endpoint, msg, "msgid", path),
        open_kfid=kfid,
        external_userid=ext,
        send_time=get_int(endpoint, msg, "send_time", f"{path}.send_time", default=0),
        origin=get_int(endpoint, msg, "origin", f"{path}.origin", default=0),
        msgtype=msgtype,
        servicer_userid=get_opt_str(endpoint, msg, "servicer_userid", f"{path}.servicer_userid"),
        body=body,
        event=event,
    )


def _check_msgid(msgid: str | None) -> str | None:
    if msgid is not None and (not isinstance(msgid, str) or not _MSGID.fullmatch(msgid)):
        raise ValueError(f"msgid must be 1-32 characters of [0-9A-Za-z_-], got {msgid!r}")
    return msgid


def _text_body(content: str) -> dict[str, str]:
    require_text("content", content)
    size = len(content.encode("utf-8"))
    if size > TEXT_MAX_BYTES:
        raise ValueError(f"content is {size} bytes; WeCom accepts at most {TEXT_MAX_BYTES}")
    return {"content": content}


def _check_state(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in wecom_kf.STATES:
        raise ValueError(f"{name} must be one of {list(wecom_kf.STATES)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------


class WeComKfClient(ApiClientBase):
    """The 微信客服 API of one corp (``corpid``) with the kf app's ``secret``; see the module docstring."""

    families = WECOM_FAMILIES

    def __init__(
        self,
        session: aiohttp.ClientSession,
        corpid: str,
        secret: str,
        base_url: str = DEFAULT_BASE_URL,
        **options: Unpack[CallOptions],
    ) -> None:
        require_text("corpid", corpid)
        require_text("secret", secret)
        self.corpid = corpid
        self._secret = secret
        super().__init__(session, base_url, **options)

    def __repr__(self) -> str:  # never show the secret
        return f"WeComKfClient(corpid={self.corpid!r}, base_url={self.base_url!r})"

    async def _fetch_token(self, force_refresh: bool) -> tuple[str, float]:
        # WeCom has no force_refresh: gettoken answers the current token until it expires or is revoked.
        query = {"corpid": self.corpid, "corpsecret": self._secret}
        return await self._token_call(
            "GET", GETTOKEN, query, None, lambda path, data: parse_token_response(path, data, WECOM_FAMILIES)
        )

    # ---------------------------------------------------------------------------------- accounts

    async def list_accounts(self, offset: int = 0, limit: int = ACCOUNT_PAGE_MAX) -> list[KfAccount]:
        """One page of ``kf/account/list`` (``offset`` >= 0, ``limit`` 1..100)."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an integer >= 0, got {offset!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= ACCOUNT_PAGE_MAX:
            raise ValueError(f"limit must be an integer in 1..{ACCOUNT_PAGE_MAX}, got {limit!r}")
        data = await self._call(ACCOUNT_LIST, "POST", json_body={"offset": offset, "limit": limit})
        return [
            KfAccount(
                open_kfid=require_field_text(ACCOUNT_LIST, row, "open_kfid", path),
                name=get_str(ACCOUNT_LIST, row, "name", f"{path}.name", default=""),
                avatar=get_str(ACCOUNT_LIST, row, "avatar", f"{path}.avatar", default=""),
                manage_privilege=get_opt_bool(
                    ACCOUNT_LIST, row, "manage_privilege", f"{path}.manage_privilege"
                ),
            )
            for path, row in rows(ACCOUNT_LIST, data, "account_list", default_empty=True)
        ]

    async def list_all_accounts(self, *, max_pages: int = 100) -> list[KfAccount]:
        """Every kf account, page after page until a short page (at most ``max_pages`` requests)."""
        out: list[KfAccount] = []
        for page in range(max_pages):
            got = await self.list_accounts(page * ACCOUNT_PAGE_MAX, ACCOUNT_PAGE_MAX)
            out.extend(got)
            if len(got) < ACCOUNT_PAGE_MAX:
                break
        return out

    async def list_servicers(self, open_kfid: str) -> ServicerList:
        """``kf/servicer/list?open_kfid=``: people (userid, status) and whole departments."""
        data = await self._call(
            SERVICER_LIST, "GET", query={"open_kfid": require_text("open_kfid", open_kfid)}
        )
        people: list[Servicer] = []
        departments: list[int] = []
        for path, row in rows(SERVICER_LIST, data, "servicer_list", default_empty=True):
            if row.get("userid") is None and row.get("department_id") is not None:
                departments.append(get_int(SERVICER_LIST, row, "department_id", f"{path}.department_id"))
                continue
            status = get_int(SERVICER_LIST, row, "status", f"{path}.status", default=0)
            if status not in (wecom_kf.SERVICER_RECEIVING, wecom_kf.SERVICER_STOPPED):
                raise where(SERVICER_LIST, f"{path}.status", f"must be 0 or 1, got {status}")
            stop = row.get("stop_type")
            people.append(
                Servicer(
                    userid=require_field_text(SERVICER_LIST, row, "userid", path),
                    status=status,
                    stop_type=None
                    if stop is None
                    else get_int(SERVICER_LIST, row, "stop_type", f"{path}.stop_type"),
                )
            )
        return ServicerList(servicers=tuple(people), department_ids=tuple(departments))

    # ---------------------------------------------------------------------------------- sessions

    async def get_state(self, open_kfid: str, external_userid: str) -> SessionState:
        """``kf/service_state/get``. silenceper's SDK reads ``service_userid``; both names are accepted."""
        body = {
            "open_kfid": require_text("open_kfid", open_kfid),
            "external_userid": require_text("external_userid", external_userid),
        }
        data = await self._call(STATE_GET, "POST", json_body=body)
        state = get_int(STATE_GET, data, "service_state", "service_state")
        if state not in wecom_kf.STATES:
            raise where(STATE_GET, "service_state", f"must be one of {list(wecom_kf.STATES)}, got {state}")
        key = "servicer_userid" if "servicer_userid" in data else "service_userid"
        return SessionState(service_state=state, servicer_userid=get_opt_str(STATE_GET, data, key, key))

    async def trans_state(
        self, open_kfid: str, external_userid: str, service_state: int, servicer_userid: str | None = None
    ) -> str | None:
        """``kf/service_state/trans``: the ``msg_code`` WeCom returns (first entry into 2 or 3 of a
        session, and on 4), else None. State 3 needs ``servicer_userid``, other states refuse one.
        Raises ``ServicerUnavailable`` (95014/95019), ``StateConflict`` (95016/95013)."""
        target = _check_state("service_state", service_state)
        body: dict[str, Any] = {
            "open_kfid": require_text("open_kfid", open_kfid),
            "external_userid": require_text("external_userid", external_userid),
            "service_state": target,
        }
        if target == wecom_kf.SERVICER:
            body["servicer_userid"] = require_text("servicer_userid", servicer_userid)
        elif servicer_userid is not None:
            raise ValueError(f"servicer_userid is only sent with service_state 3, got state {target}")
        data = await self._call(STATE_TRANS, "POST", json_body=body)
        return get_opt_str(STATE_TRANS, data, "msg_code", "msg_code")

    # ---------------------------------------------------------------------------------- messages

    async def sync_msg(
        self,
        open_kfid: str,
        *,
        cursor: str | None = None,
        token: str | None = None,
        limit: int = SYNC_LIMIT_MAX,
        voice_format: int | None = None,
    ) -> SyncPage:
        """One ``kf/sync_msg`` page for ``open_kfid`` (required: pulling without it mixes accounts and was
        a bug in several SDKs). ``cursor`` None = from the oldest message WeCom keeps (3 days);
        ``token`` from the callback lifts the strict rate limit. Raises ``MsgTokenInvalid`` (95007)."""
        body: dict[str, Any] = {"open_kfid": require_text("open_kfid", open_kfid)}
        if cursor is not None:
            if not isinstance(cursor, str) or len(cursor.encode("utf-8")) > CURSOR_MAX_BYTES:
                raise ValueError(
                    f"cursor must be a string of at most {CURSOR_MAX_BYTES} bytes, got {cursor!r}"
                )
            body["cursor"] = cursor
        if token is not None:
            if not isinstance(token, str) or not token or len(token.encode("utf-8")) > SYNC_TOKEN_MAX_BYTES:
                raise ValueError(f"token must be a non-empty string of at most {SYNC_TOKEN_MAX_BYTES} bytes")
            body["token"] = token
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SYNC_LIMIT_MAX:
            raise ValueError(f"limit must be an integer in 1..{SYNC_LIMIT_MAX}, got {limit!r}")
        body["limit"] = limit
        if voice_format is not None:
            if voice_format not in (0, 1) or isinstance(voice_format, bool):
                raise ValueError(f"voice_format must be 0 (amr) or 1 (silk), got {voice_format!r}")
            body["voice_format"] = voice_format
        data = await self._call(SYNC_MSG, "POST", json_body=body)
        messages = tuple(
            parse_sync_message(SYNC_MSG, row, path)
            for path, row in rows(SYNC_MSG, data, "msg_list", default_empty=True)
        )
        has_more = get_int(SYNC_MSG, data, "has_more", "has_more", default=0)
        if has_more not in (0, 1):
            raise where(SYNC_MSG, "has_more", f"must be 0 or 1, got {has_more}")
        next_cursor = get_str(SYNC_MSG, data, "next_cursor", "next_cursor", default="")
        if has_more and not next_cursor:
            raise where(SYNC_MSG, "next_cursor", "is empty although has_more is 1")
        return SyncPage(next_cursor=next_cursor, has_more=bool(has_more), messages=messages)

    async def send_text(
        self, open_kfid: str, external_userid: str, content: str, *, msgid: str | None = None
    ) -> str:
        """``kf/send_msg`` text, allowed in states 0/1 within 48 h of the customer's message, at most 5
        (``SendRefused`` 95001/95002/95018). Returns the message id."""
        body: dict[str, Any] = {
            "touser": require_text("external_userid", external_userid),
            "open_kfid": require_text("open_kfid", open_kfid),
            "msgtype": "text",
            "text": _text_body(content),
        }
        if _check_msgid(msgid) is not None:
            body["msgid"] = msgid
        data = await self._call(SEND_MSG, "POST", json_body=body)
        return get_str(SEND_MSG, data, "msgid", "msgid", default=msgid or "")

    async def send_on_event(self, code: str, content: str, *, msgid: str | None = None) -> str:
        """``kf/send_msg_on_event`` text with a one-time ``code`` (welcome_code, the queue notice's code
        from ``trans`` to 2, …). Returns the message id. Raises ``MsgTokenInvalid`` for a used or expired
        code, ``SendRefused`` (95018) when the session left the state the code belongs to."""
        body: dict[str, Any] = {
            "code": require_text("code", code),
            "msgtype": "text",
            "text": _text_body(content),
        }
        if _check_msgid(msgid) is not None:
            body["msgid"] = msgid
        data = await self._call(SEND_ON_EVENT, "POST", json_body=body)
        return get_str(SEND_ON_EVENT, data, "msgid", "msgid", default=msgid or "")
