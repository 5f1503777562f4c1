"""TokenHolder (single-flight, compare-and-swap, margin, cooldown) with an injected fetch and clock, and
the errcode → exception mapping of router.edges.errors. No network here."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kfrouter.router.edges.errors import (
    AccountNotBound,
    AgentOffline,
    BadResponse,
    CredentialError,
    InvalidKfAccount,
    KfApiDisabled,
    NetworkError,
    NoSession,
    RateLimited,
    ServedByOther,
    SessionError,
    SystemBusy,
    TokenError,
    WeChatError,
    WindowClosed,
    from_response,
    raise_for_response,
    redact,
)
from kfrouter.router.edges.token import TokenHolder, parse_token_response, token_request


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Fetcher:
    """A fake token endpoint: tokens t1, t2, ...; optionally gated on an event or failing."""

    def __init__(self, expires_in: float = 7200.0) -> None:
        self.calls = 0
        self.expires_in = expires_in
        self.gate: asyncio.Event | None = None
        self.fail_with: Exception | None = None

    async def __call__(self, force: bool) -> tuple[str, float]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return f"t{self.calls}", self.expires_in


async def test_token_cached_until_margin_then_refreshed() -> None:
    clock, fetch = Clock(), Fetcher()
    holder = TokenHolder(fetch, margin_s=120, clock=clock)
    assert await holder.get() == "t1"
    clock.t += 7200 - 121
    assert await holder.get() == "t1" and fetch.calls == 1
    clock.t += 2  # inside the margin
    assert await holder.get() == "t2" and fetch.calls == 2
    assert holder.refreshes == 2


async def test_margin_capped_at_half_lifetime() -> None:
    clock, fetch = Clock(), Fetcher(expires_in=100)
    holder = TokenHolder(fetch, margin_s=300, clock=clock)
    await holder.get()
    clock.t += 49
    assert await holder.get() == "t1"
    clock.t += 2
    assert await holder.get() == "t2"


async def test_concurrent_callers_share_one_refresh() -> None:
    fetch = Fetcher()
    fetch.gate = asyncio.Event()
    holder = TokenHolder(fetch, clock=Clock())
    tasks = [asyncio.create_task(holder.get()) for _ in range(20)]
    await asyncio.sleep(0)
    fetch.gate.set()
    assert await asyncio.gather(*tasks) == ["t1"] * 20
    assert fetch.calls == 1


async def test_failure_reaches_every_waiter_and_next_call_retries() -> None:
    fetch = Fetcher()
    fetch.gate = asyncio.Event()
    fetch.fail_with = SystemBusy(-1, "system error", "/cgi-bin/stable_token")
    holder = TokenHolder(fetch, clock=Clock())
    tasks = [asyncio.create_task(holder.get()) for _ in range(5)]
    await asyncio.sleep(0)
    fetch.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, SystemBusy) for r in results) and fetch.calls == 1
    fetch.fail_with = None
    assert await holder.get() == "t2"


async def test_invalidate_is_compare_and_swap() -> None:
    fetch = Fetcher()
    holder = TokenHolder(fetch, clock=Clock())
    assert await holder.get() == "t1"
    assert holder.invalidate("t1") is True
    assert holder.current is None
    assert await holder.get() == "t2"
    assert holder.invalidate("t1") is False  # a late failure with the old token changes nothing
    assert holder.current == "t2"
    assert await holder.get() == "t2" and fetch.calls == 2


async def test_cancelled_waiter_does_not_cancel_the_shared_refresh() -> None:
    fetch = Fetcher()
    fetch.gate = asyncio.Event()
    holder = TokenHolder(fetch, clock=Clock())
    first = asyncio.create_task(holder.get())
    second = asyncio.create_task(holder.get())
    await asyncio.sleep(0)
    first.cancel()
    fetch.gate.set()
    assert await second == "t1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fetch.calls == 1


async def test_failed_refresh_ahead_of_expiry_keeps_the_valid_token_with_cooldown() -> None:
    clock, fetch = Clock(), Fetcher()
    holder = TokenHolder(fetch, margin_s=120, failure_cooldown_s=5, clock=clock)
    await holder.get()
    clock.t += 7200 - 60  # inside the margin, still valid
    fetch.fail_with = NetworkError("connection reset", "/cgi-bin/stable_token")
    assert await holder.get() == "t1" and fetch.calls == 2
    assert await holder.get() == "t1" and fetch.calls == 2  # cooldown: no hammering
    clock.t += 6
    assert await holder.get() == "t1" and fetch.calls == 3
    clock.t += 60  # expired now: the failure surfaces
    with pytest.raises(NetworkError):
        await holder.get()
    fetch.fail_with = None
    assert await holder.get() == "t5"


def test_holder_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="margin_s"):
        TokenHolder(Fetcher(), margin_s=-1)
    with pytest.raises(ValueError, match="failure_cooldown_s"):
        TokenHolder(Fetcher(), failure_cooldown_s=float("nan"))


# --------------------------------------------------------------------------------- token requests


def test_token_request_shapes() -> None:
    method, path, query, body = token_request("stable", "wxA", "sec")
    assert (method, path, query) == ("POST", "/cgi-bin/stable_token", {})
    assert body is not None
    assert json.loads(body) == {
        "grant_type": "client_credential",
        "appid": "wxA",
        "secret": "sec",
        "force_refresh": False,
    }
    method, path, query, body = token_request("basic", "wxA", "sec")
    assert (method, path, body) == ("GET", "/cgi-bin/token", None)
    assert query == {"grant_type": "client_credential", "appid": "wxA", "secret": "sec"}
    with pytest.raises(ValueError, match="token_mode"):
        token_request("magic", "wxA", "sec")  # type: ignore[arg-type]


def test_parse_token_response() -> None:
    ep = "/cgi-bin/stable_token"
    assert parse_token_response(ep, {"access_token": "abc", "expires_in": 7200}) == ("abc", 7200.0)
    assert parse_token_response(ep, {"access_token": "abc", "expires_in": "300"}) == ("abc", 300.0)
    assert parse_token_response(ep, {"access_token": "abc", "expires_in": 99999}) == ("abc", 7200.0)
    with pytest.raises(CredentialError) as err:
        parse_token_response(ep, {"errcode": 40001, "errmsg": "invalid credential"})
    assert err.value.errcode == 40001  # 40001 from the token endpoint means a wrong secret
    with pytest.raises(CredentialError):
        parse_token_response(ep, {"errcode": 40164, "errmsg": "invalid ip 1.2.3.4, not in whitelist"})
    with pytest.raises(SystemBusy):
        parse_token_response(ep, {"errcode": -1, "errmsg": "system error"})
    for bad in ({"expires_in": 7200}, {"access_token": "", "expires_in": 7200}, {"access_token": 5}):
        with pytest.raises(BadResponse, match="access_token"):
            parse_token_response(ep, bad)
    for bad_exp in (None, 0, -5, "soon", True, float("inf")):
        with pytest.raises(BadResponse, match="expires_in"):
            parse_token_response(ep, {"access_token": "abc", "expires_in": bad_exp})


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("errcode", "cls"),
    [
        (40001, TokenError),
        (40014, TokenError),
        (42001, TokenError),
        (41001, TokenError),
        (45009, RateLimited),
        (45011, RateLimited),
        (-1, SystemBusy),
        (-1000, SystemBusy),
        (65400, KfApiDisabled),
        (65401, InvalidKfAccount),
        (65402, AccountNotBound),
        (65413, NoSession),
        (65414, ServedByOther),
        (65415, AgentOffline),
        (65416, SessionError),
        (45015, WindowClosed),
        (45047, WindowClosed),
        (40013, CredentialError),
        (40125, CredentialError),
        (40164, CredentialError),
        (40243, CredentialError),
        (40003, WeChatError),
        (40066, WeChatError),
    ],
)
def test_errcode_families(errcode: int, cls: type[WeChatError]) -> None:
    for data in ({"errcode": errcode, "errmsg": "x rid: 1-2-3"}, {"errcode": str(errcode), "errmsg": "x"}):
        err = from_response("/customservice/kfsession/create", data)
        assert type(err) is cls
        assert err.errcode == errcode
        assert "/customservice/kfsession/create" in str(err) and str(errcode) in str(err)


def test_retryable_flags() -> None:
    assert SystemBusy(-1, "", "e").retryable and NetworkError("x", "e").retryable
    assert not RateLimited(45009, "", "e").retryable and not WindowClosed(45015, "", "e").retryable
    assert not TokenError(40001, "", "e").retryable  # handled by the refresh path, not backoff


def test_success_shapes() -> None:
    oks: list[dict[str, Any]] = [
        {},
        {"errcode": 0, "errmsg": "ok"},
        {"errcode": "0"},
        {"errcode": None},
        {"kf_list": []},
    ]
    for ok in oks:
        assert from_response("ep", ok) is None
        raise_for_response("ep", ok)


def test_malformed_errcode_is_bad_response() -> None:
    for bad in ("abc", True, [1], 1.5):
        with pytest.raises(BadResponse, match="errcode") as err:
            from_response("/cgi-bin/x", {"errcode": bad})
        assert err.value.errcode == -3 and "/cgi-bin/x" in str(err.value)


def test_messages_never_carry_tokens_or_secrets() -> None:
    err = from_response(
        "ep", {"errcode": 40001, "errmsg": "bad url https://h/x?access_token=TOPSECRET&a=1 secret=S2 rid: 1"}
    )
    assert err is not None
    assert "TOPSECRET" not in str(err) and "S2" not in str(err)
    assert "access_token=***" in str(err)
    assert redact('{"access_token": "abc", "secret":"zz"}') == '{"access_token": "***", "secret":"***"}'
