"""Inputs in: the webhook intake, the engine's inbox, and the one task that drives the engine.

``Intake`` turns WeChat's pushes into persisted inputs (see its docstring); ``record_session_event`` is
what a session event writes to the store, however it came in. Everything that happens to the routing state
— pushes, API outcomes, poll snapshots, admin actions — is put into one ``asyncio.Queue`` and applied by one
task, so the engine (which is not thread-safe and not re-entrant) has a single thread of control and every
input is applied in arrival order.

``drive()`` is that task's loop. It waits on the inbox with a timeout until the engine's next deadline
(``next_deadline()``, ``inf`` when none) or ``sweep_s`` (a periodic sweep, Chatwoot #10583), whichever
comes first; it calls ``tick(now)`` whenever the wait times out, the deadline has passed or ``sweep_s``
went by since the last tick (so a busy inbox does not postpone the sweep). An exception from ``step`` is
handed to ``on_error`` with its item and the loop goes on (one bad input must never stop routing);
``CancelledError`` is re-raised, as always.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from aiohttp import web
from attrs import define, field

from kfrouter.router.clock import Clock
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core import rules
from kfrouter.router.core.desk import Desk
from kfrouter.router.core.intake import Ignore, Leave, Reply, Request
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.edges.upstream import Upstream, build_forward
from kfrouter.router.logs import fields_of, words
from kfrouter.router.observe import HumanAsked, Observation, PushReceived
from kfrouter.router.wechat import replies
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import WeChatCodecError
from kfrouter.router.wechat.push import (
    GenericEvent,
    KfCloseSession,
    KfCreateSession,
    KfSwitchSession,
    MenuClick,
    Push,
    UserMessage,
)

log = logging.getLogger("kfrouter.daemon")

_REQUEST_QUERY: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "kfrouter_request_query", default=None
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def with_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``handler(request)`` with the request's query string readable by ``request_query()`` in it (and in
    the tasks it starts)."""
    token = _REQUEST_QUERY.set(request.query)  # read-only already; copied only when asked for
    try:
        return await handler(request)
    finally:
        _REQUEST_QUERY.reset(token)


def request_query() -> Mapping[str, str] | None:
    """The query string of the callback request being handled (``with_query``), if any: a copy (asked for
    only when a push is forwarded, not for every push)."""
    query = _REQUEST_QUERY.get()
    return None if query is None else MappingProxyType(dict(query))


@define
class Item:
    """One input: ``payload`` (an engine event, or a daemon-internal input the step understands),
    the future of a caller awaiting its result (``submit``), and how often it was retried already."""

    payload: Any
    future: asyncio.Future[Any] | None = None
    attempt: int = 0
    meta: dict[str, Any] = field(factory=dict)


# the counter of each kind of push, made once (on_push counts every push)
_PUSH_COUNTERS = {
    t.__name__: f"push:{t.__name__}"
    for t in (UserMessage, MenuClick, KfCreateSession, KfCloseSession, KfSwitchSession, GenericEvent)
}

_WAKE = object()  # a no-op item: makes the loop re-check deadlines at once


class Inbox:
    """FIFO of ``Item``s; unbounded (inputs are small and arrive at tens per second at most)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Item] = asyncio.Queue()

    def __len__(self) -> int:
        return self._queue.qsize()

    def put(self, payload: Any, *, future: asyncio.Future[Any] | None = None, attempt: int = 0) -> Item:
        item = Item(payload=payload, future=future, attempt=attempt)
        self._queue.put_nowait(item)
        return item

    def requeue(self, item: Item) -> None:
        """Put an item back at the end (e.g. to retry it once after a poll)."""
        self._queue.put_nowait(item)

    def wake(self) -> None:
        """Make the loop look at the engine's deadlines now (after the clock was moved, in tests)."""
        self._queue.put_nowait(Item(payload=_WAKE))

    async def get(self, timeout: float | None) -> Item | None:
        """The next item, or ``None`` when ``timeout`` seconds passed first (``None`` = wait forever)."""
        if self._queue.qsize():
            return self._queue.get_nowait()
        if timeout is not None and timeout <= 0:
            return None
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    def drain_pending(self) -> list[Item]:
        """Take every queued item without processing it (shutdown: fail their futures)."""
        out: list[Item] = []
        while self._queue.qsize():
            out.append(self._queue.get_nowait())
        return out


