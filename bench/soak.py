"""Soak: the daemon against the fake WeChat through a long synthetic day in compressed time, with faults.

What runs (docs/reliability.md has the method and the reasons):

- the daemon in its own process (``kfrouter run``, SQLite on disk, ``synchronous=FULL``), RSS sampled
  from ``/proc`` over the whole run;
- the fake WeChat in *this* process (``bench/_harness.FakeHost``) on a fixed port, so it can be
  restarted with its state kept, and so the driver can watch every push it sends;
- customers: Poisson arrivals over ``duration_s``; each writes ``human please`` (some first write
  something that is not for kfrouter, some repeat ``human`` while waiting) and, if no agent took them
  within their patience (exponential, capped at 3x the mean), writes ``cancel`` and leaves;
- agents: online at the fake; an agent closes a session in their own client after an exponential service
  time; one agent goes offline and comes back;
- faults over time: ``kfsession/create`` answering -1, 45009, 65414, 65415, answering after the create
  timeout (the session still lands), dropped connections (also on ``getonlinekflist``), ``getwaitcase``
  failing, the fake restarting (connections cut, refused for a while, same state), the access token
  revoked by another program (``stable_token`` with ``force_refresh``) and expired (the fake's clock
  jumps past the token's lifetime — see ``TOKEN_LIFETIME_S``).

What it reports (``SoakReport``): customers served, abandoned (their cancel recorded by the daemon),
waiting, **lost** (asked for a human — the push was answered — but neither served, waiting nor recorded
as abandoned at the end, plus customers the store still lists as waiting that the engine no longer holds),
**double assignments** (a customer with more than one session, or two at once, from the pushes WeChat
sent — every customer asks exactly once), create outcomes by errcode, repeat successful creates in the
fake's create log, wait times, the daemon's peak RSS and its first vs last third, and the error lines in
its log.

Run:  python bench/soak.py [--quick] [--customers 3000] [--duration 240] [--json out.json] [--no-faults]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

from kfrouter.sim.fake_options import FakeOptions, Fault
from kfrouter.sim.fake_server import FakeWeChat
from kfrouter.sim.wechat_model import Push, WeChatModel

# The fake's token lifetime (fake seconds). The daemon refreshes half-way through it, so tokens rotate
# during a long soak; the clock jump (CLOCK_JUMP_S) is longer, so the token in use expires at once.
# Pushes carry the fake's clock as their timestamp and the daemon refuses timestamps more than 300 s
# from its own clock, so the jump must stay under 300 s (a real WeChat clock does not jump at all).
TOKEN_LIFETIME_S = 240
CLOCK_JUMP_S = 250.0


@dataclass(frozen=True)
class SoakParams:
    """Knobs of one soak run (``--quick`` is ``QUICK``)."""

    customers: int = 3000
    duration_s: float = 240.0  # arrivals are spread over this much wall time
    agents: int = 25
    capacity: int = 3
    service_mean_s: float = 5.0
    patience_mean_s: float = 30.0
    repeat_share: float = 0.1  # customers who write "human" again while waiting
    chatter_share: float = 0.1  # customers who first write something that is not for kfrouter
    create_timeout_s: float = 2.0
    api_timeout_s: float = 2.0
    restart_downtime_s: float = 3.0
    drain_max_s: float = 150.0
    # how far back "last agent" counts (engine.sticky_window_s); None: a quarter of the day, compressed like
    # the day itself (7 days at 1/360 would be half an hour: longer than any run, so nothing is forgotten)
    sticky_window_s: float | None = None
    # also kill -9 the daemon at 86 % of the day and start it again on the same port and store; WeChat's
    # push retries are then spread over a few seconds (delivery_retry_s) so they can reach the new process
    kill_daemon: bool = False
    delivery_retry_s: float = 2.0
    faults: bool = True
    encoding: str = "safe"  # or "plain"
    seed: int = 7
    rss_interval_s: float = 1.0
    workdir: str | None = None
    log_level: str = "info"


QUICK = SoakParams(
    customers=300,
    duration_s=22.0,
    agents=10,
    capacity=3,
    service_mean_s=2.0,
    patience_mean_s=8.0,
    create_timeout_s=1.0,
    api_timeout_s=1.0,
    restart_downtime_s=1.0,
    drain_max_s=30.0,
    rss_interval_s=0.5,
)


@dataclass
class Customer:
    openid: str
    arrival_s: float  # offset from the start
    patience_s: float
    chatter: bool
    repeat_after_s: float | None
    asked_at: float | None = None  # monotonic, when "human please" was sent
    sessions: list[tuple[float, str]] = field(default_factory=list)  # (monotonic start, kf_account)
    open_with: str | None = None
    overlaps: int = 0
    cancelled: bool = False
    served: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SoakReport:
    params: dict[str, Any]
    wall_s: float
    customers: int
    asked: int  # their "human" push was answered by the daemon
    unanswered: int  # their "human" push failed every delivery attempt
    served: int
    abandoned: int
    waiting_store: int
    engine_waiting: int | None
    stranded: int
    lost: int
    lost_openids: list[str]
    double_assignments: int
    double_openids: list[str]
    two_at_once: int
    repeat_creates: int  # customers with more than one successful kfsession/create (same session or not)
    served_after_cancel: int
    wait_p50_s: float
    wait_p90_s: float
    wait_max_s: float
    creates: dict[str, int]
    api_calls: dict[str, int]
    deliveries: dict[str, int]
    delivery_failures: int
    faults: list[tuple[float, str]]
    fake_restarts: int
    daemon_restarts: int
    tokens_issued: int
    daemon_exit: int | None
    daemon_log_errors: int
    daemon_log_tracebacks: int
    rss_peak_mib: float
    rss_first_third_mib: float
    rss_last_third_mib: float
    rss_growth_pct: float  # mean of the last third vs mean of the first third
    rss_last_third_growth_pct: float  # second half of the last third vs its first half
    rss_flat: bool  # the last third grows less than 2 %: RSS reached a plateau
    rss_samples: int
    rss_series_mib: list[float]  # about 30 evenly spaced samples, for a plot or a look
    workdir: str

    def ok(self) -> bool:
        return self.lost == 0 and self.double_assignments == 0 and self.two_at_once == 0

    def summary(self) -> str:
        lines = [
            f"customers {self.customers}: asked {self.asked} (unanswered pushes {self.unanswered}), "
            f"served {self.served}, abandoned {self.abandoned}, waiting {self.waiting_store}, "
            f"LOST {self.lost} (stranded {self.stranded})",
            f"double assignments {self.double_assignments} (two sessions at once {self.two_at_once}); "
            f"repeat successful creates {self.repeat_creates}; served after their cancel "
            f"{self.served_after_cancel}",
            f"wait to an agent: p50 {self.wait_p50_s:.2f} s, p90 {self.wait_p90_s:.2f} s, "
            f"max {self.wait_max_s:.2f} s",
            f"kfsession/create outcomes: {dict(sorted(self.creates.items()))}",
            f"pushes: {dict(sorted(self.deliveries.items()))}; failed deliveries {self.delivery_failures}",
            f"faults: {len(self.faults)} changes, fake restarts {self.fake_restarts}, "
            f"daemon kill -9 + restarts {self.daemon_restarts}, "
            f"tokens issued {self.tokens_issued}",
            f"daemon RSS: peak {self.rss_peak_mib} MiB, first third {self.rss_first_third_mib} MiB, "
            f"last third {self.rss_last_third_mib} MiB ({self.rss_growth_pct:+.1f} %); within the last "
            f"third {self.rss_last_third_growth_pct:+.1f} %: {'flat' if self.rss_flat else 'GROWING'} "
            f"({self.rss_samples} samples)",
            f"daemon log: {self.daemon_log_errors} ERROR lines, {self.daemon_log_tracebacks} tracebacks; "
            f"exit code on SIGTERM {self.daemon_exit}; wall {self.wall_s:.0f} s",
        ]
        return "\n".join(lines)


Action = Callable[[], Awaitable[None]]


class Soak:
    """One run: see the module docstring. ``run()`` returns the ``SoakReport``."""

    def __init__(self, params: SoakParams) -> None:
        self.p = params
        self.rng = random.Random(params.seed)
        self.workdir = Path(params.workdir or tempfile.mkdtemp(prefix="kfr-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.daemon_port = _free_port()
        self.fake_port = _free_port()
        self.customers: dict[str, Customer] = {}
        self.fault_log: list[tuple[float, str]] = []
        self.t0 = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.fake: FakeWeChat | None = None
        self.host: h.FakeHost | None = None
        self.daemon: h.Child | None = None
        self.daemon_restarts = 0
        self.samplers: list[h.RssSampler] = []
        self._sampling: asyncio.Task[None] | None = None
        self._config_path = self.workdir / "kfrouter.toml"

    # ------------------------------------------------------------------ the fake, observed

    @property
    def model(self) -> WeChatModel:
        assert self.fake is not None
        return self.fake.model

    def now(self) -> float:
        assert self.fake is not None
        return self.fake.clock.now()

    def _observe(self, push: Push) -> None:
        """Every push WeChat sends, before delivery: sessions starting and ending."""
        c = self.customers.get(push.openid)
        if c is None or push.msg_type != "event":
            return
        t = time.monotonic()
        if push.event == "kf_create_session":
            if c.open_with is not None:
                c.overlaps += 1
            c.open_with = push.kf_account
            c.sessions.append((t, push.kf_account))
            c.served.set()
            service = min(self.rng.expovariate(1.0 / self.p.service_mean_s), 4 * self.p.service_mean_s)
            self._spawn(self._agent_closes(c, push.kf_account, service))
        elif push.event == "kf_close_session":
            c.open_with = None
        elif push.event == "kf_switch_session":
            c.open_with = push.to_kf_account

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _say(self, openid: str, text: str) -> None:
        assert self.fake is not None
        self.model.customer_message(openid, self.now(), text)
        self.fake.flush(self.model)

    async def _agent_closes(self, c: Customer, kf: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        assert self.fake is not None
        sess = self.model.sessions.get(c.openid)
        if sess is not None and sess.kf_account == kf:
            self.model.close_session(kf, c.openid, self.now(), via="agent")
            self.fake.flush(self.model)

    # ------------------------------------------------------------------ customers

    def _make_customers(self) -> list[Customer]:
        p = self.p
        rate = p.customers / p.duration_s
        t = 0.0
        out = []
        for i in range(p.customers):
            t += self.rng.expovariate(rate)
            patience = min(self.rng.expovariate(1.0 / p.patience_mean_s), 3 * p.patience_mean_s)
            repeat = self.rng.uniform(0.2, 0.6) * patience if self.rng.random() < p.repeat_share else None
            out.append(
                Customer(
                    openid=f"soak{i:05d}",
                    arrival_s=min(t, p.duration_s),
                    patience_s=max(0.5, patience),
                    chatter=self.rng.random() < p.chatter_share,
                    repeat_after_s=repeat,
                )
            )
        return out

    async def _customer(self, c: Customer) -> None:
        await asyncio.sleep(max(0.0, self.t0 + c.arrival_s - time.monotonic()))
        if c.chatter:
            self._say(c.openid, "what time do you open?")
        c.asked_at = time.monotonic()
        self._say(c.openid, "human please")
        deadline = c.asked_at + c.patience_s
        if c.repeat_after_s is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(c.repeat_after_s):
                    await c.served.wait()
            if not c.served.is_set():
                self._say(c.openid, "human")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await c.served.wait()
        if not c.served.is_set():
            c.cancelled = True
            self._say(c.openid, "cancel")

    # ------------------------------------------------------------------ faults

    def _timeline(self, http: aiohttp.ClientSession) -> list[tuple[float, str, Action]]:
        p = self.p
        create = "kfsession/create"

        def fault(label: str, rules: dict[str, dict[str, Any] | None]) -> tuple[str, Action]:
            async def act() -> None:
                for ep, rule in rules.items():
                    self.model.set_fault(ep, None if rule is None else Fault.from_json(rule, label))

            return label, act

        def clear() -> tuple[str, Action]:
            async def act() -> None:
                self.model.faults.clear()

            return "clear faults", act

        def agent(kf: str, online: bool) -> tuple[str, Action]:
            async def act() -> None:
                assert self.fake is not None
                self.model.set_agent(kf, self.now(), status=1 if online else 0)
                self.fake.flush(self.model)

            return f"agent {kf} {'online' if online else 'offline'}", act

        async def restart() -> None:
            assert self.host is not None
            await self.host.restart(p.restart_downtime_s)

        async def force_token() -> None:
            assert self.host is not None
            body = {
                "grant_type": "client_credential",
                "appid": h.APPID,
                "secret": h.SECRET,
                "force_refresh": True,
            }
            async with http.post(f"{self.host.base_url}/cgi-bin/stable_token", json=body) as resp:
                data = await resp.json(content_type=None)
                if "access_token" not in data:
                    raise RuntimeError(f"force_refresh refused by the fake: {data}")

        async def kill_restart() -> None:
            assert self.daemon is not None
            await self.daemon.kill()
            await self._start_daemon(http)
            self.daemon_restarts += 1

        async def clock_jump() -> None:
            assert self.fake is not None
            self.fake.clock.advance(CLOCK_JUMP_S)

        late = p.create_timeout_s + 1.0
        a0 = h.agent_names(p.agents)[0]
        steps: list[tuple[float, tuple[str, Action]]] = [
            (0.04, fault("create -1 (30 %)", {create: {"errcode": -1, "rate": 0.3}})),
            (0.12, clear()),
            (0.14, fault("create 65414 (25 %)", {create: {"errcode": 65414, "rate": 0.25}})),
            (0.22, clear()),
            (0.24, fault("create 65415 (20 %)", {create: {"errcode": 65415, "rate": 0.2}})),
            (0.30, agent(a0, False)),
            (0.32, clear()),
            (
                0.34,
                fault(f"create answers after {late:g} s (20 %)", {create: {"delay_s": late, "rate": 0.2}}),
            ),
            (0.40, agent(a0, True)),
            (0.42, clear()),
            (
                0.44,
                fault(
                    "dropped connections: create 20 %, getonlinekflist 30 %; getwaitcase -1 50 %",
                    {
                        create: {"drop_connection": True, "rate": 0.2},
                        "getonlinekflist": {"drop_connection": True, "rate": 0.3},
                        "getwaitcase": {"errcode": -1, "rate": 0.5},
                    },
                ),
            ),
            (0.52, clear()),
            # last of the create faults: its back-off pause (5 s, doubling) would hide the others
            (0.54, fault("create 45009 (10 %)", {create: {"errcode": 45009, "rate": 0.1}})),
            (0.60, clear()),
            (0.65, (f"fake WeChat restarts ({p.restart_downtime_s:g} s down)", restart)),
            (0.72, ("access token revoked (another program's force_refresh)", force_token)),
            (0.78, (f"fake clock jumps {CLOCK_JUMP_S:g} s: the token expires", clock_jump)),
            (
                0.82,
                fault(
                    "mixed: create -1 10 %, getsession -1 50 %",
                    {create: {"errcode": -1, "rate": 0.1}, "getsession": {"errcode": -1, "rate": 0.5}},
                ),
            ),
            (0.90, clear()),
        ]
        if p.kill_daemon:
            steps.append(
                (0.86, ("daemon killed (SIGKILL), started again on the same port and store", kill_restart))
            )
            steps.sort(key=lambda step: step[0])
        return [(frac * p.duration_s, label, act) for frac, (label, act) in steps]

    async def _faults(self, http: aiohttp.ClientSession) -> None:
        for at, label, act in self._timeline(http):
            await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
            await act()
            self.fault_log.append((round(time.monotonic() - self.t0, 1), label))
            print(f"  t={time.monotonic() - self.t0:6.1f}s  {label}", flush=True)

    # ------------------------------------------------------------------ run

    async def run(self) -> SoakReport:
        p = self.p
        started = time.monotonic()
        self.fake = FakeWeChat(
            h.APPID,
            h.SECRET,
            webhook=f"http://{h.HOST}:{self.daemon_port}/wechat",
            token=h.CB_TOKEN,
            aes_key=h.AES_KEY if p.encoding != "plain" else None,
            options=FakeOptions(
                token_expires_in=TOKEN_LIFETIME_S,
                retry_interval_s=p.delivery_retry_s if p.kill_daemon else 0.0,
            ),
            wxid=h.WXID,
            seed=p.seed,
        )
        pusher = self.fake.pusher
        pusher.max_log = max(pusher.max_log, 20 * p.customers)  # keep every delivery attempt for the report
        submit = pusher.submit

        def observed_submit(model: WeChatModel, push: Push) -> None:
            self._observe(push)
            submit(model, push)

        pusher.submit = observed_submit  # type: ignore[method-assign]
        self.host = h.FakeHost(self.fake, self.fake_port)
        await self.host.start()
        agents = h.agent_names(p.agents)
        for kf in agents:
            self.model.set_agent(kf, self.now(), status=1)
        config = self._config_path
        config.write_text(
            h.config_toml(
                api_base=self.host.base_url,
                store=self.workdir / "kfrouter.db",
                port=self.daemon_port,
                agents=agents,
                capacity=p.capacity,
                encoding=p.encoding,
                polling_s=1.0,
                engine={
                    "avoid_s": max(2.0, p.service_mean_s),
                    "reservation_timeout_s": 4 * p.create_timeout_s,
                    "sticky_window_s": p.sticky_window_s or p.duration_s / 4,
                },
                log_level=p.log_level,
            )
        )
        sampler: h.RssSampler | None = None
        health_end: dict[str, Any] = {}
        daemon_exit: int | None = None
        async with aiohttp.ClientSession() as http:
            try:
                await self._start_daemon(http)
                assert self.daemon is not None
                for c in self._make_customers():
                    self.customers[c.openid] = c
                self.t0 = time.monotonic()
                print(
                    f"soak: {p.customers} customers over {p.duration_s:g} s, {p.agents} agents x {p.capacity}, "
                    f"daemon pid {self.daemon.pid}, workdir {self.workdir}",
                    flush=True,
                )
                work = [asyncio.ensure_future(self._customer(c)) for c in self.customers.values()]
                if p.faults:
                    work.append(asyncio.ensure_future(self._faults(http)))
                try:
                    async with asyncio.timeout(p.duration_s + 4 * p.patience_mean_s + 30):
                        await asyncio.gather(*work)
                finally:
                    for t in work:
                        t.cancel()
                self.model.faults.clear()
                health_end = await self._drain(http)
                if self._sampling is not None:
                    self._sampling.cancel()
                self.samplers[-1].sample()
                sampler = self.samplers[0]
                daemon_exit = await self.daemon.terminate(timeout=30)
            finally:
                if self._sampling is not None:
                    self._sampling.cancel()
                for t in list(self._tasks):
                    t.cancel()
                if self.daemon is not None:
                    await self.daemon.kill()
                await self.host.close()
        return self._report(sampler, health_end, daemon_exit, time.monotonic() - started)

    async def _start_daemon(self, http: aiohttp.ClientSession) -> None:
        """Start the daemon (again: same config, port and store) and sample its RSS from now on."""
        p = self.p
        self.daemon = await h.start_daemon(
            self._config_path,
            self.workdir / "daemon.log",
            "--create-timeout",
            str(p.create_timeout_s),
            "--api-timeout",
            str(p.api_timeout_s),
        )
        running = await h.wait_for(http, self.daemon.url, lambda x: x.get("status") == "running", timeout=30)
        if running is None:
            raise RuntimeError(f"daemon not routing within 30 s:\n{self.daemon.log_tail()}")
        if self._sampling is not None:
            self._sampling.cancel()
        sampler = h.RssSampler(self.daemon.pid, p.rss_interval_s)
        self.samplers.append(sampler)
        self._sampling = asyncio.ensure_future(sampler.run())

    async def _drain(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Wait (bounded) until every session closed, every push was delivered and the daemon settled."""
        assert self.fake is not None and self.daemon is not None
        deadline = time.monotonic() + self.p.drain_max_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = await h.health(http, self.daemon.url)
            quiet = (
                not self.model.sessions
                and self.fake.pusher.pending == 0
                and h.settled(last)
                and last.get("queue") == 0
            )
            if quiet:
                return last
            await asyncio.sleep(0.2)
        print(f"  drain: not quiet after {self.p.drain_max_s:g} s: {last}", flush=True)
        return last

    # ------------------------------------------------------------------ report

    def _report(
        self,
        sampler: h.RssSampler | None,
        health_end: dict[str, Any],
        daemon_exit: int | None,
        wall_s: float,
    ) -> SoakReport:
        assert self.fake is not None
        model = self.fake.model
        # what the daemon answered: every delivery attempt of the fake's pusher
        answered: set[str] = set()
        failed_human: set[str] = set()
        outcomes: Counter[str] = Counter()
        for entry in self.fake.pusher.log:
            outcomes[entry.get("outcome", "?")] += 1
            push = entry.get("push", {})
            if push.get("msg_type") == "text" and push.get("content") in ("human please", "human"):
                if entry.get("outcome") == "handled":
                    answered.add(entry["openid"])
                elif entry.get("outcome") == "failed":
                    failed_human.add(entry["openid"])
        # the daemon's store
        store = self.workdir / "kfrouter.db"
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            waiting = {r[0] for r in db.execute("SELECT openid FROM waiting")}
            left = {
                r[0]
                for r in db.execute(
                    "SELECT openid FROM sessions WHERE outcome IS NOT NULL AND outcome != 'served'"
                )
            }
        finally:
            db.close()
        served = {o for o, c in self.customers.items() if c.sessions}
        abandoned = {o for o in left if o in self.customers and o not in served}
        still = {o for o in waiting if o in self.customers and o not in served}
        engine_waiting = (
            int(health_end["queue"]) + int(health_end["reservations"]) if "queue" in health_end else None
        )
        stranded = max(0, len(still) - (engine_waiting or 0))
        lost = sorted(answered - served - abandoned - still)
        doubles = sorted(o for o, c in self.customers.items() if len(c.sessions) > 1)
        creates: Counter[str] = Counter()
        ok_creates: Counter[str] = Counter()
        for call in model.create_log:
            creates[str(call["errcode"])] += 1
            if call["errcode"] == 0 and call["openid"]:
                ok_creates[call["openid"]] += 1
        waits = sorted(
            c.sessions[0][0] - c.asked_at for c in self.customers.values() if c.sessions and c.asked_at
        )
        first, last = sampler.thirds() if sampler else (0.0, 0.0)
        growth = (last - first) / first * 100 if first else 0.0
        plateau = _last_third_growth(sampler)
        log_text = (self.workdir / "daemon.log").read_text(errors="replace")
        return SoakReport(
            params=asdict(self.p),
            wall_s=round(wall_s, 1),
            customers=len(self.customers),
            asked=len(answered),
            unanswered=len(failed_human - answered),
            served=len(served),
            abandoned=len(abandoned),
            waiting_store=len(still),
            engine_waiting=engine_waiting,
            stranded=stranded,
            lost=len(lost) + stranded,
            lost_openids=lost[:50],
            double_assignments=len(doubles),
            double_openids=doubles[:50],
            two_at_once=sum(1 for c in self.customers.values() if c.overlaps),
            repeat_creates=sum(1 for n in ok_creates.values() if n > 1),
            served_after_cancel=sum(1 for c in self.customers.values() if c.cancelled and c.sessions),
            wait_p50_s=round(h.percentile(waits, 50), 3) if waits else math.nan,
            wait_p90_s=round(h.percentile(waits, 90), 3) if waits else math.nan,
            wait_max_s=round(waits[-1], 3) if waits else math.nan,
            creates=dict(creates),
            api_calls=dict(model.calls),
            deliveries=dict(outcomes),
            delivery_failures=self.fake.pusher.failures,
            faults=self.fault_log,
            fake_restarts=self.host.restarts if self.host else 0,
            daemon_restarts=self.daemon_restarts,
            tokens_issued=int(model.calls.get("cgi-bin/stable_token", 0)),
            daemon_exit=daemon_exit,
            daemon_log_errors=sum(1 for line in log_text.splitlines() if " ERROR " in line),
            daemon_log_tracebacks=log_text.count("Traceback (most recent call last)"),
            rss_peak_mib=h.mib(max(x.peak for x in self.samplers)) if self.samplers else 0.0,
            rss_first_third_mib=h.mib(first),
            rss_last_third_mib=h.mib(last),
            rss_growth_pct=round(growth, 1),
            rss_last_third_growth_pct=round(plateau, 1),
            rss_flat=plateau < 2.0,
            rss_samples=len(sampler.samples) if sampler else 0,
            rss_series_mib=_series(sampler),
            workdir=str(self.workdir),
        )


