"""Doctor checks for a WeCom 微信客服 account (``[wecom]``), in the style of ``router.doctor``.

Each check is ``async check_x(probe) -> CheckResult`` (the doctor's own result type) with one job;
``WeComProbe`` fetches each answer once (one token, one ``kf/account/list``, one ``kf/servicer/list``
per configured account; a busy or unreachable gettoken is tried again with the client's retry settings,
as the Official Account doctor does) and a check whose input is missing says "not checked" instead of
failing again (``router.doctor_base.ProbeBase``).

Rules (as ``router.doctor``): read-only towards WeCom — only ``gettoken``, ``kf/account/list`` and
``kf/servicer/list`` are called; every problem says what it means and what to do, naming the place in
the WeCom admin console (企业微信管理后台); ``explain(errcode)`` gives the same words for an errcode met
during operation (95011/95012/48002 …); secrets never appear (errmsg passes the client's redaction,
keys are described by their length).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from kfrouter.router.doctor_base import (
    Advice,
    CheckResult,
    Platform,
    ProbeBase,
    check_aes_key_round_trip,
    check_callback_token_format,
    every,
    ok,
    plural,
    problem,
    problem_from_error,
    run_check_list,
    verb,
    warning,
)
from kfrouter.router.edges.errors import WeChatError
from kfrouter.router.edges.wecom_client import KfAccount, ServicerList, WeComKfClient
from kfrouter.router.wechat.crypto import SafeModeCrypto
from kfrouter.router.wecom_config import WeComConfig

CONSOLE = "the WeCom admin console (企业微信管理后台, work.weixin.qq.com)"
KF_APP = "应用管理 → 微信客服"
API_APPS = f"{KF_APP} → API → 可调用接口的应用"
API_ACCOUNTS = f"{KF_APP} → API → 通过API管理微信客服账号"
PLATFORM = Platform(
    name="WeCom",
    api_base_key="wecom.api_base",
    default_api_base="https://qyapi.weixin.qq.com",
    unknown_errcode_fix="Look the errcode up at https://open.work.weixin.qq.com/devtool/query and run the doctor again.",
    busy_fix="Run the doctor again in a few minutes.",
)
CALLBACK = f"{KF_APP} → API → 接收事件服务器 (URL, Token, EncodingAESKey)"


_SECRET_FIX = (
    f"Copy the Secret of the app listed in {CONSOLE} → {API_APPS} into wecom.secret. Since 2023-12-01 new "
    "corps cannot use the 微信客服 system app's own secret: use a self-built app (自建应用) listed there."
)
_MODE_FIX = (
    f"Use the secret that matches how 微信客服 is connected (WeCom's errcode page: a token of the wrong "
    f"secret for the account's mode): with an app listed in {CONSOLE} → {API_APPS}, that app's Secret; "
    "check that the kf accounts are not bound to another app (代开发 or third-party), then restart kfrouter "
    "so it fetches a new token."
)

ADVICE: dict[int, Advice] = {
    40001: Advice(
        title="the secret is wrong (40001)",
        meaning="gettoken refused wecom.secret for this corp id, so no access token can be had.",
        fix=_SECRET_FIX,
    ),
    40013: Advice(
        title="WeCom does not know this corp id (40013)",
        meaning="wecom.corpid is not a corp id (a typo, or another corp's).",
        fix=f"Copy 企业ID from {CONSOLE} → 我的企业 → 企业信息 into wecom.corpid (it usually starts with 'ww').",
    ),
    40091: Advice(
        title="the secret is not valid for this corp (40091)",
        meaning="wecom.secret may belong to another corp.",
        fix=_SECRET_FIX,
    ),
    60020: Advice(
        title="this server's IP address is not a trusted IP of the app (60020)",
        meaning="WeCom only answers apps' API calls from the app's 企业可信IP.",
        fix=f"Add this server's public IP to 企业可信IP of the app in {CONSOLE} → 应用管理 → the app → 开发者接口.",
    ),
    48002: Advice(
        title="the API may not manage this kf account (48002)",
        meaning=(
            "The app calling the API has not been given this kf account: WeCom refuses session and "
            "message calls for it ('api forbidden')."
        ),
        fix=(
            f"In {CONSOLE} → {API_ACCOUNTS}, set the kf accounts kfrouter routes to be managed through the "
            "API by this app; then restart kfrouter so it fetches a new token."
        ),
    ),
    **{
        code: Advice(
            title=f"the access token comes from the wrong secret for this 微信客服 setup ({code})",
            meaning="WeCom expects a token of another app for these calls.",
            fix=_MODE_FIX,
        )
        for code in (95011, 95012)
    },
    95017: Advice(
        title="the 微信客服 API is switched off (95017)",
        meaning="The API switch of 微信客服 is off, so every kf call is refused.",
        fix=f"Switch the API on in {CONSOLE} → {KF_APP} → API, and list kfrouter's app in {API_APPS}.",
    ),
    95023: Advice(
        title="the 微信客服 API is granted to a 代开发 app (95023)",
        meaning="Another (代开发) app holds the API permission, so this app's calls are refused.",
        fix=f"Grant the API to kfrouter's app instead in {CONSOLE} → {API_APPS}.",
    ),
    95003: Advice(
        title="the corp reached its 微信客服 customer cap (95003)",
        meaning="Unverified corps may serve 100 customers in total; new customers are refused.",
        fix="Verify the corp (企业认证) in the admin console; verified corps serve 10,000 (unlimited with 视频号).",
    ),
    95000: Advice(
        title="an open_kfid is invalid (95000)",
        meaning="The open_kfid sent is not one WeCom recognises.",
        fix=f"Copy the open_kfids from kf/account/list (or {CONSOLE} → {KF_APP}) into wecom.open_kfids.",
    ),
    95004: Advice(
        title="a kf account does not exist (95004)",
        meaning="The open_kfid was deleted or belongs to another corp.",
        fix="Remove it from wecom.open_kfids or create the kf account again and use its new open_kfid.",
    ),
    95014: Advice(
        title="a user is not a servicer of the kf account (95014)",
        meaning="A customer was assigned to someone who is not 接待人员 of that kf account (or not activated).",
        fix=f"Add them as 接待人员 of the account in {CONSOLE} → {KF_APP}, or remove them from kfrouter's groups.",
    ),
    95019: Advice(
        title="the servicer is not receiving customers (95019)",
        meaning="The servicer set 停止接待 (or was suspended); kfrouter routes the customer to someone else.",
        fix="Nothing to change; the servicer switches back to 接待中 in the WeCom client to receive customers.",
    ),
}


def advice(errcode: int) -> Advice | None:
    """The plain-words advice for ``errcode`` (None for codes that need no operator)."""
    return ADVICE.get(errcode)


def explain(errcode: int) -> str | None:
    """One paragraph for an errcode met during operation (None for codes that need no operator)."""
    a = advice(errcode)
    return None if a is None else a.explained()


# ============================================================================ shared answers


class WeComProbe(ProbeBase[WeComKfClient]):
    """One doctor run's inputs and the WeCom answers fetched so far (each fetched at most once)."""

    credentials_check = "wecom-credentials"

    def __init__(self, config: WeComConfig, client: WeComKfClient) -> None:
        super().__init__(client)
        self.config = config

    async def accounts(self) -> list[KfAccount] | WeChatError:
        return await self.answer("accounts", self.client.list_all_accounts)

    async def servicers(self, open_kfid: str) -> ServicerList | WeChatError:
        return await self.answer(("servicers", open_kfid), lambda: self.client.list_servicers(open_kfid))


