"""Many accounts in one daemon (router/host.py): a real daemon with three ``[[accounts]]`` against one fake WeChat
serving the three appids (each with its own agents, secret, access tokens and callback token). Pushes on
``/wechat/{appid}`` reach the right account, sessions are created with that account's access token, the
metrics carry ``appid``, the admin API and ``kfrouter accounts list`` list the accounts; an account stopped
and started at run time, a push for an account not running here (503, or the foreign-push hook), an
unknown appid (404)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, FakeControl, wait_until
from test_metrics import samples, value

from kfrouter.router.app import build_daemon
from kfrouter.router.cli import main as kfrouter_main
from kfrouter.router.config import Config
from kfrouter.router.daemon import DaemonOptions
from kfrouter.router.edges.store_values import LeaseRow, StoredCounts
from kfrouter.router.host import Host
from kfrouter.router.wechat import replies, signature
from kfrouter.router.wechat.push import Push
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.fake_server import FakeWeChat, running_fake

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ACCOUNTS: dict[str, dict[str, Any]] = {
    # appid -> secret, callback token, agents
    "wxAlpha": {"secret": "secretA", "token": "tokenAlpha1", "agents": ["a1@test"]},
    "wxBravo": {"secret": "secretB", "token": "tokenBravo2", "agents": ["b1@test", "b2@test"]},
    "wxCharlie": {"secret": "secretC", "token": "tokenCharl3", "agents": ["c1@test"]},
}


class Env:
    def __init__(self, fake: FakeWeChat, host: Host, http: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.host = host
        self.http = http
        self.ctl = FakeControl(fake.base_url, http)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.host.port}"

    async def say(self, appid: str, openid: str, text: str) -> None:
        await self.ctl.call("POST", "customer/message", {"appid": appid, "openid": openid, "text": text, "wait": True})

    async def fake_sessions(self, appid: str) -> dict[str, str]:
        state = await self.ctl.call("GET", f"state?appid={appid}")
        return {s["openid"]: s["kf_account"] for s in state["sessions"]}

    async def assigned(self, appid: str, openid: str) -> str:
        async def check() -> str | None:
            kf = (await self.fake_sessions(appid)).get(openid)
            runner = self.host.runners.get(appid)
            return kf if kf is not None and runner is not None and runner.engine.with_agent(openid) == kf else None

        found: str = await wait_until(check, timeout=15, message=f"{openid} assigned in {appid}")
        return found

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.base + path, headers=AUTH) as resp:
            ctype = resp.headers.get("Content-Type", "")
            return resp.status, await (resp.json() if "json" in ctype else resp.text())


def config(fake_url: str, tmp_path: Path) -> Config:
    return Config.from_dict(
        {
            "server": {"admin_token": ADMIN_TOKEN, "port": 0},
            "store": {"path": str(tmp_path / "{appid}.db")},
            "defaults": {
                "wechat": {"api_base": fake_url},
                "engine": {"default_capacity": 3},
                "routing": {"mode": "always"},
            },
            "accounts": [
                {
                    "wechat": {"appid": appid, "secret": a["secret"], "token": a["token"]},
                    "groups": [{"name": "general", "agents": a["agents"]}],
                }
                for appid, a in ACCOUNTS.items()
            ],
        },
        env={},
    )


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Env]:
    opts = FakeOptions()
    opts.update({"check_openid": False})
    (first, a), *others = ACCOUNTS.items()
    async with (
        running_fake(first, a["secret"], token=a["token"], options=opts) as fake,
        aiohttp.ClientSession() as http,
    ):
        for appid, acc in others:
            fake.add_app(appid, acc["secret"], token=acc["token"])
        ctl = FakeControl(fake.base_url, http)
        for appid, acc in ACCOUNTS.items():
            await ctl.call(
                "POST", "agents", {"appid": appid, "agents": [{"kf_account": k, "online": True} for k in acc["agents"]]}
            )
        host = build_daemon(
            config(fake.base_url, tmp_path),
            options=DaemonOptions(create_timeout_s=3.0, api_timeout_s=3.0, self_check=False),
        )
        assert isinstance(host, Host)
        task = asyncio.create_task(host.run())
        try:
            await asyncio.wait_for(host.listening.wait(), 10)
            fake.pusher.webhook = f"http://127.0.0.1:{host.port}/wechat/{{appid}}"
            await asyncio.wait_for(host.started.wait(), 20)
            yield Env(fake, host, http)
        finally:
            host.stop()
            await asyncio.wait_for(task, 20)


def accounts_list(base: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = kfrouter_main(["accounts", "list", "--url", base, "--admin-token", ADMIN_TOKEN])
    assert code == 0
    return out.getvalue()


async def test_three_accounts_route_their_own_customers_with_their_own_tokens(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        assert set(env.host.runners) == set(ACCOUNTS)
        customers = {"wxAlpha": ["oA1"], "wxBravo": ["oB1", "oB2"], "wxCharlie": ["oC1"]}
        for appid, openids in customers.items():
            for openid in openids:
                await env.say(appid, openid, "human please")
        for appid, openids in customers.items():
            for openid in openids:
                kf = await env.assigned(appid, openid)
                assert kf in ACCOUNTS[appid]["agents"]
        for appid, openids in customers.items():
            model = env.fake.models[appid]
            # every create this account's model saw came with its own access token, for its own customers
            assert sorted(c["openid"] for c in model.create_log if c["errcode"] == 0) == sorted(openids)
            runner = env.host.runners[appid]
            others = {o for a, os in customers.items() if a != appid for o in os}
            assert not any(runner.engine.state(o).name != "UNKNOWN" for o in others)
            assert runner.store is not None and Path(str(runner.store.path)) == tmp_path / f"{appid}.db"

        # metrics: one family per name, each sample with its appid
        status, text = await env.get("/metrics")
        assert status == 200
        data = samples(text)
        assert value(data, "kfrouter_accounts") == 3
        for appid, openids in customers.items():
            served = sum(
                v
                for (name, labels), v in data.items()
                if name == "kfrouter_assignments_total" and ("appid", appid) in labels
            )
            assert served == len(openids)
            assert value(data, "kfrouter_ready", appid=appid) == 1
        assert text.count("# TYPE kfrouter_sessions gauge") == 1

        # the admin API: the accounts, one account's routes, and the old paths naming the accounts
        status, body = await env.get("/api/accounts")
        assert status == 200
        rows = {r["appid"]: r for r in body["accounts"]}
        assert list(rows) == list(ACCOUNTS)
        assert rows["wxBravo"] == {
            "appid": "wxBravo",
            "running": True,
            "owner": "local",
            "lease_epoch": None,
            "lease_expires_at": None,
            "status": "running",
            "waiting": 0,
            "sessions": 2,
            "counts_error": None,
        }
        status, body = await env.get("/api/accounts/wxBravo/sessions")
        assert status == 200 and sorted(s["openid"] for s in body["sessions"]) == ["oB1", "oB2"]
        status, body = await env.get("/api/sessions")
        assert status == 409 and "/api/accounts/wxAlpha/sessions" in body["error"]
        assert body["accounts"] == list(ACCOUNTS)
        status, body = await env.get("/api/accounts/wxZulu/sessions")
        assert status == 404 and "wxZulu" in body["error"]

        # kfrouter accounts list
        listing = await asyncio.to_thread(accounts_list, env.base)
        lines = listing.splitlines()
        assert lines[0].split() == ["APPID", "OWNER", "LEASE", "STATUS", "WAITING", "SESSIONS"]
        assert lines[2].split() == ["wxBravo", "local", "-", "running", "0", "2"]

        # the supervisor's snapshot of one account, with the list for its selector
        status, snap = await env.get("/supervisor/state?account=wxCharlie")
        assert status == 200 and snap["appid"] == "wxCharlie" and snap["totals"]["sessions"] == 1
        assert [a["appid"] for a in snap["accounts"]] == list(ACCOUNTS)
        status, _ = await env.get("/supervisor/state?account=wxZulu")
        assert status == 404


def signed(token: str, xml: str, openid: str) -> dict[str, str]:
    ts, nonce = str(int(time.time())), "4242"
    return {"signature": signature.sign(token, ts, nonce), "timestamp": ts, "nonce": nonce, "openid": openid}


async def test_accounts_stop_and_start_at_run_time_and_foreign_pushes(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        token = ACCOUNTS["wxCharlie"]["token"]
        url = f"{env.base}/wechat/wxCharlie"
        # an appid nobody configured: 404 naming it; the bare /wechat is nobody's with several accounts
        xml = replies.build_text_message("gh_c", "oX", int(time.time()), "human", 1)
        async with env.http.post(f"{env.base}/wechat/wxZulu", params=signed(token, xml, "oX"), data=xml) as resp:
            assert resp.status == 404 and "wxZulu" in await resp.text()
        async with env.http.post(f"{env.base}/wechat", params=signed(token, xml, "oX"), data=xml) as resp:
            assert resp.status == 404
        # another account's token does not open this account's URL
        other = ACCOUNTS["wxAlpha"]["token"]
        async with env.http.post(url, params=signed(other, xml, "oX"), data=xml) as resp:
            assert resp.status == 403

        await env.host.stop_account("wxCharlie", handover=True)
        assert "wxCharlie" not in env.host.runners
        status, body = await env.get("/api/accounts/wxCharlie")
        assert status == 200 and body["running"] is False and body["owner"] is None
        assert (body["waiting"], body["sessions"], body["counts_error"]) == (None, None, None)  # not known
        assert (await asyncio.to_thread(accounts_list, env.base)).splitlines()[3].split()[-2:] == ["-", "-"]
        # served by another daemon (router/cluster.py tells the host the lease rows it last saw, and reads
        # the counts of the accounts not running here from the shared store: tests/test_cluster_accounts.py)
        rows = {"wxCharlie": LeaseRow("wxCharlie", "daemon-b", 7, time.time() + 12.0, True)}
        env.host.lease_rows = lambda: rows
        stored: dict[str, StoredCounts | str] = {"wxCharlie": StoredCounts(waiting=4, sessions=9)}
        asked: list[list[str]] = []

        async def stored_counts(appids: Sequence[str]) -> dict[str, StoredCounts | str]:
            asked.append(list(appids))
            return stored

        env.host.stored_counts = stored_counts
        status, body = await env.get("/api/accounts/wxCharlie")
        assert body["owner"] == "daemon-b" and body["lease_epoch"] == 7 and body["status"] == "served by daemon-b"
        assert (body["waiting"], body["sessions"], body["counts_error"]) == (4, 9, None)
        assert asked == [["wxCharlie"]]  # only the accounts not running here are read
        line = (await asyncio.to_thread(accounts_list, env.base)).splitlines()[3].split()
        assert line[:2] == ["wxCharlie", "daemon-b"] and line[-4:] == ["by", "daemon-b", "4", "9"]
        why = "canceling statement due to statement timeout"
        stored["wxCharlie"] = why  # a count not read: why, in its row
        status, body = await env.get("/api/accounts/wxCharlie")
        assert body["waiting"] is None and body["counts_error"] == why
        listing = (await asyncio.to_thread(accounts_list, env.base)).splitlines()
        cells = [[c.strip() for c in line.split("  ") if c.strip()] for line in listing]
        assert cells[0][-3:] == ["WAITING", "SESSIONS", "NOTE"] and cells[1][-2:] == ["0", "0"]  # no note
        assert cells[3][-4:] == ["served by daemon-b", "?", "?", f"counts not read: {why}"]
        rows["wxCharlie"] = LeaseRow("wxCharlie", "daemon-b", 7, time.time() - 1.0, False)  # expired: nobody's
        stored["wxCharlie"] = StoredCounts(waiting=4, sessions=0)  # what waits for the next owner
        status, body = await env.get("/api/accounts/wxCharlie")
        assert body["owner"] is None and body["status"] == "not running here" and body["waiting"] == 4
        env.host.lease_rows = None
        env.host.stored_counts = None
        assert (await env.get("/api/accounts/wxCharlie/queue"))[0] == 503
        # not served here and no hook: WeChat is asked to retry
        async with env.http.post(url, params=signed(token, xml, "oX"), data=xml) as resp:
            assert resp.status == 503
        # the hook answers for the account (the ownership work commits it to the shared inbox)
        seen: list[tuple[str, Push, str]] = []

        async def keep(appid: str, push: Push, raw: str, query: Any) -> str | None:
            seen.append((appid, push, query.get("openid")))
            return None

        env.host.on_foreign_push = keep
        xml2 = replies.build_text_message("gh_c", "oY", int(time.time()), "human", 2)
        async with env.http.post(url, params=signed(token, xml2, "oY"), data=xml2) as resp:
            assert resp.status == 200 and await resp.text() == "success"
        assert [(a, p.openid, q) for a, p, q in seen] == [("wxCharlie", "oY", "oY")]
        env.host.on_foreign_push = None

        # the others went on; the account starts again (a new runner, its store read back)
        await env.say("wxAlpha", "oA9", "human please")
        await env.assigned("wxAlpha", "oA9")
        runner = await env.host.start_account("wxCharlie")
        await asyncio.wait_for(runner.started.wait(), 15)
        await env.say("wxCharlie", "oC9", "human please")
        assert await env.assigned("wxCharlie", "oC9") == "c1@test"
        with pytest.raises(ValueError, match="already running"):
            await env.host.start_account("wxCharlie")
        with pytest.raises(ValueError, match="not in"):
            await env.host.start_account("wxZulu")


async def test_a_file_of_one_account_keeps_wechat_and_the_old_admin_paths(tmp_path: Path) -> None:
    """``/wechat`` and ``/wechat/{appid}`` both reach the only account; ``/api/queue`` is its queue."""
    opts = FakeOptions()
    opts.update({"check_openid": False})
    async with (
        running_fake("wxSolo", "s", token="tokenSolo1", options=opts) as fake,
        aiohttp.ClientSession() as http,
    ):
        cfg = Config.from_dict(
            {
                "server": {"admin_token": ADMIN_TOKEN, "port": 0},
                "store": {"path": str(tmp_path / "kfrouter.db")},
                "wechat": {"appid": "wxSolo", "secret": "s", "token": "tokenSolo1", "api_base": fake.base_url},
                "routing": {"mode": "always"},
            },
            env={},
        )
        host = build_daemon(cfg, options=DaemonOptions(self_check=False))
        assert isinstance(host, Host)
        task = asyncio.create_task(host.run())
        try:
            await asyncio.wait_for(host.started.wait(), 20)
            base = f"http://127.0.0.1:{host.port}"
            for msgid, (path, openid) in enumerate((("/wechat", "o1"), ("/wechat/wxSolo", "o2")), 1):
                xml = replies.build_text_message("gh_s", openid, int(time.time()), "human", msgid)
                async with http.post(base + path, params=signed("tokenSolo1", xml, openid), data=xml) as resp:
                    assert resp.status == 200
            await wait_until(lambda: host.runner.engine.queue_length() == 2, message="both waiting")
            async with http.get(base + "/api/queue", headers=AUTH) as resp:
                assert resp.status == 200
                assert sorted(w["openid"] for w in (await resp.json())["waiting"]) == ["o1", "o2"]
            async with http.get(base + "/healthz") as resp:
                health = await resp.json()
                assert health["queue"] == 2 and list(health["accounts"]) == ["wxSolo"]
        finally:
            host.stop()
            await asyncio.wait_for(task, 20)
