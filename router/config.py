"""Load and validate ``kfrouter.toml`` into frozen values (every key is documented in docs/config.md).

Rules of this module:

- Everything from outside is checked: unknown keys are errors (a typo must not pass silently), types are
  exact (``true`` is not a number, ``inf``/``nan`` are refused), ranges and cross references are checked
  (an overflow target, a rule's group, a policy name must exist).
- Every problem is reported, not just the first: :class:`ConfigError` carries the list, and each line names
  the file and the key path, e.g. ``kfrouter.toml: groups[1].overflow[0].after_s: must be >= 0, got -5``.
  Array indices in paths are 0-based, as in TOML libraries and JSON paths.
- Secrets may come from the environment (``KFROUTER_APPID``, ``KFROUTER_SECRET``, ``KFROUTER_TOKEN``,
  ``KFROUTER_AES_KEY``, ``KFROUTER_ADMIN_TOKEN``, ``KFROUTER_STORE_URL``). **A non-empty environment variable wins over the file**:
  the file is usually committed with development values and the deployment injects production ones; the
  origin of every secret is kept in :attr:`Config.secret_sources` (names only, never values). Secret
  fields are left out of ``repr`` so a logged config never shows them.
- The value classes are plain frozen data; :func:`load_config` / :meth:`Config.from_dict` is the checked way in.
"""

from __future__ import annotations

import math
import os
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from attrs import evolve, field, frozen

from kfrouter.router.cluster_settings import ClusterSettings, cluster_problems, parse_cluster
from kfrouter.router.core import notify as core_notify
from kfrouter.router.core.errors import ConfigError as ConfigError
from kfrouter.router.core.events import AgentConfigured
from kfrouter.router.core.model import KF_ACCOUNT_RE
from kfrouter.router.core.reservation import MIN_RESERVATION_S
from kfrouter.router.core.rules import CustomerEntry, RoutingConfig, RoutingRule

if TYPE_CHECKING:
    from kfrouter.router.core.engine import EngineConfig

T = TypeVar("T")

ENV_VARS: Mapping[str, str] = MappingProxyType(
    {
        "wechat.appid": "KFROUTER_APPID",
        "wechat.secret": "KFROUTER_SECRET",
        "wechat.token": "KFROUTER_TOKEN",
        "wechat.aes_key": "KFROUTER_AES_KEY",
        "wecom.secret": "KFROUTER_WECOM_SECRET",
        "wecom.token": "KFROUTER_WECOM_TOKEN",
        "wecom.aes_key": "KFROUTER_WECOM_AES_KEY",
        "server.admin_token": "KFROUTER_ADMIN_TOKEN",
        "server.readonly_token": "KFROUTER_READONLY_TOKEN",
        "store.url": "KFROUTER_STORE_URL",
    }
)
"""Config key -> environment variable that can provide (and then overrides) it."""

# WeChat: Token 3-32 letters/digits; EncodingAESKey 43 letters/digits (base64 of 32 bytes without "=").
_TOKEN_RE = re.compile(r"[A-Za-z0-9]{3,32}")
_AES_KEY_RE = re.compile(r"[A-Za-z0-9]{43}")
_APPID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STORE_URL_RE = re.compile(r"postgres(ql)?://\S+")
_GROUP_RE = re.compile(r"[^\s.\[\]\"]{1,64}")
_ADMIN_TOKEN_MIN = 16  # characters; an admin token guards pausing agents and closing sessions
_MAX_UPSTREAM_TIMEOUT_S = 4.5  # WeChat gives up after 5 s; keep time to answer it ourselves
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_LEVELS = ("debug", "info", "warning", "error")
WECOM_API_BASE = "https://qyapi.weixin.qq.com"
_CORPID_RE = re.compile(r"[A-Za-z0-9]{6,64}")
_OPEN_KFID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_WECOM_SECRET_RE = re.compile(r"\S{1,256}")


# One set of message kinds, placeholders and built-in texts, shared with the notification planner
# (router/core/notify.py): an override is validated here and reaches the planner unchanged.
NOTIFY_KINDS: tuple[str, ...] = core_notify.KINDS
_PLACEHOLDERS: Mapping[str, frozenset[str]] = core_notify.FIELDS
DEFAULT_TEMPLATES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {lang: MappingProxyType(dict(texts)) for lang, texts in core_notify.TEMPLATES.items()}
)


# ============================================================================================ values


@frozen(kw_only=True)
class WechatConfig:
    appid: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    aes_key: str | None = field(default=None, repr=False)
    previous_aes_key: str | None = field(default=None, repr=False)
    api_base: str = "https://api.weixin.qq.com"
    token_mode: str = "stable"  # stable | classic
    callback_path: str = "/wechat"
    encoding: str = "plain"  # plain | compatible | safe


@frozen(kw_only=True)
class WeComConfig:
    """One WeCom corp's 微信客服 credentials and the kf accounts kfrouter serves (``[wecom]``, read by
    ``wecom_from_section``; docs/wecom.md)."""

    corpid: str
    secret: str = field(repr=False)
    token: str = field(repr=False)
    aes_key: str = field(repr=False)
    open_kfids: tuple[str, ...]
    api_base: str = WECOM_API_BASE
    callback_path: str = "/wecom"


@frozen(kw_only=True)
class ServerConfig:
    admin_token: str = field(repr=False)
    readonly_token: str | None = field(default=None, repr=False)  # opens the supervisor page and GETs only
    host: str = "127.0.0.1"
    port: int = 8080
    upstream_url: str | None = None
    upstream_timeout_s: float = 3.0


@frozen(kw_only=True)
class EngineSection:
    default_capacity: int = 3
    reservation_timeout_s: float = 30.0
    avoid_s: float = 60.0
    sticky_window_s: float = 7 * 86400.0
    preferred_wait_s: float = 120.0
    default_policy: str = "least-load"
    priorities: bool = True
    stale_session_s: float | None = None  # close sessions open longer than this (None: never)
    stale_message: str | None = None  # sent to the customer before such a close


@frozen(kw_only=True)
class Overflow:
    group: str
    after_s: float


@frozen(kw_only=True)
class GroupConfig:
    name: str
    policy: str  # resolved: the group's own or engine.default_policy
    agents: tuple[str, ...] = ()
    capacity: Mapping[str, int] = field(factory=lambda: MappingProxyType({}))
    overflow: tuple[Overflow, ...] = ()
    on_agent_offline: str = "keep"  # keep | reassign
    offline_grace_s: float = 120.0
    priority: int = 0
    # [groups.skills]: kf_account -> proficiency in (0, 1] for this group's customers (unlisted: 1.0)
    skills: Mapping[str, float] = field(factory=lambda: MappingProxyType({}))


@frozen(kw_only=True)
class PollingConfig:
    online_fast_s: float = 2.0
    online_slow_s: float = 15.0
    waitcase_fast_s: float = 2.0
    waitcase_slow_s: float = 30.0
    max_backoff_s: float = 300.0
    jitter: float = 0.1


