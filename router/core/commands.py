"""Outputs of the engine, named in the imperative: things the caller must do.

The daemon turns them into WeChat API calls; the simulator applies them to its model of WeChat.
Every ``CreateSession`` must be answered with exactly one of ``SessionCreated(source='api')`` or
``CreateFailed`` (a timeout counts as ``CreateFailed(errcode=-2)``). Fields may be given by keyword or in
their declared order (the engine builds a ``CreateSession`` per routed customer, and attrs' keyword
``__init__`` costs about a third more).
"""

from __future__ import annotations

from attrs import frozen


@frozen
class CreateSession:
    """Call ``kfsession/create`` for this customer and agent."""

    openid: str
    kf_account: str


@frozen
class CloseSession:
    """Call ``kfsession/close``."""

    openid: str
    kf_account: str


@frozen
class SendText:
    """Send a text through ``message/custom/send``. ``kind`` says why ('queued', 'eta', 'assigned',
    ...) so the caller can budget WeChat's 5-messages-per-48h window."""

    openid: str
    text: str
    kind: str = "info"
    kf_account: str | None = None


Command = CreateSession | CloseSession | SendText


create_session = CreateSession  # the engine's name for ``CreateSession(openid, kf_account)``
