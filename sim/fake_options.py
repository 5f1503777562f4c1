"""Switches, fault rules, endpoint names and error texts shared by the WeChat model and the fake server.

Every uncertain behaviour of WeChat listed in spec §11 is a field of ``FakeOptions``; the defaults are the
spec's recommendations. Options are mutable attrs objects whose converters and validators also run on
assignment, so ``setattr(options, name, value)`` from the control API is checked the same way as the
constructor. What the fake WeCom's options (``sim.wecom_options``) share with these is written here once:
the validators, ``Fault``, ``resolve_endpoint``, the errmsg overrides and ``SwitchesBase`` (``errmsg``,
all-or-nothing ``update``, ``to_json``). Nothing here does I/O.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
from attrs import define, field

# --- endpoints -------------------------------------------------------------------------------------
# Canonical names are the real paths without the leading slash (spec §2, §4).
TOKEN = "cgi-bin/token"
STABLE_TOKEN = "cgi-bin/stable_token"
KF_ADD = "customservice/kfaccount/add"
KF_UPDATE = "customservice/kfaccount/update"
KF_DEL = "customservice/kfaccount/del"
KF_UPLOAD = "customservice/kfaccount/uploadheadimg"
KF_INVITE = "customservice/kfaccount/inviteworker"
KF_LIST = "cgi-bin/customservice/getkflist"
KF_ONLINE = "cgi-bin/customservice/getonlinekflist"
SESSION_CREATE = "customservice/kfsession/create"
SESSION_CLOSE = "customservice/kfsession/close"
SESSION_GET = "customservice/kfsession/getsession"
SESSION_LIST = "customservice/kfsession/getsessionlist"
WAITCASE = "customservice/kfsession/getwaitcase"
MSGLIST = "customservice/msgrecord/getmsglist"
CUSTOM_SEND = "cgi-bin/message/custom/send"
TYPING = "cgi-bin/message/custom/typing"

#: endpoint -> documented HTTP methods (kfaccount/del: see ``FakeOptions.del_methods``)
ENDPOINTS: dict[str, tuple[str, ...]] = {
    TOKEN: ("GET",),
    STABLE_TOKEN: ("POST",),
    KF_ADD: ("POST",),
    KF_UPDATE: ("POST",),
    KF_DEL: ("GET", "POST"),
    KF_UPLOAD: ("POST",),
    KF_INVITE: ("POST",),
    KF_LIST: ("GET",),
    KF_ONLINE: ("GET",),
    SESSION_CREATE: ("POST",),
    SESSION_CLOSE: ("POST",),
    SESSION_GET: ("GET",),
    SESSION_LIST: ("GET",),
    WAITCASE: ("GET",),
    MSGLIST: ("POST",),
    CUSTOM_SEND: ("POST",),
    TYPING: ("POST",),
}

#: endpoints gated by "new customer service enabled" (65400 when it is not, spec §3.2)
KF_ENDPOINTS: frozenset[str] = frozenset(
    {
        KF_ADD,
        KF_UPDATE,
        KF_DEL,
        KF_UPLOAD,
        KF_INVITE,
        KF_LIST,
        KF_ONLINE,
        SESSION_CREATE,
        SESSION_CLOSE,
        SESSION_GET,
        SESSION_LIST,
        WAITCASE,
        MSGLIST,
    }
)
TOKEN_ENDPOINTS: frozenset[str] = frozenset({TOKEN, STABLE_TOKEN})


def resolve_endpoint(name: str, endpoints: Mapping[str, object] = ENDPOINTS) -> str:
    """Canonical endpoint for ``name``: an exact path (a leading ``/`` is allowed) or a unique suffix
    such as ``kfsession/create`` or ``getwaitcase``. Raises ``ValueError`` naming the candidates.
    ``endpoints`` is the API's table (the fake WeCom passes its own)."""
    if not isinstance(name, str) or not name.strip("/"):
        raise ValueError(f"endpoint must be a non-empty string, got {name!r}")
    key = name.strip("/")
    if key in endpoints:
        return key
    hits = [ep for ep in endpoints if ep.endswith("/" + key)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(sorted(endpoints))}")
    raise ValueError(f"endpoint {name!r} is ambiguous: {', '.join(sorted(hits))}")


