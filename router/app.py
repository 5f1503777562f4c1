"""The composition root: builds a daemon and attaches what reads it.

``build_daemon(config, ...)`` makes the ``Host`` (router/host.py: the web server and one ``AccountRunner``
per ``[wechat]`` account of the file) — or, for a ``[wecom]`` config, the ``WeComDaemon`` — then adds the
admin API (``/api/``, docs/admin-api.md) and the observability pages (``/metrics``, ``/supervisor``,
docs/observability.md) to its web app. They see the process through ``HostView`` and each account through
``DaemonView`` (router/view.py), and learn of accounts as they start and stop. The host imports none of
them, and they import no host or daemon: the layers stay one-way (docs/architecture.md). ``kfrouter run``
and the demo build their daemon here; with ``[cluster]`` ``kfrouter run`` builds ``build_cluster(config)``:
the host under the lease keeper (router/cluster.py, docs/scale-out.md).
"""

from __future__ import annotations

from typing import Any

from kfrouter.router.admin import admin_routes
from kfrouter.router.cluster import Cluster
from kfrouter.router.cluster_settings import cluster_problems
from kfrouter.router.config import Config, ConfigError
from kfrouter.router.edges.store import Store, open_database
from kfrouter.router.edges.store_database import Database
from kfrouter.router.host import Host
from kfrouter.router.supervisor import attach_observability
from kfrouter.router.view import HostView, OneAccount
from kfrouter.router.wecom_daemon import WeComDaemon


def build_cluster(config: Config, **kwargs: Any) -> Cluster:
    """A daemon for ``config`` with ``[cluster]`` (docs/scale-out.md): its host starts no account by itself —
    the lease keeper starts those this daemon owns — and every account's store is a schema of the one
    PostgreSQL database, opened once for the process (``kwargs`` go to the host)."""
    settings, url = config.cluster, config.store.url
    if settings is None:
        raise ValueError(f"{config.source}: build_cluster needs a config with [cluster]")
    problems = cluster_problems(store_url=url, wecom=config.wecom is not None)  # what the loader refuses
    if problems or url is None:  # (a missing url is one of the problems)
        raise ConfigError.in_file(config.source, problems)
    owner = settings.owner_id()
    database = open_database(url, keepalive=settings.keepalive())
    leases: Database | None = None
    try:
        leases = open_database(url, keepalive=settings.keepalive())  # the keeper's own connections
        stores = {c.oa.appid: Store(database, appid=c.oa.appid) for c in config.every_account}
        host = Host(config, start=(), stores=stores, name=owner, fail_fast=False, **kwargs)
        host.app.add_routes(admin_routes(host))
        attach_observability(host, host.app)
        return Cluster(host, settings, database, leases=leases, owner=owner)
    except BaseException:
        database.close()
        if leases is not None:
            leases.close()
        raise


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
