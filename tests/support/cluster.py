"""A cluster for the agent's tests: the strict API server plus a helper that plays Velero, the PV binder,
the scheduler and the kubelet (creating PVs, bound PVCs, running pods and the kubelet's volume layout in
a temporary kubelet root), and a way to run agents in-process against it."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent
from agent.controller.jobs import Notice, Progress, RestoreJob, Restorer
from agent.settings import AgentSettings
from tests.support.faulty_proxy import FaultyProxy
from tests.support.kube import KubeServer
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY

NS = "velero"
REPOSITORY_PASSWORD = b"test repository password"
"""The password of Velero's repositories in the simulated clusters (not Velero's default)."""
Obj = dict[str, Any]


def credentials_ini(access: str = ACCESS_KEY, secret: str = SECRET_KEY, profile: str = "default") -> str:
    return f"[{profile}]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"


@dataclass
class Cluster:
    kube: KubeServer
    kubelet_root: Path
    kubeconfig: Path
    bucket: str = ""
    endpoint: str = ""

    def ensure_namespace(self, name: str) -> None:
        if self.kube.get("namespaces", name) is None:
            self.kube.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # --- Velero's side ---------------------------------------------------------------------------------

    def add_repository_secret(self, password: bytes = REPOSITORY_PASSWORD) -> None:
        """The Secret Velero's server makes at start (``velero-repo-credentials``): its repositories'
        password, which Ferry's use too."""
        data = {"repository-password": base64.b64encode(password).decode()}
        self.kube.create(
            "secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "velero-repo-credentials", "namespace": NS},
                "data": data,
            },
            namespace=NS,
        )

    def add_credentials_secret(self, name: str = "ferry-credentials", key: str = "cloud", text: str = "") -> None:
        data = {key: base64.b64encode((text or credentials_ini()).encode()).decode()}
        self.kube.create(
            "secrets",
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data},
            namespace=NS,
        )

    def add_bsl(
        self,
        name: str = "default",
        *,
        provider: str = "aws",
        prefix: str = "backups",
        config: dict[str, str] | None = None,
        credential: dict[str, str] | None = None,
        endpoint: str | None = None,
    ) -> None:
        spec: Obj = {
            "provider": provider,
            "objectStorage": {"bucket": self.bucket, "prefix": prefix},
            "config": {"region": "us-east-1", "s3ForcePathStyle": "true", "s3Url": endpoint or self.endpoint}
            | (config or {}),
        }
        if credential is not None:
            spec["credential"] = credential
        if self.kube.get("secrets", "velero-repo-credentials", namespace=NS) is None:
            self.add_repository_secret()  # Velero's server makes it at start: there is one wherever a BSL is
        self.kube.create(
            "backupstoragelocations",
            {
                "apiVersion": "velero.io/v1",
                "kind": "BackupStorageLocation",
                "metadata": {"name": name, "namespace": NS},
                "spec": spec,
            },
            namespace=NS,
        )

    def create_dd(
        self,
        name: str,
        snapshot_id: str,
        pvc: str,
        *,
        target_namespace: str = "app",
        source_namespace: str = "app",
        datamover: str = "ferry",
        timeout: str = "5m0s",
        bsl: str = "default",
        config: dict[str, str] | None = None,
        status: Obj | None = None,
        in_place: bool = True,
    ) -> Obj:
        """A DataDownload as a user writes one by hand: by default restoring in place (``ferry.inPlace``)
        into ``pvc``, mounted by a running pod (``add_volume``)."""
        spec: Obj = {
            "backupStorageLocation": bsl,
            "datamover": datamover,
            "operationTimeout": timeout,
            "snapshotID": snapshot_id,
            "sourceNamespace": source_namespace,
            "targetVolume": {"namespace": target_namespace, "pvc": pvc, "pv": ""},
        }
        mover_config = ({"ferry.inPlace": "true"} if in_place else {}) | (config or {})
        if mover_config:
            spec["dataMoverConfig"] = mover_config
        obj: Obj = {
            "apiVersion": "velero.io/v2alpha1",
            "kind": "DataDownload",
            "metadata": {"name": name, "namespace": NS, "labels": {"velero.io/async-operation-id": f"dd-{name}"}},
            "spec": spec,
        }
        if status is not None:
            obj["status"] = status
        return self.kube.create("datadownloads", obj, namespace=NS)

    def dd(self, name: str) -> Obj:
        found = self.kube.get("datadownloads", name, namespace=NS)
        assert found is not None, f"datadownload {name} is gone"
        return found

    async def wait_phase(self, name: str, *phases: str, timeout: float = 30.0) -> Obj:
        return await self.kube.wait_for(
            "datadownloads",
            name,
            NS,
            lambda obj: obj is not None and (obj.get("status") or {}).get("phase") in phases,
            timeout=timeout,
        )

    async def wait_phase_of(self, plural: str, name: str, *phases: str, timeout: float = 30.0) -> Obj:
        """``wait_phase`` for an object of ``plural`` (``datauploads``)."""
        return await self.kube.wait_for(
            plural,
            name,
            NS,
            lambda obj: obj is not None and (obj.get("status") or {}).get("phase") in phases,
            timeout=timeout,
        )

    def phase_of(self, plural: str, name: str) -> str:
        """The object's phase now ("New" when it has none)."""
        found = self.kube.get(plural, name, namespace=NS)
        assert found is not None, f"{plural} {name} is gone"
        return str((found.get("status") or {}).get("phase") or "New")

    def phases(self, name: str, plural: str = "datadownloads") -> list[str]:
        """The distinct phases the object went through, in order."""
        seen: list[str] = []
        for revision in self.kube.history(plural, name, NS):
            if revision.deleted:
                continue
            phase = (revision.object.get("status") or {}).get("phase") or "New"
            if not seen or seen[-1] != phase:
                seen.append(phase)
        return seen

    def events_for(self, name: str) -> list[Obj]:
        """Events about the DataDownload, oldest first (our server's resourceVersions count up)."""
        found = [e for e in self.kube.list("events", namespace=NS) if e["involvedObject"]["name"] == name]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    # --- the binder, scheduler and kubelet -------------------------------------------------------------

    def add_volume(
        self,
        namespace: str,
        pvc: str,
        nodes: list[str],
        *,
        mode: str = "Filesystem",
        device: str | None = None,
        plugin: str = "csi",
    ) -> list[Path]:
        """A PV, a PVC bound to it, and on each node a running pod mounting it with the kubelet's layout
        in place. Returns the volume's path on each node (a directory, or a link to ``device``)."""
        self.ensure_namespace(namespace)
        pv = f"pvc-{uuid.uuid4().hex[:12]}"
        source: Obj = {
            "csi": {"csi": {"driver": "test.csi.ferry.dev", "volumeHandle": pv}},
            "local": {"local": {"path": f"/mnt/disks/{pv}"}},
            "nfs": {"nfs": {"server": "nfs.example", "path": "/export"}},
        }[plugin]
        self.kube.create(
            "persistentvolumes",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "volumeMode": mode} | source,
            },
        )
        self.kube.create(
            "persistentvolumeclaims",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc, "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteMany"], "volumeName": pv, "volumeMode": mode},
                "status": {"phase": "Bound"},
            },
            namespace=namespace,
        )
        paths = []
        for node in nodes:
            pod = self.kube.create(
                "pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"{pvc}-{node}", "namespace": namespace},
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "app", "image": "busybox"}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": pvc}}],
                    },
                    "status": {"phase": "Running"},
                },
                namespace=namespace,
            )
            base = self.kubelet_root / "pods" / pod["metadata"]["uid"]
            folder = {"csi": "kubernetes.io~csi", "local": "kubernetes.io~local-volume", "nfs": "kubernetes.io~nfs"}
            if mode == "Block":
                assert device is not None
                link = base / "volumeDevices" / folder[plugin] / pv
                link.parent.mkdir(parents=True)
                os.symlink(device, link)
                paths.append(link)
            else:
                path = base / "volumes" / folder[plugin] / pv
                if plugin == "csi":
                    path = path / "mount"
                path.mkdir(parents=True)
                paths.append(path)
        return paths


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text output (``name`` includes a ``_total`` suffix where it has one)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError(f"no sample {name}{labels}")


