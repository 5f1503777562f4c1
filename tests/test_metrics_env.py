"""Shared harness for the observability tests (no tests here): one fake WeChat and one daemon with
metrics and the supervisor page attached, both in this process, talking real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from conftest import ADMIN_TOKEN, CB_TOKEN, FakeControl, config_dict, wait_until

from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.host import Host
from kfrouter.router.supervisor import Observability, attach_observability
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_test_app"
SECRET = "test_secret"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class ObsEnv:
    def __init__(
        self, fake: FakeWeChat, host: Host, obs: Observability, http: aiohttp.ClientSession
    ) -> None:
        self.fake = fake
        self.host = host
        self.daemon = host.runner
        self.obs = obs
        self.http = http
        self.ctl = FakeControl(fake.base_url, http)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.host.port}"

    async def get(self, path: str, *, auth: bool = True, **kw: Any) -> tuple[int, str]:
        headers = {**(AUTH if auth else {}), **kw.pop("headers", {})}
        async with self.http.get(self.base + path, headers=headers, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text()

    async def assigned(self, openid: str, timeout: float = 10.0) -> str:
        """Wait until the fake has ``openid`` in a session and the daemon applied it."""

        async def check() -> str | None:
            kf = (await self.ctl.sessions()).get(openid)
            return kf if kf is not None and self.daemon.engine.with_agent(openid) == kf else None

        result: str = await wait_until(check, timeout=timeout, message=f"{openid} assigned")
        return result


@contextlib.asynccontextmanager
async def running_env(
    tmp_path: Path,
    *,
    agents: tuple[str, ...] = ("a1@test", "a2@test"),
    fake_agents: list[dict[str, Any]] | None = None,
    fake_options: dict[str, Any] | None = None,
    options: DaemonOptions | None = None,
    log: dict[str, Any] | None = None,
    **config: Any,
) -> AsyncIterator[ObsEnv]:
    opts = FakeOptions()
    opts.update({"check_openid": False, **(fake_options or {})})
    async with (
        running_fake(APPID, SECRET, token=CB_TOKEN, options=opts) as fake,
        aiohttp.ClientSession() as http,
    ):
        ctl = FakeControl(fake.base_url, http)
        if agents:
            await ctl.agents(*agents)
        if fake_agents:
            await ctl.call("POST", "agents", {"agents": fake_agents})
        data = config_dict(api_base=fake.base_url, store=tmp_path / "kfrouter.db", **config)
        if log is not None:
            data["log"] = log
        cfg = Config.from_dict(data, env={})
        daemon = build_daemon(cfg, options=options or DaemonOptions(create_timeout_s=2.0, api_timeout_s=2.0))
        assert isinstance(daemon, Host)
        obs = attach_observability(daemon, daemon.app)
        task = asyncio.create_task(daemon.run())
        try:
            await asyncio.wait_for(daemon.listening.wait(), 10)
            fake.pusher.webhook = f"http://127.0.0.1:{daemon.port}/wechat"
            await asyncio.wait_for(daemon.started.wait(), 15)
            yield ObsEnv(fake, daemon, obs, http)
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 15)
