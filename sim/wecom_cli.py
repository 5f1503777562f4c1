"""``kfrouter fake-wecom``: run the fake WeCom 微信客服 server in the foreground until SIGINT/SIGTERM.

Prints the base URL (one line, flushed) so scripts can read it, then one line per kf account created
with ``--account`` (``open_kfid name``), then serves until a signal arrives and exits 0. Options map to
``WeComOptions`` switches with ``--option NAME=JSON`` (repeatable). Bad arguments exit 2 with a message
naming the argument.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from kfrouter.sim.fake_cli import parse_option_pairs
from kfrouter.sim.wecom_options import WeComOptions


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-wecom",
        help="run a fake WeCom 微信客服 API server (for tests and demos)",
        description="Serve gettoken and the cgi-bin/kf/ API of WeCom 微信客服, callbacks and a /_fake/ control API.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = any free port)")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the fake's random draws")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="set a WeComOptions switch, e.g. --option trans_same_servicer_errcode=95016 (repeatable)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.callback_url and not (args.token and args.aes_key):
        print(
            "fake-wecom: --callback-url needs --token and --aes-key (WeCom always encrypts)", file=sys.stderr
        )
        return 2
    try:
        options = WeComOptions()
        options.update(parse_option_pairs(args.option))
    except ValueError as exc:
        print(f"fake-wecom: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args, options))
    except (ValueError, OSError) as exc:
        print(f"fake-wecom: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace, options: WeComOptions) -> None:
    from kfrouter.sim.wecom_server import running_fake_wecom

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_fake_wecom(
        args.corpid,
        args.secret,
        callback_url=args.callback_url,
        token=args.token,
        aes_key=args.aes_key,
        options=options,
        host=args.host,
        port=args.port,
        seed=args.seed,
    ) as fake:
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
        print(fake.base_url, flush=True)
        for kfid, name in created:
            print(f"{kfid} {name}", flush=True)
        await stop.wait()
