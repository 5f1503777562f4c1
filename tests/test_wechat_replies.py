"""Reply and push builders: exact spec samples, CDATA escaping, validation, builder -> parser round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.wechat.errors import InvalidPush, WeChatCodecError, XmlRejected
from kfrouter.router.wechat.push import (
    GenericEvent,
    KfCloseSession,
    KfCreateSession,
    KfSwitchSession,
    MenuClick,
    UserMessage,
    parse_push,
)
from kfrouter.router.wechat.replies import (
    SUCCESS,
    build_event,
    build_kf_close_session,
    build_kf_create_session,
    build_kf_switch_session,
    build_menu_click,
    build_text_message,
    text_reply,
    transfer_customer_service,
)
from kfrouter.router.wechat.reply_parser import Reply, parse_reply
from kfrouter.router.wechat.xml import cdata

# spec §5.4, verbatim
TRANSFER = """<xml>
<ToUserName><![CDATA[touser]]></ToUserName>
<FromUserName><![CDATA[fromuser]]></FromUserName>
<CreateTime>1399197672</CreateTime>
<MsgType><![CDATA[transfer_customer_service]]></MsgType>
</xml>"""

TRANSFER_TARGETED = """<xml>
<ToUserName><![CDATA[touser]]></ToUserName>
<FromUserName><![CDATA[fromuser]]></FromUserName>
<CreateTime>1399197672</CreateTime>
<MsgType><![CDATA[transfer_customer_service]]></MsgType>
<TransInfo>
<KfAccount><![CDATA[test1@test]]></KfAccount>
</TransInfo>
</xml>"""

# spec §5.3, verbatim
KF_CREATE = """<xml>
<ToUserName><![CDATA[touser]]></ToUserName>
<FromUserName><![CDATA[fromuser]]></FromUserName>
<CreateTime>1399197672</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[kf_create_session]]></Event>
<KfAccount><![CDATA[test1@test]]></KfAccount>
</xml>"""

KF_SWITCH = """<xml>
<ToUserName><![CDATA[touser]]></ToUserName>
<FromUserName><![CDATA[fromuser]]></FromUserName>
<CreateTime>1399197672</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[kf_switch_session]]></Event>
<FromKfAccount><![CDATA[test1@test]]></FromKfAccount>
<ToKfAccount><![CDATA[test2@test]]></ToKfAccount>
</xml>"""

TEXT = """<xml>
 <ToUserName><![CDATA[toUser]]></ToUserName>
 <FromUserName><![CDATA[fromUser]]></FromUserName>
 <CreateTime>1348831860</CreateTime>
 <MsgType><![CDATA[text]]></MsgType>
 <Content><![CDATA[this is a test]]></Content>
 <MsgId>1234567890123456</MsgId>
