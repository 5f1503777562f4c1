"""Push delivery of the fake WeChat server: what WeChat does with the developer's callback URL.

Each ``Push`` from the model is rendered as XML (``router.wechat.replies``), signed (``signature``,
``timestamp``, ``nonce``, ``openid`` in the query), encrypted in safe mode (``encrypt_type=aes``,
``msg_signature``) and POSTed. A delivery is retried with the *identical* body and query when the
webhook does not answer within ``webhook_timeout_s``, fails at the HTTP level or answers something
that is not a valid reply — ``delivery_attempts`` deliveries in total (spec §5.5, §11 #7). The reply is
then applied: ``success`` / empty = handled, ``transfer_customer_service`` = the customer joins the
wait list (pinned with TransInfo), another message = delivered to the customer.

Deliveries for one customer run one after another (so a customer's events arrive in order); different
customers are delivered concurrently. Every attempt is logged in ``Deliverer.log``. Tasks are owned by
the ``Deliverer``: ``settle()`` waits for them and ``close()`` cancels what is left (``sim.delivery``, which
the fake WeCom's callbacks share).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen

from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import WeChatCodecError
from kfrouter.router.wechat.reply_parser import parse_reply
from kfrouter.router.wechat.xml import element
from kfrouter.sim.delivery import OrderedDeliveries, random16, random_echostr, random_nonce
from kfrouter.sim.wechat_model import Push, WeChatModel


def render_push(model: WeChatModel, push: Push) -> str:
    """The plaintext XML WeChat would send for ``push``."""
    to, frm, t = model.original_id, push.openid, push.create_time
    if push.msg_type == "text":
        return replies.build_text_message(to, frm, t, push.content, push.msg_id)
    if push.msg_type != "event":
        return _media_message(model, push)
    fields: dict[str, str | int] = {}
    if push.kf_account:
        fields["KfAccount"] = push.kf_account
    if push.from_kf_account:
        fields["FromKfAccount"] = push.from_kf_account
    if push.to_kf_account:
        fields["ToKfAccount"] = push.to_kf_account
    if push.event == "CLICK" or push.event_key:
        fields["EventKey"] = push.event_key
    return replies.build_event(to, frm, t, push.event, **fields)


def _media_message(model: WeChatModel, push: Push) -> str:
    """A non-text user message (image, voice, ...) with a made-up MediaId."""
    lines = [
        "<xml>",
        element("ToUserName", model.original_id),
        element("FromUserName", push.openid),
        element("CreateTime", push.create_time),
        element("MsgType", push.msg_type),
        element("MediaId", f"media_{push.msg_id}"),
        element("MsgId", push.msg_id),
        "</xml>",
    ]
    return "\n".join(lines)


@frozen
class PushTarget:
    """Where and how one appid's pushes go (``Deliverer.targets``): each field None means the deliverer's
    own. A webhook URL may hold ``{appid}`` (e.g. ``http://127.0.0.1:8080/wechat/{appid}``)."""

    webhook: str | None = None
    token: str | None = None
    aes_key: str | None = None


class Deliverer(OrderedDeliveries):
    """Delivers pushes to ``webhook`` for the fake server (see module docstring).

    ``token`` signs; with ``aes_key`` pushes are encrypted per appid. ``now`` is the server clock.
    ``on_change(model)`` is called after a reply changed the model (so new pushes get scheduled).
    Several Official Accounts: ``webhook`` may hold ``{appid}``, and ``targets[appid]`` gives an appid its
    own webhook, token or key (``target(model)`` is what applies). Several daemons behind a load
    balancer: ``webhook`` may be a list of URLs — each delivery attempt goes to the next one in turn
    (``attempt_url``): deliveries start at the next URL in turn and each retry goes to the next one.
    """

    DONE = frozenset({"handled", "transfer", "reply", "transfer_ignored"})

    def __init__(
        self,
        webhook: str | Sequence[str] | None,
        token: str | None,
        aes_key: str | None,
        now: Callable[[], float],
        on_change: Callable[[WeChatModel], None],
    ) -> None:
        hooks = (webhook,) if isinstance(webhook, str) else tuple(webhook or ())
        if any(not isinstance(h, str) or not h for h in hooks):
            raise ValueError(f"webhook must be a URL or a list of URLs, got {webhook!r}")
        if hooks and not token:
            raise ValueError("a webhook needs the callback token (token=...) to sign pushes")
        super().__init__()
        self.webhooks = hooks
        self.webhook = hooks[0] if hooks else None
        self._turn = 0  # the next of ``webhooks`` (round robin)
        self.token = token
        self.aes_key = aes_key
        self._now = now
        self._on_change = on_change
        self._crypto: dict[tuple[str, str, str], SafeModeCrypto] = {}
        self.targets: dict[str, PushTarget] = {}
        if aes_key is not None and token:
            SafeModeCrypto(token, aes_key, "check")  # fail early on a malformed key

    def target(self, model: WeChatModel) -> PushTarget:
        """Where ``model``'s pushes go now: its own target's fields, else the deliverer's."""
        own = self.targets.get(model.appid, PushTarget())
        webhook = own.webhook or self.webhook
        return PushTarget(
            webhook=None if webhook is None else webhook.replace("{appid}", model.appid),
            token=own.token or self.token,
            aes_key=own.aes_key or self.aes_key,
        )

    def attempt_url(self, model: WeChatModel, first: int, attempt: int) -> str | None:
        """The URL of attempt ``attempt`` (1, 2, ...) of a delivery that began with URL number ``first``:
        the account's own webhook, else the next of ``webhooks`` at each attempt (a retry never goes to the
        daemon that just failed, as a load balancer's health check would have it), ``{appid}`` filled in."""
        own = self.targets.get(model.appid)
        if (own is not None and own.webhook is not None) or len(self.webhooks) < 2:
            return self.target(model).webhook
        url = self.webhooks[(first + attempt - 1) % len(self.webhooks)]
        return url.replace("{appid}", model.appid)

    def crypto_for(self, model: WeChatModel) -> SafeModeCrypto | None:
        t = self.target(model)
        if t.aes_key is None or not t.token:
            return None
        key = (model.appid, t.token, t.aes_key)
        c = self._crypto.get(key)
        if c is None:
            c = self._crypto[key] = SafeModeCrypto(t.token, t.aes_key, model.appid)
        return c

    def submit(self, model: WeChatModel, push: Push) -> None:
        """Schedule delivery of ``push`` after the previous delivery to the same customer."""
        if self.target(model).webhook is None:
            self._append(
                {"openid": push.openid, "push": push.to_json(), "outcome": "no_webhook", "attempt": 0}
            )
            return
        key = (model.appid, push.openid)
        self._schedule(key, lambda prev: self._deliver(model, push, prev))

    async def verify_url(self, model: WeChatModel, echostr: str = "") -> dict[str, Any]:
        """WeChat's GET check of the callback URL (spec §5.1): the answer must be the raw echostr."""
        t = self.target(model)
        if t.webhook is None or not t.token:
            return {"ok": False, "error": "no webhook configured"}
        echostr = echostr or random_echostr(model.rng)
        ts = str(int(self._now()))
        nonce = random_nonce(model.rng)
        query = {
            "signature": signature.sign(t.token, ts, nonce),
            "timestamp": ts,
            "nonce": nonce,
            "echostr": echostr,
        }
        return await self._check_url(t.webhook, query, echostr, model.options.webhook_timeout_s)

    def _prepare(self, model: WeChatModel, push: Push) -> tuple[dict[str, str], bytes]:
        token = self.target(model).token
        assert token is not None
        xml = render_push(model, push)
        ts = str(int(self._now()))
        nonce = random_nonce(model.rng)
        query = {"signature": signature.sign(token, ts, nonce), "timestamp": ts, "nonce": nonce}
        if model.options.push_include_openid:
            query["openid"] = push.openid
        crypto = self.crypto_for(model)
        if crypto is None:
            return query, xml.encode("utf-8")
        body, msg_sig = crypto.encrypt_push(xml, ts, nonce, random16(model.rng), to_user=model.original_id)
        query["encrypt_type"] = "aes"
        query["msg_signature"] = msg_sig
        return query, body.encode("utf-8")

    async def _deliver(self, model: WeChatModel, push: Push, prev: asyncio.Task[None] | None) -> None:
        await self._after(prev)
        webhook = self.target(model).webhook
        assert webhook is not None
        query, body = self._prepare(model, push)
        opts = model.options
        first = self._turn  # deliveries start at the next URL in turn
        self._turn += 1
        about = {"openid": push.openid, "push": push.to_json()}

        async def attempt(n: int) -> dict[str, Any]:
            url = self.attempt_url(model, first, n) or webhook
            entry: dict[str, Any] = {**about, "attempt": n}
            if len(self.webhooks) > 1:
                entry["url"] = url
            sent = time.perf_counter()
            answer = await self._post(url, query, body, opts.webhook_timeout_s, entry)
            if answer is not None:
                entry["elapsed_s"] = round(time.perf_counter() - sent, 6)  # the webhook's answer time
                if entry["status"] != 200:
                    entry.update(outcome="http_error")
                else:
                    entry.update(self._apply_reply(model, push, answer))
            return entry

        await self._attempts(opts.delivery_attempts, attempt, lambda: opts.retry_interval_s, about)

    def _apply_reply(self, model: WeChatModel, push: Push, answer: bytes) -> dict[str, Any]:
        crypto = self.crypto_for(model)
        plain_ok = answer.strip() in (b"", b"success")
        try:
            if crypto is not None and not plain_ok:
                if b"<Encrypt>" not in answer:
                    return {"outcome": "invalid_reply", "error": "safe mode: the reply is not encrypted"}
                xml: bytes | str = crypto.decrypt_reply(answer).text
            elif crypto is not None and plain_ok and not model.options.safe_mode_accept_plain_success:
                return {"outcome": "invalid_reply", "error": "safe mode: plaintext success refused (option)"}
            else:
                xml = answer
            reply = parse_reply(xml)
        except WeChatCodecError as exc:
            return {"outcome": "invalid_reply", "error": str(exc)[:300]}
        if reply is None:
            return {"outcome": "handled"}
        if reply.to_user != push.openid or reply.from_user != model.original_id:
            return {
                "outcome": "invalid_reply",
                "error": f"reply addressed {reply.from_user!r} -> {reply.to_user!r}, expected "
                f"{model.original_id!r} -> {push.openid!r}",
            }
        now = self._now()
        if reply.is_transfer:
            if push.msg_type == "event":
                return {"outcome": "transfer_ignored", "error": "transfer in reply to an event"}
            result = model.transfer(push.openid, now, reply.kf_account)
            self._on_change(model)
            return {"outcome": "transfer", "kf_account": reply.kf_account, "result": result["result"]}
        model.record_passive_reply(push.openid, reply.msg_type, reply.content or "", now)
        return {"outcome": "reply", "msg_type": reply.msg_type}
