"""Serving a fake's aiohttp app on 127.0.0.1 for as long as a ``with`` block lasts (the fake WeChat and the
fake WeCom both start this way in tests, the demo and the benches).

Rule: port 0 asks the system for a free port; the URL yielded names the port actually bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` until the block ends; yields its root URL (``http://host:port``)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()
