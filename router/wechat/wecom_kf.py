"""WeCom 微信客服 wire facts (spec wecom-kf.md): session states, allowed transitions, the callback XML.

Pure: no I/O, no clock. The session state machine (document path/94669, 2023-11-30):

=====  ===============  ==========================================================================
state  name             may become (through ``kf/service_state/trans``)
=====  ===============  ==========================================================================
0      未处理             1 智能助手, 2 待接入池, 3 人工接待 (a new session: the customer wrote)
1      由智能助手接待       2, 3
2      待接入池排队中       3
3      由人工接待          3 (transfer to another servicer), 4 (end)
4      已结束/未开始        nothing: only the customer writing again makes it 0
=====  ===============  ==========================================================================

The callback (``Event=kf_msg_or_event``) carries no message, only ``Token`` (for ``kf/sync_msg``, valid
10 minutes) and ``OpenKfId``; ``parse_kf_callback`` reads it from the decrypted XML, ``build_kf_callback``
writes it (for the fake). ``kf_account_auth_change`` (accounts granted to / taken from the app) parses
to ``KfAuthChange``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from attrs import frozen

from kfrouter.router.wechat.errors import InvalidPush
from kfrouter.router.wechat.xml import MAX_BODY_BYTES, ChildReader, element, parse_xml_root

UNTREATED = 0  # 未处理
BOT = 1  # 由智能助手接待
POOL = 2  # 待接入池排队中
SERVICER = 3  # 由人工接待
ENDED = 4  # 已结束/未开始

STATES: tuple[int, ...] = (UNTREATED, BOT, POOL, SERVICER, ENDED)
STATE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        UNTREATED: "未处理",
        BOT: "由智能助手接待",
        POOL: "待接入池排队中",
        SERVICER: "由人工接待",
        ENDED: "已结束/未开始",
    }
)
TRANSITIONS: Mapping[int, frozenset[int]] = MappingProxyType(
    {
        UNTREATED: frozenset({BOT, POOL, SERVICER}),
        BOT: frozenset({POOL, SERVICER}),
        POOL: frozenset({SERVICER}),
        SERVICER: frozenset({SERVICER, ENDED}),
        ENDED: frozenset(),
    }
)
"""state -> the states ``kf/service_state/trans`` may move it to."""

# ``origin`` of a sync_msg message
ORIGIN_CUSTOMER = 3  # 微信客户发送的消息
ORIGIN_EVENT = 4  # 系统推送的事件消息
ORIGIN_SERVICER = 5  # 接待人员在企业微信客户端发送的消息

# kf/servicer/list ``status`` and the servicer_status_change event's ``status`` differ (spec A1, A3)
SERVICER_RECEIVING = 0  # list: 接待中
SERVICER_STOPPED = 1  # list: 停止接待
EVENT_SERVICER_RECEIVING = 1  # servicer_status_change: 接待中
EVENT_SERVICER_STOPPED = 2  # servicer_status_change: 停止接待

# session_status_change ``change_type``
CHANGE_FROM_POOL = 1  # 从接待池接入会话 (carries msg_code)
CHANGE_TRANSFER = 2  # 转接会话
CHANGE_END = 3  # 结束会话 (carries msg_code)
CHANGE_REJOIN = 4  # 重新接入已结束/已转接会话

CALLBACK_EVENT = "kf_msg_or_event"
AUTH_CHANGE_EVENT = "kf_account_auth_change"
_MAX_CREATE_TIME = 2**63 - 1


def transition_allowed(src: int, dst: int) -> bool:
    """Whether ``trans`` may move a session from ``src`` to ``dst`` (unknown states: False)."""
    return dst in TRANSITIONS.get(src, frozenset())


@frozen(kw_only=True)
class KfCallback:
    """One ``kf_msg_or_event`` callback: new messages or events wait in ``kf/sync_msg`` for
    ``open_kfid``; ``token`` lets the pull skip the strict rate limit for 10 minutes."""

    to_user: str  # the corpid
    create_time: int
    token: str
    open_kfid: str

    @property
    def dedup_key(self) -> str:
        """A retried callback repeats the same body (same token), so this identifies it."""
        return f"kf:{self.open_kfid}:{self.token}"


@frozen(kw_only=True)
class KfAuthChange:
    """``kf_account_auth_change``: kf accounts granted to (``added``) or taken from (``removed``) the app."""

    to_user: str
    create_time: int
    added: tuple[str, ...]
    removed: tuple[str, ...]


def parse_kf_callback(body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> KfCallback | KfAuthChange:
    """Parse a decrypted 微信客服 callback; raises ``WeChatCodecError`` subclasses naming the element."""
    what = "WeCom kf callback"
    f = ChildReader(parse_xml_root(body, max_bytes=max_bytes, what=what), what)
    to_user = f.required("ToUserName")
    create_time = f.integer("CreateTime", _MAX_CREATE_TIME)
    msg_type = f.required("MsgType")
    event = f.required("Event")
    if msg_type.lower() != "event" or event not in (CALLBACK_EVENT, AUTH_CHANGE_EVENT):
        raise InvalidPush(
            f"{what}: expected MsgType event with Event {CALLBACK_EVENT}, got {msg_type}/{event}"
        )
    if event == AUTH_CHANGE_EVENT:
        added = f.text("AuthAddOpenKfId") or ""
        removed = f.text("AuthDelOpenKfId") or ""
        return KfAuthChange(
            to_user=to_user,
            create_time=create_time,
            added=tuple(x for x in added.split(",") if x.strip()),
            removed=tuple(x for x in removed.split(",") if x.strip()),
        )
    return KfCallback(
        to_user=to_user, create_time=create_time, token=f.required("Token"), open_kfid=f.required("OpenKfId")
    )


def build_kf_callback(corpid: str, create_time: int, token: str, open_kfid: str) -> str:
    """The plaintext XML of a ``kf_msg_or_event`` callback (what WeCom encrypts and POSTs)."""
    return "\n".join(
        [
            "<xml>",
            element("ToUserName", corpid),
            element("CreateTime", create_time),
            element("MsgType", "event"),
            element("Event", CALLBACK_EVENT),
            element("Token", token),
            element("OpenKfId", open_kfid),
            "</xml>",
        ]
    )