Check = Callable[[WeComProbe], Awaitable[CheckResult]]


def _from_error(name: str, exc: WeChatError) -> CheckResult:
    """A problem for an error without a more specific reading."""
    return problem_from_error(name, exc, PLATFORM, ADVICE.get(exc.errcode))


# ============================================================================ the checks


async def check_credentials(p: WeComProbe) -> CheckResult:
    """1. corp id, secret and caller IP: fetch an access token from gettoken."""
    name = "wecom-credentials"
    exc = await p.token_error()
    if exc is None:
        return ok(name, "corp id and secret accepted (access token from gettoken)")
    return _from_error(name, exc)


async def check_accounts(p: WeComProbe) -> CheckResult:
    """2. kf/account/list answers, and every configured open_kfid is in it and managed by this app."""
    name = "wecom-accounts"
    no_token = await p.skipped_without_token(name)
    if no_token is not None:
        return no_token
    listed = await p.accounts()
    if isinstance(listed, WeChatError):
        return _from_error(name, listed)
    by_id = {a.open_kfid: a for a in listed}
    missing = [k for k in p.config.open_kfids if k not in by_id]
    if missing:
        known = ", ".join(f"{a.open_kfid} ({a.name})" for a in listed[:10]) or "none"
        return problem(
            name,
            f"{plural(len(missing), 'configured kf account')} not found: {', '.join(missing)}",
            f"kf/account/list has {plural(len(listed), 'account')}: {known}. Customers of a missing account are never seen.",
            f"Correct wecom.open_kfids (kf/account/list gives the open_kfids) or create the accounts in {CONSOLE} → {KF_APP}.",
        )
    unmanaged = [k for k in p.config.open_kfids if by_id[k].manage_privilege is False]
    if unmanaged:
        a = ADVICE[48002]
        return problem(
            name,
            f"this app may not manage {', '.join(unmanaged)} (manage_privilege false)",
            f"{a.meaning} kf/service_state/trans and sync_msg would answer 48002.",
            a.fix,
        )
    n = len(p.config.open_kfids)
    return ok(
        name,
        f"{every(n, 'configured kf account')} {verb(n, 'exists and is', 'exist and are')} managed by this app",
    )


