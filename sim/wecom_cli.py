"""``kfrouter fake-wecom``: run the fake WeCom 微信客服 server in the foreground until SIGINT/SIGTERM.

Prints the base URL (one line, flushed) so scripts can read it, then one line per kf account created
with ``--account`` (``open_kfid name``), then serves until a signal arrives and exits 0. Options map to
``WeComOptions`` switches with ``--option NAME=JSON`` (repeatable). Bad arguments exit 2 with a message
naming the argument. What this command shares with ``kfrouter fake-wechat`` is ``sim.fake_commands``.
"""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from kfrouter.sim import fake_commands as fc
from kfrouter.sim.wecom_options import WeComOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = fc.add_command(
        sub,
        "fake-wecom",
        help="run a fake WeCom 微信客服 API server (for tests and demos)",
        description="Serve gettoken and the cgi-bin/kf/ API of WeCom 微信客服, callbacks and a /_fake/ control API.",
    )
    p.add_argument("--corpid", required=True, help="the corp id (企业ID) gettoken accepts")
    p.add_argument("--secret", required=True, help="the 微信客服 app's secret gettoken accepts")
    p.add_argument("--callback-url", help="the app's callback URL (接收事件服务器) to notify of new messages")
    p.add_argument("--token", help="callback Token used to sign callbacks (required with --callback-url)")
    p.add_argument("--aes-key", help="43-character EncodingAESKey (required with --callback-url)")
    p.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="NAME[=OPEN_KFID]",
        help="create a kf account at start (repeatable); its open_kfid is printed",
    )
    p.add_argument(
        "--servicer",
        action="append",
        default=[],
        metavar="USERID",
        help="bind a servicer (接待中) to every --account (repeatable)",
    )
    fc.add_tuning_arguments(p, "WeComOptions", "trans_same_servicer_errcode=95016")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return fc.run("fake-wecom", lambda: _prepare(args))


def _prepare(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    if args.callback_url and not (args.token and args.aes_key):
        raise ValueError("--callback-url needs --token and --aes-key (WeCom always encrypts)")
    return _serve(args, fc.options_from(args.option, WeComOptions))


async def _serve(args: argparse.Namespace, options: WeComOptions) -> None:
    from kfrouter.sim.wecom_server import FakeWeCom

    fake = FakeWeCom(
        args.corpid,
        args.secret,
        callback_url=args.callback_url,
        token=args.token,
        aes_key=args.aes_key,
        options=options,
        seed=args.seed,
    )

    def add_accounts() -> list[str]:
        created = []
        for spec in args.account:
            name, _sep, kfid = spec.partition("=")
            try:
                created.append((fake.model.add_account(name, open_kfid=kfid or None), name))
            except ValueError as exc:
                raise ValueError(f"--account {spec!r}: {exc}") from None
        for userid in args.servicer:
            for kfid, _name in created:
                try:
                    fake.model.add_servicer(kfid, userid)
                except ValueError as exc:
                    raise ValueError(f"--servicer {userid!r}: {exc}") from None
        return [f"{kfid} {name}" for kfid, name in created]

    await fc.serve_until_signal(fake, args.host, args.port, add_accounts)
