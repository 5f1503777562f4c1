"""What one poll costs the daemon: ``getonlinekflist`` and ``getwaitcase`` for many idle accounts.

What it runs: the fake WeChat in this process serving ``--accounts`` Official Accounts (4 agents online
each, nobody waiting, so every answer is the same poll after poll — the common case of a daemon serving
many accounts), one ``kfrouter run`` subprocess holding all of them (SQLite stores, ``[polling]`` every
``--interval`` s, no jitter), and nothing else: no customers, no pushes. The daemon's CPU over the window
(``/proc/<pid>/stat``) divided by the polls the fake answered in it is the CPU per poll.

The reference, measured in the same run: a bare aiohttp client in its own process making the same
requests at the same rate (one session, ``GET`` + ``json()`` per poll, nothing done with the answer) —
the floor a poll cannot go below with this HTTP stack. The ratio is printed. ``--baseline DIR`` measures
the daemon of another source tree too (before/after a change, in the same run), in turn with this one for
``--rounds`` rounds; each keeps its best round (the machine may be shared).

    python bench/bench_polling.py                          # 100 accounts, polls every 1 s, 20 s window
    python bench/bench_polling.py --accounts 40 --seconds 10   # a quick look
    python bench/bench_polling.py --profile /tmp/poll.prof     # the daemon under cProfile
    python bench/bench_polling.py --baseline /tmp/base --rounds 4  # against another tree, in turn
    python bench/bench_polling.py --in-process [--profile /tmp/poll.prof]   # the host in this process
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _harness as h
import cluster_rig as cr

from kfrouter.sim.fake_options import KF_ONLINE, TOKEN, WAITCASE, FakeOptions
from kfrouter.sim.fake_server import FakeWeChat

REFERENCE_READY = "reference polling:"
FAKE_READY = "http://"  # `kfrouter fake-wechat` prints its base URL first
POLLED = (KF_ONLINE, WAITCASE)


def config_text(*, accounts: list[str], api_base: str, store: Path, interval: float) -> str:
    """The daemon's kfrouter.toml: every account on SQLite, polls every ``interval`` s, quiet logs."""
    polling = {
        "online_fast_s": interval,
        "online_slow_s": interval,
        "waitcase_fast_s": interval,
        "waitcase_slow_s": interval,
        "max_backoff_s": max(5.0, interval),
        "jitter": 0.0,
    }
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        "port = 0",
        f"admin_token = {cr.toml_value(cr.ADMIN_TOKEN)}",
        "",
        "[store]",
        f"path = {cr.toml_value(str(store / '{appid}.db'))}",
        "",
        "[log]",
        'level = "info"',
        "",
        "[defaults]",
        f"engine = {cr.toml_value({'default_capacity': cr.CAPACITY})}",
        "routing = " + cr.toml_value({"mode": "keywords", "keywords": ["human"], "default_group": "general"}),
        f"polling = {cr.toml_value(polling)}",
        f"notify = {cr.toml_value({'enabled': False})}",
        "",
    ]
    for appid in accounts:
        agents = [f"{appid[-3:]}a{j}@test" for j in range(cr.AGENTS_PER_ACCOUNT)]
        wechat = {"appid": appid, "secret": cr.SECRET, "token": cr.CB_TOKEN, "api_base": api_base}
        lines += [
            "[[accounts]]",
            f"wechat = {cr.toml_value({**wechat, 'encoding': 'plain'})}",
            f"groups = {cr.toml_value([{'name': 'general', 'agents': agents}])}",
            "",
        ]
    return "\n".join(lines)


def polls(fake: FakeWeChat) -> int:
    """Polls the fake answered so far, over every account."""
    return sum(m.calls[ep] for m in fake.models.values() for ep in POLLED)


