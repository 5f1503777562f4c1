"""Which accounts one daemon should give up and which it should try to take, from one look at the lease
table — the pure decision of the lease keeper (``router.ownership``), tested on its own.

Rules (M configured accounts, N live daemons, ``fair = ceil(M / N)``):

- **Take** free accounts (no lease row, or its lease expired) while holding fewer than ``fair``; in the
  order of this daemon's preference (rendezvous hashing: a hash of daemon id and appid), so daemons
  racing for the same free accounts mostly try different ones first, and an account tends to go back to
  the same daemon.
- **Give up** accounts beyond ``fair`` only when another live daemon holds fewer than ``fair`` (someone
  takes them: no churn for nothing); the least preferred first.
- So a healthy daemon never takes beyond ``fair`` and holds more only after ``N`` grew, until its next
  look (the issue's bound is ``fair + 1``). With every daemon configured for the same accounts a free
  account always has a live daemon below ``fair`` to take it: ``N * fair >= M``.
- Nothing here reads a clock or the database: ``LeaseView`` is what the keeper read, ``Plan`` what to do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from attrs import field, frozen


def _names(_inst: object, attr: Any, value: frozenset[str]) -> None:
    if not isinstance(value, frozenset) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"LeaseView.{attr.name}: must be a frozenset of non-empty strings, got {value!r}")


def _owners(_inst: object, _attr: Any, value: dict[str, str]) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"LeaseView.owners: must map appids to owners (strings), got {value!r}")


@frozen(kw_only=True)
class LeaseView:
    """One look at the lease table, as the keeper of daemon ``me`` read it.

    ``accounts``: the configured appids; ``owners``: appid -> owner of its *live* lease (free accounts are
    absent); ``members``: the live daemons (``me`` is counted whether listed or not); ``mine``: what
    ``me`` holds and runs (it may lag ``owners`` by a tick)."""

    me: str
    accounts: frozenset[str] = field(validator=_names)
    owners: dict[str, str] = field(validator=_owners)
    members: frozenset[str] = field(validator=_names)
    mine: frozenset[str] = field(validator=_names)

    @property
    def daemons(self) -> frozenset[str]:
        return self.members | {self.me}

    @property
    def fair(self) -> int:
        """``ceil(M / N)``: the share of each live daemon (0 without accounts)."""
        return math.ceil(len(self.accounts) / len(self.daemons)) if self.accounts else 0

    def free(self) -> frozenset[str]:
        """Configured accounts nobody holds (and ``me`` does not run)."""
        return frozenset(a for a in self.accounts if a not in self.owners and a not in self.mine)

    def counts(self) -> dict[str, int]:
        """Accounts held per live daemon (``me``: what it runs)."""
        out = dict.fromkeys(self.daemons, 0)
        for appid, owner in self.owners.items():
            if appid in self.accounts and owner in out and owner != self.me:
                out[owner] += 1
        out[self.me] = len(self.mine & self.accounts)
        return out


@frozen
class Plan:
    """What the keeper does after a look: give ``release`` up (after stopping them, with hand-over), try
    ``acquire`` in order (some may be taken by another daemon meanwhile: ``acquire_up_to`` says how many of
    them to end up with)."""

    release: tuple[str, ...]
    acquire: tuple[str, ...]
    acquire_up_to: int


def preference(me: str, appid: str) -> int:
    """How much daemon ``me`` prefers ``appid`` (rendezvous hashing; larger first)."""
    return int.from_bytes(hashlib.blake2b(f"{me}\0{appid}".encode(), digest_size=8).digest(), "big")


def ranked(me: str, appids: Iterable[str]) -> list[str]:
    """``appids`` by ``me``'s preference, most preferred first (ties cannot happen in practice: appid
    breaks them)."""
    return sorted(appids, key=lambda a: (-preference(me, a), a))


def plan(view: LeaseView) -> Plan:
    """See the module docstring."""
    fair = view.fair
    counts = view.counts()
    held = counts[view.me]
    others_below = any(n < fair for d, n in counts.items() if d != view.me)
    gone = view.mine - view.accounts  # no longer configured: give up
    if gone:
        return Plan(release=tuple(sorted(gone)), acquire=(), acquire_up_to=0)
    if held > fair and others_below:
        extra = ranked(view.me, view.mine)[fair:]
        return Plan(release=tuple(reversed(extra)), acquire=(), acquire_up_to=0)
    if held < fair:
        return Plan(release=(), acquire=tuple(ranked(view.me, view.free())), acquire_up_to=fair)
    return Plan(release=(), acquire=(), acquire_up_to=held)
