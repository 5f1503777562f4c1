"""Outputs of the engine, named in the imperative: things the caller must do.

The daemon turns them into WeChat API calls; the simulator applies them to its model of WeChat.
Every ``CreateSession`` must be answered with exactly one of ``SessionCreated(source='api')`` or
``CreateFailed`` (a timeout counts as ``CreateFailed(errcode=-2)``).
"""

from __future__ import annotations

from attrs import frozen


@frozen(kw_only=True)
class CreateSession:
    """Call ``kfsession/create`` for this customer and agent."""

    openid: str
    kf_account: str


@frozen(kw_only=True)
class CloseSession:
    """Call ``kfsession/close``."""

    openid: str
    kf_account: str


@frozen(kw_only=True)
class SendText:
    """Send a text through ``message/custom/send``. ``kind`` says why ('queued', 'eta', 'assigned',
    ...) so the caller can budget WeChat's 5-messages-per-48h window."""

    openid: str
    text: str
    kind: str = "info"
    kf_account: str | None = None


Command = CreateSession | CloseSession | SendText
