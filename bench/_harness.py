"""Shared pieces of the reliability benches (``bench/load_webhook.py``, ``bench/soak.py``).

- ``config_toml``: a complete ``kfrouter.toml`` for a bench daemon (agents, capacity, encoding, store);
- ``Child``: a ``python -m router.cli ...`` (or any Python) subprocess whose first matching stdout line
  says where it listens; ``terminate()`` sends SIGTERM and waits, ``kill()`` is SIGKILL;
- ``rss_bytes`` / ``cpu_seconds`` / ``RssSampler``: the memory and CPU of a process, read from ``/proc``;
- ``signed_plain`` / ``signed_safe``: a push exactly as WeChat sends it (signed query, AES envelope);
- ``FakeHost``: the fake WeChat served in this process on a fixed port, restartable with its state kept;
- ``percentile`` and ``health``.

Run as a script (``python bench/_harness.py reference``) it serves the *reference*: a bare aiohttp handler
answering ``success`` to every POST, which the load bench measures beside the daemon.

Everything listens on 127.0.0.1 only. Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from kfrouter.router.wechat import signature
from kfrouter.router.wechat.crypto import SafeModeCrypto

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
APPID = "wxbench000000000001"
SECRET = "bench_secret"
CB_TOKEN = "kfrBenchToken42"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ADMIN_TOKEN = "bench-admin-token-0123456789"
WXID = "bench"
REFERENCE_READY = "reference: listening on"
DAEMON_READY = "kfrouter: listening on"


# ---------------------------------------------------------------------------------------------- config


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"TOML cannot hold {v!r}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot render {v!r} as TOML")


def agent_names(n: int) -> list[str]:
    return [f"a{i}@{WXID}" for i in range(n)]


def config_toml(
    *,
    api_base: str,
    store: Path,
    port: int,
    agents: Sequence[str],
    capacity: int,
    encoding: str = "plain",
    polling_s: float = 1.0,
    engine: Mapping[str, Any] | None = None,
    log_level: str = "warning",
    store_url: str | None = None,
) -> str:
    """A complete config: one group ``general`` holding every agent at ``capacity`` sessions each, keyword
    routing (``human`` asks, ``cancel`` leaves), notifications off, polls every ``polling_s``; the store
    in the SQLite file ``store``, or at ``store_url`` (PostgreSQL) when given."""
    tables: list[tuple[str, Mapping[str, Any]]] = [
        (
            "wechat",
            {
                "appid": APPID,
                "secret": SECRET,
                "token": CB_TOKEN,
                "api_base": api_base,
                "encoding": encoding,
                **({"aes_key": AES_KEY} if encoding != "plain" else {}),
            },
        ),
        ("server", {"host": HOST, "port": port, "admin_token": ADMIN_TOKEN}),
        ("engine", {"default_capacity": min(capacity, 1000), **(engine or {})}),
        (
            "routing",
            {
                "mode": "keywords",
                "keywords": ["human"],
                "cancel_keywords": ["cancel"],
                "default_group": "general",
            },
        ),
        (
            "polling",
            {
                "online_fast_s": polling_s,
                "online_slow_s": polling_s,
                "waitcase_fast_s": polling_s,
                "waitcase_slow_s": polling_s,
                "max_backoff_s": max(2.0, polling_s * 2),
                "jitter": 0.0,
            },
        ),
        ("notify", {"enabled": False}),
        ("store", {"path": str(store), **({"url": store_url} if store_url else {})}),
        ("log", {"level": log_level}),
    ]
    lines: list[str] = []
    for name, body in tables:
        lines.append(f"[{name}]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in body.items()]
        lines.append("")
    lines += ["[[groups]]", 'name = "general"', f"agents = {_toml_value(list(agents))}"]
    lines.append(f"capacity = {_toml_value({a: min(capacity, 1000) for a in agents})}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- processes


class Child:
    """A subprocess of this Python: its stderr goes to ``log_path``; ``url`` is what followed the ready
    prefix on its stdout. Use ``start()``; always ``terminate()`` or ``kill()`` it."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path
        self.url = ""

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        ready_prefix: str,
        log_path: Path,
        timeout: float = 30.0,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``python <argv>`` and wait (at most ``timeout`` s) for its line ``ready_prefix URL``."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for var in ("KFROUTER_APPID", "KFROUTER_SECRET", "KFROUTER_TOKEN", "KFROUTER_AES_KEY"):
            env.pop(var, None)
        env.pop("KFROUTER_ADMIN_TOKEN", None)
        env.pop("KFROUTER_STORE_URL", None)
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=str(cwd or ROOT),
            )
        child = cls(name, proc, log_path)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await proc.stdout.readline()).decode(errors="replace").strip()
                    if not line:
                        await proc.wait()
                        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{child.log_tail()}")
                    if line.startswith(ready_prefix):
                        child.url = line[len(ready_prefix) :].strip()
                        return child
        except TimeoutError:
            await child.kill()
            raise RuntimeError(f"{name} not ready within {timeout:g}s:\n{child.log_tail()}") from None
        except BaseException:
            await child.kill()
            raise

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            await self.proc.wait()

    async def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL after ``timeout``. The exit code (None if it had to be killed)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            await self.kill()
            return None


