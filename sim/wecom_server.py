"""The fake WeCom 微信客服 HTTP server: the qyapi ``cgi-bin/kf/…`` API over aiohttp.web, wrapping ``WeComModel``.

The HTTP layer only parses and routes. Paths match exactly (an unknown path answers HTTP 404 with a
JSON error — a client pointed at the wrong path fails loudly); a POST endpoint called with GET gets
40058 (WeCom: "the request body could not be read"); JSON bodies are read whatever the Content-Type
(empty or unparsable → 40058), unknown fields are ignored; ``access_token`` comes from the query; every
API answer is HTTP 200 with WeCom's JSON. Faults (errcode, delay, dropped connection) are drawn per
endpoint before the model sees the call. Callbacks the model queues go to ``sim.wecom_push``.

The control API lives under ``/_fake/`` (docs/wecom.md). ``running_fake_wecom(...)`` starts the server
in-process on 127.0.0.1 (port 0 by default) for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
from aiohttp import web

from kfrouter.router.clock import SteadyClock
from kfrouter.sim import wecom_options as wo
from kfrouter.sim.fake_options import Fault
from kfrouter.sim.fake_server import json_response
from kfrouter.sim.serving import serving
from kfrouter.sim.wecom_model import Json, WeComModel
from kfrouter.sim.wecom_options import WeComOptions
from kfrouter.sim.wecom_push import CallbackDeliverer

MAX_BODY = 1024 * 1024


class _Answer(Exception):
    """Raised inside a handler to answer at once with WeCom JSON."""

    def __init__(self, payload: Json) -> None:
        super().__init__(payload.get("errmsg", ""))
        self.payload = payload


class _ControlError(Exception):
    """A bad control-API request: HTTP 400 with ``{"error": message}``."""


class FakeWeCom:
    """One fake WeCom corp: the model, the aiohttp ``app``, the callback deliverer."""

    def __init__(
        self,
        corpid: str = "wwfakecorp0001",
        secret: str = "fake_kf_secret",
        *,
        callback_url: str | None = None,
        token: str | None = None,
        aes_key: str | None = None,
        options: WeComOptions | None = None,
        seed: int = 0,
        clock: SteadyClock | None = None,
    ) -> None:
        self.options = options if options is not None else WeComOptions()
        self._initial_options = attrs.evolve(self.options)
        self.clock = clock if clock is not None else SteadyClock()
        self.model = WeComModel(corpid, secret, options=self.options, rng=random.Random(f"{seed}:{corpid}"))
        self.pusher = CallbackDeliverer(
            callback_url, token, aes_key, corpid, self.options, self.clock.now, random.Random(f"{seed}:push")
        )
        self.app = self._build_app()
        self.base_url = ""

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app[FAKE_WECOM_KEY] = self
        self._control: dict[str, Callable[[dict[str, Any]], Awaitable[Json]]] = {
            "GET state": self._c_state,
            "POST reset": self._c_reset,
            "POST accounts": self._c_accounts,
            "POST servicers": self._c_servicers,
            "POST servicer/status": self._c_servicer_status,
            "POST servicer/accept": self._c_accept,
            "POST servicer/transfer": self._c_transfer,
            "POST servicer/end": self._c_end,
            "POST servicer/reply": self._c_reply,
            "POST customer/enter": self._c_enter,
            "POST customer/message": self._c_message,
            "POST token/revoke": self._c_revoke,
            "POST faults": self._c_faults,
            "DELETE faults": self._c_faults_clear,
            "POST clock/advance": self._c_advance,
            "POST options": self._c_options,
            "POST settle": self._c_settle,
            "POST verify_callback": self._c_verify,
        }
        app.router.add_route("*", "/_fake/{name:.*}", self._control_entry)
        app.router.add_route("*", "/{tail:.*}", self._api_entry)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.pusher.close()

    def flush(self) -> None:
        """Hand the model's queued callbacks to the deliverer."""
        for push in self.model.drain_outbox():
            self.pusher.submit(push)

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait for in-flight callback deliveries."""
        return await self.pusher.settle(timeout)

    def reset(self) -> None:
        """Forget all state, faults and logs; options go back to the ones given at construction."""
        self.model.reset()
        self.pusher.reset()
        self.options.update(self._initial_options.to_json())

    # ------------------------------------------------------------------ API entry
    async def _api_entry(self, request: web.Request) -> web.StreamResponse:
        ep = request.path.strip("/")
        now = self.clock.now()
        model = self.model
        if ep not in wo.ENDPOINTS:
            return json_response(model.err(-1, f"unknown API path {request.path}"), status=404)
        model.calls[ep] += 1
        try:
            fault = model.draw_fault(ep)
            if fault is not None:
                dropped = await self._apply_fault(ep, request, fault)
                if dropped is not None:
                    return dropped
            if request.method not in wo.ENDPOINTS[ep]:
                raise _Answer(
                    model.err(40058, f"{request.method} {request.path}: expected POST with a JSON body")
                )
            bad = model.check_call(ep, request.query.get("access_token"), now)
            if bad is not None:
                raise _Answer(bad)
            body = (
                await _json_body(model, request)
                if ep in wo.JSON_BODY_ENDPOINTS and request.method == "POST"
                else {}
            )
            result = self._dispatch(ep, request, body, now)
        except _Answer as ans:
            result = ans.payload
        self.flush()
        return json_response(result)

    def _dispatch(self, ep: str, request: web.Request, b: dict[str, Any], now: float) -> Json:
        m, q = self.model, request.query
        if ep == wo.GETTOKEN:
            return m.gettoken(q.get("corpid"), q.get("corpsecret"), now)
        if ep == wo.ACCOUNT_LIST:
            if request.method == "GET":  # the SDKs' form: no paging
                return m.list_accounts(None, None)
            return m.list_accounts(b.get("offset"), b.get("limit"))
        if ep == wo.SERVICER_LIST:
            return m.list_servicers(q.get("open_kfid"))
        if ep == wo.STATE_GET:
            return m.get_state(b.get("open_kfid"), b.get("external_userid"), now)
        if ep == wo.STATE_TRANS:
            return m.trans(
                b.get("open_kfid"),
                b.get("external_userid"),
                b.get("service_state"),
                b.get("servicer_userid"),
                now,
            )
        if ep == wo.SYNC_MSG:
            return m.sync_msg(
                b.get("cursor"),
                b.get("token"),
                b.get("limit"),
                b.get("voice_format"),
                b.get("open_kfid"),
                now,
            )
        msgtype = b.get("msgtype")
        payload = b.get(msgtype) if isinstance(msgtype, str) else None
        if ep == wo.SEND_MSG:
            return m.send_msg(b.get("touser"), b.get("open_kfid"), b.get("msgid"), msgtype, payload, now)
        assert ep == wo.SEND_ON_EVENT
        return m.send_on_event(b.get("code"), b.get("msgid"), msgtype, payload, now)

    async def _apply_fault(self, ep: str, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.delay_s > 0:
            await asyncio.sleep(fault.delay_s)
        if fault.drop_connection:
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        if fault.errcode is not None:
            raise _Answer(self.model.err(fault.errcode, "injected") if fault.errcode else self.model.ok())
        return None

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
            body = await _control_body(request)
            result = await handler(body)
        except (_ControlError, ValueError) as exc:
            return json_response({"error": f"/_fake/{name}: {exc}"}, status=400)
        self.flush()
        if body.get("wait"):
            await self.settle()
        return json_response(result)

    def _now(self) -> float:
        return self.clock.now()

    async def _c_state(self, body: dict[str, Any]) -> Json:
        state = self.model.snapshot(self._now())
        state["callbacks"] = list(self.pusher.log)
        state["callback_failures"] = self.pusher.failures
        state["callbacks_pending"] = self.pusher.pending
        state["options"] = self.options.to_json()
        return state

    async def _c_reset(self, body: dict[str, Any]) -> Json:
        self.reset()
        return {"ok": True}

    async def _c_accounts(self, body: dict[str, Any]) -> Json:
        rows = _list(body, "accounts", "{name, open_kfid?, manage_privilege?}")
        out = []
        for i, row in enumerate(rows):
            _keys(row, f"accounts[{i}]", {"name", "open_kfid", "manage_privilege"})
            try:
                if row.get("open_kfid") in self.model.accounts and "manage_privilege" in row:
                    self.model.set_manage_privilege(row["open_kfid"], row["manage_privilege"])
                    out.append(row["open_kfid"])
                    continue
                out.append(
                    self.model.add_account(
                        _str(row, "name"),
                        open_kfid=row.get("open_kfid"),
                        manage_privilege=row.get("manage_privilege", True),
                    )
                )
            except ValueError as exc:
                raise _ControlError(f"accounts[{i}]: {exc}") from None
        return {"open_kfids": out}

    async def _c_servicers(self, body: dict[str, Any]) -> Json:
        kfid = _str(body, "open_kfid")
        rows = _list(body, "servicers", "{userid, status?, stop_type?}")
        out = []
        for i, row in enumerate(rows):
            _keys(row, f"servicers[{i}]", {"userid", "status", "stop_type"})
            try:
                out.append(
                    self.model.add_servicer(
                        kfid, _str(row, "userid"), status=row.get("status"), stop_type=row.get("stop_type", 0)
                    )
                )
            except ValueError as exc:
                raise _ControlError(f"servicers[{i}]: {exc}") from None
        departments = body.get("departments", [])
        if not isinstance(departments, list):
            raise _ControlError("departments must be a list of department ids")
        for d in departments:
            self.model.add_department(kfid, d)
        return {"servicers": out}

    async def _c_servicer_status(self, body: dict[str, Any]) -> Json:
        events = self.model.set_servicer_status(
            _str(body, "userid"), body.get("status"), self._now(), stop_type=body.get("stop_type", 0)
        )
        return {"events": events}

    async def _c_accept(self, body: dict[str, Any]) -> Json:
        ext = body.get("external_userid")
        if ext is not None and not isinstance(ext, str):
            raise _ControlError("external_userid must be a string")
        return self.model.servicer_accept(_str(body, "open_kfid"), _str(body, "userid"), self._now(), ext)

    async def _c_transfer(self, body: dict[str, Any]) -> Json:
        return self.model.servicer_transfer(
            _str(body, "open_kfid"), _str(body, "external_userid"), _str(body, "to_userid"), self._now()
        )

    async def _c_end(self, body: dict[str, Any]) -> Json:
        return self.model.servicer_end(_str(body, "open_kfid"), _str(body, "external_userid"), self._now())

    async def _c_reply(self, body: dict[str, Any]) -> Json:
        return self.model.servicer_reply(
            _str(body, "open_kfid"),
            _str(body, "external_userid"),
            _str(body, "userid"),
            _str(body, "text"),
            self._now(),
        )

    async def _c_enter(self, body: dict[str, Any]) -> Json:
        return self.model.customer_enter(
            _str(body, "open_kfid"),
            _str(body, "external_userid"),
            self._now(),
            scene=_opt_str(body, "scene"),
            scene_param=_opt_str(body, "scene_param"),
        )

    async def _c_message(self, body: dict[str, Any]) -> Json:
        return self.model.customer_message(
            _str(body, "open_kfid"),
            _str(body, "external_userid"),
            self._now(),
            _opt_str(body, "text"),
            msgtype=body.get("msgtype", "text"),
        )

    async def _c_revoke(self, body: dict[str, Any]) -> Json:
        return {"revoked": self.model.revoke_token()}

    async def _c_faults(self, body: dict[str, Any]) -> Json:
        rules = body.get("faults")
        if rules is None:
            ep = _str(body, "endpoint")
            rule = {k: v for k, v in body.items() if k not in ("endpoint", "clear", "wait")}
            rules = {ep: None if body.get("clear") else rule}
        if not isinstance(rules, dict):
            raise _ControlError("faults must be an object endpoint -> rule (or null to clear)")
        parsed = {
            ep: (None if rule is None else Fault.from_json(rule, f"faults[{ep!r}]"))
            for ep, rule in rules.items()
        }
        changed = [self.model.set_fault(ep, rule) for ep, rule in parsed.items()]
        return {"faults": {ep: attrs.asdict(f) for ep, f in self.model.faults.items()}, "changed": changed}

    async def _c_faults_clear(self, body: dict[str, Any]) -> Json:
        self.model.faults.clear()
        return {"faults": {}}

    async def _c_advance(self, body: dict[str, Any]) -> Json:
        return {"now": self.clock.advance(body.get("seconds"))}

    async def _c_options(self, body: dict[str, Any]) -> Json:
        changed = self.options.update({k: v for k, v in body.items() if k != "wait"})
        return {"changed": changed, "options": self.options.to_json()}

    async def _c_settle(self, body: dict[str, Any]) -> Json:
        timeout = body.get("timeout", 30.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _ControlError(f"timeout must be a positive number, got {timeout!r}")
        return {"settled": await self.settle(float(timeout)), "pending": self.pusher.pending}

    async def _c_verify(self, body: dict[str, Any]) -> Json:
        return await self.pusher.verify_url(_opt_str(body, "echostr"))


FAKE_WECOM_KEY = web.AppKey("fake_wecom", FakeWeCom)


# ---------------------------------------------------------------------- helpers
async def _json_body(model: WeComModel, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type: empty or bad → 40058."""
    raw = await request.read()
    if not raw.strip():
        raise _Answer(model.err(40058, "empty request body"))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Answer(model.err(40058, "the request body is not JSON")) from None
    if not isinstance(data, dict):
        raise _Answer(model.err(40058, "the request body must be a JSON object"))
    return data


