"""A pure model of WeChat's side of customer service (kf) for one Official Account (one appid).

Rules: no I/O, no asyncio, no clock and no global randomness — every call that depends on time takes
``now`` (unix seconds, float) and every random draw uses the injected ``random.Random``. Methods answer
with plain dicts exactly as the HTTP API would (``{"errcode": N, "errmsg": ...}`` or the data keys), so
the fake HTTP server stays thin and the offline simulator can drive the same object. Pushes that WeChat
would send to the developer's URL (kf events, customer messages) are appended to ``outbox`` as ``Push``
values; the caller drains them with ``drain_outbox()``.

Behaviour follows spec §10 (emulation guidance); every uncertain point is a ``FakeOptions`` switch.
The session operations have bare-result cores that hold the rules (``create_errcode``, ``close_errcode``
-> errcode int; ``transfer_result``, ``leave_result`` -> result string), which the JSON methods wrap; the
offline simulator calls the cores. The hot paths used by the simulator (those cores, ``customer_message``,
``set_agent``) are O(1) (amortized) apart from WeChat's own auto-accept (off by default), which scans the
wait list; per customer they allocate one wait-list record and reach the set of every openid ever seen
only in batches (see ``known``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random

import attrs
from attrs import define, field, frozen

from kfrouter.sim import fake_options as fo
from kfrouter.sim.fake_options import FakeOptions
from kfrouter.sim.model_base import Json, ModelBase
from kfrouter.sim.wechat_tokens import TokenBook

MAX_ACCOUNTS = 100  # spec §2.1
MAX_WAITCASE = 100  # spec §2.12
MAX_MSGLIST = 10_000  # spec §2.13
MAX_MSGLIST_WINDOW_S = 86_400
MAX_NICKNAME = 16  # spec §1.7
MAX_HEADIMG_BYTES = 5 * 1024 * 1024  # spec §2.4
INVITE_TTL_S = 7 * 86_400  # [INF] how long an invitation stays "waiting"
TYPING_INTERACTION_S = 30.0  # spec §6.2
TYPING_LASTS_S = 15.0
SEEN_BATCH = 1024  # openids seen lately, folded into ``known`` together
MSG_TYPES = frozenset(
    {
        "text",
        "image",
        "voice",
        "video",
        "music",
        "news",
        "mpnews",
        "msgmenu",
        "wxcard",
        "miniprogrampage",
        "link",
    }
)


@frozen
class Push:
    """One push WeChat would POST to the developer's URL. ``msg_type`` is ``text`` or ``event``."""

    openid: str
    create_time: int
    msg_type: str
    event: str = ""
    content: str = ""
    msg_id: int = 0
    kf_account: str = ""
    from_kf_account: str = ""
    to_kf_account: str = ""
    event_key: str = ""

    def to_json(self) -> Json:
        return {k: v for k, v in attrs.asdict(self).items() if v not in ("", 0) or k == "create_time"}


@define(slots=True)
class _Agent:
    kf_account: str
    kf_id: int
    nickname: str
    headimgurl: str = ""
    kf_wx: str | None = None
    invite_wx: str | None = None
    invite_expire: int = 0
    invite_status: str = ""
    status: int = 0  # bitmask: 1 = web/PC, 2 = mobile (legacy); 0 = offline
    auto_accept: int = 0
    # the agent's sessions: openid -> when it began (unix s; ``createtime`` is its int), acceptance order
    sessions: dict[str, float] = field(factory=dict)


class _Waiting(float):
    """A customer on the wait list, pinned to no agent: the arrival time itself (a float, so that the
    simulator's once-per-customer record is one small object outside the garbage collector's lists)."""

    __slots__ = ()
    pinned: str | None = None

    @property
    def arrived(self) -> float:
        return float(self)


class _PinnedWaiting(_Waiting):
    """A customer waiting for one agent (a transfer with TransInfo): ``pinned`` is its kf_account."""

    __slots__ = ("pinned",)

    def __new__(cls, arrived: float, pinned: str) -> _PinnedWaiting:
        self = super().__new__(cls, arrived)
        self.pinned = pinned
        return self


@define(slots=True)
class _Customer:
    followed: bool = True
    last_msg_at: float | None = None
    window_start: float = -math.inf
    window_used: int = 0
    event_at: float = -math.inf
    event_used: int = 0
    last_interaction: float = -math.inf
    typing_until: float = -math.inf


