"""One account's application core as its config says, and the daemons' operational knobs.

``build_desk(config, options)`` makes the Desk (router/core/desk.py: engine with its policies, wait
estimator, notifier and the intake rules that join them) that both the Official Account runner
(router/daemon.py) and the WeCom daemon (router/wecom_daemon.py) drive; ``notify_texts`` /
``notify_config`` read ``[notify]`` for it. ``DaemonOptions`` are the knobs not in ``kfrouter.toml``
(``kfrouter run`` exposes the timeouts as flags); each is checked when set, naming the option.

Rules: nothing here does I/O; a ``[notify.templates]`` override the planner refuses is logged and the
built-in texts are used (the config already checked the placeholders).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from kfrouter.policies.registry import load_policies
from kfrouter.router.config import DEFAULT_TEMPLATES, Config
from kfrouter.router.core import notify as core_notify
from kfrouter.router.core.desk import Desk, IntakeSettings
from kfrouter.router.core.engine import Engine
from kfrouter.router.core.errors import CoreError
from kfrouter.router.core.estimate import WaitEstimator

log = logging.getLogger("kfrouter.daemon")


def _positive(_inst: object, attr: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"DaemonOptions.{attr.name} must be a number > 0, got {value!r}")


def _count(_inst: object, attr: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DaemonOptions.{attr.name} must be an integer >= 1, got {value!r}")


def _non_negative_int(_inst: object, attr: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"DaemonOptions.{attr.name} must be an integer >= 0, got {value!r}")


@frozen(kw_only=True)
class DaemonOptions:
    """Operational knobs not in ``kfrouter.toml`` (``kfrouter run`` exposes the timeouts as flags)."""

    api_timeout_s: float = field(default=10.0, validator=_positive)  # one HTTP attempt, read APIs
    api_retries: int = field(default=3, validator=_non_negative_int)  # extra attempts, read APIs
    create_timeout_s: float = field(default=10.0, validator=_positive)  # kfsession/create, one attempt
    create_concurrency: int = field(default=8, validator=_count)
    shutdown_timeout_s: float = field(default=10.0, validator=_positive)
    sweep_s: float = field(default=5.0, validator=_positive)  # engine tick at least this often
    eta_every_s: float = field(default=30.0, validator=_positive)  # wait estimates refreshed
    housekeeping_s: float = field(default=60.0, validator=_positive)
    nickname_refresh_s: float = field(default=600.0, validator=_positive)
    choice_ttl_s: float = field(default=300.0, validator=_positive)  # after we listed the agents
    startup_backoff_max_s: float = field(default=30.0, validator=_positive)
    self_check: bool = True  # run kfrouter doctor's read-only checks at start and log what they find
    seed: int | None = None  # poll jitter


def notify_config(config: Config) -> core_notify.NotifyConfig | None:
    """The notification planner's settings from ``[notify]`` (``None`` when disabled)."""
    return notify_texts(config) if config.notify.enabled else None


def notify_texts(config: Config) -> core_notify.NotifyConfig:
    """The settings and texts of ``[notify]`` whatever ``enabled`` says: passive replies (the cancel
    confirmation) cost nothing from WeChat's message budget and use them even when notifications are off.

    ``[notify.templates]`` use the planner's own kinds and placeholders (``router.core.notify.FIELDS``,
    checked when the config is loaded), so overrides pass unchanged; ``{cancel}`` is the first of
    ``[routing] cancel_keywords``. A language the planner has no built-in texts for (the config may define
    one) is rendered with its templates and Chinese wait phrases."""
    n = config.notify
    language = n.language if n.language in core_notify.TEMPLATES else "zh"
    cancel = config.routing.cancel_keywords[0] if config.routing.cancel_keywords else ""
    defaults = DEFAULT_TEMPLATES.get(n.language, {})
    templates = {
        kind: text
        for kind, text in n.templates.get(n.language, {}).items()
        if kind in core_notify.KINDS and text != defaults.get(kind)
    }

    def build(templates: Mapping[str, str]) -> core_notify.NotifyConfig:
        return core_notify.NotifyConfig(
            language=language,
            templates=templates,
            max_per_customer=n.max_per_customer,
            eta_change_s=n.eta_change_min_s,
            cancel_word=cancel,
        )

    try:
        return build(templates)
    except CoreError as exc:
        log.warning("notify: %s; built-in templates used", exc)
        return build({})


def build_desk(config: Config, options: DaemonOptions) -> Desk:
    """The application core of one account (engine, estimator, notifier and the rules that join them,
    router/core/desk.py) as ``config`` and ``options`` say; the OA and the WeCom daemons both use it."""
    texts = notify_texts(config)
    return Desk(
        Engine(config.engine_config(), load_policies(sorted(config.policy_names()))),
        estimator=WaitEstimator(),
        notifier=core_notify.Notifier(texts) if config.notify.enabled else None,
        sweep_every_s=options.eta_every_s,
        intake=IntakeSettings(routing=config.routing, texts=texts, choice_ttl_s=options.choice_ttl_s),
    )
