"""``kfrouter check-config FILE`` and ``kfrouter trace export --db FILE --out TRACE.jsonl``.

Exit codes: 0 success, 2 invalid input (a bad config file, a database that cannot be read).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("check-config", help="validate a kfrouter.toml and summarise it")
    p.add_argument("file", metavar="FILE", help="path of the kfrouter.toml to check")
    p.set_defaults(func=_check_config)

    t = sub.add_parser("trace", help="recorded traffic as a simulator trace")
    tsub = t.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    e = tsub.add_parser("export", help="write the store's session log as a trace (JSON Lines)")
    e.add_argument(
        "--db", required=True, metavar="FILE|URL", help="the kfrouter SQLite store, or a postgresql:// URL"
    )
    e.add_argument("--appid", help="the account to export (needed with a postgresql:// URL)")
    e.add_argument("--out", required=True, metavar="TRACE.jsonl", help="output file ('-' for stdout)")
    e.add_argument(
        "--since",
        type=_since,
        default=None,
        metavar="TIME",
        help="only customers who arrived at or after TIME (unix seconds or ISO 8601; naive = UTC)",
    )
    e.add_argument("--name", default="recorded", help="trace name written in the header")
    e.add_argument(
        "--default-capacity",
        type=int,
        default=3,
        metavar="N",
        help="max_sessions for agents whose capacity was never recorded (default 3)",
    )
    e.set_defaults(func=_trace_export)


def _since(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected unix seconds or an ISO 8601 time such as 2024-05-01T08:00:00+08:00, got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _check_config(args: argparse.Namespace) -> int:
    from kfrouter.router.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    env = sorted(origin for origin in cfg.secret_sources.values() if origin != "file")
    from_env = f"secrets from the environment: {', '.join(env)}" if env else ""
    if not cfg.accounts:
        print(f"ok: {_summary(cfg)}" + (f"; {from_env}" if from_env else ""))
        return 0
    print(f"ok: {len(cfg.accounts)} accounts")
    for account in cfg.accounts:
        print(f"  {account.account}: {_summary(account)}")
    if from_env:
        print(f"  {from_env}")
    return 0


def _summary(cfg: Any) -> str:
    """One account's line of ``check-config``."""
    policies = ", ".join(sorted(cfg.policy_names()))
    store = cfg.store.path if cfg.store.url is None else _without_password(cfg.store.url)
    return (
        f"{len(cfg.groups)} groups, {len(cfg.agents)} agents, {len(cfg.routing.rules)} routing rules, "
        f"{len(cfg.routing.customers)} listed customers; mode {cfg.routing.mode}; policies: {policies}; "
        + (
            f"wecom {cfg.wecom.corpid}, {len(cfg.wecom.open_kfids)} kf account(s)"
            if cfg.wecom is not None
            else f"encoding {cfg.oa.encoding}"
        )
        + f"; store {store}"
    )


def _without_password(url: str) -> str:
    """A store URL as it may be printed: the password replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _trace_export(args: argparse.Namespace) -> int:
    import sqlite3
    from pathlib import Path

    from kfrouter.router.edges.store import Store, StoreError

    if args.default_capacity < 1:
        print("--default-capacity must be >= 1", file=sys.stderr)
        return 2
    postgres = args.db.startswith(("postgresql://", "postgres://"))
    where = _without_password(args.db) if postgres else args.db
    if postgres and not args.appid:
        print(
            f"{where}: --appid is needed to export from PostgreSQL (one account at a time)", file=sys.stderr
        )
        return 2
    if not postgres and not Path(args.db).is_file():
        print(f"{args.db}: no such database file", file=sys.stderr)
        return 2
    try:
        with Store(args.db, appid=args.appid) as store:
            if args.out == "-":
                stats = store.export_trace(
                    sys.stdout, since=args.since, name=args.name, default_capacity=args.default_capacity
                )
            else:
                with open(args.out, "w", encoding="utf-8") as out:
                    stats = store.export_trace(
                        out, since=args.since, name=args.name, default_capacity=args.default_capacity
                    )
    except (StoreError, sqlite3.Error, OSError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {stats.arrivals} arrivals ({stats.served} served, {stats.left} left), {stats.agent_lines} agent "
        f"lines; skipped {stats.open} customers still waiting or in session",
        file=sys.stderr,
    )
    return 0
