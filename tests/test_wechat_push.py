"""Push parsing: every push kind from the spec samples, missing/invalid elements, hostile bodies, fuzzing."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kfrouter.router.wechat.errors import InvalidPush, WeChatCodecError, XmlRejected
from kfrouter.router.wechat.push import (
    EncryptedEnvelope,
    GenericEvent,
    KfCloseSession,
    KfCreateSession,
    KfSwitchSession,
    MenuClick,
    Push,
    UserMessage,
    parse_encrypted_envelope,
    parse_push,
)
from kfrouter.router.wechat.reply_parser import parse_reply
from kfrouter.router.wechat.xml import MAX_BODY_BYTES

# -- spec §5.3 samples, verbatim ------------------------------------------------------------------

TEXT = """<xml>
 <ToUserName><![CDATA[toUser]]></ToUserName>
 <FromUserName><![CDATA[fromUser]]></FromUserName>
 <CreateTime>1348831860</CreateTime>
 <MsgType><![CDATA[text]]></MsgType>
 <Content><![CDATA[this is a test]]></Content>
 <MsgId>1234567890123456</MsgId>
</xml>"""

KF_CREATE = """<xml>
<ToUserName><![CDATA[touser]]></ToUserName>
<FromUserName><![CDATA[fromuser]]></FromUserName>
<CreateTime>1399197672</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[kf_create_session]]></Event>
<KfAccount><![CDATA[test1@test]]></KfAccount>
</xml>"""

KF_CLOSE = KF_CREATE.replace("kf_create_session", "kf_close_session")

KF_SWITCH = """<xml>
<ToUserName><![CDATA[touser]]></ToUserName>
<FromUserName><![CDATA[fromuser]]></FromUserName>
<CreateTime>1399197672</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[kf_switch_session]]></Event>
<FromKfAccount><![CDATA[test1@test]]></FromKfAccount>
<ToKfAccount><![CDATA[test2@test]]></ToKfAccount>
</xml>"""

# Official custom-menu and follow/scan event samples (same shape as above).
CLICK = """<xml>
<ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[FromUser]]></FromUserName>
<CreateTime>123456789</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[CLICK]]></Event>
<EventKey><![CDATA[EVENTKEY]]></EventKey>
</xml>"""

SUBSCRIBE = """<xml>
<ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[FromUser]]></FromUserName>
<CreateTime>123456789</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[subscribe]]></Event>
</xml>"""

SCAN = """<xml>
<ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[FromUser]]></FromUserName>
<CreateTime>123456789</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[SCAN]]></Event>
<EventKey><![CDATA[SCENE_VALUE]]></EventKey>
<Ticket><![CDATA[TICKET]]></Ticket>
</xml>"""

IMAGE = """<xml>
<ToUserName><![CDATA[toUser]]></ToUserName>
<FromUserName><![CDATA[fromUser]]></FromUserName>
<CreateTime>1348831860</CreateTime>
<MsgType><![CDATA[image]]></MsgType>
<PicUrl><![CDATA[this is a url]]></PicUrl>
<MediaId><![CDATA[media_id]]></MediaId>
<MsgId>1234567890123456</MsgId>
</xml>"""


def test_text_message() -> None:
    push = parse_push(TEXT)
    assert push == UserMessage(
        to_user="toUser",
        from_user="fromUser",
        create_time=1348831860,
        msg_type="text",
        msg_id=1234567890123456,
        content="this is a test",
    )
    assert isinstance(push, UserMessage)
    assert push.openid == "fromUser"
    assert push.fields == {}
    assert push.dedup_key == "msg:1234567890123456"
    assert parse_push(TEXT.encode("utf-8")) == push  # bytes and str alike


def test_image_message_keeps_other_elements_in_fields() -> None:
    push = parse_push(IMAGE)
    assert isinstance(push, UserMessage)
    assert (push.msg_type, push.content) == ("image", "")
    assert push.fields == {"PicUrl": "this is a url", "MediaId": "media_id"}
    with pytest.raises(TypeError):
        push.fields["x"] = "y"  # type: ignore[index]
    hash(push)  # frozen values are hashable despite the mapping


def test_kf_create_session() -> None:
    push = parse_push(KF_CREATE)
    assert push == KfCreateSession(
        to_user="touser", openid="fromuser", create_time=1399197672, kf_account="test1@test"
    )
    assert push.dedup_key == "evt:fromuser:1399197672:kf_create_session"


def test_kf_close_session() -> None:
    push = parse_push(KF_CLOSE)
    assert push == KfCloseSession(
        to_user="touser", openid="fromuser", create_time=1399197672, kf_account="test1@test"
    )
    assert push.dedup_key == "evt:fromuser:1399197672:kf_close_session"


def test_kf_switch_session() -> None:
    push = parse_push(KF_SWITCH)
    assert push == KfSwitchSession(
        to_user="touser",
        openid="fromuser",
        create_time=1399197672,
        from_kf_account="test1@test",
        to_kf_account="test2@test",
    )
    assert push.dedup_key == "evt:fromuser:1399197672:kf_switch_session"


def test_menu_click() -> None:
    push = parse_push(CLICK)
    assert push == MenuClick(to_user="toUser", openid="FromUser", create_time=123456789, key="EVENTKEY")
    assert push.dedup_key == "evt:FromUser:123456789:CLICK"


def test_generic_events() -> None:
    sub = parse_push(SUBSCRIBE)
    assert sub == GenericEvent(to_user="toUser", openid="FromUser", create_time=123456789, event="subscribe")
    assert sub.dedup_key == "evt:FromUser:123456789:subscribe"
    scan = parse_push(SCAN)
    assert isinstance(scan, GenericEvent)
    assert scan.event == "SCAN"
    assert scan.fields == {"EventKey": "SCENE_VALUE", "Ticket": "TICKET"}
    assert scan.dedup_key == "evt:FromUser:123456789:SCAN"


def test_nested_event_fields_are_flattened() -> None:
    body = SUBSCRIBE.replace(
        "<Event><![CDATA[subscribe]]></Event>",
        "<Event><![CDATA[location_select]]></Event><EventKey><![CDATA[k]]></EventKey>"
        "<SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y></SendLocationInfo>"
        "<Dummy/>",
    )
    push = parse_push(body)
    assert isinstance(push, GenericEvent)
    assert push.fields == {
        "EventKey": "k",
        "SendLocationInfo/Location_X": "23",
        "SendLocationInfo/Location_Y": "113",
        "Dummy": "",
    }


def test_compatible_mode_body_parses_both_ways() -> None:
    body = TEXT.replace("</xml>", "<Encrypt><![CDATA[abc=]]></Encrypt></xml>")
    push = parse_push(body)
    assert isinstance(push, UserMessage) and push.content == "this is a test"
    assert push.fields == {"Encrypt": "abc="}
    assert parse_encrypted_envelope(body) == EncryptedEnvelope(to_user="toUser", encrypt="abc=")


def test_encrypted_envelope() -> None:
    env = parse_encrypted_envelope(
        b"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt>QUJD</Encrypt></xml>"
    )
    to_user, encrypt = env
    assert (to_user, encrypt) == ("gh_1", "QUJD")
    assert parse_encrypted_envelope("<xml><Encrypt>QUJD</Encrypt></xml>").to_user is None
    with pytest.raises(InvalidPush, match="<Encrypt> is missing"):
        parse_encrypted_envelope("<xml><ToUserName>gh</ToUserName></xml>")


def test_whitespace_around_ids_and_numbers_is_ignored_but_content_kept() -> None:
    body = TEXT.replace("<![CDATA[fromUser]]>", " fromUser\n").replace(
        "<![CDATA[this is a test]]>", "<![CDATA[  two  spaces ]]>"
    )
    push = parse_push(body.replace("1348831860", " 1348831860 "))
    assert isinstance(push, UserMessage)
    assert (push.from_user, push.create_time, push.content) == ("fromUser", 1348831860, "  two  spaces ")


def test_empty_text_content_is_allowed() -> None:
    push = parse_push(TEXT.replace("<![CDATA[this is a test]]>", ""))
    assert isinstance(push, UserMessage) and push.content == ""


# -- missing / invalid elements ---------------------------------------------------------------------


def drop(xml: str, tag: str) -> str:
    start = xml.index(f"<{tag}>")
    end = xml.index(f"</{tag}>") + len(f"</{tag}>")
    return xml[:start] + xml[end:]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (drop(TEXT, "ToUserName"), "<ToUserName> is missing"),
        (drop(TEXT, "FromUserName"), "<FromUserName> is missing"),
        (drop(TEXT, "CreateTime"), "<CreateTime> is missing"),
        (drop(TEXT, "MsgType"), "<MsgType> is missing"),
        (drop(TEXT, "MsgId"), "<MsgId> is missing"),
        (drop(TEXT, "Content"), "<Content> is missing"),
        (drop(KF_CREATE, "Event"), "<Event> is missing"),
        (drop(KF_CREATE, "KfAccount"), "<KfAccount> is missing"),
        (drop(KF_CLOSE, "KfAccount"), "<KfAccount> is missing"),
        (drop(KF_SWITCH, "FromKfAccount"), "<FromKfAccount> is missing"),
        (drop(KF_SWITCH, "ToKfAccount"), "<ToKfAccount> is missing"),
        (drop(CLICK, "EventKey"), "<EventKey> is missing"),
        (TEXT.replace("<![CDATA[fromUser]]>", "  "), "<FromUserName> is empty"),
        (KF_CREATE.replace("<![CDATA[test1@test]]>", ""), "<KfAccount> is empty"),
        (TEXT.replace("1348831860", "13488x1860"), "<CreateTime> must be a non-negative integer"),
        (TEXT.replace("1348831860", "-1"), "<CreateTime> must be a non-negative integer"),
        (TEXT.replace("1348831860", "9" * 30), "<CreateTime> must be a non-negative integer"),
        (TEXT.replace("1234567890123456", "18446744073709551616"), "<MsgId> must be a non-negative integer"),
        (TEXT.replace("1234567890123456", "１２３"), "<MsgId> must be a non-negative integer"),
        (TEXT.replace("</xml>", "<MsgId>1</MsgId></xml>"), "<MsgId> appears more than once"),
        (KF_CREATE.replace("<![CDATA[test1@test]]>", "<a>x</a>"), "<KfAccount> must contain text"),
    ],
)
def test_invalid_push_names_the_element(body: str, fragment: str) -> None:
    with pytest.raises(InvalidPush, match=fragment) as exc:
        parse_push(body)
    assert exc.value.http_status == 400
    assert isinstance(exc.value, XmlRejected)


def test_max_msg_id_accepted() -> None:
    push = parse_push(TEXT.replace("1234567890123456", str(2**64 - 1)))
    assert push.dedup_key == f"msg:{2**64 - 1}"


# -- hostile and non-XML bodies --------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol4;</Content><MsgId>1</MsgId></xml>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content><MsgId>1</MsgId></xml>"""

