"""``kfrouter demo``: watch kfrouter route synthetic customers to synthetic agents, with no credentials.

Runs router.demo.run_demo in the foreground; Ctrl-C (or SIGTERM) ends the run early and still prints the
summary. Exit codes: 0 after the summary, 2 for a bad option, 1 when the demo could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="see kfrouter work: a fake WeChat, synthetic agents and customers (no credentials needed)",
        description=(
            "Start a fake WeChat and the kfrouter daemon on 127.0.0.1, put agents online in two groups, let "
            "customers arrive and print every assignment, then a summary. Ctrl-C ends it early."
        ),
    )
    p.add_argument("--duration", type=float, default=35.0, metavar="S", help="seconds to run (default 35)")
    p.add_argument("--agents", type=int, default=4, metavar="N", help="agents, in two groups (default 4)")
    p.add_argument(
        "--customers", type=int, metavar="N", help="customers to arrive (default: about 80%% of capacity)"
    )
    p.add_argument("--seed", type=int, metavar="N", help="random seed (default: a new one, printed)")
    p.add_argument("--port", type=int, default=0, metavar="P", help="the daemon's port (default 0: any)")
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="customers arrive, agents work and patience runs out X times faster (default 1)",
    )
    p.add_argument("--verbose", action="store_true", help="show the daemon's log on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kfrouter.router.demo import DemoError, DemoOptions

    try:
        options = DemoOptions(
            duration_s=args.duration,
            agents=args.agents,
            customers=args.customers,
            seed=args.seed,
            port=args.port,
            speed=args.speed,
        )
    except DemoError as exc:
        print(f"kfrouter demo: {exc}", file=sys.stderr)
        return 2
    quiet = logging.getLogger("kfrouter")
    level = quiet.level
    if args.verbose:
        from kfrouter.router.logs import setup_logging

        setup_logging("info", False)
    else:
        quiet.setLevel(logging.ERROR)  # the daemon's warnings (a slow poll …) would drown the story
    try:
        asyncio.run(_main(options))
    except DemoError as exc:
        print(f"kfrouter demo: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is taken
        print(f"kfrouter demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.verbose:
            quiet.setLevel(level)
    return 0


async def _main(options: object) -> None:
    from kfrouter.router.demo import DemoOptions, run_demo

    assert isinstance(options, DemoOptions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await run_demo(options, sys.stdout, stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
