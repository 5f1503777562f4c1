"""The narrow views of a running process that the admin API, the metrics and the supervisor page read.

``DaemonView`` is one account (an ``AccountRunner``, or the WeCom daemon); ``HostView`` the process with its
accounts (``router.host.Host``, or ``OneAccount`` over a daemon that serves one account by itself). The pages
learn of each account through ``AccountListener`` (``add_listener``): accounts start and stop at run time.

They never import the daemon or the host: they are given something that has these attributes, and the
composition root (router/app.py) wires them in. The only
action in the view is ``submit()``: an admin request goes through the daemon's inbox like any input.
Everything else is read: configuration, the engine's state through its read API, the store, the edges'
counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from attrs import evolve, frozen

from kfrouter.router.clock import Clock
from kfrouter.router.config import Config
from kfrouter.router.core.commands import Command
from kfrouter.router.core.desk import Desk
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.estimate import WaitEstimator
from kfrouter.router.core.events import Event
from kfrouter.router.desk_driver import run_status
from kfrouter.router.edges.client import WeChatClient
from kfrouter.router.edges.store import Store, StoredCounts
from kfrouter.router.edges.upstream import Upstream
from kfrouter.router.executor import Executor
from kfrouter.router.observe import Observer
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
    def observers(self) -> list[Observer]: ...

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


LOCAL_OWNER = "local"  # the owner of an account routed by a process without leases


@frozen(kw_only=True)
class AccountStatus:
    """One configured account as this process sees it (``/api/accounts``, ``kfrouter accounts list``).
    ``owner``: who routes it — the lease's owner, or this process's name (``LOCAL_OWNER``) without a lease;
    None when it does not run here. ``lease_expires_at``: the lease's end (database clock), None without
    one. ``waiting`` / ``sessions``: the engine's counts of an account running here; of one that does not,
    its stored counts when they were read (several daemons: ``HostView.read_account_status``), else None —
    and ``counts_error`` says why they could not be read."""

    appid: str
    running: bool
    owner: str | None
    lease_epoch: int | None
    lease_expires_at: float | None
    status: str  # starting | running | stopping | served by OWNER | not running here
    waiting: int | None
    sessions: int | None
    counts_error: str | None = None


class AccountListener(Protocol):
    """Told of every account's runner before it starts, and of its end."""

    def account_added(self, daemon: DaemonView) -> None: ...

    def account_removed(self, appid: str) -> None: ...


class HostView(Protocol):
    """What the pages may see of the process: its config (``[server]`` tokens, ``[log]``), the accounts that
    run here (by appid), every configured account's status (as this process knows it, or with what the
    shared store holds of the others), and the listener hook."""

    @property
    def config(self) -> Config: ...

    @property
    def runners(self) -> Mapping[str, DaemonView]: ...

    def account_status(self) -> Sequence[AccountStatus]: ...

    async def read_account_status(self) -> Sequence[AccountStatus]:
        """``account_status()`` with the stored counts of the accounts that do not run here, read from the
        shared store (several daemons; the others as they are)."""
        ...

    def add_listener(self, listener: AccountListener) -> None: ...


def status_of(daemon: DaemonView, owner: str = LOCAL_OWNER) -> AccountStatus:
    """A running account's status, owned by ``owner`` unless it holds a lease (``daemon.lease``)."""
    lease = getattr(daemon, "lease", None)
    stopping, started = daemon.stopping, daemon.started.is_set()
    return AccountStatus(
        appid=daemon.config.account,
        running=True,
        owner=owner if lease is None else lease.owner,
        lease_epoch=None if lease is None else lease.epoch,
        lease_expires_at=None if lease is None else lease.expires_at,
        status=run_status(stopping=stopping, started=started),
        waiting=daemon.engine.queue_length(),
        sessions=len(daemon.engine.sessions()),
    )


def with_stored(status: AccountStatus, counts: StoredCounts | str) -> AccountStatus:
    """``status`` of an account not running here with its stored counts, or why they were not read."""
    if isinstance(counts, str):
        return evolve(status, waiting=None, sessions=None, counts_error=counts)
    return evolve(status, waiting=counts.waiting, sessions=counts.sessions, counts_error=None)


class OneAccount:
    """A ``HostView`` over a daemon that serves one account by itself (the WeCom daemon)."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.runners: Mapping[str, DaemonView] = {daemon.config.account: daemon}

    def account_status(self) -> Sequence[AccountStatus]:
        return [status_of(self.daemon)]

    async def read_account_status(self) -> Sequence[AccountStatus]:
        return self.account_status()

    def add_listener(self, listener: AccountListener) -> None:
        listener.account_added(self.daemon)
