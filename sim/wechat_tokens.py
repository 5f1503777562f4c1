"""access_token bookkeeping of the WeChat model (spec §4): ``cgi-bin/token`` and ``stable_token``.

Pure: ``now`` is an argument and token values come from the injected ``random.Random``. Rules:
``cgi-bin/token`` issues a new token on every fetch and leaves the previous one valid for
``token_grace_s`` more (the one before that dies at once); ``stable_token`` returns the same token
until ``stable_renew_before_s`` before its expiry (the old one then lives to its own expiry), and
``force_refresh`` revokes it at once, at most ``stable_force_per_day`` times a day and
``stable_force_min_interval_s`` apart. The two families are independent. Credential checks (appid,
secret, IP whitelist) are the model's job; errors come back through the model's ``err``.
"""

from __future__ import annotations

import math
import random
import string
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from attrs import define

from kfrouter.sim.fake_options import FakeOptions

Json = dict[str, Any]

_ALPHABET = string.ascii_letters + string.digits + "_-"
_TOKEN_LEN = 64
RETIRED_KEPT = 256  # superseded tokens remembered to answer 40001 rather than 40014


@define(slots=True)
class _Token:
    value: str
    expires_at: float
    revoked_at: float = math.inf


class TokenBook:
    """Issued tokens of one account; at most four are alive (token current/previous, stable ditto)."""

    def __init__(self, options: FakeOptions, rng: random.Random, err: Callable[..., Json]) -> None:
        self.options = options
        self.rng = rng
        self.err = err
        self._tokens: dict[str, _Token] = {}
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._cur: _Token | None = None
        self._prev: _Token | None = None
        self._stable_cur: _Token | None = None
        self._stable_prev: _Token | None = None
        self._forced: list[float] = []

    def _new(self, now: float) -> _Token:
        value = "".join(self.rng.choice(_ALPHABET) for _ in range(_TOKEN_LEN))
        tok = _Token(value=value, expires_at=now + self.options.token_expires_in)
        self._tokens[value] = tok
        return tok

    def _retire(self, tok: _Token | None) -> None:
        if tok is None:
            return
        self._tokens.pop(tok.value, None)
        self._retired[tok.value] = None
        while len(self._retired) > RETIRED_KEPT:
            self._retired.popitem(last=False)

    def fetch(self, now: float) -> Json:
        """A new ``cgi-bin/token`` token; the previous one stays valid ``token_grace_s`` more."""
        new = self._new(now)
        self._retire(self._prev)
        prev = self._cur
        if prev is not None:
            prev.revoked_at = min(prev.revoked_at, now + self.options.token_grace_s)
        self._prev, self._cur = prev, new
        return {"access_token": new.value, "expires_in": self.options.token_expires_in}

    def fetch_stable(self, force_refresh: bool, now: float) -> Json:
        """The ``stable_token`` answer (see the module docstring for the rules)."""
        cur = self._stable_cur
        opts = self.options
        if force_refresh:
            day = math.floor(now / 86_400)
            self._forced = [t for t in self._forced if math.floor(t / 86_400) == day]
            if len(self._forced) >= opts.stable_force_per_day:
                return self.err(45009, "force_refresh daily limit")
            if self._forced and now - self._forced[-1] < opts.stable_force_min_interval_s:
                return self.err(45011, "force_refresh too frequent")
            self._forced.append(now)
            self._retire(self._stable_prev)
            self._retire(cur)
            self._stable_prev, cur = None, None
        elif cur is not None and now >= cur.expires_at - opts.stable_renew_before_s:
            self._retire(self._stable_prev)
            self._stable_prev, cur = cur, None
        if cur is None or now >= cur.expires_at:
            cur = self._new(now)
        self._stable_cur = cur
        return {"access_token": cur.value, "expires_in": max(1, int(cur.expires_at - now))}

    def check(self, token: object, now: float) -> Json | None:
        """None when ``token`` is usable at ``now``; else 41001 missing, 40014 never issued,
        40001 superseded (after the grace) or ``token_always_invalid``, 42001 expired."""
        if not token:
            return self.err(41001)
        if self.options.token_always_invalid:
            return self.err(40001)
        if not isinstance(token, str):
            return self.err(40014)
        tok = self._tokens.get(token)
        if tok is None:
            return self.err(40001 if token in self._retired else 40014)
        if now >= tok.expires_at:
            return self.err(42001)
        if now >= tok.revoked_at:
            return self.err(40001)
        return None

    def owns(self, token: str) -> bool:
        return token in self._tokens or token in self._retired
