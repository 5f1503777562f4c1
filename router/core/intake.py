"""What to do with a customer's message: the intake's rules, pure, beside the engine in the Desk.

``IntakeRules.consider(inbound, now)`` reads the engine (is the customer waiting? in a session? which agents
may be chosen?), classifies the message (router/core/rules.py) and answers with one ``Answer``:

- ``Forward``: not for kfrouter (or the customer is in a session): the webhook passes it upstream;
- ``Request``: they ask for a human — the webhook saves the request, hands ``event`` to the engine;
- ``Leave``: a waiting customer cancels — saved, ``CustomerLeft`` handed on, ``reply`` confirms (a passive
  reply: it costs nothing from WeChat's message budget, so it is sent whatever ``[notify] enabled`` says);
- ``Reply``: a passive reply and nothing else (the numbered list of agents to choose from, "you are
  already waiting", a chosen agent who cannot be chosen now);
- ``Ignore``: a repeated request from a customer already waiting.

The agent list a customer was sent is kept for ``choice_ttl_s`` (an ``Offer``), so that a number in their
answer names an agent; ``forget(now)`` drops the old ones.

The names customers may use for agents (``rules.make_directory``: every agent's kf_account, its prefix,
its nickname, the configured aliases) are built once and kept until the roster changes: the Desk calls
``roster_changed()`` before it applies an event that can add or remove an agent or change a nickname
(``ROSTER_EVENTS``: a poll of who is online, an agent's settings, a removed agent). Building them costs
as much as the rest of a push's decision together, so not on every push.

Rules: no I/O, no clock (``now`` is an argument); the intake calls ``consider`` on the daemon's event
loop, between the engine task's steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from kfrouter.router.core import choice, rules
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.estimate import WaitEstimator
from kfrouter.router.core.events import AgentConfigured, AgentRemoved, AgentsSeen, CustomerRequested
from kfrouter.router.core.model import CustomerState
from kfrouter.router.core.notify import NotifyConfig

MAX_TEXT = 500  # characters of a customer's text kept in the store and the engine


class Forward(NamedTuple):
    """Not for kfrouter: pass the push upstream. ``reason`` is for the log."""

    reason: str


class Request(NamedTuple):
    """The customer asks for a human: ``event`` for the engine, ``matched`` (why) for the log."""

    event: CustomerRequested
    matched: str


class Leave(NamedTuple):
    """A waiting customer cancels; ``reply`` confirms it."""

    matched: str
    reply: str


class Reply(NamedTuple):
    """Only a passive reply. ``why`` is for the log and the counters ("listed", "already_waiting", ...)."""

    text: str
    why: str


class Ignore(NamedTuple):
    """Nothing to do (``why`` for the log)."""

    why: str


Answer = Forward | Request | Leave | Reply | Ignore

_WAITING = (CustomerState.WAITING, CustomerState.RESERVED)

# The events after which the agents' names may differ (an agent added or removed, a nickname set).
ROSTER_EVENTS = (AgentsSeen, AgentConfigured, AgentRemoved)


class IntakeRules:
    """The intake's decisions for one account (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        routing: rules.RoutingConfig,
        texts: NotifyConfig,
        *,
        estimator: WaitEstimator | None = None,
        choice_ttl_s: float = 300.0,
    ) -> None:
        self.engine = engine
        self.routing = routing
        self.texts = texts
        self.estimator = estimator
        self.choice_ttl_s = choice_ttl_s
        self.offers: dict[str, choice.Offer] = {}  # openid -> the list of agents we sent them
        self._directory: Mapping[str, str] | None = None  # built on first use after a roster change

    def consider(self, inbound: rules.Inbound, now: float) -> Answer:
        openid = inbound.openid
        state = self.engine.state(openid)
        if state is CustomerState.IN_SESSION:
            return Forward(f"in a session with {self.engine.with_agent(openid)}")
        offer = self.offers.get(openid)
        if offer is not None and offer.until <= now:
            del self.offers[openid]
            offer = None
        directory: Mapping[str, str] = self.directory()
        if offer is not None:  # "2" names the second agent of the list we sent
            directory = {**directory, **offer.directory()}
        decision = rules.classify(
            self.routing, inbound, directory=directory, awaiting_choice=offer is not None
        )
        waiting = state in _WAITING
        if isinstance(decision, rules.AskHuman):
            if waiting:
                self.offers.pop(openid, None)
                if decision.preferred_agent is not None:
                    return Reply(self._already_waiting_text(), "already_waiting")
                return Ignore(f"already {state.value}")
            kf = decision.preferred_agent
            if kf is not None and not choice.choosable(self.engine.agent(kf)):
                view = self.engine.agent(kf)
                name = choice.display_name(view) if view is not None else kf.partition("@")[0]
                return self._agent_list(openid, now, choice.unavailable_note(name, self.texts.language))
            self.offers.pop(openid, None)
            event = CustomerRequested(
                openid=openid,
                group=decision.group,
                priority=decision.priority,
                text=inbound.text[:MAX_TEXT],
                source="push",
                preferred_agent=kf,
                tags=decision.tags,  # type: ignore[arg-type]  # attrs' converter takes any iterable
                arrived_at=now,
            )
            return Request(event, decision.matched)
        if isinstance(decision, rules.Cancel) and waiting:
            self.offers.pop(openid, None)
            waiting_view = self.engine.waiting_view(openid, now)
            group = waiting_view.group if waiting_view is not None else None
            return Leave(decision.matched, self.texts.render("cancelled", group=group or ""))
        if isinstance(decision, rules.ChooseAgent):
            if waiting:
                return Reply(self._already_waiting_text(), "already_waiting")
            note = choice.not_found_note(decision.query, self.texts.language) if decision.query else ""
            return self._agent_list(openid, now, note)
        if isinstance(decision, rules.NotForUs):
            return Forward(decision.reason)
        return Forward(f"{type(decision).__name__} while not waiting")

    def forget(self, now: float) -> None:
        """Drop the agent lists sent longer than ``choice_ttl_s`` ago."""
        for openid, offer in list(self.offers.items()):
            if offer.until <= now:
                del self.offers[openid]

    def _agent_list(self, openid: str, now: float, note: str = "") -> Reply:
        """The numbered list of agents the customer may choose, kept for ``choice_ttl_s``."""
        offer = choice.make_offer(self.engine, self.estimator, now, self.choice_ttl_s)
        if offer.choices:
            self.offers[openid] = offer
        else:
            self.offers.pop(openid, None)
        return Reply(choice.listing_text(offer, self.texts.language, note), "listed")

    def _already_waiting_text(self) -> str:
        cancel = self.routing.cancel_keywords
        return choice.already_waiting_text(cancel[0] if cancel else "", self.texts.language)

    def roster_changed(self) -> None:
        """The agents or their nicknames may have changed: build the names again when next needed."""
        self._directory = None

    def directory(self) -> Mapping[str, str]:
        """The names customers may use for the engine's agents (read-only: shared by every push until
        ``roster_changed()``)."""
        if self._directory is None:
            views = self.engine.agents()
            names = {a.nickname: a.kf_account for a in views if a.nickname}
            built = rules.make_directory(self.routing, [a.kf_account for a in views], names)
            self._directory = MappingProxyType(built)
        return self._directory
