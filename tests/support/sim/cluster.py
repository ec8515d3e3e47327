"""``SimCluster``: the simulated controllers' lifecycle, their event-driven loops, and the test helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

from tests.support.kube import KubeError, KubeServer

from .kubelet import Kubelet
from .namespaces import NamespaceController
from .objects import HOSTNAME, Obj, claim_names, event, meta, spec
from .scheduler import Scheduler
from .snapshots import API_VERSION as SNAPSHOT_API_VERSION
from .snapshots import DEFAULT_CLASS, VSCLASS, SnapshotController, Snapshotter, Storage
from .storage import Binder, Protection, Provisioner


class Controller(Protocol):
    name: str

    async def step(self) -> None: ...


class SimCluster:
    """Simulated nodes, scheduler, kubelets and storage controllers over a :class:`KubeServer` (see the
    package docstring). Use as ``async with SimCluster(kube, root, ["node-a", "node-b"]) as sim:``."""

    PROVISIONER = "csi.ferry.test"

    def __init__(self, kube: KubeServer, root: Path, nodes: Sequence[str]) -> None:
        if not nodes or len(set(nodes)) != len(nodes):
            raise ValueError(f"nodes must be distinct and at least one: {nodes}")
        self.kube = kube
        self.root = Path(root)
        self.nodes = list(nodes)
        self.in_use: dict[str, str] = {}  # PV name -> uid of the pod that has it mounted
        self.failed_images: set[str] = set()
        self.failed_pods: dict[tuple[str, str], str] = {}
        self.kubelets = {node: Kubelet(self, node) for node in self.nodes}
        self.snapshot_storage = Storage(self.root)
        self.snapshots_paused = False
        self.serves_snapshots = any(t.plural == "volumesnapshots" for t in kube.types)
        self._controllers: list[Controller] = [
            Binder(self),
            Provisioner(self),
            Protection(self),
            Scheduler(self),
            *self.kubelets.values(),
            SnapshotController(self),
            Snapshotter(self),
            NamespaceController(self),
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._idle: dict[str, tuple[int, int] | None] = {}  # controller -> the version it last had nothing to do at
        self._pokes = 0
        self._progress = asyncio.Event()
        self._failure: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> SimCluster:
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        self.snapshot_storage.data.mkdir(parents=True, exist_ok=True)
        for index, node in enumerate(self.nodes):
            (self.kubelet_root(node) / "pods").mkdir(parents=True, exist_ok=True)
            if self.kube.get("nodes", node) is None:
                self.kube.create("nodes", _node(node, index))
        for controller in self._controllers:
            task = asyncio.create_task(self._run(controller), name=f"sim {controller.name}")
            task.add_done_callback(self._finished)
            self._tasks.append(task)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for kubelet in self.kubelets.values():
                kubelet.unmount_all()
        if self._failure is not None and exc is None:
            raise RuntimeError("a simulated controller failed") from self._failure

    def _finished(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failure = task.exception()
            self._progress.set()

    def _version(self) -> tuple[int, int]:
        return self.kube.store.resource_version, self._pokes

    async def _run(self, controller: Controller) -> None:
        """Run ``controller.step`` after every write to the store (and every :meth:`_poke`), never polling."""
        while True:
            changed = self.kube.store.next_change()
            before = self._version()
            await controller.step()
            self._idle[controller.name] = before if self._version() == before else None
            self._progress.set()
            self._progress = asyncio.Event()
            await changed.wait()

    def _poke(self) -> None:
        """A change outside the store (a failure to inject): wake every controller."""
        self._pokes += 1
        self.kube.store.signal()

    async def settled(self, timeout: float = 10.0) -> None:
        """Return once every controller has made a pass over the current state without writing anything."""
        async with asyncio.timeout(timeout):
            while True:
                if self._failure is not None:
                    raise RuntimeError("a simulated controller failed") from self._failure
                progress, version = self._progress, self._version()
                if all(self._idle.get(c.name) == version for c in self._controllers):
                    return
                await progress.wait()

    # -- setup and fault injection -------------------------------------------------------------
    def kubelet_root(self, node: str) -> Path:
        """The node's own kubelet root (``root/<node>/kubelet``), with ``pods/<uid>/...`` beneath it."""
        return self.root / node / "kubelet"

    def add_storage_class(
        self,
        name: str,
        *,
        binding: Literal["Immediate", "WaitForFirstConsumer"] = "Immediate",
        reclaim: Literal["Delete", "Retain"] = "Delete",
        provisioner: str | None = None,
    ) -> Obj:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": provisioner or self.PROVISIONER,
            "reclaimPolicy": reclaim,
            "volumeBindingMode": binding,
        }
        return self.kube.create("storageclasses", body)

    def taint(self, node: str, key: str, value: str = "", effect: str = "NoSchedule") -> None:
        found = self.kube.get("nodes", node)
        if found is None:
            raise KeyError(f"no node {node!r}")
        taints = [*(spec(found).get("taints") or []), {"key": key, "value": value, "effect": effect}]
        self.kube.patch("nodes", node, {"spec": {"taints": taints}})

    def fail_image(self, image: str) -> None:
        """Pulling ``image`` fails: pods with a container of it stay Pending in ImagePullBackOff."""
        self.failed_images.add(image)
        self._poke()

    def fail_pod(self, namespace: str, name: str, message: str = "the container exited with code 1") -> None:
        """The pod fails (phase Failed, with ``message``) once its kubelet sees it; its volumes are unmounted."""
        self.failed_pods[(namespace, name)] = message
        self._poke()

    def pause_snapshots(self) -> None:
        """The driver's CreateSnapshot calls hang: new snapshots are not cut (their contents keep the
        being-created annotation; the VolumeSnapshots stay not ready) until :meth:`resume_snapshots`."""
        self.snapshots_paused = True
        self._poke()

    def resume_snapshots(self) -> None:
        self.snapshots_paused = False
        self._poke()

    def add_snapshot_class(
        self,
        name: str,
        *,
        deletion: Literal["Delete", "Retain"] = "Delete",
        default: bool = False,
        driver: str | None = None,
    ) -> Obj:
        """A VolumeSnapshotClass of ``driver`` (default ``csi.ferry.test``); ``default`` marks it the default
        class (annotation ``snapshot.storage.kubernetes.io/is-default-class: "true"``)."""
        body: Obj = {
            "apiVersion": SNAPSHOT_API_VERSION,
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": name},
            "driver": driver or self.PROVISIONER,
            "deletionPolicy": deletion,
        }
        if default:
            body["metadata"]["annotations"] = {DEFAULT_CLASS: "true"}
        return self.kube.create(VSCLASS, body)

    def record(self, involved: Obj, reason: str, message: str, *, warning: bool = False) -> Obj | None:
        """An Event about ``involved`` (a PVC, PV, pod or node), as the controller that acts on it reports."""
        kinds = {"persistentvolumeclaims": "PersistentVolumeClaim", "persistentvolumes": "PersistentVolume"}
        kind = involved.get("kind") or kinds["persistentvolumeclaims"]
        component = "persistentvolume-controller" if reason == "ClaimLost" else f"{self.PROVISIONER}_provisioner"
        return self._create_event(event(involved, reason, message, kind=kind, component=component, warning=warning))

    def event(
        self, involved: Obj, reason: str, message: str, *, api_version: str, component: str, warning: bool = False
    ) -> Obj | None:
        """An Event about ``involved`` (an object of ``api_version``, its ``kind`` set) from ``component``."""
        body = event(involved, reason, message, kind=involved["kind"], component=component, warning=warning)
        body["involvedObject"]["apiVersion"] = api_version
        return self._create_event(body)

    def _create_event(self, body: Obj) -> Obj | None:
        """Event recorders do not fail their controller: an Event refused (its namespace terminating or gone)
        is dropped, as a real recorder drops it after logging."""
        try:
            return self.kube.create("events", body)
        except KubeError as error:
            if error.code in (403, 404):
                return None
            raise

    # -- observing -----------------------------------------------------------------------------
    def backing(self, pv: str) -> Path:
        """Where the provisioner keeps the PV's data while no pod mounts it: ``root/storage/<pv>`` (a directory,
        or for Block a sparse image file)."""
        return self.root / "storage" / pv

    def storage_snapshots(self) -> set[str]:
        """The handles of the snapshots that exist in the driver's storage (``root/snapshots/<handle>``)."""
        return self.snapshot_storage.handles()

    def snapshot_data(self, handle: str) -> Path:
        """The storage snapshot's data: ``root/snapshots/<handle>`` (a directory tree, or a Block image)."""
        return self.snapshot_storage.path(handle)

    def volume_data(self, pv: str) -> Path | None:
        """Where the PV's data is now: its backing storage, or (a Filesystem volume a pod mounts) the kubelet's
        mount directory it was moved into; None if it has none."""
        backing = self.backing(pv)
        if backing.exists():
            return backing
        for kubelet in self.kubelets.values():
            for mounts in kubelet.mounts.values():
                for mount in mounts:
                    if mount.pv == pv and mount.device is None and mount.path.exists():
                        return mount.path
        return None

    def pod_volume(self, namespace: str, pod: str, claim: str) -> Path:
        """The path where the kubelet put ``claim`` for this pod: the ``mount`` directory, or the device link."""
        found = self.kube.get("pods", pod, namespace)
        if found is None:
            raise LookupError(f"no pod {namespace}/{pod}")
        if claim not in claim_names(found):
            raise LookupError(f"pod {namespace}/{pod} has no volume of claim {claim!r}")
        kubelet = self.kubelets.get(spec(found).get("nodeName") or "")
        mounts = kubelet.mounts.get(meta(found)["uid"], []) if kubelet is not None else []
        for mount in mounts:
            if mount.claim == claim:
                return mount.path
        raise LookupError(f"claim {claim!r} is not mounted for pod {namespace}/{pod}")


def _node(name: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {HOSTNAME: name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
        },
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.0.{index + 1}"},
                {"type": "Hostname", "address": name},
            ],
        },
    }
