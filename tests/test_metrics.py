"""``/metrics``: every documented metric after real traffic (daemon + fake WeChat in-process), values that
follow the traffic, the admin token, one registry per daemon; the facts' assignments and labels as units."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, config_dict, wait_until
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_env import running_env

from kfrouter.policies.registry import load_all
from kfrouter.router.app import build_daemon
from kfrouter.router.config import Config
from kfrouter.router.core import events as ev
from kfrouter.router.core.desk import Desk
from kfrouter.router.core.engine import Engine, EngineConfig, Route
from kfrouter.router.core.model import AgentRow, CustomerState
from kfrouter.router.metrics import METRIC_NAMES, Metrics, assignments, endpoint_label
from kfrouter.router.observe import Stepped
from kfrouter.router.supervisor import attach_observability, observability_of
from kfrouter.router.wechat import replies

README = Path(__file__).resolve().parent.parent / "README.md"
OBS_DOC = Path(__file__).resolve().parent.parent / "docs" / "observability.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition (fails on malformed text): (sample name, sorted labels) -> value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(data: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sample ``name{labels}``; without ``appid`` in ``labels``, the one sample that has them plus an
    appid (a daemon's series carry their account)."""
    key = tuple(sorted(labels.items()))
    if (name, key) in data:
        return data[(name, key)]
    found = [
        v for (n, ls), v in data.items() if n == name and tuple(kv for kv in ls if kv[0] != "appid") == key
    ]
    return found[0] if len(found) == 1 else math.nan


def sample_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def exposed(name: str, names: set[str]) -> bool:
    """A documented name appears as a sample (histograms and summaries through their _count)."""
    return name in names or f"{name}_count" in names


async def test_every_documented_metric_is_exposed_after_traffic(tmp_path: Path) -> None:
    async with running_env(
        tmp_path,
        agents=("a1@test", "a2@test"),
        groups=[
            {"name": "general", "agents": ["a1@test", "a2@test"]},
            {"name": "billing", "agents": ["b1@test"]},  # b1 never comes online: billing customers wait
        ],
        routing={"rules": [{"keywords": ["invoice"], "group": "billing"}], "cancel_keywords": ["cancel"]},
    ) as env:
        await env.ctl.say("c1", "human please")
        await env.assigned("c1")
        await env.ctl.fault("kfsession/create", errcode=65415, times=1)  # the agent went offline meanwhile
        await env.ctl.say("c2", "human please")
        await env.assigned("c2")
        await env.ctl.say("b1", "invoice please")
        await wait_until(lambda: env.daemon.engine.state("b1") is CustomerState.WAITING, message="b1 waiting")
        status, text = await env.get("/metrics")
        assert status == 200
        during = samples(text)
        assert value(during, "kfrouter_customers_waiting", group="billing") == 1
        assert value(during, "kfrouter_oldest_wait_seconds", group="billing") >= 0
        await env.ctl.say("b1", "cancel")
        await env.ctl.say("n1", "just saying hello")  # not for kfrouter: forwarded (no upstream configured)
        await wait_until(lambda: env.daemon.engine.state("b1") is CustomerState.GONE, message="b1 gone")
        # one refused webhook request: a bad signature
        xml = replies.build_text_message("gh_x", "evil", int(time.time()), "human", 7)
        params = {"signature": "0" * 40, "timestamp": str(int(time.time())), "nonce": "1", "openid": "evil"}
        async with env.http.post(env.base + "/wechat", params=params, data=xml) as resp:
            assert resp.status == 403

        status, text = await env.get("/metrics")
        assert status == 200
        assert env.obs.metrics.content_type.startswith("text/plain; version=0.0.4")
        names = sample_names(text)
        missing = [n for n in METRIC_NAMES if not exposed(n, names)]
        assert missing == [], f"documented but not exposed: {missing}"
        undocumented = sorted(
            n
            for n in names
            if n.startswith("kfrouter_")
            and not any(n == m or n.startswith(m.removesuffix("_total") + "_") for m in METRIC_NAMES)
        )
        assert undocumented == []

        data = samples(text)
        agents = {"a1@test", "a2@test"}
        served = {
            agent: value(data, "kfrouter_assignments_total", group="general", agent=agent) for agent in agents
        }
        assert sum(v for v in served.values() if not math.isnan(v)) == 2
        assert value(data, "kfrouter_customer_requests_total", group="general", source="push") == 2
        assert value(data, "kfrouter_customer_requests_total", group="billing", source="push") == 1
        assert value(data, "kfrouter_wait_seconds_count", group="general") == 2
        assert value(data, "kfrouter_customers_left_total", group="billing", reason="cancelled") == 1
        assert value(data, "kfrouter_customers_waiting", group="billing") == 0
        assert value(data, "kfrouter_customers_waiting", group="general") == 0
        assert value(data, "kfrouter_create_failures_total", errcode="65415") == 1
        assert value(data, "kfrouter_api_calls_total", endpoint="kfsession/create") == 3
        assert value(data, "kfrouter_api_failures_total", endpoint="kfsession/create") == 1
        assert value(data, "kfrouter_api_errors_total", endpoint="kfsession/create", errcode="65415") == 1
        assert value(data, "kfrouter_api_latency_seconds_count", endpoint="kfsession/create") == 3
        assert (
            value(data, "kfrouter_api_call_duration_seconds_count", endpoint="kfsession/create", ok="true")
            == 2
        )
        assert value(data, "kfrouter_api_calls_total", endpoint="getonlinekflist") >= 1
        assert value(data, "kfrouter_token_refreshes_total") >= 1
        assert value(data, "kfrouter_webhook_requests_total", outcome="bad_signature") == 1
        assert value(data, "kfrouter_webhook_requests_total", outcome="ok") >= 5
        assert value(data, "kfrouter_pushes_total", type="UserMessage") == 5
        assert value(data, "kfrouter_commands_total", type="CreateSession") == 3
        assert value(data, "kfrouter_upstream_forwards_total", outcome="not_configured") == 1
        assert value(data, "kfrouter_sessions") == 2
        assert value(data, "kfrouter_reservations") == 0
        assert value(data, "kfrouter_ready") == 1
        assert value(data, "kfrouter_agent_capacity", agent="a1@test") == 3
        assert value(data, "kfrouter_agent_online", agent="a1@test") == 1
        for agent in agents:  # every session open: load = customers assigned to the agent
            count = served[agent]
            assert value(data, "kfrouter_agent_load", agent=agent) == (0 if math.isnan(count) else count)
        assert value(data, "kfrouter_info", version="0.1.0", appid="wx_test_app") == 1


