"""``kfrouter demo``: the real daemon against an in-process fake WeChat, with synthetic agents and customers.

Nothing leaves 127.0.0.1 and no credentials are needed. What runs:

- the fake WeChat (``sim.fake_server.running_fake``) in safe mode: every push to the daemon is signed and
  AES-encrypted with a key made up for this run;
- the daemon (``Host``) with a config built here (two groups, keyword rules, SQLite in a temporary directory);
- agents made online in the fake through its control API (``auto_accept`` = their capacity);
- customers arriving as a Poisson process (seeded), writing texts whose keywords route them to ``sales``
  or ``support``; some come back later (the ``support`` group's policy is ``sticky``, so a returning
  customer goes back to the agent who served them if that agent is free); a customer who waits longer than
  their patience writes ``cancel``; agents close sessions after an exponential service time.

Every assignment is printed as it happens (from the daemon's ``assigned`` listener) and the run ends with
a summary. ``run_demo(options, out, stop)`` returns the :class:`DemoSummary`; setting ``stop`` ends the run
early (Ctrl-C in ``kfrouter demo``) with the summary all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import string
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from attrs import define, field, frozen

from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.core.facts import Assigned
from kfrouter.router.daemon import AccountRunner, DaemonOptions
from kfrouter.router.host import Host
from kfrouter.router.observe import Observation, Stepped
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import running_fake

DEMO_ADMIN_TOKEN = "kfrouter-demo-admin-token"  # a fixed, public value: the demo only listens on 127.0.0.1
APPID = "wxdemo0000000001"
WXID = "demo"
CALLBACK_TOKEN = "kfrouterDemo"
GROUPS = ("sales", "support")
CAPACITY = 2
_NAMES = (
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "oscar",
)
_TEXTS: Mapping[str, tuple[str, ...]] = {
    "sales": (
        "Hi, what is the price of the pro plan?",
        "I want to buy 3 licences",
        "想购买年度会员，价格多少？",
        "Do you have a discount if I buy today?",
    ),
    "support": (
        "My order arrived broken, help",
        "I need a refund for order 1234",
        "申请退款，商品有问题",
        "The app crashes when I log in, help please",
    ),
}
_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "sales": ("price", "buy", "购买", "价格"),
    "support": ("broken", "refund", "help", "退款"),
}
_ARRIVAL_SHARE = 0.7  # customers arrive during the first 70% of the run; the rest lets the queue drain
_LOAD = 0.8  # default arrival rate: this share of what the agents can serve


class DemoError(Exception):
    """The demo could not start (a bad option, a port in use, the daemon failed)."""


def _positive(_inst: object, attr: Any, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DemoError(
            f"--{attr.name.removesuffix('_s').replace('_', '-')} must be a number > 0, got {value!r}"
        )


def _agents_count(_inst: object, _attr: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 50:
        raise DemoError(f"--agents must be an integer 2..50 (at least one per group), got {value!r}")


def _customers_count(_inst: object, _attr: Any, value: int | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000
    ):
        raise DemoError(f"--customers must be an integer 1..10000, got {value!r}")


def _port(_inst: object, _attr: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise DemoError(f"--port must be an integer 0..65535, got {value!r}")


@frozen(kw_only=True)
class DemoOptions:
    """What ``kfrouter demo`` takes. Times are wall-clock seconds; ``speed`` makes customers arrive,
    agents work and patience run out that many times faster (the daemon itself is not sped up)."""

    duration_s: float = field(default=35.0, validator=_positive)
    agents: int = field(default=4, validator=_agents_count)
    customers: int | None = field(default=None, validator=_customers_count)  # None: ~80% load
    seed: int | None = None
    port: int = field(default=0, validator=_port)
    speed: float = field(default=1.0, validator=_positive)
    service_mean_s: float = field(default=8.0, validator=_positive)
    patience_mean_s: float = field(default=25.0, validator=_positive)
    returning: float = 0.25  # chance that an arrival is a customer who came before (if one is free)


@frozen
class DemoAgent:
    kf_account: str
    nickname: str
    groups: tuple[str, ...]


@define
class Visit:
    """One request for a human by one customer."""

    openid: str
    group: str
    text: str
    returning: bool
    arrived: float  # seconds since the start
    last_agent: str | None = None  # who served this customer on a previous visit
    agent: str | None = None
    assigned: float | None = None
    ended: float | None = None
    gave_up: float | None = None

    @property
    def wait_s(self) -> float | None:
        return None if self.assigned is None else self.assigned - self.arrived


@define
class DemoSummary:
    """What happened: every visit, every assignment (in order) and the agents."""

    options: DemoOptions
    seed: int
    agents: list[DemoAgent]
    visits: list[Visit] = field(factory=list)
    assignments: list[tuple[float, str, str, str]] = field(factory=list)  # (t, openid, group, kf_account)
    max_load: dict[str, int] = field(factory=dict)
    load_at_end: dict[str, int] = field(factory=dict)
    elapsed_s: float = 0.0
    interrupted: bool = False
    webhook: str = ""
    supervisor: str | None = None

    @property
    def served(self) -> list[Visit]:
        return [v for v in self.visits if v.assigned is not None]

    @property
    def waiting(self) -> list[Visit]:
        return [v for v in self.visits if v.assigned is None and v.gave_up is None]

    @property
    def abandoned(self) -> list[Visit]:
        return [v for v in self.visits if v.assigned is None and v.gave_up is not None]

    @property
    def wrong_group(self) -> list[tuple[float, str, str, str]]:
        groups = {a.kf_account: a.groups for a in self.agents}
        return [a for a in self.assignments if a[2] not in groups.get(a[3], ())]

    def waits(self) -> list[float]:
        return sorted(v.wait_s for v in self.served if v.wait_s is not None)


def demo_agents(n: int) -> list[DemoAgent]:
    """``n`` agents: alternately sales and support; every fifth serves both groups."""
    out = []
    for i in range(n):
        name = _NAMES[i] if i < len(_NAMES) else f"agent{i + 1}"
        groups = GROUPS if i % 5 == 4 else (GROUPS[i % 2],)
        out.append(DemoAgent(f"{name}@{WXID}", name.capitalize(), groups))
    return out


def demo_config(agents: list[DemoAgent], *, api_base: str, aes_key: str, store: Path, port: int) -> Config:
    """The daemon's configuration for the demo (the same checks as a kfrouter.toml)."""
    data: dict[str, Any] = {
        "wechat": {
            "appid": APPID,
            "secret": "demo-app-secret",
            "token": CALLBACK_TOKEN,
            "aes_key": aes_key,
            "encoding": "safe",
            "api_base": api_base,
        },
        "server": {"admin_token": DEMO_ADMIN_TOKEN, "host": "127.0.0.1", "port": port},
        "engine": {"default_capacity": CAPACITY, "reservation_timeout_s": 15.0, "avoid_s": 20.0},
        "groups": [
            {
                "name": g,
                "agents": [a.kf_account for a in agents if g in a.groups],
                "policy": "least-load" if g == "sales" else "sticky",
            }
            for g in GROUPS
        ],
        "routing": {
            "mode": "always",
            "default_group": "support",
            "rules": [{"keywords": list(_KEYWORDS[g]), "group": g} for g in GROUPS],
        },
        "polling": {
            "online_fast_s": 1.0,
            "online_slow_s": 2.0,
            "waitcase_fast_s": 2.0,
            "waitcase_slow_s": 5.0,
            "max_backoff_s": 10.0,
            "jitter": 0.0,
        },
        "notify": {"enabled": False},
        "store": {"path": str(store)},
        "log": {"level": "warning"},
    }
    return Config.from_dict(data, source="<kfrouter demo>", env={})


