"""``kfrouter doctor --config FILE [--json]``: run the checks of ``router.doctor`` and print them.

Text output: one line per check (``ok`` / ``warning`` / ``problem``, the check's name, a short title);
warnings and problems add an indented ``means:`` and ``fix:`` line. ``--json`` prints
``{"checks": [{"name", "status", "title", "detail", "fix"}], "ok": bool}`` instead.

Exit codes: 0 when no check is a problem (warnings allowed), 1 otherwise, 2 when the config does not load.
The run is read-only: WeChat is asked for a token, ``getkflist`` and ``getonlinekflist``, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

import aiohttp

from kfrouter.router.config import Config, ConfigError, load_config
from kfrouter.router.doctor import CheckResult, all_ok, as_json, run_checks, token_mode_for_client
from kfrouter.router.edges.client import WeChatClient

# The doctor answers quickly rather than patiently: one retry of -1, short backoff, short timeouts.
_RETRIES = 1
_BACKOFF_BASE_S = 0.1
_BACKOFF_CAP_S = 0.5
_TIMEOUT_S = 5.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help="check the WeChat side of a deployment and explain what is misconfigured",
        description=(
            "Fetch an access token, read the agent lists and check the local settings; print what is "
            "wrong and where in the Official Account console to fix it. Read-only."
        ),
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the kfrouter.toml to check")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--account", metavar="APPID", help="the account to check, in a file of several ([[accounts]])"
    )
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        if args.json:
            failed = CheckResult(
                name="config",
                status="problem",
                title="the config file does not load",
                detail=str(exc),
                fix=f"Fix the lines above (`kfrouter check-config {args.config}` shows them too).",
            )
            print(json.dumps(as_json([failed]), ensure_ascii=False, indent=2))
        return 2
    appids = [a.account for a in cfg.every_account]
    if args.account is not None or len(appids) > 1:
        if args.account not in appids:
            print(
                f"{cfg.source}: choose the account to check with --account (one of {', '.join(appids)})",
                file=sys.stderr,
            )
            return 2
        cfg = cfg.for_account(args.account)
    # The client logs each refused call; the report below explains them, so keep stderr quiet unless
    # the caller configured logging (a NullHandler stops Python's last-resort handler, nothing else).
    if not logging.getLogger().handlers:
        logging.getLogger("kfrouter").addHandler(logging.NullHandler())
    results = asyncio.run(_run(cfg))
    if args.json:
        print(json.dumps(as_json(results), ensure_ascii=False, indent=2))
    else:
        print(render_text(results, source=cfg.source))
    return 0 if all_ok(results) else 1


async def _run(cfg: Config) -> list[CheckResult]:
    async with aiohttp.ClientSession() as http:
        if cfg.wecom is not None:  # a WeCom 微信客服 account: its own checks (router/wecom_doctor.py)
            from kfrouter.router.edges.wecom_client import WeComKfClient
            from kfrouter.router.wecom_doctor import run_wecom_checks

            kf = WeComKfClient(
                http,
                cfg.wecom.corpid,
                cfg.wecom.secret,
                cfg.wecom.api_base,
                retries=_RETRIES,
                backoff_base=_BACKOFF_BASE_S,
                backoff_cap=_BACKOFF_CAP_S,
                timeout_s=_TIMEOUT_S,
            )
            return await run_wecom_checks(cfg.wecom, kf)
        client = WeChatClient(
            http,
            cfg.oa.appid,
            cfg.oa.secret,
            base_url=cfg.oa.api_base,
            token_mode=token_mode_for_client(cfg.oa.token_mode),
            retries=_RETRIES,
            backoff_base=_BACKOFF_BASE_S,
            backoff_cap=_BACKOFF_CAP_S,
            timeout_s=_TIMEOUT_S,
        )
        return await run_checks(cfg, client, http=http)


def render_text(results: Sequence[CheckResult], *, source: str = "") -> str:
    """The human-readable report: one line per check, means/fix lines for warnings and problems."""
    width = max((len(r.name) for r in results), default=0)
    lines = [f"kfrouter doctor: {source}"] if source else []
    for r in results:
        lines.append(f"{r.status:<8} {r.name:<{width}}  {r.title}")
        if r.status != "ok":
            pad = " " * (9 + width + 2)
            if r.detail:
                lines.append(f"{pad}means: {r.detail}")
            if r.fix:
                lines.append(f"{pad}fix:   {r.fix}")
    problems = sum(r.status == "problem" for r in results)
    warnings = sum(r.status == "warning" for r in results)
    if problems:
        verdict = f"{_n(problems, 'problem')}, {_n(warnings, 'warning')}: kfrouter will not work properly until the problems are fixed"
    elif warnings:
        verdict = f"no problems, {_n(warnings, 'warning')}"
    else:
        verdict = "all checks passed"
    lines.append(verdict)
    return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
