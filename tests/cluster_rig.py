"""A cluster under test: kfrouter daemons as real subprocesses (``kfrouter run``) sharing a database of the
throw-away PostgreSQL cluster, one fake WeChat in this process serving every account — its API on one
port per daemon (``create_log`` tells who sent each create), its pushes to the daemons in turn, as a
load balancer would send them (a delivery that fails is retried at the next daemon).

Used by tests/test_cluster.py and bench/bench_cluster.py. The customers and the agents are driven
through the fake's model directly (no control-API round trips): a customer writes "human please"; an
agent closes a session ``hold_s`` after it began. Nothing here sleeps to hope: waits are on conditions
(the fake's model, the lease table) with bounded timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from aiohttp import web

from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat
from kfrouter.sim.wechat_model import WeChatModel

CB_TOKEN = "kfrClusterToken7"
ADMIN_TOKEN = "cluster-admin-token-0123456789"
SECRET = "cluster-secret"
CAPACITY = 3
AGENTS_PER_ACCOUNT = 4


def appids(n: int) -> list[str]:
    return [f"wxclust{i:03d}" for i in range(n)]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot render {v!r} as TOML")


def config_text(
    *,
    accounts: list[str],
    api_base: str,
    port: int,
    store_url: str,
    daemon_id: str,
    lease_s: float,
    renew_every_s: float,
) -> str:
    """One daemon's kfrouter.toml: every account, [cluster], the shared database."""
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f"admin_token = {toml_value(ADMIN_TOKEN)}",
        "",
        "[store]",
        f"url = {toml_value(store_url)}",
        "",
        "[cluster]",
        f"daemon_id = {toml_value(daemon_id)}",
        f"lease_s = {lease_s!r}",
        f"renew_every_s = {renew_every_s!r}",
        "",
        "[log]",
        'level = "info"',
        "",
        "[defaults]",
        f"engine = {toml_value({'default_capacity': CAPACITY})}",
        "routing = " + toml_value({"mode": "keywords", "keywords": ["human"], "default_group": "general"}),
        "polling = "
        + toml_value(
            {
                "online_fast_s": 2.0,
                "online_slow_s": 5.0,
                "waitcase_fast_s": 2.0,
                "waitcase_slow_s": 5.0,
                "max_backoff_s": 5.0,
                "jitter": 0.0,
            }
        ),
        f"notify = {toml_value({'enabled': False})}",
        "",
    ]
    for appid in accounts:
        agents = [f"{appid[-3:]}a{j}@test" for j in range(AGENTS_PER_ACCOUNT)]
        lines += [
            "[[accounts]]",
            "wechat = "
            + toml_value(
                {
                    "appid": appid,
                    "secret": SECRET,
                    "token": CB_TOKEN,
                    "api_base": api_base,
                    "encoding": "plain",
                }
            ),
            f"groups = {toml_value([{'name': 'general', 'agents': agents}])}",
            "",
        ]
    return "\n".join(lines)


class LeaseSeen(NamedTuple):
    """A lease row: ``granted_at`` is when it was granted or last renewed (the database's clock)."""

    owner: str
    epoch: int
    live: bool
    granted_at: float


