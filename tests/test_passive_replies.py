"""Issue 15 item 4: passive replies (the answer to the push itself) cost nothing from WeChat's message
budget, so they come whatever ``[notify] enabled`` says: the daemon in-process against the fake WeChat."""

from __future__ import annotations

import test_daemon
from conftest import wait_until
from test_daemon import EnvFactory

from kfrouter.router.core.model import CustomerState

make_env = test_daemon.make_env  # the fixture: a daemon in-process against the fake WeChat


async def test_cancel_is_confirmed_with_notifications_off(make_env: EnvFactory) -> None:
    env = await make_env(agents=(), notify={"enabled": False, "language": "en"})
    assert env.daemon.notifier is None
    await env.ctl.say("w1", "human")
    await wait_until(lambda: env.daemon.engine.state("w1") is CustomerState.WAITING, message="w1 waiting")
    await env.ctl.say("w1", "cancel")
    await wait_until(lambda: env.daemon.engine.state("w1") is CustomerState.GONE, message="w1 gone")
    sent = (await env.ctl.state())["sent"]["w1"]
    assert [m["via"] for m in sent] == ["passive_reply"]  # nothing through message/custom/send
    assert "cancelled" in sent[0]["content"]
