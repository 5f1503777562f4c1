"""The live supervisor page (``/supervisor``), ``/metrics``, and ``attach_observability(host, app)``, the one
hook the composition root calls to get both plus the history charts, the notification log and the
structured event log — per account (``AccountPages``), for every account the host routes (``?account=APPID``
on the page's requests; ``/metrics`` covers them all, each series labelled ``appid``).

Routes (docs/observability.md has the details):

- ``GET /metrics`` — Prometheus text; needs a token (or the supervisor cookie), because the callback port
  usually faces the internet.
- ``GET /supervisor`` — the page (router/static/supervisor.html), or a login form answered with 401.
  ``GET /supervisor?token=<token>`` and ``POST /supervisor/login`` (form field ``token``) check the token
  and set a cookie, then redirect to ``/supervisor`` so the token leaves the address bar. The admin token
  opens the page with its action buttons; the read-only token (``[server] readonly_token``) without them.
- ``GET /supervisor/state`` — the snapshot the page renders, as JSON.
- ``GET /supervisor/events`` — server-sent events: one ``snapshot`` event at once, then one after every
  change (coalesced over ``debounce_s``) and at least every ``refresh_s`` (which doubles as keep-alive).
- ``GET /supervisor/history`` (JSON) and ``/supervisor/history/{waiting,in_session,service_level,
  abandoned}.svg`` — the last 24 hours from the store, per group (``router.history``).
- ``POST /supervisor/logout``; ``GET /supervisor/static/{supervisor.css,supervisor.js,
  supervisor-actions.js}`` (no data, no token needed).

The page's actions call the admin API (``/api/``, ``router.admin``) with the cookie and the session's
CSRF token, which the page gets in a ``<meta>`` tag. Who may read and who may change is decided by
``router.access`` (tokens, cookie, CSRF); everything else here is read-only.

The snapshot is built from the engine's read methods on the daemon's loop (no locking needed: one
thread). Listeners never block: they bump a version and wake the event streams.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from kfrouter.router.access import ADMIN, COOKIE, COOKIE_TTL_S, Access, Principal
from kfrouter.router.core.errors import CoreError
from kfrouter.router.history import HistoryCache
from kfrouter.router.logs import EventLog
from kfrouter.router.metrics import (
    NO_GROUP,
    AccountsMetrics,
    Assignment,
    Metrics,
    assignments,
    group_label,
)
from kfrouter.router.notice_log import NoticeLog
from kfrouter.router.observe import Observation, Stepped
from kfrouter.router.view import DaemonView, HostView

log = logging.getLogger("kfrouter.supervisor")

STATIC_TYPES = {
    "supervisor.css": "text/css",
    "supervisor.js": "application/javascript",
    "supervisor-actions.js": "application/javascript",
}
MAX_SESSIONS_LISTED = 300
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> str:
    return resources.files("kfrouter.router").joinpath("static", name).read_text(encoding="utf-8")


def _num(value: float | None, digits: int = 3) -> float | None:
    """JSON has no inf/nan: those become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


# ============================================================================ answers


def _unauthorized_json() -> web.Response:
    return web.json_response(
        {
            "error": "admin token required: 'Authorization: Bearer <server.admin_token>' or log in at /supervisor"
        },
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="kfrouter"', "Cache-Control": "no-store"},
    )


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


# ============================================================================ the snapshot


def _agent_status(a: Any) -> str:
    if not a.online:
        return "offline"
    if a.paused:
        return "paused"
    return "full" if a.load >= a.capacity else "available"