def agent_settings(cluster: Cluster, node: str, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "node_name": node,
        "kubeconfig": str(cluster.kubeconfig),
        "kubelet_root": str(cluster.kubelet_root),
        "http_address": "127.0.0.1",
        "http_port": 0,
        "progress_interval_s": 0.05,
        "volume_poll_interval_s": 0.05,
        "shutdown_grace_s": 5.0,
        "credentials_file": str(cluster.kubelet_root.parent / f"no-credentials-{node}"),
        # Repository maintenance only where a test asks for it (tests/test_velero_maintenance.py).
        "maintenance_interval_s": 0.0,
    }
    values.update(overrides)
    return AgentSettings(**values)


@dataclass
class CountingRestorer:
    """The real data path, counting the restores it runs (per DataDownload) and the nodes they ran on."""

    inner: Restorer
    node: str
    runs: dict[str, list[str]] = field(default_factory=dict)

    async def __call__(self, job: RestoreJob, progress: Progress, notice: Notice, stopping: asyncio.Event) -> None:
        self.runs.setdefault(job.key, []).append(self.node)
        await self.inner(job, progress, notice, stopping)


@asynccontextmanager
async def running_agent(
    settings: AgentSettings, wrap: Callable[[Restorer], Restorer] | None = None
) -> AsyncIterator[Agent]:
    """An agent running in this event loop, watching before the body starts; stopped (SIGTERM's path) after.
    ``wrap`` may wrap the agent's real data path (e.g. to count restores)."""
    async with killable_agent(settings, wrap) as handle:
        yield handle.agent


