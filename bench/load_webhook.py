"""Load bench: how many pushes per second the daemon's webhook answers, and where p99 crosses 1 s.

Method (docs/reliability.md has the reasoning):

- Three processes besides this one, all on 127.0.0.1: the fake WeChat (``kfrouter fake-wechat``, agents
  online, ``check_openid=false`` so it accepts customers it has not seen), the daemon (``kfrouter run``,
  SQLite on disk with ``synchronous=FULL`` as in production, ``encoding = "compatible"`` so one daemon
  takes plaintext *and* AES pushes) and the reference (``bench/_harness.py reference``: a bare aiohttp
  handler answering ``success``). This process only generates load, so it never shares an event loop
  with what it measures.
- Every push is a distinct customer whose text asks for a human: the daemon commits the request (a job of
  the store's group commit) before it answers, then routes it (reservation, ``kfsession/create`` at the
  fake, the fake's ``kf_create_session`` push back). Plaintext and AES pushes alternate.
- Two daemon ladders (``--mode``): *routed* (agents online at the fake) and *intake* (a second daemon and
  fake with nobody online: every push is committed and queued, nothing is routed — the durable intake
  alone). ``--chatter`` adds a ladder of texts not for kfrouter (nothing committed). ``--pg`` /
  ``--store-url`` put the daemons' store on PostgreSQL; ``--profile FILE`` runs them under cProfile.
- Open loop: request *i* of a step is due at ``t0 + i / rate`` whatever happened to the others
  (bench/http_load.py: requests built as bytes before the step, a few microseconds of client CPU each —
  ``--client aiohttp`` for aiohttp's client, ~0.25 ms each; at most ``--connections`` connections; a
  request waiting for a connection is late, and that lateness counts). Latency is measured from the due
  time to the end of the answer, so a server that falls behind is not flattered (no coordinated
  omission). Each row prints the generator's share of a core and the server's CPU per request (its event
  loop's thread and the rest), for the reference as for the daemon.
- Steps of ``--step-s`` seconds at rising rates (``--rates``, then doubling up to ``--cap``) until p99
  crosses 1 s, more than 1 % of requests fail, or the cap. Between daemon steps the daemon is given
  time to route its backlog (``/healthz`` settled), and that drain time is reported.
- Sustained rate: the highest achieved rate of a step with p99 <= 1 s, no error and at least 95 % of the
  offered rate achieved. The same ladder runs against the reference first; the ratio is printed.

Run:  python bench/load_webhook.py [--quick] [--rates 50,100,200,400,800] [--step-s 4] [--mode both]
      [--chatter] [--pg] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import http_load

from kfrouter.router.wechat import replies
from kfrouter.router.wechat.crypto import SafeModeCrypto

LATENCY_LIMIT_S = 1.0
MAX_ERROR_RATE = 0.01
WECHAT_TIMEOUT_S = 5.0  # WeChat gives up on an answer after 5 s and retries


# ---------------------------------------------------------------------------------------------- requests


def build_requests(
    prefix: str, n: int, ts: int, rng: random.Random, text: str = "human please"
) -> list[tuple[dict[str, str], bytes]]:
    """``n`` pushes of distinct customers writing ``text`` (by default asking for a human); even ones
    plaintext, odd ones AES."""
    crypto = SafeModeCrypto(h.CB_TOKEN, h.AES_KEY, h.APPID)
    out = []
    for i in range(n):
        openid = f"{prefix}_{i}"
        msg_id = rng.getrandbits(62)
        xml = replies.build_text_message("gh_bench", openid, ts, text, msg_id)
        nonce = str(rng.randrange(10**9, 10**10))
        if i % 2:
            out.append(h.signed_safe(crypto, xml, ts, nonce, openid, rng.randbytes(16)))
        else:
            out.append(h.signed_plain(xml, ts, nonce, openid))
    return out


async def run_step(
    http: aiohttp.ClientSession,
    url: str,
    requests: Sequence[tuple[dict[str, str], bytes]],
    rate: float,
    *,
    timeout_s: float,
    client: str = "raw",
    connections: int = 512,
) -> dict[str, Any]:
    """Fire ``requests`` open-loop at ``rate`` per second with ``client`` (``raw``: bench/http_load.py,
    ``aiohttp``: aiohttp's client); latencies, outcomes and the generator's CPU."""
    if client == "raw":
        wire = [http_load.build_post(url, params, body) for params, body in requests]
        result = await http_load.run_open_loop(url, wire, rate, connections=connections, timeout_s=timeout_s)
    else:
        result = await _aiohttp_step(http, url, requests, rate, timeout_s=timeout_s)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    for o in result.outcomes:
        if o.latency_s is None:
            errors[o.error] = errors.get(o.error, 0) + 1
        elif o.status != 200 or o.body.strip() not in (b"success", b""):
            errors[f"http_{o.status}"] = errors.get(f"http_{o.status}", 0) + 1
        else:
            latencies.append(o.latency_s)
    n = len(requests)
    duration = result.duration_s if latencies else n / rate
    ok = len(latencies)
    return {
        "offered_rps": rate,
        "sent": n,
        "ok": ok,
        "achieved_rps": round(ok / duration, 1),
        "p50_ms": round(h.percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(h.percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies, default=math.nan) * 1000, 1),
        "over_5s": sum(1 for x in latencies if x > WECHAT_TIMEOUT_S),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "generator_cpu_s": round(result.client_cpu_s, 2),
        "generator_core_share": round(result.client_cpu_s / duration, 2),
    }


async def _aiohttp_step(
    http: aiohttp.ClientSession,
    url: str,
    requests: Sequence[tuple[dict[str, str], bytes]],
    rate: float,
    *,
    timeout_s: float,
) -> http_load.StepResult:
    """The same open loop with aiohttp's client (``--client aiohttp``: ~0.25 ms of client CPU a request)."""
    loop = asyncio.get_running_loop()
    outcomes: list[http_load.Outcome] = []
    client_timeout = aiohttp.ClientTimeout(total=timeout_s)
    last_done = 0.0

    async def one(due: float, params: dict[str, str], body: bytes) -> None:
        nonlocal last_done
        try:
            async with http.post(url, params=params, data=body, timeout=client_timeout) as resp:
                text = await resp.read()
                status = resp.status
        except TimeoutError:
            outcomes.append(http_load.Outcome(None, 0, b"", "timeout"))
            return
        except aiohttp.ClientError as exc:
            outcomes.append(http_load.Outcome(None, 0, b"", type(exc).__name__))
            return
        done = loop.time()
        last_done = max(last_done, done)
        outcomes.append(http_load.Outcome(done - due, status, text, ""))

    cpu0 = os.times()
    t0 = loop.time() + 0.05
    tasks: list[asyncio.Task[None]] = []
    i = 0
    n = len(requests)
    while i < n:
        now = loop.time()
        while i < n and t0 + i / rate <= now:
            params, body = requests[i]
            tasks.append(asyncio.ensure_future(one(t0 + i / rate, params, body)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    await asyncio.gather(*tasks)
    cpu1 = os.times()
    duration = max(n / rate, last_done - t0)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return http_load.StepResult(outcomes, duration, cpu)


def thread_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU seconds so far of ``pid``'s main thread (the event loop) and of its other threads together
    (the store's writer, the resolver...), or None when the process is gone."""
    main = others = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            if int(tid) == pid:
                main = cpu
            else:
                others += cpu
    except (OSError, ValueError, IndexError):
        return None
    return main, others


def step_ok(step: dict[str, Any]) -> bool:
    """Sustained: p99 within the limit, no error, 95 % of the offered rate achieved."""
    return bool(
        step["errors"] == 0
        and step["p99_ms"] <= LATENCY_LIMIT_S * 1000
        and step["achieved_rps"] >= 0.95 * step["offered_rps"]
    )


def ladder_rates(rates: Sequence[float], cap: float) -> list[float]:
    out = [r for r in rates if r <= cap]
    while out and out[-1] * 2 <= cap:
        out.append(out[-1] * 2)
    return out


async def run_ladder(
    name: str,
    http: aiohttp.ClientSession,
    url: str,
    rates: Sequence[float],
    step_s: float,
    *,
    rng: random.Random,
    daemon: h.Child | None = None,
    server: h.Child | None = None,
    settle_s: float = 120.0,
    text: str = "human please",
    client: str = "raw",
    connections: int = 512,
) -> list[dict[str, Any]]:
    """Steps at rising rates until p99 > 1 s, errors > 1 % or the last rate. ``daemon``: wait for it to
    route its backlog after each step; ``server`` (the daemon or the reference): its CPU is reported."""
    steps: list[dict[str, Any]] = []
    server = server or daemon
    for k, rate in enumerate(rates):
        n = max(1, round(rate * step_s))
        requests = build_requests(f"{name}{k}", n, int(time.time()), rng, text)
        cpu_before = thread_cpu_seconds(server.pid) if server else None
        step = await run_step(
            http, url, requests, rate, timeout_s=15.0, client=client, connections=connections
        )
        if daemon is not None:
            base = daemon.url
            t = time.monotonic()
            settled = await h.wait_for(http, base, h.settled, timeout=settle_s, interval=0.2)
            step["drain_s"] = round(time.monotonic() - t, 1) if settled else None
            step["daemon_rss_mib"] = h.mib(h.rss_bytes(daemon.pid) or 0)
        cpu_after = thread_cpu_seconds(server.pid) if server else None
        if cpu_before is not None and cpu_after is not None:
            main = cpu_after[0] - cpu_before[0]
            others = cpu_after[1] - cpu_before[1]
            step["server_cpu_s"] = round(main + others, 2)
            step["server_cpu_main_s"] = round(main, 2)  # the event loop's thread
            step["server_cpu_ms_per_request"] = round((main + others) * 1000 / n, 3)
        steps.append(step)
        print(f"  {name:9} {_row(step)}", flush=True)
        if step["p99_ms"] > LATENCY_LIMIT_S * 1000 or step["errors"] > MAX_ERROR_RATE * step["sent"]:
            break
        if daemon is not None and step.get("drain_s") is None:
            print(f"  {name}: backlog not routed within {settle_s:g}s; stopping the ladder", flush=True)
            break
    return steps


def _row(s: dict[str, Any]) -> str:
    extra = f"  generator {s['generator_core_share']:.0%} of a core"
    if "server_cpu_s" in s:
        extra += f"  server {s['server_cpu_ms_per_request']:.3f} ms CPU/req (loop {s['server_cpu_main_s']}s)"
    if "drain_s" in s:
        extra += f"  drain {s['drain_s']}s  rss {s['daemon_rss_mib']} MiB"
    return (
        f"offered {s['offered_rps']:>6g}/s  achieved {s['achieved_rps']:>7.1f}/s  "
        f"p50 {s['p50_ms']:>7.1f} ms  p99 {s['p99_ms']:>7.1f} ms  errors {s['errors']}" + extra
    )


def summarize(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    good = [s for s in steps if step_ok(s)]
    crossed = next((s for s in steps if s["p99_ms"] > LATENCY_LIMIT_S * 1000), None)
    return {
        "sustained_rps": max((s["achieved_rps"] for s in good), default=0.0),
        "p99_crosses_1s_at_offered_rps": crossed["offered_rps"] if crossed else None,
        "steps": list(steps),
    }


# ---------------------------------------------------------------------------------------------- main


async def start_fake(
    http: aiohttp.ClientSession, workdir: Path, port: int, agents: list[str], log: str
) -> h.Child:
    """The fake WeChat pushing to the daemon on ``port``, with ``agents`` online (none: nobody to route to)."""
    fake = await h.Child.start(
        "fake",
        [
            "-m",
            "kfrouter.router.cli",
            "fake-wechat",
            "--appid",
            h.APPID,
            "--secret",
            h.SECRET,
            "--wxid",
            h.WXID,
            "--webhook",
            f"http://{h.HOST}:{port}/wechat",
            "--token",
            h.CB_TOKEN,
            "--option",
            "check_openid=false",
        ],
        ready_prefix="http://",
        log_path=workdir / log,
    )
    fake.url = "http://" + fake.url
    if agents:
        async with http.post(
            f"{fake.url}/_fake/agents", json={"agents": [{"kf_account": a, "online": True} for a in agents]}
        ) as resp:
            resp.raise_for_status()
    return fake


async def start_bench_daemon(
    http: aiohttp.ClientSession, args: argparse.Namespace, workdir: Path, name: str, fake: h.Child, port: int
) -> h.Child:
    agents = h.agent_names(args.agents)
    config = workdir / f"{name}.toml"
    store_url = None
    if args.store_url:
        store_url = args.store_url
    elif args.pg_cluster is not None:
        store_url = args.pg_cluster.new_database(name)
    config.write_text(
        h.config_toml(
            api_base=fake.url,
            store=workdir / f"{name}.db",
            port=port,
            agents=agents,
            capacity=args.capacity,
            encoding="compatible",
            polling_s=2.0,
            log_level=args.log_level,
            store_url=store_url,
        )
    )
    profile = Path(f"{args.profile}.{name}") if args.profile else None
    daemon = await h.start_daemon(config, workdir / f"{name}.log", profile=profile)
    if await h.wait_for(http, daemon.url, lambda x: x.get("status") == "running", timeout=30) is None:
        raise RuntimeError(f"daemon not routing within 30 s:\n{daemon.log_tail()}")
    return daemon


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kfr-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rates = ladder_rates([float(r) for r in args.rates.split(",")], args.cap)
    rng = random.Random(args.seed)
    children: list[h.Child] = []
    result: dict[str, Any] = {"workdir": str(workdir), "cores": os.cpu_count()}
    result["store"] = "postgresql" if (args.store_url or args.pg_cluster) else "sqlite"
    result["commit_ms_before"] = h.commit_latency_ms(workdir)
    print(f"one push commit (fsync) in {workdir}: {result['commit_ms_before']} ms (median)", flush=True)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=args.connections, force_close=False)
    ) as http:
        try:
            reference = await h.start_reference(workdir / "reference.log")
            children.append(reference)
            print(f"reference: bare aiohttp 'success' handler at {reference.url}", flush=True)
            result["reference"] = summarize(
                await run_ladder(
                    "reference",
                    http,
                    f"{reference.url}/wechat",
                    rates,
                    args.step_s,
                    rng=rng,
                    server=reference,
                    client=args.client,
                    connections=args.connections,
                )
            )
            await reference.terminate()

            if args.mode in ("routed", "both"):
                port = _free_port()
                fake = await start_fake(http, workdir, port, h.agent_names(args.agents), "fake.log")
                children.append(fake)
                daemon = await start_bench_daemon(http, args, workdir, "daemon", fake, port)
                children.append(daemon)
                print(f"daemon: kfrouter run at {daemon.url} ({args.agents} agents online)", flush=True)
                daemon_steps = await run_ladder(
                    "daemon",
                    http,
                    f"{daemon.url}/wechat",
                    rates,
                    args.step_s,
                    rng=rng,
                    daemon=daemon,
                    client=args.client,
                    connections=args.connections,
                )
                if args.chatter:
                    print(
                        "daemon, pushes not for kfrouter (nothing committed, answered at once):", flush=True
                    )
                    chatter_steps = await run_ladder(
                        "chatter",
                        http,
                        f"{daemon.url}/wechat",
                        rates,
                        args.step_s,
                        rng=rng,
                        daemon=daemon,
                        text="what time do you open?",
                        client=args.client,
                        connections=args.connections,
                    )
                    result["daemon_chatter"] = summarize(chatter_steps)
                async with http.get(f"{fake.url}/_fake/state") as resp:
                    state = await resp.json()
                created = sum(1 for c in state["create_log"] if c["errcode"] == 0)
                answered = sum(s["ok"] for s in daemon_steps)
                result["routed"] = {"answered_success": answered, "sessions_created": created}
                result["daemon"] = summarize(daemon_steps)
                result["daemon_exit"] = await daemon.terminate()
                await fake.terminate()

            if args.mode in ("intake", "both"):
                port = _free_port()
                fake = await start_fake(http, workdir, port, [], "fake-intake.log")
                children.append(fake)
                daemon = await start_bench_daemon(http, args, workdir, "intake", fake, port)
                children.append(daemon)
                print(
                    f"intake: kfrouter run at {daemon.url} (nobody online: customers are queued)", flush=True
                )
                intake_steps = await run_ladder(
                    "intake",
                    http,
                    f"{daemon.url}/wechat",
                    rates,
                    args.step_s,
                    rng=rng,
                    daemon=daemon,
                    client=args.client,
                    connections=args.connections,
                )
                health = await h.health(http, daemon.url)
                result["intake"] = summarize(intake_steps)
                result["intake"]["answered_success"] = sum(s["ok"] for s in intake_steps)
                result["intake"]["queued_at_end"] = health.get("queue")
                result["intake_exit"] = await daemon.terminate()
        finally:
            for child in reversed(children):
                await child.terminate(timeout=10)
    result["commit_ms_after"] = h.commit_latency_ms(workdir)
    ref = result["reference"]["sustained_rps"]
    for key in ("daemon", "intake"):
        if key in result:
            dae = result[key]["sustained_rps"]
            result[f"ratio_{key}"] = round(dae / ref, 3) if ref else None
            steps = result[key]["steps"]
            at_1000 = next((s for s in steps if s["offered_rps"] == 1000), None)
            result[key]["p99_ms_at_1000"] = at_1000["p99_ms"] if at_1000 else None
    if "daemon" in result:
        p50s = [
            (d["p50_ms"], r["p50_ms"])
            for d, r in zip(result["daemon"]["steps"], result["reference"]["steps"], strict=False)
        ]
        result["p50_ratio_first_step"] = round(p50s[0][0] / p50s[0][1], 1) if p50s and p50s[0][1] else None
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((h.HOST, 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rates", default="50,100,200,400,800", help="comma-separated req/s of the first steps")
    p.add_argument("--cap", type=float, default=3200.0, help="highest rate tried (the ladder doubles to it)")
    p.add_argument("--step-s", type=float, default=4.0, help="seconds per step")
    p.add_argument(
        "--mode",
        choices=("routed", "intake", "both"),
        default="both",
        help="routed: agents online, every customer routed; intake: nobody online, every customer "
        "committed and queued (the durable intake alone); both (default)",
    )
    p.add_argument("--agents", type=int, default=20, help="agents online at the fake (routed ladder)")
    p.add_argument("--capacity", type=int, default=1000, help="sessions per agent (1..1000)")
    p.add_argument("--connections", type=int, default=512, help="client connection limit")
    p.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the load generator: raw (bench/http_load.py, little client CPU; default) or aiohttp's client",
    )
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", help="where the store and logs go (default: a new temp dir)")
    p.add_argument("--json", help="also write the result as JSON to this file")
    p.add_argument("--quick", action="store_true", help="rates 50,100,200 for 2 s each")
    p.add_argument(
        "--chatter",
        action="store_true",
        help="also a daemon ladder of pushes that are not for kfrouter (no commit): the cost of durability",
    )
    p.add_argument("--store-url", help="the daemons' store: this PostgreSQL URL (an empty database)")
    p.add_argument(
        "--pg",
        action="store_true",
        help="the daemons' store: PostgreSQL in a throw-away cluster (tests/pg_cluster.py)",
    )
    p.add_argument("--profile", help="run the daemons under cProfile; statistics to PROFILE.<daemon>")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.cap, args.step_s = "50,100,200", 200.0, 2.0
    args.pg_cluster = None
    if args.pg and not args.store_url:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import pg_cluster

        reason = pg_cluster.unavailable()
        if reason is not None:
            p.error(f"--pg: {reason}")
        args.pg_cluster = pg_cluster.PgCluster.start(durable=True)
    try:
        result = asyncio.run(main_async(args))
    finally:
        if args.pg_cluster is not None:
            args.pg_cluster.stop()
            args.pg_cluster = None
    print()
    print(f"store: {result['store']}")
    print(
        f"reference: sustained {result['reference']['sustained_rps']}/s; p99 > 1 s at "
        f"{result['reference']['p99_crosses_1s_at_offered_rps']} offered/s"
    )
    for key, label in (("daemon", "daemon, routed"), ("intake", "daemon, intake")):
        if key in result:
            r = result[key]
            print(
                f"{label}: sustained {r['sustained_rps']}/s (ratio to the reference {result[f'ratio_{key}']}); "
                f"p99 at 1000/s offered: {r['p99_ms_at_1000']} ms; p99 > 1 s at "
                f"{r['p99_crosses_1s_at_offered_rps']} offered/s"
            )
    if "p50_ratio_first_step" in result:
        print(f"p50 ratio daemon/reference at the first step: {result['p50_ratio_first_step']}x")
    if "daemon_chatter" in result:
        c = result["daemon_chatter"]
        print(
            f"daemon, not-for-us pushes: sustained {c['sustained_rps']}/s; p99 > 1 s at "
            f"{c['p99_crosses_1s_at_offered_rps']} offered/s"
        )
    if "routed" in result:
        print(f"routed: {result['routed']}")
    if "intake" in result:
        print(
            f"intake: {result['intake']['answered_success']} answered success, "
            f"{result['intake']['queued_at_end']} waiting in the engine at the end"
        )
    print(
        f"one push commit (fsync): {result['commit_ms_before']} ms before, {result['commit_ms_after']} ms after"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
