"""Open-loop HTTP/1.1 load with little client CPU: the load bench's generator (bench/load_webhook.py).

Why not aiohttp's client: on a 2-core machine the generator shares the cores with what it measures, and
aiohttp's client spends ~0.25 ms of CPU per request — at 2,000 requests/s half a core taken from the
server under test. Here every request is built once, as bytes, before a step starts; a connection is an
``asyncio.Protocol`` that writes those bytes and reads one answer (status line, headers,
``Content-Length`` body), so a request costs the client a few microseconds of Python.

Rules:

- **Open loop.** Request *i* is due at ``t0 + i / rate`` whatever happened to the others; its latency
  runs from the due time to the last byte of the answer, so waiting for a connection counts (no
  coordinated omission).
- At most ``connections`` connections, kept alive and reused; one request in flight per connection (no
  pipelining: a server sees what a real client does). A request due while all are busy waits, first come
  first served.
- An answer is accepted only with a ``Content-Length`` (what aiohttp.web sends for every response the
  benches get); anything else — a closed connection, a malformed answer, no answer within ``timeout_s``
  — is an error of that kind, counted, never a latency.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlencode, urlsplit


class Outcome(NamedTuple):
    """One request: ``latency_s`` from its due time to its answer (None when it failed with ``error``),
    the answer's ``status`` and ``body``."""

    latency_s: float | None
    status: int
    body: bytes
    error: str


class StepResult(NamedTuple):
    """The outcomes of one step, the time from the first due time to the last answer, and the client's
    own CPU seconds (user + system of this process) during the step."""

    outcomes: list[Outcome]
    duration_s: float
    client_cpu_s: float


def build_post(url: str, params: dict[str, str], body: bytes, content_type: str = "text/xml") -> bytes:
    """The bytes of ``POST url?params`` with ``body`` (keep-alive)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + ("?" + urlencode(params) if params else "")
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = 0.0
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, due: float, request: bytes) -> None:
        assert self.transport is not None
        self.due = due
        self.busy = True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.client.fail(self, "unexpected_bytes")
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
            length = next(
                int(line.split(":", 1)[1]) for line in head[1:] if line[:15].lower() == "content-length:"
            )
        except (IndexError, ValueError, StopIteration):
            self.client.fail(self, "malformed_answer")
            return
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        self.busy = False
        self.client.answered(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self.busy = False
            self.client.fail(self, "connection_lost", close=False)
        self.client.gone(self)


class _Client:
    def __init__(self, host: str, port: int, connections: int, total: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.limit = connections
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.opening = 0
        self.open = 0
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.outcomes: list[Outcome] = []
        self.total = total
        self.done = asyncio.Event()
        self.last_answer = 0.0

    def submit(self, due: float, request: bytes) -> None:
        if self.idle:
            self.idle.pop().send(due, request)
            return
        self.waiting.append((due, request))
        if self.open + self.opening < self.limit:
            self.opening += 1
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _transport, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError as exc:
            self.opening -= 1
            if self.waiting:
                self.waiting.popleft()
                self._record(Outcome(None, 0, b"", f"connect_{type(exc).__name__}"))
            return
        self.opening -= 1
        self.open += 1
        self.conns.add(conn)
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        if conn.closed:
            return
        if self.waiting:
            due, request = self.waiting.popleft()
            conn.send(due, request)
        else:
            self.idle.append(conn)

    def answered(self, conn: _Conn, status: int, body: bytes) -> None:
        now = self.loop.time()
        self.last_answer = max(self.last_answer, now)
        self._record(Outcome(now - conn.due, status, body, ""))
        self._next(conn)

    def fail(self, conn: _Conn, error: str, *, close: bool = True) -> None:
        self._record(Outcome(None, 0, b"", error))
        conn.busy = False
        if close and conn.transport is not None:
            conn.transport.close()

    def gone(self, conn: _Conn) -> None:
        self.open -= 1
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.open + self.opening < self.limit:
            self.opening += 1
            self.loop.create_task(self._connect())

    def _record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if len(self.outcomes) >= self.total:
            self.done.set()

    def close(self) -> None:
        """Close every connection (requests still in flight are already counted as timeouts)."""
        self.waiting.clear()
        for conn in list(self.conns):
            conn.busy = False
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


async def run_open_loop(
    url: str, requests: Sequence[bytes], rate: float, *, connections: int = 512, timeout_s: float = 15.0
) -> StepResult:
    """Send ``requests`` (from ``build_post``) to the server of ``url`` at ``rate`` per second, open loop
    (see the module docstring). Requests still unanswered ``timeout_s`` after the last one was due are
    errors (``timeout``)."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"url must name a host and a port, got {url!r}")
    client = _Client(parts.hostname, parts.port, connections, len(requests))
    loop = client.loop
    cpu0 = os.times()
    t0 = loop.time() + 0.05
    n = len(requests)
    i = 0
    while i < n:
        now = loop.time()
        while i < n and t0 + i / rate <= now:
            client.submit(t0 + i / rate, requests[i])
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    if n:
        try:
            async with asyncio.timeout(timeout_s):
                await client.done.wait()
        except TimeoutError:
            pass
    missing = n - len(client.outcomes)
    client.outcomes.extend(Outcome(None, 0, b"", "timeout") for _ in range(missing))
    client.close()
    cpu1 = os.times()
    duration = max(n / rate, client.last_answer - t0)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return StepResult(client.outcomes, duration, cpu)
