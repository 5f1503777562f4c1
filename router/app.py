"""The composition root: builds a daemon and attaches what reads it.

``build_daemon(config, ...)`` makes the ``Daemon`` (edges, Desk, I/O loop) — or, for a ``[wecom]`` config,
the ``WeComDaemon``, then adds the admin API
(``/api/``, docs/admin-api.md) and the observability pages (``/metrics``, ``/supervisor``,
docs/observability.md) to its web app, each given the daemon as a ``DaemonView`` (router/view.py) and, for
the pages, a place among its observers. The daemon imports none of them, and they import no daemon: the
layers stay one-way (docs/architecture.md). ``kfrouter run`` and the demo build their daemon here.
"""

from __future__ import annotations

from typing import Any

from kfrouter.router.admin import admin_routes
from kfrouter.router.config import Config
from kfrouter.router.daemon import Daemon
from kfrouter.router.supervisor import attach_observability
from kfrouter.router.wecom_daemon import WeComDaemon


def build_daemon(config: Config, **kwargs: Any) -> Daemon | WeComDaemon:
    """A daemon for ``config`` (``kwargs`` go to it) with the admin API and the pages attached: the
    Official Account daemon for ``[wechat]``, the WeCom 微信客服 daemon (router/wecom_daemon.py) for
    ``[wecom]``."""
    daemon: Daemon | WeComDaemon = (
        WeComDaemon(config, **kwargs) if config.wecom is not None else Daemon(config, **kwargs)
    )
    daemon.app.add_routes(admin_routes(daemon))
    attach_observability(daemon, daemon.app, daemon.observers)
    return daemon
