"""Facts: what an engine step changed, in the past tense.

Events are what the engine is told (inputs), commands what it asks for (outputs); facts are what
happened to customers and agents while it applied an event or a tick. Every public entry of the engine
(``handle``, ``tick``, the typed calls) records the facts of that one call, in the order they happened;
``Engine.facts`` holds them until the next call. Nothing outside the engine diffs its state to learn what
happened: the Desk, the daemon's store writes, metrics, the supervisor feed and the simulator read facts.

Rules:

- a customer's visit reads ``Queued`` → (``Reserved`` → ``Released``)* → ``Reserved`` → ``Assigned`` →
  ``SessionEnded`` → ``Left``; ``Requeued`` follows a ``SessionEnded`` when kfrouter moved them (their
  session was closed to route them again); ``Left`` may come at any point before a session starts
  (cancelled, timed out, served elsewhere);
- an ``Assigned`` with ``previous`` set is a session moving from one agent to another (a switch in the
  agents' client, or WeChat naming another agent): no ``SessionEnded`` for the old one;
- facts are small NamedTuples built by the engine from its own state: trusted values, read by name.
"""

from __future__ import annotations

from typing import NamedTuple


class Queued(NamedTuple):
    """A customer asked for a human and joined the queue (once per visit)."""

    openid: str
    group: str | None
    priority: int
    arrived_at: float


class Reserved(NamedTuple):
    """One unit of ``kf_account``'s capacity is held for ``openid``; a ``CreateSession`` goes out."""

    openid: str
    kf_account: str


class Released(NamedTuple):
    """A reservation ended without a session; the customer waits again at their old place.

    ``reason``: ``"failed"`` (the create failed), ``"timeout"`` (no answer in time) or ``"agent_offline"``
    (the agent went offline, was found unavailable or was removed)."""

    openid: str
    kf_account: str
    reason: str


class Assigned(NamedTuple):
    """A session of ``openid`` with ``kf_account`` started (or moved to ``kf_account`` from ``previous``).

    ``queued``: the customer came from kfrouter's queue; ``waited_s`` is then their wait, from arrival (or
    from being routed again, after ``Requeued``) to this session. False, with ``waited_s`` 0, for a session
    adopted from WeChat that kfrouter never saw waiting, and for a session moving between agents."""

    openid: str
    kf_account: str
    group: str | None
    waited_s: float
    queued: bool
    previous: str | None


class SessionEnded(NamedTuple):
    """The session of ``openid`` with ``kf_account`` is over after ``duration_s`` seconds."""

    openid: str
    kf_account: str
    group: str | None
    duration_s: float


class Requeued(NamedTuple):
    """kfrouter closed the session with ``kf_account`` to route ``openid`` again: they wait again."""

    openid: str
    kf_account: str
    group: str | None


class Left(NamedTuple):
    """The customer's visit is over.

    ``reason``: ``"served"``, ``"closed_stale"``, ``"served_elsewhere"`` (65414) or ``"left:<why>"`` (they
    left the queue: ``left:cancelled``, ``left:timeout``…). ``waiting`` is True when they left before any
    session started (an abandonment for ``left:*``); ``waited_s`` is then their wait. ``kf_account`` is
    the agent they were reserved with or in session with at that moment, if any."""

    openid: str
    reason: str
    group: str | None
    waiting: bool
    waited_s: float
    kf_account: str | None


class AgentOnline(NamedTuple):
    """An agent came online (WeChat's status), with the groups, capacity and nickname the engine knows."""

    kf_account: str
    groups: tuple[str, ...]
    capacity: int
    nickname: str


class AgentOffline(NamedTuple):
    """An agent went offline (WeChat's status, a missing row in a complete snapshot, or an unavailable
    answer to a create)."""

    kf_account: str


Fact = Queued | Reserved | Released | Assigned | SessionEnded | Requeued | Left | AgentOnline | AgentOffline
