"""The replay's view of WeChat: a thin adapter over ``sim.wechat_model.WeChatModel`` (the same model the
fake HTTP server wraps) that answers the simulator's creates and closes with bare errcodes.

Agents of any name shape get a model account; replay options switch off push objects and random ``rid``
values in errmsg; failures are injected through the model's fault rules; the model's create log is kept
bounded.
"""

from __future__ import annotations

import random

from sim import fake_options as fo
from sim.wechat_model import WeChatModel

_MODEL_WXID = "sim"
_CREATE_LOG_KEEP = 4096  # the model logs every create; the replay trims the log to bound memory


class ReplayWeChat:
    """Thin adapter over ``WeChatModel``: agent names of any shape, replay options (no push objects, no
    random ``rid`` in errmsg), failure injection through the model's fault rules, a bounded create log."""

    def __init__(self, rng: random.Random, failure_rate: float = 0.0, failure_errcode: int = -1) -> None:
        opts = fo.FakeOptions(push_events_on_api_actions=False, errmsg_rid=False, forward_idle_s=None)
        self.model = WeChatModel("wxsimulator", "simulator-secret", wxid=_MODEL_WXID, options=opts, rng=rng)
        if failure_rate > 0:
            self.model.set_fault(fo.SESSION_CREATE, fo.Fault(errcode=failure_errcode, rate=failure_rate))
        self._names: dict[str, str] = {}
        self._faulty = failure_rate > 0

    def account(self, agent: str) -> str:
        acc = self._names.get(agent)
        if acc is None:
            parts = agent.split("@")
            ok = len(parts) == 2 and all(parts)
            acc = agent if ok else f"x{len(self._names)}@{_MODEL_WXID}"
            self._names[agent] = acc
        return acc

    def set_agent(self, agent: str, now: float, status: int, auto_accept: int) -> None:
        self.model.set_agent(self.account(agent), now, status=status, auto_accept=auto_accept)

    def create(self, agent: str, openid: str, now: float) -> int:
        model = self.model
        if self._faulty:
            fault = model.draw_fault(fo.SESSION_CREATE)
            if fault is not None and fault.errcode is not None:
                return fault.errcode
        acc = self._names.get(agent)  # account(), without the call once the agent is known
        res = model.create_session(self.account(agent) if acc is None else acc, openid, now)
        log = model.create_log
        if len(log) > _CREATE_LOG_KEEP:
            del log[: len(log) - _CREATE_LOG_KEEP // 2]
        code = res.get("errcode", 0)
        return code if type(code) is int else int(code)

    def close(self, agent: str, openid: str, now: float) -> int:
        # Through the API path even when the agent closes in their client: the two differ only in the
        # kf_close_session push, which the replay turns into SessionClosed itself (no push objects).
        acc = self._names.get(agent)
        res = self.model.close_session(self.account(agent) if acc is None else acc, openid, now, via="api")
        code = res.get("errcode", 0)
        return code if type(code) is int else int(code)

    def transfer(self, openid: str, now: float) -> None:
        """The customer joins WeChat's wait list (the reply ``transfer_customer_service``)."""
        self.model.transfer(openid, now)

    def leave(self, openid: str) -> None:
        """The customer stops waiting (gave up)."""
        self.model.leave_queue(openid)