def _last_third_growth(sampler: h.RssSampler | None) -> float:
    """Percent growth of RSS within the last third of the samples (its second half vs its first)."""
    values = [s for _t, s in sampler.samples] if sampler else []
    last = values[-max(2, len(values) // 3) :]
    if len(last) < 2:
        return 0.0
    half = len(last) // 2
    a, b = sum(last[:half]) / half, sum(last[half:]) / (len(last) - half)
    return (b - a) / a * 100 if a else 0.0


def _series(sampler: h.RssSampler | None, points: int = 30) -> list[float]:
    if sampler is None or not sampler.samples:
        return []
    values = [s for _t, s in sampler.samples]
    step = max(1, len(values) // points)
    return [h.mib(v) for v in values[::step]]


async def run_soak(params: SoakParams) -> SoakReport:
    """Run one soak (see the module docstring) and return its report."""
    return await Soak(params).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((h.HOST, 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    d = SoakParams()
    p = argparse.ArgumentParser(description="Soak the daemon against the fake WeChat with faults.")
    p.add_argument("--quick", action="store_true", help="the small run the test uses (300 customers, ~22 s)")
    p.add_argument("--customers", type=int, help=f"customers (default {d.customers})")
    p.add_argument("--duration", type=float, help=f"seconds of arrivals (default {d.duration_s:g})")
    p.add_argument("--agents", type=int, help=f"agents (default {d.agents})")
    p.add_argument("--capacity", type=int, help=f"sessions per agent (default {d.capacity})")
    p.add_argument("--service", type=float, help=f"mean service seconds (default {d.service_mean_s:g})")
    p.add_argument("--patience", type=float, help=f"mean patience seconds (default {d.patience_mean_s:g})")
    p.add_argument("--encoding", choices=("safe", "plain"), help="push encoding (default safe)")
    p.add_argument("--no-faults", action="store_true", help="the same day without faults")
    p.add_argument(
        "--kill-daemon",
        action="store_true",
        help="also kill -9 the daemon at 86 %% of the day and restart it (RSS thirds: first process)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--workdir", help="where the store and logs go (default: a new temp dir)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--json", help="also write the report as JSON to this file")
    args = p.parse_args(argv)
    params = QUICK if args.quick else d
    changes: dict[str, Any] = {
        "customers": args.customers,
        "duration_s": args.duration,
        "agents": args.agents,
        "capacity": args.capacity,
        "service_mean_s": args.service,
        "patience_mean_s": args.patience,
        "encoding": args.encoding,
        "seed": args.seed,
        "workdir": args.workdir,
        "log_level": args.log_level,
    }
    params = replace(params, **{k: v for k, v in changes.items() if v is not None})
    if args.no_faults:
        params = replace(params, faults=False)
    if args.kill_daemon:
        params = replace(params, kill_daemon=True)
    # the fake's own server logs a traceback for every connection the faults cut: expected here
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    report = asyncio.run(run_soak(params))
    print()
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
