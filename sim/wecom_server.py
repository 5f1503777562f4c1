"""The fake WeCom 微信客服 HTTP server: the qyapi ``cgi-bin/kf/…`` API over aiohttp.web, wrapping ``WeComModel``.

The HTTP layer only parses and routes. Paths match exactly (an unknown path answers HTTP 404 with a
JSON error — a client pointed at the wrong path fails loudly); a POST endpoint called with GET gets
40058 (WeCom: "the request body could not be read"); JSON bodies are read whatever the Content-Type
(empty or unparsable → 40058), unknown fields are ignored; ``access_token`` comes from the query; every
API answer is HTTP 200 with WeCom's JSON. Faults (errcode, delay, dropped connection) are drawn per
endpoint before the model sees the call. Callbacks the model queues go to ``sim.wecom_push``.

The control API lives under ``/_fake/`` (docs/wecom.md; its plumbing, shared with the fake WeChat, is
``sim.fake_server_base``). ``running_fake_wecom(...)`` starts the server in-process on 127.0.0.1 (port 0
by default) for tests.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import attrs
from aiohttp import web

from kfrouter.router.clock import SteadyClock
from kfrouter.sim import wecom_options as wo
from kfrouter.sim.fake_control import ControlCall, ControlError, check_keys, need_str
from kfrouter.sim.fake_http import Answer, NotJsonObject, apply_fault, json_object, json_response
from kfrouter.sim.fake_server_base import ControlHandler, FakeServerBase, running
from kfrouter.sim.model_base import Json
from kfrouter.sim.wecom_model import WeComModel
from kfrouter.sim.wecom_options import WeComOptions
from kfrouter.sim.wecom_push import CallbackDeliverer


class FakeWeCom(FakeServerBase[WeComOptions]):
    """One fake WeCom corp: the model, the aiohttp ``app``, the callback deliverer."""

    MAX_BODY = 1024 * 1024
    pusher: CallbackDeliverer

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
        super().__init__(options if options is not None else WeComOptions(), clock)
        self.model = WeComModel(corpid, secret, options=self.options, rng=random.Random(f"{seed}:{corpid}"))
        self.pusher = CallbackDeliverer(
            callback_url, token, aes_key, corpid, self.options, self.clock.now, random.Random(f"{seed}:push")
        )
        self.app = self._build_app(FAKE_WECOM_KEY)

    def _routes(self) -> dict[str, ControlHandler]:
        return {
            "GET state": self._c_state,
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
            "POST verify_callback": self._c_verify,
        }

    def _models(self) -> Iterable[WeComModel]:
        return (self.model,)

    def flush(self) -> None:
        """Hand the model's queued callbacks to the deliverer."""
        for push in self.model.drain_outbox():
            self.pusher.submit(push)

    def flush_all(self) -> None:
        self.flush()

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
                dropped = await apply_fault(fault, request, model)
                if dropped is not None:
                    return dropped
            if request.method not in wo.ENDPOINTS[ep]:
                raise Answer(
                    model.err(40058, f"{request.method} {request.path}: expected POST with a JSON body")
                )
            bad = model.check_call(ep, request.query.get("access_token"), now)
            if bad is not None:
                raise Answer(bad)
            body = (
                await _json_body(model, request)
                if ep in wo.JSON_BODY_ENDPOINTS and request.method == "POST"
                else {}
            )
            result = self._dispatch(ep, request, body, now)
        except Answer as ans:
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

    # ------------------------------------------------------------------ control API
    def _now(self) -> float:
        return self.clock.now()

    async def _c_state(self, c: ControlCall) -> Json:
        state = self.model.snapshot(self._now())
        state["callbacks"] = list(self.pusher.log)
        state["callback_failures"] = self.pusher.failures
        state["callbacks_pending"] = self.pusher.pending
        state["options"] = self.options.to_json()
        return state

    async def _c_accounts(self, c: ControlCall) -> Json:
        out = []
        for i, row in enumerate(c.rows("accounts", "{name, open_kfid?, manage_privilege?}")):
            check_keys(row, f"accounts[{i}]", ("name", "open_kfid", "manage_privilege"))
            try:
                if row.get("open_kfid") in self.model.accounts and "manage_privilege" in row:
                    self.model.set_manage_privilege(row["open_kfid"], row["manage_privilege"])
                    out.append(row["open_kfid"])
                    continue
                out.append(
                    self.model.add_account(
                        need_str(row, "name"),
                        open_kfid=row.get("open_kfid"),
                        manage_privilege=row.get("manage_privilege", True),
                    )
                )
            except ValueError as exc:
                raise ControlError(f"accounts[{i}]: {exc}") from None
        return {"open_kfids": out}

    async def _c_servicers(self, c: ControlCall) -> Json:
        kfid = c.need_str("open_kfid")
        out = []
        for i, row in enumerate(c.rows("servicers", "{userid, status?, stop_type?}")):
            check_keys(row, f"servicers[{i}]", ("userid", "status", "stop_type"))
            try:
                out.append(
                    self.model.add_servicer(
                        kfid,
                        need_str(row, "userid"),
                        status=row.get("status"),
                        stop_type=row.get("stop_type", 0),
                    )
                )
            except ValueError as exc:
                raise ControlError(f"servicers[{i}]: {exc}") from None
        departments = c.body.get("departments", [])
        if not isinstance(departments, list):
            raise ControlError("departments must be a list of department ids")
        for d in departments:
            self.model.add_department(kfid, d)
        return {"servicers": out}

    async def _c_servicer_status(self, c: ControlCall) -> Json:
        events = self.model.set_servicer_status(
            c.need_str("userid"), c.body.get("status"), self._now(), stop_type=c.body.get("stop_type", 0)
        )
        return {"events": events}

    async def _c_accept(self, c: ControlCall) -> Json:
        ext = c.str_or_none("external_userid")
        return self.model.servicer_accept(c.need_str("open_kfid"), c.need_str("userid"), self._now(), ext)

    async def _c_transfer(self, c: ControlCall) -> Json:
        return self.model.servicer_transfer(
            c.need_str("open_kfid"), c.need_str("external_userid"), c.need_str("to_userid"), self._now()
        )

    async def _c_end(self, c: ControlCall) -> Json:
        return self.model.servicer_end(c.need_str("open_kfid"), c.need_str("external_userid"), self._now())

    async def _c_reply(self, c: ControlCall) -> Json:
        return self.model.servicer_reply(
            c.need_str("open_kfid"),
            c.need_str("external_userid"),
            c.need_str("userid"),
            c.need_str("text"),
            self._now(),
        )

    async def _c_enter(self, c: ControlCall) -> Json:
        return self.model.customer_enter(
            c.need_str("open_kfid"),
            c.need_str("external_userid"),
            self._now(),
            scene=c.opt_str("scene"),
            scene_param=c.opt_str("scene_param"),
        )

    async def _c_message(self, c: ControlCall) -> Json:
        return self.model.customer_message(
            c.need_str("open_kfid"),
            c.need_str("external_userid"),
            self._now(),
            c.opt_str("text"),
            msgtype=c.body.get("msgtype", "text"),
        )

    async def _c_revoke(self, c: ControlCall) -> Json:
        return {"revoked": self.model.revoke_token()}

    async def _c_faults(self, c: ControlCall) -> Json:
        changed = self.model.set_faults(c.fault_rules(not_rule=("wait",)))
        faults = {ep: attrs.asdict(f) for ep, f in self.model.faults.items()}
        return {"faults": faults, "changed": list(changed)}

    async def _c_verify(self, c: ControlCall) -> Json:
        return await self.pusher.verify_url(c.opt_str("echostr"))


FAKE_WECOM_KEY = web.AppKey("fake_wecom", FakeWeCom)


# ---------------------------------------------------------------------- helpers
async def _json_body(model: WeComModel, request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, whatever the Content-Type: empty or bad → 40058."""
    raw = await request.read()
    if not raw.strip():
        raise Answer(model.err(40058, "empty request body"))
    try:
        return json_object(raw)
    except NotJsonObject as exc:
        problem = "the request body must be a JSON object" if exc.parsed else "the request body is not JSON"
        raise Answer(model.err(40058, problem)) from None


#: ``async with running_fake_wecom(corpid, secret, ...) as fake``: a ``FakeWeCom(...)`` (the same arguments)
#: served on 127.0.0.1 on a free port; ``fake.base_url`` is its root.
running_fake_wecom = running(FakeWeCom)
