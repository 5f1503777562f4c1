"""What both doctors share — the Official Account one (router/doctor.py) and the WeCom 微信客服 one
(router/wecom_doctor.py): a check's verdict and its ``ok``/``warning``/``problem``/``skipped`` forms, an
errcode's plain-words advice, the reading of an API error that no check reads more specifically, the
probe's memory of a run (``ProbeBase``: the token asked for once, a busy answer or a network error tried
again with the client's retry settings, each answer fetched once, "not checked" when a check's input is
missing), the runner of a list of checks, the words for counts (``plural``, ``every``, ``verb``), and the
two checks whose rule is the same on both platforms (the callback Token's format, the EncodingAESKey's
round trip).

Rules: the words that differ between the platforms (its name, its API base key and default, where an
unknown errcode is looked up, where the console keeps a setting) are a ``Platform`` value or an
argument, never a second copy of a check; every problem says what it means and what to do; secrets never
appear (keys are described, errmsgs come redacted from the client).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from attrs import frozen

from kfrouter.router.edges.api_base import ApiClientBase
from kfrouter.router.edges.errors import BadResponse, NetworkError, SystemBusy, WeChatError
from kfrouter.router.wechat.crypto import SafeModeCrypto, decode_aes_key
from kfrouter.router.wechat.errors import WeChatCodecError
from kfrouter.router.wechat.signature import check_token_format

Status = Literal["ok", "warning", "problem"]
STATUSES: tuple[Status, ...] = ("ok", "warning", "problem")

BUG_FIX = "Report this as a kfrouter bug (the message above never contains secrets)."


@frozen(kw_only=True)
class CheckResult:
    """One check's verdict. ``detail`` says what it means, ``fix`` what to do (both empty when ok)."""

    name: str
    status: Status
    title: str
    detail: str = ""
    fix: str = ""

    def __attrs_post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"CheckResult.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def is_problem(self) -> bool:
        return self.status == "problem"

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
        }


@frozen(kw_only=True)
class Advice:
    """What an errcode means for the operator: a short title, the meaning and the fix."""

    title: str
    meaning: str
    fix: str

    def explained(self) -> str:
        """One paragraph, for an errcode met during operation."""
        return f"{self.title}: {self.meaning} What to do: {self.fix}"


@frozen(kw_only=True)
class Platform:
    """How a doctor names its platform. ``busy_fix``: the fix for a 'system busy' answer that no advice
    reads (None: the advice table has the busy errcode)."""

    name: str
    api_base_key: str
    default_api_base: str
    unknown_errcode_fix: str
    busy_fix: str | None = None


T = TypeVar("T")


async def answer_or_error(call: Callable[[], Awaitable[T]]) -> T | WeChatError:
    """The API's answer, or the ``WeChatError`` it raised: what a probe keeps, so each call is made once."""
    try:
        return await call()
    except WeChatError as exc:
        return exc


def ok(name: str, title: str) -> CheckResult:
    """A check that passed: ``title`` says what was found."""
    return CheckResult(name=name, status="ok", title=title)


def warning(name: str, title: str, detail: str, fix: str) -> CheckResult:
    """Something to look at that does not fail the run: what was found, what it means, what to do."""
    return CheckResult(name=name, status="warning", title=title, detail=detail, fix=fix)


def problem(name: str, title: str, detail: str, fix: str) -> CheckResult:
    """A check's problem: what is wrong (``title``), what it means (``detail``) and what to do (``fix``)."""
    return CheckResult(name=name, status="problem", title=title, detail=detail, fix=fix)


def skipped(name: str, because: str) -> CheckResult:
    """A check whose input an earlier check could not get: a warning whose title says which."""
    return CheckResult(name=name, status="warning", title=f"not checked: {because}")


C = TypeVar("C", bound=ApiClientBase)


