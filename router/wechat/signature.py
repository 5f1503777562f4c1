"""Callback signatures: sha1 over the sorted concatenation of token, timestamp, nonce (and Encrypt).

Plain mode: ``signature = sha1(sorted([token, timestamp, nonce]))`` (spec §5.1). Safe mode:
``msg_signature`` is the same function with the ``Encrypt`` text as a fourth string (spec §5.6).
The sort is a plain string sort, not by role. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re

TOKEN_MIN_LEN = 3
TOKEN_MAX_LEN = 32
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9]*")


def sign(token: str, timestamp: str | int, nonce: str, *extra: str) -> str:
    """Lowercase hex sha1 of the string-sorted concatenation of all parts.

    With ``encrypt`` as the single extra part the result is the safe-mode ``msg_signature``.
    """
    parts = [token, str(timestamp), nonce, *extra]
    for i, part in enumerate(parts):
        if not isinstance(part, str):
            raise TypeError(f"sign: part {i} must be str, got {type(part).__name__}")
    parts.sort()
    return hashlib.sha1("".join(parts).encode("utf-8")).hexdigest()


def verify(expected_sig: str, token: str, timestamp: str | int, nonce: str, *extra: str) -> bool:
    """True when ``expected_sig`` (from the query string) equals ``sign(...)``; constant-time.

    Hex case is not significant. A non-string or non-ASCII ``expected_sig`` is simply False.
    """
    if not isinstance(expected_sig, str):
        return False
    actual = sign(token, timestamp, nonce, *extra)
    return hmac.compare_digest(expected_sig.lower().encode("utf-8"), actual.encode("ascii"))


def check_token_format(token: str) -> str | None:
    """Describe why ``token`` is not a valid WeChat callback token, or return None when it is.

    WeChat's console accepts 3-32 characters, ASCII letters and digits only. The description never
    repeats the token itself (it is a secret), only its length or what kind of character is wrong.
    """
    if not isinstance(token, str):
        return f"token must be a string, got {type(token).__name__}"
    n = len(token)
    if not TOKEN_MIN_LEN <= n <= TOKEN_MAX_LEN:
        return f"token has {n} characters; WeChat requires {TOKEN_MIN_LEN} to {TOKEN_MAX_LEN}"
    if not _TOKEN_CHARS.fullmatch(token):
        bad = sum(1 for c in token if not (c.isascii() and c.isalnum()))
        return (
            f"token contains {bad} character(s) other than ASCII letters and digits; "
            "WeChat accepts only [A-Za-z0-9]"
        )
    return None
