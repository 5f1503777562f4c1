"""Classify one inbound push: not for kfrouter, a request for a human, a cancel, or a choose-agent request.

Pure: no I/O, no clock, no state. The daemon passes what it knows (``awaiting_choice``: we just sent this
customer the list of agents; ``directory``: names customers may use for agents) and acts on the decision.

Order of the checks, first match wins (documented in docs/config.md, section [routing]):

1. events other than a menu click are never ours (kf session events are handled before this);
2. a menu click: cancel keys, choose-agent keys, then ``menu_keys`` and rule menu keys ask for a human;
3. a text that *is* a cancel keyword (whole message, ignoring case and surrounding punctuation) cancels;
4. a text that starts with a choose-agent keyword names an agent (or asks for the list);
5. while ``awaiting_choice``, a text that is exactly an agent's name (or a number of the list, which the
   daemon adds to ``directory``) picks that agent, and any other number asks for the list again;
6. otherwise, in ``always`` mode every user message asks for a human; in ``keywords`` mode only a text
   matching ``keywords`` or a rule's keywords does.

A request's group is the first matching rule's group, else the customer entry's group, else
``default_group`` (``None``: any agent). Its priority is the largest of the group's priority, the rule's and
the customer entry's; its tags are the union of the rule's and the entry's.

The routing settings themselves (``RoutingConfig``, its rules and customer entries) are defined here;
``router/config.py`` reads them from ``[routing]``, ``[[routing.rules]]`` and ``[[routing.customers]]``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from attrs import field, frozen

DEFAULT_CANCEL_KEYWORDS = ("取消", "不等了", "cancel")


@frozen(kw_only=True)
class RoutingRule:
    """Matches a text containing one of ``keywords`` or a menu click on one of ``menu_keys``."""

    keywords: tuple[str, ...] = ()
    menu_keys: tuple[str, ...] = ()
    group: str | None = None
    priority: int | None = None
    tags: frozenset[str] = frozenset()


@frozen(kw_only=True)
class CustomerEntry:
    openids: tuple[str, ...]
    group: str | None = None
    priority: int | None = None
    tags: frozenset[str] = frozenset()


@frozen(kw_only=True)
class RoutingConfig:
    mode: str = "always"  # always | keywords
    match: str = "contains"  # contains | exact (for `keywords` and rule keywords)
    keywords: tuple[str, ...] = ("人工", "客服", "human", "agent")
    menu_keys: tuple[str, ...] = ()
    rules: tuple[RoutingRule, ...] = ()
    customers: Mapping[str, CustomerEntry] = field(factory=lambda: MappingProxyType({}))  # openid -> entry
    default_group: str | None = None
    cancel_keywords: tuple[str, ...] = DEFAULT_CANCEL_KEYWORDS
    cancel_menu_keys: tuple[str, ...] = ()
    choose_agent_keywords: tuple[str, ...] = ()
    choose_agent_menu_keys: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(factory=lambda: MappingProxyType({}))  # alias -> kf_account
    group_priorities: Mapping[str, int] = field(factory=lambda: MappingProxyType({}))  # derived from groups


# Stripped before exact comparisons, so "取消。" and "cancel!" still cancel.
_EDGE_PUNCTUATION = " \t\r\n\u3000。.!！?？~～,，:：;；"
# Between a choose-agent keyword and the agent's name: "指定客服：小王", "choose agent bob".
_NAME_SEPARATORS = " \t\u3000:：,，"


@frozen(kw_only=True)
class Inbound:
    """The parts of an inbound push that routing looks at.

    ``msg_type`` is WeChat's MsgType ("text", "image", "voice", ..., "event"); for events ``event`` is
    WeChat's Event ("CLICK", "VIEW", "subscribe", ...) and ``event_key`` its EventKey.
    """

    openid: str
    msg_type: str
    text: str = ""
    event: str = ""
    event_key: str = ""


@frozen
class NotForUs:
    """Not a request for kfrouter: forward upstream (or ignore). ``reason`` is for logs."""

    reason: str


@frozen(kw_only=True)
class AskHuman:
    """The customer asks for a human. ``matched`` says why, for logs ("keyword:人工", "menu:KEY", ...)."""

    group: str | None
    priority: int = 0
    tags: frozenset[str] = frozenset()
    preferred_agent: str | None = None
    matched: str = ""


@frozen
class Cancel:
    """The customer wants to leave the queue (meaningful only if they are waiting; the daemon decides)."""

    matched: str


@frozen
class ChooseAgent:
    """The customer wants to pick an agent: send them the list. ``query`` is a name we did not know."""

    matched: str
    query: str = ""


Decision = NotForUs | AskHuman | Cancel | ChooseAgent


def _fold(text: str) -> str:
    # NFKC first, so full-width letters and digits ("２", "ＡＢ") compare equal to the ASCII ones
    return unicodedata.normalize("NFKC", text).strip(_EDGE_PUNCTUATION).casefold()


def make_directory(
    routing: RoutingConfig, accounts: Iterable[str] = (), names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Names a customer may use for an agent, case-folded -> kf_account.

    ``accounts``: known kf_accounts (each is known by its full name and its prefix before "@");
    ``names``: more names, e.g. nicknames and kf_ids from ``getkflist``. A derived name shared by two
    agents is dropped as ambiguous; the configured ``[routing.aliases]`` always win. Build it when the
    agent list changes and pass it to :func:`classify`.
    """
    derived: dict[str, str | None] = {}

    def add(name: str, kf: str) -> None:
        key = _fold(name)
        if key:
            derived[key] = kf if derived.get(key, kf) == kf else None

    for kf in [*accounts, *(names or {}).values(), *routing.aliases.values()]:
        add(kf, kf)
        add(kf.partition("@")[0], kf)
    for name, kf in (names or {}).items():
        add(name, kf)
    out = {k: v for k, v in derived.items() if v is not None}
    out.update({_fold(alias): kf for alias, kf in routing.aliases.items()})
    return out


