"""The agent's HTTP endpoints: /healthz (the event loop answers), /readyz (the DataDownload watch is
established) and /metrics (Prometheus text format)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from agent.metrics import CONTENT_TYPE, Metrics


class HealthServer:
    def __init__(self, address: str, port: int, ready: Callable[[], bool], metrics: Metrics) -> None:
        self._address = address
        self._port = port
        self._ready = ready
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = port
        """The bound port (differs from the setting when that is 0)."""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._address, self._port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: the DataDownload watch is not established\n")

    async def _scrape(self, request: web.Request) -> web.Response:
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
