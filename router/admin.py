"""The admin HTTP API under ``/api/``: the accounts of a running daemon, and each account's agents, queue
and open sessions.

``admin_routes(host)`` returns aiohttp route definitions to add to ``host.app`` before ``run()``;
docs/admin-api.md lists every route with its body and answers. ``/api/accounts`` lists the accounts;
``/api/accounts/{appid}/agents`` (and every other path) is one account's; the paths without an account
(``/api/agents``, ...) are the only account's when one runs here (a file of one account, as before).

Rules of this module:

- Every route needs ``Authorization: Bearer <server.admin_token>`` (compared in constant time), or the
  read-only token, or the supervisor page's cookie (``router.access`` decides). A missing or wrong token
  answers 401 before anything else is looked at; a change by a read-only viewer, or by the page without
  its per-session CSRF token, answers 403. Tokens are never logged.
- Answers are JSON. Errors are ``{"error": message, ...}``: 400 names the bad field of the body, 404
  names the unknown agent, customer or route, 502 carries WeChat's ``errcode`` (``-2``: WeChat could not be
  reached), 503 while the daemon is starting or stopping.
- The engine is only read here; changes go through the account's ``daemon.submit(event)`` (so they are applied in
  order by the engine task). Local agent settings are written to the store as well, so the daemon
  replays them after a restart.
- Account changes (add, update, delete, avatar, invite) and closing a session call WeChat's kf API
  through ``daemon.client``; the engine learns the result afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from aiohttp import BodyPartReader, web

from kfrouter.router.access import Access
from kfrouter.router.core import events as ev
from kfrouter.router.core.errors import CoreError, UnknownAgentError, UnknownCustomerError
from kfrouter.router.core.model import KF_ACCOUNT_RE, AgentView, CustomerState
from kfrouter.router.doctor import explain
from kfrouter.router.edges.client import MAX_HEADIMG_BYTES, WeChatClient
from kfrouter.router.edges.errors import WeChatError
from kfrouter.router.edges.store import AgentSettings
from kfrouter.router.view import AccountStatus, DaemonView, HostView

log = logging.getLogger("kfrouter.admin")

PREFIX = "/api"
ROUTE_NAME = "kfrouter-admin-agents"  # the name of ``GET /api/agents``: tells whether routes are installed
_NICKNAME_MAX = 16
_MAX_JSON_BYTES = 64 * 1024  # an admin body is a few fields
_SUBMIT_TIMEOUT_S = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_dumps = partial(json.dumps, ensure_ascii=False)


# What WeChat's refusals of the calls made here mean, in words a supervisor can act on (the operator
# problems — 65400, 65401, 65402, 65415, ... — are explained by ``kfrouter doctor``'s advice).
_REFUSALS = {
    -2: "WeChat could not be reached (a timeout or a network error); try again.",
    -3: "WeChat's answer could not be read; try again.",
    65413: "WeChat has no open session for this customer with that agent: it was closed already.",
    ev.ERR_SERVED_BY_OTHER: "Another agent is serving this customer now.",
    65403: "WeChat refused the nickname: 1 to 16 characters, no special characters.",
    65406: "That kf account exists already.",
}


def refusal_in_words(errcode: int) -> str | None:
    """A sentence saying what WeChat's ``errcode`` means for the admin action that got it."""
    return _REFUSALS.get(errcode) or explain(errcode)


class ApiError(Exception):
    """Answered as ``{"error": message, **extra}`` with HTTP ``status``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _answer(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(dict(body), status=status, dumps=_dumps)


def _time(t: float) -> float | None:
    return None if not math.isfinite(t) else round(t, 3)


# ============================================================================================ bodies


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object (``{}`` for an empty body when ``optional``)."""
    if request.content_length is not None and request.content_length > _MAX_JSON_BYTES:
        raise ApiError(413, f"body too large: {request.content_length} bytes (limit {_MAX_JSON_BYTES})")
    raw = await request.content.read(_MAX_JSON_BYTES + 1)
    if len(raw) > _MAX_JSON_BYTES:
        raise ApiError(413, f"body too large (limit {_MAX_JSON_BYTES} bytes)")
    if not raw.strip():
        if optional:
            return {}
        raise ApiError(400, "body: expected a JSON object, got an empty body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(data).__name__}")
    return data


