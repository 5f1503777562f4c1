"""router/wechat/xml.py reads a body whose only ``<!`` markup is CDATA with the C parser, anything else
with defusedxml: wherever the fast path is taken, both parsers accept and reject the same bodies and
build the same tree; every body with a DTD, an entity declaration or a comment takes defusedxml's path."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import ParseError
from xml.etree.ElementTree import fromstring as c_fromstring

import defusedxml.ElementTree as DET
import pytest
from defusedxml import DefusedXmlException
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.wechat.errors import XmlRejected
from kfrouter.router.wechat.xml import only_cdata_markup, parse_xml_root

PIECES = ("a", "人工", " ", "<", ">", "&", ";", "&amp;", "&lt;", "&e;", "]]>", "<!", "[", "DOCTYPE", "ENTITY")
text = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)
tag = st.sampled_from(("ToUserName", "Content", "MsgType", "x"))


@st.composite
def bodies(draw: st.DrawFn) -> str:
    children = []
    for _ in range(draw(st.integers(0, 4))):
        name, value = draw(tag), draw(text)
        children.append(f"<{name}><![CDATA[{value}]]></{name}>" if draw(st.booleans()) else f"<{name}>{value}</{name}>")
    before = draw(st.sampled_from(("", '<?xml version="1.0"?>', "<!DOCTYPE xml>", "<!-- c -->", "junk")))
    root = draw(st.sampled_from(("xml", "root")))
    return f"{before}<{root}>{''.join(children)}{draw(text)}</{root}>"


def shape(body: str, parse: Any) -> object:
    try:
        root = parse(body)
    except (ParseError, DefusedXmlException):
        return "refused"
    return (root.tag, root.text, [(c.tag, c.text, c.tail, len(c)) for c in root])


def defused(body: str) -> Any:
    return DET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)


@settings(max_examples=400, deadline=None)
@given(bodies())
def test_where_the_c_parser_reads_it_agrees_with_defusedxml(body: str) -> None:
    if only_cdata_markup(body):
        assert shape(body, c_fromstring) == shape(body, defused)
    else:
        assert "<!" in body.replace("<![CDATA[", "")


@pytest.mark.parametrize(
    "body",
    [
        '<!DOCTYPE xml [<!ENTITY e "x">]><xml><a>&e;</a></xml>',
        '<!DOCTYPE xml SYSTEM "http://127.0.0.1:1/x.dtd"><xml/>',
        "<xml><![CDATA[x]]><!DOCTYPE xml></xml>",
        "<xml><a>&e;</a></xml>",  # undeclared: refused by both parsers
    ],
)
def test_a_dtd_or_entity_is_still_refused(body: str) -> None:
    with pytest.raises(XmlRejected):
        parse_xml_root(body)


def test_a_push_takes_the_fast_path() -> None:
    push = "<xml><ToUserName><![CDATA[gh]]></ToUserName><Content><![CDATA[<!-- 人工 ]]></Content></xml>"
    assert not only_cdata_markup(push)  # "<!--" inside CDATA: the safe path, still read right
    assert parse_xml_root(push).find("Content").text == "<!-- 人工 "  # type: ignore[union-attr]
    plain = "<xml><ToUserName><![CDATA[gh]]></ToUserName><CreateTime>1</CreateTime></xml>"
    assert only_cdata_markup(plain)
    assert parse_xml_root(plain).find("CreateTime").text == "1"  # type: ignore[union-attr]