def arrivals(options: DemoOptions, rng: random.Random, n_agents: int) -> list[tuple[float, str, str]]:
    """(time, group, text) of each new request, in order: a Poisson process over the arrival window."""
    window = options.duration_s * _ARRIVAL_SHARE
    times: list[float] = []
    if options.customers is not None:
        times = sorted(rng.uniform(0.0, window) for _ in range(options.customers))  # Poisson, given the count
    else:
        rate = _LOAD * n_agents * CAPACITY * options.speed / options.service_mean_s
        t = rng.expovariate(rate)
        while t < window:
            times.append(t)
            t += rng.expovariate(rate)
    out = []
    for i, t in enumerate(times):
        group = GROUPS[i] if i < len(GROUPS) else rng.choice(GROUPS)  # both groups show up early
        out.append((t, group, rng.choice(_TEXTS[group])))
    return out


def _aes_key(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(43))


def _secs(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.2f}s" if s < 1 else f"{s:.1f}s"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    k = max(0, math.ceil(q * len(values)) - 1)
    return values[k]


class _Run:
    """One demo run: the fake's control API, the customers, the printing."""

    def __init__(self, options: DemoOptions, summary: DemoSummary, out: TextIO, rng: random.Random) -> None:
        self.options = options
        self.summary = summary
        self.out = out
        self.rng = rng
        self.t0 = time.monotonic()
        self.http: aiohttp.ClientSession | None = None
        self.base_url = ""
        self.daemon: AccountRunner | None = None
        self.active: dict[str, Visit] = {}  # openid -> the visit in progress
        self.assigned: dict[str, asyncio.Event] = {}
        self.history: dict[str, str] = {}  # openid -> last agent
        self.free_returners: list[str] = []  # customers done with their last visit
        self.lines = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def control(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        assert self.http is not None
        async with self.http.post(f"{self.base_url}/_fake/{name}", json=dict(body)) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise DemoError(f"fake WeChat /_fake/{name}: HTTP {resp.status}: {data.get('error')}")
            return data

    # ---------------------------------------------------------------- the daemon's observer

    def on_daemon(self, observation: Observation, now: float) -> None:
        """The daemon's observer: a session starts — the customer's visit gets its agent."""
        if not isinstance(observation, Stepped):
            return
        for fact in observation.facts:
            if isinstance(fact, Assigned) and fact.previous is None:
                self._assigned(fact.openid, fact.kf_account)

    def _assigned(self, openid: str, kf: str) -> None:
        visit = self.active.get(openid)
        if self.daemon is not None:
            view = self.daemon.engine.agent(kf)
            if view is not None:
                self.summary.max_load[kf] = max(self.summary.max_load.get(kf, 0), view.load)
        if visit is None or visit.agent is not None:
            return
        t = self.now()
        visit.agent = kf
        self.summary.assignments.append((t, openid, visit.group, kf))
        if visit.gave_up is None:  # (else: picked up just as they gave up; the agent closes at once)
            visit.assigned = t
            self._print_assignment(visit)
        ev = self.assigned.get(openid)
        if ev is not None:
            ev.set()

    def _print_assignment(self, v: Visit) -> None:
        if self.lines == 0:
            self.say(f"{'time':>7}  {'customer':<26} {'group':<8} {'agent':<14} wait")
        self.lines += 1
        who = v.openid + (" (back)" if v.returning else "")
        note = ""
        if v.returning and v.last_agent is not None:
            note = (
                "  same agent as last time" if v.last_agent == v.agent else f"  (last time: {v.last_agent})"
            )
        self.say(f"{v.assigned:6.1f}s  {who:<26} {v.group:<8} {v.agent:<14} {_secs(v.wait_s):>5}{note}")

    # ---------------------------------------------------------------- customers

    async def customer(self, at: float, group: str, text: str, number: int) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))
        rng = self.rng
        openid = f"demo-customer-{number:03d}"
        returning = False
        if self.free_returners and rng.random() < self.options.returning:
            openid = self.free_returners.pop(rng.randrange(len(self.free_returners)))
            returning = True
            previous = next(v for v in reversed(self.summary.visits) if v.openid == openid)
            group = previous.group
            text = rng.choice(_TEXTS[group])
        visit = Visit(openid, group, text, returning, self.now(), last_agent=self.history.get(openid))
        self.summary.visits.append(visit)
        self.active[openid] = visit
        event = self.assigned[openid] = asyncio.Event()
        patience = rng.expovariate(1.0 / self.options.patience_mean_s) / self.options.speed
        service = rng.expovariate(1.0 / self.options.service_mean_s) / self.options.speed
        await self.control("customer/message", {"openid": openid, "text": text})
        try:
            await asyncio.wait_for(event.wait(), patience)
        except TimeoutError:
            visit.gave_up = self.now()
            self.say(
                f"{visit.gave_up:6.1f}s  {openid:<26} {group:<8} gave up after {patience:.1f}s (wrote 'cancel')"
            )
            await self.control("customer/message", {"openid": openid, "text": "cancel"})
            # an agent may have picked them up at that very moment: that session ends at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 5.0)
            if visit.agent is None:
                self._done(visit)
                return
            service = 0.5
        await asyncio.sleep(service)
        await self.control("session/close", {"openid": openid})  # the agent closes it in their client
        visit.ended = self.now()
        if visit.agent is not None:
            self.history[openid] = visit.agent
        self._done(visit)

    def _done(self, visit: Visit) -> None:
        if self.active.get(visit.openid) is visit:
            del self.active[visit.openid]
        self.free_returners.append(visit.openid)