_PLANNER = core_notify.NotifyConfig()  # the planner's defaults are the section's


@frozen(kw_only=True)
class NotifySection:
    """``[notify]``: what the daemon hands the notification planner (``router.core.notify``)."""

    enabled: bool = True
    language: str = _PLANNER.language
    max_per_customer: int = _PLANNER.max_per_customer
    eta_change_min_s: float = _PLANNER.eta_change_s
    templates: Mapping[str, Mapping[str, str]] = DEFAULT_TEMPLATES  # language -> kind -> text

    def template(self, kind: str, language: str | None = None) -> str:
        """The template for ``kind`` in ``language`` (default: the configured one)."""
        return self.templates[language or self.language][kind]


@frozen(kw_only=True)
class StoreConfig:
    """``url`` (PostgreSQL) replaces ``path`` (SQLite) when set."""

    path: Path = Path("kfrouter.db")
    dedup_keep_s: float = 600.0
    url: str | None = field(default=None, repr=False)  # may hold a password


@frozen(kw_only=True)
class LogConfig:
    level: str = "info"
    json: bool = False


@frozen(kw_only=True)
class AgentPlan:
    """What the config says about one agent: its groups, an optional capacity override and its skills
    ((group, proficiency) from the groups' ``skills`` tables, sorted)."""

    kf_account: str
    groups: frozenset[str]
    max_sessions: int | None = None
    skills: tuple[tuple[str, float], ...] = ()


