"""A pure model of WeCom's side of 微信客服 for one corp: kf accounts, servicers, sessions, the message stream.

Rules: no I/O, no asyncio, no clock and no global randomness — every call that depends on time takes
``now`` (unix seconds) and every random draw (ids, tokens, codes) uses the injected ``random.Random``.
Methods answer with plain dicts exactly as the HTTP API would (``{"errcode": N, "errmsg": ...}`` plus data
keys), so the HTTP server (``sim.wecom_server``) stays thin. What WeCom would push to the callback URL is
appended to ``outbox`` as ``CallbackPush`` values (drain with ``drain_outbox()``). Actions of people —
customers writing, servicers accepting, ending, changing their status — are methods too (the control
API calls them); they raise ``ValueError`` naming what is wrong, as a person could not do it either.

Behaviour (spec wecom-kf.md; choices where it is silent are ``WeComOptions`` and docs/wecom.md):

* Sessions per (open_kfid, external_userid), states 0–4 of ``router.wechat.wecom_kf``; ``trans`` follows
  ``TRANSITIONS``: from state 4 → 95013, any other move not in the table → 95016; state 3 needs a
  servicer of the account (95014) who is 接待中 (95019). ``msg_code``: on a session's first entry into
  2 (queue notice, 48 h, text) and into 3 (48 h, text), and on 4 (end, 20 s, text/menu). A code is
  good once, before it expires, and only while the session is in the state it came from (95018).
* ``send_msg``: in states 0/1 only (95018), within 48 h of the customer's last message (95002), at most
  5 (95001); the customer writing again restores the quota. Not returned by ``sync_msg``.
* ``sync_msg``: one ordered stream per account (customer messages origin 3, events origin 4, servicer
  replies origin 5). Opaque cursors name a position; an empty cursor starts at the oldest message of the
  last 3 days. A callback's ``token`` is good 10 minutes for its account (95007); without one the call is
  rate limited (45009). Event entries carry open_kfid / external_userid inside ``event`` only.
* Every stream entry queues one callback for its account with a new token.
"""

from __future__ import annotations

import bisect
import math
import random
import re
import string
from typing import Any

from attrs import define, field, frozen

from kfrouter.router.wechat import wecom_kf as kf
from kfrouter.sim import wecom_options as wo
from kfrouter.sim.model_base import Json, ModelBase
from kfrouter.sim.wecom_options import WeComOptions

_ALNUM = string.ascii_letters + string.digits
_MSGID = re.compile(r"[0-9A-Za-z_-]{1,32}")
_OPEN_KFID = re.compile(r"[0-9A-Za-z_-]{1,64}")
MAX_ACCOUNT_PAGE = 100
MAX_SYNC_LIMIT = 1000
MAX_TEXT_BYTES = 2048
SEND_MSGTYPES = frozenset(
    {"text", "image", "voice", "video", "file", "link", "miniprogram", "msgmenu", "location"}
)
WELCOME_TYPES = frozenset({"text", "msgmenu"})
TEXT_ONLY = frozenset({"text"})


@frozen
class CallbackPush:
    """One ``kf_msg_or_event`` callback WeCom would POST: new entries wait in ``open_kfid``'s stream."""

    open_kfid: str
    token: str
    create_time: int


@define(slots=True)
class _Account:
    open_kfid: str
    name: str
    avatar: str = ""
    manage_privilege: bool = True
    servicers: list[str] = field(factory=list)  # userids, in the order they were added
    departments: list[int] = field(factory=list)


@define(slots=True)
class _Servicer:
    status: int = kf.SERVICER_RECEIVING  # list codes: 0 接待中, 1 停止接待
    stop_type: int = 0  # when stopped: 0 停止接待, 1 暂时挂起


@define(slots=True)
class _Session:
    state: int = kf.ENDED
    servicer: str | None = None
    started: float = -math.inf
    last_customer_msg: float = -math.inf
    sent_since_customer: int = 0
    entered: set[int] = field(factory=set)  # states entered in this session (msg_code once each)
    pool_since: float | None = None
    last_welcome: float = -math.inf


@define(slots=True)
class _Code:
    kind: str  # welcome | pool | accept | end
    open_kfid: str
    external_userid: str
    state: int | None  # the state the session must be in to use it (None: any)
    expires_at: float
    msgtypes: frozenset[str]
    used: bool = False


