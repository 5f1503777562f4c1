"""Typed errors of the WeCom 微信客服 API (qyapi ``cgi-bin/kf/…``), errcodes per spec wecom-kf.md §A4.

Same envelope and base classes as the Official Account API (``router.edges.errors``): a failed answer is
HTTP 200 with ``{"errcode": N, "errmsg": "..."}``; ``WECOM_FAMILIES`` is the errcode -> class table the
WeCom client passes to ``from_response``. Classes say what the caller should *do*:

* ``WeComTokenError`` (40014 invalid, 42001 expired, 41001 missing; a subclass of ``TokenError``, so the
  shared call machinery refreshes the token and retries once). WeCom reports an expired token as 40014
  as often as 42001 (NotFound403/wecom-sdk #22), so both refresh. 40001 means a wrong secret here and
  comes only from ``gettoken``: a ``WeComCredentialError``.
* ``ServicerUnavailable`` (95014 not a servicer / not activated, 95019 stopped or suspended): the servicer
  cannot take customers: route to another one and mark them offline.
* ``StateConflict`` (95016 transition not allowed, 95013 session already ended): re-read the state
  (``kf/service_state/get``) before deciding again.
* ``MsgTokenInvalid`` (95007): from ``sync_msg`` the callback's token is invalid or expired (pull again
  without it); from ``send_msg_on_event`` the code was used or expired.
* ``SendRefused`` (95001 five-message limit, 95002 48 h limit, 95018 session state forbids sending,
  95031 no customer message in 48 h; a ``WindowClosed``): never retried — only the customer writing
  again reopens the window.
* ``KfOperatorProblem`` (48002 API forbidden, 95011/95012 token from the wrong secret, 95017 API switch
  off, 95023 granted to a 代开发 app, 95003 customer cap, 95000/95004 unknown open_kfid): needs a person
  in the WeCom admin console; ``router.wecom_doctor.explain`` says what to do in plain words.
"""

from __future__ import annotations

from typing import ClassVar

from kfrouter.router.edges.errors import (
    CredentialError,
    Families,
    RateLimited,
    SystemBusy,
    TokenError,
    WeChatError,
    WindowClosed,
)


class WeComTokenError(TokenError):
    """The access_token was rejected: invalid (40014 — also seen for an expired one), expired (42001),
    missing (41001). The client invalidates it, refreshes once and retries once."""

    CODES: ClassVar[frozenset[int]] = frozenset({40014, 42001, 41001})


class WeComCredentialError(CredentialError):
    """``gettoken`` refused the corp id / secret / caller IP: 40001 or 40091 wrong secret, 40013 wrong
    corpid, 41002 / 41004 missing, 60020 caller IP not allowed (企业可信IP). Needs an operator."""

    CODES: ClassVar[frozenset[int]] = frozenset({40001, 40013, 40091, 41002, 41004, 60020})


class ServicerUnavailable(WeChatError):
    """95014 (the userid is not a servicer of this kf account, or not activated) / 95019 (the servicer is
    in 停止接待 or suspended): this servicer cannot take customers now."""

    CODES: ClassVar[frozenset[int]] = frozenset({95014, 95019})

    @property
    def stopped(self) -> bool:
        """True for 95019 (a servicer who stopped receiving); False for 95014 (not a servicer at all)."""
        return self.errcode == 95019


class StateConflict(WeChatError):
    """95016 (the transition is not allowed from the session's current state) / 95013 (the session has
    already ended): our idea of the session is stale; read it again with ``service_state/get``."""

    CODES: ClassVar[frozenset[int]] = frozenset({95016, 95013})

    @property
    def ended(self) -> bool:
        return self.errcode == 95013


class MsgTokenInvalid(WeChatError):
    """95007: the sync_msg ``token`` from a callback (10 min) is invalid or expired — pull without it
    (stricter rate limit) or wait for the next callback's token; from ``send_msg_on_event``: the code
    was already used or expired."""

    CODES: ClassVar[frozenset[int]] = frozenset({95007})


class SendRefused(WindowClosed):
    """A message may not be sent now: 95001 (5 messages since the customer last wrote), 95002 / 95031
    (more than 48 h since the customer wrote), 95018 (the session's state forbids API sending, e.g. a
    servicer serves the customer). Never retried."""

    CODES: ClassVar[frozenset[int]] = frozenset({95001, 95002, 95018, 95031})

    @property
    def quota_exhausted(self) -> bool:
        return self.errcode == 95001


class InvalidCustomer(WeChatError):
    """40096: the external_userid is not a customer of this corp (another corp's id, or mistyped)."""

    CODES: ClassVar[frozenset[int]] = frozenset({40096})


class KfOperatorProblem(WeChatError):
    """Only an administrator can fix this (see ``router.wecom_doctor.explain``): 48002 API forbidden for
    this kf account (通过API管理微信客服账号 not set), 95011 / 95012 the token comes from the wrong
    secret for the account's mode, 95017 the API switch is off, 95023 the API is granted to a 代开发
    app, 95003 the unverified corp's customer cap."""

    CODES: ClassVar[frozenset[int]] = frozenset({48002, 95003, 95011, 95012, 95017, 95023})


class UnknownKfAccount(KfOperatorProblem):
    """95000 (invalid open_kfid) / 95004 (open_kfid not found: deleted, or another corp's): the config
    names a kf account this corp does not have."""

    CODES: ClassVar[frozenset[int]] = frozenset({95000, 95004})


WECOM_FAMILIES: Families = (
    WeComTokenError,
    RateLimited,
    SystemBusy,
    ServicerUnavailable,
    StateConflict,
    MsgTokenInvalid,
    SendRefused,
    InvalidCustomer,
    UnknownKfAccount,
    KfOperatorProblem,  # after UnknownKfAccount, its subclass
    WeComCredentialError,
)
"""The errcode -> class table of the WeCom API (pass it as ``families``)."""
