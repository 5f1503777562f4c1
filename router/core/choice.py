"""Choosing an agent: the numbered list a customer picks from, and how long each agent would keep them.

Pure reads of the engine and of the wait estimator (when there is one); no I/O, and time is the ``now``
argument. The intake (router/inbox.py) sends ``listing_text`` as a passive reply and keeps the ``Offer``
for ``ttl`` seconds, so that a number in the customer's answer names an agent (``Offer.directory``).

How long an agent would keep a new customer waiting (``agent_wait``): nothing when the agent has a free
session and nobody waits for it; otherwise the customers ahead who compete for the agent's next free
session — those waiting for this agent by name, plus the agent's share (its capacity over the group's) of
the customers of its groups who wait without a preference — are served at the agent's rate
(capacity / mean session length of its group, learned by the estimator):
``queue_wait(ahead - free sessions, capacity, mu, 0)``. Without an estimator there is no rate, and the
list shows the agent's load instead (``None``).
"""

from __future__ import annotations

import math

from attrs import frozen

from kfrouter.router.core.engine import Engine
from kfrouter.router.core.estimate import WaitEstimator, queue_wait
from kfrouter.router.core.model import AgentView
from kfrouter.router.core.notify import format_wait

MAX_LISTED = 20  # a chat message, not a directory: the agents with the shortest waits, by name


@frozen
class AgentChoice:
    """One line of the list: ``number`` is what the customer may answer."""

    number: int
    kf_account: str
    name: str
    groups: tuple[str, ...]
    load: int
    capacity: int
    wait_s: float | None  # None: no estimator (the load is shown instead)


@frozen
class Offer:
    """The list sent to one customer and until when an answer to it counts."""

    until: float
    choices: tuple[AgentChoice, ...]

    def directory(self) -> dict[str, str]:
        """The numbers of the list as names: "2" -> the second agent's kf_account."""
        return {str(c.number): c.kf_account for c in self.choices}


def display_name(view: AgentView) -> str:
    """How a customer sees an agent: the nickname, else the kf_account's prefix."""
    return view.nickname or view.kf_account.partition("@")[0]


def choosable(view: AgentView | None) -> bool:
    """An agent a customer may choose now: known, online and not paused."""
    return view is not None and view.online and not view.paused


def agent_wait(
    engine: Engine,
    estimator: WaitEstimator | None,
    kf_account: str,
    now: float,
    *,
    exclude: str | None = None,
) -> float | None:
    """Seconds a customer choosing ``kf_account`` now would wait for them (see the module docstring);
    ``inf`` when the agent cannot be chosen, ``None`` when only the load is known. ``exclude``: a waiting
    customer not to count (the one the estimate is for)."""
    return _waits(engine, estimator, [kf_account], now, exclude=exclude)[kf_account]


def _waits(
    engine: Engine,
    estimator: WaitEstimator | None,
    accounts: list[str],
    now: float,
    *,
    exclude: str | None = None,
) -> dict[str, float | None]:
    named: dict[str, int] = {}
    in_group: dict[str | None, int] = {}
    for w in engine.waiting(now):  # one pass, O(n): a choice is rare next to routing
        if w.openid == exclude:
            continue
        if w.preferred_agent is not None and w.preferred_until > now:
            named[w.preferred_agent] = named.get(w.preferred_agent, 0) + 1
        else:
            in_group[w.group] = in_group.get(w.group, 0) + 1
    out: dict[str, float | None] = {}
    for kf in accounts:
        view = engine.agent(kf)
        if view is None or not choosable(view):
            out[kf] = math.inf
            continue
        ahead = float(named.get(kf, 0)) + in_group.get(None, 0) * _share(engine, view, None)
        for g in view.groups:
            ahead += in_group.get(g, 0) * _share(engine, view, g)
        left = math.ceil(ahead - 1e-9) - (view.capacity - view.load)
        if left < 0:
            out[kf] = 0.0
        elif estimator is None:
            out[kf] = None
        else:
            group = min(view.groups) if view.groups else None
            mu = 1.0 / max(estimator.service_mean(group), 1e-9)
            out[kf] = queue_wait(left, view.capacity, mu, 0.0)
    return out


