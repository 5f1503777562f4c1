"""The pieces behind the customer flows, without the network: the agent list and per-agent waits
(``router.choice``), answers by number (``router.rules``), the one set of notification kinds and
placeholders (core planner, config, docs/config.md), and ``kfrouter sim run`` on a trace whose customers
name agents (``preference_hit_rate``, no capacity violations)."""

from __future__ import annotations

import copy
import json
import math
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfrouter.policies.registry import load_all
from kfrouter.router.config import DEFAULT_TEMPLATES, NOTIFY_KINDS, Config, ConfigError
from kfrouter.router.core import choice, rules
from kfrouter.router.core import events as ev
from kfrouter.router.core.engine import Engine, EngineConfig
from kfrouter.router.core.estimate import WaitEstimator
from kfrouter.router.core.model import AgentRow
from kfrouter.router.core.notify import FIELDS, KINDS, TEMPLATES, NotifyConfig, eta_minutes
from kfrouter.router.core.rules import RoutingConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"
MINIMAL: dict[str, Any] = {
    "wechat": {"appid": "wx_app", "secret": "s3cret", "token": "tok123"},
    "server": {"admin_token": "x" * 20},
    "groups": [{"name": "general", "agents": ["a1@shop", "a2@shop"]}],
}


def engine_with(*agents: tuple[str, str, int, int], default_group: str = "sales") -> Engine:
    """An engine with online agents (kf_account, nickname, capacity, open sessions) in ``default_group``."""
    e = Engine(EngineConfig(preferred_wait_s=300.0), load_all())
    for kf, nick, cap, _sessions in agents:
        e.handle(
            ev.AgentConfigured(
                kf_account=kf, groups=frozenset({default_group}), max_sessions=cap, nickname=nick
            ),
            0.0,
        )
    rows = tuple(AgentRow(kf_account=kf, status=1, accepted_case=n) for kf, _nick, _cap, n in agents)
    e.handle(ev.AgentsSeen(rows=rows), 0.0)  # type: ignore[arg-type]
    return e


# ------------------------------------------------------------------------------------------ the list


def test_the_list_is_numbered_by_name_with_group_and_wait() -> None:
    e = engine_with(("b@shop", "Bo", 1, 1), ("a@shop", "", 2, 0), ("c@shop", "Cy", 1, 0))
    offer = choice.make_offer(e, WaitEstimator(), 10.0, ttl=300.0)
    assert offer.until == 310.0
    assert [(c.number, c.kf_account, c.name) for c in offer.choices] == [
        (1, "a@shop", "a"),  # no nickname: the kf account's prefix
        (2, "b@shop", "Bo"),
        (3, "c@shop", "Cy"),
    ]
    assert offer.directory() == {"1": "a@shop", "2": "b@shop", "3": "c@shop"}
    assert [c.wait_s for c in offer.choices] == [0.0, 300.0, 0.0]  # Bo's one session: 300 s prior
    assert choice.listing_text(offer, "en").splitlines() == [
        "Reply with a number or a name to choose an agent:",
        "1. a (sales) — available now",
        "2. Bo (sales) — wait about 5 minutes",
        "3. Cy (sales) — available now",
    ]
    assert choice.listing_text(offer, "zh").splitlines()[2] == "2. Bo（sales），预计等待约 5 分钟"


def test_without_an_estimator_the_list_shows_the_load() -> None:
    e = engine_with(("a@shop", "Ann", 2, 2), ("b@shop", "Bo", 3, 1))
    offer = choice.make_offer(e, None, 0.0, ttl=60.0)
    assert [c.wait_s for c in offer.choices] == [None, 0.0]
    lines = choice.listing_text(offer, "zh").splitlines()
    assert lines[1:] == ["1. Ann（sales），忙碌（2/2）", "2. Bo（sales），现在即可接入"]


def test_offline_and_paused_agents_are_not_offered_and_nobody_online_says_so() -> None:
    e = engine_with(("a@shop", "Ann", 1, 0), ("b@shop", "Bo", 1, 0))
    e.handle(ev.AgentConfigured(kf_account="b@shop", paused=True), 1.0)
    b_only = (AgentRow(kf_account="b@shop", status=1),)
    e.handle(ev.AgentsSeen(rows=b_only), 1.0)  # type: ignore[arg-type]  # a@shop went offline
    assert choice.make_offer(e, None, 2.0, ttl=60.0).choices == ()
    assert choice.listing_text(choice.make_offer(e, None, 2.0, 60.0), "en", "Note. ") == (
        "Note. No agent is online right now; please try again later."
    )
    assert not choice.choosable(e.agent("a@shop")) and not choice.choosable(None)
    assert choice.agent_wait(e, None, "a@shop", 2.0) == math.inf


