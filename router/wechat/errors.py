"""Errors raised by the WeChat wire codecs.

Every error is a ``WeChatCodecError`` (a ``ValueError``) and carries ``http_status``, a hint for the
webhook about what to answer. Messages name what was wrong and where; they never contain a token, an
EncodingAESKey or a decrypted secret.
"""

from __future__ import annotations


class WeChatCodecError(ValueError):
    """Base class: bytes from (or for) WeChat that the codecs refuse."""

    http_status: int = 400


class SignatureMismatch(WeChatCodecError):
    """``signature`` / ``msg_signature`` does not match the token, timestamp, nonce (and Encrypt)."""

    http_status = 403


class BadAESKey(WeChatCodecError):
    """An EncodingAESKey is malformed: a configuration problem on our side, hence 500."""

    http_status = 500


class DecryptError(WeChatCodecError):
    """A safe-mode ``Encrypt`` value cannot be decrypted: bad base64, length, padding or framing."""


class AppIdMismatch(WeChatCodecError):
    """The message decrypted, but its trailing appid is not ours."""

    def __init__(self, message: str, *, got: str, expected: str) -> None:
        super().__init__(message)
        self.got = got
        self.expected = expected


class XmlRejected(WeChatCodecError):
    """A body is not acceptable XML: too large (413), not XML, unsafe (DTD/entities), wrong root (400)."""

    def __init__(self, message: str, *, http_status: int = 400) -> None:
        if http_status not in (400, 413):
            raise ValueError(f"XmlRejected http_status must be 400 or 413, got {http_status!r}")
        super().__init__(message)
        self.http_status = http_status


class InvalidPush(XmlRejected):
    """Well-formed XML that is not a valid push: an element is missing, duplicated or malformed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, http_status=400)