@frozen(kw_only=True)
class Config:
    source: str
    wechat: WechatConfig | None  # an Official Account (多客服) ...
    server: ServerConfig
    wecom: WeComConfig | None = None  # ... or WeCom 微信客服: exactly one of the two
    engine: EngineSection = EngineSection()
    groups: tuple[GroupConfig, ...] = ()
    routing: RoutingConfig = field(factory=RoutingConfig)
    polling: PollingConfig = PollingConfig()
    notify: NotifySection = NotifySection()
    store: StoreConfig = StoreConfig()
    log: LogConfig = LogConfig()
    # ``[cluster]``: several daemons sharing the PostgreSQL of ``[store] url``, accounts owned through leases
    # (router/cluster_settings.py, docs/scale-out.md); None: this daemon serves every account itself
    cluster: ClusterSettings | None = None
    secret_sources: Mapping[str, str] = field(factory=lambda: MappingProxyType({}))  # key -> "file" | env var
    # An ``[[accounts]]`` file: every account's own Config (``[defaults]`` merged in, the shared
    # ``[server]``, ``[store]`` (its path resolved per appid) and ``[log]``); this Config then names no
    # account itself (``wechat`` is None). Empty for a file of one account (the Config is that account).
    accounts: tuple[Config, ...] = ()

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "<config>",
        base_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Config:
        """Validate an already parsed TOML document. ``env`` defaults to ``os.environ``; relative paths
        resolve against ``base_dir`` (default: the current directory)."""
        return _Loader(source, os.environ if env is None else env, base_dir or Path.cwd()).load(data)

    @property
    def every_account(self) -> tuple[Config, ...]:
        """The account configs this file describes: its ``[[accounts]]``, or itself for one account."""
        return self.accounts or (self,)

    def for_account(self, appid: str) -> Config:
        """The config of the account ``appid`` (its appid, or its WeCom corp id); ``KeyError`` if none."""
        for cfg in self.every_account:
            if cfg.account == appid:
                return cfg
        raise KeyError(appid)

    @property
    def backend(self) -> str:
        """``"wecom"`` for a ``[wecom]`` account, ``"wechat"`` for an Official Account."""
        return "wecom" if self.wecom is not None else "wechat"

    @property
    def account(self) -> str:
        """Who is served, for pages and metrics: the appid, or the WeCom corp id."""
        if self.wecom is not None:
            return self.wecom.corpid
        return self.oa.appid

    @property
    def oa(self) -> WechatConfig:
        """The ``[wechat]`` table; raises ``ConfigError`` for a ``[wecom]`` config (the caller is OA-only)."""
        if self.wechat is None:
            if self.accounts:
                raise ConfigError(
                    f"{self.source}: this file has {len(self.accounts)} [[accounts]]; choose one "
                    "(Config.for_account) — the caller needs a single account here"
                )
            raise ConfigError(f"{self.source}: this account is [wecom]; [wechat] is needed here")
        return self.wechat

    def group(self, name: str) -> GroupConfig | None:
        return next((g for g in self.groups if g.name == name), None)

    @property
    def agents(self) -> Mapping[str, AgentPlan]:
        """Every agent named in a group: its groups, its capacity override (if any group gives one) and
        its skills (the groups whose ``skills`` table names it)."""
        groups: dict[str, set[str]] = {}
        caps: dict[str, int] = {}
        skills: dict[str, dict[str, float]] = {}
        for g in self.groups:
            for kf in g.agents:
                groups.setdefault(kf, set()).add(g.name)
            caps.update(g.capacity)
            for kf, p in g.skills.items():
                skills.setdefault(kf, {})[g.name] = p
        return MappingProxyType(
            {
                kf: AgentPlan(
                    kf_account=kf,
                    groups=frozenset(gs),
                    max_sessions=caps.get(kf),
                    skills=tuple(sorted(skills.get(kf, {}).items())),
                )
                for kf, gs in sorted(groups.items())
            }
        )

    def agent_events(self) -> list[AgentConfigured]:
        """``AgentConfigured`` events that teach the engine the configured groups, capacities and skills."""
        return [
            AgentConfigured(
                kf_account=p.kf_account,
                groups=p.groups,
                max_sessions=p.max_sessions,
                skills=dict(p.skills) if p.skills else None,
            )
            for p in self.agents.values()
        ]

    def engine_config(self) -> EngineConfig:
        """The routing engine's configuration: one route per group, the default policy for the rest."""
        from kfrouter.router.core.engine import EngineConfig, Route

        e = self.engine
        return EngineConfig(
            default_capacity=e.default_capacity,
            reservation_timeout_s=e.reservation_timeout_s,
            avoid_s=e.avoid_s,
            routes={
                g.name: Route(
                    policy=g.policy,
                    overflow=tuple((o.group, o.after_s) for o in g.overflow),
                    on_agent_offline=g.on_agent_offline,
                    offline_grace_s=g.offline_grace_s,
                )
                for g in self.groups
            },
            default_route=Route(policy=e.default_policy),
            sticky_window_s=e.sticky_window_s,
            preferred_wait_s=e.preferred_wait_s,
            priorities=e.priorities,
            stale_session_s=e.stale_session_s,
            stale_message=e.stale_message,
        )

    def policy_names(self) -> frozenset[str]:
        return frozenset({self.engine.default_policy, *(g.policy for g in self.groups)})


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a ``kfrouter.toml``; relative paths inside it resolve against its directory."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError.in_file(str(p), [("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError.in_file(
            str(p), [("", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.in_file(str(p), [("", f"invalid TOML: {exc}")]) from None
    return Config.from_dict(data, source=str(p), base_dir=p.resolve().parent, env=env)


def known_policies() -> frozenset[str] | None:
    """Names of the installed policies, or ``None`` when the registry cannot be imported (then names are
    checked when the engine starts)."""
    try:
        from kfrouter.policies.registry import available_policies
    except ImportError:
        return None
    return frozenset(name for name, _origin in available_policies())


# ============================================================================================ loader

_MISSING: Any = object()
_ACCOUNT_KEYS = ("wechat", "wecom", "engine", "groups", "routing", "polling", "notify")
_DEFAULT_KEYS = ("wechat", "engine", "groups", "routing", "polling", "notify")
APPID_PLACEHOLDER = "{appid}"


@frozen(kw_only=True)
class _Shared:
    """The tables every account of a file shares."""

    server: ServerConfig
    store: StoreConfig
    log: LogConfig
    cluster: ClusterSettings | None = None


@frozen(kw_only=True)
class _Account:
    """What one account's table says (``_config`` joins it with the shared tables)."""

    wechat: WechatConfig | None
    wecom: WeComConfig | None
    engine: EngineSection
    groups: tuple[GroupConfig, ...]
    routing: RoutingConfig
    polling: PollingConfig
    notify: NotifySection


def _config(source: str, a: _Account, shared: _Shared, secret_sources: Mapping[str, str]) -> Config:
    account = a.wechat.appid if a.wechat is not None else (a.wecom.corpid if a.wecom is not None else "")
    return Config(
        source=source,
        wechat=a.wechat,
        wecom=a.wecom,
        server=shared.server,
        engine=a.engine,
        groups=a.groups,
        routing=a.routing,
        polling=a.polling,
        notify=a.notify,
        store=_account_store(shared.store, account),
        log=shared.log,
        cluster=shared.cluster,
        secret_sources=secret_sources,
    )


def _account_store(store: StoreConfig, appid: str) -> StoreConfig:
    """``[store]`` for one account: ``{appid}`` in the path replaced, a directory given a file per
    account; PostgreSQL keeps the URL (the store opens the account's own schema)."""
    if store.url is not None or str(store.path) == ":memory:":
        return store
    raw = str(store.path)
    if APPID_PLACEHOLDER in raw:
        return evolve(store, path=Path(raw.replace(APPID_PLACEHOLDER, appid)))
    if store.path.is_dir():
        return evolve(store, path=store.path / f"{appid}.db")
    return store


def env_suffix(appid: str) -> str:
    """How an appid appears in the names of its environment variables (``KFROUTER_SECRET_<SUFFIX>``)."""
    return re.sub(r"[^A-Z0-9]", "_", appid.upper())


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _join(path: str, name: str) -> str:
    """The key path of ``name`` inside the table at ``path`` (names TOML would need quoted are quoted)."""
    shown = name if _GROUP_RE.fullmatch(name) and "@" not in name else f'"{name}"'
    return f"{path}.{shown}" if path else shown


class _Merged(dict[str, Any]):
    """An account's table with ``[defaults]`` merged in: ``origin`` maps each key taken from the defaults
    to the path of the defaults table that holds it, so a problem names the line the user wrote."""

    def __init__(self, own: Mapping[str, Any]) -> None:
        super().__init__(own)
        self.origin: dict[str, str] = {}


def _merge(defaults: Mapping[str, Any], own: Mapping[str, Any], defaults_path: str) -> _Merged:
    """``own`` over ``defaults``: tables merge key by key (recursively), anything else — arrays such as
    ``groups`` included — is taken whole from ``own`` when it has it."""
    out = _Merged(own)
    for key, value in defaults.items():
        mine = own.get(key, _MISSING)
        if mine is _MISSING:
            out[key] = value
            out.origin[key] = defaults_path
        elif isinstance(mine, dict) and isinstance(value, dict):
            out[key] = _merge(value, mine, _join(defaults_path, key))
    return out


class _Section:
    """One TOML table at ``path``: typed getters that record problems and return a fallback, and a check
    for keys nobody asked for. Keys an account inherited from ``[defaults]`` are named by their place
    there (``_Merged``)."""

    def __init__(self, loader: _Loader, path: str, data: object) -> None:
        self.loader = loader
        self.path = path
        self.used: set[str] = set()
        if data is _MISSING:
            data = {}
        if not isinstance(data, dict):
            loader.problem(path, f"must be a table, got {_describe(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.origin: Mapping[str, str] = data.origin if isinstance(data, _Merged) else {}

    def key(self, name: str) -> str:
        return _join(self.origin.get(name, self.path), name)

    def problem(self, name: str, reason: str) -> None:
        self.loader.problem(self.key(name), reason)

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name, _MISSING)

    def done(self) -> None:
        for name in self.data:
            if name not in self.used:
                self.problem(name, "unknown key (check the spelling; see docs/config.md)")

    # ---------------------------------------------------------------- scalars

    def _get(
        self,
        name: str,
        default: T,
        check: Callable[[Any], str | None],
        convert: Callable[[Any], T],
        *,
        required: bool = False,
    ) -> T:
        value = self.raw(name)
        if value is _MISSING:
            if required:
                self.problem(name, "is required")
            return default
        reason = check(value)
        if reason is not None:
            self.problem(name, reason)
            return default
        return convert(value)

    def get_str(
        self,
        name: str,
        default: str = "",
        *,
        required: bool = False,
        choices: Iterable[str] = (),
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> str:
        opts = tuple(choices)

        def check(v: Any) -> str | None:
            if not isinstance(v, str):
                return f"must be a string, got {_describe(v)}"
            if opts and v not in opts:
                return f"must be one of {', '.join(repr(o) for o in opts)}, got {v!r}"
            if pattern is not None and not pattern.fullmatch(v):
                return f"must be {what or 'valid'}, got {_redact(name, v)}"
            return None

        return self._get(name, default, check, str, required=required)

    def get_opt_str(self, name: str, **kw: Any) -> str | None:
        if self.raw(name) is _MISSING:
            return None
        return self.get_str(name, **kw)

    def get_int(
        self,
        name: str,
        default: int = 0,
        *,
        lo: int | None = None,
        hi: int | None = None,
        required: bool = False,
    ) -> int:
        def check(v: Any) -> str | None:
            if not isinstance(v, int) or isinstance(v, bool):
                return f"must be an integer, got {_describe(v)}"
            return _range(v, lo, hi)

        return self._get(name, default, check, int, required=required)

    def get_opt_int(self, name: str, **kw: Any) -> int | None:
        if self.raw(name) is _MISSING:
            return None
        return self.get_int(name, **kw)

    def get_float(
        self,
        name: str,
        default: float,
        *,
        lo: float | None = None,
        hi: float | None = None,
        gt: float | None = None,
        lt: float | None = None,
    ) -> float:
        def check(v: Any) -> str | None:
            if not isinstance(v, int | float) or isinstance(v, bool):
                return f"must be a number, got {_describe(v)}"
            if not math.isfinite(v):
                return f"must be a finite number, got {v!r}"
            if gt is not None and not v > gt:
                return f"must be > {gt:g}, got {v!r}"
            if lt is not None and not v < lt:
                return f"must be < {lt:g}, got {v!r}"
            return _range(v, lo, hi)

        return self._get(name, default, check, float)

    def get_bool(self, name: str, default: bool) -> bool:
        def check(v: Any) -> str | None:
            return None if isinstance(v, bool) else f"must be true or false, got {_describe(v)}"

        return self._get(name, default, check, bool)

    def get_str_list(
        self,
        name: str,
        default: Iterable[str] = (),
        *,
        non_empty_items: bool = True,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
    ) -> tuple[str, ...]:
        value = self.raw(name)
        if value is _MISSING:
            return tuple(default)
        if not isinstance(value, list):
            self.problem(name, f"must be an array of strings, got {_describe(value)}")
            return tuple(default)
        out: list[str] = []
        seen: set[str] = set()
        for i, item in enumerate(value):
            key = f"{self.key(name)}[{i}]"
            if not isinstance(item, str):
                self.loader.problem(key, f"must be a string, got {_describe(item)}")
            elif non_empty_items and not item.strip():
                self.loader.problem(key, "must not be empty")
            elif pattern is not None and not pattern.fullmatch(item):
                self.loader.problem(key, f"must be {what or 'valid'}, got {item!r}")
            elif item in seen:
                self.loader.problem(key, f"{item!r} is listed twice")
            else:
                seen.add(item)
                out.append(item)
        return tuple(out)

    # ---------------------------------------------------------------- nesting

    def table(self, name: str) -> _Section:
        return _Section(self.loader, self.key(name), self.raw(name))

    def tables(self, name: str) -> list[_Section]:
        value = self.raw(name)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.problem(name, f"must be an array of tables ([[{self.key(name)}]]), got {_describe(value)}")
            return []
        return [_Section(self.loader, f"{self.key(name)}[{i}]", item) for i, item in enumerate(value)]


def _range(v: float, lo: float | None, hi: float | None) -> str | None:
    if lo is not None and v < lo:
        return f"must be >= {lo:g}, got {v!r}"
    if hi is not None and v > hi:
        return f"must be <= {hi:g}, got {v!r}"
    return None


def _redact(name: str, value: str) -> str:
    """Describe a bad value without printing a secret: its length only."""
    if name in ("secret", "token", "aes_key", "previous_aes_key", "admin_token", "readonly_token", "url"):
        return f"a value of {len(value)} characters"
    return repr(value)


def _url_problem(value: str, *, https_only: bool) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        return f"must be a URL, got {value!r} ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL with a host, got {value!r}"
    if https_only and parts.scheme != "https" and parts.hostname not in _LOOPBACK_HOSTS:
        return f"must use https (WeChat refuses plain http, errcode 43003) unless the host is loopback, got {value!r}"
    if parts.query or parts.fragment:
        return f"must not have a query or fragment, got {value!r}"
    return None


class _Loader:
    def __init__(self, source: str, env: Mapping[str, str], base_dir: Path) -> None:
        self.source = source
        self.env = env
        self.base_dir = base_dir
        self.problems: list[tuple[str, str]] = []
        self.secret_sources: dict[str, str] = {}

    def problem(self, key: str, reason: str) -> None:
        if (key, reason) not in self.problems:  # a [defaults] problem is met once per account
            self.problems.append((key, reason))

    def load(self, data: Mapping[str, Any]) -> Config:
        root = _Section(self, "", dict(data))
        multi = root.raw("accounts") is not _MISSING
        single: _Account | None = None
        if not multi:
            if root.raw("defaults") is not _MISSING:
                root.problem("defaults", "only applies to [[accounts]] (a file of several accounts)")
            single = self._account(root, per_account=False)
        server = self._server(root.table("server"))
        wecom = single is not None and single.wecom is not None
        store = self._store(
            root.table("store"), "kfrouter-{appid}.db" if multi else "kfrouter.db", wecom=wecom
        )
        log = self._log(root.table("log"))
        cluster = self._cluster(root, store, wecom=wecom)
        shared = _Shared(server=server, store=store, log=log, cluster=cluster)
        accounts = self._accounts(root, shared) if multi else ()
        root.done()
        if self.problems:
            raise ConfigError.in_file(self.source, self.problems)
        sources = MappingProxyType(dict(self.secret_sources))
        if single is not None:
            return _config(self.source, single, shared, sources)
        return Config(
            source=self.source,
            wechat=None,
            server=server,
            store=store,
            log=log,
            cluster=cluster,
            accounts=tuple(_config(self.source, a, shared, sources) for a in accounts),
            secret_sources=sources,
        )

    def _accounts(self, root: _Section, shared: _Shared) -> tuple[_Account, ...]:
        """``[[accounts]]``, each over ``[defaults]``; appids (and explicit callback paths) unique."""
        for name in _ACCOUNT_KEYS:
            if root.raw(name) is not _MISSING:
                root.problem(
                    name,
                    "with [[accounts]] this belongs inside each account (or, shared, in [defaults])",
                )
        defaults = root.table("defaults")
        for name in list(defaults.data):
            if name not in _DEFAULT_KEYS:
                defaults.problem(name, f"cannot be a default (allowed: {', '.join(_DEFAULT_KEYS)})")
        dwechat = defaults.data.get("wechat")
        if isinstance(dwechat, dict):
            for name in ("appid", "secret", "callback_path"):
                if name in dwechat:
                    self.problem(
                        _join(defaults.key("wechat"), name), "is each account's own: set it in [[accounts]]"
                    )
        defaults.used.update(defaults.data)
        shared_defaults = {k: v for k, v in defaults.data.items() if k in _DEFAULT_KEYS}
        items = root.raw("accounts")
        if not isinstance(items, list) or not items:
            root.problem(
                "accounts", f"must be a non-empty array of tables ([[accounts]]), got {_describe(items)}"
            )
            return ()
        out: list[_Account] = []
        appids: dict[str, str] = {}
        paths: dict[str, str] = {}
        for i, item in enumerate(items):
            s = _Section(
                self,
                f"accounts[{i}]",
                _merge(shared_defaults, item, "defaults") if isinstance(item, dict) else item,
            )
            if not isinstance(item, dict):
                continue
            for name in ("server", "store", "log", "cluster", "accounts", "defaults"):
                if s.raw(name) is not _MISSING:
                    s.problem(name, "is shared by every account: set it at the top level")
            if s.raw("wecom") is not _MISSING:
                s.problem(
                    "wecom",
                    "WeCom 微信客服 runs one account per daemon: use a file with a top-level [wecom] table",
                )
                continue
            cfg = self._account(s, per_account=True)
            w = s.table("wechat")
            appid = cfg.wechat.appid if cfg.wechat is not None else ""
            if appid in appids:
                w.problem("appid", f"{appid!r} is already the appid of {appids[appid]}")
                continue
            if appid:
                appids[appid] = s.path
            if cfg.wechat is not None and isinstance(w.data.get("callback_path"), str):
                path = cfg.wechat.callback_path
                if path in paths:
                    w.problem("callback_path", f"{path!r} is already the callback path of {paths[path]}")
                paths[path] = s.path
            out.append(cfg)
        one_file = _account_store(shared.store, "a") == _account_store(shared.store, "b")
        if len(out) > 1 and one_file and shared.store.url is None and str(shared.store.path) != ":memory:":
            self.problem(
                "store.path",
                f"{len(out)} accounts cannot share one SQLite file: put {{appid}} in it "
                "(e.g. 'kfrouter-{appid}.db') or name a directory",
            )
        return tuple(out)

    def _account(self, s: _Section, *, per_account: bool) -> _Account:
        """One account from the table ``s`` (the file itself, or an ``[[accounts]]`` entry)."""
        has_wechat, has_wecom = s.raw("wechat") is not _MISSING, s.raw("wecom") is not _MISSING
        wechat: WechatConfig | None = None
        wecom: WeComConfig | None = None
        if has_wechat and has_wecom:
            s.problem(
                "wecom",
                "a config serves one account: [wechat] (an Official Account) or [wecom] (WeCom 微信客服), "
                "not both",
            )
            s.used.add("wecom")
        if has_wecom and not has_wechat:
            wecom = wecom_from_section(s.table("wecom"))
            if len(wecom.open_kfids) > 1:  # what check-config accepts, the daemon must serve
                self.problem(
                    _join(s.key("wecom"), "open_kfids"),
                    f"a daemon serves one kf account (one Desk per account), got {len(wecom.open_kfids)}: "
                    "list one open_kfid and run one kfrouter per kf account",
                )
        else:
            before = len(self.problems)
            # its secrets may all come from the environment
            wechat = self._wechat(s.table("wechat"), per_account=per_account)
            if not has_wechat and len(self.problems) > before:
                s.problem(
                    "wechat",
                    "is missing: a config needs a [wechat] table (an Official Account) or a [wecom] table "
                    "(WeCom 微信客服)",
                )
        engine_s = s.table("engine")
        engine = self._engine(engine_s)
        group_ss = s.tables("groups")
        groups = self._groups(group_ss, engine)
        routing = self._routing(s.table("routing"), groups)
        polling = self._polling(s.table("polling"))
        notify = self._notify(s.table("notify"))
        if per_account:
            s.done()
        self._check_policies(engine_s, engine, group_ss, groups)
        return _Account(
            wechat=wechat,
            wecom=wecom,
            engine=engine,
            groups=groups,
            routing=routing,
            polling=polling,
            notify=notify,
        )

    # ---------------------------------------------------------------- secrets

    def _secret(
        self,
        sec: _Section,
        name: str,
        *,
        required: bool,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
        min_len: int = 1,
        var: str | None = None,
    ) -> str | None:
        key = sec.key(name)
        var = var or ENV_VARS[key]
        from_env = self.env.get(var, "")
        in_file = sec.raw(name)
        if from_env:
            value: Any = from_env
            origin = var
        elif in_file is not _MISSING:
            value, origin = in_file, "file"
        else:
            if required:
                self.problem(key, f"is required: set it in the file or in the environment variable {var}")
            return None
        where = f" (from {var})" if origin == var else ""
        if not isinstance(value, str) or not value:
            got = "an empty string" if value == "" else f"a {type(value).__name__}"
            self.problem(key, f"must be a non-empty string (in the file or in {var}), got {got}")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.problem(key, f"must be {what}{where}, got {_redact(name, value)}")
            return None
        if len(value) < min_len:
            self.problem(key, f"must be at least {min_len} characters{where}, got {len(value)}")
            return None
        self.secret_sources[key] = origin
        return value

    # ---------------------------------------------------------------- sections

    def _wechat(self, s: _Section, *, per_account: bool = False) -> WechatConfig:
        """``[wechat]``; in an ``[[accounts]]`` entry (``per_account``) the appid must be in the file and the
        secrets' environment variables carry it: ``KFROUTER_SECRET_<APPID>`` (``env_suffix``)."""
        what_appid = "an appid (letters, digits, '_' or '-')"
        if per_account:
            appid: str | None = s.get_str("appid", required=True, pattern=_APPID_RE, what=what_appid)
            suffix = env_suffix(appid) if appid else "<APPID>"
            names = {n: f"{ENV_VARS['wechat.' + n]}_{suffix}" for n in ("secret", "token", "aes_key")}
        else:
            appid = self._secret(s, "appid", required=True, pattern=_APPID_RE, what=what_appid)
            names = {n: ENV_VARS["wechat." + n] for n in ("secret", "token", "aes_key")}
        secret = self._secret(s, "secret", required=True, var=names["secret"])
        token = self._secret(
            s, "token", required=True, pattern=_TOKEN_RE, what="3-32 letters or digits", var=names["token"]
        )
        encoding = s.get_str("encoding", "plain", choices=("plain", "compatible", "safe"))
        aes_key = self._secret(
            s,
            "aes_key",
            required=encoding != "plain",
            pattern=_AES_KEY_RE,
            what="43 letters or digits (the EncodingAESKey)",
            var=names["aes_key"],
        )
        previous = s.get_opt_str("previous_aes_key", pattern=_AES_KEY_RE, what="43 letters or digits")
        if previous is not None and aes_key is not None and previous == aes_key:
            s.problem("previous_aes_key", "must differ from aes_key (it is the key before the last rotation)")
        if previous is not None and encoding == "plain":
            s.problem("previous_aes_key", "is only used when encoding is 'compatible' or 'safe'")
        api_base = s.get_str("api_base", "https://api.weixin.qq.com").rstrip("/")
        if (reason := _url_problem(api_base, https_only=True)) is not None:
            s.problem("api_base", reason)
        token_mode = s.get_str("token_mode", "stable", choices=("stable", "classic"))
        path = s.get_str("callback_path", "/wechat")
        if not path.startswith("/") or any(c.isspace() for c in path) or "?" in path or "#" in path:
            s.problem("callback_path", f"must be an absolute URL path such as '/wechat', got {path!r}")
        s.done()
        return WechatConfig(
            appid=appid or "",
            secret=secret or "",
            token=token or "",
            aes_key=aes_key,
            previous_aes_key=previous,
            api_base=api_base,
            token_mode=token_mode,
            callback_path=path,
            encoding=encoding,
        )

    def _server(self, s: _Section) -> ServerConfig:
        admin = self._secret(s, "admin_token", required=True, min_len=_ADMIN_TOKEN_MIN)
        readonly = self._secret(s, "readonly_token", required=False, min_len=_ADMIN_TOKEN_MIN)
        if readonly is not None and readonly == admin:
            s.problem("readonly_token", "must differ from admin_token (it grants reading only)")
        host = s.get_str("host", "127.0.0.1")
        if not host:
            s.problem("host", "must not be empty")
        port = s.get_int("port", 8080, lo=0, hi=65535)
        upstream = s.get_opt_str("upstream_url")
        if upstream is not None and (reason := _url_problem(upstream, https_only=False)) is not None:
            s.problem("upstream_url", reason)
        timeout = s.get_float("upstream_timeout_s", 3.0, gt=0, hi=_MAX_UPSTREAM_TIMEOUT_S)
        s.done()
        return ServerConfig(
            admin_token=admin or "",
            readonly_token=readonly,
            host=host,
            port=port,
            upstream_url=upstream,
            upstream_timeout_s=timeout,
        )

    def _engine(self, s: _Section) -> EngineSection:
        d = EngineSection()
        out = EngineSection(
            default_capacity=s.get_int("default_capacity", d.default_capacity, lo=1, hi=1000),
            reservation_timeout_s=s.get_float(
                "reservation_timeout_s", d.reservation_timeout_s, lo=MIN_RESERVATION_S
            ),
            avoid_s=s.get_float("avoid_s", d.avoid_s, gt=0),
            sticky_window_s=s.get_float("sticky_window_s", d.sticky_window_s, gt=0),
            preferred_wait_s=s.get_float("preferred_wait_s", d.preferred_wait_s, gt=0),
            default_policy=s.get_str("default_policy", d.default_policy),
            priorities=s.get_bool("priorities", d.priorities),
            stale_session_s=(
                None if s.raw("stale_session_s") is _MISSING else s.get_float("stale_session_s", 0.0, gt=0)
            ),
            stale_message=s.get_opt_str("stale_message"),
        )
        if out.stale_message is not None and out.stale_session_s is None:
            s.problem("stale_message", "only applies when stale_session_s is set")
        if not out.default_policy:
            s.problem("default_policy", "must not be empty")
        s.done()
        return out

    def _groups(self, sections: list[_Section], engine: EngineSection) -> tuple[GroupConfig, ...]:
        names: dict[str, str] = {}  # name -> key path of its definition
        own_names: list[str] = []
        for s in sections:
            name = s.get_str(
                "name",
                required=True,
                pattern=_GROUP_RE,
                what="1-64 characters without spaces, '.', '[', ']' or '\"'",
            )
            if name in names:
                s.problem("name", f"group {name!r} is already defined at {names[name]}")
            elif name:
                names[name] = s.key("name")
            own_names.append(name)
        groups: list[GroupConfig] = []
        capacity_seen: dict[str, tuple[int, str]] = {}  # kf -> (capacity, key path)
        skill_tables: list[_Section] = []
        for s, name in zip(sections, own_names, strict=True):
            policy = s.get_str("policy", engine.default_policy)
            if not policy:
                s.problem("policy", "must not be empty")
            agents = s.get_str_list("agents", pattern=KF_ACCOUNT_RE, what="a kf_account such as 'alice@shop'")
            capacity = self._capacity(s.table("capacity"), agents, capacity_seen)
            overflow = self._overflow(s.tables("overflow"), name, names)
            on_offline = s.get_str("on_agent_offline", "keep", choices=("keep", "reassign"))
            grace = s.get_float("offline_grace_s", 120.0, lo=0)
            if s.raw("offline_grace_s") is not _MISSING and on_offline != "reassign":
                s.problem("offline_grace_s", "only applies when on_agent_offline = 'reassign'")
            priority = s.get_int("priority", 0, lo=-1000, hi=1000)
            skill_tables.append(s.table("skills"))
            skills = self._skills(skill_tables[-1])
            s.done()
            groups.append(
                GroupConfig(
                    name=name,
                    policy=policy,
                    agents=agents,
                    capacity=MappingProxyType(capacity),
                    overflow=overflow,
                    on_agent_offline=on_offline,
                    offline_grace_s=grace,
                    priority=priority,
                    skills=MappingProxyType(skills),
                )
            )
        members = {kf for g in groups for kf in g.agents}
        for table in skill_tables:  # an agent's skill for a group only means something for a known agent
            for kf in table.data:
                if KF_ACCOUNT_RE.fullmatch(kf) and kf not in members:
                    table.problem(kf, f"{kf!r} is not in any group's agents")
        return tuple(groups)

    def _skills(self, s: _Section) -> dict[str, float]:
        """``[groups.skills]``: how well agents serve this group's customers, kf_account -> proficiency in
        (0, 1] (best-fit reads it; a session with proficiency p is expected to take 1/p as long)."""
        out: dict[str, float] = {}
        for kf in list(s.data):
            if not KF_ACCOUNT_RE.fullmatch(kf):
                s.raw(kf)
                s.problem(kf, f"must be a kf_account such as 'alice@shop', got {kf!r}")
                continue
            before = len(self.problems)
            p = s.get_float(kf, 1.0, gt=0, hi=1)
            if len(self.problems) == before:
                out[kf] = p
        s.done()
        return out

    def _capacity(
        self, s: _Section, agents: tuple[str, ...], seen: dict[str, tuple[int, str]]
    ) -> dict[str, int]:
        out: dict[str, int] = {}
        for kf in list(s.data):
            n = s.get_int(kf, lo=1, hi=1000)
            if kf not in agents:
                s.problem(kf, f"{kf!r} is not in this group's agents")
                continue
            if kf in seen and seen[kf][0] != n and n:
                s.problem(kf, f"capacity {n} contradicts {seen[kf][0]} given at {seen[kf][1]}")
                continue
            if n:
                seen.setdefault(kf, (n, s.key(kf)))
                out[kf] = n
        s.done()
        return out

    def _overflow(
        self, sections: list[_Section], group: str, names: Mapping[str, str]
    ) -> tuple[Overflow, ...]:
        out: list[Overflow] = []
        last = -1.0
        for s in sections:
            target = s.get_str("group", required=True)
            after = s.get_float("after_s", 0.0, lo=0)
            if s.raw("after_s") is _MISSING:
                s.problem("after_s", "is required (seconds a customer waits before this group may serve)")
            if target and target not in names:
                s.problem("group", f"unknown group {target!r} (known: {', '.join(sorted(names)) or 'none'})")
            elif target and target == group:
                s.problem("group", "a group cannot overflow to itself")
            elif any(o.group == target for o in out):
                s.problem("group", f"{target!r} is listed twice")
            if after < last:
                s.problem(
                    "after_s", f"must not be smaller than the previous entry's {last:g} (list in order)"
                )
            last = max(last, after)
            s.done()
            out.append(Overflow(group=target, after_s=after))
        return tuple(out)

    def _group_ref(self, s: _Section, name: str, groups: tuple[GroupConfig, ...]) -> str | None:
        value = s.get_opt_str(name)
        if value is not None and not any(g.name == value for g in groups):
            known = ", ".join(g.name for g in groups) or "none defined"
            s.problem(name, f"unknown group {value!r} (known: {known})")
        return value

    def _routing(self, s: _Section, groups: tuple[GroupConfig, ...]) -> RoutingConfig:
        d = RoutingConfig()
        mode = s.get_str("mode", d.mode, choices=("always", "keywords"))
        match = s.get_str("match", d.match, choices=("contains", "exact"))
        keywords = s.get_str_list("keywords", d.keywords)
        menu_keys = s.get_str_list("menu_keys")
        default_group = self._group_ref(s, "default_group", groups)
        cancel = s.get_str_list("cancel_keywords", d.cancel_keywords)
        cancel_menu = s.get_str_list("cancel_menu_keys")
        choose = s.get_str_list("choose_agent_keywords")
        choose_menu = s.get_str_list("choose_agent_menu_keys")
        rules: list[RoutingRule] = []
        for r in s.tables("rules"):
            rule = RoutingRule(
                keywords=r.get_str_list("keywords"),
                menu_keys=r.get_str_list("menu_keys"),
                group=self._group_ref(r, "group", groups),
                priority=r.get_opt_int("priority", lo=-1000, hi=1000),
                tags=frozenset(r.get_str_list("tags")),
            )
            if not rule.keywords and not rule.menu_keys:
                self.problem(r.path, "needs keywords or menu_keys to match on")
            if rule.group is None and rule.priority is None and not rule.tags:
                self.problem(r.path, "does nothing: give it a group, a priority or tags")
            r.done()
            rules.append(rule)
        customers: dict[str, CustomerEntry] = {}
        where: dict[str, str] = {}
        for c in s.tables("customers"):
            entry = CustomerEntry(
                openids=c.get_str_list("openids"),
                group=self._group_ref(c, "group", groups),
                priority=c.get_opt_int("priority", lo=-1000, hi=1000),
                tags=frozenset(c.get_str_list("tags")),
            )
            if c.raw("openids") is _MISSING:
                c.problem("openids", "is required")
            for i, openid in enumerate(entry.openids):
                if openid in where:
                    self.problem(
                        f"{c.key('openids')}[{i}]", f"{openid!r} is already listed at {where[openid]}"
                    )
                else:
                    where[openid] = f"{c.key('openids')}[{i}]"
                    customers[openid] = entry
            c.done()
        aliases = self._aliases(s.table("aliases"), groups)
        # Cancel is checked first; a word that is both would make asking for a human impossible.
        for name, words in (("keywords", keywords), ("choose_agent_keywords", choose)):
            for w in words:
                if w.casefold() in {c.casefold() for c in cancel}:
                    s.problem(name, f"{w!r} is also a cancel keyword")
        for name, keys in (("menu_keys", menu_keys), ("choose_agent_menu_keys", choose_menu)):
            for k in keys:
                if k in cancel_menu:
                    s.problem(name, f"{k!r} is also a cancel menu key")
        if mode == "keywords" and not (keywords or menu_keys or rules or choose or choose_menu):
            s.problem(
                "mode",
                "is 'keywords' but no keywords, menu_keys, rules or choose-agent triggers are set: "
                "nobody could reach a human",
            )
        s.done()
        return RoutingConfig(
            mode=mode,
            match=match,
            keywords=keywords,
            menu_keys=menu_keys,
            rules=tuple(rules),
            customers=MappingProxyType(customers),
            default_group=default_group,
            cancel_keywords=cancel,
            cancel_menu_keys=cancel_menu,
            choose_agent_keywords=choose,
            choose_agent_menu_keys=choose_menu,
            aliases=MappingProxyType(aliases),
            group_priorities=MappingProxyType({g.name: g.priority for g in groups}),
        )

    def _aliases(self, s: _Section, groups: tuple[GroupConfig, ...]) -> dict[str, str]:
        out: dict[str, str] = {}
        folded: dict[str, str] = {}
        for alias in list(s.data):
            kf = s.get_str(alias, pattern=KF_ACCOUNT_RE, what="a kf_account such as 'alice@shop'")
            if not alias.strip():
                s.problem(alias, "an alias must not be empty")
            elif alias.casefold() in folded:
                s.problem(alias, f"is the same alias as {folded[alias.casefold()]!r} (aliases ignore case)")
            elif kf:
                folded[alias.casefold()] = alias
                out[alias] = kf
        s.done()
        return out

    def _polling(self, s: _Section) -> PollingConfig:
        d = PollingConfig()
        # spec §7: no documented rate limits on the kf read APIs; poll getwaitcase no faster than 1 s.
        out = PollingConfig(
            online_fast_s=s.get_float("online_fast_s", d.online_fast_s, lo=1),
            online_slow_s=s.get_float("online_slow_s", d.online_slow_s, lo=1),
            waitcase_fast_s=s.get_float("waitcase_fast_s", d.waitcase_fast_s, lo=1),
            waitcase_slow_s=s.get_float("waitcase_slow_s", d.waitcase_slow_s, lo=1),
            max_backoff_s=s.get_float("max_backoff_s", d.max_backoff_s, lo=1),
            jitter=s.get_float("jitter", d.jitter, lo=0, hi=0.5),
        )
        for kind in ("online", "waitcase"):
            fast, slow = getattr(out, f"{kind}_fast_s"), getattr(out, f"{kind}_slow_s")
            if fast > slow:
                s.problem(f"{kind}_fast_s", f"must be <= {kind}_slow_s ({slow:g}), got {fast:g}")
            if slow > out.max_backoff_s:
                s.problem("max_backoff_s", f"must be >= {kind}_slow_s ({slow:g}), got {out.max_backoff_s:g}")
        s.done()
        return out

    def _notify(self, s: _Section) -> NotifySection:
        d = NotifySection()
        enabled = s.get_bool("enabled", d.enabled)
        language = s.get_str("language", d.language)
        # WeChat allows 5 customer-service messages per 48 h after a user message (spec §6.1).
        max_per = s.get_int("max_per_customer", d.max_per_customer, lo=1, hi=5)
        eta_change = s.get_float("eta_change_min_s", d.eta_change_min_s, lo=0)
        templates = {lang: dict(t) for lang, t in DEFAULT_TEMPLATES.items()}
        t = s.table("templates")
        for lang in list(t.data):
            lt = t.table(lang)
            base = templates.setdefault(lang, {})
            for kind in NOTIFY_KINDS:
                text = lt.get_opt_str(kind)
                if text is None:
                    continue
                reason = _template_problem(text, _PLACEHOLDERS[kind])
                if reason is not None:
                    lt.problem(kind, reason)
                else:
                    base[kind] = text
            lt.done()
            missing = [k for k in NOTIFY_KINDS if k not in base]
            if missing:
                t.problem(lang, f"a new language needs every template; missing {', '.join(missing)}")
        t.done()
        if language not in templates:
            s.problem("language", f"no templates for {language!r} (have: {', '.join(sorted(templates))})")
        s.done()
        return NotifySection(
            enabled=enabled,
            language=language,
            max_per_customer=max_per,
            eta_change_min_s=eta_change,
            templates=MappingProxyType({k: MappingProxyType(v) for k, v in templates.items()}),
        )

    def _store(self, s: _Section, default_path: str, *, wecom: bool) -> StoreConfig:
        raw = s.get_str("path", default_path)
        if not raw:
            s.problem("path", "must not be empty")
        path = Path(raw)
        if raw != ":memory:" and not path.is_absolute():
            path = self.base_dir / path
        keep = s.get_float("dedup_keep_s", 600.0, lo=20)  # WeChat retries for ~15 s (3 x 5 s); keep more
        url = self._secret(s, "url", required=False, pattern=_STORE_URL_RE, what="a postgresql:// URL")
        if wecom and url is not None:  # what check-config accepts, the daemon must use
            s.problem(
                "url",
                "is not used by a [wecom] account: its store and sync cursors are SQLite at [store] path; "
                "remove url (and KFROUTER_STORE_URL)",
            )
        s.done()
        return StoreConfig(path=path, dedup_keep_s=keep, url=url)

    def _cluster(self, root: _Section, store: StoreConfig, *, wecom: bool) -> ClusterSettings | None:
        """``[cluster]`` (router/cluster_settings.py checks it and where it applies: the shared PostgreSQL,
        Official Accounts only)."""
        raw = root.raw("cluster")
        if raw is _MISSING:
            return None
        if not isinstance(raw, dict):
            root.problem("cluster", f"must be a table, got {_describe(raw)}")
            return None
        for key, reason in cluster_problems(store_url=store.url, wecom=wecom):
            root.problem(key, reason)
        try:
            return parse_cluster(raw, self.source)
        except ConfigError as exc:
            for key, reason in exc.problems:
                self.problem(key, reason)
            return None

    def _log(self, s: _Section) -> LogConfig:
        out = LogConfig(level=s.get_str("level", "info", choices=_LEVELS), json=s.get_bool("json", False))
        s.done()
        return out

    def _check_policies(
        self,
        engine_s: _Section,
        engine: EngineSection,
        group_ss: list[_Section],
        groups: tuple[GroupConfig, ...],
    ) -> None:
        """Every policy a route names is installed; one named with options (``NAME(key=value, ...)``, e.g.
        ``best-fit(unlisted_skill=0.8)``) is built once here, so a bad option is reported at its key."""
        known = known_policies()
        if known is None:
            return
        listing = ", ".join(sorted(known))
        named = [(engine_s, "default_policy", engine.default_policy)]
        named += [(s, "policy", g.policy) for s, g in zip(group_ss, groups, strict=False)]
        checked: set[str] = set()
        for sec, key, spec in named:
            if not spec or spec in checked:
                continue
            checked.add(spec)
            problem = _policy_problem(spec, known, listing)
            if problem is not None:
                sec.problem(key, problem)


def _policy_problem(spec: str, known: frozenset[str], listing: str) -> str | None:
    """Why the policy ``spec`` (a name, or a name with options) cannot be used, or None."""
    from kfrouter.policies.registry import load_policy, parse_policy_spec

    try:
        name, options = parse_policy_spec(spec)
    except ConfigError as exc:
        return str(exc)
    if name not in known:
        return f"unknown policy {name!r} (installed: {listing})"
    if options:
        try:
            load_policy(spec)
        except ConfigError as exc:
            return str(exc)
    return None


def _template_problem(text: str, allowed: frozenset[str]) -> str | None:
    try:
        fields = [f for _lit, f, _spec, _conv in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        return f"is not a valid template ({exc}); write a literal brace as '{{{{' or '}}}}'"
    for f in fields:
        if f not in allowed:
            return (
                f"unknown placeholder {{{f}}} (allowed: {', '.join('{' + a + '}' for a in sorted(allowed))})"
            )
    return None


def wecom_from_section(s: _Section) -> WeComConfig:
    """Read and check the ``[wecom]`` table ``s``; problems go to its loader (nothing is raised here).
    ``secret``, ``token`` and ``aes_key`` may come from the environment (``ENV_VARS``) like ``[wechat]``'s."""
    loader = s.loader
    corpid = s.get_str(
        "corpid",
        required=True,
        pattern=_CORPID_RE,
        what="a corp id (企业ID): 6-64 letters or digits, e.g. ww0123456789abcdef",
    )
    secret = loader._secret(
        s,
        "secret",
        required=True,
        pattern=_WECOM_SECRET_RE,
        what="the kf app's secret (1-256 characters, no spaces)",
    )
    token = loader._secret(
        s, "token", required=True, pattern=_TOKEN_RE, what="3-32 letters or digits (the callback Token)"
    )
    aes_key = loader._secret(
        s,
        "aes_key",
        required=True,
        pattern=_AES_KEY_RE,
        what="43 letters or digits (the callback EncodingAESKey)",
    )
    if s.raw("open_kfids") is _MISSING:
        s.problem(
            "open_kfids", "is required: the open_kfid of every kf account kfrouter routes (kf/account/list)"
        )
        open_kfids: tuple[str, ...] = ()
    else:
        open_kfids = s.get_str_list(
            "open_kfids",
            pattern=_OPEN_KFID_RE,
            what="an open_kfid (1-64 characters of letters, digits, '_' or '-')",
        )
        if not open_kfids and isinstance(s.raw("open_kfids"), list) and not s.raw("open_kfids"):
            s.problem("open_kfids", "must list at least one kf account")
    api_base = s.get_str("api_base", WECOM_API_BASE).rstrip("/")
    if (reason := _url_problem(api_base, https_only=True)) is not None:
        s.problem("api_base", reason)
    path = s.get_str("callback_path", "/wecom")
    if not path.startswith("/") or any(c.isspace() for c in path) or "?" in path or "#" in path:
        s.problem("callback_path", f"must be an absolute URL path such as '/wecom', got {path!r}")
    s.done()
    return WeComConfig(
        corpid=corpid,
        secret=secret or "",
        token=token or "",
        aes_key=aes_key or "",
        open_kfids=open_kfids,
        api_base=api_base,
        callback_path=path,
    )