def test_customers_waiting_for_an_agent_lengthen_that_agents_wait() -> None:
    e = engine_with(("a@shop", "Ann", 1, 1), ("b@shop", "Bo", 1, 1))
    est = WaitEstimator()
    assert choice.agent_wait(e, est, "a@shop", 0.0) == pytest.approx(300.0)
    e.handle(ev.CustomerRequested(openid="c1", group="sales", preferred_agent="a@shop"), 0.0)
    e.handle(ev.CustomerRequested(openid="c2", group="sales", preferred_agent="a@shop"), 0.0)
    # two ahead for Ann: the third in line waits for three of Ann's sessions to end
    assert choice.agent_wait(e, est, "a@shop", 1.0) == pytest.approx(900.0)
    # ... the estimate told to c2 counts only the one ahead of them
    assert choice.agent_wait(e, est, "a@shop", 1.0, exclude="c2") == pytest.approx(600.0)
    assert choice.agent_wait(e, est, "b@shop", 1.0) == pytest.approx(300.0)  # nobody named Bo
    e.handle(ev.CustomerRequested(openid="c3", group="sales"), 2.0)  # no preference: shared by the group
    assert choice.agent_wait(e, est, "b@shop", 2.0) == pytest.approx(600.0)  # Bo's half of c3: one ahead
    b_wait, a_wait = (choice.agent_wait(e, est, kf, 2.0) for kf in ("b@shop", "a@shop"))
    assert b_wait is not None and a_wait is not None and b_wait < a_wait


def test_a_long_list_keeps_the_shortest_waits() -> None:
    agents = [(f"a{i:02d}@shop", f"n{i:02d}", 1, 1 if i < 10 else 0) for i in range(25)]
    offer = choice.make_offer(engine_with(*agents), WaitEstimator(), 0.0, ttl=60.0)
    assert len(offer.choices) == choice.MAX_LISTED
    assert sum(1 for c in offer.choices if c.wait_s == 0.0) == 15  # every free agent is listed
    assert [c.name for c in offer.choices] == sorted(c.name for c in offer.choices)


def test_notes_for_a_choice_that_does_not_count() -> None:
    assert choice.not_found_note("9", "zh") == "没有编号为 9 的客服。"
    assert choice.not_found_note("bob", "en") == "No agent called 'bob'. "
    assert choice.unavailable_note("小王", "zh") == "客服 小王 当前不在线，请重新选择。"
    assert "“取消”" in choice.already_waiting_text("取消", "zh")
    assert "cancel" not in choice.already_waiting_text("", "en").lower()


# ------------------------------------------------------------------------------------------ rules


def test_numbers_and_full_width_answers_while_choosing() -> None:
    routing = RoutingConfig(mode="keywords", keywords=("人工",), choose_agent_keywords=("选客服",))
    names = {**rules.make_directory(routing, ["alice@shop", "bob@shop"]), "1": "alice@shop", "2": "bob@shop"}

    def classify(text: str, awaiting: bool = True) -> rules.Decision:
        msg = rules.Inbound(openid="o", msg_type="text", text=text)
        return rules.classify(routing, msg, directory=names, awaiting_choice=awaiting)

    assert classify("2") == rules.AskHuman(group=None, preferred_agent="bob@shop", matched="choice")
    assert classify("２。").preferred_agent == "bob@shop"  # type: ignore[union-attr]
    assert classify("ＢＯＢ").preferred_agent == "bob@shop"  # type: ignore[union-attr]
    assert classify("7") == rules.ChooseAgent("choice", query="7")  # not on the list: the list again
    assert classify("选客服 2").preferred_agent == "bob@shop"  # type: ignore[union-attr]
    assert classify("7", awaiting=False) == rules.NotForUs("no keyword")  # a number is only an answer
    assert classify("what are your hours?") == rules.NotForUs("no keyword")


# ------------------------------------------------------------------------------------------ templates


def test_config_and_planner_share_one_set_of_kinds_placeholders_and_texts() -> None:
    assert NOTIFY_KINDS == KINDS
    assert {lang: dict(t) for lang, t in DEFAULT_TEMPLATES.items()} == {
        lang: dict(t) for lang, t in TEMPLATES.items()
    }
    for lang, texts in TEMPLATES.items():
        assert set(texts) == set(KINDS), lang
        for kind, text in texts.items():
            used = {f for _l, f, _s, _c in string.Formatter().parse(text) if f}
            assert used <= FIELDS[kind], (lang, kind, used)