async def check_servicers(p: WeComProbe) -> CheckResult:
    """3. Every configured kf account has servicers (接待人员); none receiving now is a warning. The ok
    title counts the people 接待中 (one serving two accounts counts once)."""
    name = "wecom-servicers"
    listed = await p.answer_or_skipped(
        name, p.accounts, unread="the kf account list could not be read (see wecom-accounts)"
    )
    if isinstance(listed, CheckResult):
        return listed
    known = {a.open_kfid for a in listed}
    empty: list[str] = []
    only_departments: list[str] = []
    idle: list[str] = []
    receiving: set[str] = set()
    for kfid in p.config.open_kfids:
        if kfid not in known:
            continue
        got = await p.servicers(kfid)
        if isinstance(got, WeChatError):
            return _from_error(name, got)
        if not got.servicers and not got.department_ids:
            empty.append(kfid)
        elif not got.servicers:
            only_departments.append(kfid)
        elif not any(s.receiving for s in got.servicers):
            idle.append(kfid)
        receiving.update(s.userid for s in got.servicers if s.receiving)
    if empty:
        return problem(
            name,
            f"no servicers bound to {', '.join(empty)}",
            "A kf account without 接待人员 has nobody kfrouter could assign a customer to (trans to state 3 needs one).",
            f"Add 接待人员 to the account in {CONSOLE} → {KF_APP} → the account → 接待人员 (or kf/servicer/add).",
        )
    if only_departments:
        return warning(
            name,
            f"{', '.join(only_departments)} {verb(len(only_departments), 'has', 'have')} only departments as servicers",
            "kf/servicer/list names departments, not people, so kfrouter cannot see who is 接待中.",
            "Add the people as 接待人员 individually so kfrouter can route to them.",
        )
    if idle:
        return warning(
            name,
            f"no servicer is 接待中 right now for {', '.join(idle)}",
            "Customers asking for a human wait in the pool (state 2) until someone switches to 接待中.",
            "Servicers switch to 接待中 in the WeCom client; nothing to change outside working hours.",
        )
    return ok(name, f"servicers bound; {plural(len(receiving), 'servicer')} 接待中 now")


async def check_callback_token(p: WeComProbe) -> CheckResult:
    """4. The callback Token has WeCom's format (3-32 letters or digits)."""
    return check_callback_token_format(
        "wecom-callback-token",
        p.config.token,
        PLATFORM,
        fix=f"Set wecom.token to exactly the Token shown in {CONSOLE} → {CALLBACK}.",
    )


async def check_aes_key(p: WeComProbe) -> CheckResult:
    """5. The EncodingAESKey decodes to 32 bytes and round-trips a test message with the corp id."""
    c = p.config
    return check_aes_key_round_trip(
        "wecom-aes-key",
        {"wecom.aes_key": c.aes_key},
        lambda: SafeModeCrypto(c.token or "doctor", c.aes_key, c.corpid, id_name="corpid"),
        where=f"{CONSOLE} → {CALLBACK}",
        id_name="corp id",
        id_key="wecom.corpid",
        about_key="; WeCom always encrypts callbacks",
        ok_title=f"EncodingAESKey is 43 characters and round-trips a test message for {c.corpid}",
    )


CHECKS: tuple[Check, ...] = (
    check_credentials,
    check_accounts,
    check_servicers,
    check_callback_token,
    check_aes_key,
)


async def run_wecom_checks(
    config: WeComConfig, client: WeComKfClient, *, checks: Sequence[Check] = CHECKS
) -> list[CheckResult]:
    """Run ``checks`` in order; a check that crashes becomes a problem naming the exception."""
    return await run_check_list(WeComProbe(config, client), checks, name_prefix="wecom-")
