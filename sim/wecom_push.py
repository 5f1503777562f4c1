"""Callback delivery of the fake WeCom: what WeCom does with the app's callback URL (接收事件服务器).

WeCom callbacks are always encrypted: each ``CallbackPush`` is rendered as the ``kf_msg_or_event`` XML
(``router.wechat.wecom_kf.build_kf_callback``), encrypted with the corp id as receive id
(``SafeModeCrypto(..., id_name="corpid")``) and POSTed with ``msg_signature``, ``timestamp``, ``nonce``
in the query. A delivery counts as done when the URL answers HTTP 200 within ``callback_timeout_s``
(WeCom does not read the body of a kf callback's answer); otherwise it is sent again with the
*identical* query and body, ``callback_attempts`` deliveries in total (spec A3: 5 s, then retried).

``verify_url`` is WeCom's URL check (GET with an encrypted ``echostr``; the answer must be its
plaintext). Deliveries for one kf account run one after another, in order; accounts run concurrently.
Tasks are owned here: ``settle()`` waits for them, ``close()`` cancels what is left. Every attempt is in
``log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections.abc import Callable
from typing import Any

import aiohttp

from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.wecom_kf import build_kf_callback
from kfrouter.sim.delivery import OrderedDeliveries
from kfrouter.sim.wecom_model import CallbackPush
from kfrouter.sim.wecom_options import WeComOptions

_ALNUM = string.ascii_letters + string.digits


class CallbackDeliverer(OrderedDeliveries):
    """Delivers ``CallbackPush`` values to ``url`` (see the module docstring). ``now`` is the fake's clock."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        aes_key: str | None,
        corpid: str,
        options: WeComOptions,
        now: Callable[[], float],
        rng: random.Random,
    ) -> None:
        if url is not None and (not token or not aes_key):
            raise ValueError(
                "a callback URL needs the callback token and EncodingAESKey (WeCom always encrypts)"
            )
        super().__init__()
        self.url = url
        self.options = options
        self.corpid = corpid
        self._now = now
        self._rng = rng
        self._crypto = SafeModeCrypto(token, aes_key, corpid, id_name="corpid") if token and aes_key else None

    def _random16(self) -> bytes:
        return "".join(self._rng.choice(_ALNUM) for _ in range(16)).encode("ascii")

    def _nonce(self) -> str:
        return str(self._rng.randint(10**8, 10**10 - 1))

    def submit(self, push: CallbackPush) -> None:
        """Schedule delivery of ``push`` after the previous one for the same account."""
        if self.url is None:
            self._append(
                {"open_kfid": push.open_kfid, "token": push.token, "outcome": "no_url", "attempt": 0}
            )
            return
        key = push.open_kfid
        self._schedule(key, lambda prev: self._deliver(push, prev))

    def prepare(self, push: CallbackPush) -> tuple[dict[str, str], bytes]:
        """The query and encrypted body of one callback (what every attempt sends, byte for byte)."""
        assert self._crypto is not None
        ts = str(int(self._now()))
        nonce = self._nonce()
        xml = build_kf_callback(self.corpid, push.create_time, push.token, push.open_kfid)
        body, msg_sig = self._crypto.encrypt_push(xml, ts, nonce, self._random16(), to_user=self.corpid)
        return {"msg_signature": msg_sig, "timestamp": ts, "nonce": nonce}, body.encode("utf-8")

    async def _deliver(self, push: CallbackPush, prev: asyncio.Task[None] | None) -> None:
        if prev is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(prev)
        assert self.url is not None
        query, body = self.prepare(push)
        attempts = self.options.callback_attempts
        for attempt in range(1, attempts + 1):
            entry: dict[str, Any] = {"open_kfid": push.open_kfid, "token": push.token, "attempt": attempt}
            try:
                session = await self._client()
                timeout = aiohttp.ClientTimeout(total=self.options.callback_timeout_s)
                async with session.post(
                    self.url, params=query, data=body, headers={"Content-Type": "text/xml"}, timeout=timeout
                ) as resp:
                    entry["status"] = resp.status
                    await resp.read()
                entry["outcome"] = "delivered" if resp.status == 200 else "http_error"
            except TimeoutError:
                entry["outcome"] = "timeout"
            except aiohttp.ClientError as exc:
                entry.update(outcome="connection_error", error=f"{type(exc).__name__}: {exc}")
            self._append(entry)
            if entry["outcome"] == "delivered":
                return
            if attempt < attempts and self.options.retry_interval_s > 0:
                await asyncio.sleep(self.options.retry_interval_s)
        self.failures += 1
        self._append(
            {"open_kfid": push.open_kfid, "token": push.token, "outcome": "failed", "attempt": attempts}
        )

    async def verify_url(self, echostr: str = "") -> dict[str, Any]:
        """WeCom's URL check: GET with ``msg_signature``, ``timestamp``, ``nonce`` and the *encrypted*
        ``echostr``; the URL must answer the plaintext."""
        if self.url is None or self._crypto is None:
            return {"ok": False, "error": "no callback URL configured"}
        plain = echostr or str(self._rng.randint(10**17, 10**19))
        ts = str(int(self._now()))
        nonce = self._nonce()
        encrypted = self._crypto.encrypt(plain, self._random16())
        query = {
            "msg_signature": self._crypto.msg_signature(ts, nonce, encrypted),
            "timestamp": ts,
            "nonce": nonce,
            "echostr": encrypted,
        }
        session = await self._client()
        timeout = aiohttp.ClientTimeout(total=self.options.callback_timeout_s)
        try:
            async with session.get(self.url, params=query, timeout=timeout) as resp:
                text = (await resp.read()).decode("utf-8", "replace")
                return {"ok": resp.status == 200 and text == plain, "status": resp.status, "body": text[:200]}
        except (TimeoutError, aiohttp.ClientError) as exc:
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
