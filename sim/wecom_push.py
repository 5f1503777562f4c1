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
``log`` (``sim.delivery``, which the fake WeChat's pushes share).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.wecom_kf import build_kf_callback
from kfrouter.sim.delivery import OrderedDeliveries, random16, random_echostr, random_nonce
from kfrouter.sim.wecom_model import CallbackPush
from kfrouter.sim.wecom_options import WeComOptions


class CallbackDeliverer(OrderedDeliveries):
    """Delivers ``CallbackPush`` values to ``url`` (see the module docstring). ``now`` is the fake's clock."""

    DONE = frozenset({"delivered"})

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
        nonce = random_nonce(self._rng)
        xml = build_kf_callback(self.corpid, push.create_time, push.token, push.open_kfid)
        body, msg_sig = self._crypto.encrypt_push(xml, ts, nonce, random16(self._rng), to_user=self.corpid)
        return {"msg_signature": msg_sig, "timestamp": ts, "nonce": nonce}, body.encode("utf-8")

    async def _deliver(self, push: CallbackPush, prev: asyncio.Task[None] | None) -> None:
        await self._after(prev)
        url = self.url
        assert url is not None
        query, body = self.prepare(push)
        about = {"open_kfid": push.open_kfid, "token": push.token}

        async def attempt(n: int) -> dict[str, Any]:
            entry: dict[str, Any] = {**about, "attempt": n}
            if await self._post(url, query, body, self.options.callback_timeout_s, entry) is not None:
                entry["outcome"] = "delivered" if entry["status"] == 200 else "http_error"
            return entry

        await self._attempts(
            self.options.callback_attempts, attempt, lambda: self.options.retry_interval_s, about
        )

    async def verify_url(self, echostr: str = "") -> dict[str, Any]:
        """WeCom's URL check: GET with ``msg_signature``, ``timestamp``, ``nonce`` and the *encrypted*
        ``echostr``; the URL must answer the plaintext."""
        if self.url is None or self._crypto is None:
            return {"ok": False, "error": "no callback URL configured"}
        plain = echostr or random_echostr(self._rng)
        ts = str(int(self._now()))
        nonce = random_nonce(self._rng)
        encrypted = self._crypto.encrypt(plain, random16(self._rng))
        query = {
            "msg_signature": self._crypto.msg_signature(ts, nonce, encrypted),
            "timestamp": ts,
            "nonce": nonce,
            "echostr": encrypted,
        }
        return await self._check_url(self.url, query, plain, self.options.callback_timeout_s)
