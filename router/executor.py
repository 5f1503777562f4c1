"""Carry out the engine's commands against the WeChat API and report what happened as engine events.

Two lanes, each a queue with its own workers, both owned by ``Executor.run()``:

- **sessions** (``CreateSession``, ``CloseSession``): ``concurrency`` workers, so one slow
  ``kfsession/create`` does not hold up the others;
- **messages** (``SendText``): one worker, so a customer's messages keep their order.

Rules:

- Every ``CloseSession`` is answered with ``SessionClosed`` on success or ``CloseFailed(errcode)``
  (65413: there was no session any more), so the engine can route a moved customer again.
- Every ``CreateSession`` is answered with exactly one outcome: ``SessionCreated(source='api')`` on
  success or ``CreateFailed(errcode)`` otherwise — the typed error's errcode, ``-2`` for a timeout or a
  network failure, ``-3`` for a malformed answer or anything unexpected. ``kfsession/create`` is never
  retried here (the create client has ``retries=0``): a retry of a call whose first attempt may have
  landed could create the session twice; the engine re-routes instead. After ``65414`` (someone else
  serves the customer) ``getsession`` tells who, and a ``SessionCreated(source='poll')`` follows.
- A rate limit (45009 / 45011) on the sessions lane pauses new creates for a back-off period.
- The reservation's time is split (``router.core.reservation.create_budget``): a ``CreateSession`` that
  waited in the queue (or a pause) longer than ``send_within_s`` is not sent and is answered
  ``CreateFailed(-2)``, and a create that is sent is bounded by ``call_s`` — so it ends before its
  reservation, after which the engine routes the customer to another agent and a late create could open a
  second session. The wait is measured on ``clock`` (the daemon's clock, the one the reservation lives on)
  from ``submit(cmd, at=...)``, the time the engine reserved.
- After ``65414``, if ``getsession`` says nobody serves the customer, ``CustomerRequested(source='recheck')``
  is reported so the customer is routed again rather than dropped.
- ``SendText`` failures 45015 / 45047 (the customer's window is closed or used up) are logged and
  never retried; so is every other send failure.
- On shutdown ``stop()`` makes workers drop what is still queued; ``drain(timeout)`` waits for the
  calls already started. Cancellation is always re-raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import CloseSession, Command, CreateSession, SendText
from kfrouter.router.core.reservation import TOKEN_SLACK_S, create_budget
from kfrouter.router.edges.client import WeChatClient
from kfrouter.router.edges.errors import (
    BAD_RESPONSE_ERRCODE,
    NETWORK_ERRCODE,
    NoSession,
    RateLimited,
    ServedByOther,
    WeChatError,
    WindowClosed,
)

log = logging.getLogger("kfrouter.daemon")

Outcome = Callable[[ev.Event], None]
CallListener = Callable[[dict[str, Any]], None]


class Executor:
    """Runs commands (see the module docstring).

    ``client``: the shared API client; ``create_client``: the same account with ``retries=0`` for
    ``kfsession/create``; ``outcome(event)``: receives every result event (the daemon persists it and
    puts it in the engine's inbox); ``on_call(info)``: one dict per API call for listeners/metrics;
    ``reservation_s``: the engine's reservation timeout (``None``: creates are never held back);
    ``clock``: the daemon's clock, in seconds.
    """

    def __init__(
        self,
        client: WeChatClient,
        create_client: WeChatClient,
        *,
        outcome: Outcome,
        on_call: CallListener | None = None,
        concurrency: int = 8,
        create_timeout_s: float = 10.0,
        rate_limit_pause_s: float = 5.0,
        max_pause_s: float = 300.0,
        reservation_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not create_timeout_s > 0:
            raise ValueError(f"create_timeout_s must be > 0, got {create_timeout_s!r}")
        self._client = client
        self._create_client = create_client
        self._outcome = outcome
        self._on_call = on_call
        self.concurrency = concurrency
        self.create_timeout_s = float(create_timeout_s)
        self._rate_limit_pause_s = rate_limit_pause_s
        self._max_pause_s = max_pause_s
        self._clock = clock
        if reservation_s is None:
            self.create_call_s = self.create_timeout_s + TOKEN_SLACK_S
            self.send_within_s = math.inf
        else:
            budget = create_budget(reservation_s, self.create_timeout_s)
            self.create_call_s, self.send_within_s = budget.call_s, budget.send_within_s
        self._sessions: asyncio.Queue[tuple[float, Command]] = asyncio.Queue()
        self._messages: asyncio.Queue[tuple[float, Command]] = asyncio.Queue()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._paused_until = 0.0
        self._pause_s = 0.0
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------------ intake

    def submit(self, command: Command, *, at: float | None = None) -> bool:
        """Queue ``command`` made at ``at`` (the clock's now by default); ``False`` (and nothing queued)
        once stopping."""
        if self._stopping:
            return False
        lane = self._messages if isinstance(command, SendText) else self._sessions
        lane.put_nowait((self._clock() if at is None else at, command))
        self._idle.clear()
        return True

    @property
    def pending(self) -> int:
        """Commands queued or running."""
        return self._sessions.qsize() + self._messages.qsize() + self._busy

    def stop(self) -> None:
        """Accept nothing new; workers drop queued commands (their reservations stay in the store)."""
        self._stopping = True
        dropped = 0
        for lane in (self._sessions, self._messages):
            while lane.qsize():
                lane.get_nowait()
                dropped += 1
        if dropped:
            log.info("shutdown: %d queued command(s) not started", dropped)
        self._update_idle()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; ``False`` if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _update_idle(self) -> None:
        if self.pending == 0:
            self._idle.set()

    # ------------------------------------------------------------------ workers

    async def run(self) -> None:
        """Run the workers until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for i in range(self.concurrency):
                tg.create_task(self._worker(self._sessions), name=f"kfrouter-sessions-{i}")
            tg.create_task(self._worker(self._messages), name="kfrouter-messages")

    async def _worker(self, lane: asyncio.Queue[tuple[float, Command]]) -> None:
        while True:
            queued_at, command = await lane.get()
            if self._stopping:
                self._update_idle()
                continue
            self._busy += 1
            try:
                await self._execute(command, queued_at)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("command %r failed unexpectedly", command)
            finally:
                self._busy -= 1
                self._update_idle()

    async def _execute(self, command: Command, queued_at: float) -> None:
        if isinstance(command, CreateSession):
            await self._respect_pause()
            if not self._held_too_long(command, queued_at):
                await self._create(command)
        elif isinstance(command, CloseSession):
            await self._close(command)
        elif isinstance(command, SendText):
            await self._send(command)
        else:  # pragma: no cover - the Command union is closed
            log.error("unknown command %r ignored", command)

    async def _respect_pause(self) -> None:
        delay = self._paused_until - self._clock()
        if delay > 0:
            log.info("kfsession/create paused %.1fs after a rate limit", delay)
            await asyncio.sleep(delay)

    def _held_too_long(self, cmd: CreateSession, queued_at: float) -> bool:
        waited = self._clock() - queued_at
        if waited <= self.send_within_s:
            return False
        self._count("kfsession/create:not_sent")
        log.warning(
            "kfsession/create %s -> %s not sent: queued %.1fs, longer than %.1fs (its reservation may be over)",
            cmd.openid,
            cmd.kf_account,
            waited,
            self.send_within_s,
        )
        errmsg = f"not sent: queued {waited:.1f}s"
        self._outcome(
            ev.CreateFailed(
                openid=cmd.openid, kf_account=cmd.kf_account, errcode=NETWORK_ERRCODE, errmsg=errmsg
            )
        )
        return True

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def _report(self, endpoint: str, started: float, errcode: int, **extra: Any) -> None:
        self._count(f"{endpoint}:{'ok' if errcode == 0 else errcode}")
        if self._on_call is not None:
            info = {
                "endpoint": endpoint,
                "ok": errcode == 0,
                "errcode": errcode,
                "elapsed_s": round(time.perf_counter() - started, 6),
                **extra,
            }
            try:
                self._on_call(info)
            except Exception:
                log.exception("api_call listener failed")

    # ------------------------------------------------------------------ kfsession/create

    async def _create(self, cmd: CreateSession) -> None:
        openid, kf = cmd.openid, cmd.kf_account
        started = time.perf_counter()
        errcode = 0
        errmsg = ""
        try:
            # The client's own timeout bounds the HTTP attempt; this one also bounds a token fetch and
            # ends the call before its reservation does.
            async with asyncio.timeout(self.create_call_s):
                await self._create_client.create_session(openid, kf)
        except TimeoutError:
            errcode, errmsg = NETWORK_ERRCODE, f"no answer within {self.create_call_s:g}s"
        except WeChatError as exc:
            errcode, errmsg = exc.errcode, exc.errmsg
            if isinstance(exc, RateLimited):
                self._pause_after_rate_limit()
        except ValueError as exc:  # the client refused the arguments
            errcode, errmsg = BAD_RESPONSE_ERRCODE, str(exc)
        self._report("kfsession/create", started, errcode, openid=openid, kf_account=kf)
        if errcode == 0:
            self._pause_s = 0.0
            log.info("kfsession/create %s -> %s: ok (%.0f ms)", openid, kf, _ms(started))
            self._outcome(ev.SessionCreated(openid=openid, kf_account=kf, source="api"))
            return
        log.warning("kfsession/create %s -> %s failed: errcode %d %s", openid, kf, errcode, errmsg[:120])
        self._outcome(ev.CreateFailed(openid=openid, kf_account=kf, errcode=errcode, errmsg=errmsg[:200]))
        if errcode in ServedByOther.CODES:
            await self._find_session(openid)

    def _pause_after_rate_limit(self) -> None:
        self._pause_s = min(self._max_pause_s, max(self._rate_limit_pause_s, self._pause_s * 2))
        self._paused_until = self._clock() + self._pause_s

    async def _find_session(self, openid: str) -> None:
        """After 65414: ask who serves ``openid`` and report that session."""
        started = time.perf_counter()
        try:
            info = await self._client.get_session(openid)
        except WeChatError as exc:
            self._report("kfsession/getsession", started, exc.errcode, openid=openid)
            log.warning("getsession %s after 65414 failed: %s", openid, exc)
            return
        self._report("kfsession/getsession", started, 0, openid=openid)
        if info.kf_account:
            log.info("getsession %s: served by %s", openid, info.kf_account)
            self._outcome(ev.SessionCreated(openid=openid, kf_account=info.kf_account, source="poll"))
        else:
            log.warning("getsession %s after 65414: nobody serves them; routing them again", openid)
            self._outcome(ev.CustomerRequested(openid=openid, source="recheck"))

    # ------------------------------------------------------------------ kfsession/close, custom/send

    async def _close(self, cmd: CloseSession) -> None:
        openid, kf = cmd.openid, cmd.kf_account
        started = time.perf_counter()
        errcode, errmsg = 0, ""
        try:
            async with asyncio.timeout(self.create_timeout_s + TOKEN_SLACK_S):
                await self._client.close_session(openid, kf)
        except TimeoutError:
            errcode, errmsg = NETWORK_ERRCODE, f"no answer within {self.create_timeout_s:g}s"
        except WeChatError as exc:
            errcode, errmsg = exc.errcode, exc.errmsg
        except ValueError as exc:
            errcode, errmsg = BAD_RESPONSE_ERRCODE, str(exc)
        self._report("kfsession/close", started, errcode, openid=openid, kf_account=kf)
        if errcode == 0:
            log.info("kfsession/close %s (%s): ok", openid, kf)
            self._outcome(ev.SessionClosed(openid=openid, kf_account=kf))
            return
        level = logging.INFO if errcode in NoSession.CODES else logging.WARNING
        log.log(level, "kfsession/close %s (%s) failed: errcode %d %s", openid, kf, errcode, errmsg[:120])
        self._outcome(ev.CloseFailed(openid=openid, kf_account=kf, errcode=errcode, errmsg=errmsg[:200]))

    async def _send(self, cmd: SendText) -> None:
        started = time.perf_counter()
        try:
            await self._client.send_text(cmd.openid, cmd.text, kf_account=cmd.kf_account)
        except WindowClosed as exc:
            self._report("message/custom/send", started, exc.errcode, openid=cmd.openid, kind=cmd.kind)
            log.info(
                "message to %s (%s) not sent: errcode %d (window closed)", cmd.openid, cmd.kind, exc.errcode
            )
            return
        except WeChatError as exc:
            self._report("message/custom/send", started, exc.errcode, openid=cmd.openid, kind=cmd.kind)
            log.warning("message to %s (%s) failed: %s", cmd.openid, cmd.kind, exc)
            return
        except ValueError as exc:
            self._report(
                "message/custom/send", started, BAD_RESPONSE_ERRCODE, openid=cmd.openid, kind=cmd.kind
            )
            log.warning("message to %s (%s) refused: %s", cmd.openid, cmd.kind, exc)
            return
        self._report("message/custom/send", started, 0, openid=cmd.openid, kind=cmd.kind)
        log.info("message to %s (%s): sent", cmd.openid, cmd.kind)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
