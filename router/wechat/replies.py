"""XML builders: passive replies we send to WeChat, and pushes the fake WeChat server sends to us.

Element names and order follow the spec's samples (§5.3, §5.4) exactly; text goes into CDATA (a
``]]>`` inside is split), integers are bare. In a reply ``to_user`` is the customer's openid and
``from_user`` our account id (``gh_...``); in a push it is the other way round. Builders validate
their arguments and raise ``WeChatCodecError`` naming the argument.
"""

from __future__ import annotations

from kfrouter.router.wechat.errors import WeChatCodecError
from kfrouter.router.wechat.xml import check_xml_name, element

SUCCESS = "success"
"""The plain body that tells WeChat "handled, nothing to say" (an empty body means the same)."""


def _id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WeChatCodecError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _uint(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WeChatCodecError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _message(to_user: str, from_user: str, create_time: int, msg_type: str, body: list[str]) -> str:
    lines = [
        "<xml>",
        element("ToUserName", _id(to_user, "to_user")),
        element("FromUserName", _id(from_user, "from_user")),
        element("CreateTime", _uint(create_time, "create_time")),
        element("MsgType", _id(msg_type, "msg_type")),
        *body,
        "</xml>",
    ]
    return "\n".join(lines)


# -- replies (engine -> WeChat) ------------------------------------------------------------------


def transfer_customer_service(
    to_user: str, from_user: str, create_time: int, kf_account: str | None = None
) -> str:
    """Hand the customer ``to_user`` to the kf system; pin agent ``kf_account`` when given (§5.4).

    ``TransInfo`` is emitted only for a targeted transfer (WeRoBot's always-on TransInfo was a bug).
    """
    body: list[str] = []
    if kf_account is not None:
        body = ["<TransInfo>", element("KfAccount", _id(kf_account, "kf_account")), "</TransInfo>"]
    return _message(to_user, from_user, create_time, "transfer_customer_service", body)


def text_reply(to_user: str, from_user: str, create_time: int, content: str) -> str:
    """A passive text reply shown to the customer ``to_user``."""
    if not isinstance(content, str):
        raise WeChatCodecError(f"content must be str, got {type(content).__name__}")
    return _message(to_user, from_user, create_time, "text", [element("Content", content, "content")])


# -- pushes (fake WeChat -> engine) --------------------------------------------------------------


def build_text_message(to_user: str, from_user: str, create_time: int, content: str, msg_id: int) -> str:
    """A user text message push: ``to_user`` = our account, ``from_user`` = the customer's openid."""
    if not isinstance(content, str):
        raise WeChatCodecError(f"content must be str, got {type(content).__name__}")
    body = [element("Content", content, "content"), element("MsgId", _uint(msg_id, "msg_id"))]
    return _message(to_user, from_user, create_time, "text", body)


def build_event(to_user: str, from_user: str, create_time: int, event: str, /, **fields: str | int) -> str:
    """An event push with extra elements in the order given, e.g.
    ``build_event("gh_x", openid, t, "kf_create_session", KfAccount="test1@test")``."""
    body = [element("Event", _id(event, "event"))]
    for name, value in fields.items():
        body.append(element(check_xml_name(name), value))
    return _message(to_user, from_user, create_time, "event", body)


def build_kf_create_session(to_user: str, openid: str, create_time: int, kf_account: str) -> str:
    return build_event(
        to_user, openid, create_time, "kf_create_session", KfAccount=_id(kf_account, "kf_account")
    )


def build_kf_close_session(to_user: str, openid: str, create_time: int, kf_account: str) -> str:
    return build_event(
        to_user, openid, create_time, "kf_close_session", KfAccount=_id(kf_account, "kf_account")
    )


def build_kf_switch_session(
    to_user: str, openid: str, create_time: int, from_kf_account: str, to_kf_account: str
) -> str:
    return build_event(
        to_user,
        openid,
        create_time,
        "kf_switch_session",
        FromKfAccount=_id(from_kf_account, "from_kf_account"),
        ToKfAccount=_id(to_kf_account, "to_kf_account"),
    )


def build_menu_click(to_user: str, openid: str, create_time: int, key: str) -> str:
    if not isinstance(key, str):
        raise WeChatCodecError(f"key must be str, got {type(key).__name__}")
    return build_event(to_user, openid, create_time, "CLICK", EventKey=key)