async def run_demo(
    options: DemoOptions | None = None, out: TextIO | None = None, stop: asyncio.Event | None = None
) -> DemoSummary:
    """Run the demo; print as it goes to ``out`` (default stdout); return the summary (also printed)."""
    options = options or DemoOptions()
    out = out if out is not None else sys.stdout
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1_000_000)
    rng = random.Random(seed)
    agents = demo_agents(options.agents)
    summary = DemoSummary(options=options, seed=seed, agents=agents)
    script = arrivals(options, rng, len(agents))
    aes_key = _aes_key(rng)
    stop = stop if stop is not None else asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="kfrouter-demo-") as tmp:
        async with (
            running_fake(
                APPID,
                "demo-app-secret",
                token=CALLBACK_TOKEN,
                aes_key=aes_key,
                options=FakeOptions(),
                seed=seed,
                wxid=WXID,
            ) as fake,
            aiohttp.ClientSession() as http,
        ):
            run = _Run(options, summary, out, rng)
            run.http = http
            run.base_url = fake.base_url
            await run.control(
                "agents",
                {
                    "agents": [
                        {
                            "kf_account": a.kf_account,
                            "nickname": a.nickname,
                            "online": True,
                            "auto_accept": CAPACITY,
                        }
                        for a in agents
                    ]
                },
            )
            config = demo_config(
                agents,
                api_base=fake.base_url,
                aes_key=aes_key,
                store=Path(tmp) / "kfrouter.db",
                port=options.port,
            )
            daemon = build_daemon(
                config, options=DaemonOptions(seed=seed, create_timeout_s=5.0, api_timeout_s=5.0)
            )
            assert isinstance(daemon, Host)  # the demo is an Official Account
            run.daemon = daemon.runner
            daemon.runner.observers.append(run.on_daemon)
            task = asyncio.create_task(daemon.run(), name="kfrouter-demo-daemon")
            try:
                await _until(daemon.listening, task, "the daemon did not start listening")
                base = f"http://127.0.0.1:{daemon.port}"
                summary.webhook = base + config.oa.callback_path
                fake.pusher.webhook = summary.webhook
                await _until(daemon.started, task, "the daemon did not finish starting")
                if any(r.canonical == "/supervisor" for r in daemon.app.router.resources()):
                    summary.supervisor = f"{base}/supervisor?token={DEMO_ADMIN_TOKEN}"
                _intro(run, summary, fake.base_url, base, len(script))
                run.t0 = time.monotonic()
                customers = [
                    asyncio.create_task(run.customer(t, g, text, i + 1), name=f"demo-customer-{i + 1}")
                    for i, (t, g, text) in enumerate(script)
                ]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), options.duration_s)
                summary.interrupted = stop.is_set()
                summary.elapsed_s = run.now()
                for c in customers:
                    c.cancel()
                results = await asyncio.gather(*customers, return_exceptions=True)
                for r in results:
                    if isinstance(r, Exception):
                        run.say(f"(a customer script failed: {r})")
                summary.load_at_end = {v.kf_account: v.load for v in daemon.runner.engine.agents()}
            finally:
                daemon.stop()
                try:
                    await asyncio.wait_for(task, 20)
                except Exception as exc:  # the daemon failed: say so, the summary still follows
                    run.say(f"(the daemon stopped with an error: {exc!r})")
    _print_summary(summary, out)
    return summary