class WeComModel(ModelBase[CallbackPush]):
    """WeCom's 微信客服 state for one corp. ``corpid`` / ``secret`` are what ``gettoken`` accepts."""

    ENDPOINTS = wo.ENDPOINTS

    def __init__(
        self,
        corpid: str,
        secret: str,
        *,
        options: WeComOptions | None = None,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (("corpid", corpid), ("secret", secret)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"WeComModel: {name} must be a non-empty string, got {value!r}")
        self.corpid = corpid
        self.secret = secret
        self.options = options if options is not None else WeComOptions()
        self.rng = rng if rng is not None else random.Random(0)
        self._reset_state()

    def _reset_state(self) -> None:
        self.accounts: dict[str, _Account] = {}
        self.servicers: dict[str, _Servicer] = {}
        self.customers: set[str] = set()
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.codes: dict[str, _Code] = {}
        self.streams: dict[str, list[Json]] = {}
        self.sent: list[Json] = []  # send_msg / send_msg_on_event deliveries, in order
        self.trans_log: list[Json] = []  # every trans call and its errcode
        self._reset_gate()
        self._msgids: dict[str, set[str]] = {}
        self._cursors: dict[str, tuple[str, int]] = {}
        self._sync_tokens: dict[str, tuple[str, float]] = {}
        self._untokened: dict[str, tuple[int, int]] = {}  # open_kfid -> (minute, calls)
        self._sync_calls = 0
        self._token: str | None = None
        self._token_expires = -math.inf
        self._retired_tokens: set[str] = set()
        self._seq = 0

    # ------------------------------------------------------------------ envelopes and ids
    def err(self, code: int, hint: str = "") -> Json:
        """``{"errcode", "errmsg"}``: the text, ``, hint: [...]`` and the ``more info`` link WeCom adds."""
        text = self.options.errmsg(code)
        if hint:
            text = f"{text}, {hint}"
        if self.options.errmsg_hint:
            text = f"{text}, hint: [{self.rng.getrandbits(64):016x}], from ip: 127.0.0.1, more info at https://open.work.weixin.qq.com/devtool/query?e={code}"
        return {"errcode": code, "errmsg": text}

    @staticmethod
    def ok(**data: Any) -> Json:
        return {"errcode": 0, "errmsg": "ok", **data}

    def _rand(self, n: int, prefix: str = "") -> str:
        return prefix + "".join(self.rng.choice(_ALNUM) for _ in range(n))

    # ------------------------------------------------------------------ access token (gettoken)
    def gettoken(self, corpid: object, corpsecret: object, now: float) -> Json:
        """The current token while it is valid (WeCom does not issue a new one per call), else a new one."""
        if not corpid:
            return self.err(41002)
        if corpid != self.corpid:
            return self.err(40013)
        if not corpsecret:
            return self.err(41004)
        if self.options.reject_secret or corpsecret != self.secret:
            return self.err(40001)
        if not self.options.ip_allowed:
            return self.err(60020)
        if self._token is None or now >= self._token_expires:
            if self._token is not None:
                self._retired_tokens.add(self._token)
            self._token = self._rand(64)
            self._token_expires = now + self.options.token_expires_in
        return self.ok(access_token=self._token, expires_in=max(1, int(self._token_expires - now)))

    def revoke_token(self) -> bool:
        """WeCom "may invalidate access_token early for operational reasons": the next gettoken issues a
        new one, the revoked one answers 40014. True if there was a token."""
        if self._token is None:
            return False
        self._retired_tokens.add(self._token)
        self._token = None
        self._token_expires = -math.inf
        return True

    def check_call(self, endpoint: str, access_token: object, now: float) -> Json | None:
        """The errors every kf/* call can get before its own checks: token (41001 / 40014 / expired),
        then ``refuse_kf_calls``. None to go on."""
        if endpoint == wo.GETTOKEN:
            return None
        if not access_token:
            return self.err(41001)
        if access_token != self._token:
            return self.err(40014)
        if now >= self._token_expires:
            return self.err(self.options.expired_token_errcode)
        if self.options.refuse_kf_calls:
            return self.err(self.options.refuse_kf_calls)
        return None

    def owns_token(self, token: object) -> bool:
        return isinstance(token, str) and (token == self._token or token in self._retired_tokens)

    # ------------------------------------------------------------------ setup (console actions)
    def add_account(
        self, name: str, *, open_kfid: str | None = None, manage_privilege: bool = True, avatar: str = ""
    ) -> str:
        """A kf account (客服账号); returns its open_kfid (``wk`` + 30 characters unless given)."""
        if not isinstance(name, str) or not name or len(name) > 16:
            raise ValueError(f"name must be 1-16 characters, got {name!r}")
        kfid = open_kfid if open_kfid is not None else self._rand(30, "wk")
        if not isinstance(kfid, str) or not _OPEN_KFID.fullmatch(kfid):
            raise ValueError(f"open_kfid must be 1-64 characters of [0-9A-Za-z_-], got {kfid!r}")
        if kfid in self.accounts:
            raise ValueError(f"open_kfid {kfid!r} exists already")
        if not isinstance(manage_privilege, bool):
            raise ValueError(f"manage_privilege must be true or false, got {manage_privilege!r}")
        self.accounts[kfid] = _Account(
            open_kfid=kfid, name=name, avatar=avatar, manage_privilege=manage_privilege
        )
        self.streams[kfid] = []
        return kfid

    def set_manage_privilege(self, open_kfid: str, value: bool) -> None:
        """The console's 通过API管理微信客服账号 for this account (False: session and message calls → 48002)."""
        if not isinstance(value, bool):
            raise ValueError(f"manage_privilege must be true or false, got {value!r}")
        self._account_for_action(open_kfid).manage_privilege = value

    def add_servicer(
        self, open_kfid: str, userid: str, *, status: int | None = None, stop_type: int = 0
    ) -> Json:
        """Bind ``userid`` to the account as a servicer (接待人员); optionally set their status."""
        acc = self._account_for_action(open_kfid)
        if not isinstance(userid, str) or not re.fullmatch(r"[0-9A-Za-z_.@-]{1,64}", userid):
            raise ValueError(f"userid must be 1-64 characters of letters, digits, _ - . @, got {userid!r}")
        srv = self.servicers.setdefault(userid, _Servicer())
        if userid not in acc.servicers:
            acc.servicers.append(userid)
        if status is not None:
            self._check_status(status, stop_type)
            srv.status, srv.stop_type = status, stop_type
        return {"userid": userid, "status": srv.status}

    def add_department(self, open_kfid: str, department_id: int) -> None:
        acc = self._account_for_action(open_kfid)
        if isinstance(department_id, bool) or not isinstance(department_id, int) or department_id < 1:
            raise ValueError(f"department_id must be a positive integer, got {department_id!r}")
        if department_id not in acc.departments:
            acc.departments.append(department_id)

    @staticmethod
    def _check_status(status: object, stop_type: object) -> None:
        if status not in (kf.SERVICER_RECEIVING, kf.SERVICER_STOPPED) or isinstance(status, bool):
            raise ValueError(f"status must be 0 (接待中) or 1 (停止接待), got {status!r}")
        if stop_type not in (0, 1) or isinstance(stop_type, bool):
            raise ValueError(f"stop_type must be 0 (停止接待) or 1 (暂时挂起), got {stop_type!r}")

    def _account_for_action(self, open_kfid: object) -> _Account:
        acc = self.accounts.get(open_kfid) if isinstance(open_kfid, str) else None
        if acc is None:
            raise ValueError(f"unknown open_kfid {open_kfid!r}; accounts: {sorted(self.accounts)}")
        return acc

    # ------------------------------------------------------------------ the stream and callbacks
    def _append(self, open_kfid: str, entry: Json, now: float) -> Json:
        """Add ``entry`` to the account's stream (msgid, send_time filled in) and queue a callback."""
        self._seq += 1
        msg = {"msgid": f"{self._seq:08d}{self._rand(12)}", "send_time": int(now), **entry}
        self.streams[open_kfid].append(msg)
        token = self._rand(40, "ENC")
        self._sync_tokens[token] = (open_kfid, now + self.options.sync_token_ttl_s)
        self.outbox.append(CallbackPush(open_kfid=open_kfid, token=token, create_time=int(now)))
        return msg

    def _event(self, open_kfid: str, now: float, event: Json) -> Json:
        return self._append(
            open_kfid,
            {"origin": kf.ORIGIN_EVENT, "msgtype": "event", "event": {"open_kfid": open_kfid, **event}},
            now,
        )

    def _status_change(
        self,
        open_kfid: str,
        now: float,
        external_userid: str,
        change_type: int,
        *,
        old: str | None = None,
        new: str | None = None,
        code: str | None = None,
    ) -> Json:
        """A ``session_status_change`` event; the old / new servicer and the msg_code only when given."""
        given = {"old_servicer_userid": old, "new_servicer_userid": new, "msg_code": code}
        event: Json = {
            "event_type": "session_status_change",
            "external_userid": external_userid,
            "change_type": change_type,
            **{k: v for k, v in given.items() if v is not None},
        }
        return self._event(open_kfid, now, event)

    def _session(self, open_kfid: str, external_userid: str, now: float) -> _Session:
        s = self.sessions.get((open_kfid, external_userid))
        if s is None:
            s = self.sessions[(open_kfid, external_userid)] = _Session()
        elif s.state != kf.ENDED and now >= s.last_customer_msg + self.options.session_ttl_s:
            self._end(s)  # the 48 h session ran out
        return s

    @staticmethod
    def _end(s: _Session) -> None:
        s.state, s.servicer, s.pool_since = kf.ENDED, None, None
        s.entered = set()

    def _new_code(
        self, kind: str, open_kfid: str, ext: str, state: int | None, ttl: float, now: float
    ) -> str:
        code = self._rand(32, "MSGCODE")
        types = WELCOME_TYPES if kind in ("welcome", "end") else TEXT_ONLY
        self.codes[code] = _Code(kind, open_kfid, ext, state, now + ttl, types)
        return code

    # ------------------------------------------------------------------ customers (people's actions)
    def customer_enter(
        self, open_kfid: str, external_userid: str, now: float, *, scene: str = "", scene_param: str = ""
    ) -> Json:
        """The customer opens the chat (link, menu, QR code): ``enter_session``, with a ``welcome_code``
        when no welcome was received and nothing was written for ``welcome_quiet_s`` and the console has
        no welcome message of its own."""
        self._account_for_action(open_kfid)
        ext = self._check_ext(external_userid)
        self.customers.add(ext)
        s = self._session(open_kfid, ext, now)
        event: Json = {
            "event_type": "enter_session",
            "external_userid": ext,
            "scene": scene,
            "scene_param": scene_param,
        }
        quiet = self.options.welcome_quiet_s
        if (
            not self.options.console_welcome
            and now - s.last_welcome >= quiet
            and now - s.last_customer_msg >= quiet
        ):
            event["welcome_code"] = self._new_code(
                "welcome", open_kfid, ext, None, self.options.welcome_code_ttl_s, now
            )
        return self._event(open_kfid, now, event)

    def customer_message(
        self, open_kfid: str, external_userid: str, now: float, text: str = "", *, msgtype: str = "text"
    ) -> Json:
        """The customer writes: a session in state 4 starts again in 0; the send quota is restored."""
        self._account_for_action(open_kfid)
        ext = self._check_ext(external_userid)
        if not isinstance(msgtype, str) or not msgtype:
            raise ValueError(f"msgtype must be a non-empty string, got {msgtype!r}")
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {text!r}")
        self.customers.add(ext)
        s = self._session(open_kfid, ext, now)
        if s.state == kf.ENDED:
            s.state, s.started, s.entered = kf.UNTREATED, now, {kf.UNTREATED}
        s.last_customer_msg = now
        s.sent_since_customer = 0
        body: Json = {"content": text} if msgtype == "text" else {"media_id": self._rand(40, "MEDIA")}
        return self._append(
            open_kfid,
            {
                "open_kfid": open_kfid,
                "external_userid": ext,
                "origin": kf.ORIGIN_CUSTOMER,
                "msgtype": msgtype,
                msgtype: body,
            },
            now,
        )

    @staticmethod
    def _check_ext(external_userid: object) -> str:
        if not isinstance(external_userid, str) or not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", external_userid):
            raise ValueError(
                f"external_userid must be 1-64 characters of [0-9A-Za-z_-], got {external_userid!r}"
            )
        return external_userid

    # ------------------------------------------------------------------ servicers (people's actions)
    def set_servicer_status(
        self, userid: str, status: object, now: float, *, stop_type: object = 0
    ) -> list[Json]:
        """The servicer switches 接待中 / 停止接待 in their client: ``servicer_status_change`` (event status
        1 接待中 / 2 停止接待) in every account they serve. Returns the events."""
        srv = self.servicers.get(userid)
        if srv is None:
            raise ValueError(f"unknown servicer {userid!r}; servicers: {sorted(self.servicers)}")
        self._check_status(status, stop_type)
        assert isinstance(status, int) and isinstance(stop_type, int)
        if srv.status == status and (status == kf.SERVICER_RECEIVING or srv.stop_type == stop_type):
            return []
        srv.status, srv.stop_type = status, stop_type
        ev_status = (
            kf.EVENT_SERVICER_RECEIVING if status == kf.SERVICER_RECEIVING else kf.EVENT_SERVICER_STOPPED
        )
        out = []
        for acc in self.accounts.values():
            if userid in acc.servicers:
                event: Json = {
                    "event_type": "servicer_status_change",
                    "servicer_userid": userid,
                    "status": ev_status,
                }
                if status == kf.SERVICER_STOPPED:
                    event["stop_type"] = stop_type
                out.append(self._event(acc.open_kfid, now, event))
        return out

    def _serving(self, open_kfid: str, userid: str, need_receiving: bool) -> None:
        acc = self._account_for_action(open_kfid)
        if userid not in acc.servicers:
            raise ValueError(f"{userid!r} is not a servicer of {open_kfid!r}; servicers: {acc.servicers}")
        if need_receiving and self.servicers[userid].status != kf.SERVICER_RECEIVING:
            raise ValueError(f"servicer {userid!r} is in 停止接待 and cannot take customers")

    def servicer_accept(
        self, open_kfid: str, userid: str, now: float, external_userid: str | None = None
    ) -> Json:
        """The servicer takes a customer from the pool (the oldest, or ``external_userid``) in the WeCom
        client: 2 → 3, ``session_status_change`` change_type 1 with a msg_code (48 h, text)."""
        self._serving(open_kfid, userid, need_receiving=True)
        if external_userid is None:
            pool = self.pool(open_kfid, now)
            if not pool:
                raise ValueError(f"nobody waits in the pool of {open_kfid!r}")
            external_userid = pool[0]
        s = self._session(open_kfid, external_userid, now)
        if s.state != kf.POOL:
            raise ValueError(
                f"{external_userid!r} is not in the pool (state {s.state} {kf.STATE_NAMES[s.state]})"
            )
        code = self._enter(s, open_kfid, external_userid, kf.SERVICER, userid, now)
        return self._status_change(
            open_kfid, now, external_userid, kf.CHANGE_FROM_POOL, new=userid, code=code
        )

    def servicer_transfer(self, open_kfid: str, external_userid: str, to_userid: str, now: float) -> Json:
        """The serving servicer hands the customer to ``to_userid``: 3 → 3, change_type 2."""
        self._serving(open_kfid, to_userid, need_receiving=True)
        s = self._session(open_kfid, external_userid, now)
        if s.state != kf.SERVICER or s.servicer is None:
            raise ValueError(f"{external_userid!r} is not served by anyone (state {s.state})")
        old = s.servicer
        s.servicer = to_userid
        return self._status_change(
            open_kfid, now, external_userid, kf.CHANGE_TRANSFER, old=old, new=to_userid
        )

    def servicer_end(self, open_kfid: str, external_userid: str, now: float) -> Json:
        """The servicer ends the session: 3 → 4, change_type 3 with an ending msg_code (20 s, text/menu)."""
        s = self._session(open_kfid, external_userid, now)
        if s.state != kf.SERVICER or s.servicer is None:
            raise ValueError(f"{external_userid!r} is not served by anyone (state {s.state})")
        old = s.servicer
        code = self._enter(s, open_kfid, external_userid, kf.ENDED, None, now)
        return self._status_change(open_kfid, now, external_userid, kf.CHANGE_END, old=old, code=code)

    def servicer_reply(
        self, open_kfid: str, external_userid: str, userid: str, text: str, now: float
    ) -> Json:
        """The servicer writes from the WeCom client (origin 5). In state 4 this re-joins the session:
        → 3 with ``session_status_change`` change_type 4."""
        self._serving(open_kfid, userid, need_receiving=False)
        s = self._session(open_kfid, external_userid, now)
        if s.state == kf.ENDED:
            s.state, s.servicer, s.started, s.entered = kf.SERVICER, userid, now, {kf.SERVICER}
            self._status_change(open_kfid, now, external_userid, kf.CHANGE_REJOIN, new=userid)
        elif s.state != kf.SERVICER or s.servicer != userid:
            raise ValueError(
                f"{userid!r} does not serve {external_userid!r} (state {s.state}, servicer {s.servicer})"
            )
        return self._append(
            open_kfid,
            {
                "open_kfid": open_kfid,
                "external_userid": external_userid,
                "origin": kf.ORIGIN_SERVICER,
                "servicer_userid": userid,
                "msgtype": "text",
                "text": {"content": text},
            },
            now,
        )

    def pool(self, open_kfid: str, now: float) -> list[str]:
        """Customers in state 2 of the account, longest waiting first."""
        waiting = [
            (s.pool_since or 0.0, ext)
            for (k, ext), s in self.sessions.items()
            if k == open_kfid and self._session(k, ext, now).state == kf.POOL
        ]
        return [ext for _t, ext in sorted(waiting)]

    # ------------------------------------------------------------------ API: accounts and servicers
    def _api_account(self, open_kfid: object, *, privileged: bool) -> _Account | Json:
        if not isinstance(open_kfid, str) or not _OPEN_KFID.fullmatch(open_kfid):
            return self.err(95000, f"open_kfid {open_kfid!r}")
        acc = self.accounts.get(open_kfid)
        if acc is None:
            return self.err(95004)
        if privileged and not acc.manage_privilege:
            return self.err(48002, "kf account is not managed through the API")
        return acc

    def _api_customer(self, external_userid: object) -> str | Json:
        if not isinstance(external_userid, str) or not external_userid:
            return self.err(40096, "external_userid missing")
        if self.options.check_customer and external_userid not in self.customers:
            return self.err(40096)
        return external_userid

    def _api_session(self, open_kfid: object, external_userid: object) -> tuple[_Account, str] | Json:
        """The account (managed through the API) and the customer a session call names, or the error."""
        acc = self._api_account(open_kfid, privileged=True)
        if isinstance(acc, dict):
            return acc
        ext = self._api_customer(external_userid)
        return ext if isinstance(ext, dict) else (acc, ext)

    def list_accounts(self, offset: object, limit: object) -> Json:
        """``kf/account/list``: ``offset`` >= 0 (default 0), ``limit`` 1..100 (default 100)."""
        off = 0 if offset is None else offset
        lim = MAX_ACCOUNT_PAGE if limit is None else limit
        if isinstance(off, bool) or not isinstance(off, int) or off < 0:
            return self.err(40058, f"offset {offset!r}")
        if isinstance(lim, bool) or not isinstance(lim, int) or not 1 <= lim <= MAX_ACCOUNT_PAGE:
            return self.err(40058, f"limit {limit!r}")
        page = list(self.accounts.values())[off : off + lim]
        return self.ok(
            account_list=[
                {
                    "open_kfid": a.open_kfid,
                    "name": a.name,
                    "avatar": a.avatar,
                    "manage_privilege": a.manage_privilege,
                }
                for a in page
            ]
        )

    def list_servicers(self, open_kfid: object) -> Json:
        """``kf/servicer/list``: people with status (and stop_type when stopped), then departments."""
        acc = self._api_account(open_kfid, privileged=False)
        if isinstance(acc, dict):
            return acc
        rows: list[Json] = []
        for userid in acc.servicers:
            srv = self.servicers[userid]
            row: Json = {"userid": userid, "status": srv.status}
            if srv.status == kf.SERVICER_STOPPED:
                row["stop_type"] = srv.stop_type
            rows.append(row)
        rows.extend({"department_id": d} for d in acc.departments)
        return self.ok(servicer_list=rows)

    # ------------------------------------------------------------------ API: sessions
    def get_state(self, open_kfid: object, external_userid: object, now: float) -> Json:
        found = self._api_session(open_kfid, external_userid)
        if isinstance(found, dict):
            return found
        acc, ext = found
        s = self._session(acc.open_kfid, ext, now)
        out = self.ok(service_state=s.state)
        if s.state == kf.SERVICER and s.servicer is not None:
            out["servicer_userid"] = s.servicer
        return out

    def trans(
        self,
        open_kfid: object,
        external_userid: object,
        service_state: object,
        servicer_userid: object,
        now: float,
    ) -> Json:
        """``kf/service_state/trans`` (see the module docstring); every call is logged in ``trans_log``."""
        result = self._trans(open_kfid, external_userid, service_state, servicer_userid, now)
        self.trans_log.append(
            {
                "time": now,
                "open_kfid": open_kfid,
                "external_userid": external_userid,
                "service_state": service_state,
                "servicer_userid": servicer_userid,
                "errcode": result["errcode"],
                "msg_code": result.get("msg_code"),
            }
        )
        return result

    def _trans(
        self, open_kfid: object, external_userid: object, target: object, servicer: object, now: float
    ) -> Json:
        found = self._api_session(open_kfid, external_userid)
        if isinstance(found, dict):
            return found
        acc, ext = found
        if isinstance(target, bool) or target not in kf.STATES:
            return self.err(40058, f"service_state {target!r}")
        assert isinstance(target, int)
        s = self._session(acc.open_kfid, ext, now)
        if s.state == kf.ENDED:
            return self.err(95013)
        if not kf.transition_allowed(s.state, target):
            return self.err(95016, f"{s.state} -> {target}")
        if target == kf.SERVICER:
            if not isinstance(servicer, str) or not servicer:
                return self.err(40058, "servicer_userid is required for service_state 3")
            if servicer not in acc.servicers:
                return self.err(95014)
            if self.servicers[servicer].status != kf.SERVICER_RECEIVING:
                return self.err(95019)
            if s.state == kf.SERVICER and s.servicer == servicer:
                same = self.options.trans_same_servicer_errcode
                return self.err(same) if same else self.ok()
        old = s.servicer
        new = servicer if target == kf.SERVICER and isinstance(servicer, str) else None
        code = self._enter(s, acc.open_kfid, ext, target, new, now)
        if self.options.events_on_api_trans and (target == kf.ENDED or old is not None):
            change = kf.CHANGE_END if target == kf.ENDED else kf.CHANGE_TRANSFER
            self._status_change(acc.open_kfid, now, ext, change, old=old, new=new)
        return self.ok(msg_code=code) if code is not None else self.ok()

    def _enter(
        self, s: _Session, open_kfid: str, ext: str, target: int, servicer: str | None, now: float
    ) -> str | None:
        """Move session ``s`` to ``target``; the msg_code WeCom hands out for this entry, if any."""
        first = target not in s.entered
        s.entered.add(target)
        code: str | None = None
        o = self.options
        if target == kf.POOL:
            s.state, s.servicer, s.pool_since = kf.POOL, None, now
            if first:
                code = self._new_code("pool", open_kfid, ext, kf.POOL, o.pool_code_ttl_s, now)
        elif target == kf.SERVICER:
            s.state, s.servicer, s.pool_since = kf.SERVICER, servicer, None
            if first:
                code = self._new_code("accept", open_kfid, ext, kf.SERVICER, o.accept_code_ttl_s, now)
        elif target == kf.ENDED:
            self._end(s)
            code = self._new_code("end", open_kfid, ext, kf.ENDED, o.end_code_ttl_s, now)
        else:
            s.state, s.servicer, s.pool_since = target, None, None
        return code

    # ------------------------------------------------------------------ API: messages
    def _msgid(self, open_kfid: str, msgid: object) -> str | Json:
        used = self._msgids.setdefault(open_kfid, set())
        if msgid is None or msgid == "":
            value = self._rand(24)
        elif not isinstance(msgid, str) or not _MSGID.fullmatch(msgid):
            return self.err(40058, f"msgid {msgid!r}")
        elif msgid in used:
            return self.err(40058, f"msgid {msgid!r} is not unique in this kf account")
        else:
            value = msgid
        used.add(value)
        return value

    def _payload(self, msgtype: object, payload: object, allowed: frozenset[str]) -> Json:
        """The error answer for a bad message body, or ``{}`` when it is fine."""
        if not isinstance(msgtype, str) or msgtype not in SEND_MSGTYPES:
            return self.err(40008, f"msgtype {msgtype!r}")
        if msgtype not in allowed:
            return self.err(95030, f"msgtype {msgtype!r} here")
        if not isinstance(payload, dict):
            return self.err(40058, f"{msgtype} must be an object")
        if msgtype == "text":
            content = payload.get("content")
            if not isinstance(content, str) or not content:
                return self.err(44004)
            if len(content.encode("utf-8")) > MAX_TEXT_BYTES:
                return self.err(40058, f"content longer than {MAX_TEXT_BYTES} bytes")
        return {}

    def send_msg(
        self, touser: object, open_kfid: object, msgid: object, msgtype: object, payload: object, now: float
    ) -> Json:
        """``kf/send_msg`` (see the module docstring for the rules)."""
        found = self._api_session(open_kfid, touser)
        if isinstance(found, dict):
            return found
        acc, ext = found
        bad = self._payload(msgtype, payload, SEND_MSGTYPES)
        if bad:
            return bad
        s = self._session(acc.open_kfid, ext, now)
        if now - s.last_customer_msg > self.options.send_window_s:
            return self.err(95002)
        if s.state not in (kf.UNTREATED, kf.BOT):
            return self.err(95018)
        if s.sent_since_customer >= self.options.send_quota:
            return self.err(95001)
        mid = self._msgid(acc.open_kfid, msgid)
        if isinstance(mid, dict):
            return mid
        s.sent_since_customer += 1
        self.sent.append(
            {
                "time": now,
                "via": "send_msg",
                "open_kfid": acc.open_kfid,
                "external_userid": ext,
                "msgid": mid,
                "msgtype": msgtype,
                "body": payload,
            }
        )
        return self.ok(msgid=mid)

    def send_on_event(
        self, code: object, msgid: object, msgtype: object, payload: object, now: float
    ) -> Json:
        """``kf/send_msg_on_event``: one message per code, before it expires, in the state it came from."""
        c = self.codes.get(code) if isinstance(code, str) else None
        if c is None or c.used or now >= c.expires_at:
            return self.err(self.options.code_invalid_errcode, "code unknown, used or expired")
        acc = self._api_account(c.open_kfid, privileged=True)
        if isinstance(acc, dict):
            return acc
        bad = self._payload(msgtype, payload, c.msgtypes)
        if bad:
            return bad
        s = self._session(c.open_kfid, c.external_userid, now)
        if c.state is not None and s.state != c.state:
            return self.err(95018, f"the code belongs to state {c.state}, the session is in {s.state}")
        mid = self._msgid(c.open_kfid, msgid)
        if isinstance(mid, dict):
            return mid
        c.used = True
        if c.kind == "welcome":
            s.last_welcome = now
        self.sent.append(
            {
                "time": now,
                "via": "send_msg_on_event",
                "kind": c.kind,
                "code": code,
                "open_kfid": c.open_kfid,
                "external_userid": c.external_userid,
                "msgid": mid,
                "msgtype": msgtype,
                "body": payload,
            }
        )
        return self.ok(msgid=mid)

    def sync_msg(
        self,
        cursor: object,
        token: object,
        limit: object,
        voice_format: object,
        open_kfid: object,
        now: float,
    ) -> Json:
        """``kf/sync_msg`` for one account (see the module docstring)."""
        acc = self._api_account(open_kfid, privileged=True)
        if isinstance(acc, dict):
            return acc
        kfid = acc.open_kfid
        if token not in (None, ""):
            known = self._sync_tokens.get(token) if isinstance(token, str) else None
            if known is None or known[0] != kfid or now >= known[1]:
                return self.err(95007)
        elif self.options.sync_untokened_per_minute is not None:
            minute = math.floor(now / 60)
            m0, n = self._untokened.get(kfid, (minute, 0))
            n = n if m0 == minute else 0
            if n >= self.options.sync_untokened_per_minute:
                return self.err(45009, "sync_msg without token")
            self._untokened[kfid] = (minute, n + 1)
        lim = MAX_SYNC_LIMIT if limit in (None, 0) else limit
        if isinstance(lim, bool) or not isinstance(lim, int) or lim < 1:
            return self.err(40058, f"limit {limit!r}")
        lim = min(lim, MAX_SYNC_LIMIT)
        if voice_format not in (None, 0, 1) or isinstance(voice_format, bool):
            return self.err(40058, f"voice_format {voice_format!r}")
        stream = self.streams[kfid]
        if cursor in (None, ""):
            start = bisect.bisect_left(stream, now - self.options.history_s, key=lambda m: m["send_time"])
        else:
            pos = self._cursors.get(cursor) if isinstance(cursor, str) else None
            if pos is None or pos[0] != kfid:
                return self.err(40058, f"cursor {str(cursor)[:64]!r}")
            start = pos[1]
        self._sync_calls += 1
        every = self.options.empty_page_every
        page = [] if every and self._sync_calls % every == 0 else stream[start : start + lim]
        end = start + len(page)
        next_cursor = self._rand(19)
        self._cursors[next_cursor] = (kfid, end)
        return self.ok(
            next_cursor=next_cursor, has_more=int(end < len(stream)), msg_list=[dict(m) for m in page]
        )

    # ------------------------------------------------------------------ inspection
    def snapshot(self, now: float) -> Json:
        """Everything the control API's ``GET state`` shows."""
        sessions = []
        for (k, ext), _s in sorted(self.sessions.items()):
            s = self._session(k, ext, now)
            sessions.append(
                {
                    "open_kfid": k,
                    "external_userid": ext,
                    "state": s.state,
                    "servicer_userid": s.servicer,
                    "sent_since_customer": s.sent_since_customer,
                }
            )
        return {
            "now": now,
            "corpid": self.corpid,
            "accounts": [
                {
                    "open_kfid": a.open_kfid,
                    "name": a.name,
                    "manage_privilege": a.manage_privilege,
                    "servicers": list(a.servicers),
                    "departments": list(a.departments),
                    "pool": self.pool(a.open_kfid, now),
                    "stream_length": len(self.streams[a.open_kfid]),
                }
                for a in self.accounts.values()
            ],
            "servicers": {
                u: {"status": v.status, "stop_type": v.stop_type} for u, v in sorted(self.servicers.items())
            },
            "sessions": sessions,
            "sent": list(self.sent),
            "trans_log": list(self.trans_log),
            "codes": {
                c: {
                    "kind": v.kind,
                    "open_kfid": v.open_kfid,
                    "external_userid": v.external_userid,
                    "used": v.used,
                    "expires_at": v.expires_at,
                }
                for c, v in self.codes.items()
            },
            "calls": dict(self.calls),
            "faults": {
                ep: {"errcode": f.errcode, "rate": f.rate, "times": f.times} for ep, f in self.faults.items()
            },
        }
