"""The call machinery every HTTP API client of kfrouter shares: token, retries, backoff, stats.

``ApiClientBase`` holds one ``aiohttp.ClientSession`` and one ``TokenHolder``; subclasses add one method
per endpoint, say how a token is fetched (``_fetch_token``) and which errcode table applies
(``families``), and pass the call options every client takes (``CallOptions``: retries, backoff, timeout,
sleep, clock, token margin, a shared ``TokenHolder``) on to ``ApiClientBase.__init__``, which holds their
defaults. What every call goes through (``_call``):

* the access_token from the ``TokenHolder`` (single-flight, compare-and-swap), in the query string;
* on a ``TokenError`` (the family's token codes): invalidate that token, refresh, retry **once** — a
  token that keeps failing is surfaced after one refresh (wechatpy's recursion, spec §8);
* on ``retryable`` errors (-1 / -1000, timeouts, connection errors, 5xx): bounded exponential backoff
  with full jitter (``retries`` extra attempts, delay ``uniform(0, min(cap, base * 2**n))``, rng and
  sleep injectable);
* every other errcode: raised at once as the family's typed exception;
* ``gate`` (when set) is asked right before every HTTP request: ``False`` raises ``NotSent`` (-4) and
  nothing is sent — a daemon that lost the account's lease (or was paused past it) sends nothing.

Per-endpoint counters and latencies live in ``client.stats``. Logs go to ``kfrouter.client`` with
``access_token=`` / ``secret=`` redacted. Answers above ``MAX_RESPONSE_BYTES`` are refused.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import quote

import aiohttp
from attrs import define, field

from kfrouter.router.edges.errors import (
    OA_FAMILIES,
    BadResponse,
    Families,
    NetworkError,
    NotSent,
    TokenError,
    WeChatError,
    raise_for_response,
    redact,
)
from kfrouter.router.edges.token import SharedTokens, TokenHolder

if TYPE_CHECKING:
    from kfrouter.router.edges.store import Store

log = logging.getLogger("kfrouter.client")

MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # getmsglist: up to 10 000 records per page

Sleep = Callable[[float], Awaitable[Any]]


@define
class EndpointStats:
    """Counters for one endpoint. ``calls``: method calls; ``requests``: HTTP attempts (retries
    included); ``failures``: calls that raised; ``errcodes``: failed attempts by errcode."""

    calls: int = 0
    requests: int = 0
    failures: int = 0
    retries: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0
    errcodes: Counter[int] = field(factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "requests": self.requests,
            "failures": self.failures,
            "retries": self.retries,
            "latency_sum_s": self.latency_sum_s,
            "latency_max_s": self.latency_max_s,
            "errcodes": dict(self.errcodes),
        }


@define
class ClientStats:
    """Per-endpoint counters (keyed by path) plus token refreshes; read by the metrics layer."""

    endpoints: dict[str, EndpointStats] = field(factory=dict)
    token_refreshes: int = 0
    token_invalidations: int = 0

    def endpoint(self, path: str) -> EndpointStats:
        stats = self.endpoints.get(path)
        if stats is None:
            stats = self.endpoints[path] = EndpointStats()
        return stats

    def snapshot(self) -> dict[str, Any]:
        return {
            "endpoints": {path: s.as_dict() for path, s in sorted(self.endpoints.items())},
            "token_refreshes": self.token_refreshes,
            "token_invalidations": self.token_invalidations,
        }


def query_string(query: Mapping[str, str]) -> str:
    # '@' stays literal: WeChat once rejected '%40' in kf_account (spec §1.8); everything else is quoted.
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='@')}" for k, v in query.items())


class CallOptions(TypedDict, total=False):
    """The keyword arguments every API client passes on to ``ApiClientBase`` (which has their defaults)."""

    retries: int
    backoff_base: float
    backoff_cap: float
    rng: random.Random | None
    timeout_s: float
    sleep: Sleep
    clock: Callable[[], float]
    token_margin_s: float
    tokens: TokenHolder | None


class ApiClientBase:
    """Token, retry and stats machinery for one API credential; see the module docstring.

    Subclasses take their credentials, then ``**options: Unpack[CallOptions]`` for ``super().__init__``, and
    implement ``_fetch_token``.
    """

    families: Families = OA_FAMILIES

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        retries: int = 3,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        rng: random.Random | None = None,
        timeout_s: float = 10,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        token_margin_s: float = 120.0,
        tokens: TokenHolder | None = None,
    ) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not (backoff_base >= 0 and backoff_cap >= 0):
            raise ValueError(
                f"backoff_base and backoff_cap must be >= 0, got {backoff_base!r}, {backoff_cap!r}"
            )
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._session = session
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_base = float(backoff_base)
        self.backoff_cap = float(backoff_cap)
        self._rng = rng if rng is not None else random.Random()
        self._timeout = aiohttp.ClientTimeout(total=float(timeout_s))
        self._sleep = sleep
        self.stats = ClientStats()
        self._token_clock = clock
        # told about every error a call finally ends with (the daemon explains operator problems once)
        self.on_error: Callable[[WeChatError], None] | None = None
        # asked right before every HTTP request (token fetches too): False means this daemon no longer
        # holds the account's lease (router/ownership.py, may_act) and the request is not made (NotSent)
        self.gate: Callable[[], bool] | None = None
        self.tokens = (
            tokens
            if tokens is not None
            else TokenHolder(self._fetch_token, margin_s=token_margin_s, clock=clock)
        )

    async def _fetch_token(self, force_refresh: bool) -> tuple[str, float]:
        raise NotImplementedError

    async def pause(self, seconds: float) -> None:
        """Wait ``seconds`` with the client's sleep (the one its backoff uses; tests inject it), for a
        caller that retries on its own."""
        await self._sleep(seconds)

    def share_tokens(
        self,
        store: Store,
        *,
        owner: Callable[[], bool],
        margin_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> SharedTokens:
        """Take this account's token from ``store`` and fetch one only while ``owner()`` (this daemon
        holds the lease), storing it there (``router.edges.token.SharedTokens``): the client gets a new
        ``TokenHolder``; give it to the clients that share it (``tokens=``)."""
        shared = SharedTokens(store, self._fetch_token, owner=owner, margin_s=margin_s, clock=clock)
        self.tokens = TokenHolder(
            shared, margin_s=margin_s, clock=self._token_clock, on_invalidated=shared.rejected
        )
        return shared

    async def _token_call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes | None,
        parse: Callable[[str, dict[str, Any]], tuple[str, float]],
    ) -> tuple[str, float]:
        """One token request (no token of its own, no retry: the ``TokenHolder`` decides), counted."""
        stats = self.stats.endpoint(path)
        stats.calls += 1
        try:
            data = await self._request(
                stats, method, path, query, (lambda: body) if body is not None else None, "application/json"
            )
            result = parse(path, data)
        except WeChatError as exc:
            stats.failures += 1
            stats.errcodes[exc.errcode] += 1
            raise
        self.stats.token_refreshes += 1
        return result

    async def _call(
        self,
        path: str,
        method: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        """Call ``path`` with token, one token retry and bounded backoff; the parsed JSON on success. The
        error a call finally ends with is told to ``on_error`` (when set)."""
        stats = self.stats.endpoint(path)
        stats.calls += 1
        body_factory: Callable[[], Any] | None
        content_type: str | None = None
        if form is not None:
            body_factory = form
        elif json_body is not None:
            encoded = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            body_factory = functools.partial(bytes, encoded)
            content_type = "application/json; charset=utf-8"
        else:
            body_factory = None
        try:
            return await self._attempts(stats, path, method, query, body_factory, content_type)
        except WeChatError as exc:
            if self.on_error is not None:
                self.on_error(exc)
            raise

    async def _attempts(
        self,
        stats: EndpointStats,
        path: str,
        method: str,
        query: Mapping[str, str] | None,
        body_factory: Callable[[], Any] | None,
        content_type: str | None,
    ) -> dict[str, Any]:
        """The attempts of one call (see the module docstring): the parsed JSON of the one that worked."""
        token_retry_used = False
        attempt = 0
        while True:
            token: str | None = None
            try:
                token = await self.tokens.get()
                full_query = {"access_token": token, **(query or {})}
                data = await self._request(stats, method, path, full_query, body_factory, content_type)
                raise_for_response(path, data, self.families)
                return data
            except TokenError as exc:
                stats.errcodes[exc.errcode] += 1
                if token_retry_used or token is None:
                    stats.failures += 1
                    log.warning(
                        "%s: token rejected again after a refresh (errcode %s); giving up", path, exc.errcode
                    )
                    raise
                token_retry_used = True
                stats.retries += 1
                if self.tokens.invalidate(token):
                    self.stats.token_invalidations += 1
                log.info("%s: token rejected (errcode %s); refreshing and retrying once", path, exc.errcode)
            except WeChatError as exc:
                if exc.endpoint == path:
                    stats.errcodes[exc.errcode] += 1
                if not exc.retryable or attempt >= self.retries:
                    stats.failures += 1
                    raise
                delay = self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2**attempt)))
                attempt += 1
                stats.retries += 1
                log.info("%s: %s; retry %d/%d in %.3fs", path, exc, attempt, self.retries, delay)
                await self._sleep(delay)

    async def _request(
        self,
        stats: EndpointStats,
        method: str,
        path: str,
        query: Mapping[str, str],
        body_factory: Callable[[], Any] | None,
        content_type: str | None,
    ) -> dict[str, Any]:
        """One HTTP attempt: the JSON object answered, or ``NetworkError`` / ``BadResponse``."""
        url = f"{self.base_url}{path}"
        if query:
            url = f"{url}?{query_string(query)}"
        headers = {"Content-Type": content_type} if content_type else None
        if self.gate is not None and not self.gate():
            raise NotSent("this daemon no longer holds the account's lease", path)
        stats.requests += 1
        started = time.perf_counter()
        status = 0
        try:
            async with self._session.request(
                method,
                url,
                data=body_factory() if body_factory is not None else None,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await read_capped(resp, path)
        except TimeoutError:
            raise NetworkError(f"no answer within {self._timeout.total}s", path) from None
        except aiohttp.ClientError as exc:
            raise NetworkError(f"{type(exc).__name__}: {redact(str(exc))}", path) from None
        finally:
            elapsed = time.perf_counter() - started
            stats.latency_sum_s += elapsed
            stats.latency_max_s = max(stats.latency_max_s, elapsed)
            if log.isEnabledFor(logging.DEBUG):  # redacting the URL is most of the line's cost
                log.debug("%s %s -> HTTP %s in %.1f ms", method, redact(url), status, elapsed * 1000)
        if status >= 500:
            raise NetworkError(f"HTTP {status}", path)
        if status != 200:
            raise BadResponse(f"HTTP {status} (expected 200)", path)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadResponse(
                f"answer is not UTF-8 JSON ({type(exc).__name__}, {len(raw)} bytes)", path
            ) from None
        if not isinstance(data, dict):
            raise BadResponse(f"answer must be a JSON object, got {type(data).__name__}", path)
        return data


async def read_capped(resp: aiohttp.ClientResponse, path: str) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
        raise BadResponse(f"answer of {resp.content_length} bytes exceeds {MAX_RESPONSE_BYTES}", path)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise BadResponse(f"answer exceeds {MAX_RESPONSE_BYTES} bytes", path)
        chunks.append(chunk)
    return b"".join(chunks)
