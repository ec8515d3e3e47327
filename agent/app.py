"""The node agent's composition root: Kubernetes client, metrics, data path, HTTP server, controller.

``run_agent`` returns once ``stop`` is set and in-flight restores have recorded their state (within
``AgentSettings.shutdown_grace_s``); the command line sets ``stop`` on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging

from agent.controller.datadownloads import DataDownloadController
from agent.controller.jobs import Restorer
from agent.datapath import DataPathRestorer
from agent.kube.api import Kube
from agent.metrics import Metrics
from agent.server import HealthServer
from agent.settings import AgentSettings
from agent.storage.s3 import warm_up

log = logging.getLogger(__name__)


class Agent:
    """One agent: build with ``Agent(settings)``, then ``await agent.run(stop)``."""

    def __init__(self, settings: AgentSettings, restorer: Restorer | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.restorer: Restorer = restorer or DataPathRestorer(self.metrics, settings.repository)
        self.controller: DataDownloadController | None = None
        self.server: HealthServer | None = None
        self.started = asyncio.Event()
        """Set once the HTTP server listens and the controller runs."""

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        kube = await Kube.connect(s.kubeconfig, s.namespace)
        await warm_up()  # botocore's S3 data, parsed before the first DataDownload needs it
        try:
            self.controller = DataDownloadController(kube, s, self.restorer, self.metrics)
            controller = self.controller
            self.server = HealthServer(s.http_address, s.http_port, lambda: controller.ready, self.metrics)
            await self.server.start()
            log.info("serving /healthz, /readyz and /metrics", extra={"port": self.server.port})
            try:
                self.started.set()
                await controller.run(stop)
            finally:
                await self.server.stop()
        finally:
            await kube.aclose()
