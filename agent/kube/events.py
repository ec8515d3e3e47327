"""Kubernetes Events (core/v1): what ``kubectl describe`` shows an operator about an object.

Recording an Event never fails the work it describes: API errors are logged and dropped.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Literal

from agent.errors import KubeError
from agent.kube.api import Kube
from agent.kube.times import now, timestamp

log = logging.getLogger(__name__)

COMPONENT = "ferry-agent"


@dataclass(frozen=True)
class ObjectRef:
    """The ``involvedObject`` of an Event: which object, and which version of it, it is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class EventRecorder:
    """Events from this node's agent (``source.host``), in the involved object's namespace (the API
    server refuses an Event whose namespace differs from its object's)."""

    def __init__(self, kube: Kube, node: str) -> None:
        self._kube = kube
        self._node = node

    async def record(
        self, about: ObjectRef, reason: str, message: str, kind: Literal["Normal", "Warning"] = "Normal"
    ) -> None:
        stamp = timestamp(now())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{about.name}.{uuid.uuid4().hex[:16]}", "namespace": about.namespace},
            "involvedObject": {
                "apiVersion": about.api_version,
                "kind": about.kind,
                "name": about.name,
                "namespace": about.namespace,
                "uid": about.uid,
                "resourceVersion": about.resource_version,
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
            await self._kube.create_event(about.namespace, event)
        except KubeError as e:
            log.warning("could not record event %s: %s", reason, e, extra={"object": about.key})