EXTERNAL_DTD = '<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd"><xml/>'
PARAMETER_ENTITY = '<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]><xml/>'
PLAIN_DTD = "<!DOCTYPE xml><xml><a>1</a></xml>"


@pytest.mark.parametrize(
    "body",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD, PARAMETER_ENTITY, PLAIN_DTD],
    ids=["billion-laughs", "external-entity", "external-dtd", "parameter-entity", "plain-dtd"],
)
def test_dtd_and_entities_rejected(body: str) -> None:
    with pytest.raises(XmlRejected, match="forbidden XML features") as exc:
        parse_push(body)
    assert exc.value.http_status == 400


def test_undefined_entity_reference_rejected() -> None:
    with pytest.raises(XmlRejected, match="not well-formed") as exc:
        parse_push(TEXT.replace("this is a test", "]]>&xxe;<![CDATA["))
    assert exc.value.http_status == 400


def padded_text(total_bytes: int) -> str:
    body = TEXT.replace("this is a test", "")
    return body.replace("<![CDATA[]]>", "<![CDATA[" + "x" * (total_bytes - len(body.encode())) + "]]>")


def test_oversize_body_rejected_with_413() -> None:
    at_limit = padded_text(MAX_BODY_BYTES)
    assert len(at_limit.encode()) == MAX_BODY_BYTES
    assert isinstance(parse_push(at_limit), UserMessage)
    with pytest.raises(XmlRejected, match=f"{MAX_BODY_BYTES + 1} bytes, over the {MAX_BODY_BYTES}") as exc:
        parse_push(padded_text(MAX_BODY_BYTES + 1).encode())
    assert exc.value.http_status == 413
    # the cap counts UTF-8 bytes, not characters
    with pytest.raises(XmlRejected) as exc:
        parse_push(TEXT.replace("this is a test", "中" * (MAX_BODY_BYTES // 3)))
    assert exc.value.http_status == 413
    with pytest.raises(XmlRejected) as exc:
        parse_push(TEXT, max_bytes=100)
    assert exc.value.http_status == 413


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"success", "not XML"),
        (b'{"ToUserName": "a"}', "not XML"),
        (b"\xff\xfe<\x00x\x00", "not UTF-8"),
        ("<xml>中文</xml>".encode("gbk"), "not UTF-8"),
        (b"<xml><ToUserName>a</ToUserName>", "not well-formed"),
        (b"<xml></xml><xml></xml>", "not well-formed"),
        (b"<root><ToUserName>a</ToUserName></root>", "root element <root>, expected <xml>"),
        (b'<w:xml xmlns:w="urn:x"/>', "expected <xml>"),
        (b"<XML/>", "root element <XML>"),
        ("<xml>\ud800</xml>", "unencodable character at index 5"),
        (b"<xml>\x00</xml>", "not well-formed"),
    ],
)
def test_non_xml_bodies_rejected_with_400(body: bytes | str, fragment: str) -> None:
    with pytest.raises(XmlRejected, match=fragment) as exc:
        parse_push(body)
    assert exc.value.http_status == 400