</xml>"""


def test_success_constant() -> None:
    assert SUCCESS == "success"


def test_transfer_matches_spec_samples_exactly() -> None:
    assert transfer_customer_service("touser", "fromuser", 1399197672) == TRANSFER
    assert transfer_customer_service("touser", "fromuser", 1399197672, kf_account="test1@test") == (
        TRANSFER_TARGETED
    )


def test_kf_event_builders_match_spec_samples_exactly() -> None:
    assert build_kf_create_session("touser", "fromuser", 1399197672, "test1@test") == KF_CREATE
    assert build_event("touser", "fromuser", 1399197672, "kf_create_session", KfAccount="test1@test") == (
        KF_CREATE
    )
    assert build_kf_close_session("touser", "fromuser", 1399197672, "test1@test") == KF_CREATE.replace(
        "kf_create_session", "kf_close_session"
    )
    assert build_kf_switch_session("touser", "fromuser", 1399197672, "test1@test", "test2@test") == KF_SWITCH


def test_text_message_builder_matches_spec_sample() -> None:
    built = build_text_message("toUser", "fromUser", 1348831860, "this is a test", 1234567890123456)
    assert built == "\n".join(line.strip() for line in TEXT.splitlines())
    assert parse_push(built) == parse_push(TEXT)


def test_builders_round_trip_through_parse_push() -> None:
    assert parse_push(build_kf_create_session("gh", "oU", 5, "a@b")) == KfCreateSession(
        to_user="gh", openid="oU", create_time=5, kf_account="a@b"
    )
    assert parse_push(build_kf_close_session("gh", "oU", 5, "a@b")) == KfCloseSession(
        to_user="gh", openid="oU", create_time=5, kf_account="a@b"
    )
    assert parse_push(build_kf_switch_session("gh", "oU", 5, "a@b", "c@b")) == KfSwitchSession(
        to_user="gh", openid="oU", create_time=5, from_kf_account="a@b", to_kf_account="c@b"
    )
    assert parse_push(build_menu_click("gh", "oU", 5, "MENU_1")) == MenuClick(
        to_user="gh", openid="oU", create_time=5, key="MENU_1"
    )
    scan = parse_push(build_event("gh", "oU", 5, "SCAN", EventKey="123", Ticket="T"))
    assert scan == GenericEvent(
        to_user="gh", openid="oU", create_time=5, event="SCAN", fields={"EventKey": "123", "Ticket": "T"}
    )
    # parameter names of build_event do not collide with element names
    ev = parse_push(build_event("gh", "oU", 5, "x", event="e", to_user="t", Latitude=23))
    assert isinstance(ev, GenericEvent) and ev.fields == {"event": "e", "to_user": "t", "Latitude": "23"}


def test_cdata_splits_terminator() -> None:
    assert cdata("a]]>b") == "<![CDATA[a]]]]><![CDATA[>b]]>"
    for tricky in ["]]>", "]]>]]>", "x]]", "]", "]]", "<![CDATA[", "a]]>b]]>c", "&amp;<>\"'"]:
        reply = parse_reply(text_reply("oU", "gh", 1, tricky))
        assert reply is not None and reply.content == tricky
        push = parse_push(build_text_message("gh", "oU", 1, tricky, 7))
        assert isinstance(push, UserMessage) and push.content == tricky


@pytest.mark.parametrize("bad", ["\x00", "ok\x08", "\ufffe", "\ud800", "a\x1fb"])
def test_characters_xml_cannot_carry_are_rejected(bad: str) -> None:
    with pytest.raises(WeChatCodecError, match=r"content contains U\+.* at index"):
        text_reply("oU", "gh", 1, bad)


# Everything XML 1.0 can carry except CR (parsers normalise it to LF, even inside CDATA).
NOT_IN_XML = "".join(chr(c) for c in range(0x20) if chr(c) not in "\t\n") + "\r\ufffe\uffff"
xml_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=NOT_IN_XML), max_size=200
)
ident = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-@.", min_size=1, max_size=40
)


@given(
    to_user=ident,
    from_user=ident,
    create_time=st.integers(0, 2**63 - 1),
    content=xml_text,
    msg_id=st.integers(0, 2**64 - 1),
)
def test_text_message_round_trip(
    to_user: str, from_user: str, create_time: int, content: str, msg_id: int
) -> None:
    push = parse_push(build_text_message(to_user, from_user, create_time, content, msg_id))
    assert push == UserMessage(
        to_user=to_user,
        from_user=from_user,
        create_time=create_time,
        msg_type="text",
        msg_id=msg_id,
        content=content,
    )
    reply = parse_reply(text_reply(from_user, to_user, create_time, content))
    assert reply == Reply(
        to_user=from_user, from_user=to_user, create_time=create_time, msg_type="text", content=content
    )


@given(openid=ident, account=ident, kf=st.none() | ident, t=st.integers(0, 2**40))
def test_transfer_round_trip(openid: str, account: str, kf: str | None, t: int) -> None:
    reply = parse_reply(transfer_customer_service(openid, account, t, kf_account=kf))
    assert reply is not None and reply.is_transfer
    assert (reply.to_user, reply.from_user, reply.create_time, reply.kf_account) == (openid, account, t, kf)
    assert reply.fields == {}


UNTYPED_FLOAT: Any = 1.5
UNTYPED_NONE: Any = None


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: transfer_customer_service("", "gh", 1), "to_user must be a non-empty string"),
        (lambda: transfer_customer_service("oU", " ", 1), "from_user must be a non-empty string"),
        (lambda: transfer_customer_service("oU", "gh", -1), "create_time must be a non-negative integer"),
        (lambda: transfer_customer_service("oU", "gh", True), "create_time must be a non-negative integer"),
        (
            lambda: transfer_customer_service("oU", "gh", UNTYPED_FLOAT),
            "create_time must be a non-negative integer",
        ),
        (lambda: transfer_customer_service("oU", "gh", 1, ""), "kf_account must be a non-empty string"),
        (lambda: text_reply("oU", "gh", 1, UNTYPED_NONE), "content must be str"),
        (lambda: build_text_message("gh", "oU", 1, "x", -3), "msg_id must be a non-negative integer"),
        (lambda: build_event("gh", "oU", 1, ""), "event must be a non-empty string"),
        (lambda: build_event("gh", "oU", 1, "e", **{"1abc": "x"}), "not a plain XML name"),
        (lambda: build_event("gh", "oU", 1, "e", **{"a b": "x"}), "not a plain XML name"),
        (lambda: build_event("gh", "oU", 1, "e", Flag=True), "must be str or int"),
        (lambda: build_kf_switch_session("gh", "oU", 1, "a@b", ""), "to_kf_account must be a non-empty"),
        (lambda: build_menu_click("gh", "oU", 1, UNTYPED_NONE), "key must be str"),
    ],
)
def test_builder_argument_validation(call: object, fragment: str) -> None:
    with pytest.raises(WeChatCodecError, match=fragment):
        call()  # type: ignore[operator]


# -- parse_reply (what the fake server does with our answers) ----------------------------------------


@pytest.mark.parametrize("body", [b"", b"success", "success", b"  success\n", b"\n"])
def test_nothing_to_say_replies(body: bytes | str) -> None:
    assert parse_reply(body) is None


def test_parse_reply_kinds() -> None:
    targeted = parse_reply(TRANSFER_TARGETED)
    assert targeted == Reply(
        to_user="touser",
        from_user="fromuser",
        create_time=1399197672,
        msg_type="transfer_customer_service",
        kf_account="test1@test",
    )
    # wechatpy's untargeted rendering (element order differs) parses the same as ours
    wechatpy = """<xml>
