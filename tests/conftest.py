"""Shared fixtures: waiting on conditions, free ports, the fake WeChat's control API, kfrouter configs,
and processes (the fake WeChat and the daemon) started as real subprocesses for end-to-end tests.

Rules: no test sleeps hoping time passes — ``wait_until`` polls a condition with a bounded deadline and
fails with the last value seen; every process a test starts is killed at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CB_TOKEN = "kfrTestToken42"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ADMIN_TOKEN = "test-admin-token-0123456789"
READONLY_TOKEN = "test-readonly-token-0123456789"


# ---------------------------------------------------------------------------------------- waiting


async def wait_until(
    predicate: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value, which is returned. Fails the
    test after ``timeout`` seconds with ``message`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {message}; last value: {last!r}")
        await asyncio.sleep(interval)


@pytest.fixture
def wait() -> Callable[..., Awaitable[Any]]:
    """The ``wait_until`` helper as a fixture: ``await wait(predicate, timeout=..., message=...)``."""
    return wait_until


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1, for a process that must keep its port across restarts.

    Chosen below the kernel's ephemeral range: a port handed out by ``bind(0)`` could be taken by any
    outgoing connection on this machine (other test runs included) before the process binds it."""
    low, _high = _ephemeral_range()
    top = max(low - 1, 11000)
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(10000, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


# ---------------------------------------------------------------------------------------- fake WeChat


class FakeControl:
    """The fake WeChat's control API (``/_fake/...``) over HTTP."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http

    async def call(self, method: str, name: str, body: Mapping[str, Any] | None = None) -> Any:
        async with self.http.request(method, f"{self.base_url}/_fake/{name}", json=body) as resp:
            data = await resp.json()
            assert resp.status == 200, f"/_fake/{name}: HTTP {resp.status}: {data}"
            return data

    async def state(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("GET", "state")
        return data

    async def agents(self, *accounts: str, online: bool = True, **extra: Any) -> None:
        await self.call(
            "POST", "agents", {"agents": [{"kf_account": kf, "online": online, **extra} for kf in accounts]}
        )

    async def say(self, openid: str, text: str, *, wait: bool = True) -> dict[str, Any]:
        """The customer sends a text; with ``wait`` the fake waits until the push was answered."""
        data: dict[str, Any] = await self.call(
            "POST", "customer/message", {"openid": openid, "text": text, "wait": wait}
        )
        return data

    async def close(self, openid: str) -> dict[str, Any]:
        """The agent closes the customer's session in their own client."""
        data: dict[str, Any] = await self.call("POST", "session/close", {"openid": openid})
        return data

    async def fault(self, endpoint: str, **rule: Any) -> None:
        await self.call("POST", "faults", {"endpoint": endpoint, **rule})

    async def clear_faults(self) -> None:
        await self.call("DELETE", "faults")

    async def sessions(self) -> dict[str, str]:
        """openid -> kf_account of the sessions open at the fake."""
        return {s["openid"]: s["kf_account"] for s in (await self.state())["sessions"]}


def successful_creates(state: Mapping[str, Any]) -> dict[str, list[str]]:
    """openid -> agents of every kfsession/create that answered 0, from the fake's call log."""
    out: dict[str, list[str]] = {}
    for call in state["create_log"]:
        if call["errcode"] == 0 and call["openid"]:
            out.setdefault(call["openid"], []).append(call["kf_account"])
    return out


# ---------------------------------------------------------------------------------------- configs


def config_dict(
    *,
    api_base: str,
    store: Path | str,
    appid: str = "wx_test_app",
    secret: str = "test_secret",
    port: int = 0,
    groups: Iterable[Mapping[str, Any]] = ({"name": "general", "agents": ["a1@test", "a2@test"]},),
    routing: Mapping[str, Any] | None = None,
    engine: Mapping[str, Any] | None = None,
    polling: Mapping[str, Any] | None = None,
    notify: Mapping[str, Any] | None = None,
    upstream_url: str | None = None,
    upstream_timeout_s: float = 2.0,
    aes_key: str | None = None,
    encoding: str = "plain",
    readonly_token: str | None = None,
) -> dict[str, Any]:
    """A complete kfrouter config as a dict (for ``Config.from_dict`` or ``toml_text``)."""
    wechat: dict[str, Any] = {
        "appid": appid,
        "secret": secret,
        "token": CB_TOKEN,
        "api_base": api_base,
        "encoding": encoding,
    }
    if aes_key is not None:
        wechat["aes_key"] = aes_key
    server: dict[str, Any] = {
        "admin_token": ADMIN_TOKEN,
        "port": port,
        "upstream_timeout_s": upstream_timeout_s,
    }
    if upstream_url is not None:
        server["upstream_url"] = upstream_url
    if readonly_token is not None:
        server["readonly_token"] = readonly_token
    return {
        "wechat": wechat,
        "server": server,
        "engine": {"default_capacity": 3, **(engine or {})},
        "groups": [dict(g) for g in groups],
        "routing": {"mode": "keywords", "keywords": ["human"], "default_group": "general", **(routing or {})},
        "polling": {
            "online_fast_s": 1.0,
            "online_slow_s": 1.0,
            "waitcase_fast_s": 1.0,
            "waitcase_slow_s": 1.0,
            "max_backoff_s": 2.0,
            "jitter": 0.0,
            **(polling or {}),
        },
        "notify": {"enabled": False, **(notify or {})},
        "store": {"path": str(store)},
        "log": {"level": "info"},
    }


def toml_text(data: Mapping[str, Any]) -> str:
    """Render a config dict as TOML (tables, arrays of tables, scalars, lists, inline tables)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot render {v!r} as TOML")

    def table(name: str, body: Mapping[str, Any], header: str) -> None:
        lines.append(header)
        for k, v in body.items():
            if v is None:
                continue
            if (
                isinstance(v, list)
                and v
                and all(isinstance(x, Mapping) for x in v)
                and k in ("rules", "customers")
            ):
                continue
            lines.append(f"{json.dumps(k)} = {value(v)}")
        lines.append("")
        for k, v in body.items():
            if (
                isinstance(v, list)
                and v
                and all(isinstance(x, Mapping) for x in v)
                and k in ("rules", "customers")
            ):
                for item in v:
                    table(f"{name}.{k}", item, f"[[{name}.{k}]]")

    for name, body in data.items():
        if isinstance(body, list):
            for item in body:
                table(name, item, f"[[{name}]]")
        else:
            table(name, body, f"[{name}]")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- processes


class Proc:
    """A subprocess started by ``Processes``: its first stdout line told where it listens."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.url = ""

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    async def kill9(self) -> None:
        """SIGKILL: no shutdown code runs (a crash, ``kill -9``)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (SIGKILL and a failure if it does not exit in time)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            await self.kill9()
            pytest.fail(f"{self.name} did not exit within {timeout:g}s of SIGTERM:\n{self.log_tail()}")


class Processes:
    """Starts ``python -m router.cli ...`` subprocesses; kills whatever is left at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Proc] = []

    async def start(self, name: str, args: list[str], *, ready_prefix: str, timeout: float = 20.0) -> Proc:
        log_path = self.workdir / f"{name}-{len(self.started)}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in (
            "KFROUTER_APPID",
            "KFROUTER_SECRET",
            "KFROUTER_TOKEN",
            "KFROUTER_AES_KEY",
            "KFROUTER_ADMIN_TOKEN",
            "KFROUTER_STORE_URL",
        ):
            env.pop(var, None)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "kfrouter.router.cli",
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=str(self.workdir),
            )
        finally:
            log_file.close()
        p = Proc(name, proc, log_path)
        self.started.append(p)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await proc.stdout.readline()).decode().strip()
                    if not line:
                        await proc.wait()
                        pytest.fail(
                            f"{name} exited with {proc.returncode} before it was ready:\n{p.log_tail()}"
                        )
                    if line.startswith(ready_prefix):
                        p.url = line[len(ready_prefix) :].strip()
                        return p
        except TimeoutError:
            pytest.fail(f"{name} not ready within {timeout:g}s:\n{p.log_tail()}")

    async def fake(
        self,
        *,
        webhook: str,
        appid: str = "wx_test_app",
        secret: str = "test_secret",
        aes_key: str | None = None,
        options: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> Proc:
        args = [
            "fake-wechat",
            "--appid",
            appid,
            "--secret",
            secret,
            "--webhook",
            webhook,
            "--token",
            CB_TOKEN,
        ]
        args += ["--seed", str(seed)]
        if aes_key is not None:
            args += ["--aes-key", aes_key]
        for k, v in (options or {}).items():
            args += ["--option", f"{k}={json.dumps(v)}"]
        return await self.start("fake", args, ready_prefix="")

    async def daemon(self, config_path: Path, *extra: str) -> Proc:
        return await self.start(
            "daemon", ["run", "--config", str(config_path), *extra], ready_prefix="kfrouter: listening on"
        )

    async def cleanup(self) -> None:
        for p in self.started:
            with contextlib.suppress(ProcessLookupError):
                if p.proc.returncode is None:
                    p.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await p.proc.wait()


@pytest.fixture
async def processes(tmp_path: Path) -> AsyncIterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        await procs.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def recorder(into: list[dict[str, Any]]) -> Callable[[Any, float], None]:
    """A daemon observer that appends one dict per applied event (``kind`` "event") and per command
    (``kind`` "command"): ``type`` and the fields of the value, for tests that look for them."""
    import attrs

    from kfrouter.router.observe import Stepped

    def observe(observation: Any, now: float) -> None:
        if not isinstance(observation, Stepped):
            return
        values = [("event", observation.cause)] if observation.cause is not None else []
        values += [("command", c) for c in observation.commands]
        for kind, value in values:
            into.append({"kind": kind, "type": type(value).__name__, **attrs.asdict(value, recurse=False)})

    return observe


# ---------------------------------------------------------------------------------------- PostgreSQL


def _pg_unavailable(reason: str) -> None:
    """Skip a PostgreSQL test with ``reason`` — or fail it under CI, which must never skip them."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and the PostgreSQL tests cannot run: {reason}")
    pytest.skip(f"no PostgreSQL: {reason}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterable[Any]:
    """A throw-away PostgreSQL cluster for the whole session (``tests/pg_cluster.py``)."""
    import pg_cluster as pgc

    reason = pgc.unavailable()
    if reason is not None:
        _pg_unavailable(reason)
    cluster = pgc.PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """The URL of a new, empty database in the throw-away cluster."""
    return str(pg_cluster.new_database())