class WeChatModel(ModelBase[Push]):
    """WeChat's state for one Official Account: tokens, kf accounts, sessions, wait list, windows.

    ``appid``/``secret``: credentials the token endpoints accept; ``wxid``: the account's WeChat ID,
    the required suffix of kf accounts; ``original_id``: the ``gh_...`` id used as ``ToUserName`` in
    pushes. ``options`` may be shared with a server and changed at run time. ``history=False``: keep no
    create log, message records or sent texts; ``remember_openids=False``: keep no set of every openid
    ever seen (``known`` stays empty), for a driver that only names openids it put on the wait list (the
    simulator's replay, where the set would grow with every customer); needs ``check_openid`` off.
    """

    ENDPOINTS = fo.ENDPOINTS

    def __init__(
        self,
        appid: str,
        secret: str,
        *,
        wxid: str = "test",
        original_id: str | None = None,
        options: FakeOptions | None = None,
        rng: random.Random | None = None,
        history: bool = True,
        remember_openids: bool = True,
    ) -> None:
        for name, value in (("appid", appid), ("secret", secret), ("wxid", wxid)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"WeChatModel: {name} must be a non-empty string, got {value!r}")
        self.appid = appid
        self.secret = secret
        self.wxid = wxid
        self.original_id = original_id or "gh_" + hashlib.sha1(appid.encode()).hexdigest()[:12]
        self.options = options if options is not None else FakeOptions()
        self.rng = rng if rng is not None else random.Random(0)
        self.history = history  # False: keep no create_log / records / sent (long simulations)
        self.remember_openids = remember_openids
        if not remember_openids and self.options.check_openid:
            raise ValueError("WeChatModel: remember_openids=False needs options.check_openid=False")
        self._reset_state()

    def _reset_state(self) -> None:
        self.agents: dict[str, _Agent] = {}
        self.sessions: dict[str, _Agent] = {}  # openid -> the agent serving them (start: agent.sessions)
        self.waiting: dict[str, _Waiting] = {}  # arrival order
        # openids the account has seen (``check_openid``; read them through ``known``): a transfer appends
        # to the short list _seen_lately, folded into the set in batches, because an add into a set of
        # every openid ever seen is a cache miss, and most openids are only ever looked up on the wait list
        self._known: set[str] = set()
        self._seen_lately: list[str] = []
        # openids in a session whose customer wrote since it began (absent: the session's start)
        self._last_activity: dict[str, float] = {}
        # openids in a session begun while check_openid was off and not known then: close checks
        # ``known`` only for these and for openids in no session (everyone else was known at the start)
        self._strangers: set[str] = set()
        self.customers: dict[str, _Customer] = {}  # known openids with state; absent = a fresh _Customer
        self.records: list[Json] = []  # getmsglist records; msgid = index + 1
        self.sent: dict[str, list[Json]] = {}  # custom/send and passive replies per openid
        self.create_log: list[Json] = []  # every kfsession/create call and its errcode
        self._reset_gate()
        self._next_kf_id = 1001
        self._next_msg_id = 24_000_000_000_000_001
        self.tokens = TokenBook(self.options, self.rng, self.err)
        self._rate: dict[str, tuple[int, int, int, int]] = {}  # ep -> (minute, n, day, n)

    @property
    def known(self) -> set[str]:
        """The openids the account has seen (``check_openid``)."""
        if self._seen_lately:
            self._fold_seen()
        return self._known

    def _fold_seen(self) -> None:
        if self.remember_openids:
            self._known.update(self._seen_lately)
        self._seen_lately.clear()

    # ------------------------------------------------------------------ envelopes
    def err(self, code: int, hint: str = "") -> Json:
        """``{"errcode", "errmsg"}`` with WeChat's text, an optional hint and a random ``rid``."""
        text = self.options.errmsg(code)
        if hint:
            text = f"{text} hint: [{hint}]"
        if self.options.errmsg_rid:
            r = self.rng.getrandbits(96)
            text = f"{text} rid: {r >> 64:08x}-{(r >> 32) & 0xFFFFFFFF:08x}-{r & 0xFFFFFFFF:08x}"
        return {"errcode": code, "errmsg": text}

    @staticmethod
    def ok() -> Json:
        return {"errcode": 0, "errmsg": "ok"}

    def _push_event(
        self,
        openid: str,
        now: float,
        event: str,
        *,
        kf_account: str = "",
        from_kf_account: str = "",
        to_kf_account: str = "",
        event_key: str = "",
    ) -> None:
        self.outbox.append(
            Push(
                openid=openid,
                create_time=int(now),
                msg_type="event",
                event=event,
                kf_account=kf_account,
                from_kf_account=from_kf_account,
                to_kf_account=to_kf_account,
                event_key=event_key,
            )
        )

    # ------------------------------------------------------------------ tokens (spec §4)
    def _credentials_error(
        self, grant_type: object, appid: object, secret: object, *, stable: bool
    ) -> Json | None:
        if grant_type != "client_credential":
            return self.err(40002, f"grant_type {grant_type!r}")
        if not appid:
            return self.err(41002)
        if appid != self.appid:
            return self.err(40013)
        if not secret:
            return self.err(41004)
        if self.options.reject_secret or secret != self.secret:
            return self.err(self.options.code("stable_wrong_secret" if stable else "token_wrong_secret"))
        if not self.options.ip_whitelisted:
            return self.err(40164)
        return None

    def fetch_token(self, *, grant_type: object, appid: object, secret: object, now: float) -> Json:
        """``GET /cgi-bin/token``: a new token; the previous one stays valid ``token_grace_s`` more."""
        bad = self._credentials_error(grant_type, appid, secret, stable=False)
        return bad if bad is not None else self.tokens.fetch(now)

    def fetch_stable_token(
        self, *, grant_type: object, appid: object, secret: object, force_refresh: object, now: float
    ) -> Json:
        """``POST /cgi-bin/stable_token``: the same token until shortly before expiry; ``force_refresh``
        issues a new one and revokes the old at once (see ``sim.wechat_tokens``)."""
        bad = self._credentials_error(grant_type, appid, secret, stable=True)
        if bad is not None:
            return bad
        if not isinstance(force_refresh, bool):
            return self.err(47001, "force_refresh must be a boolean")
        return self.tokens.fetch_stable(force_refresh, now)

    def check_access_token(self, token: object, now: float) -> Json | None:
        """None when ``token`` is usable at ``now``; else 41001 missing, 40014 never issued,
        40001 superseded (after the grace), 42001 expired."""
        return self.tokens.check(token, now)

    def owns_token(self, token: str) -> bool:
        return self.tokens.owns(token)

    # ------------------------------------------------------------------ gate: counts, faults, limits
    def check_call(self, endpoint: str, access_token: object, now: float) -> Json | None:
        """Common checks for an API call, in WeChat's order: token, 65400, rate limit. Returns the
        error to answer, or None to go on. Token endpoints skip the token check. (Counting the call in
        ``calls`` is the caller's job, so that refused and faulted calls count too.)"""
        if endpoint not in fo.TOKEN_ENDPOINTS:
            bad = self.check_access_token(access_token, now)
            if bad is not None:
                return bad
        if endpoint in fo.KF_ENDPOINTS and not self.options.kf_api_enabled:
            return self.err(65400)
        if endpoint == fo.TOKEN and self.options.token_daily_quota is not None:
            limit = fo.RateLimit(per_day=self.options.token_daily_quota)
            bad = self._rate_check(endpoint + "#quota", limit, now)
            if bad is not None:
                return bad
        rl = self.options.rate_limits.get(endpoint)
        return self._rate_check(endpoint, rl, now) if rl is not None else None

    def _rate_check(self, key: str, rl: fo.RateLimit, now: float) -> Json | None:
        minute, day = math.floor(now / 60), math.floor(now / 86_400)
        m0, mn, d0, dn = self._rate.get(key, (minute, 0, day, 0))
        mn = mn if m0 == minute else 0
        dn = dn if d0 == day else 0
        if rl.per_day is not None and dn >= rl.per_day:
            return self.err(45009)
        if rl.per_minute is not None and mn >= rl.per_minute:
            return self.err(45011)
        self._rate[key] = (minute, mn + 1, day, dn + 1)
        return None

    # ------------------------------------------------------------------ kf accounts (spec §2.1-2.7)
    def _bad_account_format(self, kf_account: object) -> bool:
        if not isinstance(kf_account, str) or kf_account.count("@") != 1:
            return True
        prefix, suffix = kf_account.split("@")
        return not fo.KF_ACCOUNT_PREFIX.fullmatch(prefix) or suffix != self.wxid

    @staticmethod
    def _bad_nickname(nickname: object) -> bool:
        return not isinstance(nickname, str) or not nickname.strip() or len(nickname) > MAX_NICKNAME

    def _bound(self, agent: _Agent) -> bool:
        return agent.kf_wx is not None and not self.options.agents_unbound

    def _kf_id(self, agent: _Agent) -> int | str:
        return agent.kf_id if self.options.kf_id_type == "int" else str(agent.kf_id)

    def _new_agent(self, kf_account: str, nickname: str) -> _Agent:
        agent = _Agent(kf_account=kf_account, kf_id=self._next_kf_id, nickname=nickname)
        self._next_kf_id += 1
        self.agents[kf_account] = agent
        return agent

    def add_account(self, kf_account: object, nickname: object) -> Json:
        if self._bad_account_format(kf_account):
            return self.err(65404, f"kf_account {kf_account!r}: expected prefix@{self.wxid}")
        if self._bad_nickname(nickname):
            return self.err(65403)
        assert isinstance(kf_account, str) and isinstance(nickname, str)
        if kf_account in self.agents:
            return self.err(65406)
        if len(self.agents) >= MAX_ACCOUNTS:
            return self.err(65405)
        self._new_agent(kf_account, nickname)
        return self.ok()

    def update_account(self, kf_account: object, nickname: object) -> Json:
        agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
        if agent is None:
            return self.err(65401)
        if self._bad_nickname(nickname):
            return self.err(self.options.code("update_bad_nickname"))
        assert isinstance(nickname, str)
        agent.nickname = nickname
        return self.ok()

    def delete_account(self, kf_account: object, now: float) -> Json:
        """Delete; the agent's sessions end (kf_close_session pushed) and pins to it are dropped."""
        agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
        if agent is None:
            return self.err(self.options.code("del_unknown"))
        for openid in list(agent.sessions):
            self._end_session(openid, now, push=True)
        del self.agents[agent.kf_account]
        for openid, w in self.waiting.items():
            if w.pinned == agent.kf_account:
                self.waiting[openid] = _Waiting(w)  # same key: the customer keeps their place
        return self.ok()

    def upload_headimg(
        self, kf_account: object, filename: str | None, content_type: str | None, size: int
    ) -> Json:
        agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
        if agent is None:
            return self.err(65401)
        if filename is None and content_type is None and size == 0:
            return self.err(41005, "form field media")
        name = (filename or "").lower()
        ctype = (content_type or "").lower()
        if not (name.endswith((".jpg", ".jpeg")) or ctype in ("image/jpeg", "image/jpg")):
            return self.err(40005, "jpg only")
        if size <= 0 or size > MAX_HEADIMG_BYTES:
            return self.err(40009, f"{size} bytes")
        digest = hashlib.sha1(f"{agent.kf_account}:{size}:{self._next_msg_id}".encode()).hexdigest()
        agent.headimgurl = f"http://mmbiz.qpic.cn/mmbiz/{digest}/0"
        return self.ok()

    def invite_worker(self, kf_account: object, invite_wx: object, now: float) -> Json:
        agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
        if agent is None:
            return self.err(65401)
        if not isinstance(invite_wx, str) or not fo.WECHAT_ID.fullmatch(invite_wx):
            return self.err(65409)
        self._expire_invite(agent, now)
        if agent.kf_wx is not None:
            return self.err(65412)
        if agent.invite_status == "waiting":
            return self.err(65411)
        for other in self.agents.values():
            if other.kf_wx == invite_wx:
                return self.err(65407)
            self._expire_invite(other, now)
            if other.invite_wx == invite_wx and other.invite_status == "waiting":
                return self.err(65408)
        agent.invite_wx = invite_wx
        agent.invite_expire = int(now + INVITE_TTL_S)
        agent.invite_status = "waiting"
        return self.ok()

    @staticmethod
    def _expire_invite(agent: _Agent, now: float) -> None:
        if agent.invite_status == "waiting" and now >= agent.invite_expire:
            agent.invite_status = "expired"

    def answer_invite(self, kf_account: str, accept: bool, now: float) -> Json:
        """The invited WeChat user accepts (binds) or rejects the invitation (control/test hook)."""
        agent = self.agents.get(kf_account)
        if agent is None:
            return self.err(65401)
        self._expire_invite(agent, now)
        if agent.invite_status != "waiting":
            return self.err(65409, "no pending invitation")
        if accept:
            agent.kf_wx, agent.invite_wx, agent.invite_status, agent.invite_expire = (
                agent.invite_wx,
                None,
                "",
                0,
            )
        else:
            agent.invite_status = "rejected"
        return self.ok()

    def get_kf_list(self, now: float) -> Json:
        rows: list[Json] = []
        for a in self.agents.values():
            self._expire_invite(a, now)
            row: Json = {
                "kf_account": a.kf_account,
                "kf_headimgurl": a.headimgurl,
                "kf_id": self._kf_id(a),
                "kf_nick": a.nickname,
            }
            if a.kf_wx is not None and not self.options.agents_unbound:
                row["kf_wx"] = a.kf_wx
            elif a.invite_wx is not None:
                row.update(
                    invite_wx=a.invite_wx, invite_expire_time=a.invite_expire, invite_status=a.invite_status
                )
            rows.append(row)
        return {"kf_list": rows}

    def get_online_kf_list(self) -> Json:
        opts = self.options
        rows: list[Json] = []
        for a in self.agents.values():
            if a.status == 0:
                continue
            row: Json = {
                "kf_account": a.kf_account,
                "status": 1 if opts.online_status_style == "new" else a.status,
                "kf_id": self._kf_id(a),
            }
            if opts.emit_auto_accept:
                row["auto_accept"] = a.auto_accept
            row["accepted_case"] = len(a.sessions)
            if opts.online_status_style == "new":
                row["kf_openid"] = f"kfopenid{a.kf_id}"
            rows.append(row)
        return {"kf_online_list": rows}

    # ------------------------------------------------------------------ sessions (spec §2.8-2.12)
    def _unknown_openid(self, openid: object) -> bool:
        """40003's test: not a non-empty string, or (``check_openid``) an openid the account never saw.
        Everyone on the wait list, and everyone in a session begun while known (not in ``_strangers``),
        has been seen: the big ``known`` set is read only for the others."""
        if not isinstance(openid, str) or not openid:
            return True
        if not self.options.check_openid or openid in self.waiting:
            return False
        return (openid not in self.sessions or openid in self._strangers) and openid not in self.known

    def create_session(self, kf_account: object, openid: object, now: float, *, via: str = "api") -> Json:
        """``kfsession/create`` (``via='api'``, logged in ``create_log``) or an agent accepting in
        their own client (``via='agent'``, always pushes kf_create_session)."""
        code = self.create_errcode(kf_account, openid, now, via)
        return self.ok() if code == 0 else self.err(code)

    def create_errcode(self, kf_account: object, openid: object, now: float, via: str = "api") -> int:
        """``create_session``'s decision as a bare errcode (0 = the session exists), with the same
        effects: the rules live here, ``create_session`` only wraps the answer in JSON."""
        opts = self.options
        agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
        if self._unknown_openid(openid):
            code = 40003
        elif agent is None:
            code = 65401
        elif not self._bound(agent):
            code = 65402
        elif agent.status == 0 and opts.create_offline_error:
            code = opts.create_offline_error
        else:
            assert isinstance(openid, str)
            serving = self.sessions.get(openid)
            if serving is None:
                code = 0
                if not opts.check_openid and self.remember_openids and openid not in self.known:
                    self._strangers.add(openid)
                self._start_session(agent, openid, now, push=via != "api" or opts.push_events_on_api_actions)
            else:
                code = 0 if serving is agent else 65414
        if self.history and via == "api":
            self.create_log.append({"time": now, "kf_account": kf_account, "openid": openid, "errcode": code})
        return code

    def _start_session(self, agent: _Agent, openid: str, now: float, push: bool) -> None:
        """``openid`` begins a session with ``agent`` (and leaves the wait list, if on it)."""
        self.waiting.pop(openid, None)
        self.sessions[openid] = agent
        agent.sessions[openid] = now
        if push:
            self._push_event(openid, now, "kf_create_session", kf_account=agent.kf_account)

    def _end_session(self, openid: str, now: float, *, push: bool) -> None:
        agent = self.sessions.pop(openid)
        agent.sessions.pop(openid, None)
        if self._last_activity:
            self._last_activity.pop(openid, None)
        if self._strangers:
            self._strangers.discard(openid)
        if push:
            self._push_event(openid, now, "kf_close_session", kf_account=agent.kf_account)

    def close_session(self, kf_account: object, openid: object, now: float, *, via: str = "api") -> Json:
        """``kfsession/close`` or (``via='agent'``) the agent closing it in their client."""
        code = self.close_errcode(kf_account, openid, now, via)
        return self.ok() if code == 0 else self.err(code)

    def close_errcode(self, kf_account: object, openid: object, now: float, via: str = "api") -> int:
        """``close_session``'s decision as a bare errcode (0 = closed), with the same effects."""
        if self._unknown_openid(openid):
            return 40003
        assert isinstance(openid, str)
        serving = self.sessions.get(openid)
        if serving is None or serving.kf_account != kf_account:  # the refusals, in WeChat's order
            agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
            if agent is None:
                return 65401
            return 65413 if serving is None else 65414
        opts = self.options
        self._end_session(openid, now, push=via != "api" or opts.push_events_on_api_actions)
        if opts.wechat_auto_accept:  # WeChat's own auto-accept, when on: the freed place is taken
            self._auto_assign(now)
        return 0

    def switch_session(self, openid: str, to_kf_account: str, now: float) -> Json:
        """An agent hands the customer to another agent in their client: kf_switch_session."""
        src = self.sessions.get(openid)
        if src is None:
            return self.err(65413)
        target = self.agents.get(to_kf_account)
        if target is None:
            return self.err(65401)
        if not self._bound(target):
            return self.err(65402)
        if src.kf_account == to_kf_account:
            return self.err(65414, "already served by this agent")
        src.sessions.pop(openid, None)
        self.sessions[openid] = target  # same key: the session keeps its place; it begins anew
        target.sessions[openid] = now
        self._last_activity.pop(openid, None)
        self._push_event(
            openid, now, "kf_switch_session", from_kf_account=src.kf_account, to_kf_account=to_kf_account
        )
        self._auto_assign(now)
        return self.ok()

    def get_session(self, openid: object) -> Json:
        if self._unknown_openid(openid):
            return self.err(40003)
        assert isinstance(openid, str)
        agent = self.sessions.get(openid)
        out: Json = (
            {"createtime": int(agent.sessions[openid]), "kf_account": agent.kf_account}
            if agent is not None
            else {"createtime": self.options.no_session_createtime, "kf_account": ""}
        )
        if self.options.getsession_include_errcode:
            out = {**self.ok(), **out}
        return out

    def get_session_list(self, kf_account: object) -> Json:
        agent = self.agents.get(kf_account) if isinstance(kf_account, str) else None
        if agent is None:
            return self.err(65401)
        if not self._bound(agent):
            return self.err(65402)
        return {
            "sessionlist": [
                {"createtime": int(since), "openid": o}
                for o, since in agent.sessions.items()
                if o in self.sessions
            ]
        }

    def get_wait_case(self) -> Json:
        rows: list[Json] = []
        legacy = self.options.waitcase_style == "legacy"
        for openid, w in itertools.islice(self.waiting.items(), MAX_WAITCASE):
            cust = self.customers.get(openid)
            latest = cust.last_msg_at if cust is not None and cust.last_msg_at is not None else w.arrived
            if legacy:
                rows.append({"createtime": int(w.arrived), "kf_account": w.pinned or "", "openid": openid})
            else:
                rows.append({"latest_time": int(latest), "openid": openid})
        return {"count": len(self.waiting), "waitcaselist": rows}

    def get_msg_list(self, starttime: object, endtime: object, msgid: object, number: object) -> Json:
        for name, v in (("starttime", starttime), ("endtime", endtime), ("msgid", msgid), ("number", number)):
            if isinstance(v, bool) or not isinstance(v, int):
                return self.err(65416, f"{name} must be an integer")
        assert isinstance(starttime, int) and isinstance(endtime, int)
        assert isinstance(msgid, int) and isinstance(number, int)
        if endtime <= starttime:
            return self.err(65416, "endtime must be after starttime")
        if endtime - starttime > MAX_MSGLIST_WINDOW_S:
            return self.err(self.options.code("msglist_window"))
        if not 1 <= number <= MAX_MSGLIST or msgid < 1:
            return self.err(65416, "number 1..10000, msgid >= 1")
        out: list[Json] = []
        last = msgid
        for idx in range(msgid - 1, len(self.records)):
            rec = self.records[idx]
            if starttime <= rec["time"] <= endtime:
                out.append(rec)
                last = idx + 1
                if len(out) >= number:
                    break
        cursor = last + 1 if self.options.msgid_cursor == "next_to_request" and out else last
        return {"recordlist": out, "number": len(out), "msgid": cursor}

    def _record(self, openid: str, opercode: int, text: str, worker: str, now: float) -> None:
        if not self.history:
            return
        self.records.append(
            {"openid": openid, "opercode": opercode, "text": text, "time": int(now), "worker": worker}
        )

    # ------------------------------------------------------------------ outbound messages (spec §6)
    def _window_error(self, cust: _Customer | None, now: float, consume: bool) -> Json | None:
        """45015 outside every window or unfollowed; 45047 when the open window's quota is used up."""
        opts = self.options
        if cust is None or not cust.followed:
            return self.err(45015)
        user_open = now - cust.window_start <= opts.window_hours * 3600
        event_open = now - cust.event_at <= opts.event_window_s
        if user_open and cust.window_used < opts.window_quota:
            if consume:
                cust.window_used += 1
            return None
        if event_open and cust.event_used < opts.event_window_quota:
            if consume:
                cust.event_used += 1
            return None
        return self.err(45047 if user_open or event_open else 45015)

    def send_custom(
        self, touser: object, msgtype: object, payload: object, kf_account: object, now: float
    ) -> Json:
        """``message/custom/send``: check the window, record the message in ``sent[touser]``."""
        if not isinstance(touser, str) or not touser:
            return self.err(40003, "touser")
        if msgtype not in MSG_TYPES:
            return self.err(40008, f"msgtype {msgtype!r}")
        if not isinstance(payload, dict):
            return self.err(47001, f"{msgtype} must be an object")
        if msgtype == "text" and (not isinstance(payload.get("content"), str) or not payload["content"]):
            return self.err(47001, "text.content must be a non-empty string")
        if kf_account is not None and (not isinstance(kf_account, str) or kf_account not in self.agents):
            return self.err(self.options.code("send_unknown_kf"))
        cust = self._customer(touser) if touser in self.known else None
        bad = self._window_error(cust, now, consume=True)
        if bad is not None:
            return bad
        assert cust is not None
        cust.typing_until = -math.inf
        content = str(payload.get("content", f"[{msgtype}]"))
        if self.history:
            entry = {"time": now, "msgtype": msgtype, "content": content, "kf_account": kf_account}
            self.sent.setdefault(touser, []).append({**entry, "via": "custom_send"})
        sess = self.sessions.get(touser)
        worker = kf_account if isinstance(kf_account, str) else (sess.kf_account if sess is not None else "")
        if worker:
            self._record(touser, 2002, content, worker, now)
        return self.ok()

    def typing(self, touser: object, command: object, now: float) -> Json:
        if not isinstance(touser, str) or not touser:
            return self.err(40003, "touser")
        if command not in ("Typing", "CancelTyping"):
            return self.err(45072)
        cust = self._customer(touser) if touser in self.known else None
        bad = self._window_error(cust, now, consume=False)
        if bad is not None and bad["errcode"] == 45015:
            return bad
        assert cust is not None
        if now - cust.last_interaction > TYPING_INTERACTION_S:
            return self.err(45080)
        if command == "Typing":
            if now < cust.typing_until:
                return self.err(45081)
            cust.typing_until = now + TYPING_LASTS_S
        else:
            cust.typing_until = -math.inf
        return self.ok()

    def record_passive_reply(self, openid: str, msgtype: str, content: str, now: float) -> None:
        """A synchronous reply to a push (not a transfer) reached the user."""
        self.sent.setdefault(openid, []).append(
            {"time": now, "msgtype": msgtype, "content": content, "kf_account": None, "via": "passive_reply"}
        )

    # ------------------------------------------------------------------ the customer's side
    def _customer(self, openid: str) -> _Customer:
        cust = self.customers.get(openid)
        if cust is None:
            cust = self.customers[openid] = _Customer()
            if self.remember_openids:
                self._known.add(openid)
        return cust

    def follow(self, openid: str, now: float) -> Json:
        """The user follows the account: 3 messages / 60 s window and a ``subscribe`` event push."""
        cust = self._customer(openid)
        cust.followed = True
        self._open_event_window(cust, now)
        self._push_event(openid, now, "subscribe")
        return {"routed": "webhook"}

    def unfollow(self, openid: str, now: float) -> Json:
        cust = self._customer(openid)
        cust.followed = False
        self.waiting.pop(openid, None)
        self._push_event(openid, now, "unsubscribe")
        return {"routed": "webhook"}

    def _open_event_window(self, cust: _Customer, now: float) -> None:
        cust.event_at, cust.event_used = now, 0
        cust.last_interaction = now

    def menu_click(self, openid: str, key: str, now: float) -> Json:
        """A CLICK menu event: 3 messages / 60 s window; events are always pushed (never forwarded)."""
        cust = self._customer(openid)
        self._open_event_window(cust, now)
        self._push_event(openid, now, "CLICK", event_key=key)
        return {"routed": "webhook"}

    def customer_message(self, openid: str, now: float, text: str = "", *, msgtype: str = "text") -> Json:
        """The user sends a message. In a session (not idle past ``forward_idle_s``) it goes to the
        agent; otherwise (waiting or unassigned) it is pushed to the developer's URL."""
        if not isinstance(openid, str) or not openid:
            raise ValueError(f"customer_message: openid must be a non-empty string, got {openid!r}")
        cust = self._customer(openid)
        opts = self.options
        cust.followed = True
        cust.last_msg_at = now
        cust.last_interaction = now
        if opts.reopen_on_user_message or now - cust.window_start > opts.window_hours * 3600:
            cust.window_start, cust.window_used = now, 0
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        agent = self.sessions.get(openid)
        if agent is not None:
            idle = opts.forward_idle_s
            last = self._last_activity.get(openid)
            if idle is None or now - (agent.sessions[openid] if last is None else last) <= idle:
                self._last_activity[openid] = now
                self._record(
                    openid, 2003, text if msgtype == "text" else f"[{msgtype}]", agent.kf_account, now
                )
                return {"routed": "agent", "kf_account": agent.kf_account, "msg_id": msg_id}
            self._end_session(openid, now, push=True)  # [INF] forwarding lapsed: the session is over
            self._auto_assign(now)
        self.outbox.append(
            Push(openid=openid, create_time=int(now), msg_type=msgtype, content=text, msg_id=msg_id)
        )
        return {"routed": "webhook", "msg_id": msg_id}

    def transfer(self, openid: str, now: float, kf_account: str | None = None) -> Json:
        """The developer replied ``transfer_customer_service`` (pinned to ``kf_account`` with TransInfo):
        the user joins the wait list (arrival kept if already waiting). Ignored while in a session."""
        return {"result": self.transfer_result(openid, now, kf_account)}

    def transfer_result(self, openid: str, now: float, kf_account: str | None = None) -> str:
        """``transfer``'s outcome as a bare string: ``in_session`` or ``waiting``."""
        # Once per customer in the simulator: the openid only becomes known (no _Customer until it has
        # window state, see _customer); an unpinned waiter's record is a float (_Waiting).
        if openid in self.sessions:
            return "in_session"
        seen = self._seen_lately
        seen.append(openid)
        if len(seen) >= SEEN_BATCH:
            self._fold_seen()
        waiting = self.waiting
        if kf_account is not None:  # a new pin; someone already waiting keeps their arrival and place
            w = waiting.get(openid)
            waiting[openid] = _PinnedWaiting(now if w is None else w.arrived, kf_account)
        elif openid not in waiting:
            waiting[openid] = _Waiting(now)
        if self.options.wechat_auto_accept:  # WeChat's own auto-accept, when on, may take them at once
            self._auto_assign(now)
            if openid in self.sessions:
                return "in_session"
        return "waiting"

    def leave_queue(self, openid: str) -> Json:
        return {"result": self.leave_result(openid)}

    def leave_result(self, openid: str) -> str:
        """The user stops waiting: ``left``, or ``not_waiting`` when they were not on the wait list."""
        return "left" if self.waiting.pop(openid, None) is not None else "not_waiting"

    # ------------------------------------------------------------------ the agents' side
    def set_agent(
        self,
        kf_account: str,
        now: float,
        *,
        nickname: str | None = None,
        bound: bool | str | None = None,
        status: int | None = None,
        auto_accept: int | None = None,
    ) -> Json:
        """Create (if new) and configure an agent directly, as the MP console and the agent's own client
        would: ``bound`` True/False or a WeChat ID, ``status`` 0 offline / 1 web / 2 mobile / 3 both,
        ``auto_accept`` the agent's auto-accept limit. New agents are bound and offline."""
        if not isinstance(kf_account, str) or kf_account.count("@") != 1 or not all(kf_account.split("@")):
            raise ValueError(f"set_agent: kf_account must look like prefix@wxid, got {kf_account!r}")
        if status is not None and (isinstance(status, bool) or status not in (0, 1, 2, 3)):
            raise ValueError(f"set_agent({kf_account}): status must be 0, 1, 2 or 3, got {status!r}")
        if auto_accept is not None and (
            isinstance(auto_accept, bool) or not isinstance(auto_accept, int) or auto_accept < 0
        ):
            raise ValueError(
                f"set_agent({kf_account}): auto_accept must be an integer >= 0, got {auto_accept!r}"
            )
        agent = self.agents.get(kf_account)
        if agent is None:
            agent = self._new_agent(kf_account, nickname or kf_account.split("@")[0])
            agent.kf_wx = "wx_" + kf_account.split("@")[0]
        if nickname is not None:
            agent.nickname = nickname
        if bound is not None:
            if bound is True:
                agent.kf_wx = agent.kf_wx or "wx_" + kf_account.split("@")[0]
            elif bound is False:
                agent.kf_wx = None
            else:
                agent.kf_wx = str(bound)
            agent.invite_wx, agent.invite_status, agent.invite_expire = None, "", 0
        if status is not None:
            agent.status = status
        if auto_accept is not None:
            agent.auto_accept = auto_accept
        self._auto_assign(now)
        return self.agent_json(agent)

    def agent_json(self, agent: _Agent) -> Json:
        return {
            "kf_account": agent.kf_account,
            "kf_id": agent.kf_id,
            "nickname": agent.nickname,
            "bound": self._bound(agent),
            "kf_wx": agent.kf_wx,
            "status": agent.status,
            "auto_accept": agent.auto_accept,
            "accepted_case": len(agent.sessions),
        }

    def agent_accept(self, kf_account: str, now: float, openid: str | None = None) -> Json:
        """The agent takes a customer from the wait list in their client (the oldest one not pinned to
        someone else, or ``openid``); pushes kf_create_session. Ignores the auto-accept limit."""
        agent = self.agents.get(kf_account)
        if agent is None:
            return self.err(65401)
        if not self._bound(agent):
            return self.err(65402)
        if agent.status == 0:
            return self.err(65415)
        if openid is None:
            openid = next((o for o, w in self.waiting.items() if w.pinned in (None, kf_account)), None)
            if openid is None:
                return self.err(65413, "nobody waiting for this agent")
        w = self.waiting.get(openid)
        if w is None:
            return self.err(65413, "customer is not waiting")
        if w.pinned not in (None, kf_account):
            return self.err(65414, "customer is pinned to another agent")
        self._start_session(agent, openid, now, push=True)
        return {**self.ok(), "openid": openid}

    def _auto_assign(self, now: float) -> None:
        """WeChat's own auto-accept (``wechat_auto_accept``): the oldest waiting customers go to online,
        bound agents below their ``auto_accept`` limit (pinned ones only to their agent), least loaded
        first. O(waiting × agents) when on; a no-op when off. (No closure here: a function whose locals an
        inner function reads makes their cells at every call, and this one runs at every transfer and close.)"""
        if not self.options.wechat_auto_accept or not self.waiting:
            return
        for openid, w in list(self.waiting.items()):
            if w.pinned is not None:
                pinned = self.agents.get(w.pinned)
                target = pinned if pinned is not None and self._has_room(pinned) else None
            else:
                target = self._least_loaded_with_room()
                if target is None:
                    if not any(w2.pinned for w2 in self.waiting.values()):
                        return
                    continue
            if target is not None:
                self._start_session(target, openid, now, push=True)

    def _has_room(self, a: _Agent) -> bool:
        return a.status != 0 and self._bound(a) and len(a.sessions) < a.auto_accept

    def _least_loaded_with_room(self) -> _Agent | None:
        free = [a for a in self.agents.values() if self._has_room(a)]
        return min(free, key=lambda a: (len(a.sessions), a.kf_id)) if free else None

    # ------------------------------------------------------------------ inspection
    def snapshot(self, now: float) -> Json:
        """Everything a test wants to assert on, as JSON-ready data."""
        return {
            "appid": self.appid,
            "wxid": self.wxid,
            "original_id": self.original_id,
            "now": now,
            "agents": [self.agent_json(a) for a in self.agents.values()],
            "sessions": [
                {"openid": o, "kf_account": a.kf_account, "createtime": int(a.sessions[o])}
                for o, a in self.sessions.items()
            ],
            "waiting": [
                {"openid": o, "arrived": w.arrived, "pinned": w.pinned} for o, w in self.waiting.items()
            ],
            "calls": dict(self.calls),
            "create_log": list(self.create_log),
            "sent": {o: list(v) for o, v in self.sent.items()},
            "faults": {ep: attrs.asdict(f) for ep, f in self.faults.items()},
            "records": len(self.records),
        }
