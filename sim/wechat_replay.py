"""The replay's view of WeChat: a thin adapter over ``sim.wechat_model.WeChatModel`` (the same model the
fake HTTP server wraps) that answers the simulator's creates and closes with bare errcodes.

The replay calls the model's bare-result cores (``create_errcode``, ``close_errcode``,
``transfer_result``, ``leave_result``: the rules the fake server's JSON answers wrap), so nothing is
built per call. Agents of any name shape get a model account; replay options switch off push objects
and random ``rid`` values in errmsg; failures are injected through the model's fault rules; the model
keeps no history (create log, message records), which nothing in a replay reads, and no set of every
openid it has seen: the replay names only customers it put on the wait list, so WeChat's check for
unknown openids (``check_openid``, 40003) could never fail and is off, and memory does not grow with
every customer of a long trace.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kfrouter.sim import fake_options as fo
from kfrouter.sim.wechat_model import WeChatModel

_MODEL_WXID = "sim"


class ReplayWeChat:
    """Thin adapter over ``WeChatModel``: agent names of any shape, replay options (no push objects, no
    random ``rid`` in errmsg), failure injection through the model's fault rules, no model history.

    ``create(agent, openid, now) -> errcode``, ``close(agent, openid, now) -> errcode``,
    ``transfer(openid, now)`` and ``leave(openid)`` are bound per instance: straight to the model's
    cores while agent names need no mapping and no failures are injected (one Python call less on the
    replay's hottest path), else to the adapting methods below. ``set_agent`` rebinds them."""

    create: Callable[[str, str, float], int]
    close: Callable[[str, str, float], int]
    transfer: Callable[[str, float], object]  # the customer joins WeChat's wait list (reply transfer_...)
    leave: Callable[[str], object]  # the customer stops waiting (gave up)

    def __init__(self, rng: random.Random, failure_rate: float = 0.0, failure_errcode: int = -1) -> None:
        opts = fo.FakeOptions(
            push_events_on_api_actions=False, errmsg_rid=False, forward_idle_s=None, check_openid=False
        )
        self.model = WeChatModel(
            "wxsimulator",
            "simulator-secret",
            wxid=_MODEL_WXID,
            options=opts,
            rng=rng,
            history=False,
            remember_openids=False,
        )
        self._fault: fo.Fault | None = None
        if failure_rate > 0:
            self._fault = fo.Fault(errcode=failure_errcode, rate=failure_rate)
            self.model.set_fault(fo.SESSION_CREATE, self._fault)
        self._names: dict[str, str] = {}  # agent name -> model account
        self._accounts: set[str] = set()  # the model accounts given so far
        self._mapped = False  # some agent name is not its own model account
        self.transfer = self.model.transfer_result
        self.leave = self.model.leave_result
        self._bind()

    def _bind(self) -> None:
        # Closes go through the API path even when the agent closes in their client: the two differ only
        # in the kf_close_session push, which the replay turns into SessionClosed itself (no push objects).
        model = self.model
        self.create = self._create if self._mapped or self._fault is not None else model.create_errcode
        self.close = self._close if self._mapped else model.close_errcode

    def account(self, agent: str) -> str:
        """The model account of ``agent``: the name itself when shaped ``prefix@suffix`` and not yet
        another agent's account, else a made-up one that is nobody's. (An agent the replay never set
        answers 65401 either way.)"""
        acc = self._names.get(agent)
        if acc is None:
            parts = agent.split("@")
            if len(parts) == 2 and all(parts) and agent not in self._accounts:
                acc = agent
            else:
                n = len(self._names)
                while f"x{n}@{_MODEL_WXID}" in self._accounts:
                    n += 1
                acc = f"x{n}@{_MODEL_WXID}"
            self._names[agent] = acc
            self._accounts.add(acc)
        return acc

    def set_agent(self, agent: str, now: float, status: int, auto_accept: int) -> None:
        acc = self.account(agent)
        if acc != agent and not self._mapped:
            self._mapped = True
            self._bind()
        self.model.set_agent(acc, now, status=status, auto_accept=auto_accept)

    def _create(self, agent: str, openid: str, now: float) -> int:
        """``create`` when failures are injected or agent names are mapped."""
        model = self.model
        if self._fault is not None:
            fault = model.draw_fault(fo.SESSION_CREATE)
            if fault is not None and fault.errcode is not None:
                return fault.errcode
        acc = self._names.get(agent) if self._mapped else agent
        return model.create_errcode(self.account(agent) if acc is None else acc, openid, now)

    def _close(self, agent: str, openid: str, now: float) -> int:
        """``close`` when agent names are mapped."""
        acc = self._names.get(agent)
        return self.model.close_errcode(self.account(agent) if acc is None else acc, openid, now, "api")