def build_snapshot(
    daemon: DaemonView,
    recent: deque[Assignment],
    assigned: Counter[str],
    *,
    max_customers: int = 50,
    session_starts: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What the page shows, JSON-ready. Times are the daemon's clock (unix seconds); ``now`` lets the page
    tick waits locally between snapshots. ``session_starts`` (openid -> when the session began, as far as
    this daemon saw it) dates the open sessions."""
    now = daemon.clock.now()
    engine = daemon.engine
    estimator = daemon.estimator
    agents = engine.agents()
    nick = {a.kf_account: a.nickname for a in agents}
    groups: dict[str, dict[str, Any]] = {}

    def group_entry(name: str) -> dict[str, Any]:
        entry = groups.get(name)
        if entry is None:
            entry = groups[name] = {
                "name": name,
                "waiting": 0,
                "agents_online": 0,
                "free_slots": 0,
                "oldest_wait_s": 0.0,
                "customers": [],
            }
        return entry

    for g in daemon.config.groups:
        group_entry(g.name)
    longest = 0.0
    waiting = engine.waiting(now)
    for view in waiting:
        entry = group_entry(group_label(view.group))
        waited = max(0.0, now - view.arrived_at)
        longest = max(longest, waited)
        entry["oldest_wait_s"] = max(entry["oldest_wait_s"], round(waited, 3))
        position = entry["waiting"]
        entry["waiting"] += 1
        if len(entry["customers"]) >= max_customers:
            continue
        estimate: dict[str, Any] | None = None
        if estimator is not None:
            try:
                est = estimator.estimate(engine, view.openid, now)
            except CoreError:
                est = None
            except Exception:  # an estimator bug must not take the page down
                log.debug("estimate for %s failed", view.openid, exc_info=True)
                est = None
            if est is not None:
                estimate = {"seconds": _num(est.seconds, 1), "method": est.method, "ahead": est.ahead}
        entry["customers"].append(
            {
                "openid": view.openid,
                "position": position,
                "priority": view.priority,
                "arrived_at": _num(view.arrived_at),
                "preferred_agent": view.preferred_agent,
                "estimate": estimate,
            }
        )
    online = [a for a in agents if a.online]
    for a in online:
        for name in a.groups:
            if name in groups:
                groups[name]["agents_online"] += 1
                if not a.paused:
                    groups[name]["free_slots"] += max(0, a.capacity - a.load)
    agent_rows = [
        {
            "kf_account": a.kf_account,
            "nickname": a.nickname,
            "online": a.online,
            "paused": a.paused,
            "status": _agent_status(a),
            "wechat_status": a.status,
            "groups": sorted(a.groups),
            "load": a.load,
            "sessions": a.sessions,
            "reserved": a.reserved,
            "capacity": a.capacity,
            "last_assigned_at": _num(a.last_assigned_at),
            "assigned": assigned.get(a.kf_account, 0),
        }
        for a in sorted(agents, key=lambda a: (not a.online, a.kf_account))
    ]
    wl = daemon.waitlist_poller
    status = "stopping" if daemon.stopping else ("running" if daemon.started.is_set() else "starting")
    return {
        "now": _num(now),
        "appid": daemon.config.account,
        "backend": daemon.config.backend,
        "status": status,
        "totals": {
            "waiting": len(waiting),
            "longest_wait_s": round(longest, 3),
            "agents": len(agents),
            "agents_online": len(online),
            "agents_free": sum(1 for a in agents if a.free),
            "load": sum(a.load for a in online),
            "capacity": sum(a.capacity for a in online if not a.paused),
            "sessions": len(engine.sessions()),
            "reservations": len(engine.reservations()),
            "assigned": sum(assigned.values()),
            "wechat_waitlist": 0 if wl is None else wl.count,
        },
        "agents": agent_rows,
        "groups": [
            {**g, "label": g["name"] if g["name"] != NO_GROUP else "(no group)"} for g in groups.values()
        ],
        "config_groups": [g.name for g in daemon.config.groups],
        "sessions": _session_rows(engine.sessions(), nick, session_starts or {}),
        "recent": [
            {
                "at": _num(r.at),
                "openid": r.openid,
                "kf_account": r.kf_account,
                "nickname": nick.get(r.kf_account, ""),
                "group": r.group,
                "waited_s": _num(r.waited_s, 1),
                "source": r.source,
            }
            for r in reversed(recent)
        ],
    }


def _session_rows(
    sessions: Mapping[str, str], nick: Mapping[str, str], starts: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Open sessions, longest first (those of unknown start last), at most ``MAX_SESSIONS_LISTED``."""
    rows = sorted(sessions.items(), key=lambda kv: (starts.get(kv[0], math.inf), kv[1], kv[0]))
    return [
        {
            "openid": openid,
            "kf_account": kf,
            "nickname": nick.get(kf, ""),
            "started_at": _num(starts.get(openid)),
        }
        for openid, kf in rows[:MAX_SESSIONS_LISTED]
    ]


# ============================================================================ the hub


class SupervisorHub:
    """Recent assignments and the event streams. ``observe`` is a daemon observer."""

    def __init__(
        self,
        daemon: DaemonView,
        *,
        recent_size: int = 30,
        max_customers: int = 50,
        refresh_s: float = 5.0,
        debounce_s: float = 0.15,
    ) -> None:
        if not (refresh_s > 0 and debounce_s >= 0 and recent_size >= 1 and max_customers >= 1):
            raise ValueError("SupervisorHub: refresh_s > 0, debounce_s >= 0, sizes >= 1 required")
        self.daemon = daemon
        self.recent: deque[Assignment] = deque(maxlen=recent_size)
        self.assigned: Counter[str] = Counter()
        self.session_starts: dict[str, float] = {}  # openid -> when their open session began
        self.max_customers = max_customers
        self.refresh_s = refresh_s
        self.debounce_s = debounce_s
        self.version = 0
        self.closed = False
        self.last_build_s = 0.0  # how long the last snapshot took to build
        self._streams: set[asyncio.Event] = set()
        self._cache: tuple[int, float, bytes] | None = None
        self.accounts: Callable[[], list[dict[str, Any]]] | None = None  # the selector's list, if several

    @property
    def streams(self) -> int:
        return len(self._streams)

    def observe(self, observation: Observation, now: float) -> None:
        """A daemon observer: each step may change what the page shows; assignments feed the list."""
        if isinstance(observation, Stepped):
            for a in assignments(observation, now):
                self.recent.append(a)
                self.assigned[a.kf_account] += 1
                self.session_starts[a.openid] = a.at
            self.changed()

    def changed(self) -> None:
        self.version += 1
        for wake in self._streams:
            wake.set()

    def snapshot(self) -> dict[str, Any]:
        open_sessions = self.daemon.engine.sessions()
        if len(self.session_starts) > 2 * len(open_sessions) + 100:  # forget sessions that ended
            self.session_starts = {o: t for o, t in self.session_starts.items() if o in open_sessions}
        snapshot = build_snapshot(
            self.daemon,
            self.recent,
            self.assigned,
            max_customers=self.max_customers,
            session_starts=self.session_starts,
        )
        snapshot["accounts"] = self.accounts() if self.accounts is not None else []
        return snapshot

    def snapshot_bytes(self) -> bytes:
        """The snapshot as JSON, shared by every stream for the same version (for up to a second)."""
        t = time.monotonic()
        if self._cache is not None and self._cache[0] == self.version and t - self._cache[1] < 1.0:
            return self._cache[2]
        data = json.dumps(self.snapshot(), ensure_ascii=False, separators=(",", ":")).encode()
        self.last_build_s = time.monotonic() - t
        self._cache = (self.version, t, data)
        return data

    def pause_s(self) -> float:
        """How long a stream waits after a change before the next snapshot: ``debounce_s``, or more when
        snapshots are expensive (a long queue), so building them stays under ~10% of the event loop."""
        return max(self.debounce_s, 10.0 * self.last_build_s)

    def close(self) -> None:
        """End every event stream (the web server is shutting down)."""
        self.closed = True
        for wake in self._streams:
            wake.set()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await resp.prepare(request)
        wake = asyncio.Event()
        self._streams.add(wake)
        try:
            await resp.write(b"retry: 3000\n\n")
            while not self.closed:
                await resp.write(b"event: snapshot\ndata: " + self.snapshot_bytes() + b"\n\n")
                try:
                    async with asyncio.timeout(self.refresh_s):
                        await wake.wait()
                except TimeoutError:
                    pass
                if self.closed:
                    break
                pause = self.pause_s()
                if pause > 0:
                    await asyncio.sleep(pause)  # let a burst of changes settle into one snapshot
                wake.clear()
        except ConnectionError:
            pass  # the browser went away
        finally:
            self._streams.discard(wake)
        return resp


# ============================================================================ wiring


class AccountPages:
    """What the pages keep of one account: its metrics, the supervisor hub, the history, the notification
    log and the event log. What it reads of the account: the engine, the config, the clock and the store
    (``daemon.store``, for the history and the notification log)."""

    def __init__(self, daemon: DaemonView, *, appid_in_events: bool = False) -> None:
        self.daemon = daemon
        self.appid = daemon.config.account
        self.metrics = Metrics(daemon)
        self.hub = SupervisorHub(daemon)
        self.event_log: EventLog | None = (
            EventLog(appid=self.appid if appid_in_events else None) if daemon.config.log.json else None
        )
        self.history = HistoryCache(self._store_path, daemon.clock.now)
        self.notices = NoticeLog(lambda: daemon.store, daemon.clock.now)

    def _store_path(self) -> str | None:
        store = self.daemon.store
        path = store.path if store is not None else self.daemon.config.store.path
        return None if not path or str(path) == ":memory:" else str(path)

    def observe(self, observation: Observation, now: float) -> None:
        """The account's observer: metrics, the page's hub, the JSON event log."""
        self.metrics.observe(observation, now)
        self.hub.observe(observation, now)
        self.notices.observe(observation, now)
        if self.event_log is not None:
            self.event_log.observe(observation, now)

    def close(self) -> None:
        self.hub.close()
        self.notices.close()


ACCOUNT_PARAM = "account"


class Observability:
    """``/metrics`` and the supervisor page of a process (``HostView``); ``attach_observability`` builds it.
    Each account has its ``AccountPages`` while it runs (an ``AccountListener``); the page's requests name
    theirs with ``?account=APPID`` (default: the first account running here, in the config's order)."""

    def __init__(self, host: HostView) -> None:
        self.host = host
        self.accounts: dict[str, AccountPages] = {}
        self.metrics = AccountsMetrics(lambda: {a: p.metrics for a, p in self.accounts.items()})
        server = host.config.server
        self.access = Access(server.admin_token, server.readonly_token)
        self._several = len(host.config.every_account) > 1
        host.add_listener(self)

    def account_added(self, daemon: DaemonView) -> None:
        pages = AccountPages(daemon, appid_in_events=self._several)
        pages.hub.accounts = self.account_list
        old = self.accounts.get(pages.appid)
        if old is not None:
            old.close()
        self.accounts[pages.appid] = pages
        daemon.observers.append(pages.observe)

    def account_removed(self, appid: str) -> None:
        pages = self.accounts.pop(appid, None)
        if pages is not None:
            pages.close()

    def account(self, appid: str | None = None) -> AccountPages:
        """The pages of ``appid``, or of the first account running here; ``LookupError`` if none."""
        if appid is not None:
            pages = self.accounts.get(appid)
            if pages is None:
                raise LookupError(f"account {appid!r} is not routed by this daemon now")
            return pages
        for running in self.host.runners:
            if running in self.accounts:
                return self.accounts[running]
        raise LookupError("no account is routed by this daemon now")

    def account_list(self) -> list[dict[str, Any]]:
        """The accounts for the page's selector."""
        return [
            {"appid": s.appid, "running": s.running, "status": s.status, "waiting": s.waiting}
            for s in self.host.account_status()
        ]

    def _who(self, request: web.Request) -> Principal | None:
        return self.access.identify(request, time.time())

    def _pages(self, request: web.Request) -> AccountPages:
        try:
            return self.account(request.query.get(ACCOUNT_PARAM) or None)
        except LookupError as exc:
            raise web.HTTPNotFound(
                text=json.dumps({"error": str(exc)}), content_type="application/json"
            ) from None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self.metrics_page, allow_head=False),
            web.get("/supervisor", self.page, allow_head=False),
            web.post("/supervisor/login", self.login),
            web.post("/supervisor/logout", self.logout),
            web.get("/supervisor/state", self.state, allow_head=False),
            web.get("/supervisor/events", self.events, allow_head=False),
            web.get("/supervisor/history", self.history_json, allow_head=False),
            web.get("/supervisor/history/{name}.svg", self.history_svg, allow_head=False),
            web.get("/supervisor/static/{name}", self.static, allow_head=False),
        ]

    async def on_shutdown(self, _app: web.Application) -> None:
        for pages in list(self.accounts.values()):
            pages.close()

    # ------------------------------------------------------------------ handlers

    async def metrics_page(self, request: web.Request) -> web.Response:
        if self._who(request) is None:
            return _unauthorized_json()
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": self.metrics.content_type, "Cache-Control": "no-store"},
        )

    async def page(self, request: web.Request) -> web.Response:
        given = request.query.get("token")
        if given is not None:
            role = self.access.role_of_token(given)
            if role is None:
                log.warning("supervisor: wrong token in the URL from %s", request.remote)
                return self._login_page("That token is not the admin token nor the read-only token.")
            return self._logged_in(request, role)
        who = self._who(request)
        if who is None:
            return self._login_page(None)
        csrf = self.access.csrf_token(who) or ""
        meta = (
            f'<meta name="kfrouter-role" content="{html.escape(who.role)}">\n'
            f'<meta name="kfrouter-csrf" content="{html.escape(csrf)}">'
        )
        return web.Response(
            text=_static("supervisor.html").replace("<!--SESSION-->", meta),
            content_type="text/html",
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    async def login(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except Exception:
            return self._login_page("The login form could not be read.")
        given = form.get("token")
        role = self.access.role_of_token(given) if isinstance(given, str) else None
        if role is None:
            log.warning("supervisor: failed login from %s", request.remote)
            return self._login_page("That token is not the admin token nor the read-only token.")
        return self._logged_in(request, role)

    async def logout(self, request: web.Request) -> web.Response:
        resp = _see_other("/supervisor")
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def state(self, request: web.Request) -> web.Response:
        if self._who(request) is None:
            return _unauthorized_json()
        return web.Response(
            body=self._pages(request).hub.snapshot_bytes(),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self._who(request) is None:
            return _unauthorized_json()
        return await self._pages(request).hub.stream(request)

    async def history_json(self, request: web.Request) -> web.Response:
        """The last 24 hours from the store in 15-minute slots, per group (``router.history``)."""
        if self._who(request) is None:
            return _unauthorized_json()
        try:
            data = await self._pages(request).history.get()
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=503, headers={"Cache-Control": "no-store"})
        return web.json_response(data, headers={"Cache-Control": "no-store"})

    async def history_svg(self, request: web.Request) -> web.Response:
        """One history chart as an SVG image (``waiting``, ``in_session``, ``service_level``, ``abandoned``)."""
        if self._who(request) is None:
            return _unauthorized_json()
        name = request.match_info["name"]
        try:
            svg = await self._pages(request).history.chart(name)
        except KeyError:
            raise web.HTTPNotFound(text=f"no history chart {name!r}") from None
        except LookupError as exc:
            return web.json_response({"error": str(exc)}, status=503, headers={"Cache-Control": "no-store"})
        return web.Response(
            text=svg,
            content_type="image/svg+xml",
            charset="utf-8",
            headers={
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'",
            },
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        ctype = STATIC_TYPES.get(name)
        if ctype is None:
            raise web.HTTPNotFound(text="no such file")
        return web.Response(
            text=_static(name),
            content_type=ctype,
            charset="utf-8",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    # ------------------------------------------------------------------ helpers

    def _logged_in(self, request: web.Request, role: str) -> web.Response:
        resp = _see_other("/supervisor")
        expires = int(time.time()) + COOKIE_TTL_S
        log.info(
            "supervisor: %s logged in from %s", "an admin" if role == ADMIN else "a viewer", request.remote
        )
        resp.set_cookie(
            COOKIE,
            self.access.cookie(role, expires),
            max_age=COOKIE_TTL_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return resp

    def _login_page(self, error: str | None) -> web.Response:
        message = "" if error is None else f'<p class="login-error" role="alert">{html.escape(error)}</p>'
        body = _static("login.html").replace("<!--MESSAGE-->", message)
        return web.Response(
            text=body,
            status=401,
            content_type="text/html",
            charset="utf-8",
            headers={**SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="kfrouter"'},
        )


OBSERVABILITY_KEY: web.AppKey[Observability] = web.AppKey("kfrouter_observability", Observability)


def attach_observability(host: HostView, app: web.Application) -> Observability:
    """Add ``/metrics`` and ``/supervisor*`` to ``app`` and follow the accounts of ``host`` (each account's
    observers get its pages). Call before the app runs; calling again returns the same object
    (idempotent)."""
    existing = app.get(OBSERVABILITY_KEY)
    if existing is not None:
        return existing
    obs = Observability(host)
    app[OBSERVABILITY_KEY] = obs
    app.add_routes(obs.routes())
    app.on_shutdown.append(obs.on_shutdown)
    return obs


def observability_of(app: web.Application) -> Observability | None:
    """The ``Observability`` attached to ``app``, if any."""
    return app.get(OBSERVABILITY_KEY)