class Daemon:
    """One ``kfrouter run`` subprocess."""

    def __init__(self, name: str, port: int, api_port: int, config: Path, log: Path) -> None:
        self.name = name
        self.port = port
        self.api_port = api_port  # the fake's port this daemon calls: its creates are logged with it
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.returncode is None, f"{self.name} is not running"
        self.proc.send_signal(sig)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class ClusterRig:
    """See the module docstring. ``async with ClusterRig(...) as rig:`` starts the fake, then the
    daemons; everything is stopped at the end (daemons killed, the fake closed)."""

    def __init__(
        self,
        workdir: Path,
        store_url: str,
        *,
        daemons: int,
        accounts: int,
        lease_s: float,
        renew_every_s: float,
        hold_s: tuple[float, float] = (1.0, 3.0),
        seed: int = 17,
    ) -> None:
        self.workdir = workdir
        self.store_url = store_url
        self.accounts = appids(accounts)
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self.hold_s = hold_s
        self.rng = random.Random(seed)
        ports = free_ports(daemons)
        self.daemons = [
            Daemon(f"d{i}", ports[i], 0, workdir / f"d{i}.toml", workdir / f"d{i}.log")
            for i in range(daemons)
        ]
        self.fake = FakeWeChat(
            self.accounts[0],
            SECRET,
            webhook=[f"{d.url}/wechat/{{appid}}" for d in self.daemons],
            token=CB_TOKEN,
            # WeChat's own deadline for an answer (5 s; a shorter one failed pushes a busy machine answered
            # in time for WeChat); twice its tries, spread over the daemons as a load balancer would
            options=FakeOptions(delivery_attempts=6, webhook_timeout_s=5.0),
        )
        for appid in self.accounts[1:]:
            self.fake.add_app(appid, SECRET)
        self.fake.pusher.max_log = 200_000
        self._runner: web.AppRunner | None = None
        self._agents_task: asyncio.Task[None] | None = None
        self.customers: dict[str, str] = {}  # openid -> appid
        self.push_answer_s: list[float] = []

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ClusterRig:
        self._runner = web.AppRunner(self.fake.app, access_log=None)
        await self._runner.setup()
        for d in self.daemons:
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            d.api_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.fake.base_url = f"http://127.0.0.1:{self.daemons[0].api_port}"
        for model in self.fake.models.values():
            suffix = model.appid[-3:]
            for j in range(AGENTS_PER_ACCOUNT):
                model.set_agent(
                    f"{suffix}a{j}@test", self.fake.clock.now(), status=1, bound=True, auto_accept=CAPACITY
                )
        for d in self.daemons:
            d.config.write_text(
                config_text(
                    accounts=self.accounts,
                    api_base=f"http://127.0.0.1:{d.api_port}",
                    port=d.port,
                    store_url=self.store_url,
                    daemon_id=d.name,
                    lease_s=self.lease_s,
                    renew_every_s=self.renew_every_s,
                )
            )
        await asyncio.gather(*(self.start(d) for d in self.daemons))
        self._agents_task = asyncio.get_running_loop().create_task(self._agents())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._agents_task is not None:
            self._agents_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._agents_task
        for d in self.daemons:
            if d.running:
                with contextlib.suppress(ProcessLookupError):
                    d.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                    d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            if d.proc is not None:
                with contextlib.suppress(Exception):
                    await d.proc.wait()
        self.save_fake_log()
        await self.fake.pusher.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def save_fake_log(self) -> None:
        """Write what the fake saw to ``fake.json`` in the workdir, next to the daemons' logs (kept with
        ``KFR_CLUSTER_LOGS``): every create with its port and the agent's sessions, every delivery."""
        daemons = {d.api_port: d.name for d in self.daemons}
        creates = [{**c, "daemon": daemons.get(c.get("port"))} for c in self.creates()]
        deliveries = [{k: v for k, v in d.items() if k != "raw"} for d in self.deliveries()]
        with contextlib.suppress(OSError, TypeError, ValueError):
            (self.workdir / "fake.json").write_text(
                json.dumps({"creates": creates, "deliveries": deliveries}, default=repr)
            )

    async def start(self, d: Daemon, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KFROUTER_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(d.log, "ab") as log:
            d.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kfrouter.router.cli",
                "run",
                "--config",
                str(d.config),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=str(self.workdir),
            )
        assert d.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await d.proc.stdout.readline()).decode()
                    if not line:
                        await d.proc.wait()
                        raise AssertionError(
                            f"{d.name} exited ({d.proc.returncode}) before listening:\n{d.log_tail()}"
                        )
                    if line.startswith("kfrouter: listening on"):
                        break
        except TimeoutError:
            raise AssertionError(f"{d.name} did not listen within {timeout:g}s:\n{d.log_tail()}") from None
        asyncio.get_running_loop().create_task(_drain(d.proc.stdout))

    # ------------------------------------------------------------------ the world

    def customer(self, appid: str, openid: str) -> None:
        """``openid`` writes "human please" to ``appid`` (pushed to a daemon at once)."""
        model = self.fake.models[appid]
        model.customer_message(openid, self.fake.clock.now(), "human please")
        self.customers[openid] = appid
        self.fake.flush(model)

    async def arrivals(
        self,
        n: int,
        rate_per_s: float,
        *,
        prefix: str = "o",
        at: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """``n`` customers spread over the accounts in turn, ``rate_per_s`` in all (paced on the loop's
        clock); ``at(i)`` is awaited before customer ``i`` (a test's hook: kill a daemon midway)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(n):
            if at is not None:
                await at(i)
            due = start + i / rate_per_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the arrivals, not waiting for a result
            appid = self.accounts[i % len(self.accounts)]
            self.customer(appid, f"{prefix}{i:05d}_{appid[-3:]}")

    async def _agents(self) -> None:
        """Agents close each session ``hold_s`` after it began (pushes kf_close_session)."""
        due: dict[tuple[str, str], float] = {}
        while True:
            now = self.fake.clock.now()
            for model in self.fake.models.values():
                for openid, agent in list(model.sessions.items()):
                    key = (model.appid, openid)
                    if key not in due:
                        due[key] = now + self.rng.uniform(*self.hold_s)
                    elif now >= due[key]:
                        model.close_session(agent.kf_account, openid, now, via="agent")
                        del due[key]
                self.fake.flush(model)
            await asyncio.sleep(0.05)  # the agents' pace

    # ------------------------------------------------------------------ what happened

    def creates(self) -> list[dict[str, Any]]:
        """Every kfsession/create of every account, with ``appid``."""
        return [{**c, "appid": m.appid} for m in self.fake.models.values() for c in m.create_log]

    def served(self) -> dict[tuple[str, str], int]:
        """(appid, openid) -> successful creates, for the customers of this rig."""
        out: dict[tuple[str, str], int] = {}
        for c in self.creates():
            if c["errcode"] == 0 and c["openid"] in self.customers:
                key = (c["appid"], c["openid"])
                out[key] = out.get(key, 0) + 1
        return out

    def everyone_served(self) -> bool:
        return len(self.served()) == len(self.customers)

    def unserved(self) -> list[tuple[str, str]]:
        """(appid, openid) of the customers no successful create reached yet."""
        served = self.served()
        return sorted((a, o) for o, a in self.customers.items() if (a, o) not in served)

    def explain(self, limit: int = 5) -> str:
        """What happened to the first customers not served (for a failure's message)."""
        lines = []
        for appid, openid in self.unserved()[:limit]:
            model = self.fake.models[appid]
            pushes = [
                (d.get("attempt"), d.get("outcome"), d.get("url", "")[-30:], d["push"].get("event") or "msg")
                for d in self.fake.pusher.log
                if d.get("openid") == openid
            ]
            creates = [c for c in model.create_log if c["openid"] == openid]
            lines.append(
                f"{appid} {openid}: waiting at WeChat {openid in model.waiting}, session "
                f"{model.sessions.get(openid).kf_account if openid in model.sessions else None}, "
                f"creates {creates}, deliveries {pushes}"
            )
        with psycopg.connect(self.store_url, autocommit=True) as c:
            waiting = c.execute(
                "SELECT appid, dedup_key, received_by FROM kfrouter.shared_pushes ORDER BY id LIMIT 20"
            ).fetchall()
        return (
            f"{len(self.unserved())} not served; deliveries failed {self.fake.pusher.failures}; "
            f"shared inbox {waiting}; leases {self.leases()}\n" + "\n".join(lines)
        )

    def leases(self) -> dict[str, tuple[str, int, bool]]:
        """appid -> (owner, epoch, live), read from the database."""
        return {a: (r.owner, r.epoch, r.live) for a, r in self.lease_rows().items()}

    def lease_rows(self) -> dict[str, LeaseSeen]:
        """appid -> its lease row as the database has it now."""
        with psycopg.connect(self.store_url, autocommit=True) as c:
            rows = c.execute(
                "SELECT appid, owner, epoch, expires_at > kfrouter.db_now(), granted_at FROM kfrouter.leases"
            ).fetchall()
        return {r[0]: LeaseSeen(r[1], int(r[2]), bool(r[3]), float(r[4])) for r in rows}

    def owners_by_daemon(self) -> dict[str, list[str]]:
        """daemon name -> appids whose live lease it holds (owner ids start with the daemon id)."""
        out: dict[str, list[str]] = {d.name: [] for d in self.daemons}
        for appid, (owner, _epoch, live) in self.leases().items():
            name = owner.split(":", 1)[0]
            if live and name in out:
                out[name].append(appid)
        return out

    def deliveries(self) -> list[dict[str, Any]]:
        return list(self.fake.pusher.log)


async def until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    every: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last value {value!r}{more}"
            )
        await asyncio.sleep(every)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, below the ephemeral range (see tests/conftest.py free_port)."""
    import socket

    rng = random.Random()
    out: list[int] = []
    while len(out) < n:
        port = rng.randint(10000, 30000)
        if port in out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
    return out


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.readline():
            pass


def agents_over_capacity(creates: Iterable[dict[str, Any]], capacity: int = CAPACITY) -> list[dict[str, Any]]:
    return [c for c in creates if c.get("agent_sessions", 0) > capacity]


def model_of(rig: ClusterRig, appid: str) -> WeChatModel:
    return rig.fake.models[appid]
