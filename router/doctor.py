"""``kfrouter doctor``: check a deployment against WeChat and say in plain words what is misconfigured.

Each check is an ``async`` function ``check_x(probe) -> CheckResult`` with one job. ``Probe`` holds the
config, the API client and the answers already fetched (one token fetch, one ``getkflist``, one
``getonlinekflist`` per run), so checks that need the same answer share it and a check whose input is
missing (no token, no account list) reports "not checked" instead of failing again (the memory is
``router.doctor_base.ProbeBase``). ``run_checks`` runs them in order; the daemon calls it at start, the
CLI (``router.doctor_cli``) prints the results.

Rules of this module:

- Read-only towards WeChat: only the token endpoint, ``getkflist`` and ``getonlinekflist`` are called.
  Nothing is created, deleted or sent. Locally nothing is created either (a missing store directory is
  reported, not made).
- Every warning and problem says what it means and what to do, naming the place in the Official
  Account console (公众平台) where the setting lives. ``explain(errcode)`` gives the same words for an
  errcode met during operation, so the daemon can log one sentence instead of a stream of traces.
- Secrets never appear in a result: WeChat's errmsg passes through the client's redaction, URLs lose
  their user-info, the token and keys are described, never shown.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from kfrouter.router.config import Config
from kfrouter.router.core.model import AgentRow
from kfrouter.router.doctor_base import (
    Advice,
    CheckResult,
    Platform,
    ProbeBase,
    Status,
    all_ok,
    as_json,
    check_aes_key_round_trip,
    check_callback_token_format,
    every,
    ok,
    plural,
    problem,
    problem_from_error,
    run_check_list,
    skipped,
    verb,
    warning,
)
from kfrouter.router.edges.client import KfAccountInfo, WeChatClient
from kfrouter.router.edges.errors import SystemBusy, WeChatError
from kfrouter.router.edges.token import BASIC_TOKEN_PATH, STABLE_TOKEN_PATH
from kfrouter.router.wechat.crypto import SafeModeCrypto

# Where things live in the Official Account console. Menu names move between console versions
# (older: 开发 → 基本配置; newer: 设置与开发 → 开发接口管理 → 基本配置), so they are kept in one place.
CONSOLE = "the Official Account console (公众平台, mp.weixin.qq.com)"
BASIC_CONFIG = "设置与开发 → 基本配置 (newer consoles: 设置与开发 → 开发接口管理 → 基本配置)"
KF_FEATURE = "the customer-service feature (客服功能; add it from 添加功能插件 if the menu lacks it)"
KF_CLIENT = "the customer-service client (网页版客服工具 at mpkf.weixin.qq.com, or the mobile client)"

PLATFORM = Platform(
    name="WeChat",
    api_base_key="wechat.api_base",
    default_api_base="https://api.weixin.qq.com",
    unknown_errcode_fix="Look the errcode up in WeChat's global error table; run `kfrouter doctor` again afterwards.",
)

SQLITE_MAGIC = b"SQLite format 3\x00"
_IP_IN_ERRMSG = re.compile(r"invalid ip ([0-9A-Fa-f.:]+)")


# ============================================================================ plain-words errcodes


_SECRET_FIX = (
    f"Copy 开发者密码(AppSecret) from {CONSOLE} → {BASIC_CONFIG} into wechat.secret (or the "
    "KFROUTER_SECRET environment variable, which wins over the file). If it was reset (重置), the old "
    "one stopped working at once: update every program that uses it."
)
_KF_ENABLE_FIX = (
    f"In {CONSOLE}, open {KF_FEATURE} and enable the new customer service (新版客服功能). WeChat can take "
    "a while to activate it after it is switched on: wait a few minutes and run `kfrouter doctor` again."
)
_BIND_FIX = (
    f"In {KF_FEATURE}, invite each agent's WeChat ID to their account (the API call is "
    "kfaccount/inviteworker); the agent accepts the invitation in WeChat before it expires. A 'waiting' "
    "invitation only needs accepting; a 'rejected' or 'expired' one needs a new invitation."
)

ADVICE: dict[int, Advice] = {
    -1: Advice(
        title="WeChat answered 'system busy' (-1)",
        meaning="WeChat could not serve the request right now; kfrouter retries with backoff.",
        fix=(
            "Nothing to change if it is rare. If every customer-service call keeps answering -1 while "
            "the access token works, the new customer service (新版客服功能) is usually not enabled: "
            + _KF_ENABLE_FIX
        ),
    ),
    -1000: Advice(
        title="WeChat answered 'system error' (-1000)",
        meaning="WeChat failed internally; kfrouter retries with backoff.",
        fix="Nothing to change if it is rare; if it persists, check WeChat's status announcements.",
    ),
    40001: Advice(
        title="the access token was refused as invalid or not the latest (40001)",
        meaning=(
            "Usually another program fetched a new token for the same AppID with the classic endpoint "
            "(cgi-bin/token), which invalidates older tokens after 5 minutes. kfrouter refreshes its "
            "token and retries once."
        ),
        fix=(
            "Let every program that uses this AppID fetch tokens with stable_token "
            "(wechat.token_mode = 'stable'), or let only one program fetch tokens and share them."
        ),
    ),
    40013: Advice(
        title="WeChat does not know this AppID (40013)",
        meaning="wechat.appid is not the AppID of an Official Account (a typo, or another account's ID).",
        fix=(
            f"Copy 开发者ID(AppID) from {CONSOLE} → {BASIC_CONFIG} into wechat.appid (or KFROUTER_APPID); "
            "it starts with 'wx'."
        ),
    ),
    40125: Advice(
        title="the AppSecret is wrong (40125)",
        meaning="WeChat refused wechat.secret for this AppID, so no access token can be fetched.",
        fix=_SECRET_FIX,
    ),
    40164: Advice(
        title="this server's IP address is not on the IP whitelist (40164)",
        meaning=(
            "WeChat only hands out access tokens to callers whose public IP is on the account's IP "
            "whitelist (IP白名单)."
        ),
        fix=(
            f"Add this server's public (egress) IP to IP白名单 in {CONSOLE} → {BASIC_CONFIG}; an "
            "administrator confirms by scanning a QR code. Behind NAT or a proxy, the address WeChat "
            "sees is the gateway's."
        ),
    ),
    40243: Advice(
        title="the AppSecret is frozen (40243)",
        meaning="The account's AppSecret has been frozen (冻结), so no access token can be fetched.",
        fix=(
            f"In {CONSOLE} → {BASIC_CONFIG}, unfreeze (解冻) or reset (重置) 开发者密码(AppSecret); after "
            "a reset put the new one in wechat.secret (or KFROUTER_SECRET)."
        ),
    ),
    43003: Advice(
        title="WeChat requires https (43003)",
        meaning="The request reached WeChat over plain http.",
        fix="Set wechat.api_base to an https URL (the default https://api.weixin.qq.com).",
    ),
    45009: Advice(
        title="the daily API quota is used up (45009)",
        meaning=(
            "This API has been called more times today than WeChat allows (cgi-bin/token: 2000 a day), "
            "so further calls fail until the quota resets."
        ),
        fix=(
            "Find the program calling too often (a token fetched on every request is the usual cause); "
            "the quota resets daily, and 设置与开发 → 接口权限 shows the limits."
        ),
    ),
    45011: Advice(
        title="the per-minute API limit was hit (45011)",
        meaning="Too many calls of one API within a minute; kfrouter does not hot-retry it.",
        fix="Lower the polling rates in [polling] or stop other programs hammering the same API.",
    ),
    48001: Advice(
        title="this account is not authorised for the API (48001)",
        meaning=(
            "The Official Account does not have the permission for this interface; the customer-service "
            "APIs need a verified (认证) account."
        ),
        fix=f"Check the interface's status in {CONSOLE} → 设置与开发 → 接口权限, and complete verification (微信认证).",
    ),
    65400: Advice(
        title="the new customer service (新版客服功能) is not enabled (65400)",
        meaning=(
            "Every customer-service API call answers 65400, so kfrouter cannot list agents or open "
            "sessions. Right after enabling it WeChat may answer this for a while."
        ),
        fix=_KF_ENABLE_FIX,
    ),
    65401: Advice(
        title="the customer-service account does not exist (65401)",
        meaning="The kf_account named in the call is not one of this Official Account's agent accounts.",
        fix=(
            f"Create it in {KF_FEATURE} (kf_account is prefix@the account's WeChat ID), or correct the name "
            "in the config. Accounts made only in the console have been reported to answer 65401: create "
            "them through kfaccount/add."
        ),
    ),
    65402: Advice(
        title="the customer-service account is not bound to a WeChat user (65402)",
        meaning=(
            "WeChat refuses to open sessions for an account nobody has bound with their WeChat ID "
            "('the custom service account need to bind a wechat user'); customers routed to it fail."
        ),
        fix=_BIND_FIX,
    ),
    65415: Advice(
        title="the agent is not online (65415)",
        meaning="A session was offered to an agent who is logged out; kfrouter routes the customer again.",
        fix=f"Agents log in to {KF_CLIENT} to receive customers.",
    ),
}
ADVICE[41002] = Advice(
    title="the AppID is missing (41002)",
    meaning="The token request carried no AppID.",
    fix=ADVICE[40013].fix,
)
ADVICE[41004] = Advice(
    title="the AppSecret is missing (41004)",
    meaning="The token request carried no AppSecret.",
    fix=_SECRET_FIX,
)
# From the token endpoint itself, 40001 (cgi-bin/token) and 40125 (stable_token) mean a wrong secret.
_TOKEN_ENDPOINT_ADVICE: dict[int, Advice] = {
    40001: Advice(
        title="the AppSecret is wrong (40001 from the token endpoint)",
        meaning="WeChat refused wechat.secret for this AppID, so no access token can be fetched.",
        fix=_SECRET_FIX,
    ),
}


def advice(errcode: int, *, token_request: bool = False) -> Advice | None:
    """The plain-words advice for ``errcode``; ``token_request`` when it came from the token endpoint."""
    if token_request and errcode in _TOKEN_ENDPOINT_ADVICE:
        return _TOKEN_ENDPOINT_ADVICE[errcode]
    return ADVICE.get(errcode)


def explain(errcode: int, *, token_request: bool = False) -> str | None:
    """One paragraph for an errcode met during operation (None for codes that need no operator),
    e.g. ``explain(65400)`` names 新版客服功能 and where to enable it."""
    a = advice(errcode, token_request=token_request)
    return None if a is None else a.explained()


def ip_from_errmsg(errmsg: str) -> str | None:
    """The caller IP WeChat quotes in a 40164 errmsg ('invalid ip 1.2.3.4 ipv6 ..., not in whitelist')."""
    m = _IP_IN_ERRMSG.search(errmsg)
    if m is None:
        return None
    raw = m.group(1)
    for candidate in (raw, raw.rstrip(".:")):  # "invalid ip 1.2.3.4." : a sentence's full stop
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


# ============================================================================ shared answers


class Probe(ProbeBase[WeChatClient]):
    """One doctor run's inputs and the WeChat answers fetched so far (each fetched at most once).

    ``http``: the session used to probe the upstream URL (a short-lived one is made when None).
    """

    credentials_check = "credentials"

    def __init__(self, config: Config, client: WeChatClient, *, http: aiohttp.ClientSession | None = None):
        super().__init__(client)
        self.config = config
        self.http = http

    async def kf_list(self) -> list[KfAccountInfo] | WeChatError:
        return await self.answer("getkflist", self.client.get_kf_list)

    async def kf_list_or_skipped(self, name: str) -> list[KfAccountInfo] | CheckResult:
        """The account list for check ``name``, or its "not checked" result (no token, or no list)."""
        return await self.answer_or_skipped(
            name, self.kf_list, unread="the account list could not be read (see kf-api)"
        )

    async def online(self) -> list[AgentRow] | WeChatError:
        return await self.answer("getonlinekflist", self.client.get_online_kf_list)

    @property
    def token_endpoint(self) -> str:
        return STABLE_TOKEN_PATH if self.client.token_mode == "stable" else BASIC_TOKEN_PATH


Check = Callable[[Probe], Awaitable[CheckResult]]


def _from_error(name: str, exc: WeChatError, *, token_request: bool = False) -> CheckResult:
    """A problem for an error without a more specific reading."""
    return problem_from_error(name, exc, PLATFORM, advice(exc.errcode, token_request=token_request))


def _accounts(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


# ============================================================================ the checks


async def check_credentials(p: Probe) -> CheckResult:
    """1. AppID, AppSecret and caller IP: fetch an access token."""
    name = "credentials"
    endpoint = p.token_endpoint
    exc = await p.token_error()
    if exc is None:
        return ok(name, f"AppID and AppSecret accepted (access token from {endpoint})")
    if isinstance(exc, SystemBusy):
        return problem(
            name,
            "WeChat answered 'system busy' to the token request",
            (
                f"{endpoint} answered {exc.errcode} ({exc.errmsg}) on every attempt, so the credentials "
                "could not be checked and kfrouter could not work right now."
            ),
            "Run `kfrouter doctor` again in a few minutes; if it persists, check WeChat's status notices.",
        )
    ip = ip_from_errmsg(exc.errmsg) if exc.errcode == 40164 else None
    if ip is not None:
        return problem(
            name,
            f"this server's IP address {ip} is not on the IP whitelist (40164)",
            f"WeChat saw the request come from {ip}. {ADVICE[40164].meaning}",
            f"Add {ip} to IP白名单 in {CONSOLE} → {BASIC_CONFIG}; an administrator confirms by scanning a QR code.",
        )
    return _from_error(name, exc, token_request=True)


async def check_kf_api(p: Probe) -> CheckResult:
    """2. The customer-service API answers (getkflist; 65400 or -1 everywhere = not enabled)."""
    name = "kf-api"
    no_token = await p.skipped_without_token(name)
    if no_token is not None:
        return no_token
    listed = await p.kf_list()
    if not isinstance(listed, WeChatError):
        return ok(name, f"customer-service API available ({plural(len(listed), 'agent account')})")
    if isinstance(listed, SystemBusy):
        if isinstance(await p.online(), SystemBusy):
            return problem(
                name,
                "every customer-service call answers 'system busy' (-1)",
                (
                    "getkflist and getonlinekflist both answered -1 after retries while the access token "
                    "works. On a healthy account -1 is rare; on every call it usually means the new "
                    "customer service (新版客服功能) is not enabled."
                ),
                _KF_ENABLE_FIX
                + " If it is enabled, WeChat may really be busy: run `kfrouter doctor` again later.",
            )
        return warning(
            name,
            "getkflist answered 'system busy' (-1)",
            "Other customer-service calls work, so WeChat was probably briefly busy.",
            "Run `kfrouter doctor` again in a minute.",
        )
    return _from_error(name, listed)


async def check_agents_listed(p: Probe) -> CheckResult:
    """3a. There is at least one agent account."""
    name = "agents"
    listed = await p.kf_list_or_skipped(name)
    if isinstance(listed, CheckResult):
        return listed
    if not listed:
        return problem(
            name,
            "the Official Account has no customer-service (agent) accounts",
            "getkflist is empty: there is nobody kfrouter could route a customer to.",
            (
                f"Add agent accounts in {KF_FEATURE} (or with kfaccount/add; the account is "
                "prefix@the account's WeChat ID), then bind each to the agent's WeChat user."
            ),
        )
    return ok(name, f"{plural(len(listed), 'agent account')}: {_accounts([a.kf_account for a in listed])}")


def _binding_state(a: KfAccountInfo) -> str:
    if a.invite_status == "waiting":
        who = f" for {a.invite_wx}" if a.invite_wx else ""
        until = ""
        if a.invite_expire_time:
            when = datetime.fromtimestamp(a.invite_expire_time, UTC).strftime("%Y-%m-%d %H:%M UTC")
            until = f" until {when}"
        return f"invitation{who} waiting to be accepted{until}"
    if a.invite_status:  # "rejected", "expired", or a state WeChat may add
        return f"invitation {a.invite_status}"
    return "never invited"


async def check_agents_bound(p: Probe) -> CheckResult:
    """3b. Every agent account is bound to a WeChat user (``kf_wx`` present)."""
    name = "agents-bound"
    listed = await p.kf_list_or_skipped(name)
    if isinstance(listed, CheckResult):
        return listed
    if not listed:
        return ok(name, "no agent accounts to check (see agents)")
    unbound = [a for a in listed if not a.kf_wx]
    if not unbound:
        n = len(listed)
        return ok(name, f"{every(n, 'agent account')} {verb(n, 'is', 'are')} bound to a WeChat user")
    states = [f"{a.kf_account} ({_binding_state(a)})" for a in unbound]
    return problem(
        name,
        (
            f"{len(unbound)} of {plural(len(listed), 'agent account')} {verb(len(unbound), 'is', 'are')} not bound "
            f"to a WeChat user: {_accounts(states)}"
        ),
        f"{ADVICE[65402].meaning} WeChat answers errcode 65402 for them.",
        _BIND_FIX,
    )


async def check_agents_online(p: Probe) -> CheckResult:
    """3c. Somebody is online now (getonlinekflist); none online is a warning, not a problem."""
    name = "agents-online"
    no_token = await p.skipped_without_token(name)
    if no_token is not None:
        return no_token
    online = await p.online()
    if isinstance(online, WeChatError):
        if isinstance(await p.kf_list(), WeChatError):  # already reported by kf-api
            return skipped(name, "the customer-service API is not available (see kf-api)")
        return _from_error(name, online)
    up = [r.kf_account for r in online if r.online]
    if not up:
        return warning(
            name,
            "no agent is online right now",
            "Customers who ask for a human will wait in the queue until an agent logs in.",
            f"Agents log in to {KF_CLIENT}. Nothing to change if this is outside working hours.",
        )
    return ok(name, f"{plural(len(up), 'agent')} online: {_accounts(up)}")


async def check_group_agents(p: Probe) -> CheckResult:
    """4. Every kf_account the config names (groups, aliases) exists in getkflist."""
    name = "group-agents"
    cfg = p.config
    named: list[tuple[str, str]] = []  # (where in the config, kf_account)
    for i, g in enumerate(cfg.groups):
        named.extend((f"groups[{i}] {g.name!r}", kf) for kf in g.agents)
    named.extend((f"routing.aliases {alias!r}", kf) for alias, kf in cfg.routing.aliases.items())
    if not named:
        return ok(name, "the config names no agents (every agent serves every customer)")
    listed = await p.kf_list_or_skipped(name)
    if isinstance(listed, CheckResult):
        return listed
    existing = {a.kf_account for a in listed}
    missing: dict[str, list[str]] = {}
    for where, kf in named:
        if kf not in existing:
            missing.setdefault(kf, []).append(where)
    if not missing:
        n = len({kf for _w, kf in named})
        return ok(name, f"{every(n, 'agent')} named in the config {verb(n, 'exists', 'exist')}")
    listing = "; ".join(f"{kf} (in {', '.join(where)})" for kf, where in missing.items())
    suffixes = sorted({a.kf_account.partition("@")[2] for a in listed if "@" in a.kf_account})
    hint = ""
    if suffixes and any(kf.partition("@")[2] not in suffixes for kf in missing):
        hint = f" This account's agents end in {', '.join('@' + s for s in suffixes)}."
    return problem(
        name,
        (
            f"{plural(len(missing), 'agent')} named in the config "
            f"{verb(len(missing), 'does', 'do')} not exist in WeChat: {_accounts(list(missing))}"
        ),
        f"Customers routed to them could never be served: {listing}.{hint}",
        (
            f"Correct the names in {cfg.source}, or create the accounts in {KF_FEATURE} "
            "(kf_account is prefix@the account's WeChat ID) and bind them."
        ),
    )


async def check_aes_key(p: Probe) -> CheckResult:
    """5. The EncodingAESKey decodes to 32 bytes and round-trips a test message with the appid."""
    name = "aes-key"
    w = p.config.oa
    if w.aes_key is None:
        return ok(name, f"not used (encoding = {w.encoding!r})")
    keys = {"wechat.aes_key": w.aes_key}
    if w.previous_aes_key is not None:
        keys["wechat.previous_aes_key"] = w.previous_aes_key
    aes_key = w.aes_key
    return check_aes_key_round_trip(
        name,
        keys,
        lambda: SafeModeCrypto(w.token or "doctor", aes_key, w.appid, w.previous_aes_key),
        where=f"{CONSOLE} → {BASIC_CONFIG} → 服务器配置 (消息加解密密钥 EncodingAESKey)",
        id_name="AppID",
        id_key="wechat.appid",
        about_key="",
        ok_title=(
            f"EncodingAESKey is 43 characters (32-byte key) and round-trips a test message for "
            f"{w.appid} (encoding = {w.encoding!r})"
        ),
    )


async def check_callback_token(p: Probe) -> CheckResult:
    """6. The callback Token has WeChat's format (3-32 letters or digits)."""
    return check_callback_token_format(
        "callback-token",
        p.config.oa.token,
        PLATFORM,
        fix=(
            f"Set wechat.token (or KFROUTER_TOKEN) to exactly the Token (令牌) shown in {CONSOLE} → "
            f"{BASIC_CONFIG} → 服务器配置."
        ),
    )


