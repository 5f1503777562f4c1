"""The replay's WeChat adapter (sim.wechat_replay.ReplayWeChat): bare errcodes from the model's rules,
agent names of any shape, injected failures drawn from the replay's Random, no model history and no set
of every openid seen (so no unknown-openid check: the replay names only customers it transferred)."""

from __future__ import annotations

import random

from kfrouter.sim.wechat_replay import ReplayWeChat


def online(w: ReplayWeChat, *agents: str, auto_accept: int = 1) -> None:
    for agent in agents:
        w.set_agent(agent, 0.0, 1, auto_accept)


def test_answers_follow_wechats_rules() -> None:
    w = ReplayWeChat(random.Random(0))
    online(w, "a1@sim", "a2@sim")
    w.set_agent("off@sim", 0.0, 0, 1)
    w.transfer("u1", 1.0)
    assert w.model.waiting.keys() == {"u1"}
    assert w.create("nobody@sim", "u1", 2.0) == 65401
    assert w.create("off@sim", "u1", 2.0) == 65415
    assert w.close("a1@sim", "u1", 2.0) == 65413
    assert w.create("a1@sim", "u1", 3.0) == 0
    assert not w.model.waiting and w.model.sessions["u1"].kf_account == "a1@sim"
    assert w.create("a1@sim", "u1", 3.5) == 0  # same agent again: idempotent
    assert w.create("a2@sim", "u1", 4.0) == 65414
    assert w.close("a2@sim", "u1", 5.0) == 65414
    assert w.close("a1@sim", "u1", 6.0) == 0
    assert w.model.sessions == {} and w.model.agents["a1@sim"].sessions == {}
    assert w.model.outbox == []  # the replay's options push nothing


def test_leave_takes_the_customer_off_the_wait_list() -> None:
    w = ReplayWeChat(random.Random(0))
    online(w, "a1@sim")
    w.transfer("u1", 1.0)
    w.transfer("u2", 2.0)
    w.leave("u1")
    w.leave("u3")  # never waited: nothing happens
    assert list(w.model.waiting) == ["u2"]
    assert w.create("a1@sim", "u1", 3.0) == 0  # gone from the wait list: a late create still lands


def test_a_made_up_account_is_never_another_agents_name() -> None:
    for names in (["alice", "x0@sim"], ["x0@sim", "alice"], ["alice", "x0@sim", "x1@sim", "bob"]):
        w = ReplayWeChat(random.Random(0))
        online(w, *names)
        assert len({w.account(n) for n in names}) == len(names), names
        for n, agent in enumerate(names):  # each agent really has a room of their own
            w.transfer(f"u{n}", 1.0)
            assert w.create(agent, f"u{n}", 1.0) == 0
        assert sorted(a.kf_account for a in w.model.sessions.values()) == sorted(w.account(n) for n in names)


def test_agent_names_of_any_shape_get_an_account() -> None:
    w = ReplayWeChat(random.Random(0))
    online(w, "a1@sim")
    w.transfer("u1", 1.0)
    assert w.create("a1@sim", "u1", 1.0) == 0
    online(w, "Alice Smith", "@odd")  # from now on names go through the account map
    for n, agent in enumerate(["Alice Smith", "@odd", "a1@sim"]):
        openid = f"v{n}"
        w.transfer(openid, 2.0)
        assert w.create(agent, openid, 2.0) == 0
        assert w.model.sessions[openid].kf_account == w.account(agent)
    assert w.account("Alice Smith") != w.account("@odd")
    assert w.close("a1@sim", "u1", 3.0) == 0 and w.close("Alice Smith", "v0", 3.0) == 0
    assert w.create("Bob", "v1", 3.0) == 65401  # never set: no such account, mapped or not
    assert w.close("Bob", "v1", 3.0) == 65401


def test_injected_failures_use_the_replays_random() -> None:
    w = ReplayWeChat(random.Random(5), failure_rate=0.3, failure_errcode=45009)
    online(w, "a1@sim")
    reference = random.Random(5)
    answers, expected = [], []
    for i in range(200):
        openid = f"u{i}"
        w.transfer(openid, float(i))
        answers.append(w.create("a1@sim", openid, float(i)))
        expected.append(45009 if reference.random() < 0.3 else 0)
        if answers[-1] == 0:
            assert w.close("a1@sim", openid, float(i)) == 0
    assert answers == expected and 0 < answers.count(45009) < 200
    assert list(w.model.waiting) == [f"u{i}" for i, code in enumerate(answers) if code]


def test_failures_and_mapped_names_together() -> None:
    w = ReplayWeChat(random.Random(1), failure_rate=1.0)
    online(w, "Alice")
    w.transfer("u1", 1.0)
    assert w.create("Alice", "u1", 1.0) == -1
    w.model.set_fault("kfsession/create", None)  # the rule is the model's: removing it stops failures
    assert w.create("Alice", "u1", 2.0) == 0


def test_wechats_own_auto_accept_decides_in_the_replay_too() -> None:
    w = ReplayWeChat(random.Random(0))
    w.model.options.wechat_auto_accept = True
    online(w, "a1@sim")
    w.transfer("u1", 1.0)
    w.transfer("u2", 2.0)
    assert w.model.sessions["u1"].kf_account == "a1@sim" and list(w.model.waiting) == ["u2"]
    assert w.create("a1@sim", "u1", 3.0) == 0
    assert w.close("a1@sim", "u1", 4.0) == 0
    assert w.model.sessions["u2"].kf_account == "a1@sim"  # the freed room goes to the next in line


def test_the_replay_keeps_no_model_history() -> None:
    w = ReplayWeChat(random.Random(0))
    online(w, "a1@sim")
    for i in range(50):
        w.transfer(f"u{i}", float(i))
        w.create("a1@sim", f"u{i}", float(i))
        w.close("a1@sim", f"u{i}", float(i))
    assert w.model.create_log == [] and w.model.records == [] and w.model.customers == {}
    # nor a set of every openid (it would grow with every customer of a long trace): WeChat's check for
    # unknown openids is off, since the replay names only customers it put on the wait list
    assert w.model.known == set() and not w.model.options.check_openid
    assert w.create("a1@sim", "never-transferred", 60.0) == 0
