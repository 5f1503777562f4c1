"""What both fake commands share (``kfrouter fake-wechat``: sim/fake_cli.py, ``kfrouter fake-wecom``:
sim/wecom_cli.py): the address, seed and ``--option NAME=JSON`` arguments, and running a fake in the
foreground until SIGINT/SIGTERM.

Rules: the base URL is printed first (one line, flushed, so scripts can read it), then any lines the
command's setup gives. Exit codes: 0 after a signal; 2 for bad arguments (a ``ValueError`` while the
command checks them), with the message naming the argument; 1 when serving fails (a ``ValueError`` or
``OSError`` from the fake or the port). Messages go to stderr as ``COMMAND: message``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from kfrouter.sim.fake_options import SwitchesBase

if TYPE_CHECKING:  # the servers are imported when a command runs, not when the CLI starts
    from kfrouter.sim.fake_server_base import FakeServerBase

OptionsT = TypeVar("OptionsT", bound=SwitchesBase)


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, help: str, description: str
) -> argparse.ArgumentParser:
    """The parser of the fake command ``name``, with ``--host`` and ``--port``."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
    return p


def add_tuning_arguments(p: argparse.ArgumentParser, options: str, example: str) -> None:
    """``--seed`` and ``--option NAME=JSON`` (a switch of the ``options`` class, e.g. ``example``)."""
    p.add_argument("--seed", type=int, default=0, help="seed of the fake's random draws")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help=f"set a {options} switch, e.g. --option {example} (repeatable)",
    )


def parse_option_pairs(pairs: list[str]) -> dict[str, object]:
    """``--option NAME=JSON`` values as a dict (a value that is not JSON is taken as a bare word)."""
    changes: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--option {pair!r}: expected NAME=JSON")
        try:
            changes[name.strip()] = json.loads(raw)
        except ValueError:
            changes[name.strip()] = raw  # a bare word such as legacy
    return changes


def options_from(pairs: list[str], make: Callable[[], OptionsT]) -> OptionsT:
    """``make()`` with the ``--option`` pairs applied (a ``ValueError`` names the bad one)."""
    options = make()
    options.update(parse_option_pairs(pairs))
    return options


def run(command: str, prepare: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """``prepare()`` checks the arguments and returns the coroutine that serves; see the module docstring
    for the exit codes."""
    try:
        serve = prepare()
    except ValueError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve)
    except (ValueError, OSError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve_until_signal(
    fake: FakeServerBase[Any], host: str, port: int, setup: Callable[[], Iterable[str]]
) -> None:
    """Serve ``fake`` on ``host:port``, run ``setup()`` and print the base URL and setup's lines, then
    serve until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake.serve(host, port) as base_url:
        lines = list(setup())
        print(base_url, flush=True)
        for line in lines:
            print(line, flush=True)
        await stop.wait()
