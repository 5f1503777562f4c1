"""``kfrouter fake-wechat``: run the fake WeChat server in the foreground until SIGINT/SIGTERM.

Prints the base URL (one line, flushed) so scripts can read it, then serves until a signal arrives and
exits 0. Options map to ``FakeOptions`` switches with ``--option NAME=JSON`` (repeatable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from kfrouter.sim.fake_options import FakeOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-wechat",
        help="run a fake WeChat kf API server (for tests and demos)",
        description="Serve the WeChat customer-service API, token endpoints and a /_fake/ control API.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
    p.add_argument("--appid", required=True, help="the Official Account's appid")
    p.add_argument("--secret", required=True, help="the AppSecret the token endpoints accept")
    p.add_argument("--wxid", default="test", help="the account's WeChat ID, suffix of kf accounts")
    p.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="APPID:SECRET",
        help="another Official Account served by the same fake (repeatable; its own agents and tokens)",
    )
    p.add_argument(
        "--webhook",
        action="append",
        default=[],
        help="the developer's callback URL to push messages and events to; '{appid}' in it is replaced "
        "by each account's appid (e.g. http://127.0.0.1:8080/wechat/{appid}); repeat it for several "
        "daemons: each delivery attempt goes to the next in turn, as a load balancer would send it",
    )
    p.add_argument("--token", help="callback token used to sign pushes (required with --webhook)")
    p.add_argument("--aes-key", help="43-character EncodingAESKey: pushes are encrypted (safe mode)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fake's random draws")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="set a FakeOptions switch, e.g. --option wechat_auto_accept=true (repeatable)",
    )
    p.set_defaults(func=run)


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


def _options(pairs: list[str]) -> FakeOptions:
    options = FakeOptions()
    options.update(parse_option_pairs(pairs))
    return options


def run(args: argparse.Namespace) -> int:
    if args.webhook and not args.token:
        print("fake-wechat: --webhook needs --token (pushes are signed with it)", file=sys.stderr)
        return 2
    try:
        options = _options(args.option)
        extra = [_app_pair(a) for a in args.app]
    except ValueError as exc:
        print(f"fake-wechat: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args, options, extra))
    except (ValueError, OSError) as exc:
        print(f"fake-wechat: {exc}", file=sys.stderr)
        return 1
    return 0


def _app_pair(value: str) -> tuple[str, str]:
    appid, sep, secret = value.partition(":")
    if not sep or not appid or not secret:
        raise ValueError(f"--app {value!r}: expected APPID:SECRET")
    return appid, secret


async def _serve(args: argparse.Namespace, options: FakeOptions, extra: list[tuple[str, str]]) -> None:
    from kfrouter.sim.fake_server import running_fake

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_fake(
        args.appid,
        args.secret,
        webhook=args.webhook or None,
        token=args.token,
        aes_key=args.aes_key,
        options=options,
        host=args.host,
        port=args.port,
        seed=args.seed,
        wxid=args.wxid,
    ) as fake:
        for appid, secret in extra:
            fake.add_app(appid, secret, wxid=args.wxid)
        print(fake.base_url, flush=True)
        await stop.wait()
