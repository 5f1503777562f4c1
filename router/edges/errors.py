"""Typed errors for the WeChat API client, one class per errcode family (spec §3).

WeChat answers HTTP 200 with ``{"errcode": N, "errmsg": "..."}``; ``from_response`` turns such an
answer into the matching exception. Local failures use negative codes WeChat never sends:
``-2`` (network: timeout, connection error, 5xx), ``-3`` (a malformed answer) and ``-4`` (not sent: this
daemon lost the account's lease). Every message names
the endpoint and the errcode and passes through ``redact`` so it never carries an access token or the
AppSecret, whatever WeChat or aiohttp put in the text.

The errcode -> class table is a parameter (``families``): the Official Account API uses
``OA_FAMILIES`` (the default); another API family with its own codes (WeCom 微信客服,
``router.edges.wecom_errors``) passes its own tuple, reusing these classes where the meaning is shared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from kfrouter.router.core.events import ERR_SERVED_BY_OTHER

NETWORK_ERRCODE = -2
BAD_RESPONSE_ERRCODE = -3

_SECRET_QUERY = re.compile(r"(?i)\b(access_token|secret)=[^&\s'\"<>]*")
_SECRET_JSON = re.compile(r"(?i)(\"?(?:access_token|secret)\"?\s*:\s*\")[^\"]*")


def redact(text: str) -> str:
    """Replace the value of any ``access_token=`` / ``secret=`` (query or JSON) with ``***``."""
    text = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)
    return _SECRET_JSON.sub(lambda m: f"{m.group(1)}***", text)


class WeChatError(Exception):
    """Base class: a WeChat API call failed. ``retryable`` says whether backing off may help."""

    retryable: ClassVar[bool] = False
    CODES: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, errcode: int, errmsg: str, endpoint: str) -> None:
        self.errcode = errcode
        self.errmsg = redact(str(errmsg))
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: errcode {errcode}: {self.errmsg}")


class TokenError(WeChatError):
    """The access_token was rejected: invalid / not latest (40001), malformed (40014), expired (42001),
    missing (41001). The client invalidates it, refreshes once and retries once."""

    CODES: ClassVar[frozenset[int]] = frozenset({40001, 40014, 42001, 41001})


class RateLimited(WeChatError):
    """Daily quota (45009) or per-minute limit (45011) reached: never retried immediately."""

    CODES: ClassVar[frozenset[int]] = frozenset({45009, 45011})

    @property
    def daily(self) -> bool:
        return self.errcode == 45009


class SystemBusy(WeChatError):
    """WeChat says "system error, retry later" (-1, -1000): retried with bounded backoff."""

    CODES: ClassVar[frozenset[int]] = frozenset({-1, -1000})
    retryable = True


class KfApiDisabled(WeChatError):
    """65400: the new customer-service feature is not enabled (or not yet active) for this account."""

    CODES: ClassVar[frozenset[int]] = frozenset({65400})


class SessionError(WeChatError):
    """A customer-service (654xx) error other than 65400. Subclasses cover the codes the router acts on."""

    CODES: ClassVar[frozenset[int]] = frozenset(range(65401, 65500))


class InvalidKfAccount(SessionError):
    """65401: the kf_account does not exist (or was created outside ``kfaccount/add``)."""

    CODES = frozenset({65401})


class AccountNotBound(SessionError):
    """65402: the kf_account is not bound to a WeChat user, so it cannot serve anyone."""

    CODES = frozenset({65402})


class NoSession(SessionError):
    """65413: the customer has no open session."""

    CODES = frozenset({65413})


class ServedByOther(SessionError):
    """65414: another agent is serving the customer."""

    CODES = frozenset({ERR_SERVED_BY_OTHER})


class AgentOffline(SessionError):
    """65415: the agent is not online."""

    CODES = frozenset({65415})


class WindowClosed(WeChatError):
    """45015 (outside the 48 h window, or the user unfollowed) / 45047 (window quota used up).
    Never retried: only a new message from the user reopens the window."""

    CODES: ClassVar[frozenset[int]] = frozenset({45015, 45047})

    @property
    def quota_exhausted(self) -> bool:
        return self.errcode == 45047


class CredentialError(WeChatError):
    """The AppID / AppSecret / caller IP is not accepted by the token endpoint (40013 invalid appid,
    40125 invalid secret, 40164 IP not whitelisted, 40243 secret frozen; also 40001 / 40014 when
    they come from the token endpoint itself). Needs an operator, not a retry."""

    CODES: ClassVar[frozenset[int]] = frozenset({40013, 40125, 40164, 40243, 41002, 41004})


class NetworkError(WeChatError):
    """No usable HTTP answer: timeout, connection error or a 5xx (errcode -2). Retried with backoff."""

    retryable = True

    def __init__(self, errmsg: str, endpoint: str) -> None:
        super().__init__(NETWORK_ERRCODE, errmsg, endpoint)


NOT_SENT_ERRCODE = -4


class NotSent(WeChatError):
    """The call was not made: this daemon no longer holds the account's lease (``ApiClientBase.gate``
    said no, right before the request). errcode -4; never retried — the new owner serves the account."""

    def __init__(self, errmsg: str, endpoint: str) -> None:
        super().__init__(NOT_SENT_ERRCODE, errmsg, endpoint)


class BadResponse(WeChatError):
    """The answer is not what the endpoint promises (not JSON, wrong shape): errcode -3.
    The message names the endpoint and the offending field."""

    def __init__(self, errmsg: str, endpoint: str) -> None:
        super().__init__(BAD_RESPONSE_ERRCODE, errmsg, endpoint)


Families = tuple[type[WeChatError], ...]

OA_FAMILIES: Families = (
    TokenError,
    RateLimited,
    SystemBusy,
    KfApiDisabled,
    InvalidKfAccount,
    AccountNotBound,
    NoSession,
    ServedByOther,
    AgentOffline,
    SessionError,  # after its subclasses: the catch-all for the other 654xx codes
    WindowClosed,
    CredentialError,
)


def error_class(errcode: int, families: Families = OA_FAMILIES) -> type[WeChatError]:
    """The most specific class for ``errcode`` in ``families`` (first match wins, so subclasses come
    before their catch-all); ``WeChatError`` for codes without a family."""
    for cls in families:
        if errcode in cls.CODES:
            return cls
    return WeChatError


def parse_errcode(endpoint: str, data: Mapping[str, Any]) -> int:
    """``errcode`` as an int: absent or null means 0; a numeric string is accepted (spec §1.5)."""
    raw = data.get("errcode", 0)
    if raw is None:
        return 0
    if isinstance(raw, bool):
        raise BadResponse(f"field 'errcode' must be an integer, got {raw!r}", endpoint)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        try:
            return int(raw.strip())
        except ValueError:
            pass
    raise BadResponse(f"field 'errcode' must be an integer, got {redact(repr(raw))[:80]}", endpoint)


def from_errcode(errcode: int, errmsg: str, endpoint: str, families: Families = OA_FAMILIES) -> WeChatError:
    return error_class(errcode, families)(errcode, errmsg, endpoint)


def from_response(
    endpoint: str, data: Mapping[str, Any], families: Families = OA_FAMILIES
) -> WeChatError | None:
    """The exception for a failed answer, or None when it is a success (errcode 0 or absent)."""
    errcode = parse_errcode(endpoint, data)
    if errcode == 0:
        return None
    errmsg = data.get("errmsg", "")
    return from_errcode(errcode, errmsg if isinstance(errmsg, str) else repr(errmsg), endpoint, families)


def raise_for_response(endpoint: str, data: Mapping[str, Any], families: Families = OA_FAMILIES) -> None:
    error = from_response(endpoint, data, families)
    if error is not None:
        raise error