async def test_metrics_need_the_admin_token(tmp_path: Path) -> None:
    async with running_env(tmp_path) as env:
        status, body = await env.get("/metrics", auth=False)
        assert status == 401 and "admin token" in body and "kfrouter_" not in body
        status, _ = await env.get(
            "/metrics", auth=False, headers={"Authorization": "Bearer wrong-token-123456"}
        )
        assert status == 401
        status, _ = await env.get("/metrics", auth=False, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        assert status == 401
        status, body = await env.get("/metrics")
        assert status == 200 and 'kfrouter_ready{appid="wx_test_app"} 1.0' in body


def _config(tmp_path: Path, appid: str) -> Config:
    return Config.from_dict(
        config_dict(api_base="http://127.0.0.1:9", store=tmp_path / f"{appid}.db", appid=appid), env={}
    )


def test_each_daemon_has_its_own_registry(tmp_path: Path) -> None:
    first, second = build_daemon(_config(tmp_path, "wx_one")), build_daemon(_config(tmp_path, "wx_two"))
    obs_one, obs_two = observability_of(first.app), observability_of(second.app)
    assert obs_one is not None and obs_two is not None and obs_one is not obs_two
    # idempotent: build_daemon attached it already
    assert attach_observability(first, first.app) is obs_one  # type: ignore[arg-type]
    one, two = obs_one.account(), obs_two.account()
    assert first.runner.observers.count(one.observe) == 1  # type: ignore[union-attr]
    assert one.metrics.registry is not two.metrics.registry
    assert not any(m.name.startswith("kfrouter") for m in REGISTRY.collect())
    text_one, text_two = one.metrics.render().decode(), two.metrics.render().decode()
    assert 'appid="wx_one"' in text_one and "wx_two" not in text_one
    assert 'appid="wx_two"' in text_two
    # before run(): no client, no executor; the scrape still works and says "not ready"
    assert value(samples(text_one), "kfrouter_ready") == 0


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/cgi-bin/customservice/getonlinekflist", "getonlinekflist"),
        ("/customservice/kfsession/create", "kfsession/create"),
        ("/cgi-bin/message/custom/send", "message/custom/send"),
        ("/cgi-bin/stable_token", "stable_token"),
        ("/customservice/kfaccount/add", "kfaccount/add"),
    ],
)
def test_endpoint_labels_match_the_executor_names(path: str, label: str) -> None:
    assert endpoint_label(path) == label


