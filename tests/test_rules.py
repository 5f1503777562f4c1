"""router.rules: table-driven classification of inbound pushes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.router.config import Config
from kfrouter.router.core.rules import (
    AskHuman,
    Cancel,
    ChooseAgent,
    Decision,
    Inbound,
    NotForUs,
    RoutingConfig,
    classify,
    make_directory,
)

SECRETS: dict[str, Any] = {
    "wechat": {"appid": "wx1", "secret": "s", "token": "tok"},
    "server": {"admin_token": "a" * 16},
}
GROUPS = [
    {"name": "general", "agents": ["alice@shop", "bob@shop"]},
    {"name": "billing", "agents": ["carol@shop"]},
    {"name": "vip", "agents": ["erin@shop"], "priority": 10},
]
ROUTING: dict[str, Any] = {
    "mode": "keywords",
    "keywords": ["人工", "human"],
    "menu_keys": ["HUMAN"],
    "default_group": "general",
    "cancel_menu_keys": ["LEAVE"],
    "choose_agent_keywords": ["指定客服", "choose agent"],
    "choose_agent_menu_keys": ["CHOOSE"],
    "rules": [
        {"keywords": ["退款", "refund"], "group": "billing"},
        {"menu_keys": ["VIP_LINE"], "group": "vip", "tags": ["menu-vip"]},
        {"keywords": ["投诉"], "priority": 5, "tags": ["complaint"]},
        {"keywords": ["退货"], "group": "billing", "priority": -3},
    ],
    "customers": [
        {"openids": ["oVIP"], "group": "vip", "priority": 20, "tags": ["vip"]},
        {"openids": ["oLow"], "priority": -5},
    ],
    "aliases": {"小王": "alice@shop", "1001": "alice@shop"},
}


def routing(**changes: Any) -> RoutingConfig:
    doc = {**SECRETS, "groups": GROUPS, "routing": {**ROUTING, **changes}}
    return Config.from_dict(doc, env={}).routing


KW = routing()
ALWAYS = routing(mode="always")
EXACT = routing(match="exact")


def text(t: str, openid: str = "oU") -> Inbound:
    return Inbound(openid=openid, msg_type="text", text=t)


def click(key: str, openid: str = "oU") -> Inbound:
    return Inbound(openid=openid, msg_type="event", event="CLICK", event_key=key)


def ask(
    group: str | None,
    priority: int = 0,
    tags: tuple[str, ...] = (),
    preferred: str | None = None,
    matched: str = "",
) -> AskHuman:
    return AskHuman(
        group=group, priority=priority, tags=frozenset(tags), preferred_agent=preferred, matched=matched
    )


CASES: list[tuple[str, RoutingConfig, Inbound, Decision]] = [
    # --- keywords mode
    ("plain text is not ours", KW, text("你好"), NotForUs("no keyword")),
    ("keyword asks for a human", KW, text("我要转人工"), ask("general", matched="keyword:人工")),
    ("keyword ignores case", KW, text("HUMAN please"), ask("general", matched="keyword:human")),
    ("rule keyword picks the group", KW, text("怎么退款？"), ask("billing", matched="rule:退款")),
    ("first matching rule wins", KW, text("退款投诉"), ask("billing", matched="rule:退款")),
    (
        "rule without group keeps default, adds priority/tags",
        KW,
        text("我要投诉"),
        ask("general", 5, ("complaint",), matched="rule:投诉"),
    ),
    ("group priority is a floor", KW, text("人工", "oVIP"), ask("vip", 20, ("vip",), matched="keyword:人工")),
    (
        "a rule's group beats the customer entry's group",
        KW,
        text("refund", "oVIP"),
        ask("billing", 20, ("vip",), matched="rule:refund"),
    ),
    (
        "the largest priority wins over a negative rule",
        KW,
        text("退货"),
        ask("billing", 0, matched="rule:退货"),
    ),
    (
        "negative customer priority stays above no group floor",
        KW,
        text("人工", "oLow"),
        ask("general", 0, matched="keyword:人工"),
    ),
    (
        "image in keywords mode is not ours",
        KW,
        Inbound(openid="oU", msg_type="image"),
        NotForUs("image message in keywords mode"),
    ),
    # --- always mode
    ("always: any text", ALWAYS, text("你好"), ask("general", matched="always")),
    (
        "always: image too",
        ALWAYS,
        Inbound(openid="oU", msg_type="image"),
        ask("general", matched="always:image"),
    ),
    ("always: rules still pick groups", ALWAYS, text("退款"), ask("billing", matched="rule:退款")),
    ("always: listed customer", ALWAYS, text("hi", "oVIP"), ask("vip", 20, ("vip",), matched="always")),
    # --- cancel: whole message only
    ("cancel keyword", KW, text("取消"), Cancel("keyword:取消")),
    ("cancel with punctuation and case", KW, text("  Cancel! "), Cancel("keyword:cancel")),
    ("cancel with full-width punctuation", KW, text("不等了。"), Cancel("keyword:不等了")),
    (
        "cancel inside a sentence is not a cancel",
        ALWAYS,
        text("我想取消订单"),
        ask("general", matched="always"),
    ),
    ("cancel wins in always mode", ALWAYS, text("取消"), Cancel("keyword:取消")),
    # --- menu clicks
    ("menu key asks for a human", KW, click("HUMAN"), ask("general", matched="menu:HUMAN")),
    (
        "rule menu key picks group and tags",
        KW,
        click("VIP_LINE"),
        ask("vip", 10, ("menu-vip",), matched="rule-menu:VIP_LINE"),
    ),
    ("unknown menu key is not ours", ALWAYS, click("NEWS"), NotForUs("menu key 'NEWS'")),
    ("cancel menu key", KW, click("LEAVE"), Cancel("menu:LEAVE")),
    ("choose menu key", KW, click("CHOOSE"), ChooseAgent("menu:CHOOSE")),
    (
        "event name is case-insensitive",
        KW,
        Inbound(openid="oU", msg_type="event", event="click", event_key="HUMAN"),
        ask("general", matched="menu:HUMAN"),
    ),
    # --- other events never
    (
        "subscribe is not ours",
        ALWAYS,
        Inbound(openid="oU", msg_type="event", event="subscribe"),
        NotForUs("event subscribe"),
    ),
    (
        "VIEW is not ours even with a menu-like key",
        ALWAYS,
        Inbound(openid="oU", msg_type="event", event="VIEW", event_key="HUMAN"),
        NotForUs("event VIEW"),
    ),
    # --- choosing an agent
    ("choose keyword alone lists agents", KW, text("指定客服"), ChooseAgent("keyword:指定客服")),
    (
        "choose keyword with alias",
        KW,
        text("指定客服 小王"),
        ask("general", preferred="alice@shop", matched="choose:指定客服"),
    ),
    (
        "choose with full-width colon and number",
        KW,
        text("指定客服：1001"),
        ask("general", preferred="alice@shop", matched="choose:指定客服"),
    ),
    (
        "choose with kf prefix, any case",
        KW,
        text("Choose Agent ALICE"),
        ask("general", preferred="alice@shop", matched="choose:choose agent"),
    ),
    (
        "choose with unknown name asks for the list",
        KW,
        text("指定客服 老李"),
        ChooseAgent("keyword:指定客服", query="老李"),
    ),
    (
        "a customer entry's group applies to a chosen agent",
        KW,
        text("指定客服 小王", "oVIP"),
        ask("vip", 20, ("vip",), preferred="alice@shop", matched="choose:指定客服"),
    ),
    ("a bare name without awaiting_choice is just text", KW, text("小王"), NotForUs("no keyword")),
    # --- exact match mode
    ("exact: keyword must be the whole text", EXACT, text("我要人工"), NotForUs("no keyword")),
    ("exact: whole text matches", EXACT, text("人工"), ask("general", matched="keyword:人工")),
    ("exact: rule keyword whole text", EXACT, text("退款"), ask("billing", matched="rule:退款")),
]


@pytest.mark.parametrize(("cfg", "msg", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(cfg: RoutingConfig, msg: Inbound, expected: Decision) -> None:
    assert classify(cfg, msg) == expected


AWAITING: list[tuple[str, str, Decision]] = [
    ("小王", "alias", ask("general", preferred="alice@shop", matched="choice")),
    ("bob", "kf prefix (via the directory)", ask("general", preferred="bob@shop", matched="choice")),
    ("Carol@Shop", "full account, any case", ask("general", preferred="carol@shop", matched="choice")),
    ("大卫", "nickname from WeChat", ask("general", preferred="dave@shop", matched="choice")),
    ("取消", "cancel still wins", Cancel("keyword:取消")),
    ("随便", "unknown name falls through", NotForUs("no keyword")),
]


@pytest.mark.parametrize(("body", "why", "expected"), AWAITING, ids=[a[1] for a in AWAITING])
def test_awaiting_choice(body: str, why: str, expected: Decision) -> None:
    directory = make_directory(
        KW, accounts=["alice@shop", "bob@shop", "carol@shop"], names={"大卫": "dave@shop"}
    )
    assert classify(KW, text(body), directory=directory, awaiting_choice=True) == expected


def test_directory_drops_ambiguous_names_but_aliases_win() -> None:
    d = make_directory(
        KW,
        accounts=["amy@shop", "amy@other", "bob@shop"],
        names={"Amy": "amy@shop", "小王": "bob@shop", "1002": "bob@shop"},
    )
    assert "amy" not in d  # the prefix is shared by two agents
    assert d["amy@shop"] == "amy@shop" and d["amy@other"] == "amy@other"
    assert d["小王"] == "alice@shop"  # configured alias beats the nickname
    assert d["1002"] == "bob@shop" and d["1001"] == "alice@shop"


def test_no_default_group_means_any_agent() -> None:
    doc = {**SECRETS, "routing": {"mode": "always"}}
    cfg = Config.from_dict(doc, env={}).routing
    assert classify(cfg, text("hi")) == ask(None, matched="always")


@given(st.text(max_size=40))
def test_always_mode_never_drops_a_text(body: str) -> None:
    """In always mode every text is one of ask / cancel / choose; never forwarded upstream."""
    d = classify(ALWAYS, text(body))
    assert isinstance(d, AskHuman | Cancel | ChooseAgent)
    if isinstance(d, AskHuman):
        assert d.group in {"general", "billing", "vip"} and d.priority >= 0


@given(st.text(max_size=40), st.sampled_from(["oU", "oVIP", "oLow"]))
def test_classify_is_pure(body: str, openid: str) -> None:
    assert classify(KW, text(body, openid)) == classify(KW, text(body, openid))