async def check_store_path(p: Probe) -> CheckResult:
    """7. The SQLite store path is writable (nothing is created: a missing directory is reported)."""
    name = "store"
    path = p.config.store.path
    if str(path) == ":memory:":
        return warning(
            name,
            "the store is in memory (:memory:)",
            "Queued customers and the dedup log are lost when kfrouter restarts.",
            "Set [store] path to a file for production.",
        )
    fix = f"Fix the permissions or set [store] path in {p.config.source} to a writable location."
    parent = path.parent
    if path.exists():
        if not path.is_file():
            return problem(
                name,
                f"the store path {path} is not a regular file",
                "SQLite needs a file there.",
                f"Set [store] path in {p.config.source} to a file name, e.g. {path / 'kfrouter.db'}.",
            )
        if not os.access(path, os.R_OK | os.W_OK):
            return problem(
                name, f"the store file {path} is not writable", "kfrouter could not save anything.", fix
            )
        try:
            with path.open("rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as exc:
            return problem(name, f"the store file {path} cannot be read", f"{exc.strerror or exc}.", fix)
        if head and head != SQLITE_MAGIC:
            return problem(
                name,
                f"the store file {path} is not a SQLite database",
                "kfrouter would refuse to open it (or the path points at another file by mistake).",
                f"Point [store] path in {p.config.source} at a new or existing kfrouter database.",
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            return problem(
                name,
                f"the directory {parent} is not writable",
                "SQLite in WAL mode creates its -wal and -shm files next to the database.",
                fix,
            )
        return ok(name, f"store {path} exists and is writable")
    if not parent.exists():
        return problem(
            name,
            f"the store directory {parent} does not exist",
            "kfrouter creates the database file but not its directory.",
            f"Create it (mkdir -p {parent}) with the service user as owner, or change [store] path.",
        )
    if not parent.is_dir():
        return problem(
            name, f"{parent} is not a directory", "The store path's parent must be a directory.", fix
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        return problem(
            name,
            f"the directory {parent} is not writable",
            "kfrouter could not create the database there.",
            fix,
        )
    return ok(name, f"store {path} will be created (directory writable)")


def _safe_url(url: str) -> str:
    """``url`` without user-info (a password in it must not be printed)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def check_upstream(p: Probe) -> CheckResult:
    """8. The upstream URL answers a HEAD request within its timeout (not configured = ok)."""
    name = "upstream"
    srv = p.config.server
    if srv.upstream_url is None:
        return ok(name, "no upstream configured")
    shown = _safe_url(srv.upstream_url)
    timeout = aiohttp.ClientTimeout(total=srv.upstream_timeout_s)
    started = time.perf_counter()
    try:
        if p.http is not None:
            status = await _head(p.http, srv.upstream_url, timeout)
        else:
            async with aiohttp.ClientSession() as http:
                status = await _head(http, srv.upstream_url, timeout)
    except TimeoutError:
        return problem(
            name,
            f"the upstream {shown} did not answer within {srv.upstream_timeout_s:g} s",
            "Pushes that are not for kfrouter are forwarded there; WeChat gives up after 5 s.",
            "Start or speed up the upstream service, or fix server.upstream_url / upstream_timeout_s.",
        )
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return problem(
            name,
            f"the upstream {shown} cannot be reached",
            f"{type(exc).__name__}: {exc}. Pushes that are not for kfrouter are forwarded there.",
            "Start the upstream service, or fix server.upstream_url (host, port, scheme).",
        )
    ms = (time.perf_counter() - started) * 1000
    if status >= 500:
        return warning(
            name,
            f"the upstream {shown} answered HTTP {status}",
            "It is reachable but reports a server error; forwarded pushes may fail.",
            "Check the upstream service's logs.",
        )
    return ok(name, f"upstream {shown} reachable (HTTP {status} in {ms:.0f} ms)")


async def _head(http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout) -> int:
    async with http.head(url, timeout=timeout, allow_redirects=False) as resp:
        return resp.status


CHECKS: tuple[Check, ...] = (
    check_credentials,
    check_kf_api,
    check_agents_listed,
    check_agents_bound,
    check_agents_online,
    check_group_agents,
    check_aes_key,
    check_callback_token,
    check_store_path,
    check_upstream,
)


async def run_checks(
    config: Config,
    client: WeChatClient,
    *,
    http: aiohttp.ClientSession | None = None,
    checks: Sequence[Check] = CHECKS,
) -> list[CheckResult]:
    """Run ``checks`` in order (a check that crashes becomes a problem naming the exception)."""
    return await run_check_list(Probe(config, client, http=http), checks)


def token_mode_for_client(config_mode: str) -> Literal["stable", "basic"]:
    """The client's token mode for the config's ``wechat.token_mode`` ('classic' is the client's 'basic')."""
    return "basic" if config_mode == "classic" else "stable"


__all__ = [
    "ADVICE",
    "CHECKS",
    "Advice",
    "CheckResult",
    "Probe",
    "Status",
    "advice",
    "all_ok",
    "as_json",
    "explain",
    "ip_from_errmsg",
    "run_checks",
]