def test_utf8_bom_and_declaration_accepted() -> None:
    body = b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n' + TEXT.encode()
    assert parse_push(body) == parse_push(TEXT)


def test_non_bytes_body_rejected() -> None:
    with pytest.raises(XmlRejected, match="must be bytes or str"):
        parse_push(12)  # type: ignore[arg-type]


# -- fuzzing: only WeChatCodecError subclasses may escape --------------------------------------------


def parse_or_codec_error(body: bytes | str) -> Push | None:
    try:
        push = parse_push(body)
    except WeChatCodecError:
        return None
    assert isinstance(
        push, UserMessage | KfCreateSession | KfCloseSession | KfSwitchSession | MenuClick | GenericEvent
    )
    assert push.dedup_key.startswith(("msg:", "evt:"))
    return push


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    parse_or_codec_error(body)
    for parser in (parse_encrypted_envelope, parse_reply):
        with contextlib.suppress(WeChatCodecError):
            parser(body)


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_fuzz_arbitrary_text(body: str) -> None:
    parse_or_codec_error(body)


TAGS = [
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "Event",
    "MsgId",
    "Content",
    "KfAccount",
    "FromKfAccount",
    "ToKfAccount",
    "EventKey",
    "Encrypt",
    "TransInfo",
    "x",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "text",
            "event",
            "kf_create_session",
            "kf_close_session",
            "kf_switch_session",
            "CLICK",
            "subscribe",
            "1",
            "0",
            "-1",
            "18446744073709551616",
            "",
            " ",
            "a@b",
        ]
    ),
    st.integers(-5, 2**70).map(str),
    st.text(max_size=12),
)