async def start_held_restore(
    cluster: Cluster, proxy: FaultyProxy, name: str, snapshot_id: str, bsl: str, **dd: Any
) -> None:
    """Create DataDownload ``name`` (PVC ``data``) whose restore's reads ``proxy`` holds; return once it is
    InProgress and a read is being held."""
    proxy.stall_ranged = True
    cluster.create_dd(name, snapshot_id, "data", bsl=bsl, **dd)
    await cluster.wait_phase(name, "InProgress", timeout=60)
    async with asyncio.timeout(30):
        await proxy.holding.wait()


@dataclass
class Killable:
    """An in-process agent that can be killed as SIGKILL would: its task is cancelled mid-step, no shutdown
    path runs, and whatever it had written stays as it was."""

    agent: Agent
    task: asyncio.Task[None]

    async def kill(self) -> None:
        self.task.cancel()
        async with asyncio.timeout(30):
            await asyncio.wait([self.task])


@asynccontextmanager
async def killable_agent(
    settings: AgentSettings, wrap: Callable[[Restorer], Restorer] | None = None
) -> AsyncIterator[Killable]:
    """An agent running in this event loop, watching before the body starts, that can be ``kill()``-ed; stopped
    (SIGTERM's path) at the end if still alive. ``wrap`` may wrap its real data path."""
    agent = Agent(settings)
    if wrap is not None:
        agent.restorer = wrap(agent.restorer)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name=f"agent {settings.node_name}")
    handle = Killable(agent, task)
    try:
        async with asyncio.timeout(15):
            await agent.started.wait()
            assert agent.controller is not None
            assert agent.uploads is not None
            await agent.controller.watcher.opened.wait()
            await agent.uploads.watcher.opened.wait()
        yield handle
    finally:
        stop.set()
        if not task.done():
            async with asyncio.timeout(settings.shutdown_grace_s + 10):
                await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