class _Fields:
    """Typed reads of a JSON body; every error names the field. ``done()`` refuses unknown fields."""

    def __init__(self, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        self.data = data
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ApiError(
                400,
                f"body: unknown field(s) {', '.join(repr(u) for u in unknown)} "
                f"(allowed: {', '.join(allowed)})",
                field=unknown[0],
            )

    def has(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, *, required: bool = False, max_len: int | None = None) -> str | None:
        if name not in self.data or self.data[name] is None:
            if required:
                raise ApiError(400, f"body.{name}: is required", field=name)
            return None
        v = self.data[name]
        if not isinstance(v, str) or not v.strip():
            raise ApiError(400, f"body.{name}: must be a non-empty string, got {v!r}", field=name)
        if max_len is not None and len(v) > max_len:
            raise ApiError(400, f"body.{name}: at most {max_len} characters, got {len(v)}", field=name)
        return v

    def kf_account(self, name: str, *, required: bool = False) -> str | None:
        v = self.text(name, required=required)
        if v is not None and not KF_ACCOUNT_RE.fullmatch(v):
            raise ApiError(
                400,
                f"body.{name}: must be a kf account 'prefix@wechat_id' (prefix: 1-10 letters, digits "
                f"or '_'), got {v!r}",
                field=name,
            )
        return v

    def flag(self, name: str) -> bool | None:
        if name not in self.data or self.data[name] is None:
            return None
        v = self.data[name]
        if not isinstance(v, bool):
            raise ApiError(400, f"body.{name}: must be true or false, got {v!r}", field=name)
        return v

    def count(self, name: str, lo: int = 1, hi: int = 1000) -> int | None:
        v = self.data.get(name)
        if v is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ApiError(400, f"body.{name}: must be an integer {lo}..{hi} or null, got {v!r}", field=name)
        return v

    def names(self, name: str) -> tuple[str, ...] | None:
        if name not in self.data or self.data[name] is None:
            return None
        v = self.data[name]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise ApiError(400, f"body.{name}: must be a list of non-empty strings, got {v!r}", field=name)
        return tuple(dict.fromkeys(v))


# ============================================================================================ the API


_TABLE: tuple[tuple[str, str, str, str | None], ...] = (
    # method, path under the prefix (and under /accounts/{appid}), AdminApi handler, route name
    ("GET", "/agents", "list_agents", ROUTE_NAME),
    ("POST", "/agents", "add_agent", None),
    ("GET", "/agents/{kf}", "get_agent", None),
    ("PATCH", "/agents/{kf}", "update_agent", None),
    ("DELETE", "/agents/{kf}", "delete_agent", None),
    ("PATCH", "/agents/{kf}/settings", "set_agent", None),
    ("POST", "/agents/{kf}/avatar", "upload_avatar", None),
    ("POST", "/agents/{kf}/invite", "invite_worker", None),
    ("GET", "/queue", "queue", None),
    ("DELETE", "/queue/{openid}", "remove_waiting", None),
    ("GET", "/sessions", "list_sessions", None),
    ("POST", "/sessions/{openid}/close", "close_session", None),
    ("POST", "/sessions/{openid}/reassign", "reassign", None),
)
ACCOUNT_PATH = "/accounts/{appid}"


class _Guard:
    """Every route's wrapper: who may call it (``router.access``), and errors as JSON answers."""

    def __init__(self, access: Access) -> None:
        self.access = access

    def __call__(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = self._refuse(request)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except ApiError as exc:
                if exc.status >= 500:
                    log.warning("admin %s %s: %d %s", request.method, request.path, exc.status, exc.message)
                return _answer({"error": exc.message, **exc.extra}, exc.status)
            except WeChatError as exc:
                log.warning("admin %s %s: WeChat said %s", request.method, request.path, exc)
                return _answer(
                    {
                        "error": f"WeChat refused: {exc}",
                        "errcode": exc.errcode,
                        "endpoint": exc.endpoint,
                        "explanation": refusal_in_words(exc.errcode),
                    },
                    502,
                )

        guarded.__name__ = getattr(handler, "__name__", "handler")
        return guarded

    def _refuse(self, request: web.Request) -> web.Response | None:
        """401 unless the admin token, the read-only token or a supervisor cookie identifies the request;
        403 for a change by a read-only viewer or a cookie request without its CSRF token
        (``router.access``)."""
        headers = {"WWW-Authenticate": 'Bearer realm="kfrouter"'}
        who = self.access.identify(request, time.time())
        if who is None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return web.json_response(
                    {"error": "missing admin token: send 'Authorization: Bearer <server.admin_token>'"},
                    status=401,
                    headers=headers,
                )
            log.warning("admin %s %s: wrong admin token", request.method, request.path)
            return web.json_response({"error": "wrong admin token"}, status=401, headers=headers)
        refusal = self.access.refuse_change(request, who)
        if refusal is not None:
            log.warning(
                "admin %s %s refused (%s via %s): %s",
                request.method,
                request.path,
                who.role,
                who.via,
                refusal.message,
            )
            return web.json_response({"error": refusal.message}, status=refusal.status)
        return None


async def not_found(request: web.Request) -> web.Response:
    raise ApiError(404, f"no admin route {request.method} {request.path} (see docs/admin-api.md)")


class AdminApi:
    """The handlers of one account (a ``DaemonView``); ``AccountsApi`` routes the requests to them."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon

    def _client(self) -> WeChatClient:
        if self.daemon.stopping:
            raise ApiError(503, "kfrouter is shutting down")
        client = self.daemon.client
        if client is None:
            raise ApiError(503, "kfrouter is starting: the WeChat client is not ready yet")
        return client

    async def _submit(self, event: ev.Event) -> None:
        if self.daemon.stopping:
            raise ApiError(503, "kfrouter is shutting down")
        if not self.daemon.started.is_set():
            raise ApiError(503, "kfrouter is starting: routing state is being recovered; retry shortly")
        try:
            await asyncio.wait_for(self.daemon.submit(event), _SUBMIT_TIMEOUT_S)
        except TimeoutError:
            raise ApiError(503, f"the routing engine did not answer within {_SUBMIT_TIMEOUT_S:g}s") from None
        except UnknownAgentError as exc:
            raise ApiError(404, f"unknown agent {exc.kf_account!r}", kf_account=exc.kf_account) from None
        except UnknownCustomerError as exc:
            raise ApiError(404, str(exc), openid=exc.openid) from None
        except CoreError as exc:
            raise ApiError(400, str(exc)) from None
        except RuntimeError as exc:  # the inbox was drained by a shutdown
            raise ApiError(503, str(exc)) from None

    def _now(self) -> float:
        return self.daemon.clock.now()

    def _audit(self, action: str, payload: Mapping[str, Any]) -> None:
        store = self.daemon.store
        if store is None:
            return
        try:
            store.append_event(self._now(), "admin", {"action": action, **payload})
        except Exception:
            log.exception("store: admin action %s not logged", action)

    async def _wechat_accounts(self) -> dict[str, Any]:
        return {a.kf_account: a for a in await self._client().get_kf_list()}

    async def _known_agent(self, request: web.Request) -> str:
        """The ``{kf}`` of the path, if the engine or WeChat knows it; else 404 naming it."""
        kf = request.match_info["kf"]
        if kf in self.daemon.engine.pool:
            return kf
        if kf not in await self._wechat_accounts():
            raise ApiError(
                404,
                f"unknown agent {kf!r}: neither kfrouter nor WeChat's getkflist knows it",
                kf_account=kf,
            )
        return kf

    # ---------------------------------------------------------------- views

    def _stored_settings(self) -> dict[str, AgentSettings]:
        store = self.daemon.store
        return {} if store is None else store.agents()

    def _agent_json(
        self, view: AgentView | None, kf: str, settings: Mapping[str, AgentSettings] | None = None
    ) -> dict[str, Any]:
        stored = (settings if settings is not None else self._stored_settings()).get(kf)
        plan = self.daemon.config.agents.get(kf)
        out: dict[str, Any] = {"kf_account": kf}
        if view is not None:
            out.update(
                nickname=view.nickname,
                online=view.online,
                status=view.status,
                paused=view.paused,
                groups=sorted(view.groups),
                tags=sorted(view.tags),
                capacity=view.capacity,
                sessions=view.sessions,
                reserved=view.reserved,
                load=view.load,
                free=view.free,
                last_assigned_at=_time(view.last_assigned_at),
            )
        else:
            out.update(known_to_engine=False)
        out["configured_groups"] = None if plan is None else sorted(plan.groups)
        out["local_settings"] = (
            None
            if stored is None
            else {
                "groups": None if stored.groups is None else list(stored.groups),
                "max_sessions": stored.max_sessions,
                "paused": stored.paused,
                "tags": None if stored.tags is None else list(stored.tags),
                "updated_at": _time(stored.updated_at),
            }
        )
        return out

    # ---------------------------------------------------------------- agents

    async def list_agents(self, request: web.Request) -> web.Response:
        """Every agent the engine knows; ``?wechat=1`` adds WeChat's account list (bound, invitations)."""
        settings = self._stored_settings()
        agents = [self._agent_json(v, v.kf_account, settings) for v in self.daemon.engine.agents()]
        if request.query.get("wechat", "") in ("1", "true", "yes"):
            accounts = await self._wechat_accounts()
            by_kf = {a["kf_account"]: a for a in agents}
            for kf in sorted(set(accounts) - set(by_kf)):
                row = self._agent_json(None, kf, settings)
                agents.append(row)
                by_kf[kf] = row
            for kf, a in by_kf.items():
                info = accounts.get(kf)
                a["wechat"] = (
                    None
                    if info is None
                    else {
                        "nickname": info.nickname,
                        "kf_id": info.kf_id,
                        "kf_wx": info.kf_wx,
                        "invite_wx": info.invite_wx,
                        "invite_status": info.invite_status,
                        "invite_expire_time": info.invite_expire_time,
                        "headimgurl": info.headimgurl,
                    }
                )
            agents.sort(key=lambda a: a["kf_account"])
        return _answer({"agents": agents, "count": len(agents)})

    async def get_agent(self, request: web.Request) -> web.Response:
        kf = await self._known_agent(request)
        return _answer(self._agent_json(self.daemon.engine.agent(kf), kf))

    async def add_agent(self, request: web.Request) -> web.Response:
        """``kfaccount/add``; optional local settings (groups, max_sessions, paused, tags) in the same body."""
        f = _Fields(
            await _json_body(request),
            ("kf_account", "nickname", "groups", "max_sessions", "paused", "tags"),
        )
        kf = f.kf_account("kf_account", required=True)
        nickname = f.text("nickname", required=True, max_len=_NICKNAME_MAX)
        assert kf is not None and nickname is not None
        settings = self._settings(f)
        await self._client().add_kf_account(kf, nickname)
        log.info("admin: kf account %s added", kf)
        self._audit("add", {"agent": kf, "nickname": nickname})
        await self._apply_settings(kf, settings, nickname=nickname)
        return _answer(self._agent_json(self.daemon.engine.agent(kf), kf), 201)

    async def update_agent(self, request: web.Request) -> web.Response:
        """``kfaccount/update``: the nickname."""
        f = _Fields(await _json_body(request), ("nickname",))
        nickname = f.text("nickname", required=True, max_len=_NICKNAME_MAX)
        assert nickname is not None
        kf = await self._known_agent(request)
        await self._client().update_kf_account(kf, nickname)
        log.info("admin: kf account %s renamed", kf)
        self._audit("update", {"agent": kf, "nickname": nickname})
        if kf in self.daemon.engine.pool:
            await self._submit(ev.AgentConfigured(kf_account=kf, nickname=nickname))
        return _answer(self._agent_json(self.daemon.engine.agent(kf), kf))

    async def delete_agent(self, request: web.Request) -> web.Response:
        """``kfaccount/del``; the engine forgets the agent and its local settings are dropped."""
        kf = await self._known_agent(request)
        await self._client().delete_kf_account(kf)
        log.info("admin: kf account %s deleted", kf)
        self._audit("delete", {"agent": kf})
        store = self.daemon.store
        if store is not None:
            store.remove_agent(kf)
        if kf in self.daemon.engine.pool:
            await self._submit(ev.AgentRemoved(kf_account=kf))
        note = (
            "the config still lists this agent: it comes back (offline) at the next start"
            if kf in self.daemon.config.agents
            else None
        )
        return _answer({"deleted": kf, "note": note})

    async def set_agent(self, request: web.Request) -> web.Response:
        """Local settings: groups, max_sessions (null: back to WeChat's auto_accept or the default),
        paused, tags. Applied to the engine and saved in the store."""
        f = _Fields(await _json_body(request), ("groups", "max_sessions", "paused", "tags"))
        if not f.data:
            raise ApiError(400, "body: give at least one of groups, max_sessions, paused, tags")
        settings = self._settings(f)
        kf = await self._known_agent(request)
        await self._apply_settings(kf, settings)
        return _answer(self._agent_json(self.daemon.engine.agent(kf), kf))

    def _settings(self, f: _Fields) -> dict[str, Any]:
        out: dict[str, Any] = {}
        groups = f.names("groups")
        if groups is not None:
            known = [g.name for g in self.daemon.config.groups]
            for g in groups:
                if g not in known:
                    raise ApiError(
                        400,
                        f"body.groups: unknown group {g!r} (groups in the config: "
                        f"{', '.join(known) or 'none'})",
                        field="groups",
                    )
            out["groups"] = groups
        if f.has("max_sessions"):
            n = f.count("max_sessions")
            if n is None:
                out["clear_max_sessions"] = True
            else:
                out["max_sessions"] = n
        paused = f.flag("paused")
        if paused is not None:
            out["paused"] = paused
        tags = f.names("tags")
        if tags is not None:
            out["tags"] = tags
        return out

    async def _apply_settings(
        self, kf: str, settings: Mapping[str, Any], *, nickname: str | None = None
    ) -> None:
        if not settings and nickname is None:
            return
        try:
            event = ev.AgentConfigured(kf_account=kf, nickname=nickname, **settings)
        except CoreError as exc:
            raise ApiError(400, f"body: {exc}") from None
        await self._submit(event)
        if not settings:
            return
        store = self.daemon.store
        if store is not None:
            store.set_agent(kf, self._now(), **settings)
        self._audit(
            "set", {"agent": kf, **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}
        )
        log.info("admin: settings of %s changed: %s", kf, ", ".join(sorted(settings)))

    async def upload_avatar(self, request: web.Request) -> web.Response:
        """``kfaccount/uploadheadimg``: the multipart field ``media`` is passed on as it came."""
        if not request.content_type.startswith("multipart/"):
            raise ApiError(
                400, f"body: expected multipart/form-data with a 'media' file, got {request.content_type!r}"
            )
        kf = request.match_info["kf"]
        reader = await request.multipart()
        image: bytes | None = None
        filename = "headimg.jpg"
        content_type = "image/jpeg"
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader) or part.name != "media":
                await part.release()
                continue
            data = bytearray()
            while chunk := await part.read_chunk(64 * 1024):
                data += chunk
                if len(data) > MAX_HEADIMG_BYTES:
                    raise ApiError(
                        400, f"media: larger than WeChat's limit of {MAX_HEADIMG_BYTES} bytes", field="media"
                    )
            image = bytes(data)
            filename = getattr(part, "filename", None) or filename
            content_type = part.headers.get("Content-Type", content_type)
        if not image:
            raise ApiError(
                400, "media: a non-empty file in the multipart field 'media' is required", field="media"
            )
        kf = await self._known_agent(request)
        await self._client().upload_kf_headimg(kf, image, filename=filename, content_type=content_type)
        log.info("admin: avatar of %s uploaded (%d bytes)", kf, len(image))
        self._audit("avatar", {"agent": kf, "bytes": len(image)})
        return _answer({"kf_account": kf, "uploaded_bytes": len(image)})

    async def invite_worker(self, request: web.Request) -> web.Response:
        """``kfaccount/inviteworker``: a WeChat user is invited to bind the account."""
        f = _Fields(await _json_body(request), ("invite_wx",))
        wx = f.text("invite_wx", required=True, max_len=64)
        assert wx is not None
        kf = await self._known_agent(request)
        await self._client().invite_kf_worker(kf, wx)
        log.info("admin: %s invited to bind %s", "a WeChat user", kf)
        self._audit("invite", {"agent": kf})
        return _answer({"kf_account": kf, "invited": wx, "status": "waiting"})

    # ---------------------------------------------------------------- queue and sessions

    async def queue(self, request: web.Request) -> web.Response:
        """Waiting customers in queue order (``position`` 1 = next) and reservations in flight."""
        engine = self.daemon.engine
        estimator = self.daemon.estimator
        now = self._now()
        waiting = []
        for i, w in enumerate(engine.waiting(now)):
            row: dict[str, Any] = {
                "position": i + 1,
                "openid": w.openid,
                "group": w.group,
                "priority": w.priority,
                "arrived_at": _time(w.arrived_at),
                "waited_s": round(max(0.0, now - w.arrived_at), 3),
                "ahead_in_group": engine.ahead_in_group(w.openid),
                "preferred_agent": w.preferred_agent,
                "tags": sorted(w.tags),
                "estimate_s": None,
                "estimate_method": None,
            }
            if estimator is not None:
                try:
                    est = estimator.estimate(engine, w.openid, now)
                except CoreError:
                    pass
                else:
                    row["estimate_s"] = _time(est.seconds)
                    row["estimate_method"] = est.method
            waiting.append(row)
        reservations = [
            {"openid": o, "kf_account": kf, "expires_in_s": round(deadline - now, 3)}
            for o, kf, deadline in engine.reservations()
        ]
        return _answer({"waiting": waiting, "count": len(waiting), "reservations": reservations})

    async def remove_waiting(self, request: web.Request) -> web.Response:
        """Take a waiting customer out of the queue, as their own cancel would: the case ends 'removed' in
        the session log and the engine gets ``CustomerLeft(reason='cancelled')`` (a create in flight that
        lands anyway is closed; WeChat's wait-list entry is ignored until they write again). The customer
        is not told."""
        openid = request.match_info["openid"]
        engine = self.daemon.engine
        state = engine.state(openid)
        if state not in (CustomerState.WAITING, CustomerState.RESERVED):
            where = (
                "in a session (close the session instead)"
                if state is CustomerState.IN_SESSION
                else "not waiting"
            )
            raise ApiError(404, f"customer {openid!r} is {where}", openid=openid)
        view = engine.waiting_view(openid, self._now())
        group = view.group if view is not None else None
        store = self.daemon.store
        if store is not None:
            store.remove_waiting(openid, self._now(), "removed")
        self._audit("remove", {"openid": openid, "group": group})
        await self._submit(ev.CustomerLeft(openid=openid, reason="cancelled"))
        log.info("admin: %s removed from the queue (group %s)", openid, group)
        return _answer({"openid": openid, "group": group, "removed": True})

    async def list_sessions(self, request: web.Request) -> web.Response:
        """Open sessions: customer, agent, start (from the store) and duration."""
        now = self._now()
        started: dict[str, tuple[str, float]] = {}
        store = self.daemon.store
        if store is not None:
            started = store.load_state(history_since=now + 1.0).in_session
        sessions = []
        for openid, kf in sorted(self.daemon.engine.sessions().items(), key=lambda kv: (kv[1], kv[0])):
            at = started.get(openid)
            t = at[1] if at is not None else None
            sessions.append(
                {
                    "openid": openid,
                    "kf_account": kf,
                    "started_at": None if t is None else _time(t),
                    "duration_s": None if t is None else round(max(0.0, now - t), 3),
                }
            )
        return _answer({"sessions": sessions, "count": len(sessions)})

    async def close_session(self, request: web.Request) -> web.Response:
        """``kfsession/close`` for the customer's session (its agent from the engine, or ``kf_account``)."""
        openid = request.match_info["openid"]
        f = _Fields(await _json_body(request, optional=True), ("kf_account",))
        kf = f.kf_account("kf_account") or self.daemon.engine.sessions().get(openid)
        if kf is None:
            raise ApiError(
                404,
                f"no open session for customer {openid!r} (give body.kf_account to close one kfrouter does "
                "not know)",
                openid=openid,
            )
        try:
            await self._client().close_session(openid, kf)
        except WeChatError as exc:
            if exc.errcode == 65413 and kf in self.daemon.engine.pool:
                # WeChat has no such session: the engine learns it is over (same as a close).
                await self._submit(
                    ev.CloseFailed(openid=openid, kf_account=kf, errcode=exc.errcode, errmsg=exc.errmsg)
                )
            raise
        now = self._now()
        store = self.daemon.store
        if store is not None:
            store.record_session_end(openid, kf, now)
        log.info("admin: session %s (%s) closed", openid, kf)
        self._audit("close", {"openid": openid, "agent": kf})
        if kf in self.daemon.engine.pool:
            await self._submit(ev.SessionClosed(openid=openid, kf_account=kf))
        return _answer({"openid": openid, "kf_account": kf, "closed": True})

    async def reassign(self, request: web.Request) -> web.Response:
        """Move a customer in session to ``to`` (an agent) or, with ``null``, whoever the policy picks:
        the session is closed first; the customer is routed once WeChat confirms the close."""
        openid = request.match_info["openid"]
        f = _Fields(await _json_body(request, optional=True), ("to",))
        to = f.kf_account("to")
        engine = self.daemon.engine
        current = engine.sessions().get(openid)
        if current is None:
            raise ApiError(404, f"no open session for customer {openid!r}", openid=openid)
        if to is not None and to not in engine.pool:
            raise ApiError(404, f"unknown agent {to!r} (body.to)", kf_account=to, field="to")
        if to == current:
            return _answer({"openid": openid, "from": current, "to": to, "status": "unchanged"})
        await self._submit(ev.ReassignRequested(openid=openid, to_account=to))
        log.info("admin: reassign %s from %s to %s", openid, current, to or "any agent")
        self._audit("reassign", {"openid": openid, "from": current, "to": to})
        return _answer({"openid": openid, "from": current, "to": to, "status": "closing"}, 202)


class AccountsApi:
    """The admin API of a process (``HostView``): ``/api/accounts`` lists the accounts,
    ``/api/accounts/{appid}/...`` reaches one account's handlers (``AdminApi``), and the paths without an
    account (``/api/agents``, ...) reach the only account running here — with several, they answer 409
    naming the account paths. An account's handlers live while it runs (``account_added`` /
    ``account_removed``: an ``AccountListener``)."""

    def __init__(self, host: HostView) -> None:
        self.host = host
        server = host.config.server
        self.guard = _Guard(Access(server.admin_token, server.readonly_token))
        self.apis: dict[str, AdminApi] = {}
        host.add_listener(self)

    def account_added(self, daemon: DaemonView) -> None:
        self.apis[daemon.config.account] = AdminApi(daemon)

    def account_removed(self, appid: str) -> None:
        self.apis.pop(appid, None)

    def routes(self, prefix: str = PREFIX) -> list[web.AbstractRouteDef]:
        p = prefix.rstrip("/")
        g = self.guard
        out: list[web.AbstractRouteDef] = [
            web.route("GET", p + "/accounts", g(self.list_accounts)),
            web.route("GET", p + ACCOUNT_PATH, g(self.get_account)),
        ]
        for method, path, name, route_name in _TABLE:
            kw: dict[str, Any] = {"name": route_name} if route_name else {}
            out.append(web.route(method, p + path, g(partial(self._only, name)), **kw))
            out.append(web.route(method, p + ACCOUNT_PATH + path, g(partial(self._of, name))))
        out.append(web.route("*", p, g(not_found)))
        out.append(web.route("*", p + "/{tail:.*}", g(not_found)))
        return out

    async def _only(self, name: str, request: web.Request) -> web.StreamResponse:
        """A path without an account: the only account running here."""
        apis = [self.apis[a] for a in self.host.runners if a in self.apis]
        if len(apis) == 1:
            return await getattr(apis[0], name)(request)  # type: ignore[no-any-return]
        if not apis:
            raise ApiError(503, "no account is routed by this daemon now; see GET /api/accounts")
        raise ApiError(
            409,
            f"this daemon routes {len(apis)} accounts: name one, e.g. "
            f"{PREFIX}{ACCOUNT_PATH.replace('{appid}', apis[0].daemon.config.account)}"
            f"{request.path.removeprefix(PREFIX)}",
            accounts=[api.daemon.config.account for api in apis],
        )

    async def _of(self, name: str, request: web.Request) -> web.StreamResponse:
        return await getattr(self._api(request.match_info["appid"]), name)(request)  # type: ignore[no-any-return]

    def _api(self, appid: str) -> AdminApi:
        api = self.apis.get(appid)
        if api is not None and appid in self.host.runners:
            return api
        status = next((s for s in self.host.account_status() if s.appid == appid), None)
        if status is None:
            raise ApiError(404, f"unknown account {appid!r}: not in this daemon's config", appid=appid)
        raise ApiError(503, f"account {appid!r} is not routed by this daemon now", appid=appid)

    async def list_accounts(self, request: web.Request) -> web.Response:
        return _answer({"accounts": [_status_json(s) for s in await self.host.read_account_status()]})

    async def get_account(self, request: web.Request) -> web.Response:
        appid = request.match_info["appid"]
        for s in await self.host.read_account_status():
            if s.appid == appid:
                return _answer(_status_json(s))
        raise ApiError(404, f"unknown account {appid!r}: not in this daemon's config", appid=appid)


def _status_json(s: AccountStatus) -> dict[str, Any]:
    return {
        "appid": s.appid,
        "running": s.running,
        "owner": s.owner,
        "lease_epoch": s.lease_epoch,
        "lease_expires_at": None if s.lease_expires_at is None else round(s.lease_expires_at, 3),
        "status": s.status,
        "waiting": s.waiting,
        "sessions": s.sessions,
        "counts_error": s.counts_error,
    }


def admin_routes(host: HostView, prefix: str = PREFIX) -> list[web.AbstractRouteDef]:
    """Route definitions of the admin API for ``app.add_routes(...)`` (before ``run()``)."""
    return AccountsApi(host).routes(prefix)


def install(app: web.Application, host: HostView) -> bool:
    """Add the admin routes to ``app`` unless they are there already; True when added."""
    if ROUTE_NAME in app.router.named_resources():
        return False
    app.add_routes(admin_routes(host))
    return True
