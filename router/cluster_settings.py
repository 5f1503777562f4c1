"""``[cluster]``: several daemons sharing one PostgreSQL, each account owned through a lease
(docs/scale-out.md). The validated, frozen settings and the checked way in from a TOML table.

Keys (all optional; the table's presence turns the lease keeper on):

- ``daemon_id``: this daemon's name in the lease table (letters, digits, ``_ - . :``; default the host
  name). A process adds its pid and a random suffix (``Lease owner``): a restarted daemon is a new owner,
  never one that could share an epoch with a paused predecessor.
- ``lease_s`` (15): how long a lease lasts without renewal — a dead daemon's accounts are taken over
  within about ``lease_s + renew_every_s``. 1..300.
- ``renew_every_s`` (3): how often leases are renewed and the table looked at; must be below
  ``lease_s / 2`` (two renewals may fail before a lease is lost), or the file is refused naming the key.

``settings.keepalive()``: the TCP keepalive and user timeout of every connection to the database (libpq
parameters, router/edges/store_pg.py), derived from the lease settings — a half-open connection to a
dead database host fails within ``lease_s - 3 * renew_every_s`` (at least 1 s), early enough that the lease
keeper's next look, on a new connection, still renews before its local deadline (``lease_s -
renew_every_s`` after the last renewal: one renewal period is left for reconnecting); an idle one (the
LISTEN connection) is probed every ``renew_every_s`` (at least 1 s). And the other way round: the server
ends a session left idle inside a transaction for ``lease_s - 2 * renew_every_s`` (at least 1 s;
``idle_in_transaction_session_timeout``) — a daemon paused (SIGSTOP, a long GC) in the middle of a write
holds the lease row's fence lock, and the daemon taking the account over when the lease expires would
wait for it as long as the pause lasts; so the lock is gone before the lease expires. A daemon without
``[cluster]`` uses what the defaults give.

Where ``[cluster]`` applies (``cluster_problems``): a file of Official Accounts with ``[store] url`` — the
daemons share one PostgreSQL, and a WeCom 微信客服 account (``[wecom]``) runs in one daemon, without leases.
One rule, asked by the config loader (so ``kfrouter check-config`` refuses such a file, naming ``cluster``)
and by ``router.app.build_cluster`` (a config made some other way).

Rules: every problem is reported with its key (``cluster.lease_s: ...``), as ``router.config`` does; a
value that validates works.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from kfrouter.router.core.errors import ConfigError

DAEMON_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
KEYS = ("daemon_id", "lease_s", "renew_every_s")
LEASE_RANGE_S = (1.0, 300.0)
KEEPALIVE_PROBES = 3  # unanswered probes that drop an idle connection (where tcp_user_timeout is unknown)


def _daemon_id(_inst: object, _attr: object, value: str) -> None:
    if not isinstance(value, str) or not DAEMON_ID_RE.fullmatch(value):
        raise ValueError(
            f"cluster.daemon_id: must be 1-64 letters, digits, '_', '-', '.' or ':', got {value!r}"
        )


def _lease_s(_inst: object, _attr: object, value: float) -> None:
    lo, hi = LEASE_RANGE_S
    if not _number(value) or not lo <= value <= hi:
        raise ValueError(f"cluster.lease_s: must be a number from {lo:g} to {hi:g} seconds, got {value!r}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def default_daemon_id() -> str:
    """The host name, cut to what ``daemon_id`` allows."""
    name = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:40]
    return name or "kfrouter"


@frozen(kw_only=True)
class ClusterSettings:
    """See the module docstring."""

    daemon_id: str = field(factory=default_daemon_id, validator=_daemon_id)
    lease_s: float = field(default=15.0, validator=_lease_s)
    renew_every_s: float = field(default=3.0)

    @renew_every_s.validator
    def _renew(self, _attr: object, value: float) -> None:
        if not _number(value) or value <= 0:
            raise ValueError(f"cluster.renew_every_s: must be a number > 0 seconds, got {value!r}")
        if not value < self.lease_s / 2:
            raise ValueError(
                f"cluster.renew_every_s: must be below lease_s / 2 = {self.lease_s / 2:g} "
                f"(two renewals may fail before a lease is lost), got {value!r}"
            )

    @property
    def stop_margin_s(self) -> float:
        """How long before a lease could expire (the last renewal that succeeded, plus ``lease_s``) this
        daemon stops the account on its own when it cannot renew: one renewal period."""
        return self.renew_every_s

    def keepalive(self) -> dict[str, str]:
        """libpq's keepalive parameters for every connection to the shared database, and the server's
        ``idle_in_transaction_session_timeout`` (``options``; see the module docstring; a value the store
        URL sets itself wins, router/edges/store_pg.py)."""
        probe_s = max(1, math.ceil(self.renew_every_s))
        give_up_ms = max(1000, round((self.lease_s - 3 * self.renew_every_s) * 1000))
        idle_ms = max(1000, round((self.lease_s - 2 * self.renew_every_s) * 1000))
        return {
            "keepalives": "1",
            "keepalives_idle": str(probe_s),
            "keepalives_interval": str(probe_s),
            "keepalives_count": str(KEEPALIVE_PROBES),
            "tcp_user_timeout": str(give_up_ms),
            "options": f"-c idle_in_transaction_session_timeout={idle_ms}",
        }

    def owner_id(self) -> str:
        """This process's name in the lease table: ``daemon_id``, the pid and a random suffix."""
        return f"{self.daemon_id}:{os.getpid()}:{secrets.token_hex(2)}"


def cluster_problems(*, store_url: str | None, wecom: bool) -> list[tuple[str, str]]:
    """Why ``[cluster]`` cannot apply to a file with this ``[store] url`` (None: none) that is (or is not) a
    ``[wecom]`` account, as ``(key, reason)`` pairs; empty when it can."""
    if wecom:  # whatever the store, this is the one thing to change
        return [
            (
                "cluster",
                "is not supported with [wecom]: several daemons share Official Accounts only; a WeCom 微信客服 "
                "account runs in one daemon (one per kf account): remove [cluster]",
            )
        ]
    if store_url is None:
        return [
            (
                "cluster",
                'needs [store] url = "postgresql://..." (or KFROUTER_STORE_URL): the daemons share one database',
            )
        ]
    return []


def parse_cluster(table: Mapping[str, Any], source: str = "[cluster]") -> ClusterSettings:
    """``[cluster]`` from a TOML table; ``ConfigError`` naming every bad key (``cluster.<key>``)."""
    if not isinstance(table, Mapping):
        raise ConfigError.in_file(source, [("cluster", f"must be a table, got {type(table).__name__}")])
    problems: list[tuple[str, str]] = [
        (f"cluster.{k}", f"unknown key (known: {', '.join(KEYS)})") for k in table if k not in KEYS
    ]
    values: dict[str, Any] = {}
    for key in KEYS:
        if key in table:
            values[key] = table[key]
    if problems:
        raise ConfigError.in_file(source, problems)
    try:
        return ClusterSettings(**values)
    except (ValueError, TypeError) as exc:
        key, _, reason = str(exc).partition(": ")
        raise ConfigError.in_file(source, [(key, reason or str(exc))]) from None
