"""The push receiver: WeChat's callback URL as aiohttp.web routes (spec §5).

Order of work for a POST, each step cheap, the callback the only awaited work:

1. size cap (``Content-Length`` and while streaming) → 413;
2. query: ``timestamp`` digits, ``nonce``, ``signature`` (plain mode; in safe mode optional, checked when
   present: ``msg_signature``, required with ``encrypt_type=aes``, authenticates the push, as WeChat's own
   SDKs check it — without an AES key to check it, ``signature`` is required) → 400 when missing or
   malformed;
3. signature check, constant-time (``router.wechat.signature``) → 403; timestamp within ``freshness_s``
   of the injected clock → 403 (a replayed push is refused);
4. plain mode: parse the body; safe / compatible mode (``encrypt_type=aes``): verify ``msg_signature``
   over ``<Encrypt>``, decrypt (current key, then the previous one), check the appid, parse the plaintext.
   Hostile or malformed XML (DTD, entities, not XML, wrong root) → 400, oversize → 413;
5. dedup on ``push.dedup_key`` in a bounded TTL cache: WeChat's retry of a delivery is answered with the
   first delivery's reply and handed on only once (a retry arriving while the first is still being
   handled waits for it);
6. ``await on_push(push, raw_xml)`` — the daemon persists and returns the reply body (None = "success");
7. answer: the reply, encrypted in safe/compatible mode (``success`` / empty stay plain, as every SDK does).

Failures never become a 500: bad input gets a 4xx and one log line (a client hanging up mid-body: one
info line, counted as ``hangup``); if ``on_push`` raises, the push was
not persisted, so it is forgotten by the dedup cache and answered ``424`` (not "success"), which makes
WeChat deliver it again; any other surprise is logged with its traceback and answered 400.
The GET verification answers the raw ``echostr`` (Official Accounts do not encrypt it, §5.1).

A request aiohttp's own HTTP parser refuses (request line or header too long, not HTTP at all) never
reaches the routes: aiohttp answers 400 and logs it through the server's ``logger``. Serve the app with
``logger=receiver.server_log()`` (``web.AppRunner`` / ``TestServer`` pass it on) and such a request is one
line at warning (debug for non-HTTP bytes, as aiohttp does), counted as ``bad_request``, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from attrs import field, frozen

from kfrouter.router.wechat import signature
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import SignatureMismatch, WeChatCodecError, XmlRejected
from kfrouter.router.wechat.push import Push, parse_push
from kfrouter.router.wechat.replies import SUCCESS
from kfrouter.router.wechat.xml import MAX_BODY_BYTES

log = logging.getLogger("kfrouter.webhook")

OnPush = Callable[[Push, str], Awaitable[str | None]]

HANGUP = "hangup"  # outcome of a request whose client went away before its body was read
CALLBACK_FAILED_STATUS = 424  # "Failed Dependency": on_push (persistence) failed; WeChat will retry
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_PARAM_MAX = 128  # signature 40 hex, nonce ~10 digits; anything far longer is not WeChat
_ECHOSTR_MAX = 512


def _positive(_inst: object, attr: Any, value: float) -> None:
    if not value > 0:
        raise ValueError(f"WebhookConfig.{attr.name} must be > 0, got {value!r}")


@frozen(kw_only=True)
class WebhookConfig:
    """Settings of one account's callback URL. ``encoding_aes_key`` enables safe/compatible mode;
    ``accept_plaintext=False`` then refuses plaintext pushes (403). ``dedup_ttl_s`` must outlast
    WeChat's retries (3 deliveries, 5 s apart, spec §5.5)."""

    token: str = field(repr=False)
    appid: str
    encoding_aes_key: str | None = field(default=None, repr=False)
    previous_aes_key: str | None = field(default=None, repr=False)
    accept_plaintext: bool = True
    max_body_bytes: int = field(default=MAX_BODY_BYTES, validator=_positive)
    freshness_s: float = field(default=300.0, validator=_positive)
    dedup_ttl_s: float = field(default=60.0, validator=_positive)
    dedup_max_entries: int = field(default=10_000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        problem = signature.check_token_format(self.token)
        if problem is not None:
            raise ValueError(f"WebhookConfig.token: {problem}")
        if not isinstance(self.appid, str) or not self.appid:
            raise ValueError(f"WebhookConfig.appid must be a non-empty string, got {self.appid!r}")
        if self.previous_aes_key is not None and self.encoding_aes_key is None:
            raise ValueError("WebhookConfig.previous_aes_key needs encoding_aes_key")


_DEFAULT_OUTCOME = {400: "bad_request", 403: "forbidden", 413: "too_large"}


class _Reject(Exception):
    """A request we refuse: ``status``, a reason for the log (never echoed with secrets) and the outcome
    counted in ``PushReceiver.stats`` (bad_signature, stale, rejected_xml, ...; by status if not given)."""

    def __init__(self, status: int, reason: str, outcome: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome = outcome or _DEFAULT_OUTCOME.get(status, f"rejected_{status}")


class _DedupCache:
    """Bounded TTL map ``dedup_key -> task`` of the first delivery's handling (insertion order = age)."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, asyncio.Task[str | None]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _purge(self, now: float) -> None:
        while self._entries:
            key, (expires, _task) = next(iter(self._entries.items()))
            if expires > now:
                break
            del self._entries[key]

    def get(self, key: str) -> asyncio.Task[str | None] | None:
        self._purge(self._clock())
        hit = self._entries.get(key)
        return hit[1] if hit is not None else None

    def put(self, key: str, task: asyncio.Task[str | None]) -> None:
        now = self._clock()
        self._purge(now)
        self._entries[key] = (now + self._ttl, task)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, key: str, task: asyncio.Task[str | None]) -> None:
        hit = self._entries.get(key)
        if hit is not None and hit[1] is task:
            del self._entries[key]


class PushReceiver:
    """Handles WeChat's GET verification and POST pushes for one account; see the module docstring.

    ``clock``: wall-clock seconds (timestamp freshness, dedup TTL). ``random_bytes`` / ``nonce``:
    sources for encrypted replies (CSPRNG by default). ``stats`` counts outcomes for metrics.
    """

    def __init__(
        self,
        config: WebhookConfig,
        on_push: OnPush,
        *,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
        nonce: Callable[[], str] = lambda: str(secrets.randbelow(10**10)),
    ) -> None:
        self.config = config
        self._on_push = on_push
        self._clock = clock
        self._random_bytes = random_bytes
        self._nonce = nonce
        self._crypto = (
            SafeModeCrypto(config.token, config.encoding_aes_key, config.appid, config.previous_aes_key)
            if config.encoding_aes_key is not None
            else None
        )
        self._dedup = _DedupCache(config.dedup_ttl_s, config.dedup_max_entries, clock)
        self._running: set[asyncio.Task[str | None]] = set()
        self.stats: Counter[str] = Counter()

    def server_log(self) -> ParserRefusalLog:
        """The ``logger`` for the aiohttp server of this receiver's port (see the module docstring)."""
        return ParserRefusalLog(self)

    def parser_refused(self, exc: HttpProcessingError, where: str, level: int = logging.WARNING) -> None:
        """Count and log (one line) a request aiohttp's parser refused with 400."""
        self.stats["bad_request"] += 1
        first = (exc.message or "").splitlines()[0] if exc.message else ""
        log.log(
            level,
            "%s refused with 400 by the HTTP parser: %s: %s",
            where,
            type(exc).__name__,
            first[:100] + ("..." if len(first) > 100 else ""),
        )

    def routes(self, path: str = "/wechat") -> list[web.RouteDef]:
        return [web.get(path, self.handle_get, allow_head=False), web.post(path, self.handle_post)]

    async def drain(self) -> None:
        """Wait for callbacks still running (their requests may be gone); for shutdown and tests."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    # ------------------------------------------------------------------------------------------ GET

    async def handle_get(self, request: web.Request) -> web.Response:
        try:
            q = request.query
            timestamp, nonce = self._common_params(q)
            sig = self._param(q, "signature")
            echostr = q.get("echostr")
            if echostr is None or not echostr or len(echostr) > _ECHOSTR_MAX or not echostr.isprintable():
                raise _Reject(400, f"echostr must be 1..{_ECHOSTR_MAX} printable characters")
            if not signature.verify(sig, self.config.token, timestamp, nonce):
                raise _Reject(403, "signature mismatch", "bad_signature")
            self._check_fresh(timestamp)
        except _Reject as rej:
            return self._refuse(request, "GET", rej)
        except Exception:
            log.exception("GET %s: unexpected error; answered 400", request.path)
            self.stats["error"] += 1
            return web.Response(status=400, text="bad request")
        self.stats["verified"] += 1
        return web.Response(text=echostr, content_type="text/plain")

    # ----------------------------------------------------------------------------------------- POST

    async def handle_post(self, request: web.Request) -> web.Response:
        try:
            return await self._post(request)
        except _Reject as rej:
            return self._refuse(request, "POST", rej)
        except Exception:
            log.exception("POST %s: unexpected error; answered 400", request.path)
            self.stats["error"] += 1
            return web.Response(status=400, text="bad request")

    async def _post(self, request: web.Request) -> web.Response:
        q = request.query
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _Reject(413, f"Content-Length {request.content_length} over the {limit}-byte limit")
        timestamp, nonce = self._common_params(q)
        encrypt_type = q.get("encrypt_type", "raw").lower()
        if encrypt_type not in ("raw", "aes"):
            raise _Reject(400, f"unknown encrypt_type {encrypt_type[:20]!r}")
        safe = encrypt_type == "aes"
        if safe:
            msg_sig = self._param(q, "msg_signature")
            plain_sig = q.get("signature")  # also sent in safe mode; checked when present
        else:
            msg_sig = None
            plain_sig = self._param(q, "signature")
        if plain_sig is not None and not signature.verify(plain_sig, self.config.token, timestamp, nonce):
            raise _Reject(403, "signature mismatch", "bad_signature")
        self._check_fresh(timestamp)
        body = await self._read_body(request, limit)
        used_previous = False
        if safe and self._crypto is not None:
            assert msg_sig is not None
            try:
                decrypted = self._crypto.decrypt_push_detailed(
                    body, msg_sig, timestamp, nonce, max_bytes=limit
                )
            except WeChatCodecError as exc:
                raise _Reject(_status_of(exc), f"safe-mode push refused: {exc}", _outcome_of(exc)) from None
            raw, used_previous = decrypted.text, decrypted.used_previous_key
        elif safe:
            # Compatible mode without a key: the plaintext fields are usable if the plain signature held.
            if plain_sig is None:
                raise _Reject(400, "encrypted push but no EncodingAESKey is configured and no signature sent")
            raw = _decode(body)
        else:
            if self._crypto is not None and not self.config.accept_plaintext:
                raise _Reject(403, "plaintext push refused: this account is configured for safe mode")
            raw = _decode(body)
        try:
            push = parse_push(raw, max_bytes=limit)
        except WeChatCodecError as exc:
            raise _Reject(_status_of(exc), f"push refused: {exc}", _outcome_of(exc)) from None

        key = push.dedup_key
        task = self._dedup.get(key)
        if task is not None:
            self.stats["duplicate"] += 1
            log.info("POST: duplicate delivery %s answered like the first", key)
        else:
            task = asyncio.get_running_loop().create_task(self._hand_on(push, raw))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            self._dedup.put(key, task)
            self.stats["accepted"] += 1
        try:
            reply = await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._dedup.forget(key, task)
            self.stats["callback_failed"] += 1
            log.error(
                "POST: on_push failed for %s (%s: %s); answered %d so WeChat retries",
                key,
                type(exc).__name__,
                exc,
                CALLBACK_FAILED_STATUS,
            )
            return web.Response(status=CALLBACK_FAILED_STATUS, text="not handled, retry")
        return self._answer(reply, encrypt=safe and self._crypto is not None, previous_key=used_previous)

    # ------------------------------------------------------------------------------------ helpers

    async def _hand_on(self, push: Push, raw: str) -> str | None:
        return await self._on_push(push, raw)

    def _answer(self, reply: str | None, *, encrypt: bool, previous_key: bool) -> web.Response:
        if reply is not None and not isinstance(reply, str):
            log.error("POST: on_push returned %s, not str | None; answered success", type(reply).__name__)
            reply = None
        if reply is None or reply.strip() in ("", SUCCESS):
            return web.Response(text=SUCCESS if reply is None else reply, content_type="text/plain")
        if encrypt:
            assert self._crypto is not None
            try:
                reply = self._crypto.encrypt_reply(
                    reply,
                    str(int(self._clock())),
                    self._nonce(),
                    self._random_bytes(16),
                    previous_key=previous_key,
                )
            except WeChatCodecError as exc:
                log.error("POST: reply could not be encrypted (%s); answered success", exc)
                return web.Response(text=SUCCESS, content_type="text/plain")
        return web.Response(text=reply, content_type="application/xml")

    def _param(self, q: Any, name: str) -> str:
        value = q.get(name)
        if value is None or not value:
            raise _Reject(400, f"query parameter {name!r} is missing")
        if len(value) > _PARAM_MAX or not value.isascii() or not value.isprintable():
            raise _Reject(400, f"query parameter {name!r} is malformed")
        return str(value)

    def _common_params(self, q: Any) -> tuple[str, str]:
        timestamp = self._param(q, "timestamp")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise _Reject(400, "query parameter 'timestamp' must be decimal digits")
        return timestamp, self._param(q, "nonce")

    def _check_fresh(self, timestamp: str) -> None:
        skew = abs(self._clock() - int(timestamp))
        if skew > self.config.freshness_s:
            raise _Reject(
                403,
                f"timestamp is {skew:.0f}s away from now (limit {self.config.freshness_s:.0f}s)",
                "stale",
            )

    async def _read_body(self, request: web.Request, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(16384):
                size += len(chunk)
                if size > limit:
                    raise _Reject(413, f"body over the {limit}-byte limit")
                chunks.append(chunk)
        except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not follow
            raise _Reject(400, f"body could not be read: {exc}") from None
        except ConnectionResetError:  # the client hung up mid-body: nobody is left to answer
            expected = request.content_length
            of = f" of {expected}" if expected is not None else ""
            raise _Reject(400, f"client hung up after {size}{of} body bytes", HANGUP) from None
        return b"".join(chunks)

    def _refuse(self, request: web.Request, method: str, rej: _Reject) -> web.Response:
        self.stats[rej.outcome] += 1
        if rej.outcome == HANGUP:
            log.info("%s %s from %s: %s; nothing handed on", method, request.path, request.remote, rej.reason)
        else:
            log.warning(
                "%s %s from %s refused with %d: %s",
                method,
                request.path,
                request.remote,
                rej.status,
                rej.reason,
            )
        text = {400: "bad request", 403: "forbidden", 413: "payload too large"}.get(rej.status, "refused")
        return web.Response(status=rej.status, text=text)


def _status_of(exc: WeChatCodecError) -> int:
    if isinstance(exc, SignatureMismatch):
        return 403
    if isinstance(exc, XmlRejected):
        return exc.http_status
    status = getattr(exc, "http_status", 400)
    return status if isinstance(status, int) and 400 <= status < 500 else 400


def _outcome_of(exc: WeChatCodecError) -> str:
    if isinstance(exc, SignatureMismatch):
        return "bad_signature"
    if isinstance(exc, XmlRejected):
        return "too_large" if exc.http_status == 413 else "rejected_xml"
    return "undecryptable"


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(400, f"body is not UTF-8 (invalid byte at offset {exc.start})") from None


class ParserRefusalLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger for a port a ``PushReceiver`` serves: what aiohttp logs about a request
    its parser refused (an ``HttpProcessingError``) goes to ``PushReceiver.parser_refused``; everything
    else reaches ``aiohttp.server`` unchanged."""

    def __init__(self, receiver: PushReceiver) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._receiver = receiver

    def _refused(self, level: int, msg: object, args: tuple[object, ...], exc_info: object) -> bool:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1] if exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return False
        try:
            where = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            where = str(msg)
        self._receiver.parser_refused(exc, where[:200], level)
        return True

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if not self._refused(logging.WARNING, msg, args, exc_info):
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._refused(logging.DEBUG, msg, args, kwargs.get("exc_info")):
            self.logger.debug(msg, *args, **kwargs)


RECEIVER_KEY: web.AppKey[PushReceiver] = web.AppKey("kfrouter_push_receiver", PushReceiver)


def make_webhook_app(
    config: WebhookConfig,
    on_push: OnPush,
    *,
    path: str = "/wechat",
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """A standalone ``web.Application`` serving one account's callback at ``path``; the receiver is
    ``app[RECEIVER_KEY]`` (for its ``stats`` and ``drain()``)."""
    receiver = PushReceiver(config, on_push, clock=clock)
    app = web.Application(client_max_size=config.max_body_bytes)
    app[RECEIVER_KEY] = receiver
    app.add_routes(receiver.routes(path))
    return app
