"""What both fakes do with their deliveries to the developer's URL (sim/fake_push.py for WeChat's pushes,
sim/wecom_push.py for WeCom's callbacks): one HTTP client session, deliveries of one key (a customer, a kf
account) run one after another so they arrive in order, different keys run concurrently, each delivery is
POSTed up to a number of attempts with the identical query and body, and a log of every attempt; the GET
check of the URL (the echostr round trip).

Rules: the tasks are owned here — ``settle()`` waits for them (including ones started meanwhile),
``close()`` cancels what is left and closes the session, ``reset()`` cancels and forgets the log; the log
keeps the newest ``max_log`` attempts (``MAX_LOG`` unless set). A subclass schedules each delivery with
``_schedule``; the delivery waits for the one before it (``_after``), then makes its attempts
(``_attempts``), deciding what one attempt is (``_post`` it, then judge the answer) and which outcomes end
a delivery (``DONE``).
Nonces, echostrs and the 16 random bytes of an encryption are drawn from the Random passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping
from typing import Any, ClassVar

import aiohttp

MAX_LOG = 10_000  # attempts kept in the log (oldest dropped)
_ALNUM = string.ascii_letters + string.digits

Delivery = Callable[[asyncio.Task[None] | None], Coroutine[Any, Any, None]]


def random_nonce(rng: random.Random) -> str:
    """A query ``nonce`` as WeChat and WeCom send it (9-10 digits)."""
    return str(rng.randint(10**8, 10**10 - 1))


def random_echostr(rng: random.Random) -> str:
    """An ``echostr`` for a URL check when none is given."""
    return str(rng.randint(10**17, 10**19))


def random16(rng: random.Random) -> bytes:
    """The 16 random characters that begin an encrypted message."""
    return "".join(rng.choice(_ALNUM) for _ in range(16)).encode("ascii")


class OrderedDeliveries:
    """Deliveries in order per key (see the module docstring). ``failures``: deliveries that used up
    their attempts. ``DONE``: the outcomes of an attempt that end its delivery."""

    DONE: ClassVar[frozenset[str]]

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[Hashable, asyncio.Task[None]] = {}
        self.log: list[dict[str, Any]] = []
        self.max_log = MAX_LOG
        self.failures = 0

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _schedule(self, key: Hashable, delivery: Delivery) -> None:
        """Run ``delivery(previous task of key)`` as a task: it waits for that one, so ``key``'s
        deliveries stay in order."""
        prev = self._last.get(key)
        task = asyncio.get_running_loop().create_task(delivery(prev))
        self._tasks.add(task)
        self._last[key] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self._last.get(key) is t:
                del self._last[key]

        task.add_done_callback(done)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no delivery is in flight (including ones started meanwhile); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reset(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self.log.clear()
        self.failures = 0

    def _append(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)
        if len(self.log) > self.max_log:
            del self.log[: len(self.log) - self.max_log]

    @staticmethod
    async def _after(prev: asyncio.Task[None] | None) -> None:
        """Wait until ``prev`` (the key's delivery before this one) is over, however it ended."""
        if prev is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(prev)

    async def _attempts(
        self,
        attempts: int,
        attempt: Callable[[int], Awaitable[dict[str, Any]]],
        retry_interval_s: Callable[[], float],
        about: dict[str, Any],
    ) -> None:
        """One delivery: ``attempt(n)`` for n = 1, 2, ... gives the log entry of attempt n; an outcome in
        ``DONE`` ends the delivery, else the next attempt follows after ``retry_interval_s()``. When all
        ``attempts`` failed, a ``failed`` entry (``about`` says what was delivered) is logged and counted
        in ``failures``."""
        for n in range(1, attempts + 1):
            entry = await attempt(n)
            self._append(entry)
            if entry["outcome"] in self.DONE:
                return
            if n < attempts and retry_interval_s() > 0:
                await asyncio.sleep(retry_interval_s())
        self.failures += 1
        self._append({**about, "outcome": "failed", "attempt": attempts})

    async def _post(
        self, url: str, query: Mapping[str, str], body: bytes, timeout_s: float, entry: dict[str, Any]
    ) -> bytes | None:
        """POST ``body`` (XML) to ``url`` once: the answer's body, with ``entry["status"]`` set; None when
        it timed out or failed at the HTTP level, ``entry["outcome"]`` (and ``error``) saying how."""
        try:
            session = await self._client()
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with session.post(
                url, params=query, data=body, headers={"Content-Type": "text/xml"}, timeout=timeout
            ) as resp:
                answer = await resp.read()
                entry["status"] = resp.status
                return answer
        except TimeoutError:
            entry["outcome"] = "timeout"
        except aiohttp.ClientError as exc:
            entry.update(outcome="connection_error", error=f"{type(exc).__name__}: {exc}")
        return None

    async def _check_url(
        self, url: str, query: Mapping[str, str], expected: str, timeout_s: float
    ) -> dict[str, Any]:
        """The URL check: GET ``url`` with ``query``; ``ok`` when it answers HTTP 200 with ``expected``."""
        session = await self._client()
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with session.get(url, params=query, timeout=timeout) as resp:
                text = (await resp.read()).decode("utf-8", "replace")
                return {
                    "ok": resp.status == 200 and text == expected,
                    "status": resp.status,
                    "body": text[:200],
                }
        except (TimeoutError, aiohttp.ClientError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
