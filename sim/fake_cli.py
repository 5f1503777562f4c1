"""``kfrouter fake-wechat``: run the fake WeChat server in the foreground until SIGINT/SIGTERM.

Prints the base URL (one line, flushed) so scripts can read it, then serves until a signal arrives and
exits 0. Options map to ``FakeOptions`` switches with ``--option NAME=JSON`` (repeatable). What this
command shares with ``kfrouter fake-wecom`` (arguments, exit codes) is ``sim.fake_commands``.
"""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from kfrouter.sim import fake_commands as fc
from kfrouter.sim.fake_options import FakeOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = fc.add_command(
        sub,
        "fake-wechat",
        help="run a fake WeChat kf API server (for tests and demos)",
        description="Serve the WeChat customer-service API, token endpoints and a /_fake/ control API.",
    )
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
    fc.add_tuning_arguments(p, "FakeOptions", "wechat_auto_accept=true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return fc.run("fake-wechat", lambda: _prepare(args))


def _prepare(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    if args.webhook and not args.token:
        raise ValueError("--webhook needs --token (pushes are signed with it)")
    options = fc.options_from(args.option, FakeOptions)
    extra = [_app_pair(a) for a in args.app]
    return _serve(args, options, extra)


def _app_pair(value: str) -> tuple[str, str]:
    appid, sep, secret = value.partition(":")
    if not sep or not appid or not secret:
        raise ValueError(f"--app {value!r}: expected APPID:SECRET")
    return appid, secret


async def _serve(args: argparse.Namespace, options: FakeOptions, extra: list[tuple[str, str]]) -> None:
    from kfrouter.sim.fake_server import FakeWeChat

    fake = FakeWeChat(
        args.appid,
        args.secret,
        webhook=args.webhook or None,
        token=args.token,
        aes_key=args.aes_key,
        options=options,
        seed=args.seed,
        wxid=args.wxid,
    )

    def add_apps() -> list[str]:
        for appid, secret in extra:
            fake.add_app(appid, secret, wxid=args.wxid)
        return []

    await fc.serve_until_signal(fake, args.host, args.port, add_apps)
