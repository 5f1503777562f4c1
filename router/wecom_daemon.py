"""The WeCom 微信客服 daemon: one kf account (open_kfid) served by the same Desk as an Official Account.

It is the OA daemon's counterpart (router/daemon.py) for ``[wecom]`` configs, on the same ``DeskDriver``
(router/desk_driver.py): the Desk, the inbox and its one engine task (``router.inbox.drive``), the event and
command log lines, start-up's first step, the store and the observers are the same; what differs is the
edge (docs/wecom.md has the mapping):

- **In.** WeCom's callback (``[wecom] callback_path``; its encrypted URL check on GET) carries no message:
  it makes ``KfSyncPuller`` pull ``kf/sync_msg`` for the account (a lock per open_kfid; the cursor is saved
  only after the batch). Each entry is claimed in the store by its ``msgid`` and what it means is saved in
  the same transaction (a request for a human: the waiting customer; a cancel; a session change), before
  the puller saves the cursor, then handed to the engine task. A retried callback or a re-read page after a
  crash finds the msgids claimed: nothing is applied twice.
- **Customers** are ``external_userid``s. A customer who waits is moved to 待接入池 (``trans`` to state 2);
  the ``msg_code`` WeCom answers sends their queue notice once (``send_msg_on_event``). The Desk's
  ``CreateSession`` is ``trans`` to state 3 with ``servicer_userid``: success is ``SessionCreated`` (its code
  sends the "agent assigned" text); 95014/95019 become ``CreateFailed`` with an "agent unavailable" errcode
  (the engine marks the servicer offline and routes the customer to another); 95016/95013 re-read the state
  (``service_state/get``): state 3 → the session exists, state 4 → the customer left, else the create
  failed. ``CloseSession`` is ``trans`` to 4.
- **Texts** (``SendText``) use the customer's unused ``msg_code`` when there is one (``send_msg_on_event``,
  one message per code), otherwise ``kf/send_msg`` (WeCom allows it in states 0/1 only; a refusal is told
  to the notifier, which then stops writing to that customer).
- **Servicers** are the agents: ``kf/servicer/list`` is polled (status 0 接待中 = online, 1 停止接待 = offline;
  a complete ``AgentsSeen``), and ``servicer_status_change`` events (1 / 2) update one servicer at once.
  ``session_status_change``: 1 (taken from the pool) / 4 (re-joined) → ``SessionCreated``, 2 (transfer) →
  ``SessionSwitched``, 3 (ended) → ``SessionClosed``.
- **Restart** (kill -9 safe): the store's waiting customers, open sessions, reservations and the servicers'
  local settings (the admin API's) are read back; each reservation and session is checked with
  ``service_state/get``; then routing starts and the account is pulled once from the saved cursor (what
  customers wrote while the daemon was down).

Commands of one customer run in order (a per-customer chain of tasks), so the move to the pool happens
before their queue notice. One open_kfid per daemon (one Desk per account): a config listing several is
refused here. Logging: ``kfrouter.wecom``; external_userids yes, tokens never.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from typing import Any

import aiohttp
from aiohttp import web

from kfrouter.router.clock import Clock
from kfrouter.router.config import Config, ConfigError
from kfrouter.router.core import events as ev
from kfrouter.router.core.commands import CloseSession, Command, CreateSession, SendText
from kfrouter.router.core.engine import ERR_AGENT_UNAVAILABLE
from kfrouter.router.core.facts import AgentOffline, AgentOnline, Fact, Queued, Released
from kfrouter.router.core.intake import Leave, Reply, Request
from kfrouter.router.core.model import AgentRow, CustomerState
from kfrouter.router.core.rules import Inbound
from kfrouter.router.desk_driver import DeskDriver
from kfrouter.router.desk_setup import DaemonOptions
from kfrouter.router.edges.errors import WeChatError
from kfrouter.router.edges.store import Store, WaitingRow
from kfrouter.router.edges.wecom_client import (
    KfMessage,
    MsgSendFail,
    ServicerStatusChange,
    SessionStatusChange,
    WeComKfClient,
)
from kfrouter.router.edges.wecom_cursor import SqliteCursorStore
from kfrouter.router.edges.wecom_errors import ServicerUnavailable, StateConflict
from kfrouter.router.edges.wecom_sync import KfSyncPuller
from kfrouter.router.host import listen
from kfrouter.router.inbox import record_session_event
from kfrouter.router.logs import fields_of
from kfrouter.router.observe import ApiCalled, PushReceived
from kfrouter.router.wechat import wecom_kf
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wechat.errors import WeChatCodecError

log = logging.getLogger("kfrouter.wecom")

UNAVAILABLE = min(ERR_AGENT_UNAVAILABLE)  # what the engine reads as "this agent cannot take customers"


class _Stats:
    """Counters read by the metrics page (``receiver``, ``intake``)."""

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()


class WeComDaemon(DeskDriver):
    """kfrouter for one WeCom kf account, on the Desk driver both daemons share (router/desk_driver.py).
    See the module docstring.

    Public surface (the ``DaemonView`` of router/view.py, like the OA daemon): ``desk``, ``engine``,
    ``config``, ``app``, ``observers``, ``started``, ``submit()``, ``stop()``, ``wake()``, ``clock``,
    ``health()``; after start: ``store``, ``kf`` (the WeCom client), ``puller``, ``port``.
    """

    backend = "wecom"
    log = log  # the DeskDriver's lines go to this module's logger
    task_prefix = "kfrouter-wecom-"

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        http_session: aiohttp.ClientSession | None = None,
        options: DaemonOptions | None = None,
        store: Store | None = None,
    ) -> None:
        w = config.wecom
        if w is None:
            raise ConfigError(f"{config.source}: the WeCom daemon needs a [wecom] table")
        if len(w.open_kfids) != 1:
            raise ConfigError(
                f"{config.source}: wecom.open_kfids: the daemon serves one kf account per process "
                f"(one Desk per account), got {len(w.open_kfids)}; run one kfrouter per open_kfid"
            )
        super().__init__(config, clock=clock, options=options, store=store)
        self.wecom = w
        self.open_kfid = w.open_kfids[0]
        self.listening = asyncio.Event()
        self.port: int | None = None
        self.kf: WeComKfClient | None = None
        self.puller: KfSyncPuller | None = None
        self.cursors: SqliteCursorStore | None = None
        # DaemonView: the OA-only parts are absent
        self.client = None
        self.upstream = None
        self.executor = None
        self.agent_poller = None
        self.waitlist_poller = None
        self.receiver = _Stats()
        self.intake = _Stats()
        self.servicers_seen_at: float | None = None
        self._http = http_session
        self._crypto = SafeModeCrypto(w.token, w.aes_key, w.corpid, id_name="corpid")
        self._codes: dict[str, str] = {}  # external_userid -> unused msg_code (one message each)
        self._pooled: set[str] = set()  # moved to 待接入池 by us in this visit
        self._chains: dict[str, asyncio.Task[None]] = {}  # external_userid -> their last command
        self.app = web.Application()
        self.app.router.add_get(w.callback_path, self._verify_url)
        self.app.router.add_post(w.callback_path, self._callback)
        self.app.router.add_get("/healthz", self._healthz)

    # ============================================================ public surface

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent; safe from a signal handler)."""
        self._stop_event.set()

    def _health_more(self) -> dict[str, Any]:
        return {
            "backend": "wecom",
            "open_kfid": self.open_kfid,
            "last_poll_at": self.servicers_seen_at,
            "commands_pending": sum(1 for t in self._chains.values() if not t.done()),
        }

    # ============================================================ run

    async def run(self) -> None:
        """Serve until ``stop()``; returns after a clean shutdown."""
        own_http = self._http is None
        http = self._http if self._http is not None else aiohttp.ClientSession()
        runner: web.AppRunner | None = None
        try:
            if self.store is None:
                self.store = Store(self.config.store.path)
            self.cursors = SqliteCursorStore(self.config.store.path)
            o = self.options
            self.kf = WeComKfClient(
                http,
                self.wecom.corpid,
                self.wecom.secret,
                self.wecom.api_base,
                retries=o.api_retries,
                timeout_s=o.api_timeout_s,
            )
            self.puller = KfSyncPuller(
                self.kf, self.cursors, self._on_message, open_kfids=(self.open_kfid,), clock=self.clock.now
            )
            runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await runner.setup()
            self.port = await listen(runner, self.config.server)
            self.listening.set()
            log.info(
                "listening on http://%s:%s%s (WeCom corp %s, kf account %s)",
                self.config.server.host,
                self.port,
                self.wecom.callback_path,
                self.wecom.corpid,
                self.open_kfid,
            )
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn(self._startup(), "startup")
                await self._stop_event.wait()
                await self._shutdown()
                for task in list(self._tasks):
                    task.cancel()
        finally:
            self._tg = None
            self._fail_pending()
            if runner is not None:
                await runner.cleanup()
            if own_http:
                await http.close()
            if self.cursors is not None:
                self.cursors.close()
            if self.store is not None and self._own_store:
                self.store.close()
            self.stopped.set()
            log.info("stopped")

    async def _shutdown(self) -> None:
        self._stopping = True
        timeout = self.options.shutdown_timeout_s
        log.info("stopping: callbacks answer 503; finishing pulls and API calls (up to %gs)", timeout)
        if self.puller is not None:
            await self.puller.aclose(timeout)
        chains = [t for t in self._chains.values() if not t.done()]
        if chains:
            _done, pending = await asyncio.wait(chains, timeout=timeout)
            for t in pending:
                t.cancel()

    async def _startup(self) -> None:
        """Rebuild from the store and WeCom, then route (see the module docstring)."""
        store, kf, puller = self.store, self.kf, self.puller
        assert store is not None and kf is not None and puller is not None
        state = self._restore(store)
        await self._until_ok(self._poll_servicers, "kf/servicer/list")
        # open sessions and reservations a previous process left: what does WeCom say now?
        for openid, kf_account in [(o, kf) for o, (kf, _at) in state.in_session.items()] + [
            (r.openid, r.kf_account) for r in state.reservations
        ]:
            await self._recover_session(openid, kf_account)
        restored = 0
        for row in store.load_state(history_since=self.clock.now()).waiting:
            if self.engine.state(row.openid) in (CustomerState.IN_SESSION, CustomerState.RESERVED):
                continue
            self._apply_direct(row.request("recovery", self.engine.pool))
            restored += 1
        self._start_engine()
        self._spawn(self._poll_loop(), "servicers")
        self.started.set()
        log.info("routing: %d waiting restored; pulling %s from the saved cursor", restored, self.open_kfid)
        try:
            await puller.pull(self.open_kfid)  # what customers wrote while kfrouter was down
        except WeChatError as exc:
            log.warning("start-up: sync_msg failed (%s); the next callback pulls again", exc)

    async def _recover_session(self, openid: str, kf_account: str) -> None:
        assert self.kf is not None and self.store is not None
        try:
            st = await self.kf.get_state(self.open_kfid, openid)
        except WeChatError as exc:
            log.warning(
                "start-up: service_state/get %s failed (%s); the reservation is released", openid, exc
            )
            self.store.end_reservation(openid)
            return
        now = self.clock.now()
        if st.service_state == wecom_kf.SERVICER and st.servicer_userid:
            self.store.record_session_start(openid, st.servicer_userid, now)
            self._apply_direct(ev.SessionCreated(openid=openid, kf_account=st.servicer_userid, source="poll"))
        else:
            self.store.end_reservation(openid)
            if not self.store.record_session_end(openid, kf_account, now):
                log.info("start-up: %s was reserved with %s; no session: waits again", openid, kf_account)

    # ============================================================ the engine task

    def _on_facts(self, facts: Iterable[Fact], now: float) -> None:
        """Customers who now wait in kfrouter's queue go to WeCom's 待接入池 (once per visit); agent
        changes are logged."""
        for fact in facts:
            if isinstance(fact, Queued | Released) and fact.openid not in self._pooled:
                if self.engine.state(fact.openid) is CustomerState.WAITING:
                    self._pooled.add(fact.openid)
                    self._chain(fact.openid, self._to_pool(fact.openid))
            elif isinstance(fact, AgentOnline):
                log.info("servicer %s online (capacity %d)", fact.kf_account, fact.capacity)
            elif isinstance(fact, AgentOffline):
                log.info("servicer %s offline", fact.kf_account)

    def _carry_out(self, cmd: Command, now: float) -> None:
        """A WeCom call in the customer's chain of commands; a create's reservation is stored first."""
        if isinstance(cmd, CreateSession):
            if self.store is not None:
                self.store.add_reservation(cmd.openid, cmd.kf_account, now)
            self._chain(cmd.openid, self._create(cmd))
        elif isinstance(cmd, CloseSession):
            self._chain(cmd.openid, self._close(cmd))
        elif isinstance(cmd, SendText):
            self._chain(cmd.openid, self._send(cmd))

    # ============================================================ commands (WeCom calls)

    def _chain(self, openid: str, work: Awaitable[None]) -> None:
        """Run ``work`` after the customer's earlier commands (their order matters: pool, then notice)."""
        before = self._chains.get(openid)

        async def run() -> None:
            if before is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await before
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("command for %s failed", openid)

        task = asyncio.get_running_loop().create_task(run(), name=f"kfrouter-wecom-{openid}")
        self._chains[openid] = task
        task.add_done_callback(
            lambda t: self._chains.pop(openid, None) if self._chains.get(openid) is t else None
        )

    async def _to_pool(self, openid: str) -> None:
        assert self.kf is not None
        if self.engine.state(openid) is not CustomerState.WAITING:
            return  # routed meanwhile: no need to queue them at WeCom
        try:
            code = await self.kf.trans_state(self.open_kfid, openid, wecom_kf.POOL)
        except StateConflict as exc:
            log.info("trans %s to the pool refused (%s): left where WeCom has them", openid, exc.errcode)
            return
        except WeChatError as exc:
            log.warning("trans %s to the pool failed: %s", openid, exc)
            return
        if code:
            self._codes[openid] = code

    async def _create(self, cmd: CreateSession) -> None:
        assert self.kf is not None
        openid, servicer = cmd.openid, cmd.kf_account
        try:
            code = await self.kf.trans_state(self.open_kfid, openid, wecom_kf.SERVICER, servicer)
        except ServicerUnavailable as exc:
            log.info(
                "trans %s -> %s: servicer unavailable (%d); routed to another", openid, servicer, exc.errcode
            )
            self._outcome(
                ev.CreateFailed(
                    openid=openid, kf_account=servicer, errcode=UNAVAILABLE, errmsg=f"wecom {exc.errcode}"
                )
            )
            return
        except StateConflict as exc:
            await self._reread(openid, servicer, exc.errcode)
            return
        except WeChatError as exc:
            self._outcome(
                ev.CreateFailed(
                    openid=openid, kf_account=servicer, errcode=exc.errcode, errmsg=str(exc)[:200]
                )
            )
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("trans %s -> %s: no answer (%s); state re-read", openid, servicer, exc)
            await self._reread(openid, servicer, -1)
            return
        self._codes.pop(openid, None)  # the pool's code is void once the session left state 2
        if code:
            self._codes[openid] = code
        self._outcome(ev.SessionCreated(openid=openid, kf_account=servicer, source="api"))

    async def _reread(self, openid: str, servicer: str, errcode: int) -> None:
        """95016/95013 (or no answer): what is the session's state now?"""
        assert self.kf is not None
        try:
            st = await self.kf.get_state(self.open_kfid, openid)
        except (WeChatError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("service_state/get %s failed: %s", openid, exc)
            self._outcome(ev.CreateFailed(openid=openid, kf_account=servicer, errcode=errcode))
            return
        log.info(
            "trans %s -> %s refused (%d): WeCom says state %d", openid, servicer, errcode, st.service_state
        )
        if st.service_state == wecom_kf.SERVICER and st.servicer_userid:
            self._outcome(ev.SessionCreated(openid=openid, kf_account=st.servicer_userid, source="api"))
        elif st.service_state == wecom_kf.ENDED:
            if self.store is not None:
                self.store.end_reservation(openid)
                self.store.remove_waiting(openid, self.clock.now(), "ended")
            self._put(ev.CustomerLeft(openid=openid, reason="ended"))
        else:
            self._outcome(ev.CreateFailed(openid=openid, kf_account=servicer, errcode=errcode))

    async def _close(self, cmd: CloseSession) -> None:
        assert self.kf is not None
        try:
            await self.kf.trans_state(self.open_kfid, cmd.openid, wecom_kf.ENDED)
        except StateConflict:
            pass  # already ended or moved: closed as far as this servicer is concerned
        except WeChatError as exc:
            log.warning("trans %s to ended failed: %s", cmd.openid, exc)
            return
        self._codes.pop(cmd.openid, None)
        self._outcome(ev.SessionClosed(openid=cmd.openid, kf_account=cmd.kf_account))

    async def _send(self, cmd: SendText) -> None:
        assert self.kf is not None
        code = self._codes.pop(cmd.openid, None)
        endpoint = "kf/send_msg_on_event" if code is not None else "kf/send_msg"
        started, errcode = time.monotonic(), 0
        try:
            if code is not None:
                await self.kf.send_on_event(code, cmd.text)
            else:
                await self.kf.send_text(self.open_kfid, cmd.openid, cmd.text)
        except WeChatError as exc:
            errcode = exc.errcode
            log.info("text to %s (%s) not sent: %s", cmd.openid, cmd.kind, exc)
            self.desk.on_send_failed(cmd.openid, exc.errcode)
        self._observe(
            ApiCalled(
                endpoint=endpoint,
                ok=errcode == 0,
                errcode=errcode,
                elapsed_s=time.monotonic() - started,
                openid=cmd.openid,
                kind=cmd.kind,
            ),
            self.clock.now(),
        )

    def _outcome(self, event: ev.Event) -> None:
        """An API result: persisted, then handed to the engine."""
        if self.store is not None:
            record_session_event(self.store, event, self.clock.now())
        self._put(event)

    # ============================================================ servicers

    async def _poll_servicers(self) -> bool:
        assert self.kf is not None
        try:
            listed = await self.kf.list_servicers(self.open_kfid)
        except (WeChatError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("kf/servicer/list failed: %s", exc)
            return False
        rows = tuple(AgentRow(kf_account=s.userid, status=1 if s.receiving else 0) for s in listed.servicers)
        self.servicers_seen_at = self.clock.now()
        seen = ev.AgentsSeen(rows=rows, complete=True)  # type: ignore[arg-type]
        if self._engine_running:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._inbox.put(seen, future=fut)
            with contextlib.suppress(Exception):
                await fut
        else:
            self._apply_direct(seen)
        return True

    async def _poll_loop(self) -> None:
        polling = self.config.polling
        while True:
            every = polling.online_fast_s if self._busy() else polling.online_slow_s
            await asyncio.sleep(every * (0.9 + 0.2 * self._rng.random()))
            await self._poll_servicers()

    # ============================================================ in: callbacks and pulled messages

    async def _verify_url(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            plain = self._crypto.decrypt_echostr(
                q.get("echostr", ""), q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
        except WeChatCodecError as exc:
            self.receiver.stats["bad_request"] += 1
            return web.Response(status=403, text=str(exc))
        return web.Response(text=plain)

    async def _callback(self, request: web.Request) -> web.Response:
        if self._stopping:
            return web.Response(status=503, text="kfrouter is shutting down; retry later")
        raw = await request.read()
        q = request.query
        try:
            xml = self._crypto.decrypt_push(
                raw, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
            )
            cb = wecom_kf.parse_kf_callback(xml)
        except WeChatCodecError as exc:
            self.receiver.stats["bad_request"] += 1
            log.warning("WeCom callback refused: %s", exc)
            return web.Response(status=403, text="bad callback")
        self.receiver.stats["callback"] += 1
        if isinstance(cb, wecom_kf.KfCallback) and self.puller is not None and self.started.is_set():
            self.puller.notify(cb)
        return web.Response(text="success")

    async def _on_message(self, msg: KfMessage) -> None:
        """One ``sync_msg`` entry, in stream order: claimed by msgid and saved, then handed on."""
        store = self.store
        assert store is not None
        now = self.clock.now()
        if msg.open_kfid and msg.open_kfid != self.open_kfid:
            return
        key = f"wecom:{msg.msgid}"
        if msg.from_customer and msg.external_userid:
            await self._customer_message(msg, key, now)
            return
        event = self._event_of(msg)
        with store.transaction():
            if not store.claim_push(key, now):
                return
            if event is not None:
                store.append_event(now, "wecom_event", fields_of(event))
                record_session_event(store, event, now)
        if isinstance(msg.event, MsgSendFail):
            self.desk.on_send_failed(msg.external_userid, msg.event.fail_type)
        if event is not None:
            self.intake.stats[f"event:{type(event).__name__}"] += 1
            self._observe(PushReceived(type(msg.event).__name__, msg.external_userid), now)
            self._put(event)

    def _event_of(self, msg: KfMessage) -> ev.Event | None:
        e = msg.event
        if isinstance(e, ServicerStatusChange):
            return ev.AgentsSeen(
                rows=(AgentRow(kf_account=e.servicer_userid, status=1 if e.receiving else 0),),  # type: ignore[arg-type]
                complete=False,
            )
        if isinstance(e, SessionStatusChange) and e.external_userid:
            ext = e.external_userid
            if e.change_type in (wecom_kf.CHANGE_FROM_POOL, wecom_kf.CHANGE_REJOIN) and e.new_servicer_userid:
                if e.msg_code:
                    self._codes[ext] = e.msg_code
                return ev.SessionCreated(openid=ext, kf_account=e.new_servicer_userid, source="push")
            if e.change_type == wecom_kf.CHANGE_TRANSFER and e.old_servicer_userid and e.new_servicer_userid:
                return ev.SessionSwitched(
                    openid=ext, from_account=e.old_servicer_userid, to_account=e.new_servicer_userid
                )
            if e.change_type == wecom_kf.CHANGE_END and e.old_servicer_userid:
                self._codes.pop(ext, None)
                return ev.SessionClosed(openid=ext, kf_account=e.old_servicer_userid)
        return None

    async def _customer_message(self, msg: KfMessage, key: str, now: float) -> None:
        store = self.store
        assert store is not None
        ext = msg.external_userid
        if store.is_processed(key):
            return
        self.desk.on_user_message(ext, now)
        self._observe(PushReceived("KfMessage", ext), now)
        answer = self.desk.consider(Inbound(openid=ext, msg_type=msg.msgtype, text=msg.text or ""), now)
        if isinstance(answer, Request):
            e = answer.event
            with store.transaction():
                if not store.claim_push(key, now):
                    return
                store.add_waiting(
                    WaitingRow(
                        ext, e.group, e.priority, now, e.text, e.preferred_agent, tuple(sorted(e.tags))
                    )
                )
                store.append_event(
                    now, "customer_requested", {"openid": ext, "group": e.group, "matched": answer.matched}
                )
            self.intake.stats["request"] += 1
            log.info("%s asks for a human (%s): group %s", ext, answer.matched, e.group)
            self._pooled.discard(ext)
            self._put(e)
            return
        if isinstance(answer, Leave):
            with store.transaction():
                if not store.claim_push(key, now):
                    return
                store.remove_waiting(ext, now, "cancelled")
                store.append_event(now, "cancel", {"openid": ext, "matched": answer.matched})
            self.intake.stats["cancel"] += 1
            self._put(ev.CustomerLeft(openid=ext, reason="cancelled"))
            self._chain(ext, self._reply(ext, answer.reply))
            return
        with store.transaction():
            store.claim_push(key, now)
        if isinstance(answer, Reply):
            self._chain(ext, self._reply(ext, answer.text))

    async def _reply(self, openid: str, text: str) -> None:
        """A passive reply has no WeCom equivalent: it is a ``kf/send_msg`` (or the customer's code)."""
        await self._send(SendText(openid=openid, text=text, kind="reply"))

    # ============================================================ web

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response(self.health(), status=503 if self._stopping else 200)
