"""``kfrouter run --config kfrouter.toml``: run the routing daemon in the foreground.

Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT), 2 for an invalid config or option (the message
names the problem), 1 when the daemon failed. Once the web server listens, one line
``kfrouter: listening on http://HOST:PORT`` is printed to stdout (flushed), so scripts can read the port
when ``--port 0`` was asked for.

Once it listens, what start-up made (modules, config, the state loaded from the store) is moved out of the
cyclic garbage collector's sight (``gc.freeze()``): a full collection then scans only what the daemon made
since, instead of pausing every request for tens of milliseconds over the whole start-up heap
(docs/reliability.md, section 1.2).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from typing import Any

import attrs


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="run the routing daemon (webhook, pollers, assignment)",
        description="Serve the WeChat callback URL and assign waiting customers to agents until SIGTERM.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the kfrouter.toml to use")
    p.add_argument("--host", help="override [server] host")
    p.add_argument("--port", type=int, help="override [server] port (0: any free port)")
    p.add_argument(
        "--create-timeout",
        type=float,
        metavar="S",
        help="seconds one kfsession/create may take before it counts as failed (default 10)",
    )
    p.add_argument(
        "--api-timeout", type=float, metavar="S", help="seconds per WeChat API attempt (default 10)"
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        metavar="S",
        help="seconds to finish API calls in flight on SIGTERM (default 10)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="override [log] level")
    p.add_argument(
        "--log-json",
        action="store_true",
        help="one JSON object per log line (like [log] json = true); see docs/observability.md",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kfrouter.router.config import ConfigError, load_config
    from kfrouter.router.daemon import DaemonOptions
    from kfrouter.router.logs import config_secrets, setup_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    server = config.server
    if args.host is not None:
        server = attrs.evolve(server, host=args.host)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            print(f"--port must be 0..65535, got {args.port}", file=sys.stderr)
            return 2
        server = attrs.evolve(server, port=args.port)
    config = attrs.evolve(config, server=server)
    changes: dict[str, float] = {}
    for flag, name in (
        ("create_timeout", "create_timeout_s"),
        ("api_timeout", "api_timeout_s"),
        ("shutdown_timeout", "shutdown_timeout_s"),
    ):
        value = getattr(args, flag)
        if value is not None:
            changes[name] = value
    try:
        options = DaemonOptions(**changes)  # type: ignore[arg-type]
    except ValueError as exc:
        print(str(exc).replace("DaemonOptions.", "option "), file=sys.stderr)
        return 2
    if args.log_json:
        config = attrs.evolve(config, log=attrs.evolve(config.log, json=True))
    setup_logging(args.log_level or config.log.level, config.log.json, secrets=config_secrets(config))
    try:
        return asyncio.run(_serve(config, options))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 1


async def _serve(config: Any, options: Any) -> int:
    from kfrouter.router.app import build_cluster, build_daemon

    log = logging.getLogger("kfrouter.daemon")
    try:
        if config.cluster is not None:
            daemon: Any = build_cluster(config, options=options)
        else:
            daemon = build_daemon(config, options=options)
    except (ValueError, OSError) as exc:
        print(f"kfrouter: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, daemon.stop)

    async def announce() -> None:
        await daemon.listening.wait()
        _freeze_start_up_heap()
        print(f"kfrouter: listening on http://{config.server.host}:{daemon.port}", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await daemon.run()
    except Exception:
        log.exception("kfrouter stopped on an error")
        return 1
    finally:
        announcer.cancel()
    return 0


def _freeze_start_up_heap() -> None:
    """Collect start-up's garbage, then keep every object alive now out of later collections (they live
    as long as the process; the collector's full passes would otherwise rescan them all)."""
    gc.collect()
    gc.freeze()
