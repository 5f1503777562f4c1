"""``kfrouter demo``: the command a newcomer runs first. It must assign customers to agents of the right
group, print a summary and exit 0 — in-process, and as a real process ended early by Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from pathlib import Path

import pytest

from kfrouter.router.cli import main
from kfrouter.router.demo import (
    DEMO_ADMIN_TOKEN,
    GROUPS,
    DemoError,
    DemoOptions,
    arrivals,
    demo_agents,
    demo_config,
    run_demo,
)

ROW = re.compile(r"^\s*([\d.]+)s\s+(\S+)(?: \(back\))?\s+(sales|support)\s+(\S+@demo)\s+([\d.]+)s")
GROUP_LINE = re.compile(r"^\s+group (\w+)\s+agents (.+?)\s+\(")


def parse(out: str) -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """The agents of each group (from the intro) and the (customer, group, agent) assignment rows."""
    members: dict[str, set[str]] = {}
    rows = []
    for line in out.splitlines():
        m = GROUP_LINE.match(line)
        if m:
            members[m.group(1)] = {a.strip() for a in m.group(2).split(",")}
        m = ROW.match(line)
        if m:
            rows.append((m.group(2), m.group(3), m.group(4)))
    return members, rows


def test_kfrouter_demo_assigns_by_group_and_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--duration", "8", "--seed", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    members, rows = parse(out)
    assert set(members) == set(GROUPS)
    assert members["sales"].isdisjoint(members["support"])  # 4 agents: two per group
    assert len(rows) >= 3, out
    assert {g for _c, g, _a in rows} == set(GROUPS), out  # both groups were served
    for customer, group, agent in rows:
        assert agent in members[group], f"{customer} ({group}) went to {agent}:\n{out}"
    assert "pushes signed and AES-encrypted: safe mode" in out
    summary = out[out.index("\nsummary") :]
    m = re.search(
        r"(\d+) requests from (\d+) customers: (\d+) served .*?, (\d+) waiting, (\d+) abandoned", summary
    )
    assert m, summary
    requests, _people, served, waiting, abandoned = map(int, m.groups())
    assert served == len(rows) and served + waiting + abandoned == requests
    assert re.search(r"wait\s+mean [\d.]+s, p90 [\d.]+s, max [\d.]+s", summary)
    assert "every customer went to an agent of their group" in summary
    for agent in members["sales"] | members["support"]:
        n = sum(1 for _c, _g, a in rows if a == agent)
        assert re.search(rf"{re.escape(agent)}\s+\w+\s+{n}\s+\d/2\s+\d", summary), (agent, summary)


async def test_run_demo_both_groups_agent_customers_and_speed() -> None:
    """Five agents (the fifth serves both groups), a fixed number of customers, four times faster."""
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    summary = await run_demo(
        DemoOptions(duration_s=5, agents=5, customers=8, seed=3, speed=4),
        Out(),  # type: ignore[arg-type]
    )
    assert [a.groups for a in summary.agents][-1] == GROUPS
    assert len(summary.visits) == 8
    assert summary.wrong_group == []
    assert len(summary.served) + len(summary.waiting) + len(summary.abandoned) == 8
    assert len(summary.served) >= 4
    assert summary.supervisor is None or summary.supervisor.endswith(f"token={DEMO_ADMIN_TOKEN}")
    assert all(0 <= v.wait_s < 5 for v in summary.served if v.wait_s is not None)
    text = "".join(lines)
    assert "summary: " in text and "(interrupted)" not in text


async def test_stop_ends_the_run_early_with_the_summary() -> None:
    stop = asyncio.Event()
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            lines.append(text)
            if "demo-customer-001" in text:
                stop.set()  # Ctrl-C right after the first assignment
            return len(text)

        def flush(self) -> None:
            pass

    summary = await asyncio.wait_for(
        run_demo(DemoOptions(duration_s=60, seed=2), Out(), stop),  # type: ignore[arg-type]
        30,
    )
    assert summary.interrupted and summary.elapsed_s < 30
    assert len(summary.served) >= 1
    assert "summary (interrupted)" in "".join(lines)


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, text in (
        (["--duration", "0"], "--duration must be a number > 0"),
        (["--agents", "1"], "--agents must be an integer 2..50"),
        (["--customers", "0"], "--customers must be an integer"),
        (["--speed", "-1"], "--speed must be a number > 0"),
        (["--port", "70000"], "--port must be an integer 0..65535"),
    ):
        assert main(["demo", *argv]) == 2
        assert text in capsys.readouterr().err


def test_script_and_config_are_reproducible_and_valid(tmp_path: Path) -> None:
    agents = demo_agents(6)
    assert [a.groups for a in agents] == [
        ("sales",),
        ("support",),
        ("sales",),
        ("support",),
        GROUPS,
        ("support",),
    ]
    cfg = demo_config(
        agents, api_base="http://127.0.0.1:1", aes_key="a" * 43, store=tmp_path / "x.db", port=0
    )
    assert cfg.wechat.encoding == "safe" and cfg.server.host == "127.0.0.1"
    assert {g.name: set(g.agents) for g in cfg.groups} == {
        "sales": {"alice@demo", "carol@demo", "erin@demo"},
        "support": {"bob@demo", "dave@demo", "erin@demo", "frank@demo"},
    }
    opts = DemoOptions(duration_s=100, seed=5)
    a = arrivals(opts, random.Random(5), 4)
    assert a == arrivals(opts, random.Random(5), 4)
    assert [g for _t, g, _x in a[:2]] == list(GROUPS)
    assert all(0 <= t < 70 for t, _g, _x in a) and a == sorted(a)
    # about 80% of capacity: 4 agents x 2 sessions / 8 s mean service = 1/s, so ~0.8/s over 70 s
    assert 30 < len(a) < 90
    assert len(arrivals(DemoOptions(duration_s=10, customers=7), random.Random(1), 4)) == 7
    with pytest.raises(DemoError):
        DemoOptions(agents=True)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_ctrl_c_in_a_real_process_prints_the_summary_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kfrouter.router.cli",
        "demo",
        "--duration",
        "60",
        "--seed",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(tmp_path),
        env=env,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo ended before assigning anyone:\n" + "".join(seen)
                seen.append(line)
                if ROW.match(line):
                    break
            proc.send_signal(signal.SIGINT)
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(seen) + rest.decode()
    assert proc.returncode == 0, err.decode()
    assert "summary (interrupted)" in out
    assert "Traceback" not in err.decode()