# --- error texts ---------------------------------------------------------------------------------------
#: WeChat's literal English errmsg texts where known (spec §3); clients must match errcode only.
ERRMSG: dict[int, str] = {
    -1: "system error",
    0: "ok",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40005: "invalid file type",
    40008: "invalid message type",
    40009: "invalid image size",
    40013: "invalid appid",
    40014: "invalid access_token",
    40066: "invalid url",
    40125: "invalid appsecret",
    40164: "invalid ip, not in whitelist",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    41005: "media data missing",
    42001: "access_token expired",
    43001: "require GET method",
    43002: "require POST method",
    44002: "empty post data",
    44003: "empty news data",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit must slower retry next minute",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    45072: "invalid command",
    45080: "need sending message to user, or recving message from user in the last 30 seconds",
    45081: "已经在输入状态,不可重复下发",
    47001: "data format error",
    65400: "please enable new custom service, or wait for a while if you have enabled",
    65401: "invalid custom service account",
    65402: "the custom service account need to bind a wechat user",
    65403: "illegal nickname",
    65404: "illegal custom service account",
    65405: "custom service account number reach limit",
    65406: "custom service account exists",
    65407: "the wechat user have been one of your workers",
    65408: "you have already invited the wechat user",
    65409: "wechat account invalid",
    65410: "too many custom service accounts bound by the worker",
    65411: "a effective invitation to bind the custom service account exists",
    65412: "the custom service account have been bound by a wechat user",
    65413: "no effective session for the customer",
    65414: "another worker is serving the customer",
    65415: "the worker is not online",
    65416: "param invalid, please check",
    65417: "it is too long from the starttime to endtime",
}

#: per-case error codes that the spec marks [INF] (spec §11 #15); override in FakeOptions.error_codes
DEFAULT_ERROR_CODES: dict[str, int] = {
    "wrong_method_get": 43001,  # a GET endpoint called with another method
    "wrong_method_post": 43002,  # a POST endpoint called with another method
    "del_unknown": 65401,  # kfaccount/del of an unknown account
    "update_bad_nickname": 65403,
    "msglist_window": 65417,  # getmsglist window > 24 h
    "send_unknown_kf": 65401,  # custom/send with an unknown customservice.kf_account
    "token_wrong_secret": 40001,  # cgi-bin/token with a wrong secret
    "stable_wrong_secret": 40125,  # stable_token with a wrong secret
}


