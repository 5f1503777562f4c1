"""Inbound pushes: XML bodies from WeChat parsed into frozen values (spec §5.2-5.3, §5.6 envelope).

``parse_push`` accepts a plaintext body (plain or compatible mode, or a decrypted safe-mode message)
and returns one of ``UserMessage``, ``KfCreateSession``, ``KfCloseSession``, ``KfSwitchSession``,
``MenuClick`` or ``GenericEvent``. It raises only ``WeChatCodecError`` subclasses (``XmlRejected``
for unusable XML, ``InvalidPush`` naming the missing or malformed element). Each value has a
``dedup_key``: ``msg:<MsgId>`` for messages, ``evt:<FromUserName>:<CreateTime>:<Event>`` for events.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from attrs import field, frozen

from kfrouter.router.wechat.xml import MAX_BODY_BYTES, ChildReader, parse_xml_root

_MAX_CREATE_TIME = 2**63 - 1
_MAX_MSG_ID = 2**64 - 1


def _frozen_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@frozen(kw_only=True)
class UserMessage:
    """A message the user sent (MsgType text, image, voice, video, location, link, ...).

    ``content`` is the ``Content`` text (``""`` for non-text messages); every other element
    (MediaId, PicUrl, Format, Location_X, ...) is in ``fields`` by tag name, nested elements as
    ``Parent/Child``.
    """

    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    msg_id: int
    content: str = ""
    fields: Mapping[str, str] = field(factory=dict, converter=_frozen_map, hash=False)

    @property
    def openid(self) -> str:
        return self.from_user

    @property
    def dedup_key(self) -> str:
        return f"msg:{self.msg_id}"


@frozen(kw_only=True)
class _Event:
    to_user: str
    openid: str
    create_time: int

    @property
    def event(self) -> str:
        raise NotImplementedError

    @property
    def dedup_key(self) -> str:
        return f"evt:{self.openid}:{self.create_time}:{self.event}"


@frozen(kw_only=True)
class KfCreateSession(_Event):
    """``kf_create_session``: agent ``kf_account`` accepted the customer ``openid``."""

    kf_account: str

    @property
    def event(self) -> str:
        return "kf_create_session"


@frozen(kw_only=True)
class KfCloseSession(_Event):
    """``kf_close_session``: agent ``kf_account`` closed the session with ``openid``."""

    kf_account: str

    @property
    def event(self) -> str:
        return "kf_close_session"


@frozen(kw_only=True)
class KfSwitchSession(_Event):
    """``kf_switch_session``: the session with ``openid`` moved from one agent to another."""

    from_kf_account: str
    to_kf_account: str

    @property
    def event(self) -> str:
        return "kf_switch_session"


@frozen(kw_only=True)
class MenuClick(_Event):
    """``CLICK``: the user tapped a custom-menu button whose key is ``key``."""

    key: str

    @property
    def event(self) -> str:
        return "CLICK"


@frozen(kw_only=True)
class GenericEvent(_Event):
    """Any other event (subscribe, unsubscribe, SCAN, LOCATION, VIEW, ...), kept as received.

    ``event`` is the ``Event`` text exactly as sent; other elements are in ``fields``.
    """

    event: str  # a field here; a fixed property on the other event classes
    fields: Mapping[str, str] = field(factory=dict, converter=_frozen_map, hash=False)


Push = UserMessage | KfCreateSession | KfCloseSession | KfSwitchSession | MenuClick | GenericEvent
EventPush = KfCreateSession | KfCloseSession | KfSwitchSession | MenuClick | GenericEvent


class EncryptedEnvelope(NamedTuple):
    """A safe-mode body: ``ToUserName`` (None when absent) and the base64 ``Encrypt`` text."""

    to_user: str | None
    encrypt: str


def parse_push(body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> Push:
    """Parse a plaintext push body into a push value; raises only ``WeChatCodecError`` subclasses."""
    what = "push"
    f = ChildReader(parse_xml_root(body, max_bytes=max_bytes, what=what), what)
    to_user = f.required("ToUserName")
    openid = f.required("FromUserName")
    create_time = f.integer("CreateTime", _MAX_CREATE_TIME)
    msg_type = f.required("MsgType")
    if msg_type.lower() != "event":
        msg_id = f.integer("MsgId", _MAX_MSG_ID)
        content = f.required("Content", allow_empty=True) if msg_type == "text" else (f.text("Content") or "")
        return UserMessage(
            to_user=to_user,
            from_user=openid,
            create_time=create_time,
            msg_type=msg_type,
            msg_id=msg_id,
            content=content,
            fields=f.rest(),
        )
    event = f.required("Event")
    match event.lower():
        case "kf_create_session":
            return KfCreateSession(
                to_user=to_user, openid=openid, create_time=create_time, kf_account=f.required("KfAccount")
            )
        case "kf_close_session":
            return KfCloseSession(
                to_user=to_user, openid=openid, create_time=create_time, kf_account=f.required("KfAccount")
            )
        case "kf_switch_session":
            return KfSwitchSession(
                to_user=to_user,
                openid=openid,
                create_time=create_time,
                from_kf_account=f.required("FromKfAccount"),
                to_kf_account=f.required("ToKfAccount"),
            )
        case "click":
            return MenuClick(
                to_user=to_user,
                openid=openid,
                create_time=create_time,
                key=f.required("EventKey", allow_empty=True),
            )
        case _:
            return GenericEvent(
                to_user=to_user, openid=openid, create_time=create_time, event=event, fields=f.rest()
            )


def parse_encrypted_envelope(body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> EncryptedEnvelope:
    """Read ``ToUserName`` and ``Encrypt`` from a safe- or compatible-mode push body."""
    what = "encrypted push"
    f = ChildReader(parse_xml_root(body, max_bytes=max_bytes, what=what), what)
    encrypt = f.required("Encrypt")
    to_user = f.text("ToUserName")
    return EncryptedEnvelope(to_user=to_user.strip() if to_user is not None else None, encrypt=encrypt)
