"""Forward pushes that are not for kfrouter to the developer's existing handler (the "upstream").

kfrouter sits in front of the account's callback URL; a message nobody asked a human about belongs to
the handler that was there before. Rules of this module:

- The upstream receives what WeChat sent: the original query string and body. In safe mode the body is
  the same plaintext re-encrypted with the account's key (a fresh ``msg_signature`` replaces the old one
  in the query); an upstream configured with the account's Token and EncodingAESKey verifies it as it
  would verify WeChat.
- The reply comes back within a deadline (``timeout_s``, at most 4.5 s: WeChat gives up after 5 s).
  ``success`` / empty / an HTTP error / a timeout / a refused connection all become ``None`` (the caller
  answers ``success``) and one log line; the caller never sees an exception from here.
- An encrypted reply (the upstream runs in safe mode) is decrypted and verified, so the push receiver
  can encrypt it again for WeChat exactly once.
- Nothing secret is logged: the query string carries signatures, never the token.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlencode

import aiohttp
from attrs import frozen

from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import WeChatCodecError
from kfrouter.router.wechat.replies import SUCCESS
from kfrouter.router.wechat.xml import MAX_BODY_BYTES

log = logging.getLogger("kfrouter.upstream")

MAX_TIMEOUT_S = 4.5  # WeChat waits 5 s for the callback; keep time to answer it ourselves


@frozen
class Forwarded:
    """What to send upstream: ``query`` (already encoded) and ``body``."""

    query: str
    body: bytes


def build_forward(
    query: Mapping[str, str] | None,
    raw_xml: str,
    *,
    crypto: SafeModeCrypto | None,
    random_bytes: Callable[[int], bytes] = os.urandom,
    clock: Callable[[], float] = time.time,
) -> Forwarded:
    """The request WeChat made, for the upstream. ``query``: the original query parameters (None when
    unknown: a fresh timestamp and nonce are used); ``raw_xml``: the plaintext push.

    With ``crypto`` and ``encrypt_type=aes`` in the query, the body is re-encrypted and
    ``msg_signature`` recomputed over the original timestamp and nonce; otherwise the body is the
    plaintext as received."""
    params = dict(query) if query is not None else {}
    if "timestamp" not in params or "nonce" not in params:
        params["timestamp"] = str(int(clock()))
        params["nonce"] = str(int.from_bytes(random_bytes(4), "big"))
    if crypto is not None and params.get("encrypt_type", "").lower() == "aes":
        body, msg_signature = crypto.encrypt_push(
            raw_xml, params["timestamp"], params["nonce"], _random16(random_bytes)
        )
        params["msg_signature"] = msg_signature
        return Forwarded(query=urlencode(params), body=body.encode("utf-8"))
    params.pop("encrypt_type", None)
    params.pop("msg_signature", None)
    return Forwarded(query=urlencode(params), body=raw_xml.encode("utf-8"))


def _random16(random_bytes: Callable[[int], bytes]) -> bytes:
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return bytes(alphabet[b % len(alphabet)] for b in random_bytes(16))


class Upstream:
    """Posts pushes to ``url`` and returns the reply body for WeChat (``None`` = answer ``success``).

    ``session``: the daemon's shared ``aiohttp.ClientSession``; ``crypto``: the account's safe-mode
    codec when it has an EncodingAESKey (used to decrypt an encrypted reply). ``stats`` counts outcomes.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str | None,
        timeout_s: float = 3.0,
        *,
        crypto: SafeModeCrypto | None = None,
    ) -> None:
        if not (0 < timeout_s <= MAX_TIMEOUT_S):
            raise ValueError(f"upstream timeout_s must be in (0, {MAX_TIMEOUT_S}], got {timeout_s!r}")
        self._session = session
        self.url = url
        self.timeout_s = float(timeout_s)
        self._crypto = crypto
        self.stats: dict[str, int] = {}

    def _count(self, outcome: str) -> None:
        self.stats[outcome] = self.stats.get(outcome, 0) + 1

    async def forward(self, request: Forwarded, *, openid: str = "") -> str | None:
        """Send ``request`` upstream; the reply to give WeChat, or ``None`` for ``success``."""
        if self.url is None:
            self._count("not_configured")
            log.info("upstream: not configured; push from %s answered success", openid)
            return None
        url = f"{self.url}?{request.query}" if request.query else self.url
        started = time.perf_counter()
        try:
            async with self._session.post(
                url,
                data=request.body,
                headers={"Content-Type": "text/xml"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await _read_capped(resp)
        except TimeoutError:
            self._count("timeout")
            log.warning(
                "upstream: no answer within %.1fs for the push from %s; answered success",
                self.timeout_s,
                openid,
            )
            return None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self._count("error")
            log.warning("upstream: %s for the push from %s; answered success", type(exc).__name__, openid)
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            self._count("bad_status")
            log.warning("upstream: HTTP %d for the push from %s; answered success", status, openid)
            return None
        if raw is None:
            self._count("too_large")
            log.warning("upstream: reply over %d bytes for %s; answered success", MAX_BODY_BYTES, openid)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._count("bad_reply")
            log.warning("upstream: reply for %s is not UTF-8; answered success", openid)
            return None
        if text.strip() in ("", SUCCESS):
            self._count("success")
            log.info("upstream: handled the push from %s in %.0f ms (success)", openid, elapsed_ms)
            return None
        if self._crypto is not None and "<Encrypt>" in text:
            try:
                text = self._crypto.decrypt_reply(text).text
            except WeChatCodecError as exc:
                self._count("bad_reply")
                log.warning("upstream: encrypted reply for %s refused (%s); answered success", openid, exc)
                return None
        self._count("reply")
        log.info("upstream: replied to the push from %s in %.0f ms", openid, elapsed_ms)
        return text


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16384):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
