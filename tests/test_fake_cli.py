"""``kfrouter fake-wechat``: prints its base URL, serves the API, exits 0 on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import pytest

from kfrouter.router.cli import main


async def _start(*extra: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kfrouter.router.cli",
        "fake-wechat",
        "--port",
        "0",
        "--appid",
        "wxCLI",
        "--secret",
        "S3",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
    return proc, line.decode().strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serves_and_exits_0_on_signal(sig: signal.Signals) -> None:
    proc, base = await _start("--option", "kf_id_type=str", "--option", "online_status_style=legacy")
    try:
        assert base.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            q = {"grant_type": "client_credential", "appid": "wxCLI", "secret": "S3"}
            async with http.get(base + "/cgi-bin/token", params=q) as resp:
                token = (await resp.json())["access_token"]
            async with http.post(base + "/_fake/agents", json={"agents": [{"kf_account": "a@test"}]}) as resp:
                assert resp.status == 200
            async with http.get(
                base + "/cgi-bin/customservice/getkflist", params={"access_token": token}
            ) as resp:
                assert (await resp.json())["kf_list"][0]["kf_id"] == "1001"
    finally:
        proc.send_signal(sig)
        rc = await asyncio.wait_for(proc.wait(), timeout=20)
    assert rc == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--webhook", "http://127.0.0.1:9/h"], "--token"),
        (["--option", "nope=1"], "unknown option"),
        (["--option", "novalue"], "NAME=JSON"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-wechat", "--appid", "a", "--secret", "s", *argv]) == 2
    assert message in capsys.readouterr().err
