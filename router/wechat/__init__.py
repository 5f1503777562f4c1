"""Pure WeChat wire codecs: XML pushes, replies, signatures, AES safe mode.

No I/O, no clock, no global randomness: timestamps and random bytes are arguments.

- ``errors``: ``WeChatCodecError`` and its subclasses, each with an ``http_status`` hint.
- ``signature``: ``sign`` / ``verify`` (plain ``signature`` and safe-mode ``msg_signature``).
- ``crypto``: ``SafeModeCrypto`` (AES-256-CBC framing, appid check, previous-key fallback).
- ``xml``: size-capped, DTD/entity-free parsing; CDATA writing.
- ``push``: ``parse_push`` into frozen push values with ``dedup_key``; ``parse_encrypted_envelope``.
- ``replies``: ``SUCCESS``, ``transfer_customer_service``, ``text_reply`` and the push builders.
- ``reply_parser``: ``parse_reply``, for the fake WeChat server reading the engine's answers.
"""
