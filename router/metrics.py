"""Prometheus metrics of each account, in its own ``CollectorRegistry`` (never the global one, so tests and
several daemons in one process never collide), and ``AccountsMetrics``: the ``/metrics`` of a process, every
account's series with an ``appid`` label (one family per name, however many accounts run).

Two kinds of metric, on purpose:

- **read at scrape time** (``_LiveCollector``): queue, agents, reservations, API client counters
  (``client.stats``), webhook outcomes (``receiver.stats``), pushes (``intake.stats``), upstream
  forwards. Nothing is counted in the hot paths for these: a scrape reads the daemon's own state.
- **counted from what the daemon reports** (``Metrics.observe``, a daemon observer: router/observe.py):
  requests, assignments and wait times, departures (from the Desk's facts, which carry the group and
  the wait), create failures, commands, the duration of each executor call. These exist only at the
  moment they happen.

``assignments()`` turns a step's ``Assigned`` facts into the records the supervisor's feed shows too. Every metric name is listed in README.md ("Metrics") and
docs/observability.md; ``METRIC_NAMES`` is the list the tests check.
"""

from __future__ import annotations

import math
from collections import Counter as TallyCounter
from collections.abc import Callable, Iterator, Mapping

from attrs import frozen
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

import kfrouter.router
from kfrouter.router.core.events import CreateFailed, CustomerRequested
from kfrouter.router.core.facts import Assigned, Left, Queued
from kfrouter.router.observe import ApiCalled, Observation, Stepped
from kfrouter.router.view import DaemonView

NO_GROUP = ""  # label value for customers without a group
WAIT_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, math.inf)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
CREATE_ENDPOINT = "kfsession/create"

# Webhook outcomes: PushReceiver.stats keys -> label values (other keys pass through as they are).
WEBHOOK_OUTCOMES = {
    "accepted": "ok",
    "duplicate": "duplicate",
    "verified": "verified",
    "callback_failed": "callback_failed",
    "error": "error",
}

METRIC_NAMES: tuple[str, ...] = (
    # read at scrape time
    "kfrouter_accounts",
    "kfrouter_info",
    "kfrouter_ready",
    "kfrouter_customers_waiting",
    "kfrouter_oldest_wait_seconds",
    "kfrouter_reservations",
    "kfrouter_sessions",
    "kfrouter_agent_online",
    "kfrouter_agent_paused",
    "kfrouter_agent_load",
    "kfrouter_agent_capacity",
    "kfrouter_inbox_length",
    "kfrouter_commands_pending",
    "kfrouter_wechat_waitlist",
    "kfrouter_api_calls_total",
    "kfrouter_api_requests_total",
    "kfrouter_api_retries_total",
    "kfrouter_api_failures_total",
    "kfrouter_api_errors_total",
    "kfrouter_api_latency_seconds",
    "kfrouter_token_refreshes_total",
    "kfrouter_token_invalidations_total",
    "kfrouter_webhook_requests_total",
    "kfrouter_pushes_total",
    "kfrouter_upstream_forwards_total",
    # counted from observations
    "kfrouter_customer_requests_total",
    "kfrouter_assignments_total",
    "kfrouter_wait_seconds",
    "kfrouter_customers_left_total",
    "kfrouter_create_failures_total",
    "kfrouter_commands_total",
    "kfrouter_api_call_duration_seconds",
)


def endpoint_label(path: str) -> str:
    """``/cgi-bin/customservice/getonlinekflist`` → ``getonlinekflist``;
    ``/customservice/kfsession/create`` → ``kfsession/create``; ``/cgi-bin/message/custom/send`` →
    ``message/custom/send`` (the executor's names)."""
    p = path.strip("/")
    for prefix in ("cgi-bin/", "customservice/"):
        if p.startswith(prefix):
            p = p[len(prefix) :]
    return p or path


def group_label(group: object) -> str:
    return group if isinstance(group, str) else NO_GROUP


# ============================================================================ following customers


@frozen
class Assignment:
    """A customer entered a session with an agent. ``waited_s``: from asking (or from being put back in
    the queue) until now; None when kfrouter never saw them wait (a session an agent opened by hand)."""

    at: float
    openid: str
    kf_account: str
    group: str | None
    waited_s: float | None
    source: str


