"""The narrow view of a running daemon that the admin API, the metrics and the supervisor page read.

They never import the daemon: they are given something that has these attributes (the daemon itself, in
practice; a test may hand in its own), and the composition root (router/app.py) wires them in. The only
action in the view is ``submit()``: an admin request goes through the daemon's inbox like any input.
Everything else is read: configuration, the engine's state through its read API, the store, the edges'
counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from kfrouter.router.clock import Clock
from kfrouter.router.config import Config
from kfrouter.router.core.commands import Command
from kfrouter.router.core.desk import Desk
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.estimate import WaitEstimator
from kfrouter.router.core.events import Event
from kfrouter.router.edges.client import WeChatClient
from kfrouter.router.edges.store import Store
from kfrouter.router.edges.upstream import Upstream
from kfrouter.router.executor import Executor
from kfrouter.router.pollers import AgentPoller, WaitlistPoller


class Counted(Protocol):
    """Something that counts what it saw (the webhook receiver, the intake): name -> count."""

    @property
    def stats(self) -> Mapping[str, int]: ...


class DaemonView(Protocol):
    """What pages and the admin API may see of a daemon (attributes may be plain attributes)."""

    @property
    def config(self) -> Config: ...

    @property
    def desk(self) -> Desk: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def estimator(self) -> WaitEstimator | None: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def store(self) -> Store | None: ...

    @property
    def client(self) -> WeChatClient | None: ...

    @property
    def upstream(self) -> Upstream | None: ...

    @property
    def intake(self) -> Counted: ...

    @property
    def receiver(self) -> Counted: ...

    @property
    def started(self) -> asyncio.Event: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def executor(self) -> Executor | None: ...

    @property
    def agent_poller(self) -> AgentPoller | None: ...

    @property
    def waitlist_poller(self) -> WaitlistPoller | None: ...

    def inbox_length(self) -> int: ...

    def health(self) -> dict[str, Any]: ...

    async def submit(self, event: Event) -> list[Command]: ...