async def _until(event: asyncio.Event, task: asyncio.Task[None], what: str, timeout: float = 30.0) -> None:
    waiter = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return
    waiter.cancel()
    if task in done:
        exc = task.exception()
        raise DemoError(f"{what}: {exc!r}" if exc else what)
    raise DemoError(f"{what} within {timeout:g}s")


def _intro(run: _Run, s: DemoSummary, fake_url: str, base: str, n: int) -> None:
    o = s.options
    run.say(
        f"kfrouter demo: seed {s.seed}, {o.duration_s:g}s, speed {o.speed:g} (replay with --seed {s.seed})"
    )
    run.say(f"  fake WeChat  {fake_url}  (pushes signed and AES-encrypted: safe mode)")
    run.say(f"  daemon       {s.webhook}  (SQLite in a temporary directory)")
    run.say(f"  admin API    kfrouter agents list --url {base} --admin-token {DEMO_ADMIN_TOKEN}")
    if s.supervisor is not None:
        run.say(f"  supervisor   {s.supervisor}")
    for g in GROUPS:
        names = ", ".join(a.kf_account for a in s.agents if g in a.groups)
        words = ", ".join(_KEYWORDS[g][:2])
        run.say(f"  group {g:<8} agents {names}  (texts with {words}, …; capacity {CAPACITY} each)")
    rate = "" if o.customers is not None else " (about 80% of what the agents can serve)"
    run.say(f"  {n} customers will arrive over {o.duration_s * _ARRIVAL_SHARE:.0f}s{rate}; Ctrl-C ends early")
    run.say("")


