"""``kfrouter agents …``, ``kfrouter queue``, ``kfrouter sessions …``, ``kfrouter accounts list``: the admin
API of a running daemon.

Each command is one HTTP call to the daemon's ``/api/`` (docs/admin-api.md) with the standard library's
``urllib`` (no event loop, so it also runs beside a daemon in the same process). Where the daemon is:
``--url``, else ``[server] host/port`` of ``--config``, else ``http://127.0.0.1:8080``. The admin token:
``--admin-token``, else ``KFROUTER_ADMIN_TOKEN``, else ``[server] admin_token`` of ``--config``.

Output: a table, or the daemon's JSON answer with ``--json``. Exit codes: 0 done, 1 the daemon refused
(the message says why: wrong token, unknown agent, a WeChat errcode, …), 2 bad usage or config, 3 the daemon
could not be reached.

A daemon routing several accounts (``[[accounts]]``): ``--account APPID`` sends a command to that account
(``/api/accounts/APPID/...``); without it, the command reaches the only account (a daemon of several
answers 409 and names them). ``kfrouter accounts list`` shows every account: owner, lease, waiting, sessions.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "KFROUTER_ADMIN_TOKEN"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    """A failure to report on stderr with the exit ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ============================================================================================ HTTP


class AdminClient:
    """Calls to the admin API: ``call(method, path, body)`` returns the decoded JSON answer or raises
    ``CliError`` with a message fit for a person."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, account: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.account = account  # the appid whose routes are called (None: the daemon's only account)

    def path_of(self, path: str) -> str:
        """``/api/...`` of the chosen account (``/api/accounts/APPID/...``); other paths unchanged."""
        if self.account is None or not path.startswith("/api/") or path.startswith("/api/accounts"):
            return path
        return f"/api/accounts/{quote(self.account, safe='')}{path.removeprefix('/api')}"

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        file: tuple[str, str, bytes, str] | None = None,  # (field, filename, data, content type)
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data: bytes | None = None
        if file is not None:
            boundary = uuid.uuid4().hex
            data = _multipart(boundary, *file)
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        elif body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        path = self.path_of(path)
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return _decode(resp.read(), self.url + path)
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except OSError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> CliError:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        else:
            why = str(reason)
        return CliError(
            f"the kfrouter daemon is not running at {self.url} ({why}); start it with `kfrouter run "
            "--config kfrouter.toml` or point --url (or --config) at it",
            EXIT_UNREACHABLE,
        )

    def _refused(self, exc: urllib.error.HTTPError) -> CliError:
        try:
            answer = json.loads(exc.read() or b"{}")
        except (ValueError, OSError):
            answer = {}
        message = answer.get("error") if isinstance(answer, dict) else None
        if exc.code == 401:
            return CliError(
                f"the daemon at {self.url} refused the admin token ({message or 'HTTP 401'}): give the "
                f"[server] admin_token of its config with --admin-token, {TOKEN_ENV} or --config",
                EXIT_REFUSED,
            )
        text = f"HTTP {exc.code}: {message or exc.reason}"
        if isinstance(answer, dict) and "errcode" in answer:
            text += f" (WeChat errcode {answer['errcode']})"
        return CliError(text, EXIT_REFUSED)


def _decode(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise CliError(f"{where} did not answer JSON: is this a kfrouter daemon?", EXIT_REFUSED) from None


def _multipart(boundary: str, field: str, filename: str, data: bytes, content_type: str) -> bytes:
    safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{safe}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


# ============================================================================================ setup


def _connection(args: argparse.Namespace) -> AdminClient:
    url: str | None = args.url
    token: str | None = args.admin_token or os.environ.get(TOKEN_ENV) or None
    if args.config is not None and (url is None or token is None):
        from kfrouter.router.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        if url is None:
            host = cfg.server.host
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            url = f"http://{host}:{cfg.server.port}"
        token = token or cfg.server.admin_token
    url = url or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--url must be an http(s) URL such as {DEFAULT_URL}, got {url!r}", EXIT_USAGE)
    if not token:
        raise CliError(
            f"no admin token: give --admin-token, set {TOKEN_ENV}, or --config with [server] admin_token",
            EXIT_USAGE,
        )
    return AdminClient(url, token, timeout=args.timeout, account=getattr(args, "account", None))


def _kf(kf: str) -> str:
    return quote(kf, safe="@")


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


# ============================================================================================ output


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    return f"{_duration(max(0.0, now - t))} ago"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s == float("inf"):
        return "unknown"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m{s % 60:02.0f}s"
    return f"{s // 3600:.0f}h{(s % 3600) // 60:02.0f}m"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _agents_table(answer: Mapping[str, Any]) -> str:
    now = time.time()
    rows = []
    for a in answer.get("agents", []):
        if a.get("known_to_engine") is False:
            state = "not seen"
            load = "-"
        else:
            state = ("online" if a.get("online") else "offline") + (", paused" if a.get("paused") else "")
            load = f"{a.get('load', 0)}/{a.get('capacity', 0)}"
        wechat = a.get("wechat")
        row = [
            a["kf_account"],
            a.get("nickname") or (wechat or {}).get("nickname") or "",
            state,
            ",".join(a.get("groups") or a.get("configured_groups") or []) or "(any)",
            load,
            _ago(a.get("last_assigned_at"), now),
        ]
        if "wechat" in a:
            if wechat is None:
                row.append("not in getkflist")
            elif wechat.get("kf_wx"):
                row.append(f"bound to {wechat['kf_wx']}")
            elif wechat.get("invite_wx"):
                row.append(f"invited {wechat['invite_wx']} ({wechat.get('invite_status')})")
            else:
                row.append("not bound")
        rows.append(row)
    headers = ["AGENT", "NICKNAME", "STATUS", "GROUPS", "LOAD", "LAST ASSIGNED"]
    if any("wechat" in a for a in answer.get("agents", [])):
        headers.append("WECHAT")
    if not rows:
        return "no agents known yet"
    return _table(headers, rows)


def _queue_table(answer: Mapping[str, Any]) -> str:
    waiting = answer.get("waiting", [])
    lines = []
    if waiting:
        rows = [
            [
                w["position"],
                w["openid"],
                w.get("group") or "(any)",
                w.get("priority", 0),
                _duration(w.get("waited_s")),
                _duration(w.get("estimate_s")),
                w.get("preferred_agent") or "",
            ]
            for w in waiting
        ]
        lines.append(_table(["POS", "CUSTOMER", "GROUP", "PRIO", "WAITED", "ESTIMATE", "WANTS"], rows))
    else:
        lines.append("nobody is waiting")
    reservations = answer.get("reservations", [])
    if reservations:
        lines.append("")
        lines.append(
            _table(
                ["BEING ASSIGNED", "AGENT", "EXPIRES IN"],
                [[r["openid"], r["kf_account"], _duration(r.get("expires_in_s"))] for r in reservations],
            )
        )
    return "\n".join(lines)


def _sessions_table(answer: Mapping[str, Any]) -> str:
    sessions = answer.get("sessions", [])
    if not sessions:
        return "no open sessions"
    return _table(
        ["CUSTOMER", "AGENT", "DURATION"],
        [[s["openid"], s["kf_account"], _duration(s.get("duration_s"))] for s in sessions],
    )


def _agent_line(a: Mapping[str, Any]) -> str:
    return _agents_table({"agents": [a]})


# ============================================================================================ commands

Action = Callable[[AdminClient, argparse.Namespace], tuple[Any, str]]


def _agents_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("GET", "/api/agents" + ("?wechat=1" if a.wechat else ""))
    return answer, _agents_table(answer)


def _agents_add(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body: dict[str, Any] = {"kf_account": a.kf_account, "nickname": a.nickname}
    body.update(_settings_body(a))
    answer = c.call("POST", "/api/agents", body)
    return (
        answer,
        f"added {a.kf_account} (ask its WeChat user to bind it: kfrouter agents invite)\n"
        + _agent_line(answer),
    )


def _agents_update(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("PATCH", f"/api/agents/{_kf(a.kf_account)}", {"nickname": a.nickname})
    return answer, f"renamed {a.kf_account} to {a.nickname!r}"


def _agents_delete(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("DELETE", f"/api/agents/{_kf(a.kf_account)}")
    text = f"deleted {a.kf_account}"
    if answer.get("note"):
        text += f"\nnote: {answer['note']}"
    return answer, text


def _settings_body(a: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if getattr(a, "groups", None) is not None:
        body["groups"] = _names(a.groups)
    if getattr(a, "capacity", None) is not None:
        body["max_sessions"] = a.capacity
    if getattr(a, "clear_capacity", False):
        body["max_sessions"] = None
    if getattr(a, "paused", None) is not None:
        body["paused"] = a.paused
    if getattr(a, "tags", None) is not None:
        body["tags"] = _names(a.tags)
    return body


def _agents_set(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body = _settings_body(a)
    if not body:
        raise CliError(
            "nothing to set: give --groups, --capacity, --clear-capacity, --pause, --resume or --tags",
            EXIT_USAGE,
        )
    answer = c.call("PATCH", f"/api/agents/{_kf(a.kf_account)}/settings", body)
    return answer, f"settings of {a.kf_account} saved\n" + _agent_line(answer)


def _agents_invite(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("POST", f"/api/agents/{_kf(a.kf_account)}/invite", {"invite_wx": a.wechat_id})
    return answer, f"invited WeChat user {a.wechat_id} to bind {a.kf_account} (they accept in WeChat)"


def _agents_avatar(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    path = Path(a.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    answer = c.call("POST", f"/api/agents/{_kf(a.kf_account)}/avatar", file=("media", path.name, data, ctype))
    return answer, f"avatar of {a.kf_account} uploaded ({len(data)} bytes)"


def _queue(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("GET", "/api/queue")
    return answer, _queue_table(answer)


def _sessions_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("GET", "/api/sessions")
    return answer, _sessions_table(answer)


def _sessions_close(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    body = {"kf_account": a.agent} if a.agent else None
    answer = c.call("POST", f"/api/sessions/{quote(a.openid, safe='')}/close", body)
    return answer, f"closed the session of {a.openid} with {answer.get('kf_account')}"


def _sessions_reassign(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("POST", f"/api/sessions/{quote(a.openid, safe='')}/reassign", {"to": a.to})
    if answer.get("status") == "unchanged":
        return answer, f"{a.openid} is already with {a.to}"
    target = a.to or "the next free agent of their group"
    return answer, f"closing the session of {a.openid} with {answer.get('from')}; then assigning to {target}"


def _accounts_table(answer: Mapping[str, Any]) -> str:
    now = time.time()
    rows = []
    for a in answer.get("accounts", []):
        expires = a.get("lease_expires_at")
        lease = "-" if expires is None else f"epoch {a.get('lease_epoch')}, {_duration(expires - now)} left"
        error = a.get("counts_error")
        rows.append(
            [
                a["appid"],
                a.get("owner") or "-",
                lease,
                a.get("status", ""),
                _count(a, "waiting"),
                _count(a, "sessions"),
                f"counts not read: {error}" if error else "",
            ]
        )
    if not rows:
        return "no accounts"
    headers = ["APPID", "OWNER", "LEASE", "STATUS", "WAITING", "SESSIONS", "NOTE"]
    if not any(r[-1] for r in rows):  # the NOTE column only when a row has something to say
        headers.pop()
        rows = [r[:-1] for r in rows]
    return _table(headers, rows)


def _count(account: Mapping[str, Any], key: str) -> Any:
    """``waiting`` / ``sessions`` of an account row: the number; ``?`` when it could not be read (the NOTE
    says why); ``-`` when there is none (not running here, no shared store — or a daemon from before
    ``counts_error``, whose 0 for such an account meant nothing)."""
    value = account.get(key)
    if account.get("counts_error"):
        return "?"
    if value is None or not (account.get("running") or "counts_error" in account):
        return "-"
    return value


def _accounts_list(c: AdminClient, a: argparse.Namespace) -> tuple[Any, str]:
    answer = c.call("GET", "/api/accounts")
    return answer, _accounts_table(answer)


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            client = _connection(args)
            answer, text = action(client, args)
        except CliError as exc:
            print(f"kfrouter: {exc}", file=sys.stderr)
            return exc.code
        if args.json:
            print(json.dumps(answer, ensure_ascii=False, indent=2))
        else:
            print(text)
        return 0

    return run


# ============================================================================================ parsers


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("daemon")
    g.add_argument("--url", help=f"the daemon's address (default: from --config, else {DEFAULT_URL})")
    g.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help=f"the daemon's [server] admin_token (default: ${TOKEN_ENV}, else from --config)",
    )
    g.add_argument("--config", metavar="FILE", help="a kfrouter.toml to read the address and token from")
    g.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default 30)")
    g.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    g.add_argument(
        "--account",
        metavar="APPID",
        help="the account to act on, when the daemon routes several ([[accounts]])",
    )
    return p


def _settings_options(p: argparse.ArgumentParser, *, with_clear: bool) -> None:
    p.add_argument("--groups", metavar="G1,G2", help="the groups this agent serves (comma separated)")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--capacity", type=int, metavar="N", help="at most N sessions at once (1-1000)")
    if with_clear:
        cap.add_argument(
            "--clear-capacity",
            action="store_true",
            help="drop the local limit (WeChat's auto_accept or [engine] default_capacity applies)",
        )
    pause = p.add_mutually_exclusive_group()
    pause.add_argument("--pause", dest="paused", action="store_const", const=True, help="assign nobody new")
    if with_clear:
        pause.add_argument("--resume", dest="paused", action="store_const", const=False, help="assign again")
    p.add_argument("--tags", metavar="T1,T2", help="tags (comma separated)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _common()

    agents = sub.add_parser(
        "agents",
        help="list and manage kf accounts (agents) of a running daemon",
        description="Agents of a running kfrouter daemon, through its admin API.",
    )
    asub = agents.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = asub.add_parser("list", parents=[common], help="agents with status, groups, load")
    p.add_argument("--wechat", action="store_true", help="add WeChat's account list (binding, invitations)")
    p.set_defaults(func=_runner(_agents_list))

    p = asub.add_parser("add", parents=[common], help="create a kf account (kfaccount/add)")
    p.add_argument("kf_account", metavar="KF_ACCOUNT", help="prefix@wechat_id, e.g. alice@myshop")
    p.add_argument("--nickname", required=True, help="shown to customers (1-16 characters)")
    _settings_options(p, with_clear=False)
    p.set_defaults(func=_runner(_agents_add))

    p = asub.add_parser("update", parents=[common], help="rename a kf account (kfaccount/update)")
    p.add_argument("kf_account", metavar="KF_ACCOUNT")
    p.add_argument("--nickname", required=True)
    p.set_defaults(func=_runner(_agents_update))

    p = asub.add_parser("delete", parents=[common], help="delete a kf account (kfaccount/del)")
    p.add_argument("kf_account", metavar="KF_ACCOUNT")
    p.set_defaults(func=_runner(_agents_delete))

    p = asub.add_parser("set", parents=[common], help="local routing settings: groups, capacity, pause")
    p.add_argument("kf_account", metavar="KF_ACCOUNT")
    _settings_options(p, with_clear=True)
    p.set_defaults(func=_runner(_agents_set))

    p = asub.add_parser("invite", parents=[common], help="invite a WeChat user to bind an account")
    p.add_argument("kf_account", metavar="KF_ACCOUNT")
    p.add_argument("wechat_id", metavar="WECHAT_ID", help="the WeChat ID of the person")
    p.set_defaults(func=_runner(_agents_invite))

    p = asub.add_parser("avatar", parents=[common], help="upload an avatar (jpg, at most 5 MB)")
    p.add_argument("kf_account", metavar="KF_ACCOUNT")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_runner(_agents_avatar))

    p = sub.add_parser(
        "queue",
        parents=[common],
        help="customers waiting for an agent (position, group, wait, estimate)",
        description="The queue of a running kfrouter daemon, through its admin API.",
    )
    p.set_defaults(func=_runner(_queue))

    accounts = sub.add_parser(
        "accounts",
        help="the accounts of a running daemon: owner, lease, waiting, sessions",
        description="The Official Accounts a running kfrouter daemon knows, through its admin API.",
    )
    acsub = accounts.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = acsub.add_parser(
        "list", parents=[common], help="every account: owner, lease expiry, waiting, sessions"
    )
    p.set_defaults(func=_runner(_accounts_list))

    sessions = sub.add_parser(
        "sessions",
        help="open sessions of a running daemon: list, close, reassign",
        description="Sessions of a running kfrouter daemon, through its admin API.",
    )
    ssub = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ssub.add_parser("list", parents=[common], help="open sessions")
    p.set_defaults(func=_runner(_sessions_list))
    p = ssub.add_parser("close", parents=[common], help="close a customer's session (kfsession/close)")
    p.add_argument("openid", metavar="OPENID")
    p.add_argument("--agent", metavar="KF_ACCOUNT", help="the agent (default: the one kfrouter knows)")
    p.set_defaults(func=_runner(_sessions_close))
    p = ssub.add_parser("reassign", parents=[common], help="move a customer to another agent")
    p.add_argument("openid", metavar="OPENID")
    p.add_argument("--to", metavar="KF_ACCOUNT", help="the new agent (default: whoever the policy picks)")
    p.set_defaults(func=_runner(_sessions_reassign))
