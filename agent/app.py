"""The node agent's composition root: Kubernetes client, metrics, data path, HTTP server, and the two
controllers (DataUploads and DataDownloads) sharing the node's load limit.

``Agent.run`` returns once ``stop`` is set and in-flight transfers have recorded their state (within
``AgentSettings.shutdown_grace_s``); the command line sets ``stop`` on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile

from agent.controller.datadownloads import DataDownloadController
from agent.controller.datauploads import DataUploadController
from agent.controller.jobs import Maintainer, Restorer, Uploader
from agent.controller.load import LoadLimiter
from agent.controller.maintenance import Maintenance, while_leading
from agent.datapath import DataPathMaintainer, DataPathRestorer, DataPathUploader
from agent.errors import KubeError
from agent.kube.api import Kube
from agent.kube.events import EventRecorder
from agent.metrics import Metrics
from agent.server import HealthServer
from agent.settings import AgentSettings
from agent.storage.s3 import warm_up
from agent.velero.locations import LocationResolver

log = logging.getLogger(__name__)


class Agent:
    """One agent: build with ``Agent(settings)``, then ``await agent.run(stop)``."""

    def __init__(
        self, settings: AgentSettings, restorer: Restorer | None = None, uploader: Uploader | None = None
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.restorer: Restorer = restorer or DataPathRestorer(self.metrics, settings.repository)
        self.uploader: Uploader = uploader or DataPathUploader(self.metrics, settings.repository)
        self.maintainer: Maintainer = DataPathMaintainer(self.metrics, settings.repository)
        self.controller: DataDownloadController | None = None
        self.uploads: DataUploadController | None = None
        self.server: HealthServer | None = None
        self.started = asyncio.Event()
        """Set once the HTTP server listens and the controller runs."""

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        kube = await Kube.connect(s.kubeconfig, s.namespace)
        await warm_up()  # botocore's S3 data, parsed before the first DataDownload needs it
        try:
            load = LoadLimiter(s.concurrency)
            downloads = self.controller = DataDownloadController(kube, s, self.restorer, self.metrics, load)
            uploads = self.uploads = DataUploadController(kube, s, self.uploader, self.metrics, load)
            self.server = HealthServer(
                s.http_address, s.http_port, lambda: downloads.ready and uploads.ready, self.metrics
            )
            await self.server.start()
            log.info("serving /healthz, /readyz and /metrics", extra={"port": self.server.port})
            try:
                image = await self._own_image(kube) if not s.pod_image and s.pod_name else ""
                log.info("agent started", extra={"node": s.node_name, "namespace": s.namespace})
                self.started.set()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(downloads.run(stop, image), name="datadownloads")
                    tg.create_task(uploads.run(stop, image), name="datauploads")
                    if s.maintenance_interval_s > 0:
                        tg.create_task(self._maintain(kube, stop), name="maintenance")
                log.info("agent stopped")
            finally:
                await self.server.stop()
        finally:
            await kube.aclose()

    async def _maintain(self, kube: Kube, stop: asyncio.Event) -> None:
        """Repository maintenance (``agent.controller.maintenance``) while this agent holds its Lease."""
        s = self.settings
        with tempfile.TemporaryDirectory(prefix="ferry-maintenance-") as state_dir:  # CA bundles of locations
            maintenance = Maintenance(
                kube,
                self.maintainer,
                self.metrics,
                EventRecorder(kube, s.node_name),
                LocationResolver(kube, s.credentials_file, state_dir),
                interval_s=s.maintenance_interval_s,
                grace_s=s.maintenance_grace_s,
                datamover=s.datamover,
                watch_timeout_s=s.watch_timeout_s,
            )
            identity = f"{s.node_name}/{s.pod_name}" if s.pod_name else s.node_name
            await while_leading(kube, identity, lambda: maintenance.run(stop), stop)

    async def _own_image(self, kube: Kube) -> str:
        """The image of this agent's own container (backup and restore pods run it): the pod's first
        container. "" when it cannot be read (exposing then fails saying so)."""
        try:
            pod = await kube.get_pod(kube.namespace, self.settings.pod_name)
        except KubeError as e:
            log.warning("cannot read this agent's pod for the exposing pods' image (set FERRY_POD_IMAGE): %s", e)
            return ""
        containers = (pod.get("spec") or {}).get("containers") or []
        return str(containers[0].get("image", "")) if containers else ""