def _print_summary(s: DemoSummary, out: TextIO) -> None:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    served, waiting, gone = s.served, s.waiting, s.abandoned
    in_session = [v for v in served if v.ended is None]
    waits = s.waits()
    say("")
    say(f"summary{' (interrupted)' if s.interrupted else ''}: {s.elapsed_s:.1f}s, seed {s.seed}")
    people = len({v.openid for v in s.visits})
    say(
        f"  customers  {len(s.visits)} requests from {people} customers: {len(served)} served "
        f"({len(in_session)} still in a session), {len(waiting)} waiting, {len(gone)} abandoned"
    )
    if waits:
        mean = sum(waits) / len(waits)
        say(f"  wait       mean {_secs(mean)}, p90 {_secs(_pct(waits, 0.9))}, max {_secs(waits[-1])}")
    else:
        say("  wait       nobody was served")
    per_group = {g: sum(1 for v in served if v.group == g) for g in GROUPS}
    wrong = s.wrong_group
    check = (
        "every customer went to an agent of their group" if not wrong else f"{len(wrong)} outside their group"
    )
    say("  groups     " + ", ".join(f"{g} {n} served" for g, n in per_group.items()) + f"; {check}")
    back = [v for v in served if v.returning and v.last_agent is not None]
    if back:
        same = sum(1 for v in back if v.agent == v.last_agent)
        say(f"  returning  {len(back)} served again, {same} by the same agent as before")
    say(f"  {'agent':<14} {'groups':<15} {'sessions':>8}  {'max load':>8}  {'load now':>8}")
    for a in s.agents:
        n = sum(1 for x in s.assignments if x[3] == a.kf_account)
        say(
            f"  {a.kf_account:<14} {','.join(a.groups):<15} {n:>8}  "
            f"{s.max_load.get(a.kf_account, 0):>6}/{CAPACITY}  {s.load_at_end.get(a.kf_account, 0):>8}"
        )