async def window(cpu: Callable[[], float], polls: Callable[[], int], seconds: float) -> dict[str, Any]:
    """CPU seconds (``cpu()``) and polls (``polls()``) over ``seconds``."""
    cpu0, n0, t0 = cpu(), polls(), time.monotonic()
    await asyncio.sleep(seconds)  # the measured window
    cpu1, n1, t1 = cpu(), polls(), time.monotonic()
    n = max(1, n1 - n0)
    return {
        "polls": n1 - n0,
        "window_s": round(t1 - t0, 2),
        "polls_per_s": round((n1 - n0) / (t1 - t0), 1),
        "cpu_s_per_s": round((cpu1 - cpu0) / (t1 - t0), 3),
        "cpu_ms_per_poll": round(1000 * (cpu1 - cpu0) / n, 3),
    }


def of_process(pid: int) -> Callable[[], float]:
    return lambda: h.cpu_seconds(pid) or 0.0


async def main(args: argparse.Namespace) -> int:
    accounts = cr.appids(args.accounts)
    fake = FakeWeChat(accounts[0], cr.SECRET, token=cr.CB_TOKEN, options=FakeOptions())
    for appid in accounts[1:]:
        fake.add_app(appid, cr.SECRET)
    for model in fake.models.values():
        for j in range(cr.AGENTS_PER_ACCOUNT):
            kf = f"{model.appid[-3:]}a{j}@test"
            model.set_agent(kf, fake.clock.now(), status=1, bound=True, auto_accept=cr.CAPACITY)
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api_base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"accounts": args.accounts, "interval_s": args.interval}
    try:
        with tempfile.TemporaryDirectory(prefix="kfr-bench-polling-") as tmp:
            base = Path(tmp)
            config = base / "kfrouter.toml"
            config.write_text(
                config_text(accounts=accounts, api_base=api_base, store=base, interval=args.interval)
            )
            profile = Path(args.profile) if args.profile else None
            trees = [("daemon", None)] + ([("baseline", args.baseline)] if args.baseline else [])
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _src in trees}
            for round_ in range(args.rounds):
                for name, src in trees if round_ % 2 == 0 else trees[::-1]:  # who goes first alternates
                    with source_tree(src):
                        daemon = await h.start_daemon(
                            config,
                            base / f"{name}.log",
                            timeout=120,
                            profile=profile if src is None else None,
                        )
                    try:
                        await asyncio.sleep(args.warmup)  # start-up recovery of every account, first polls
                        runs[name].append(
                            await window(of_process(daemon.pid), partial(polls, fake), args.seconds)
                        )
                    finally:
                        await daemon.terminate()
            for name, results in runs.items():
                out[name] = best(results)
            argv = [
                str(Path(__file__).resolve()),
                "reference",
                api_base,
                str(args.interval),
                *accounts,
            ]
            ref = await h.Child.start(
                "reference", argv, ready_prefix=REFERENCE_READY, log_path=base / "reference.log"
            )
            try:
                await asyncio.sleep(args.warmup)
                out["reference"] = await window(of_process(ref.pid), partial(polls, fake), args.seconds)
            finally:
                await ref.kill()
    finally:
        await fake.pusher.close()
        await runner.cleanup()
    columns = [c for c in ("daemon", "baseline", "reference") if c in out]
    floor = max(out["reference"]["cpu_ms_per_poll"], 1e-9)
    for c in columns:
        out[c]["ratio_to_reference"] = round(out[c]["cpu_ms_per_poll"] / floor, 2)
    print(json.dumps(out, indent=2))
    print()
    print(f"{args.accounts} idle accounts, 2 polls each every {args.interval:g} s, {args.seconds:g} s window")
    print(f"{'':22}" + "".join(f"{c:>14}" for c in columns))
    for key in ("polls_per_s", "cpu_s_per_s", "cpu_ms_per_poll", "ratio_to_reference"):
        print(f"{key:22}" + "".join(f"{out[c][key]:>14}" for c in columns))
    return 0


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the least CPU per poll: on a shared machine the others only add what ran alongside."""
    return min(results, key=lambda r: float(r["cpu_ms_per_poll"]))


@contextlib.contextmanager
def source_tree(src: str | None) -> Iterator[None]:
    """Processes started inside import ``kfrouter`` from ``src`` (a tree laid out as this repository, e.g.
    ``git archive main | tar -x -C DIR``) instead of the installed one; ``None``: the installed one."""
    if src is None:
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(Path(src).resolve())
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


async def in_process(args: argparse.Namespace) -> int:
    """The host in this process (the fake WeChat in a subprocess): this process's CPU per poll, and with
    ``--profile`` cProfile over the window only (the steady state, no start-up)."""
    from kfrouter.router.app import build_daemon
    from kfrouter.router.config import load_config
    from kfrouter.router.host import Host

    accounts = cr.appids(args.accounts)
    argv = ["-m", "kfrouter.router.cli", "fake-wechat", "--appid", accounts[0], "--secret", cr.SECRET]
    for appid in accounts[1:]:
        argv += ["--app", f"{appid}:{cr.SECRET}"]
    with tempfile.TemporaryDirectory(prefix="kfr-bench-polling-") as tmp:
        base = Path(tmp)
        fake = await h.Child.start("fake", argv, ready_prefix=FAKE_READY, log_path=base / "fake.log")
        api_base = FAKE_READY + fake.url
        try:
            async with aiohttp.ClientSession() as http:
                for appid in accounts:
                    agents = [
                        {"kf_account": f"{appid[-3:]}a{j}@test", "online": True}
                        for j in range(cr.AGENTS_PER_ACCOUNT)
                    ]
                    body = {"appid": appid, "agents": agents}
                    async with http.post(f"{api_base}/_fake/agents", json=body) as resp:
                        resp.raise_for_status()
            config = base / "kfrouter.toml"
            config.write_text(
                config_text(accounts=accounts, api_base=api_base, store=base, interval=args.interval)
            )
            host = build_daemon(load_config(config))
            assert isinstance(host, Host)
            task = asyncio.create_task(host.run())
            try:
                await asyncio.wait_for(host.started.wait(), 120)
                await asyncio.sleep(args.warmup)

                def polled() -> int:
                    return sum(
                        p.polls
                        for r in host.runners.values()
                        for p in (r.agent_poller, r.waitlist_poller)
                        if p is not None
                    )

                profile = cProfile.Profile() if args.profile else None
                if profile is not None:
                    profile.enable()
                result = await window(time.process_time, polled, args.seconds)
                if profile is not None:
                    profile.disable()
                    profile.dump_stats(args.profile)
            finally:
                host.stop()
                await asyncio.wait_for(task, 60)
        finally:
            await fake.kill()
    print(
        json.dumps({"accounts": args.accounts, "interval_s": args.interval, "in_process": result}, indent=2)
    )
    return 0


async def reference(api_base: str, interval: float, accounts: list[str]) -> None:
    """The floor: per account, GET both polled endpoints and parse the JSON, every ``interval`` s."""
    async with aiohttp.ClientSession() as http:
        tokens = {}
        for appid in accounts:
            query = {"grant_type": "client_credential", "appid": appid, "secret": cr.SECRET}
            async with http.get(f"{api_base}/{TOKEN}", params=query) as resp:
                tokens[appid] = (await resp.json())["access_token"]

        async def poll(appid: str, endpoint: str) -> None:
            url = f"{api_base}/{endpoint}"
            while True:
                async with http.get(url, params={"access_token": tokens[appid]}) as resp:
                    await resp.json()
                await asyncio.sleep(interval)  # the poll interval

        print(f"{REFERENCE_READY} {api_base}", flush=True)
        await asyncio.gather(*(poll(a, ep) for a in accounts for ep in POLLED))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--interval", type=float, default=1.0, help="every poll interval, s (at least 1)")
    p.add_argument("--seconds", type=float, default=20.0, help="the measured window")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds before the window opens")
    p.add_argument("--profile", help="run the daemon under cProfile; statistics to this file")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure the daemon of another source tree (git archive main | tar -x -C DIR), in turn",
    )
    p.add_argument("--rounds", type=int, default=1, help="windows per daemon (the best is kept)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="the host in this process instead (the fake in a subprocess); no reference, no baseline "
        "(run it again with PYTHONPATH=DIR for another tree); --profile covers the window only",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "reference":
        api, every, *appids = sys.argv[2:]
        asyncio.run(reference(api, float(every), appids))
        sys.exit(0)
    options = parse()
    sys.exit(asyncio.run(in_process(options) if options.in_process else main(options)))
