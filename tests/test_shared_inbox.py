"""router.shared_inbox on the throw-away PostgreSQL cluster: receivers (their own connections, no lease)
keep pushes for the owner, the owner's pickup applies each exactly once — woken by NOTIFY, or by its
polling when the LISTEN connection is gone — and a stale owner's pickup stops, leaving the rest to the
new owner."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from conftest import wait_until

from kfrouter.router.edges.store import SharedPush, Store
from kfrouter.router.edges.store_pg import PgDatabase
from kfrouter.router.shared_inbox import Pickup, keep_for_owner

APPID = "wx_pickup_test"


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return await wait_until(predicate, timeout=timeout, message=what)


class Owner:
    """A daemon owning the account: its store under a lease, a pickup applying pushes in one write unit
    (claim the key, log the push, acknowledge)."""

    def __init__(self, url: str, name: str, poll_s: float) -> None:
        self.store = Store(PgDatabase(url), appid=APPID)
        lease = self.store.acquire_lease(name, 30)
        assert lease is not None, f"{name} could not take the lease"
        self.lease = lease
        self.store.use_lease(lease)
        self.applied: list[str] = []
        self.pickup = Pickup(self.store, self.apply, poll_s=poll_s)
        self.task: asyncio.Task[None] | None = None

    async def apply(self, push: SharedPush) -> bool:
        def work(s: Store) -> bool:
            s.ack_shared_push(push.id)
            if not s.claim_push(push.dedup_key, push.received_at):
                return False
            s.append_event(push.received_at, "picked", {"key": push.dedup_key})
            return True

        if await self.store.commit(work):
            self.applied.append(push.dedup_key)
        return True

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.pickup.run())

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        db = self.store.database
        assert isinstance(db, PgDatabase)
        await db.stop_listening()
        self.store.close()
        await asyncio.to_thread(db.close)


@pytest.fixture
async def made(pg_url: str) -> AsyncIterator[Callable[..., Any]]:
    things: list[Any] = []

    def make(kind: str, *args: Any, **kwargs: Any) -> Any:
        thing = Owner(pg_url, *args, **kwargs) if kind == "owner" else Store(pg_url, appid=APPID)
        things.append(thing)
        return thing

    try:
        yield make
    finally:
        for t in things:
            if isinstance(t, Owner):
                await t.close()
            else:
                t.close()


def logged(url: str) -> list[str]:
    with Store(url, appid=APPID) as s:
        return sorted(p["key"] for _seq, _t, kind, p in s.events() if kind == "picked")


async def test_pushes_kept_by_any_receiver_are_applied_once_woken_by_notify(
    made: Callable[..., Any], pg_url: str
) -> None:
    owner = made("owner", "daemon-o", poll_s=60.0)  # a minute: only NOTIFY can wake it in time
    receivers = [made("store"), made("store")]
    owner.start()
    db = owner.store.database
    await until(lambda: db.listening, 10, "the owner to LISTEN")
    keys = [f"msg:{i}" for i in range(200)]

    async def receive(i: int, key: str) -> bool:  # every push reaches two receivers (WeChat's retry):
        first = await keep_for_owner(receivers[i % 2], key, f"<xml>{key}</xml>", received_by="r")
        await keep_for_owner(receivers[(i + 1) % 2], key, f"<xml>{key}</xml>", received_by="r")
        return first  # the retry is kept again only if the owner took the first already

    started = time.monotonic()
    assert all(await asyncio.gather(*(receive(i, k) for i, k in enumerate(keys))))
    await until(lambda: len(owner.applied) == 200, 20, "every push to be applied")
    await until(lambda: owner.store.shared_pushes() == [], 20, "the retries to be taken (and not applied)")
    assert time.monotonic() - started < 20  # not the 60 s poll
    assert owner.pickup.woken >= 1
    assert sorted(owner.applied) == sorted(keys) and logged(pg_url) == sorted(keys)  # each once


async def test_without_listen_the_pickup_polls(made: Callable[..., Any], pg_url: str) -> None:
    owner = made("owner", "daemon-o", poll_s=0.3)
    receiver = made("store")
    owner.start()
    db = owner.store.database
    await until(lambda: db.listening, 10, "the owner to LISTEN")
    with psycopg.connect(pg_url, autocommit=True) as raw:  # the LISTEN connection drops (server side)
        raw.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'kfrouter-listen'"
        )
    await until(lambda: not db.listening, 10, "the listener to notice")
    woken = owner.pickup.woken
    assert await keep_for_owner(receiver, "msg:poll", "<xml/>", received_by="r")
    await until(lambda: owner.applied == ["msg:poll"], 10, "the push to be polled")
    assert owner.pickup.woken == woken or db.listening  # found by polling (unless LISTEN came back first)


async def test_a_stale_owners_pickup_stops_and_the_new_owner_applies_the_rest_once(
    made: Callable[..., Any], pg_url: str
) -> None:
    old = made("owner", "daemon-old", poll_s=0.2)
    receiver = made("store")
    old.start()
    for i in range(5):
        assert await keep_for_owner(receiver, f"msg:a{i}", "<xml/>", received_by="r")
    await until(lambda: len(old.applied) == 5, 10, "the old owner to apply the first five")
    with psycopg.connect(pg_url, autocommit=True) as raw:  # its lease expires (paused daemon)
        raw.execute("UPDATE kfrouter.leases SET expires_at = kfrouter.db_now() WHERE appid = %s", (APPID,))
    for i in range(5):
        assert await keep_for_owner(receiver, f"msg:b{i}", "<xml/>", received_by="r")
    assert old.task is not None
    await asyncio.wait_for(old.task, 10)  # StaleLease: the pickup ends by itself
    assert len(old.applied) == 5
    new = made("owner", "daemon-new", poll_s=0.2)
    assert new.lease.epoch == old.lease.epoch + 1
    new.start()
    await until(lambda: len(new.applied) == 5, 10, "the new owner to apply the other five")
    assert logged(pg_url) == sorted([f"msg:a{i}" for i in range(5)] + [f"msg:b{i}" for i in range(5)])


async def test_a_failing_push_stays_and_is_tried_again(made: Callable[..., Any]) -> None:
    owner = made("owner", "daemon-o", poll_s=0.1)
    receiver = made("store")
    calls: list[str] = []
    real = owner.apply

    async def flaky(push: SharedPush) -> bool:
        calls.append(push.dedup_key)
        if len(calls) == 1:
            raise RuntimeError("the engine refused it this time")
        return await real(push)

    owner.pickup = Pickup(owner.store, flaky, poll_s=0.1)
    owner.start()
    assert await keep_for_owner(receiver, "msg:x", "<xml/>", received_by="r")
    await until(lambda: owner.applied == ["msg:x"], 10, "the push to be applied on its second try")
    assert calls == ["msg:x", "msg:x"]
