"""The fake WeChat HTTP server: the kf API of spec §2 over aiohttp.web, wrapping ``WeChatModel``.

The HTTP layer only parses and routes: paths are matched exactly (a wrong ``/cgi-bin/`` prefix or an
unknown path answers 40066), a wrong method 43001/43002, bodies are read as JSON whatever the
Content-Type (empty → 44002, unparsable → 47001), unknown JSON fields are ignored, ``access_token`` comes
from the query, and every answer is HTTP 200 with WeChat's JSON. Faults (errcode, delay, dropped
connection) are drawn per endpoint before the model sees the call. Pushes the model queues are handed
to ``sim.fake_push.Deliverer``.

The control API lives under ``/_fake/`` (see docs/fake-wechat.md; its plumbing, shared with the fake
WeCom, is ``sim.fake_server_base``): a request may name another account with ``appid`` in the body or
the query. ``running_fake(...)`` starts the server in-process on 127.0.0.1 (port 0 by default) for tests.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar

import attrs
from aiohttp import BodyPartReader, web

from kfrouter.router.clock import SteadyClock
from kfrouter.sim import fake_options as fo
from kfrouter.sim.fake_control import ControlCall, ControlError, check_keys, need_str
from kfrouter.sim.fake_http import Answer, NotJsonObject, apply_fault, json_object, json_response
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_push import Deliverer, PushTarget
from kfrouter.sim.fake_server_base import ControlHandler, FakeServerBase, running
from kfrouter.sim.model_base import Json
from kfrouter.sim.wechat_model import WeChatModel


class FakeWeChat(FakeServerBase[FakeOptions]):
    """One fake WeChat: models per appid (``model`` is the first), the aiohttp ``app``, the pusher."""

    MAX_BODY = 8 * 1024 * 1024  # uploadheadimg allows 5 MB of media plus multipart framing
    pusher: Deliverer

    def __init__(
        self,
        appid: str = "wx_fake_appid",
        secret: str = "fake_secret",
        *,
        webhook: str | Sequence[str] | None = None,
        token: str | None = None,
        aes_key: str | None = None,
        options: FakeOptions | None = None,
        wxid: str = "test",
        seed: int = 0,
        clock: SteadyClock | None = None,
    ) -> None:
        super().__init__(options if options is not None else FakeOptions(), clock)
        self.seed = seed
        self.models: dict[str, WeChatModel] = {}
        self.pusher = Deliverer(webhook, token, aes_key, self.clock.now, self.flush)
        self.model = self.add_app(appid, secret, wxid=wxid)
        self.app = self._build_app(FAKE_KEY)

    # ------------------------------------------------------------------ setup
    def add_app(
        self,
        appid: str,
        secret: str,
        *,
        wxid: str = "test",
        webhook: str | None = None,
        token: str | None = None,
        aes_key: str | None = None,
    ) -> WeChatModel:
        """Another Official Account served by the same fake (access tokens tell them apart); its pushes go
        to ``webhook`` signed with ``token`` (each None: the fake's own, whose URL may hold ``{appid}``)."""
        if appid in self.models:
            raise ValueError(f"appid {appid!r} is already served by this fake")
        rng = random.Random(f"{self.seed}:{appid}")
        model = WeChatModel(appid, secret, wxid=wxid, options=self.options, rng=rng)
        self.models[appid] = model
        if webhook is not None or token is not None or aes_key is not None:
            self.pusher.targets[appid] = PushTarget(webhook, token, aes_key)
        return model

    def _routes(self) -> dict[str, ControlHandler]:
        return {
            "GET state": self._c_state,
            "POST agents": self._c_agents,
            "POST customer/message": self._c_message,
            "POST customer/click": self._c_click,
            "POST customer/follow": self._c_follow,
            "POST customer/unfollow": self._c_unfollow,
            "POST customer/leave": self._c_leave,
            "POST agent/accept": self._c_accept,
            "POST agent/invite": self._c_invite,
            "POST session/close": self._c_close,
            "POST session/switch": self._c_switch,
            "POST faults": self._c_faults,
            "POST verify_webhook": self._c_verify,
        }

    def _models(self) -> Iterable[WeChatModel]:
        return self.models.values()

    def flush(self, model: WeChatModel) -> None:
        """Hand the model's queued pushes to the deliverer."""
        for push in model.drain_outbox():
            self.pusher.submit(model, push)

    def flush_all(self) -> None:
        for model in self.models.values():
            self.flush(model)

    def _model_for_token(self, token: object) -> WeChatModel:
        if isinstance(token, str):
            for model in self.models.values():
                if model.owns_token(token):
                    return model
        return self.model

    def _model_for_appid(self, appid: object) -> WeChatModel:
        return self.models.get(appid, self.model) if isinstance(appid, str) else self.model

    # ------------------------------------------------------------------ API entry
    async def _api_entry(self, request: web.Request) -> web.StreamResponse:
        ep = request.path.strip("/")
        now = self.clock.now()
        if ep not in fo.ENDPOINTS:
            return json_response(self.model.err(40066, f"{request.path}"))
        allowed = self.options.del_methods if ep == fo.KF_DEL else frozenset(fo.ENDPOINTS[ep])
        if request.method not in allowed:
            case = "wrong_method_post" if "POST" in allowed else "wrong_method_get"
            return json_response(self.model.err(self.options.code(case), f"{request.method} {request.path}"))
        model = self.model
        try:
            if ep == fo.TOKEN:
                model = self._model_for_appid(request.query.get("appid"))
            elif ep == fo.STABLE_TOKEN:
                body = await _json_body(self.model, request)
                model = self._model_for_appid(body.get("appid"))
            else:
                model = self._model_for_token(request.query.get("access_token"))
            model.calls[ep] += 1
            fault = model.draw_fault(ep)
            if fault is not None:
                dropped = await apply_fault(fault, request, model)
                if dropped is not None:
                    return dropped
            bad = model.check_call(ep, request.query.get("access_token"), now)
            if bad is not None:
                raise Answer(bad)
            logged = len(model.create_log)
            result = await self._handlers[ep](self, model, request, now)
            if ep == fo.SESSION_CREATE:
                self._annotate_creates(model, logged, request)
        except Answer as ans:
            result = ans.payload
            if ep == fo.SESSION_CREATE:  # refused before the model saw it: still one logged call
                model.create_log.append(
                    {"time": now, "kf_account": None, "openid": None, "errcode": result.get("errcode")}
                )
        self.flush_all()
        return json_response(result)

    @staticmethod
    def _annotate_creates(model: WeChatModel, since: int, request: web.Request) -> None:
        """Mark the creates logged from ``since`` on with the port the call came in on (a fake serving
        several ports, one per daemon under test, tells who sent each create) and, for a success, how
        many sessions the agent has right after it (capacity checks)."""
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        for entry in model.create_log[since:]:
            if isinstance(sockname, tuple) and len(sockname) >= 2:
                entry["port"] = sockname[1]
            agent = model.agents.get(entry["kf_account"]) if entry.get("errcode") == 0 else None
            if agent is not None:
                entry["agent_sessions"] = len(agent.sessions)

    # ------------------------------------------------------------------ API handlers
    async def _h_token(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        q = request.query
        return model.fetch_token(
            grant_type=q.get("grant_type"), appid=q.get("appid"), secret=q.get("secret"), now=now
        )

    async def _h_stable_token(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.fetch_stable_token(
            grant_type=body.get("grant_type"),
            appid=body.get("appid"),
            secret=body.get("secret"),
            force_refresh=body.get("force_refresh", False),
            now=now,
        )

    async def _h_add(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.add_account(body.get("kf_account"), body.get("nickname"))

    async def _h_update(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.update_account(body.get("kf_account"), body.get("nickname"))

    async def _h_del(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        account = request.query.get("kf_account")
        if request.method == "POST":
            raw = await request.read()
            if raw.strip() and raw.strip() != b"[]":
                body = _parse_json(model, raw)
                account = body.get("kf_account", account)
            elif account is None:
                raise Answer(model.err(44002))
        return model.delete_account(account, now)

    async def _h_upload(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        account = request.query.get("kf_account")
        filename: str | None = None
        ctype: str | None = None
        size = 0
        if request.content_type.startswith("multipart/"):
            try:
                reader = await request.multipart()
                async for part in reader:
                    if not isinstance(part, BodyPartReader) or part.name != "media":
                        continue
                    filename = part.filename
                    ctype = part.headers.get("Content-Type")
                    data = await part.read()
                    size = len(data)
                    break
            except (ValueError, AssertionError) as exc:
                raise Answer(model.err(47001, f"multipart: {exc}")) from None
        elif not (await request.read()).strip():
            raise Answer(model.err(44002))
        else:
            raise Answer(model.err(41005, "expected multipart/form-data with field media"))
        return model.upload_headimg(account, filename, ctype, size)

    async def _h_invite(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.invite_worker(body.get("kf_account"), body.get("invite_wx"), now)

    async def _h_kflist(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        return model.get_kf_list(now)

    async def _h_online(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        return model.get_online_kf_list()

    async def _h_create(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.create_session(body.get("kf_account"), body.get("openid"), now)

    async def _h_close(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.close_session(body.get("kf_account"), body.get("openid"), now)

    async def _h_getsession(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        return model.get_session(request.query.get("openid"))

    async def _h_sessionlist(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        return model.get_session_list(request.query.get("kf_account"))

    async def _h_waitcase(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        return model.get_wait_case()

    async def _h_msglist(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.get_msg_list(
            body.get("starttime"), body.get("endtime"), body.get("msgid"), body.get("number")
        )

    async def _h_send(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        msgtype = body.get("msgtype")
        cs = body.get("customservice")
        if cs is not None and not isinstance(cs, dict):
            return model.err(47001, "customservice must be an object")
        kf = cs.get("kf_account") if isinstance(cs, dict) else None
        payload = body.get(msgtype) if isinstance(msgtype, str) else None
        return model.send_custom(body.get("touser"), msgtype, payload, kf, now)

    async def _h_typing(self, model: WeChatModel, request: web.Request, now: float) -> Json:
        body = await _json_body(model, request)
        return model.typing(body.get("touser"), body.get("command"), now)

    _handlers: ClassVar[
        dict[str, Callable[[FakeWeChat, WeChatModel, web.Request, float], Awaitable[Json]]]
    ] = {
        fo.TOKEN: _h_token,
        fo.STABLE_TOKEN: _h_stable_token,
        fo.KF_ADD: _h_add,
        fo.KF_UPDATE: _h_update,
        fo.KF_DEL: _h_del,
        fo.KF_UPLOAD: _h_upload,
        fo.KF_INVITE: _h_invite,
        fo.KF_LIST: _h_kflist,
        fo.KF_ONLINE: _h_online,
        fo.SESSION_CREATE: _h_create,
        fo.SESSION_CLOSE: _h_close,
        fo.SESSION_GET: _h_getsession,
        fo.SESSION_LIST: _h_sessionlist,
        fo.WAITCASE: _h_waitcase,
        fo.MSGLIST: _h_msglist,
        fo.CUSTOM_SEND: _h_send,
        fo.TYPING: _h_typing,
    }

    # ------------------------------------------------------------------ control API
    def _cmodel(self, c: ControlCall) -> WeChatModel:
        """The account a control request is about: ``appid`` in the body or the query, else the first."""
        appid = c.body.get("appid", c.query.get("appid"))
        if appid is None:
            return self.model
        if appid not in self.models:
            raise ControlError(f"unknown appid {appid!r}; served: {sorted(self.models)}")
        return self.models[appid]

    async def _c_state(self, c: ControlCall) -> Json:
        state = self._cmodel(c).snapshot(self.clock.now())
        state["deliveries"] = list(self.pusher.log)
        state["delivery_failures"] = self.pusher.failures
        state["deliveries_pending"] = self.pusher.pending
        state["options"] = self.options.to_json()
        state["apps"] = sorted(self.models)
        return state

    async def _c_agents(self, c: ControlCall) -> Json:
        model = self._cmodel(c)
        shape = "{kf_account, nickname?, bound?, online?|status?, auto_accept?}"
        out = []
        for i, row in enumerate(c.rows("agents", shape)):
            check_keys(
                row, f"agents[{i}]", ("kf_account", "nickname", "bound", "online", "status", "auto_accept")
            )
            status = row.get("status")
            if "online" in row:
                if not isinstance(row["online"], bool):
                    raise ControlError(f"agents[{i}].online must be true or false")
                status = 1 if row["online"] else 0
            try:
                out.append(
                    model.set_agent(
                        need_str(row, "kf_account"),
                        self.clock.now(),
                        nickname=row.get("nickname"),
                        bound=row.get("bound"),
                        status=status,
                        auto_accept=row.get("auto_accept"),
                    )
                )
            except ValueError as exc:
                raise ControlError(f"agents[{i}]: {exc}") from None
        return {"agents": out}

    async def _c_message(self, c: ControlCall) -> Json:
        model = self._cmodel(c)
        text = c.body.get("text", "")
        msgtype = c.body.get("msgtype", "text")
        if not isinstance(text, str) or not isinstance(msgtype, str) or not msgtype:
            raise ControlError("text and msgtype must be strings")
        return model.customer_message(c.need_str("openid"), self.clock.now(), text, msgtype=msgtype)

    async def _c_click(self, c: ControlCall) -> Json:
        model = self._cmodel(c)
        return model.menu_click(c.need_str("openid"), c.opt_str("key"), self.clock.now())

    async def _c_follow(self, c: ControlCall) -> Json:
        return self._cmodel(c).follow(c.need_str("openid"), self.clock.now())

    async def _c_unfollow(self, c: ControlCall) -> Json:
        return self._cmodel(c).unfollow(c.need_str("openid"), self.clock.now())

    async def _c_leave(self, c: ControlCall) -> Json:
        return self._cmodel(c).leave_queue(c.need_str("openid"))

    async def _c_accept(self, c: ControlCall) -> Json:
        openid = c.str_or_none("openid")
        return self._cmodel(c).agent_accept(c.need_str("kf_account"), self.clock.now(), openid)

    async def _c_invite(self, c: ControlCall) -> Json:
        accept = c.body.get("accept", True)
        if not isinstance(accept, bool):
            raise ControlError("accept must be true or false")
        return self._cmodel(c).answer_invite(c.need_str("kf_account"), accept, self.clock.now())

    async def _c_close(self, c: ControlCall) -> Json:
        model = self._cmodel(c)
        openid = c.need_str("openid")
        kf = c.body.get("kf_account")
        if kf is None:
            sess = model.sessions.get(openid)
            if sess is None:
                return model.err(65413)
            kf = sess.kf_account
        return model.close_session(kf, openid, self.clock.now(), via="agent")

    async def _c_switch(self, c: ControlCall) -> Json:
        return self._cmodel(c).switch_session(
            c.need_str("openid"), c.need_str("to_kf_account"), self.clock.now()
        )

    async def _c_faults(self, c: ControlCall) -> Json:
        model = self._cmodel(c)
        changed = model.set_faults(c.fault_rules(not_rule=("appid", "wait")))
        return {"faults": {ep: attrs.asdict(f) for ep, f in model.faults.items()}, "changed": changed}

    async def _c_verify(self, c: ControlCall) -> Json:
        return await self.pusher.verify_url(self._cmodel(c), c.opt_str("echostr"))


FAKE_KEY = web.AppKey("fake", FakeWeChat)


# ---------------------------------------------------------------------- helpers
def _parse_json(model: WeChatModel, raw: bytes) -> dict[str, Any]:
    """A non-empty body as a JSON object: 47001 when it is not one."""
    try:
        return json_object(raw)
    except NotJsonObject as exc:
        raise Answer(model.err(47001, "expected a JSON object" if exc.parsed else "")) from None


async def _json_body(model: WeChatModel, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type: 44002 empty, 47001 bad."""
    raw = await request.read()
    if not raw.strip():
        raise Answer(model.err(44002))
    return _parse_json(model, raw)


#: ``async with running_fake(appid, secret, ...) as fake``: a ``FakeWeChat(...)`` (the same arguments)
#: served on 127.0.0.1 on a free port; ``fake.base_url`` is its root.
running_fake = running(FakeWeChat)