def assignments(step: Stepped, now: float) -> list[Assignment]:
    """The sessions that started in ``step``, as the metrics and the supervisor's feed record them."""
    source = getattr(step.cause, "source", "")
    return [
        Assignment(
            at=now,
            openid=f.openid,
            kf_account=f.kf_account,
            group=f.group,
            waited_s=f.waited_s if f.queued else None,
            source=source if isinstance(source, str) else "",
        )
        for f in step.facts
        if isinstance(f, Assigned) and f.previous is None
    ]


# ============================================================================ the metrics


class Metrics:
    """The metrics of one daemon. ``registry`` is private to it; ``render()`` is the ``/metrics`` body.

    Subscribe ``observe`` to the daemon's observers."""

    # The classic text format: every name here is a legacy (ASCII) name, so Prometheus 2.x and 3.x read it.
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kfrouter_customer_requests",
            "Customers who asked for a human (new requests), by group and source (push, waitlist, restore).",
            ["group", "source"],
            registry=r,
        )
        self.assignments = Counter(
            "kfrouter_assignments",
            "Customers who entered a session, by group and agent.",
            ["group", "agent"],
            registry=r,
        )
        self.wait = Histogram(
            "kfrouter_wait_seconds",
            "Wait from asking for a human (or being put back in the queue) to entering a session.",
            ["group"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.left = Counter(
            "kfrouter_customers_left",
            "Waiting customers who left before being served, by group and reason.",
            ["group", "reason"],
            registry=r,
        )
        self.create_failures = Counter(
            "kfrouter_create_failures",
            "kfsession/create failures by errcode (-2: timeout or network, -3: malformed answer).",
            ["errcode"],
            registry=r,
        )
        self.commands = Counter(
            "kfrouter_commands", "Commands dispatched by the engine, by type.", ["type"], registry=r
        )
        self.call_duration = Histogram(
            "kfrouter_api_call_duration_seconds",
            "Duration of each API call the command executor made (retries included), by endpoint.",
            ["endpoint", "ok"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        # kfsession/create runs on the executor's own client; its counts come from the api_call listener.
        self._create_calls = 0
        self._create_latency_s = 0.0
        self._create_errcodes: TallyCounter[int] = TallyCounter()
        self.registry.register(_LiveCollector(self))

    def observe(self, observation: Observation, now: float) -> None:
        """Count what the daemon reports (a daemon observer, router/observe.py)."""
        if isinstance(observation, Stepped):
            self._stepped(observation, now)
        elif isinstance(observation, ApiCalled):
            self._api_called(observation)

    def _stepped(self, step: Stepped, now: float) -> None:
        cause = step.cause
        for f in step.facts:
            if isinstance(f, Queued):
                source = cause.source if isinstance(cause, CustomerRequested) else ""
                self.requests.labels(group_label(f.group), source).inc()
            elif isinstance(f, Left) and f.waiting and f.reason.startswith("left:"):
                self.left.labels(group_label(f.group), f.reason.removeprefix("left:")).inc()
        for a in assignments(step, now):
            group = group_label(a.group)
            self.assignments.labels(group, a.kf_account).inc()
            if a.waited_s is not None:
                self.wait.labels(group).observe(a.waited_s)
        if isinstance(cause, CreateFailed):
            self.create_failures.labels(str(cause.errcode)).inc()
        for cmd in step.commands:
            self.commands.labels(type(cmd).__name__).inc()

    def _api_called(self, call: ApiCalled) -> None:
        seconds = call.elapsed_s if call.elapsed_s >= 0 else 0.0
        self.call_duration.labels(call.endpoint, "true" if call.ok else "false").observe(seconds)
        if call.endpoint == CREATE_ENDPOINT:
            self._create_calls += 1
            self._create_latency_s += seconds
            if not call.ok:
                self._create_errcodes[call.errcode] += 1

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (call it on the daemon's event loop)."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Reads the daemon's state at scrape time (see the module docstring)."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on live state; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        d = self._m.daemon
        yield from self._status(d)
        yield from self._queue(d)
        yield from self._agents(d)
        yield from self._api(d)
        yield from self._edges(d)

    def _status(self, d: DaemonView) -> Iterator[Metric]:
        info = GaugeMetricFamily("kfrouter_info", "kfrouter build and account.", labels=["version", "appid"])
        info.add_metric([kfrouter.router.__version__, d.config.account], 1)
        yield info
        ready = d.started.is_set() and not d.stopping
        yield GaugeMetricFamily(
            "kfrouter_ready", "1 while routing (recovery done, not stopping).", 1 if ready else 0
        )
        yield GaugeMetricFamily(
            "kfrouter_inbox_length", "Inputs queued for the engine task.", d.inbox_length()
        )
        ex = d.executor
        yield GaugeMetricFamily(
            "kfrouter_commands_pending",
            "Commands queued or running in the executor.",
            0 if ex is None else ex.pending,
        )
        wl = d.waitlist_poller
        yield GaugeMetricFamily(
            "kfrouter_wechat_waitlist",
            "Customers in WeChat's own wait list at the last getwaitcase poll.",
            0 if wl is None else wl.count,
        )

    def _queue(self, d: DaemonView) -> Iterator[Metric]:
        now = d.clock.now()
        counts: dict[str, int] = {g.name: 0 for g in d.config.groups}
        oldest: dict[str, float] = {g.name: 0.0 for g in d.config.groups}
        for view in d.engine.waiting():
            g = group_label(view.group)
            counts[g] = counts.get(g, 0) + 1
            oldest[g] = max(oldest.get(g, 0.0), now - view.arrived_at)
        waiting = GaugeMetricFamily(
            "kfrouter_customers_waiting", "Customers waiting, by group.", labels=["group"]
        )
        age = GaugeMetricFamily(
            "kfrouter_oldest_wait_seconds",
            "How long the longest-waiting customer of the group has waited (0 when nobody waits).",
            labels=["group"],
        )
        for g in sorted(counts):
            waiting.add_metric([g], counts[g])
            age.add_metric([g], round(max(0.0, oldest[g]), 3))
        yield waiting
        yield age
        yield GaugeMetricFamily(
            "kfrouter_reservations",
            "Pending reservations (kfsession/create started, outcome not known yet).",
            len(d.engine.reservations()),
        )
        yield GaugeMetricFamily(
            "kfrouter_sessions", "Open sessions known to the engine.", len(d.engine.sessions())
        )

    def _agents(self, d: DaemonView) -> Iterator[Metric]:
        online = GaugeMetricFamily("kfrouter_agent_online", "1 when the agent is online.", labels=["agent"])
        paused = GaugeMetricFamily(
            "kfrouter_agent_paused", "1 when kfrouter assigns nobody to the agent.", labels=["agent"]
        )
        load = GaugeMetricFamily(
            "kfrouter_agent_load", "Open sessions plus pending reservations of the agent.", labels=["agent"]
        )
        capacity = GaugeMetricFamily(
            "kfrouter_agent_capacity", "Sessions the agent may hold at once.", labels=["agent"]
        )
        for a in d.engine.agents():
            online.add_metric([a.kf_account], 1 if a.online else 0)
            paused.add_metric([a.kf_account], 1 if a.paused else 0)
            load.add_metric([a.kf_account], a.load)
            capacity.add_metric([a.kf_account], a.capacity)
        yield from (online, paused, load, capacity)

    def _api(self, d: DaemonView) -> Iterator[Metric]:
        m = self._m
        calls = CounterMetricFamily(
            "kfrouter_api_calls",
            "WeChat API calls (method calls, not HTTP attempts), by endpoint.",
            labels=["endpoint"],
        )
        requests = CounterMetricFamily(
            "kfrouter_api_requests",
            "HTTP attempts to the WeChat API (retries included).",
            labels=["endpoint"],
        )
        retries = CounterMetricFamily("kfrouter_api_retries", "Retried API attempts.", labels=["endpoint"])
        failures = CounterMetricFamily(
            "kfrouter_api_failures", "API calls that failed after any retries.", labels=["endpoint"]
        )
        errors = CounterMetricFamily(
            "kfrouter_api_errors",
            "Failed API attempts by endpoint and errcode (-2 network, -3 malformed answer).",
            labels=["endpoint", "errcode"],
        )
        latency = SummaryMetricFamily(
            "kfrouter_api_latency_seconds", "Latency of HTTP attempts to the WeChat API.", labels=["endpoint"]
        )
        refreshes = 0
        invalidations = 0
        client = d.client
        if client is not None:
            stats = client.stats
            refreshes, invalidations = stats.token_refreshes, stats.token_invalidations
            for path, s in sorted(stats.endpoints.items()):
                ep = endpoint_label(path)
                if ep == CREATE_ENDPOINT:
                    continue  # counted from the executor's reports below
                calls.add_metric([ep], s.calls)
                requests.add_metric([ep], s.requests)
                retries.add_metric([ep], s.retries)
                failures.add_metric([ep], s.failures)
                for code, n in sorted(s.errcodes.items()):
                    errors.add_metric([ep, str(code)], n)
                latency.add_metric([ep], s.requests, s.latency_sum_s)
        create_failed = sum(m._create_errcodes.values())
        calls.add_metric([CREATE_ENDPOINT], m._create_calls)
        requests.add_metric([CREATE_ENDPOINT], m._create_calls)  # never retried
        retries.add_metric([CREATE_ENDPOINT], 0)
        failures.add_metric([CREATE_ENDPOINT], create_failed)
        for code, n in sorted(m._create_errcodes.items()):
            errors.add_metric([CREATE_ENDPOINT, str(code)], n)
        latency.add_metric([CREATE_ENDPOINT], m._create_calls, m._create_latency_s)
        yield from (calls, requests, retries, failures, errors, latency)
        yield CounterMetricFamily(
            "kfrouter_token_refreshes",
            "access_token fetched from WeChat (cgi-bin/token or stable_token).",
            refreshes,
        )
        yield CounterMetricFamily(
            "kfrouter_token_invalidations",
            "access_tokens WeChat rejected (40001/40014/42001).",
            invalidations,
        )

    def _edges(self, d: DaemonView) -> Iterator[Metric]:
        webhook = CounterMetricFamily(
            "kfrouter_webhook_requests",
            "Requests to the WeChat callback URL by outcome (ok, duplicate, verified, bad_request, "
            "bad_signature, stale, rejected_xml, undecryptable, forbidden, too_large, hangup, callback_failed, error).",
            labels=["outcome"],
        )
        outcomes: dict[str, int] = dict.fromkeys(
            ("ok", "duplicate", "bad_request", "bad_signature", "stale", "rejected_xml", "too_large"), 0
        )
        for key, n in d.receiver.stats.items():
            label = WEBHOOK_OUTCOMES.get(key, key)
            outcomes[label] = outcomes.get(label, 0) + n
        for label in sorted(outcomes):
            webhook.add_metric([label], outcomes[label])
        yield webhook
        pushes = CounterMetricFamily(
            "kfrouter_pushes", "Pushes handled by the intake, by type.", labels=["type"]
        )
        for key, n in sorted(d.intake.stats.items()):
            if key.startswith("push:"):
                pushes.add_metric([key[5:]], n)
        yield pushes
        forwards = CounterMetricFamily(
            "kfrouter_upstream_forwards",
            "Pushes forwarded to [server] upstream_url, by outcome.",
            labels=["outcome"],
        )
        up = d.upstream
        for key, n in sorted((up.stats if up is not None else {}).items()):
            forwards.add_metric([key], n)
        yield forwards


# ============================================================================ the accounts of a process

APPID_LABEL = "appid"


class AccountsMetrics:
    """``/metrics`` of a process: each account's ``Metrics`` (given by ``accounts()``, appid -> Metrics, read
    at every scrape: accounts start and stop at run time), their families merged by name, every sample
    labelled with its ``appid``; plus ``kfrouter_accounts``."""

    content_type = Metrics.content_type

    def __init__(self, accounts: Callable[[], Mapping[str, Metrics]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_AccountsCollector(accounts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _AccountsCollector(Collector):
    def __init__(self, accounts: Callable[[], Mapping[str, Metrics]]) -> None:
        self._accounts = accounts

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        accounts = self._accounts()
        yield GaugeMetricFamily("kfrouter_accounts", "Accounts this process routes now.", len(accounts))
        families: dict[str, Metric] = {}
        for appid, metrics in sorted(accounts.items()):
            for family in metrics.registry.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    if APPID_LABEL not in sample.labels:
                        sample = sample._replace(labels={**sample.labels, APPID_LABEL: appid})
                    merged.samples.append(sample)
        yield from families.values()
