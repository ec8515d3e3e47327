"""Kubernetes Events (core/v1) on DataDownloads: what ``kubectl describe`` shows an operator.

Recording an Event never fails the work it describes: API errors are logged and dropped.
"""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from agent.controller.kube import DD_VERSION, GROUP, Kube
from agent.controller.objects import DataDownload, now, timestamp
from agent.errors import KubeError

log = logging.getLogger(__name__)

COMPONENT = "ferry-agent"


class EventRecorder:
    def __init__(self, kube: Kube, node: str) -> None:
        self._kube = kube
        self._node = node

    async def record(
        self, dd: DataDownload, reason: str, message: str, kind: Literal["Normal", "Warning"] = "Normal"
    ) -> None:
        stamp = timestamp(now())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{dd.name}.{uuid.uuid4().hex[:16]}", "namespace": dd.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{DD_VERSION}",
                "kind": "DataDownload",
                "name": dd.name,
                "namespace": dd.namespace,
                "uid": dd.uid,
                "resourceVersion": dd.resource_version,
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": COMPONENT, "host": self._node},
            "reportingComponent": COMPONENT,
            "reportingInstance": f"{COMPONENT}-{self._node}",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self._kube.create_event(event)
        except KubeError as e:
            log.warning("could not record event %s: %s", reason, e, extra={"datadownload": dd.key})