async def drive(
    inbox: Inbox,
    *,
    step: Callable[[Item, float], Any],
    tick: Callable[[float], Any],
    next_deadline: Callable[[], float],
    now: Callable[[], float],
    on_error: Callable[[Item, Exception], None],
    sweep_s: float = 5.0,
) -> None:
    """Apply inbox items and engine timers forever (see the module docstring). Never returns."""
    last_tick = now()
    while True:
        deadline = next_deadline()
        wait = sweep_s if math.isinf(deadline) else max(0.0, min(deadline - now(), sweep_s))
        item = await inbox.get(wait)
        if item is not None and item.payload is not _WAKE:
            try:
                result = step(item, now())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                on_error(item, exc)
            else:
                if item.future is not None and not item.future.done():
                    item.future.set_result(result)
        t = now()
        if item is None or item.payload is _WAKE or t >= next_deadline() or t - last_tick >= sweep_s:
            last_tick = t  # a busy inbox must not postpone the sweep
            try:
                tick(t)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("engine tick failed; routing goes on")


def record_session_event(store: Store, event: ev.Event, now: float) -> None:
    """What a session event — pushed, pulled from WeCom, or an API call's outcome — changes in the store: a
    session began, ended or moved to another agent, or a reservation came to nothing (``CreateFailed``).
    Other events change nothing here."""
    if isinstance(event, ev.SessionCreated):
        store.record_session_start(event.openid, event.kf_account, now)
    elif isinstance(event, ev.SessionClosed):
        store.record_session_end(event.openid, event.kf_account, now)
    elif isinstance(event, ev.SessionSwitched):
        store.record_session_switch(event.openid, event.to_account, now)
    elif isinstance(event, ev.CreateFailed):
        store.end_reservation(event.openid)