def classify(
    routing: RoutingConfig,
    msg: Inbound,
    *,
    directory: Mapping[str, str] | None = None,
    awaiting_choice: bool = False,
) -> Decision:
    """Decide what ``msg`` means (see the module docstring for the order of checks)."""
    names = make_directory(routing) if directory is None else directory
    if msg.msg_type == "event":
        if msg.event.upper() != "CLICK":
            return NotForUs(f"event {msg.event or '?'}")
        return _click(routing, msg)
    if msg.msg_type != "text":
        if routing.mode == "always":
            return _ask(routing, msg.openid, None, matched=f"always:{msg.msg_type}")
        return NotForUs(f"{msg.msg_type} message in keywords mode")
    folded = _fold(msg.text)
    for word in routing.cancel_keywords:
        if folded == _fold(word):
            return Cancel(f"keyword:{word}")
    for word in routing.choose_agent_keywords:
        w = _fold(word)
        if folded.startswith(w):
            query = folded[len(w) :].strip(_NAME_SEPARATORS)
            if not query:
                return ChooseAgent(f"keyword:{word}")
            kf = names.get(query)
            if kf is None:
                return ChooseAgent(f"keyword:{word}", query=query)
            return _ask(routing, msg.openid, None, matched=f"choose:{word}", preferred=kf)
    if awaiting_choice and folded in names:
        return _ask(routing, msg.openid, None, matched="choice", preferred=names[folded])
    if awaiting_choice and folded.isdecimal():
        return ChooseAgent("choice", query=folded)
    for rule in routing.rules:
        hit = _first_match(routing, folded, rule.keywords)
        if hit is not None:
            return _ask(routing, msg.openid, rule, matched=f"rule:{hit}")
    if routing.mode == "always":
        return _ask(routing, msg.openid, None, matched="always")
    hit = _first_match(routing, folded, routing.keywords)
    if hit is not None:
        return _ask(routing, msg.openid, None, matched=f"keyword:{hit}")
    return NotForUs("no keyword")


def _click(routing: RoutingConfig, msg: Inbound) -> Decision:
    key = msg.event_key
    if key in routing.cancel_menu_keys:
        return Cancel(f"menu:{key}")
    if key in routing.choose_agent_menu_keys:
        return ChooseAgent(f"menu:{key}")
    rule = next((r for r in routing.rules if key in r.menu_keys), None)
    if rule is not None:
        return _ask(routing, msg.openid, rule, matched=f"rule-menu:{key}")
    if key in routing.menu_keys:
        return _ask(routing, msg.openid, None, matched=f"menu:{key}")
    return NotForUs(f"menu key {key!r}")


def _first_match(routing: RoutingConfig, folded: str, words: Iterable[str]) -> str | None:
    for word in words:
        w = _fold(word)
        if (folded == w) if routing.match == "exact" else (w in folded):
            return word
    return None


def _ask(
    routing: RoutingConfig,
    openid: str,
    rule: RoutingRule | None,
    *,
    matched: str,
    preferred: str | None = None,
) -> AskHuman:
    entry: CustomerEntry | None = routing.customers.get(openid)
    group = (
        (rule.group if rule is not None else None)
        or (entry.group if entry is not None else None)
        or routing.default_group
    )
    candidates = [routing.group_priorities.get(group, 0) if group is not None else 0]
    tags: frozenset[str] = frozenset()
    for source in (rule, entry):
        if source is not None:
            if source.priority is not None:
                candidates.append(source.priority)
            tags |= source.tags
    return AskHuman(
        group=group, priority=max(candidates), tags=tags, preferred_agent=preferred, matched=matched
    )