class ProbeBase(Generic[C]):
    """One doctor run's memory: the access token is asked for once (``_get_token`` says how), each API
    answer is fetched once (``answer``), and a check whose input is missing gets its "not checked" result
    from here. ``client``: the platform's API client; ``credentials_check`` names the check that reports a
    missing token."""

    credentials_check: ClassVar[str]

    def __init__(self, client: C) -> None:
        self.client = client
        self._token_done = False
        self._token_error: WeChatError | None = None
        self._answers: dict[Hashable, object] = {}

    async def _get_token(self) -> WeChatError | None:
        """Ask for an access token: None when one could be had, else the last error. A busy answer or a
        network error (``retryable``) is tried again like any API call: ``client.retries`` more times,
        after a pause of ``min(client.backoff_cap, client.backoff_base * 2**attempt)`` seconds."""
        c = self.client
        attempt = 0
        while True:
            try:
                await c.tokens.get()
                return None
            except WeChatError as exc:
                if not exc.retryable or attempt >= c.retries:
                    return exc
            await c.pause(min(c.backoff_cap, c.backoff_base * 2**attempt))
            attempt += 1

    async def token_error(self) -> WeChatError | None:
        """None when an access token could be had; otherwise the error that stopped it (asked once)."""
        if not self._token_done:
            self._token_error = await self._get_token()
            self._token_done = True
        return self._token_error

    async def answer(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T | WeChatError:
        """``call()``'s answer or the ``WeChatError`` it raised, fetched once per ``key`` in a run."""
        if key not in self._answers:
            self._answers[key] = await answer_or_error(call)
        return cast("T | WeChatError", self._answers[key])

    async def skipped_without_token(self, name: str) -> CheckResult | None:
        """Check ``name``'s "not checked" result when no access token could be had, else None."""
        if await self.token_error() is None:
            return None
        return skipped(name, f"no access token (see {self.credentials_check})")

    async def answer_or_skipped(
        self, name: str, answer: Callable[[], Awaitable[T | WeChatError]], *, unread: str
    ) -> T | CheckResult:
        """``answer()`` for check ``name``, or its "not checked" result when there is no access token or
        the answer is an error (``unread`` says so, naming the check that reports it)."""
        no_token = await self.skipped_without_token(name)
        if no_token is not None:
            return no_token
        got = await answer()
        return skipped(name, unread) if isinstance(got, WeChatError) else got


def problem_from_error(name: str, exc: WeChatError, platform: Platform, advice: Advice | None) -> CheckResult:
    """A problem for an API error without a more specific reading; ``advice`` is the platform's words for
    its errcode, if any."""
    p = platform
    if isinstance(exc, NetworkError):
        return problem(
            name,
            f"cannot reach the {p.name} API",
            f"{exc.endpoint}: {exc.errmsg}.",
            (
                f"Check that this server can reach the configured {p.api_base_key} over HTTPS (DNS, firewall, "
                f"outbound proxy); the default is {p.default_api_base}."
            ),
        )
    if isinstance(exc, BadResponse):
        return problem(
            name,
            f"the {p.name} API gave an answer kfrouter cannot read",
            f"{exc.endpoint}: {exc.errmsg}.",
            f"Check that {p.api_base_key} points at {p.name}'s API (default {p.default_api_base}).",
        )
    if advice is None and p.busy_fix is not None and isinstance(exc, SystemBusy):
        return problem(
            name,
            f"{p.name} answered 'system busy' ({exc.errcode})",
            f"{exc.endpoint}: {exc.errmsg}",
            p.busy_fix,
        )
    if advice is None:
        return problem(
            name,
            f"{p.name} answered errcode {exc.errcode}",
            f"{exc.endpoint}: {exc.errmsg}",
            p.unknown_errcode_fix,
        )
    return problem(
        name,
        advice.title,
        f"{advice.meaning} ({p.name} said: {exc.errmsg})",
        advice.fix,
    )


def plural(n: int, word: str) -> str:
    """``1 agent``, ``2 agents``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def every(n: int, word: str) -> str:
    """The subject of a sentence about each of ``n`` things: ``the only agent``, ``all 2 agents``."""
    return f"the only {word}" if n == 1 else f"all {plural(n, word)}"


def verb(n: int, one: str, many: str) -> str:
    """The verb agreeing with ``n`` subjects: ``verb(1, "is", "are")`` is ``is``, ``verb(2, ...)`` ``are``."""
    return one if n == 1 else many


def check_callback_token_format(name: str, token: str, platform: Platform, fix: str) -> CheckResult:
    """The callback Token has the platform's format (3-32 letters or digits): every push is signed with it."""
    reason = check_token_format(token)
    if reason is None:
        return ok(name, f"callback Token has {platform.name}'s format (3-32 letters/digits)")
    return problem(
        name,
        f"the callback Token is not in {platform.name}'s format",
        f"{reason}. {platform.name} signs every push with this Token; a mismatch rejects every push.",
        fix,
    )


def check_aes_key_round_trip(
    name: str,
    keys: Mapping[str, str],
    crypto: Callable[[], SafeModeCrypto],
    *,
    where: str,
    id_name: str,
    id_key: str,
    about_key: str,
    ok_title: str,
) -> CheckResult:
    """Each of ``keys`` (config key → EncodingAESKey) decodes to 32 bytes, and a test message survives
    ``crypto()``'s encryption and decryption (then the result is ok, titled ``ok_title``). ``where`` is
    the console place of the key, ``id_name`` the id the codec binds (AppID, corp id) and ``id_key`` its
    config key."""
    for key_name, key in keys.items():
        try:
            decode_aes_key(key, key_name)
        except WeChatCodecError as exc:
            return problem(
                name,
                f"{key_name} is not a valid EncodingAESKey",
                f"{exc}. An EncodingAESKey is 43 letters or digits (base64 of a 32-byte AES key){about_key}.",
                f"Copy the key again from {where}, or generate a new one there (随机生成) and update both sides.",
            )
    sample = f"<xml><Content><![CDATA[kfrouter doctor {secrets.token_hex(4)}]]></Content></xml>"
    try:
        codec = crypto()
        back = codec.decrypt(codec.encrypt(sample, os.urandom(16)))
    except WeChatCodecError as exc:
        return problem(
            name,
            f"a test message does not survive encryption with the EncodingAESKey and {id_name}",
            f"{exc}.",
            f"Check {id_key} and {next(iter(keys))} against {where}.",
        )
    if back != sample:
        return problem(
            name,
            "a test message came back changed after encryption and decryption",
            f"The safe-mode codec is not symmetric for this key and {id_name}.",
            "Report this as a kfrouter bug, with the key's length only (never the key).",
        )
    return ok(name, ok_title)


P = TypeVar("P")


async def run_check_list(
    probe: P, checks: Sequence[Callable[[P], Awaitable[CheckResult]]], *, name_prefix: str = ""
) -> list[CheckResult]:
    """Run ``checks`` in order on ``probe``. A check that crashes becomes a problem naming the exception,
    so one bug never hides the other results; cancellation propagates."""
    out: list[CheckResult] = []
    for check in checks:
        try:
            out.append(await check(probe))
        except Exception as exc:
            name = getattr(check, "__name__", "check").removeprefix("check_").replace("_", "-")
            out.append(
                problem(
                    f"{name_prefix}{name}", "the check itself failed", f"{type(exc).__name__}: {exc}", BUG_FIX
                )
            )
    return out


def all_ok(results: Sequence[CheckResult]) -> bool:
    """True when no result is a problem (warnings allowed)."""
    return not any(r.is_problem for r in results)


def as_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    """``{"checks": [...], "ok": bool}``, the shape ``kfrouter doctor --json`` prints."""
    return {"checks": [r.as_dict() for r in results], "ok": all_ok(results)}
