"""Several daemons, one PostgreSQL, end to end (issue 17): ``kfrouter run`` subprocesses with ``[cluster]``
sharing a database of the throw-away cluster, the fake WeChat in this process serving every account and
pushing to the daemons in turn (tests/cluster_rig.py). Short leases keep the tests fast; every wait is on
a condition (the fake's model, the lease table) with a bound.

- 3 daemons, 20 accounts, 2,000 customers; one daemon is killed with SIGKILL midway: every customer is
  served by exactly one ``kfsession/create`` that succeeded, nobody is lost, no agent is ever above its
  capacity, and the dead daemon's accounts are taken over within ``lease_s + 5 s`` (measured).
- A daemon stopped with SIGSTOP past its lease, then SIGCONT once the other daemon holds its accounts
  (the lease rows say so): it sends no create after it wakes, steps down, and the accounts stay served.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from cluster_rig import ClusterRig, agents_over_capacity, until

pytestmark = pytest.mark.usefixtures("pg_cluster")


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """The daemons' folder (configs, logs); ``KFR_CLUSTER_LOGS=DIR`` keeps it under DIR for a look later."""
    keep = os.environ.get("KFR_CLUSTER_LOGS")
    if not keep:
        return tmp_path
    out = Path(keep) / f"{tmp_path.name}-{int(time.time())}"
    out.mkdir(parents=True)
    return out

LEASE_S = 5.0
RENEW_S = 1.0


def shared_out(rig: ClusterRig, accounts: int) -> bool:
    """Every account leased and no daemon above its share, ceil(accounts / daemons): what the keepers
    reach once every daemon beats (one that started first takes all, then gives its extras up)."""
    held = [len(v) for v in rig.owners_by_daemon().values()]
    return sum(held) == accounts and max(held) <= -(-accounts // len(rig.daemons))


async def test_three_daemons_twenty_accounts_one_killed_midway(tmp_path: Path, pg_url: str) -> None:
    async with ClusterRig(
        tmp_path, pg_url, daemons=3, accounts=20, lease_s=LEASE_S, renew_every_s=RENEW_S
    ) as rig:
        # a daemon that started first may hold more until the others beat: wait for the shares
        await until(lambda: shared_out(rig, 20), 60, "all 20 accounts leased, ceil(20 / 3) = 7 at most each")
        spread = {k: len(v) for k, v in rig.owners_by_daemon().items()}
        victim = max(rig.daemons, key=lambda d: len(rig.owners_by_daemon()[d.name]))
        theirs = set(rig.owners_by_daemon()[victim.name])
        killed: dict[str, float] = {}

        def taken_over() -> bool:
            leases = rig.leases()
            return all(leases[a][2] and not leases[a][0].startswith(f"{victim.name}:") for a in theirs)

        async def watch_takeover() -> None:  # measured while the customers keep coming
            await until(taken_over, LEASE_S + 30, "the dead daemon's accounts to be taken over")
            killed["taken"] = time.monotonic()

        async def midway(i: int) -> None:
            if i == 1000:
                victim.signal(signal.SIGKILL)
                killed["at"] = time.monotonic()
                watcher.append(asyncio.get_running_loop().create_task(watch_takeover()))

        watcher: list[asyncio.Task[None]] = []
        await rig.arrivals(2000, rate_per_s=40.0, at=midway)
        await watcher[0]
        takeover_s = killed["taken"] - killed["at"]
        await until(rig.everyone_served, 120, "every customer to be served", every=0.25, explain=rig.explain)
        served = rig.served()
        print(f"takeover {takeover_s:.1f}s (lease_s {LEASE_S:g}); spread before {spread}")
        assert takeover_s <= LEASE_S + 5, takeover_s
        assert len(rig.customers) == 2000 and len(served) == 2000  # nobody lost
        assert [k for k, n in served.items() if n != 1] == []  # each created exactly once
        assert agents_over_capacity(rig.creates()) == []
        after = rig.owners_by_daemon()
        alive = [d.name for d in rig.daemons if d is not victim]
        assert sorted(a for name in alive for a in after[name]) == sorted(rig.accounts)
        assert all(len(after[name]) <= 10 + 1 for name in alive)  # ceil(20 / 2) + 1


async def test_a_daemon_paused_past_its_lease_sends_nothing_and_steps_down(
    tmp_path: Path, pg_url: str
) -> None:
    async with ClusterRig(
        tmp_path, pg_url, daemons=2, accounts=4, lease_s=LEASE_S, renew_every_s=RENEW_S
    ) as rig:
        await until(lambda: shared_out(rig, 4), 60, "all 4 accounts leased, 2 each")
        paused, other = rig.daemons
        theirs = set(rig.owners_by_daemon()[paused.name])
        assert theirs, rig.owners_by_daemon()
        await rig.arrivals(40, rate_per_s=40.0, prefix="before")
        await until(rig.everyone_served, 60, "the first customers to be served")
        paused.signal(signal.SIGSTOP)

        def other_holds_theirs() -> bool:
            leases = rig.leases()
            return all(leases[a][2] and leases[a][0].startswith(f"{other.name}:") for a in theirs)

        await until(other_holds_theirs, LEASE_S + 30, "the other daemon to take the paused one's accounts")
        taken = {a: r.epoch for a, r in rig.lease_rows().items()}
        arrivals = asyncio.get_running_loop().create_task(rig.arrivals(60, rate_per_s=20.0, prefix="during"))
        await until(lambda: len(rig.customers) >= 50, 30, "customers to arrive while it is paused")
        woke = rig.fake.clock.now()
        regained: dict[str, float] = {}  # appid -> when the woken daemon got a new lease of it (rebalancing)

        def watch() -> bool:
            for appid, row in rig.lease_rows().items():
                if row.owner.startswith(f"{paused.name}:") and row.epoch > taken[appid]:
                    regained.setdefault(appid, row.granted_at)
            return False

        watching = asyncio.get_running_loop().create_task(until(watch, 300, "never", every=0.02))
        paused.signal(signal.SIGCONT)
        await arrivals
        await until(rig.everyone_served, 120, "every customer to be served", every=0.25, explain=rig.explain)
        stepped_down = [f"lease keeper: lost {a}" for a in theirs]
        await until(
            lambda: all(line in paused.log.read_text(errors="replace") for line in stepped_down),
            30,
            "it to step down from each of its accounts",
        )
        watching.cancel()
        late = [
            c
            for c in rig.creates()
            if c["time"] >= woke
            and c.get("port") == paused.api_port
            and not (c["appid"] in regained and c["time"] >= regained[c["appid"]])
        ]
        assert late == [], late  # nothing sent after it woke, except under a lease it was granted since
        served = rig.served()
        assert len(served) == 100 and [k for k, n in served.items() if n != 1] == []
        assert agents_over_capacity(rig.creates()) == []
        leases = rig.leases()
        for a in theirs:  # served all along: by the new owner, or (rebalanced) under a new lease of its own
            assert leases[a][2] and (a in regained or leases[a][0].startswith(f"{other.name}:")), (
                a,
                leases[a],
            )