# --- converters / validators (attrs validators that also run on assignment; sim.wecom_options uses them) ---
def one_of(*allowed: object):  # type: ignore[no-untyped-def]
    """Validator: the value is one of ``allowed``."""

    def check(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            raise ValueError(f"{attr.name} must be one of {allowed!r}, got {value!r}")

    return check


def boolean(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    """Validator: a real bool (not 0 / 1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{attr.name} must be true or false, got {value!r}")


def number(minimum: float, *, integer: bool = False, optional: bool = False):  # type: ignore[no-untyped-def]
    """Validator: a number (an int with ``integer``) >= ``minimum``; None allowed with ``optional``."""

    def check(_inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if optional and value is None:
            return
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:  # type: ignore[operator]
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{attr.name} must be {kind} >= {minimum}, got {value!r}")

    return check


def _methods(value: object) -> frozenset[str]:
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise ValueError(f"del_methods must be a list of HTTP methods, got {value!r}")
    out = frozenset(str(m).upper() for m in value)
    if not out or not out <= {"GET", "POST"}:
        raise ValueError(f"del_methods must be a non-empty subset of GET, POST; got {sorted(out)!r}")
    return out


def errcode_texts(value: object) -> dict[int, str]:
    """Converter of ``errmsg_overrides``: a mapping errcode (an int or its digits) -> text."""
    if not isinstance(value, Mapping):
        raise ValueError(f"errmsg_overrides must be a mapping errcode -> text, got {value!r}")
    out: dict[int, str] = {}
    for k, v in value.items():
        try:
            code = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"errmsg_overrides: key {k!r} is not an integer errcode") from None
        if not isinstance(v, str):
            raise ValueError(f"errmsg_overrides[{k!r}] must be a string, got {v!r}")
        out[code] = v
    return out


def _error_codes(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ValueError(f"error_codes must be a mapping case -> errcode, got {value!r}")
    out = dict(DEFAULT_ERROR_CODES)
    for k, v in value.items():
        if k not in DEFAULT_ERROR_CODES:
            raise ValueError(
                f"error_codes: unknown case {k!r}; known: {', '.join(sorted(DEFAULT_ERROR_CODES))}"
            )
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"error_codes[{k!r}] must be an integer errcode, got {v!r}")
        out[k] = v
    return out


@define
class RateLimit:
    """Fixed-window call limits for one endpoint: over ``per_minute`` → 45011, over ``per_day`` → 45009."""

    per_minute: int | None = field(default=None, validator=number(1, integer=True, optional=True))
    per_day: int | None = field(default=None, validator=number(1, integer=True, optional=True))


def _rate_limits(value: object) -> dict[str, RateLimit]:
    if not isinstance(value, Mapping):
        raise ValueError(f"rate_limits must be a mapping endpoint -> limits, got {value!r}")
    out: dict[str, RateLimit] = {}
    for k, v in value.items():
        ep = resolve_endpoint(k)
        if isinstance(v, RateLimit):
            out[ep] = v
        elif isinstance(v, Mapping):
            unknown = set(v) - {"per_minute", "per_day"}
            if unknown:
                raise ValueError(f"rate_limits[{k!r}]: unknown keys {sorted(unknown)!r}")
            out[ep] = RateLimit(**v)
        else:
            raise ValueError(f"rate_limits[{k!r}] must be {{per_minute, per_day}}, got {v!r}")
    return out


@define
class Fault:
    """An injected failure for one endpoint, drawn with the model's Random on each call.

    ``rate``: probability per call; ``times``: how many more calls may fail (None = unlimited);
    ``errcode``: answered instead of the real result (None = answer normally after the delay);
    ``delay_s``: wait before answering; ``drop_connection``: close the socket without an answer.
    """

    errcode: int | None = field(default=None)
    rate: float = field(default=1.0)
    delay_s: float = field(default=0.0, validator=number(0.0))
    drop_connection: bool = field(default=False, validator=boolean)
    times: int | None = field(default=None, validator=number(0, integer=True, optional=True))

    @rate.validator
    def _check_rate(self, _attr: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"rate must be a number in [0, 1], got {value!r}")

    @errcode.validator
    def _check_errcode(self, _attr: attrs.Attribute[Any], value: object) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"errcode must be an integer or null, got {value!r}")

    def fires(self, rng: random.Random) -> bool:
        """Whether this call fails, drawn with ``rng``; a firing rule uses up one of its ``times``."""
        if self.times == 0:
            return False
        if self.rate < 1.0 and rng.random() >= self.rate:
            return False
        if self.times is not None:
            self.times -= 1
        return True

    @classmethod
    def from_json(cls, data: object, where: str = "fault") -> Fault:
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be an object, got {data!r}")
        unknown = set(data) - {"errcode", "rate", "delay_s", "drop_connection", "times"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)!r}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


class SwitchesBase:
    """What the options of both fakes do alike: an errcode's text (``errmsg_overrides`` first, then the
    class's ``ERRMSG`` table), ``update`` all or nothing, ``to_json``. A subclass is an attrs class with an
    ``errmsg_overrides`` field (converter ``errcode_texts``)."""

    __slots__ = ()
    ERRMSG: ClassVar[Mapping[int, str]]
    errmsg_overrides: dict[int, str]

    def errmsg(self, code: int) -> str:
        return self.errmsg_overrides.get(code) or self.ERRMSG.get(code, "error")

    def update(self, changes: Mapping[str, Any]) -> list[str]:
        """Apply ``changes`` (JSON from the control API) all or nothing; returns the names changed."""
        return update_options(self, changes)

    def to_json(self) -> dict[str, Any]:
        return options_json(self)


@define
class FakeOptions(SwitchesBase):
    """Every switch of the fake (spec §10, §11). Defaults follow the spec's recommendations."""

    ERRMSG = ERRMSG

    # §11 #1: getonlinekflist `status` style and whether `auto_accept` appears
    online_status_style: str = field(default="new", validator=one_of("new", "legacy"))
    emit_auto_accept: bool = field(default=True, validator=boolean)
    # §11 #2: kf_id JSON type
    kf_id_type: str = field(default="int", validator=one_of("int", "str"))
    # §11 #3: kfaccount/del methods accepted
    del_methods: frozenset[str] = field(default=frozenset({"GET", "POST"}), converter=_methods)
    # §11 #4: error for kfsession/create with an offline agent (0 = allowed)
    create_offline_error: int = field(default=65415, validator=number(0, integer=True))
    # §11 #5: API-initiated create/close push kf_create_session / kf_close_session
    push_events_on_api_actions: bool = field(default=True, validator=boolean)
    # §11 #6: getmsglist cursor: the returned msgid is the last record (overlap one) or the next to ask for
    msgid_cursor: str = field(default="last_returned", validator=one_of("last_returned", "next_to_request"))
    # §11 #7: push deliveries in total, pause between them, webhook answer deadline
    delivery_attempts: int = field(default=3, validator=number(1, integer=True))
    retry_interval_s: float = field(default=0.0, validator=number(0.0))
    webhook_timeout_s: float = field(default=5.0, validator=number(0.001))
    # §11 #8: getsession without a session
    no_session_createtime: int = field(default=0, validator=number(0, integer=True))
    getsession_include_errcode: bool = field(default=False, validator=boolean)
    # §11 #9: per-endpoint rate limits (45011 / 45009); default none
    rate_limits: dict[str, RateLimit] = field(factory=dict, converter=_rate_limits)
    # §11 #10: custom/send windows
    window_hours: float = field(default=48.0, validator=number(0.0))
    window_quota: int = field(default=5, validator=number(0, integer=True))
    event_window_s: float = field(default=60.0, validator=number(0.0))
    event_window_quota: int = field(default=3, validator=number(0, integer=True))
    reopen_on_user_message: bool = field(default=True, validator=boolean)
    # §11 #11: errmsg texts
    errmsg_overrides: dict[int, str] = field(factory=dict, converter=errcode_texts)
    errmsg_rid: bool = field(default=True, validator=boolean)  # append " rid: xxxxxxxx-xxxxxxxx-xxxxxxxx"
    # §11 #12: every access_token is refused with 40001 (SDK retry loops must stop)
    token_always_invalid: bool = field(default=False, validator=boolean)
    # §11 #13: `openid` in the push query string
    push_include_openid: bool = field(default=True, validator=boolean)
    # §11 #14: in safe mode a plaintext "success"/empty reply counts as handled
    safe_mode_accept_plain_success: bool = field(default=True, validator=boolean)
    # §11 #15: per-case error codes
    error_codes: dict[str, int] = field(factory=dict, converter=_error_codes)
    # getwaitcase element shape: current {latest_time, openid} or legacy {createtime, kf_account, openid}
    waitcase_style: str = field(default="current", validator=one_of("current", "legacy"))
    # token lifetimes and limits (spec §4)
    token_expires_in: int = field(default=7200, validator=number(1, integer=True))
    token_grace_s: float = field(default=300.0, validator=number(0.0))
    token_daily_quota: int | None = field(default=2000, validator=number(1, integer=True, optional=True))
    stable_renew_before_s: float = field(default=300.0, validator=number(0.0))
    stable_force_per_day: int = field(default=20, validator=number(0, integer=True))
    stable_force_min_interval_s: float = field(default=30.0, validator=number(0.0))
    # session forwarding lapses after this many idle seconds (spec §5.4); None = never
    forward_idle_s: float | None = field(default=1800.0, validator=number(0.0, optional=True))
    # WeChat's own auto-accept: queued customers go to agents with room under auto_accept
    wechat_auto_accept: bool = field(default=False, validator=boolean)
    # operations on openids the account has never seen answer 40003
    check_openid: bool = field(default=True, validator=boolean)
    # misconfigurations for `kfrouter doctor`
    kf_api_enabled: bool = field(default=True, validator=boolean)  # False: 65400 on every kf endpoint
    ip_whitelisted: bool = field(default=True, validator=boolean)  # False: 40164 on token endpoints
    reject_secret: bool = field(default=False, validator=boolean)  # True: every secret is wrong
    agents_unbound: bool = field(default=False, validator=boolean)  # True: every agent counts as unbound

    def code(self, case: str) -> int:
        return self.error_codes.get(case, DEFAULT_ERROR_CODES[case])


def update_options(options: Any, changes: Mapping[str, Any]) -> list[str]:
    """Apply ``changes`` to the mutable attrs ``options`` all or nothing (validators run on a trial
    copy first); unknown names are refused naming the known ones. Returns the names changed."""
    names = {a.name for a in attrs.fields(type(options))}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown!r}; known: {', '.join(sorted(names))}")
    trial = attrs.evolve(options)
    for key, value in changes.items():
        try:
            setattr(trial, key, value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"option {key}: {exc}") from None
    for key in changes:
        setattr(options, key, getattr(trial, key))
    return sorted(changes)


def options_json(options: Any) -> dict[str, Any]:
    """The attrs ``options`` as JSON values (sets sorted, nested attrs values as dicts)."""
    out: dict[str, Any] = {}
    for a in attrs.fields(type(options)):
        v = getattr(options, a.name)
        if isinstance(v, frozenset):
            v = sorted(v)
        elif isinstance(v, dict):
            v = {str(k): (attrs.asdict(x) if attrs.has(type(x)) else x) for k, x in v.items()}
        out[a.name] = v
    return out


KF_ACCOUNT_PREFIX = re.compile(r"[A-Za-z0-9_]{1,10}")
WECHAT_ID = re.compile(r"[A-Za-z][-_A-Za-z0-9]{5,19}")
