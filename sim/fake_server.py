"""The fake WeChat HTTP server: the kf API of spec §2 over aiohttp.web, wrapping ``WeChatModel``.

The HTTP layer only parses and routes: paths are matched exactly (a wrong ``/cgi-bin/`` prefix or an
unknown path answers 40066), a wrong method 43001/43002, bodies are read as JSON whatever the
Content-Type (empty → 44002, unparsable → 47001), unknown JSON fields are ignored, ``access_token`` comes
from the query, and every answer is HTTP 200 with WeChat's JSON. Faults (errcode, delay, dropped
connection) are drawn per endpoint before the model sees the call. Pushes the model queues are handed
to ``sim.fake_push.Deliverer``.

The control API lives under ``/_fake/`` (see docs/fake-wechat.md). ``running_fake(...)`` starts the
server in-process on 127.0.0.1 (port 0 by default) for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
from aiohttp import BodyPartReader, web

from kfrouter.router.clock import SteadyClock
from kfrouter.sim import fake_options as fo
from kfrouter.sim.fake_options import FakeOptions, Fault
from kfrouter.sim.fake_push import Deliverer, PushTarget
from kfrouter.sim.serving import serving
from kfrouter.sim.wechat_model import Json, WeChatModel

MAX_BODY = 8 * 1024 * 1024  # uploadheadimg allows 5 MB of media plus multipart framing


class _Answer(Exception):
    """Raised inside a handler to answer at once with WeChat JSON."""

    def __init__(self, payload: Json) -> None:
        super().__init__(payload.get("errmsg", ""))
        self.payload = payload


class _ControlError(Exception):
    """A bad control-API request: answered with HTTP 400 and ``{"error": message}``."""


class FakeWeChat:
    """One fake WeChat: models per appid (``model`` is the first), the aiohttp ``app``, the pusher."""

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
        self.options = options if options is not None else FakeOptions()
        self._initial_options = attrs.evolve(self.options)
        self.clock = clock if clock is not None else SteadyClock()
        self.seed = seed
        self.models: dict[str, WeChatModel] = {}
        self.pusher = Deliverer(webhook, token, aes_key, self.clock.now, self.flush)
        self.model = self.add_app(appid, secret, wxid=wxid)
        self.app = self._build_app()
        self.base_url = ""

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

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app[FAKE_KEY] = self
        control: dict[str, Callable[[web.Request], Awaitable[Json]]] = {
            "GET state": self._c_state,
            "POST reset": self._c_reset,
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
            "DELETE faults": self._c_faults_clear,
            "POST clock/advance": self._c_advance,
            "POST options": self._c_options,
            "POST settle": self._c_settle,
            "POST verify_webhook": self._c_verify,
        }
        self._control = control
        app.router.add_route("*", "/_fake/{name:.*}", self._control_entry)
        app.router.add_route("*", "/{tail:.*}", self._api_entry)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.pusher.close()

    def flush(self, model: WeChatModel) -> None:
        """Hand the model's queued pushes to the deliverer."""
        for push in model.drain_outbox():
            self.pusher.submit(model, push)

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait for in-flight push deliveries (and any they trigger)."""
        return await self.pusher.settle(timeout)

    def reset(self) -> None:
        """Forget all state, faults and logs; options go back to the ones given at construction."""
        for model in self.models.values():
            model.reset()
        self.pusher.reset()
        for a in attrs.fields(FakeOptions):
            setattr(self.options, a.name, getattr(attrs.evolve(self._initial_options), a.name))

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
                dropped = await self._apply_fault(model, ep, request, fault, now)
                if dropped is not None:
                    return dropped
            bad = model.check_call(ep, request.query.get("access_token"), now)
            if bad is not None:
                raise _Answer(bad)
            logged = len(model.create_log)
            result = await self._handlers[ep](self, model, request, now)
            if ep == fo.SESSION_CREATE:
                self._annotate_creates(model, logged, request)
        except _Answer as ans:
            result = ans.payload
            if ep == fo.SESSION_CREATE:  # refused before the model saw it: still one logged call
                model.create_log.append(
                    {"time": now, "kf_account": None, "openid": None, "errcode": result.get("errcode")}
                )
        for m in self.models.values():
            self.flush(m)
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

    async def _apply_fault(
        self, model: WeChatModel, ep: str, request: web.Request, fault: Fault, now: float
    ) -> web.StreamResponse | None:
        if fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)
        if fault.drop_connection:
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        if fault.errcode is not None:
            raise _Answer(model.err(fault.errcode, "injected") if fault.errcode else model.ok())
        return None

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
                raise _Answer(model.err(44002))
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
                raise _Answer(model.err(47001, f"multipart: {exc}")) from None
        elif not (await request.read()).strip():
            raise _Answer(model.err(44002))
        else:
            raise _Answer(model.err(41005, "expected multipart/form-data with field media"))
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
    async def _control_entry(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"].strip("/")
        handler = self._control.get(f"{request.method} {name}")
        if handler is None:
            known = sorted(self._control)
            if any(k.split(" ", 1)[1] == name for k in known):
                return json_response(
                    {"error": f"/_fake/{name}: method {request.method} not allowed"}, status=405
                )
            return json_response(
                {"error": f"unknown control endpoint /_fake/{name}; known: {known}"}, status=404
            )
        try:
            result = await handler(request)
        except (_ControlError, ValueError) as exc:
            return json_response({"error": f"/_fake/{name}: {exc}"}, status=400)
        for model in self.models.values():
            self.flush(model)
        if isinstance(result, dict) and result.pop("_settle", False):
            await self.settle()
        return json_response(result)

    async def _cbody(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _ControlError(f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise _ControlError(f"body must be a JSON object, got {type(data).__name__}")
        return data

    def _cmodel(self, body: dict[str, Any], request: web.Request) -> WeChatModel:
        appid = body.get("appid", request.query.get("appid"))
        if appid is None:
            return self.model
        if appid not in self.models:
            raise _ControlError(f"unknown appid {appid!r}; served: {sorted(self.models)}")
        return self.models[appid]

    @staticmethod
    def _need_str(body: dict[str, Any], key: str) -> str:
        v = body.get(key)
        if not isinstance(v, str) or not v:
            raise _ControlError(f"field {key!r} must be a non-empty string, got {v!r}")
        return v

    async def _c_state(self, request: web.Request) -> Json:
        model = self._cmodel({}, request)
        state = model.snapshot(self.clock.now())
        state["deliveries"] = list(self.pusher.log)
        state["delivery_failures"] = self.pusher.failures
        state["deliveries_pending"] = self.pusher.pending
        state["options"] = self.options.to_json()
        state["apps"] = sorted(self.models)
        return state

    async def _c_reset(self, request: web.Request) -> Json:
        self.reset()
        return {"ok": True}

    async def _c_agents(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        model = self._cmodel(body, request)
        rows = body.get("agents")
        if not isinstance(rows, list):
            raise _ControlError(
                "field 'agents' must be a list of {kf_account, nickname?, bound?, online?|status?, "
                "auto_accept?}"
            )
        known = {"kf_account", "nickname", "bound", "online", "status", "auto_accept"}
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise _ControlError(f"agents[{i}] must be an object")
            extra = set(row) - known
            if extra:
                raise _ControlError(f"agents[{i}]: unknown keys {sorted(extra)}")
            status = row.get("status")
            if "online" in row:
                if not isinstance(row["online"], bool):
                    raise _ControlError(f"agents[{i}].online must be true or false")
                status = 1 if row["online"] else 0
            try:
                out.append(
                    model.set_agent(
                        self._need_str(row, "kf_account"),
                        self.clock.now(),
                        nickname=row.get("nickname"),
                        bound=row.get("bound"),
                        status=status,
                        auto_accept=row.get("auto_accept"),
                    )
                )
            except ValueError as exc:
                raise _ControlError(f"agents[{i}]: {exc}") from None
        return {"agents": out}

    async def _c_message(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        model = self._cmodel(body, request)
        text = body.get("text", "")
        msgtype = body.get("msgtype", "text")
        if not isinstance(text, str) or not isinstance(msgtype, str) or not msgtype:
            raise _ControlError("text and msgtype must be strings")
        result = model.customer_message(
            self._need_str(body, "openid"), self.clock.now(), text, msgtype=msgtype
        )
        return {**result, "_settle": bool(body.get("wait"))}

    async def _c_click(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        model = self._cmodel(body, request)
        key = body.get("key", "")
        if not isinstance(key, str):
            raise _ControlError("key must be a string")
        return {
            **model.menu_click(self._need_str(body, "openid"), key, self.clock.now()),
            "_settle": bool(body.get("wait")),
        }

    async def _c_follow(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        return self._cmodel(body, request).follow(self._need_str(body, "openid"), self.clock.now())

    async def _c_unfollow(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        return self._cmodel(body, request).unfollow(self._need_str(body, "openid"), self.clock.now())

    async def _c_leave(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        return self._cmodel(body, request).leave_queue(self._need_str(body, "openid"))

    async def _c_accept(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        openid = body.get("openid")
        if openid is not None and not isinstance(openid, str):
            raise _ControlError("openid must be a string")
        return self._cmodel(body, request).agent_accept(
            self._need_str(body, "kf_account"), self.clock.now(), openid
        )

    async def _c_invite(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        accept = body.get("accept", True)
        if not isinstance(accept, bool):
            raise _ControlError("accept must be true or false")
        return self._cmodel(body, request).answer_invite(
            self._need_str(body, "kf_account"), accept, self.clock.now()
        )

    async def _c_close(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        model = self._cmodel(body, request)
        openid = self._need_str(body, "openid")
        kf = body.get("kf_account")
        if kf is None:
            sess = model.sessions.get(openid)
            if sess is None:
                return model.err(65413)
            kf = sess.kf_account
        return model.close_session(kf, openid, self.clock.now(), via="agent")

    async def _c_switch(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        return self._cmodel(body, request).switch_session(
            self._need_str(body, "openid"), self._need_str(body, "to_kf_account"), self.clock.now()
        )

    async def _c_faults(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        model = self._cmodel(body, request)
        rules = body.get("faults")
        if rules is None:
            ep = self._need_str(body, "endpoint")
            rule = {k: v for k, v in body.items() if k not in ("endpoint", "appid", "clear")}
            rules = {ep: None if body.get("clear") else rule}
        if not isinstance(rules, dict):
            raise _ControlError("faults must be an object endpoint -> rule (or null to clear)")
        parsed = {
            ep: (None if rule is None else Fault.from_json(rule, f"faults[{ep!r}]"))
            for ep, rule in rules.items()
        }
        for ep in parsed:
            fo.resolve_endpoint(ep)
        installed = {model.set_fault(ep, rule): rule is not None for ep, rule in parsed.items()}
        return {"faults": {ep: attrs.asdict(f) for ep, f in model.faults.items()}, "changed": installed}

    async def _c_faults_clear(self, request: web.Request) -> Json:
        for model in self.models.values():
            model.faults.clear()
        return {"faults": {}}

    async def _c_advance(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        return {"now": self.clock.advance(body.get("seconds"))}

    async def _c_options(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        changed = self.options.update(body)
        return {"changed": changed, "options": self.options.to_json()}

    async def _c_settle(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        timeout = body.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _ControlError(f"timeout must be a positive number, got {timeout!r}")
        return {"settled": await self.settle(float(timeout)), "pending": self.pusher.pending}

    async def _c_verify(self, request: web.Request) -> Json:
        body = await self._cbody(request)
        echostr = body.get("echostr", "")
        if not isinstance(echostr, str):
            raise _ControlError("echostr must be a string")
        return await self.pusher.verify_url(self._cmodel(body, request), echostr)


FAKE_KEY = web.AppKey("fake", FakeWeChat)


# ---------------------------------------------------------------------- helpers
def json_response(payload: Json, status: int = 200) -> web.Response:
    """HTTP ``status`` with ``payload`` as UTF-8 JSON (no ASCII escapes), the way WeChat and WeCom answer."""
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        content_type="application/json",
        charset="utf-8",
    )


def _parse_json(model: WeChatModel, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Answer(model.err(47001)) from None
    if not isinstance(data, dict):
        raise _Answer(model.err(47001, "expected a JSON object"))
    return data


async def _json_body(model: WeChatModel, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type: 44002 empty, 47001 bad."""
    raw = await request.read()
    if not raw.strip():
        raise _Answer(model.err(44002))
    return _parse_json(model, raw)


@contextlib.asynccontextmanager
async def running_fake(
    appid: str = "wx_fake_appid",
    secret: str = "fake_secret",
    *,
    webhook: str | Sequence[str] | None = None,
    token: str | None = None,
    aes_key: str | None = None,
    options: FakeOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    clock: SteadyClock | None = None,
    wxid: str = "test",
) -> AsyncIterator[FakeWeChat]:
    """Start a ``FakeWeChat`` on ``host:port`` (0 = any free port); ``fake.base_url`` is its root."""
    fake = FakeWeChat(
        appid,
        secret,
        webhook=webhook,
        token=token,
        aes_key=aes_key,
        options=options,
        wxid=wxid,
        seed=seed,
        clock=clock,
    )
    async with serving(fake.app, host, port) as fake.base_url:
        yield fake
