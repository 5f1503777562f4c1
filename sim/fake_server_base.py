"""What both fake servers are built on (``sim.fake_server.FakeWeChat``, ``sim.wecom_server.FakeWeCom``): the
aiohttp app with the platform's API and the ``/_fake/`` control API, options restored on reset, the
deliverer settled and closed with the app, and serving on a port.

Rules of the control API: ``METHOD name`` is routed to a handler taking a ``ControlCall``; an unknown name
answers 404 naming the known routes, a known name with another method 405, and a ``ControlError`` or
``ValueError`` 400 ``{"error": "/_fake/name: ..."}``. After each control request the models' queued
deliveries are handed to the deliverer; ``"wait": true`` in any body answers only once the deliveries
(and those they caused) are over. The routes both fakes have are here (reset, DELETE faults,
clock/advance, options, settle); a subclass adds its own (``_routes``), serves its API (``_api_entry``),
names its models (``_models``) and hands their queued deliveries on (``flush_all``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ClassVar, Generic, ParamSpec, TypeVar

from aiohttp import web

from kfrouter.router.clock import SteadyClock
from kfrouter.sim.delivery import OrderedDeliveries
from kfrouter.sim.fake_control import ControlCall, ControlError
from kfrouter.sim.fake_http import json_response
from kfrouter.sim.fake_options import SwitchesBase
from kfrouter.sim.model_base import Json, ModelBase
from kfrouter.sim.serving import serving

OptionsT = TypeVar("OptionsT", bound=SwitchesBase)
F = TypeVar("F", bound="FakeServerBase[Any]")
P = ParamSpec("P")
ControlHandler = Callable[[ControlCall], Awaitable[Json]]


class FakeServerBase(Generic[OptionsT]):
    """A fake's ``app``, ``options`` (type ``OptionsT``), ``clock``, ``pusher`` and ``base_url`` once
    served (see the module docstring). ``MAX_BODY``: the largest request body the app reads."""

    MAX_BODY: ClassVar[int]
    app: web.Application
    pusher: OrderedDeliveries

    def __init__(self, options: OptionsT, clock: SteadyClock | None) -> None:
        self.options = options
        self._initial_options = options.to_json()
        self.clock = clock if clock is not None else SteadyClock()
        self.base_url = ""

    # ------------------------------------------------------------------ what a fake provides
    def _models(self) -> Iterable[ModelBase[Any]]:
        raise NotImplementedError

    def flush_all(self) -> None:
        """Hand every model's queued deliveries to the deliverer."""
        raise NotImplementedError

    def _routes(self) -> dict[str, ControlHandler]:
        """The fake's own control routes, ``"METHOD name"`` -> handler."""
        raise NotImplementedError

    async def _api_entry(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    # ------------------------------------------------------------------ the app
    def _build_app(self, key: web.AppKey[Any]) -> web.Application:
        app = web.Application(client_max_size=self.MAX_BODY)
        app[key] = self
        self._control: dict[str, ControlHandler] = {
            **self._routes(),
            "POST reset": self._c_reset,
            "DELETE faults": self._c_faults_clear,
            "POST clock/advance": self._c_advance,
            "POST options": self._c_options,
            "POST settle": self._c_settle,
        }
        app.router.add_route("*", "/_fake/{name:.*}", self._control_entry)
        app.router.add_route("*", "/{tail:.*}", self._api_entry)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.pusher.close()

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve ``app`` on ``host:port`` (0: any free port) until the block ends; yields ``base_url``."""
        async with serving(self.app, host, port) as self.base_url:
            yield self.base_url

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait for in-flight deliveries (and any they trigger); False on timeout."""
        return await self.pusher.settle(timeout)

    def reset(self) -> None:
        """Forget all state, faults and logs; options go back to the ones given at construction."""
        for model in self._models():
            model.reset()
        self.pusher.reset()
        self.options.update(self._initial_options)

    # ------------------------------------------------------------------ control API
    async def _control_entry(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"].strip("/")
        handler = self._control.get(f"{request.method} {name}")
        if handler is None:
            known = sorted(self._control)
            if any(k.split(" ", 1)[1] == name for k in known):
                return json_response(
                    {"error": f"/_fake/{name}: method {request.method} not allowed"}, status=405
                )
            return json_response(
                {"error": f"unknown control endpoint /_fake/{name}; known: {known}"}, status=404
            )
        try:
            call = await ControlCall.read(request)
            result = await handler(call)
        except (ControlError, ValueError) as exc:
            return json_response({"error": f"/_fake/{name}: {exc}"}, status=400)
        self.flush_all()
        if call.body.get("wait"):
            await self.settle()
        return json_response(result)

    async def _c_reset(self, c: ControlCall) -> Json:
        self.reset()
        return {"ok": True}

    async def _c_faults_clear(self, c: ControlCall) -> Json:
        for model in self._models():
            model.faults.clear()
        return {"faults": {}}

    async def _c_advance(self, c: ControlCall) -> Json:
        return {"now": self.clock.advance(c.body.get("seconds"))}

    async def _c_options(self, c: ControlCall) -> Json:
        changed = self.options.update({k: v for k, v in c.body.items() if k != "wait"})
        return {"changed": changed, "options": self.options.to_json()}

    async def _c_settle(self, c: ControlCall) -> Json:
        return {"settled": await self.settle(c.settle_timeout()), "pending": self.pusher.pending}


def running(make: Callable[P, F]) -> Callable[P, contextlib.AbstractAsyncContextManager[F]]:
    """``running(FakeX)``: ``async with running(FakeX)(...) as fake`` builds ``FakeX(...)`` and serves it on
    127.0.0.1 on a free port (``fake.base_url``) for as long as the block lasts."""

    @contextlib.asynccontextmanager
    async def run(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[F]:
        fake = make(*args, **kwargs)
        async with fake.serve():
            yield fake

    return run
