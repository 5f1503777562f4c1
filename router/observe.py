"""What a running daemon tells its observers (metrics, the supervisor page, the JSON event log, the demo).

One typed stream instead of a bus of string kinds and dicts. An observer is a callable
``observer(observation, now)``; the daemon calls every observer in order, from the engine task (steps)
or from the task where the thing happened (API calls, pushes). An observer must be quick and must not
raise: an exception is logged and the others still run.

- ``Stepped``: the Desk applied an input (``cause``; None for its timers): the facts of what changed
  (router/core/facts.py) and the commands it issued, in order. Facts follow from their cause, so an
  observer that needs the cause of a fact (the source of a request, the errcode of a failed create)
  reads it here instead of keeping its own record of each customer.
- ``ApiCalled``: one call of the command executor to WeChat (retries included), with its outcome.
- ``PushReceived``: a push from WeChat passed the webhook's checks and reached the intake.
- ``HumanAsked``: a push asked for a human; the intake committed the request and hands its event to the
  Desk next (its ``Stepped`` follows): the event and what in the push matched — the event log writes the
  push's one line from it.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen

from kfrouter.router.core.commands import Command
from kfrouter.router.core.events import CustomerRequested, Event
from kfrouter.router.core.facts import Fact


@frozen
class Stepped:
    """One Desk step: its cause, the facts of what changed and the commands it issued."""

    cause: Event | None
    facts: tuple[Fact, ...]
    commands: tuple[Command, ...]


@frozen
class ApiCalled:
    """One executor call to the WeChat API: ``elapsed_s`` with retries; ``errcode`` 0 when ``ok``;
    ``kind``: the kind of text, for ``message/custom/send``."""

    endpoint: str
    ok: bool
    errcode: int
    elapsed_s: float
    openid: str | None = None
    kind: str = ""


@frozen
class PushReceived:
    """A push reached the intake: its type (``UserMessage``, ``KfCreateSession``…) and customer."""

    kind: str
    openid: str


@frozen
class HumanAsked:
    """A push asked for a human: the request's event (``source='push'``) and why (``matched``:
    ``keyword:…``, ``rule:…``, ``menu:…``, ``always``, …; router/core/rules.py)."""

    event: CustomerRequested
    matched: str


Observation = Stepped | ApiCalled | PushReceived | HumanAsked
Observer = Callable[[Observation, float], None]