@pytest.mark.parametrize("kind", KINDS)
def test_every_placeholder_of_a_kind_loads_from_the_config_and_renders(kind: str) -> None:
    text = " ".join(f"{name}=<{{{name}}}>" for name in sorted(FIELDS[kind]))
    doc = copy.deepcopy(MINIMAL)
    doc["notify"] = {"templates": {"en": {kind: text}}}
    cfg = Config.from_dict(doc, env={})
    assert cfg.notify.template(kind, "en") == text
    values = {name: f"v-{name}" for name in FIELDS[kind]}
    rendered = NotifyConfig(language="en", templates={kind: text}, cancel_word="stop").render(kind, **values)
    expected = {name: ("stop" if name == "cancel" else f"v-{name}") for name in FIELDS[kind]}
    assert rendered == " ".join(f"{name}=<{expected[name]}>" for name in sorted(FIELDS[kind]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_placeholder_of_another_kind_is_refused_naming_the_allowed_ones(kind: str) -> None:
    foreign = sorted(set().union(*FIELDS.values()) - FIELDS[kind])
    if not foreign:
        pytest.skip(f"{kind} allows every placeholder")
    doc = copy.deepcopy(MINIMAL)
    doc["notify"] = {"templates": {"zh": {kind: f"x {{{foreign[0]}}}"}}}
    with pytest.raises(ConfigError) as info:
        Config.from_dict(doc, env={})
    [(key, reason)] = info.value.problems
    assert key == f"notify.templates.zh.{kind}"
    assert f"unknown placeholder {{{foreign[0]}}}" in reason
    assert all(f"{{{name}}}" in reason for name in FIELDS[kind])


def test_docs_list_exactly_the_kinds_and_placeholders() -> None:
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    section = text[text.index("### `[notify.templates.<language>]`") : text.index("## `[store]`")]
    documented: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \| ((?:`\{\w+\}` ?)+) \|", line)
        if m:
            documented[m.group(1)] = set(re.findall(r"\{(\w+)\}", m.group(2)))
    assert documented == {k: set(v) for k, v in FIELDS.items()}
    explained = set(re.findall(r"^\| `\{(\w+)\}` \|", section, flags=re.M))
    assert explained == set().union(*FIELDS.values())


@given(st.floats(min_value=0, max_value=10 * 86400, allow_nan=False))
def test_eta_minutes_is_a_whole_number_that_never_understates(seconds: float) -> None:
    minutes = int(eta_minutes(seconds))
    assert minutes >= 1 and minutes * 60 >= seconds - 1e-6 and (minutes - 1) * 60 < max(seconds, 60)


def test_eta_minutes_without_an_estimate() -> None:
    assert eta_minutes(math.inf) == "?"


def test_builtin_texts_carry_the_cancel_hint_only_with_a_cancel_keyword() -> None:
    with_word = NotifyConfig(language="zh", cancel_word="不等了")
    assert with_word.template("queued").endswith("回复“{cancel}”可取消排队。")
    assert with_word.render(
        "preferred", agent="小王", wait="约 5 分钟", eta_min="5", fallback="约 2 分钟"
    ).endswith("回复“不等了”可取消排队。")
    assert "{cancel}" not in NotifyConfig(language="zh").template("queued")
    assert (
        NotifyConfig(templates={"queued": "{position}"}, cancel_word="x").template("queued") == "{position}"
    )


# ------------------------------------------------------------------------------------------ simulator


def _trace(path: Path) -> Path:
    lines = [
        {"kind": "header", "version": 1, "name": "preferences", "seed": 1},
        {"t": 0, "kind": "agent_online", "agent": "a1@sim", "groups": ["g"], "max_sessions": 1},
        {"t": 0, "kind": "agent_online", "agent": "a2@sim", "groups": ["g"], "max_sessions": 1},
        {
            "t": 0,
            "kind": "arrival",
            "customer": "c1",
            "group": "g",
            "service_s": 100,
            "preferred_agent": "a1@sim",
        },
        {
            "t": 1,
            "kind": "arrival",
            "customer": "c2",
            "group": "g",
            "service_s": 10,
            "preferred_agent": "a1@sim",
        },
        {"t": 2, "kind": "arrival", "customer": "c3", "group": "g", "service_s": 5},
        {
            "t": 3,
            "kind": "arrival",
            "customer": "c4",
            "group": "g",
            "service_s": 20,
            "preferred_agent": "a2@sim",
        },
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def _sim(capsys: pytest.CaptureFixture[str], trace: Path, *args: str) -> dict[str, Any]:
    from kfrouter.router.cli import main

    capsys.readouterr()
    code = main(["sim", "run", str(trace), "--policy", "least-load", "--no-baseline", "--json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    [row] = json.loads(out)["policies"]
    return dict(row)


def test_sim_run_reports_preference_hits_without_capacity_violations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path / "prefs.jsonl")
    # c2 waits for a1 (busy with c1 until t=100) although a2 is free: served by a1; c4 gets a2 (free at 7)
    patient = _sim(capsys, trace, "--preferred-wait", "300")
    assert patient["preference_hit_rate"] == 1.0
    assert patient["capacity_violations"] == 0 and patient["double_assignments"] == 0
    assert patient["served"] == 4
    # with 30 s, c2 falls back to the group's policy at t=31 and a2 (free since t=7) serves them
    hasty = _sim(capsys, trace, "--preferred-wait", "30")
    assert hasty["preference_hit_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert hasty["capacity_violations"] == 0 and hasty["double_assignments"] == 0
    assert hasty["wait_mean_s"] < patient["wait_mean_s"]
