"""The access_token holder: cached, refreshed ahead of expiry, single-flight, compare-and-swap.

Spec §4: a token lives ``expires_in`` seconds (≤ 7200). ``stable_token`` (the default) returns the same
token while it is valid; ``cgi-bin/token`` issues a new one on every call and invalidates the previous
one after 5 minutes, with a 2000/day quota — so a stampede of refreshes is expensive either way.

Rules kept here:
* ``get()`` returns the cached token until ``margin_s`` before expiry, then refreshes. Concurrent
  callers share one in-flight refresh (one HTTP call, one result or one exception for all).
* ``invalidate(token)`` is compare-and-swap: it drops the cache only if ``token`` is still current, so
  fifty calls failing with the same stale token cause one refresh, not fifty.
* If a refresh ahead of expiry fails while the old token is still valid, the old one is used and the
  next attempt waits ``failure_cooldown_s`` (the token endpoint is never hammered).
* The holder does no I/O itself: ``fetch(force_refresh) -> (token, expires_in)`` is injected (the
  client builds it from ``token_request`` / ``parse_token_response``), and so is the clock.
* Several daemons, one account (docs/scale-out.md): ``SharedTokens`` is such a ``fetch`` backed by the
  store — every daemon reads the account's stored token first; only the lease owner fetches a new one
  from WeChat (when the stored one is missing, inside the margin or rejected) and stores it, fenced by its
  lease (a stale owner's save is refused, and its token is not used). WeChat's central-token rule:
  ``cgi-bin/token`` invalidates the previous token, so two daemons fetching would break each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from kfrouter.router.edges.errors import (
    OA_FAMILIES,
    BadResponse,
    CredentialError,
    Families,
    NotSent,
    TokenError,
    WeChatError,
    from_response,
)

if TYPE_CHECKING:
    from kfrouter.router.edges.store import Store

log = logging.getLogger("kfrouter.client")

TokenMode = Literal["stable", "basic"]
TokenFetch = Callable[[bool], Awaitable[tuple[str, float]]]

STABLE_TOKEN_PATH = "/cgi-bin/stable_token"
BASIC_TOKEN_PATH = "/cgi-bin/token"
MAX_TOKEN_CHARS = 2048  # the doc says "reserve at least 512 characters"; anything far longer is wrong
MAX_EXPIRES_IN = 7200


def token_request(
    mode: TokenMode, appid: str, secret: str, *, force_refresh: bool = False
) -> tuple[str, str, dict[str, str], bytes | None]:
    """``(method, path, query, body)`` of the token request for ``mode`` (spec §4.1 / §4.2)."""
    if mode == "stable":
        body: dict[str, object] = {
            "grant_type": "client_credential",
            "appid": appid,
            "secret": secret,
            "force_refresh": force_refresh,
        }
        return "POST", STABLE_TOKEN_PATH, {}, json.dumps(body).encode("utf-8")
    if mode == "basic":
        query = {"grant_type": "client_credential", "appid": appid, "secret": secret}
        return "GET", BASIC_TOKEN_PATH, query, None
    raise ValueError(f"token_mode must be 'stable' or 'basic', got {mode!r}")


def parse_token_response(
    endpoint: str, data: Mapping[str, Any], families: Families = OA_FAMILIES
) -> tuple[str, float]:
    """Validate a token answer into ``(access_token, expires_in)``.

    An errcode from the token endpoint is a credential problem (40001 here means "wrong AppSecret"),
    so token-family codes become ``CredentialError``; -1 / 45009 keep their own classes. ``families``
    is the API's errcode table (WeCom's ``gettoken`` answers in the same shape with its own codes).
    """
    error = from_response(endpoint, data, families)
    if error is not None:
        if isinstance(error, TokenError):
            raise CredentialError(error.errcode, error.errmsg, endpoint)
        raise error
    token = data.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or not token.isprintable():
        raise BadResponse("field 'access_token' must be a non-empty printable string", endpoint)
    raw = data.get("expires_in")
    expires_in: float
    if isinstance(raw, bool):
        raise BadResponse(f"field 'expires_in' must be a positive number, got {raw!r}", endpoint)
    if isinstance(raw, int | float):
        expires_in = float(raw)
    elif isinstance(raw, str):
        try:
            expires_in = float(raw)
        except ValueError:
            raise BadResponse(
                f"field 'expires_in' must be a positive number, got {raw[:20]!r}", endpoint
            ) from None
    else:
        raise BadResponse(f"field 'expires_in' must be a positive number, got {raw!r}", endpoint)
    if not math.isfinite(expires_in) or expires_in <= 0:
        raise BadResponse(f"field 'expires_in' must be a positive number, got {raw!r}", endpoint)
    return token, min(expires_in, float(MAX_EXPIRES_IN))


class TokenHolder:
    """Caches one access_token; see the module docstring for the rules.

    ``margin_s``: refresh this long before expiry (capped at half the token's lifetime, so a token
    handed out with a short ``expires_in`` is still used). ``clock``: monotonic seconds.
    """

    def __init__(
        self,
        fetch: TokenFetch,
        *,
        margin_s: float = 120.0,
        failure_cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_invalidated: Callable[[str], None] | None = None,
    ) -> None:
        if not margin_s >= 0:
            raise ValueError(f"margin_s must be >= 0, got {margin_s!r}")
        if not failure_cooldown_s >= 0:
            raise ValueError(f"failure_cooldown_s must be >= 0, got {failure_cooldown_s!r}")
        self._fetch = fetch
        self._on_invalidated = on_invalidated  # told of a token WeChat rejected (SharedTokens.rejected)
        self._margin = float(margin_s)
        self._cooldown = float(failure_cooldown_s)
        self._clock = clock
        self._token: str | None = None
        self._expires_at = -math.inf
        self._refresh_at = -math.inf
        self._retry_after = -math.inf
        self._inflight: asyncio.Task[str] | None = None
        self.refreshes = 0  # successful fetches
        self.failures = 0  # failed fetches

    @property
    def current(self) -> str | None:
        """The cached token if it has not expired (it may be inside the refresh margin)."""
        if self._token is not None and self._clock() < self._expires_at:
            return self._token
        return None

    @property
    def expires_at(self) -> float:
        return self._expires_at

    async def get(self) -> str:
        """A token believed valid; refreshes (single-flight) when missing or inside the margin."""
        now = self._clock()
        token = self._token
        if token is not None and now < self._refresh_at:
            return token
        still_valid = token is not None and now < self._expires_at
        if still_valid and now < self._retry_after:
            assert token is not None
            return token  # the last refresh ahead of expiry failed; wait out the cooldown
        try:
            return await self._shared_refresh()
        except WeChatError as exc:
            if (
                still_valid
                and token is not None
                and self._token == token
                and self._clock() < self._expires_at
            ):
                log.warning("token refresh ahead of expiry failed (%s); using the current token", exc)
                return token
            raise

    def invalidate(self, token: str) -> bool:
        """Forget ``token`` if it is still the current one (compare-and-swap). True if it was."""
        if self._token is not None and token == self._token:
            self._token = None
            self._expires_at = self._refresh_at = -math.inf
            if self._on_invalidated is not None:
                self._on_invalidated(token)
            return True
        return False

    async def refresh(self) -> str:
        """Fetch a new token now (joining a refresh already in flight)."""
        return await self._shared_refresh()

    async def _shared_refresh(self) -> str:
        task = self._inflight
        if task is None:
            task = asyncio.get_running_loop().create_task(self._do_refresh())
            self._inflight = task
            task.add_done_callback(self._refresh_done)
        return await asyncio.shield(task)

    def _refresh_done(self, task: asyncio.Task[str]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # mark retrieved even if every waiter was cancelled meanwhile

    async def _do_refresh(self) -> str:
        try:
            token, expires_in = await self._fetch(False)
        except BaseException:
            self.failures += 1
            self._retry_after = self._clock() + self._cooldown
            raise
        now = self._clock()
        margin = min(self._margin, expires_in / 2)
        self._token = token
        self._expires_at = now + expires_in
        self._refresh_at = now + expires_in - margin
        self._retry_after = -math.inf
        self.refreshes += 1
        log.info(
            "access_token refreshed (expires_in=%ss, refresh in %ss)",
            int(expires_in),
            int(expires_in - margin),
        )
        return token


class SharedTokens:
    """A ``TokenFetch`` for several daemons serving one account through a shared store (see the module
    docstring). ``fetch``: the client's own (WeChat's token endpoint); ``owner()``: whether this daemon
    holds the account's lease now; ``margin_s``: a stored token this close to its expiry is refreshed by
    the owner (the others still use it until it expires); ``clock``: wall-clock seconds (stored expiry
    times are wall-clock). Hand ``rejected`` to ``TokenHolder(on_invalidated=...)``."""

    def __init__(
        self,
        store: Store,
        fetch: TokenFetch,
        *,
        owner: Callable[[], bool],
        margin_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not margin_s >= 0:
            raise ValueError(f"margin_s must be >= 0, got {margin_s!r}")
        self._store = store
        self._fetch = fetch
        self._owner = owner
        self._margin = float(margin_s)
        self._clock = clock
        self._rejected: set[str] = set()
        self.fetched = 0  # tokens this daemon fetched from WeChat (and stored)
        self.read = 0  # tokens taken from the store

    def rejected(self, token: str) -> None:
        """WeChat rejected ``token``: never hand it out again from the store."""
        self._rejected.add(token)

    async def __call__(self, force_refresh: bool) -> tuple[str, float]:
        stored = await asyncio.to_thread(self._store.token)
        now = self._clock()
        if (
            stored is not None
            and not force_refresh
            and stored.access_token not in self._rejected
            and stored.expires_at > now
            and (stored.expires_at - now > self._margin or not self._owner())
        ):
            self.read += 1
            return stored.access_token, stored.expires_at - now
        if not self._owner():
            raise NotSent(
                "no valid stored access token, and only the account's lease owner fetches one", "token"
            )
        token, expires_in = await self._fetch(force_refresh)
        await self._store.commit(
            lambda s: s.save_token(token, now + expires_in, now)
        )  # fenced: a stale owner's save (and its token) are refused
        self.fetched += 1
        return token, expires_in