def _share(engine: Engine, view: AgentView, group: str | None) -> float:
    capacity, _free = engine.group_capacity(group)
    return view.capacity / capacity if capacity > 0 else 0.0


def make_offer(engine: Engine, estimator: WaitEstimator | None, now: float, ttl: float) -> Offer:
    """The agents a customer may choose now (online, not paused), numbered from 1: at most
    ``MAX_LISTED``, those with the shortest waits, listed by name."""
    views = [v for v in engine.agents() if choosable(v)]
    waits = _waits(engine, estimator, [v.kf_account for v in views], now)

    def by_wait(v: AgentView) -> tuple[float, float, str]:
        w = waits[v.kf_account]
        return (w if w is not None else 0.0, v.load / v.capacity, v.kf_account)

    picked = sorted(views, key=by_wait)[:MAX_LISTED]
    picked.sort(key=lambda v: (display_name(v).casefold(), v.kf_account))
    return Offer(
        until=now + ttl,
        choices=tuple(
            AgentChoice(
                number=i,
                kf_account=v.kf_account,
                name=display_name(v),
                groups=tuple(sorted(v.groups)),
                load=v.load,
                capacity=v.capacity,
                wait_s=waits[v.kf_account],
            )
            for i, v in enumerate(picked, start=1)
        ),
    )


# ------------------------------------------------------------------------------------------- texts

_TEXTS = {
    "zh": {
        "head": "请回复编号或名字选择客服：",
        "none": "暂时没有在线客服，请稍后再试。",
        "now": "现在即可接入",
        "wait": "预计等待{wait}",
        "free": "空闲（{load}/{capacity}）",
        "busy": "忙碌（{load}/{capacity}）",
        "unknown_number": "没有编号为 {query} 的客服。",
        "unknown_name": "没有找到客服“{query}”。",
        "unavailable": "客服 {name} 当前不在线，请重新选择。",
        "already": "您已在人工客服队列中，暂时无法更换客服。如需指定客服，请先回复“{cancel}”退出排队，再重新选择。",
        "already_nocancel": "您已在人工客服队列中，暂时无法更换客服。",
    },
    "en": {
        "head": "Reply with a number or a name to choose an agent:",
        "none": "No agent is online right now; please try again later.",
        "now": "available now",
        "wait": "wait {wait}",
        "free": "free ({load}/{capacity})",
        "busy": "busy ({load}/{capacity})",
        "unknown_number": "There is no agent number {query}. ",
        "unknown_name": "No agent called {query!r}. ",
        "unavailable": "{name} is not online right now; please choose again. ",
        "already": (
            'You are already in the queue and cannot change agents now. To choose an agent, reply "{cancel}" '
            "to leave the queue, then choose again."
        ),
        "already_nocancel": "You are already in the queue and cannot change agents now.",
    },
}


def _texts(language: str) -> dict[str, str]:
    return _TEXTS["zh" if language == "zh" else "en"]


def listing_text(offer: Offer, language: str, note: str = "") -> str:
    """The passive reply: ``note`` (e.g. why the last answer did not count), then the numbered list."""
    t = _texts(language)
    if not offer.choices:
        return note + t["none"]
    zh = t is _TEXTS["zh"]
    lines = [note + t["head"]]
    for c in offer.choices:
        if c.wait_s is None:
            status = t["free" if c.load < c.capacity else "busy"].format(load=c.load, capacity=c.capacity)
        elif c.wait_s <= 0:
            status = t["now"]
        else:
            status = t["wait"].format(wait=format_wait(c.wait_s, "zh" if zh else "en"))
        groups = ("、" if zh else ", ").join(c.groups)
        label = f"{c.name}（{groups}）" if zh and groups else f"{c.name} ({groups})" if groups else c.name
        lines.append(f"{c.number}. {label}{' — ' if not zh else '，'}{status}")
    return "\n".join(lines)


def not_found_note(query: str, language: str) -> str:
    t = _texts(language)
    return t["unknown_number" if query.isdigit() else "unknown_name"].format(query=query)


def unavailable_note(name: str, language: str) -> str:
    return _texts(language)["unavailable"].format(name=name)


def already_waiting_text(cancel_word: str, language: str) -> str:
    t = _texts(language)
    return t["already"].format(cancel=cancel_word) if cancel_word else t["already_nocancel"]