async def _control_body(request: web.Request) -> dict[str, Any]:
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


def _str(body: dict[str, Any], key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise _ControlError(f"field {key!r} must be a non-empty string, got {v!r}")
    return v


def _opt_str(body: dict[str, Any], key: str) -> str:
    v = body.get(key, "")
    if not isinstance(v, str):
        raise _ControlError(f"field {key!r} must be a string, got {v!r}")
    return v


def _list(body: dict[str, Any], key: str, shape: str) -> list[dict[str, Any]]:
    rows = body.get(key)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _ControlError(f"field {key!r} must be a list of {shape}")
    return rows


def _keys(row: dict[str, Any], where: str, known: set[str]) -> None:
    extra = set(row) - known
    if extra:
        raise _ControlError(f"{where}: unknown keys {sorted(extra)}; known: {sorted(known)}")


@contextlib.asynccontextmanager
async def running_fake_wecom(
    corpid: str = "wwfakecorp0001",
    secret: str = "fake_kf_secret",
    *,
    callback_url: str | None = None,
    token: str | None = None,
    aes_key: str | None = None,
    options: WeComOptions | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    clock: SteadyClock | None = None,
) -> AsyncIterator[FakeWeCom]:
    """Start a ``FakeWeCom`` on ``host:port`` (0 = any free port); ``fake.base_url`` is its root."""
    fake = FakeWeCom(
        corpid,
        secret,
        callback_url=callback_url,
        token=token,
        aes_key=aes_key,
        options=options,
        seed=seed,
        clock=clock,
    )
    async with serving(fake.app, host, port) as fake.base_url:
        yield fake
