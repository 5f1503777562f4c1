"""The composition root: builds a daemon and attaches what reads it.

``build_daemon(config, ...)`` makes the ``Host`` (router/host.py: the web server and one ``AccountRunner``
per ``[wechat]`` account of the file) — or, for a ``[wecom]`` config, the ``WeComDaemon`` — then adds the
admin API (``/api/``, docs/admin-api.md) and the observability pages (``/metrics``, ``/supervisor``,
docs/observability.md) to its web app. They see the process through ``HostView`` and each account through
``DaemonView`` (router/view.py), and learn of accounts as they start and stop. The host imports none of
them, and they import no host or daemon: the layers stay one-way (docs/architecture.md). ``kfrouter run``
and the demo build their daemon here.
"""

from __future__ import annotations

from typing import Any

from kfrouter.router.admin import admin_routes
from kfrouter.router.config import Config
from kfrouter.router.host import Host
from kfrouter.router.supervisor import attach_observability
from kfrouter.router.view import HostView, OneAccount
from kfrouter.router.wecom_daemon import WeComDaemon


def build_daemon(config: Config, **kwargs: Any) -> Host | WeComDaemon:
    """A daemon for ``config`` (``kwargs`` go to it) with the admin API and the pages attached: the host of
    the file's Official Accounts (``[wechat]``, or ``[[accounts]]``), or the WeCom 微信客服 daemon
    (router/wecom_daemon.py) for ``[wecom]``."""
    daemon: Host | WeComDaemon
    view: HostView
    if config.wecom is not None:
        daemon = WeComDaemon(config, **kwargs)
        view = OneAccount(daemon)
    else:
        daemon = view = Host(config, **kwargs)
    daemon.app.add_routes(admin_routes(view))
    attach_observability(view, daemon.app)
    return daemon