def test_documentation_lists_every_metric() -> None:
    for doc in (README, OBS_DOC):
        text = doc.read_text(encoding="utf-8")
        listed = set(re.findall(r"`(kfrouter_[a-z_]+)`", text))
        assert set(METRIC_NAMES) <= listed, f"{doc.name} misses {sorted(set(METRIC_NAMES) - listed)}"


# ------------------------------------------------------------------------------------ the tracker


def _desk() -> Desk:
    routes = {"vip": Route(), "g": Route(on_agent_offline="reassign", offline_grace_s=10.0)}
    desk = Desk(Engine(EngineConfig(default_capacity=1, routes=routes), load_all()))
    for kf, groups in (("k1@x", {"vip", "g"}), ("k2@x", {"g"})):
        desk.handle(ev.AgentConfigured(kf_account=kf, groups=frozenset(groups)), 0.0)
    return desk


def _online(*agents: str) -> ev.AgentsSeen:
    rows = [AgentRow(kf_account=a, status=1, accepted_case=0, auto_accept=1) for a in agents]
    return ev.AgentsSeen(rows=rows, complete=True)  # type: ignore[arg-type]


def _step(desk: Desk, event: ev.Event, now: float) -> Stepped:
    step = desk.handle(event, now)
    return Stepped(event, tuple(step.facts), tuple(step.commands))


def test_assignments_carry_the_wait_and_the_group_from_the_facts() -> None:
    desk = _desk()
    _step(desk, _online(), 1000.0)  # nobody online
    requested = _step(desk, ev.CustomerRequested(openid="o1", group="vip", source="push"), 1000.0)
    assert assignments(requested, 1000.0) == []
    _step(desk, _online("k1@x"), 1042.5)  # reserved for o1
    created = _step(desk, ev.SessionCreated(openid="o1", kf_account="k1@x", source="api"), 1042.5)
    (a,) = assignments(created, 1042.5)
    assert (a.group, a.kf_account, a.waited_s, a.at, a.source) == ("vip", "k1@x", 42.5, 1042.5, "api")


def test_a_requeued_customer_waits_from_the_requeue() -> None:
    desk = _desk()
    _step(desk, _online("k1@x"), 990.0)
    _step(desk, ev.CustomerRequested(openid="o1", group="g", arrived_at=990.0), 1000.0)
    (first,) = assignments(
        _step(desk, ev.SessionCreated(openid="o1", kf_account="k1@x", source="api"), 1000.0), 1000.0
    )
    assert first.waited_s == 10.0  # from the arrival the push carried
    _step(desk, _online(), 1490.0)  # k1 goes offline with o1's session open
    desk.tick(1500.0)  # past the grace: the session is closed to route o1 again
    _step(desk, ev.SessionClosed(openid="o1", kf_account="k1@x"), 1500.0)
    _step(desk, _online("k2@x"), 1530.0)
    (second,) = assignments(
        _step(desk, ev.SessionCreated(openid="o1", kf_account="k2@x", source="api"), 1530.0), 1530.0
    )
    assert (second.group, second.waited_s) == ("g", 30.0)


def test_metrics_count_requests_departures_and_strangers(tmp_path: Path) -> None:
    desk = _desk()
    cfg = Config.from_dict(config_dict(api_base="http://127.0.0.1:9", store=tmp_path / "m.db"), env={})
    metrics = Metrics(build_daemon(cfg).runner)  # type: ignore[union-attr]
    for step in (
        _step(desk, _online(), 0.0),
        _step(desk, ev.CustomerRequested(openid="o4", group="g", source="push"), 0.0),
        _step(desk, ev.CustomerRequested(openid="o4", group="g", source="push"), 1.0),  # already waiting
        _step(desk, ev.CustomerLeft(openid="o4", reason="cancelled"), 2.0),
        _step(desk, _online("k1@x"), 3.0),
        # a session an agent opened by hand for someone kfrouter never saw: no group, no wait
        _step(desk, ev.SessionCreated(openid="stranger", kf_account="k1@x", source="push"), 4.0),
    ):
        metrics.observe(step, 5.0)
    data = samples(metrics.render().decode())
    assert value(data, "kfrouter_customer_requests_total", group="g", source="push") == 1.0
    assert value(data, "kfrouter_customers_left_total", group="g", reason="cancelled") == 1.0
    assert value(data, "kfrouter_assignments_total", group="", agent="k1@x") == 1.0
    # the stranger's wait is unknown: never observed (no histogram for their group at all)
    assert math.isnan(value(data, "kfrouter_wait_seconds_count", group=""))
