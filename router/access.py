"""Who may do what on the daemon's HTTP port: the admin token, the read-only token, the supervisor page's
cookie and its per-session CSRF token. ``router.admin`` (``/api/``) and ``router.supervisor``
(``/supervisor``, ``/metrics``) both ask this module; nothing else decides.

Rules of this module:

- Two roles. ``admin`` (``[server] admin_token``) may read and change; ``viewer`` (``[server]
  readonly_token``, optional) may only read: every state-changing request of a viewer is refused with
  403. Tokens are compared in constant time and never logged.
- A request is identified by ``Authorization: Bearer <token>``, else by the cookie ``kfrouter_supervisor``
  = ``<role>.<expiry>.<nonce>.<HMAC-SHA256(that role's token, role, expiry, nonce)>``: not a token, valid
  12 hours, void as soon as that role's token changes. The nonce is random per login: it names the
  session.
- **Cross-site requests.** The cookie is ``SameSite=Strict`` (a browser does not send it from another
  site) and ``HttpOnly``. Because "site" ignores ports and subdomains, a state-changing request
  authenticated by the cookie must also carry ``X-CSRF-Token`` = HMAC(token, nonce): the page gets it in a
  ``<meta>`` tag, a page of another origin cannot read it. A request the browser marks ``Sec-Fetch-Site:
  cross-site`` is refused outright. A bearer token is not ambient (a browser never adds it by itself), so
  bearer requests need no CSRF token.
- Safe methods (GET, HEAD, OPTIONS) change nothing anywhere on the port; every other method counts as a
  change.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import NamedTuple

from aiohttp import web

ADMIN = "admin"
VIEWER = "viewer"
ROLES = (ADMIN, VIEWER)
COOKIE = "kfrouter_supervisor"
COOKIE_TTL_S = 12 * 3600
CSRF_HEADER = "X-CSRF-Token"
MAX_TOKEN_LEN = 512
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Principal(NamedTuple):
    """Who sent a request: ``role`` (admin / viewer), ``via`` (bearer / cookie) and, for a cookie, the
    session's nonce."""

    role: str
    via: str
    session: str | None = None


class Refusal(NamedTuple):
    status: int  # 401 not identified, 403 identified but not allowed
    message: str


class Access:
    """The tokens of one daemon. ``identify`` a request, ``refuse_change`` before changing anything."""

    def __init__(self, admin_token: str, readonly_token: str | None = None) -> None:
        if not admin_token:
            raise ValueError("admin_token must not be empty")
        if readonly_token is not None and hmac.compare_digest(readonly_token.encode(), admin_token.encode()):
            raise ValueError("readonly_token must differ from admin_token")
        self._keys = {
            ADMIN: admin_token.encode(),
            VIEWER: readonly_token.encode() if readonly_token else None,
        }

    @property
    def has_viewer(self) -> bool:
        return self._keys[VIEWER] is not None

    # ---------------------------------------------------------------- tokens and cookies

    def role_of_token(self, given: str) -> str | None:
        """The role a presented token grants, or None. Both tokens are compared (constant time each)."""
        given = given.strip()
        if not given or len(given) > MAX_TOKEN_LEN:
            return None
        found = None
        for role in ROLES:
            key = self._keys[role]
            if key is not None and hmac.compare_digest(given.encode(), key):
                found = role
        return found

    def _mac(self, role: str, message: str) -> str | None:
        key = self._keys.get(role)
        return None if key is None else hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def cookie(self, role: str, expires: int, nonce: str | None = None) -> str:
        """A session cookie value for ``role`` valid until ``expires`` (unix seconds)."""
        nonce = nonce if nonce is not None else secrets.token_urlsafe(18)
        mac = self._mac(role, f"kfrouter-supervisor:{role}:{expires}:{nonce}")
        if mac is None:
            raise ValueError(f"no token for role {role!r}")
        return f"{role}.{expires}.{nonce}.{mac}"

    def from_cookie(self, value: str, now: float) -> Principal | None:
        parts = value.split(".")
        if len(parts) != 4 or len(value) > 300:
            return None
        role, expires, nonce, _mac = parts
        if role not in ROLES or not expires.isdigit() or len(expires) > 12 or int(expires) <= now:
            return None
        expected = self._mac(role, f"kfrouter-supervisor:{role}:{expires}:{nonce}")
        if expected is None or not hmac.compare_digest(
            value.encode(), f"{role}.{expires}.{nonce}.{expected}".encode()
        ):
            return None
        return Principal(role, "cookie", nonce)

    def csrf_token(self, principal: Principal) -> str | None:
        """The token a cookie session's page must send with every change (None for bearer requests)."""
        if principal.session is None:
            return None
        return self._mac(principal.role, f"kfrouter-csrf:{principal.session}")

    # ---------------------------------------------------------------- requests

    def identify(self, request: web.Request, now: float) -> Principal | None:
        """A valid bearer token, else a valid unexpired cookie; None otherwise. A bearer header that is
        present decides alone (a wrong token is not rescued by a cookie)."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            role = self.role_of_token(given)
            return None if role is None else Principal(role, "bearer")
        value = request.cookies.get(COOKIE)
        return None if value is None else self.from_cookie(value, now)

    def refuse_change(self, request: web.Request, who: Principal) -> Refusal | None:
        """Why ``who`` may not make this request, if it changes something; None when it may."""
        if request.method in SAFE_METHODS:
            return None
        if who.role != ADMIN:
            return Refusal(403, "read-only access: this token may look but not change anything")
        if who.via != "cookie":
            return None
        if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
            return Refusal(403, "cross-site request refused")
        expected = self.csrf_token(who)
        given = request.headers.get(CSRF_HEADER, "")
        if expected is None or not given or not hmac.compare_digest(given.encode(), expected.encode()):
            return Refusal(
                403, f"missing or wrong {CSRF_HEADER} header: changes from the supervisor page need its token"
            )
        return None
