"""router.edges.token.SharedTokens: two "daemons" (each its own connections to a database of the throw-away
PostgreSQL cluster, each its own API client) call the fake WeChat for one account in ``cgi-bin/token``
mode, where every fetch invalidates the token before the previous one: only the lease owner fetches, the
other reads the stored token, and after a takeover the old owner neither fetches nor stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import psycopg
import pytest

from kfrouter.router.clock import SteadyClock
from kfrouter.router.edges.client import WeChatClient
from kfrouter.router.edges.errors import NotSent
from kfrouter.router.edges.store import Lease, StaleLease, Store
from kfrouter.router.edges.store_pg import PgDatabase
from kfrouter.sim.fake_server import FakeWeChat, running_fake

APPID = "wx_token_share"
SECRET = "token-share-secret"
T0 = 1_700_000_000.0


class Daemon:
    def __init__(self, url: str, fake: FakeWeChat, http: aiohttp.ClientSession, clock: SteadyClock) -> None:
        self.store = Store(PgDatabase(url), appid=APPID)
        self.lease: Lease | None = None
        self.client = WeChatClient(http, APPID, SECRET, fake.base_url, "basic", retries=0, clock=clock.now)
        self.shared = self.client.share_tokens(self.store, owner=self.owns, clock=clock.now)

    def owns(self) -> bool:
        return self.lease is not None

    def take(self, name: str) -> None:
        self.lease = self.store.acquire_lease(name, 60)
        assert self.lease is not None
        self.store.use_lease(self.lease)

    def close(self) -> None:
        db = self.store.database
        self.store.close()
        db.close()


@pytest.fixture
async def pair(pg_url: str) -> AsyncIterator[tuple[Daemon, Daemon, FakeWeChat, SteadyClock]]:
    clock = SteadyClock(start=T0, frozen=True)
    async with running_fake(APPID, SECRET, clock=clock) as fake, aiohttp.ClientSession() as http:
        await_agents = {"agents": [{"kf_account": "a1@test", "online": True}]}
        async with http.post(f"{fake.base_url}/_fake/agents", json=await_agents) as resp:
            assert resp.status == 200
        a, b = Daemon(pg_url, fake, http, clock), Daemon(pg_url, fake, http, clock)
        try:
            yield a, b, fake, clock
        finally:
            a.close()
            b.close()


def token_fetches(fake: FakeWeChat) -> int:
    return int(fake.model.calls["cgi-bin/token"])


async def test_only_the_owner_fetches_and_the_other_reads(
    pair: tuple[Daemon, Daemon, FakeWeChat, SteadyClock],
) -> None:
    a, b, fake, clock = pair
    a.take("daemon-a")
    with pytest.raises(NotSent, match="only the account's lease owner fetches"):
        await b.client.get_online_kf_list()  # nothing stored yet, and b is not the owner
    await a.client.get_online_kf_list()
    await b.client.get_online_kf_list()  # the token a stored
    assert token_fetches(fake) == 1 and (a.shared.fetched, b.shared.read) == (1, 1)
    clock.advance(7200 - 60)  # inside the margin: the owner refreshes; b's cached one is still valid
    await a.client.get_online_kf_list()
    assert token_fetches(fake) == 2
    clock.advance(120)  # b's old token expired (and cgi-bin/token superseded it): b reads the new one
    await b.client.get_online_kf_list()
    assert token_fetches(fake) == 2 and b.shared.read == 2
    stored = b.store.token()
    assert stored is not None and stored.access_token == a.client.tokens.current
    assert stored.epoch == a.lease.epoch  # type: ignore[union-attr]


async def test_a_rejected_stored_token_is_replaced_by_the_owner(
    pair: tuple[Daemon, Daemon, FakeWeChat, SteadyClock],
) -> None:
    a, b, fake, clock = pair
    a.take("daemon-a")
    await a.client.get_online_kf_list()
    first = a.client.tokens.current
    assert first is not None
    await b.client.get_online_kf_list()
    fake.model.fetch_token(grant_type="client_credential", appid=APPID, secret=SECRET, now=clock.now())
    fake.model.fetch_token(grant_type="client_credential", appid=APPID, secret=SECRET, now=clock.now())
    await a.client.get_online_kf_list()  # 40001 on the stored token: a fetches and stores a new one
    assert a.client.tokens.current not in (None, first)
    assert b.store.token().access_token == a.client.tokens.current  # type: ignore[union-attr]


async def test_a_stale_owner_that_still_believes_it_owns_cannot_store_its_token(
    pair: tuple[Daemon, Daemon, FakeWeChat, SteadyClock], pg_url: str
) -> None:
    """The last line of defence: the keeper's gate normally stops a stale owner before it fetches (the
    client's ``gate`` test); here a passed it just before losing the lease."""
    a, b, fake, clock = pair
    a.take("daemon-a")
    await a.client.get_online_kf_list()
    lease = a.lease
    assert lease is not None
    with psycopg.connect(pg_url, autocommit=True) as raw:  # a's lease ends (paused daemon)
        raw.execute("UPDATE kfrouter.leases SET expires_at = kfrouter.db_now() WHERE appid = %s", (APPID,))
    b.take("daemon-b")
    clock.advance(7200 - 60)  # a thinks it should refresh (it still believes it owns the account)
    fetches, old = token_fetches(fake), a.client.tokens.current
    with pytest.raises(StaleLease):
        await a.client.get_online_kf_list()  # fetched, but the save is refused: the token is not used
    assert token_fetches(fake) == fetches + 1 and a.client.tokens.current == old
    stored = b.store.token()
    assert stored is not None and stored.epoch == lease.epoch  # nothing written by a
    await b.client.get_online_kf_list()
    assert b.store.token().epoch == b.lease.epoch  # type: ignore[union-attr]
