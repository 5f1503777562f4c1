"""Reading passive replies back: what the fake WeChat server does with the engine's answer to a push.

``parse_reply`` returns None for the "nothing to say" answers (``success`` or an empty body, §5.5)
and a ``Reply`` for an XML message: ``transfer_customer_service`` (with ``kf_account`` when targeted)
or any other MsgType (text, image, ...), which WeChat would deliver to the customer. Anything else
raises a ``WeChatCodecError`` subclass; WeChat would show the customer "该公众号暂时无法提供服务".
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from attrs import field, frozen

from kfrouter.router.wechat.errors import InvalidPush
from kfrouter.router.wechat.replies import SUCCESS
from kfrouter.router.wechat.xml import MAX_BODY_BYTES, ChildReader, parse_xml_root

TRANSFER = "transfer_customer_service"


def _frozen_map(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@frozen(kw_only=True)
class Reply:
    """A passive reply: ``to_user`` is the customer's openid, ``from_user`` the account id."""

    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    content: str | None = None
    kf_account: str | None = None
    fields: Mapping[str, str] = field(factory=dict, converter=_frozen_map, hash=False)

    @property
    def is_transfer(self) -> bool:
        return self.msg_type == TRANSFER


def parse_reply(body: bytes | str, *, max_bytes: int = MAX_BODY_BYTES) -> Reply | None:
    """None for ``success`` / an empty body, else the reply message; raises on anything malformed."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else bytes(body)
    if raw.strip() in (b"", SUCCESS.encode("ascii")):
        return None
    what = "reply"
    f = ChildReader(parse_xml_root(body, max_bytes=max_bytes, what=what), what)
    to_user = f.required("ToUserName")
    from_user = f.required("FromUserName")
    create_time = f.integer("CreateTime", 2**63 - 1)
    msg_type = f.required("MsgType")
    content = f.text("Content")
    kf_account: str | None = None
    if msg_type == TRANSFER and "TransInfo" in f.children:
        f.used.add("TransInfo")
        info = f.children["TransInfo"]
        accounts = [c for c in info if c.tag == "KfAccount"]
        if len(accounts) != 1 or not (accounts[0].text or "").strip():
            raise InvalidPush(f"{what}: <TransInfo> must hold exactly one non-empty <KfAccount>")
        kf_account = (accounts[0].text or "").strip()
    return Reply(
        to_user=to_user,
        from_user=from_user,
        create_time=create_time,
        msg_type=msg_type,
        content=content,
        kf_account=kf_account,
        fields=f.rest(),
    )
