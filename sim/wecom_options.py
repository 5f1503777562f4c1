"""Switches, endpoint names and error texts of the fake WeCom 微信客服 (``sim.wecom_model``, ``sim.wecom_server``).

Every point that spec wecom-kf.md marks UNCONFIRMED, and every choice the fake makes where the docs say
nothing, is a field of ``WeComOptions`` (docs/wecom.md lists them with the reason for each default).
Options are mutable attrs objects whose validators also run on assignment, so the control API's
``setattr`` is checked like the constructor; ``update`` is all or nothing. Nothing here does I/O.
"""

from __future__ import annotations

from attrs import define, field

from kfrouter.sim.fake_options import SwitchesBase, boolean, errcode_texts, number, one_of

# --- endpoints (canonical names: the real path without the leading slash) ---------------------------------
GETTOKEN = "cgi-bin/gettoken"
ACCOUNT_LIST = "cgi-bin/kf/account/list"
SERVICER_LIST = "cgi-bin/kf/servicer/list"
STATE_GET = "cgi-bin/kf/service_state/get"
STATE_TRANS = "cgi-bin/kf/service_state/trans"
SYNC_MSG = "cgi-bin/kf/sync_msg"
SEND_MSG = "cgi-bin/kf/send_msg"
SEND_ON_EVENT = "cgi-bin/kf/send_msg_on_event"

#: endpoint -> HTTP methods accepted. account/list is POST in the current doc and GET in wechatpy and
#: silenceper (spec A1): both work. GET endpoints read the query, so a POST to them works too.
ENDPOINTS: dict[str, tuple[str, ...]] = {
    GETTOKEN: ("GET", "POST"),
    ACCOUNT_LIST: ("POST", "GET"),
    SERVICER_LIST: ("GET", "POST"),
    STATE_GET: ("POST",),
    STATE_TRANS: ("POST",),
    SYNC_MSG: ("POST",),
    SEND_MSG: ("POST",),
    SEND_ON_EVENT: ("POST",),
}
JSON_BODY_ENDPOINTS: frozenset[str] = frozenset(
    {ACCOUNT_LIST, STATE_GET, STATE_TRANS, SYNC_MSG, SEND_MSG, SEND_ON_EVENT}
)


# --- error texts (the fake's own English; WeCom appends ", hint: [...]"; clients match errcode only) ------
ERRMSG: dict[int, str] = {
    -1: "system busy",
    0: "ok",
    40001: "invalid credential",
    40008: "invalid message type",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40058: "invalid Request Parameter",
    40096: "invalid external userid",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    42001: "access_token expired",
    44004: "empty content",
    45009: "api freq out of limit",
    48002: "api forbidden",
    60020: "not allow to access from your ip",
    95000: "invalid open_kfid",
    95001: "send msg count limit",
    95002: "send msg time limit",
    95003: "customer count limit",
    95004: "open_kfid not exist",
    95007: "invalid msg token",
    95011: "access token is not of the customer service secret",
    95012: "access token is of the customer service secret",
    95013: "session already ended",
    95014: "user is not servicer",
    95016: "invalid service state transition",
    95017: "api switch off",
    95018: "send msg session status invalid",
    95019: "servicer is not in reception",
    95030: "msgtype not allowed",
}

DAY = 86_400.0
HOUR = 3_600.0


@define
class WeComOptions(SwitchesBase):
    """Every switch of the fake WeCom; see docs/wecom.md for each default's source or reason."""

    ERRMSG = ERRMSG

    # access_token (gettoken): lifetime; the errcode for an expired one (42001, or 40014 as reported)
    token_expires_in: int = field(default=7200, validator=number(1, integer=True))
    expired_token_errcode: int = field(default=42001, validator=one_of(42001, 40014))
    # sync_msg: callback token lifetime; calls without a token per minute per kf account (UNCONFIRMED
    # "strict rate limit" → 45009; None = no limit); history kept for an empty cursor; every Nth page
    # is answered empty with has_more=1 (0 = never; the doc warns it happens)
    sync_token_ttl_s: float = field(default=600.0, validator=number(0.0))
    sync_untokened_per_minute: int | None = field(
        default=30, validator=number(1, integer=True, optional=True)
    )
    history_s: float = field(default=3 * DAY, validator=number(0.0))
    empty_page_every: int = field(default=0, validator=number(0, integer=True))
    # trans: same servicer again in state 3 (0 = success without a code); session_status_change events
    # for API-initiated changes (the doc lists them for servicers' actions only)
    trans_same_servicer_errcode: int = field(default=0, validator=number(0, integer=True))
    events_on_api_trans: bool = field(default=False, validator=boolean)
    # send_msg_on_event: errcode for an unknown, used or expired code (UNCONFIRMED)
    code_invalid_errcode: int = field(default=95007, validator=number(1, integer=True))
    # send_msg: at most send_quota messages within send_window_s of the customer's last message
    send_quota: int = field(default=5, validator=number(0, integer=True))
    send_window_s: float = field(default=48 * HOUR, validator=number(0.0))
    # a session ends by itself this long after the customer's last message (the doc's "48 h session")
    session_ttl_s: float = field(default=48 * HOUR, validator=number(0.0))
    # msg_code lifetimes (send_msg_on_event table): welcome 20 s, queue notice 48 h, from-pool 48 h, end 20 s
    welcome_code_ttl_s: float = field(default=20.0, validator=number(0.0))
    pool_code_ttl_s: float = field(default=48 * HOUR, validator=number(0.0))
    accept_code_ttl_s: float = field(default=48 * HOUR, validator=number(0.0))
    end_code_ttl_s: float = field(default=20.0, validator=number(0.0))
    # a welcome_code only if no welcome was received and no message sent in this long; none at all when
    # the console has its own welcome message configured
    welcome_quiet_s: float = field(default=48 * HOUR, validator=number(0.0))
    console_welcome: bool = field(default=False, validator=boolean)
    # callbacks: deliveries in total, answer deadline, pause between attempts (general callback docs)
    callback_attempts: int = field(default=3, validator=number(1, integer=True))
    callback_timeout_s: float = field(default=5.0, validator=number(0.001))
    retry_interval_s: float = field(default=0.0, validator=number(0.0))
    # operations on an external_userid the corp has never seen answer 40096
    check_customer: bool = field(default=True, validator=boolean)
    # misconfigurations (doctor): every kf/* call answers this errcode (0 = off; e.g. 95011, 95012, 95017);
    # caller IP not allowed (60020 from gettoken); every secret refused (40001)
    refuse_kf_calls: int = field(default=0, validator=number(0, integer=True))
    ip_allowed: bool = field(default=True, validator=boolean)
    reject_secret: bool = field(default=False, validator=boolean)
    # errmsg texts
    errmsg_overrides: dict[int, str] = field(factory=dict, converter=errcode_texts)
    errmsg_hint: bool = field(default=True, validator=boolean)
