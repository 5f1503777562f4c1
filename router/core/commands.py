"""Outputs of the engine, named in the imperative: things the caller must do.

The daemon turns them into WeChat API calls; the simulator applies them to its model of WeChat.
Every ``CreateSession`` must be answered with exactly one of ``SessionCreated(source='api')`` or
``CreateFailed`` (a timeout counts as ``CreateFailed(errcode=-2)``).
"""

from __future__ import annotations

from attrs import frozen


class _CreateSessionSlots:
    # CreateSession's fields live here (attrs reuses the slots) so that create_session() can fill a
    # plain instance and make it the frozen command: the engine makes one per routing decision
    __slots__ = ("__weakref__", "kf_account", "openid")
    openid: str
    kf_account: str


@frozen(kw_only=True)
class CreateSession(_CreateSessionSlots):
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


def create_session(openid: str, kf_account: str) -> CreateSession:
    """``CreateSession(openid=..., kf_account=...)``, built without attrs' keyword ``__init__``."""
    cmd = object.__new__(_CreateSessionSlots)
    cmd.openid = openid
    cmd.kf_account = kf_account
    cmd.__class__ = CreateSession
    return cmd  # type: ignore[return-value]