<MsgType><![CDATA[transfer_customer_service]]></MsgType>
<FromUserName><![CDATA[gh_test]]></FromUserName>
<ToUserName><![CDATA[oUSER]]></ToUserName>
<CreateTime>1700000001</CreateTime>
</xml>"""
    assert parse_reply(wechatpy) == parse_reply(transfer_customer_service("oUSER", "gh_test", 1700000001))
    # KfAccount without CDATA parses the same
    assert parse_reply(TRANSFER_TARGETED.replace("<![CDATA[test1@test]]>", "test1@test")) == targeted


@pytest.mark.parametrize(
    ("body", "exc", "fragment"),
    [
        (
            TRANSFER_TARGETED.replace("</TransInfo>", "<KfAccount>x@y</KfAccount></TransInfo>"),
            InvalidPush,
            "exactly one",
        ),
        (TRANSFER_TARGETED.replace("<![CDATA[test1@test]]>", ""), InvalidPush, "exactly one non-empty"),
        (TRANSFER.replace("<CreateTime>1399197672</CreateTime>", ""), InvalidPush, "<CreateTime> is missing"),
        ('{"msgtype": "text"}', XmlRejected, "not XML"),
        ("<xml><Content>hi</Content>", XmlRejected, "not well-formed"),
    ],
)
def test_parse_reply_rejects(body: str, exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        parse_reply(body)