class Intake:
    """WeChat's pushes in: decide (``router.rules``), persist, hand to the inbox, answer.

    ``on_push`` is the push receiver's callback (its return value is the reply body); ``admit`` lets a
    callback request through to the receiver, or answers 503 once ``closed`` (shutdown: WeChat retries
    later), and remembers the request's query string for forwarding. ``store`` and ``upstream`` are set
    by the daemon when it starts. The engine is only read here (``state``, ``with_agent``, ``agents``):
    it is driven by the engine task alone.

    What is committed before the answer, each in one transaction with the push's dedup key (so a push
    WeChat delivers again after a restart is not applied twice) — a job of the store's group commit
    (``await store.commit(work)``: pushes that arrive together share one transaction and one fsync):

    - a request for a human: the waiting customer (and their case in the session log) + the input;
      handed to the inbox once committed;
    - a cancel: the customer leaves the queue, their case is closed 'cancelled'; likewise;
    - ``kf_create_session`` / ``kf_close_session`` / ``kf_switch_session``: the session log + the input;
      handed to the inbox on arrival (WeChat's record of what happened, kept in order with the API
      outcomes), answered once committed.

    Pushes that are not for kfrouter (and messages of customers in a session, which WeChat normally
    sends to the agent) go to the upstream handler, whose reply is passed back.
    """

    def __init__(
        self,
        config: Config,
        desk: Desk,
        inbox: Inbox,
        clock: Clock,
        *,
        crypto: SafeModeCrypto | None = None,
        observe: Callable[[Observation, float], None] = lambda observation, now: None,
    ) -> None:
        self.config = config
        self.desk = desk
        self.engine = desk.engine
        self.inbox = inbox
        self.clock = clock
        self._crypto = crypto
        self._observe = observe
        self.store: Store | None = None
        self.upstream: Upstream | None = None
        self.closed = False
        self.stats: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    async def admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request to the account's callback URL: 503 once ``closed`` (WeChat retries later), else
        ``handler`` (the push receiver) with the request's query remembered for forwarding."""
        if self.closed:
            return web.Response(status=503, text="kfrouter is shutting down; retry later")
        return await with_query(request, handler)

    async def on_push(self, push: Push, raw: str) -> str | None:
        """The webhook callback: decide, persist, hand on; the return value is the reply body."""
        now = self.clock.now()
        kind = type(push).__name__
        self._count(_PUSH_COUNTERS.get(kind) or f"push:{kind}")
        self._observe(PushReceived(kind, push.openid), now)
        if isinstance(push, KfCreateSession):
            event: ev.Event = ev.SessionCreated(openid=push.openid, kf_account=push.kf_account, source="push")
            return await self._kf_event(push, event, now)
        if isinstance(push, KfCloseSession):
            return await self._kf_event(
                push, ev.SessionClosed(openid=push.openid, kf_account=push.kf_account), now
            )
        if isinstance(push, KfSwitchSession):
            event = ev.SessionSwitched(
                openid=push.openid, from_account=push.from_kf_account, to_account=push.to_kf_account
            )
            return await self._kf_event(push, event, now)
        if isinstance(push, UserMessage | MenuClick):
            return await self._user_push(push, raw, now)
        assert isinstance(push, GenericEvent)
        return await self._forward(push, raw)

    async def _kf_event(
        self, push: KfCreateSession | KfCloseSession | KfSwitchSession, event: ev.Event, now: float
    ) -> str | None:
        store = self.store
        assert store is not None

        def work(s: Store) -> bool:  # one write unit of the next group commit
            if not s.claim_push(push.dedup_key, now):
                return False
            s.append_event(now, push.event, fields_of(event))
            record_session_event(s, event, now)
            return True

        # WeChat's record of what happened: handed on in arrival order (an API outcome or an admin action
        # must not overtake it while it commits), answered once committed. A repeat after a restart reaches
        # the engine again, which takes a session event it already knows as no change.
        self.inbox.put(event)
        if not await store.commit(work):
            log.info("push %s already handled before a restart", push.dedup_key)
        return None

    async def _user_push(self, push: UserMessage | MenuClick, raw: str, now: float) -> str | None:
        """What the Desk's intake rules answer (router/core/intake.py), carried out: saved before the
        answer, handed to the engine task, replied to or forwarded."""
        openid = push.openid
        if isinstance(push, UserMessage):
            self.desk.on_user_message(openid, now)
            inbound = rules.Inbound(openid=openid, msg_type=push.msg_type, text=push.content)
        else:
            inbound = rules.Inbound(openid=openid, msg_type="event", event="CLICK", event_key=push.key)
        answer = self.desk.consider(inbound, now)
        if isinstance(answer, Request):
            await self._request_human(push, answer, now)
            return None
        if isinstance(answer, Leave):
            return await self._cancel(push, answer, now)
        if isinstance(answer, Reply):
            log.info("push from %s: replied (%s)", openid, answer.why)
            if answer.why == "listed":
                self._count("choice:listed")
            return self._text_reply(push, answer.text)
        if isinstance(answer, Ignore):
            log.info("push from %s: %s; nothing to do", openid, answer.why)
            return None
        log.info("push from %s not for kfrouter (%s): forwarded upstream", openid, answer.reason)
        return await self._forward(push, raw)

    async def _request_human(self, push: UserMessage | MenuClick, answer: Request, now: float) -> None:
        store = self.store
        assert store is not None
        e = answer.event
        tags = tuple(sorted(e.tags))

        def work(s: Store) -> bool:  # one write unit of the next group commit
            if not s.claim_push(push.dedup_key, now):
                return False
            s.add_waiting(WaitingRow(push.openid, e.group, e.priority, now, e.text, e.preferred_agent, tags))
            s.append_event(
                now,
                "customer_requested",
                {"openid": push.openid, "group": e.group, "priority": e.priority, "matched": answer.matched},
            )
            return True

        if not await store.commit(work):
            log.info("push %s already handled before a restart", push.dedup_key)
            return
        # the push's one line: the event's, with what matched (the daemon does not log this event again;
        # in JSON mode the event log writes it, from HumanAsked)
        if log.isEnabledFor(logging.INFO):
            log.info("event %s %s", "CustomerRequested", words(e, matched=answer.matched))
        self._observe(HumanAsked(e, answer.matched), now)
        self.inbox.put(e)

    async def _cancel(self, push: UserMessage | MenuClick, answer: Leave, now: float) -> str | None:
        store = self.store
        assert store is not None

        def work(s: Store) -> bool:  # one write unit of the next group commit
            if not s.claim_push(push.dedup_key, now):
                return False
            s.remove_waiting(push.openid, now, "cancelled")
            s.append_event(now, "cancel", {"openid": push.openid, "matched": answer.matched})
            return True

        if not await store.commit(work):
            return None
        log.info("push from %s cancels their wait (%s)", push.openid, answer.matched)
        self.inbox.put(ev.CustomerLeft(openid=push.openid, reason="cancelled"))
        return self._text_reply(push, answer.reply)

    def _text_reply(self, push: UserMessage | MenuClick, text: str) -> str | None:
        try:
            return replies.text_reply(push.openid, push.to_user, push.create_time, text)
        except WeChatCodecError as exc:
            log.warning("reply to %s not built: %s", push.openid, exc)
            return None

    async def _forward(self, push: Push, raw: str) -> str | None:
        if self.upstream is None:
            return None
        try:
            request = build_forward(request_query(), raw, crypto=self._crypto)
        except WeChatCodecError as exc:
            log.warning("push from %s not forwarded: %s", push.openid, exc)
            return None
        return await self.upstream.forward(request, openid=push.openid)