def _render(tag: str, value: str, style: int) -> str:
    if style == 0:
        return f"<{tag}><![CDATA[{value}]]></{tag}>"
    if style == 1:
        return f"<{tag}>{value}</{tag}>"
    return f"<{tag}><{tag}>{value}</{tag}></{tag}>"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.tuples(st.sampled_from(TAGS), VALUES, st.integers(0, 2)), max_size=10),
    prefix=st.sampled_from(["", "<?xml version='1.0'?>", "<!DOCTYPE xml>", "\ufeff", " "]),
    root=st.sampled_from(["xml", "xml", "xml", "root"]),
)
def test_fuzz_structured_xml(items: list[tuple[str, str, int]], prefix: str, root: str) -> None:
    body = prefix + f"<{root}>" + "".join(_render(t, v, s) for t, v, s in items) + f"</{root}>"
    push = parse_or_codec_error(body)
    parse_or_codec_error(body.encode("utf-8", "surrogatepass"))
    if push is not None:
        assert root == "xml"


SAMPLES = [TEXT, IMAGE, KF_CREATE, KF_CLOSE, KF_SWITCH, CLICK, SUBSCRIBE, SCAN]


@settings(max_examples=400)
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.sampled_from(["drop", "dup", "set", "add"]), st.integers(0, 7), VALUES), max_size=3
    ),
    style=st.sampled_from([0, 0, 1, 2]),
)
def test_fuzz_mutated_samples(sample: str, edits: list[tuple[str, int, str]], style: int) -> None:
    """Start from a valid sample and break it a little: most results parse, the rest are codec errors."""
    root = ET.fromstring(sample)
    children = [(c.tag, c.text or "") for c in root]
    for op, index, value in edits:
        i = index % max(len(children), 1)
        if op == "drop" and children:
            children.pop(i)
        elif op == "dup" and children:
            children.insert(i, children[i])
        elif op == "set" and children:
            children[i] = (children[i][0], value)
        elif op == "add":
            children.insert(i, (TAGS[index % len(TAGS)], value))
    body = "<xml>" + "".join(_render(t, v, style) for t, v in children) + "</xml>"
    push = parse_or_codec_error(body)
    event("parsed" if push is not None else "rejected")
    if not edits and style == 0:
        assert push == parse_push(sample)