async def start_daemon(
    config_path: Path, log_path: Path, *extra: str, timeout: float = 30.0, profile: Path | None = None
) -> Child:
    """``kfrouter run --config FILE`` in its own process (its own event loop); ``profile``: run it under
    cProfile, the statistics written to that file when it stops."""
    argv = ["-m", "kfrouter.router.cli", "run", "--config", str(config_path), *extra]
    if profile is not None:
        argv = ["-m", "cProfile", "-o", str(profile), *argv]
    return await Child.start("daemon", argv, ready_prefix=DAEMON_READY, log_path=log_path, timeout=timeout)


async def start_reference(log_path: Path) -> Child:
    """The bare aiohttp handler (``serve_reference``) in its own process."""
    argv = [str(Path(__file__).resolve()), "reference"]
    return await Child.start("reference", argv, ready_prefix=REFERENCE_READY, log_path=log_path)


async def health(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    """The daemon's ``/healthz`` (``{}`` when it does not answer)."""
    try:
        async with http.get(f"{base_url}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            data = await resp.json()
            return data if isinstance(data, dict) else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


async def wait_for(
    http: aiohttp.ClientSession, base_url: str, predicate: Any, *, timeout: float, interval: float = 0.1
) -> dict[str, Any] | None:
    """Poll ``/healthz`` until ``predicate(health)``; the last health, or None after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        h = await health(http, base_url)
        if h and predicate(h):
            return h
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)


def settled(h: Mapping[str, Any]) -> bool:
    """Nothing in flight in the daemon: inbox empty, no API command pending, no reservation."""
    return h.get("inbox") == 0 and h.get("commands_pending") == 0 and h.get("reservations") == 0


# ---------------------------------------------------------------------------------------------- /proc


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (VmRSS), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Samples the RSS of one process every ``interval_s`` while ``run()`` runs (cancel to stop)."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (monotonic seconds, bytes)

    def sample(self) -> None:
        rss = rss_bytes(self.pid)
        if rss is not None:
            self.samples.append((time.monotonic(), rss))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    @property
    def peak(self) -> int:
        return max((s for _t, s in self.samples), default=0)

    def thirds(self) -> tuple[float, float]:
        """Mean RSS (bytes) of the first and the last third of the samples."""
        values = [s for _t, s in self.samples]
        if len(values) < 3:
            return (float(values[0]), float(values[-1])) if values else (0.0, 0.0)
        k = len(values) // 3
        return sum(values[:k]) / k, sum(values[-k:]) / k


def commit_latency_ms(directory: Path, n: int = 300) -> float:
    """Median milliseconds of one push commit (claim key + waiting row + input log, one transaction,
    ``synchronous=FULL``: one fsync) in a fresh store in ``directory`` — the disk's share of an answer."""
    from kfrouter.router.edges.store import Store, WaitingRow

    path = directory / "fsync-probe.db"
    store = Store(path)
    times = []
    try:
        for i in range(n):
            t = time.perf_counter()
            with store.transaction():
                store.claim_push(f"probe{i}", 1.0)
                store.add_waiting(WaitingRow(f"probe{i}", None, 0, 1.0, "x"))
                store.append_event(1.0, "customer_requested", {"openid": f"probe{i}"})
            times.append(time.perf_counter() - t)
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.remove(f"{path}{suffix}")
    return round(percentile(times, 50) * 1000, 3)


# ---------------------------------------------------------------------------------------------- pushes


def signed_plain(xml: str, ts: int, nonce: str, openid: str) -> tuple[dict[str, str], bytes]:
    """A plaintext push: the signed query and the body."""
    query = {"signature": signature.sign(CB_TOKEN, str(ts), nonce), "timestamp": str(ts), "nonce": nonce}
    query["openid"] = openid
    return query, xml.encode("utf-8")


def signed_safe(
    crypto: SafeModeCrypto, xml: str, ts: int, nonce: str, openid: str, random16: bytes
) -> tuple[dict[str, str], bytes]:
    """A safe-mode push: the AES envelope, ``encrypt_type=aes`` and ``msg_signature`` in the query."""
    body, msg_sig = crypto.encrypt_push(xml, str(ts), nonce, random16)
    query, _ = signed_plain(xml, ts, nonce, openid)
    query |= {"encrypt_type": "aes", "msg_signature": msg_sig}
    return query, body.encode("utf-8")


# ---------------------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def mib(n: float) -> float:
    return round(n / (1024 * 1024), 1)


# ---------------------------------------------------------------------------------------------- fake host


class FakeHost:
    """The fake WeChat (``sim.fake_server.FakeWeChat``) served in this process on ``port``.

    ``restart(downtime_s)`` is what "the fake restarting" means here: the listening socket closes and
    every open connection is aborted (calls in flight fail at the client), nothing listens for
    ``downtime_s`` (connection refused), then the same app listens again on the same port. The model —
    agents, sessions, tokens, the create log — is kept, as a real server keeps its database across a
    restart; the pusher (WeChat's push side, a separate system) keeps delivering meanwhile.
    """

    def __init__(self, fake: Any, port: int) -> None:
        self.fake = fake
        self.port = port
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        self.runner = web.AppRunner(self.fake.app, access_log=None)
        await self.runner.setup()
        await self._listen()
        self.fake.base_url = self.base_url

    async def _listen(self) -> None:
        assert self.runner is not None
        self.site = web.TCPSite(self.runner, HOST, self.port, reuse_address=True)
        await self.site.start()
        if self.port == 0:
            server = self.site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])

    async def restart(self, downtime_s: float) -> None:
        assert self.runner is not None and self.site is not None
        await self.site.stop()
        server = self.runner.server
        if server is not None:
            for handler in server.connections:
                transport = handler.transport
                if transport is not None:
                    transport.abort()
        await asyncio.sleep(downtime_s)
        await self._listen()
        self.restarts += 1

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


# ---------------------------------------------------------------------------------------------- reference


async def serve_reference() -> None:
    """A bare aiohttp server answering ``success`` to every POST (the load bench's reference)."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="success", content_type="text/plain")

    app = web.Application()
    app.router.add_post("/wechat", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"{REFERENCE_READY} http://{HOST}:{port}", flush=True)
    try:
        async with asyncio.timeout(24 * 3600):  # bounded, like everything else here
            await stop.wait()
    except TimeoutError:
        pass
    await runner.cleanup()


if __name__ == "__main__":
    if sys.argv[1:] != ["reference"]:
        print("usage: python bench/_harness.py reference", file=sys.stderr)
        sys.exit(2)
    asyncio.run(serve_reference())
