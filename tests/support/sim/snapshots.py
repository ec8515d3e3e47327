"""CSI snapshots: external-snapshotter's snapshot-controller (the common controller) and the csi-snapshotter
sidecar with the snapshot side of the ``csi.ferry.test`` driver, plus what the CSI provisioner needs to
provision a volume from a VolumeSnapshot. See the package docstring for the rules.

Storage: a snapshot ``<handle>`` is ``root/snapshots/<handle>`` (a copy of the volume's directory tree, or
of its image file for Block), with its size and creation time in ``root/snapshot-meta/<handle>.json``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.kube import KubeError
from tests.support.kube.meta import now_rfc3339

from .objects import (
    Obj,
    annotations_of,
    meta,
    phase,
    quantity,
    requested_storage,
    spec,
    status,
    terminating,
    volume_mode,
)

if TYPE_CHECKING:
    from .cluster import SimCluster

GROUP = "snapshot.storage.k8s.io"
API_VERSION = f"{GROUP}/v1"
VS, VSC, VSCLASS = "volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses"
PVC, PV = "persistentvolumeclaims", "persistentvolumes"

AS_SOURCE = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
BOUND = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
CONTENT_BOUND = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
PVC_AS_SOURCE = "snapshot.storage.kubernetes.io/pvc-as-source-protection"
BEING_DELETED = "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"
BEING_CREATED = "snapshot.storage.kubernetes.io/volumesnapshot-being-created"
DEFAULT_CLASS = "snapshot.storage.kubernetes.io/is-default-class"
ALLOW_MODE_CHANGE = "snapshot.storage.kubernetes.io/allow-volume-mode-change"

CONTROLLER = "snapshot-controller"


def content_name(snapshot: Obj) -> str:
    """The name the snapshot-controller gives the content of a dynamic snapshot."""
    return f"snapcontent-{meta(snapshot)['uid']}"


def is_ready(snapshot: Obj) -> bool:
    return status(snapshot).get("readyToUse") is True


def binary_quantity(size: int) -> str:
    """A byte count as Kubernetes prints a BinarySI quantity: ``64Mi``, ``1Gi``, ``1536``."""
    for suffix, power in (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if size and size % 2**power == 0:
            return f"{size // 2**power}{suffix}"
    return str(size)


def _rfc3339_from_ns(nanoseconds: int) -> str:
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref_names(content: Obj, snapshot: Obj) -> bool:
    """The content's volumeSnapshotRef names this snapshot (namespace/name, and no uid or its uid)."""
    ref = spec(content).get("volumeSnapshotRef") or {}
    m = meta(snapshot)
    same = (ref.get("namespace"), ref.get("name")) == (m["namespace"], m["name"])
    return same and ref.get("uid", "") in ("", m["uid"])


def _bound_both_ways(content: Obj, snapshot: Obj) -> bool:
    ref = spec(content).get("volumeSnapshotRef") or {}
    return _ref_names(content, snapshot) and ref.get("uid") == meta(snapshot)["uid"]


def _copy(source: Path, target: Path) -> None:
    """Copy a directory tree (hard links, owners, modes, times, xattrs kept) or a sparse image file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    args = ["cp", "-a", "--sparse=always", "--", str(source), str(target)]
    subprocess.run(args, check=True, capture_output=True, timeout=300)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class Storage:
    """The driver's snapshot store under ``root/snapshots``."""

    def __init__(self, root: Path) -> None:
        self.data = root / "snapshots"
        self.meta = root / "snapshot-meta"

    def path(self, handle: str) -> Path:
        return self.data / handle

    def handles(self) -> set[str]:
        return {p.name for p in self.data.iterdir()} if self.data.is_dir() else set()

    def info(self, handle: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads((self.meta / f"{handle}.json").read_text())
        except FileNotFoundError:
            return None
        return found if self.path(handle).exists() else None

    def cut(self, handle: str, source: Path, size: int, mode: str) -> dict[str, Any]:
        self.meta.mkdir(parents=True, exist_ok=True)
        _remove(self.path(handle))
        _copy(source, self.path(handle))
        info = {"size": size, "created": time.time_ns(), "mode": mode}
        (self.meta / f"{handle}.json").write_text(json.dumps(info))
        return info

    def delete(self, handle: str) -> None:
        _remove(self.path(handle))
        (self.meta / f"{handle}.json").unlink(missing_ok=True)


class Refused(Exception):
    """Why the provisioner cannot provision a claim from its data source (yet)."""


def restore_source(sim: SimCluster, claim: Obj) -> tuple[Path, int] | None:
    """Where the data of a claim's VolumeSnapshot data source is, and its restore size; None when the claim
    has no data source. Raises :class:`Refused` (with the external-provisioner's words) when it cannot be
    provisioned from it now: the snapshot missing, not ready, being deleted, of another driver, bigger
    than the request, or of another volume mode."""
    source = spec(claim).get("dataSource") or spec(claim).get("dataSourceRef")
    if not source:
        return None
    kind, group, name = source.get("kind"), source.get("apiGroup") or "", source.get("name", "")
    if (kind, group) != ("VolumeSnapshot", GROUP):
        raise Refused(f"data source {group}/{kind} is not modelled by the simulated driver (only VolumeSnapshot)")
    where = f"error getting handle for DataSource Type VolumeSnapshot by Name {name}: "
    namespace = meta(claim)["namespace"]
    snapshot = sim.kube.get(VS, name, namespace) if sim.serves_snapshots else None
    if snapshot is None:
        raise Refused(where + f'error getting snapshot {name} from api server: {VS}.{GROUP} "{name}" not found')
    if terminating(snapshot):
        raise Refused(where + f"snapshot {name} is currently being deleted")
    if not is_ready(snapshot):
        raise Refused(where + f"snapshot {name} is not Ready")
    bound = status(snapshot).get("boundVolumeSnapshotContentName") or ""
    content = sim.kube.get(VSC, bound) if bound else None
    if content is None:
        raise Refused(where + f"error getting snapshot content {bound} from api server: not found")
    if not _bound_both_ways(content, snapshot):
        raise Refused(where + f"snapshot {namespace}/{name} content {bound} is not bound to it")
    if spec(content).get("driver") != sim.PROVISIONER:
        raise Refused(where + f"snapshot {name} is not from the driver {sim.PROVISIONER}")
    handle = status(content).get("snapshotHandle") or ""
    info = sim.snapshot_storage.info(handle) if handle else None
    if info is None:
        raise Refused(where + f"snapshot {handle!r} of content {bound} does not exist in storage")
    size = int(status(content).get("restoreSize") or info["size"])
    requested = quantity(requested_storage(claim) or "1Gi")
    if requested < size:
        raise Refused(f"requested volume size {requested} is less than the size {size} for the source snapshot {name}")
    source_mode = spec(content).get("sourceVolumeMode")
    if source_mode and source_mode != volume_mode(claim) and annotations_of(content).get(ALLOW_MODE_CHANGE) != "true":
        raise Refused(
            f"requested volume {namespace}/{meta(claim)['name']} modifies the mode of the source volume but does"
            f" not have permission to do so. {ALLOW_MODE_CHANGE} annotation is not present on snapshotcontent"
            f" {bound}"
        )
    if info["mode"] != volume_mode(claim):
        raise Refused(f"volume mode conversion ({info['mode']} to {volume_mode(claim)}) is not modelled")
    return sim.snapshot_storage.path(handle), size


class SnapshotController:
    """external-snapshotter's snapshot-controller: binds VolumeSnapshots and contents, creates the contents of
    dynamic snapshots, manages the finalizers, and carries deletions from a snapshot to its content."""

    name = CONTROLLER

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self._warned: set[tuple[str, str]] = set()  # (uid, reason) of the one-off events

    async def step(self) -> None:
        if not self.sim.serves_snapshots:
            return
        kube = self.sim.kube
        for snapshot in kube.list(VS):
            self._sync_snapshot(snapshot)
        for content in kube.list(VSC):
            self._sync_content(content)
        self._release_claims()

    # -- events and errors ---------------------------------------------------------------------
    def _event(self, snapshot: Obj, reason: str, message: str, *, warning: bool = False, once: bool = False) -> None:
        if once:
            if (meta(snapshot)["uid"], reason) in self._warned:
                return
            self._warned.add((meta(snapshot)["uid"], reason))
        self.sim.event(snapshot, reason, message, api_version=API_VERSION, component=CONTROLLER, warning=warning)

    def _error(self, snapshot: Obj, reason: str, message: str) -> None:
        """The snapshot's ``status.error`` (readyToUse false) and a Warning event, once per message."""
        current = status(snapshot).get("error") or {}
        if current.get("message") == message:
            return
        new = {**status(snapshot), "readyToUse": False, "error": {"message": message, "time": now_rfc3339()}}
        m = meta(snapshot)
        self.sim.kube.patch(VS, m["name"], {"status": new}, m["namespace"])
        self._event(snapshot, reason, message, warning=True)

    # -- snapshots -----------------------------------------------------------------------------
    def _sync_snapshot(self, snapshot: Obj) -> None:
        if terminating(snapshot):
            self._delete_snapshot(snapshot)
            return
        source = spec(snapshot).get("source") or {}
        if source.get("persistentVolumeClaimName") and not spec(snapshot).get("volumeSnapshotClassName"):
            self._set_default_class(snapshot)
            return
        usable, content = self._content_for(snapshot)
        if not usable:
            return
        snapshot = self._add_finalizers(snapshot, content)
        if is_ready(snapshot) and status(snapshot).get("boundVolumeSnapshotContentName"):
            self._sync_ready(snapshot)
        elif source.get("volumeSnapshotContentName"):
            self._bind_static(snapshot, content)
        elif content is not None:
            self._update_status(snapshot, content)
        else:
            self._create_content(snapshot)

    def _content_for(self, snapshot: Obj) -> tuple[bool, Obj | None]:
        """(True, the snapshot's content or None when there is none yet), or (False, None) when the content
        it would bind is not its own (an error status then says why)."""
        source = spec(snapshot).get("source") or {}
        static = source.get("volumeSnapshotContentName")
        name = static or content_name(snapshot)
        content = self.sim.kube.get(VSC, name)
        if content is None:
            return True, None
        content_source = spec(content).get("source") or {}
        if static and not content_source.get("snapshotHandle"):
            message = "VolumeSnapshotContent is dynamically provisioned while expecting a pre-provisioned one"
            self._error(snapshot, "SnapshotContentMismatch", message)
            return False, None
        if not static and not content_source.get("volumeHandle"):
            message = f"VolumeSnapshotContent {name} is pre-provisioned while expecting a dynamically provisioned one"
            self._error(snapshot, "SnapshotContentMismatch", message)
            return False, None
        if not (_ref_names(content, snapshot) if static else _bound_both_ways(content, snapshot)):
            message = f"VolumeSnapshotContent [{name}] is bound to a different snapshot"
            self._error(snapshot, "SnapshotContentMisbound", message)
            return False, None
        return True, content

    def _set_default_class(self, snapshot: Obj) -> None:
        kube, m = self.sim.kube, meta(snapshot)
        volume, why = self._volume_of(snapshot)
        if volume is None:
            self._error(
                snapshot, "SetDefaultSnapshotClassFailed", f"Failed to set default snapshot class with error {why}"
            )
            return
        driver = (spec(volume).get("csi") or {}).get("driver")
        defaults = [
            c
            for c in kube.list(VSCLASS)
            if c.get("driver") == driver and annotations_of(c).get(DEFAULT_CLASS) == "true"
        ]
        if len(defaults) != 1:
            why = (
                "cannot find default snapshot class"
                if not defaults
                else f"{len(defaults)} default snapshot classes were found"
            )
            self._error(
                snapshot, "SetDefaultSnapshotClassFailed", f"Failed to set default snapshot class with error {why}"
            )
            return
        kube.patch(VS, m["name"], {"spec": {"volumeSnapshotClassName": meta(defaults[0])["name"]}}, m["namespace"])

    def _volume_of(self, snapshot: Obj) -> tuple[Obj | None, str]:
        """The PV bound to the snapshot's source claim, or None and why not."""
        kube, m = self.sim.kube, meta(snapshot)
        claim_name = (spec(snapshot).get("source") or {}).get("persistentVolumeClaimName") or ""
        claim = kube.get(PVC, claim_name, m["namespace"])
        if claim is None:
            return None, f'failed to retrieve PVC {claim_name} from the lister: {PVC} "{claim_name}" not found'
        if phase(claim) != "Bound":
            return None, f"the PVC {claim_name} is not yet bound to a PV, will not attempt to take a snapshot"
        volume_name = spec(claim).get("volumeName") or ""
        volume = kube.get(PV, volume_name)
        if volume is None:
            return None, f'failed to retrieve PV {volume_name} from the API server: {PV} "{volume_name}" not found'
        if (spec(volume).get("claimRef") or {}).get("uid") != meta(claim)["uid"]:
            return None, f"the PVC {claim_name} is not bound to the PV {volume_name}"
        return volume, ""

    def _add_finalizers(self, snapshot: Obj, content: Obj | None) -> Obj:
        finalizers = list(meta(snapshot).get("finalizers") or [])
        wanted = list(finalizers)
        if AS_SOURCE not in wanted:
            wanted.append(AS_SOURCE)
        bound = status(snapshot).get("boundVolumeSnapshotContentName")
        if content is not None and bound and spec(content).get("deletionPolicy") == "Delete" and BOUND not in wanted:
            wanted.append(BOUND)
        if wanted == finalizers:
            return snapshot
        m = meta(snapshot)
        return self.sim.kube.patch(VS, m["name"], {"metadata": {"finalizers": wanted}}, m["namespace"])

    def _sync_ready(self, snapshot: Obj) -> None:
        bound = status(snapshot)["boundVolumeSnapshotContentName"]
        content = self.sim.kube.get(VSC, bound)
        if content is None:
            self._error(snapshot, "SnapshotContentMissing", "VolumeSnapshotContent is missing")
        elif not _bound_both_ways(content, snapshot):
            self._error(
                snapshot, "SnapshotMisbound", "VolumeSnapshotContent is not bound to the VolumeSnapshot correctly"
            )

    def _bind_static(self, snapshot: Obj, content: Obj | None) -> None:
        if content is None:
            self._error(snapshot, "SnapshotContentMissing", "VolumeSnapshotContent is missing")
            return
        ref = spec(content).get("volumeSnapshotRef") or {}
        class_name = spec(snapshot).get("volumeSnapshotClassName")
        if not ref.get("uid") or (class_name and spec(content).get("volumeSnapshotClassName") != class_name):
            patch: Obj = {"spec": {"volumeSnapshotRef": {**ref, "uid": meta(snapshot)["uid"]}}}
            if class_name:
                patch["spec"]["volumeSnapshotClassName"] = class_name
            content = self.sim.kube.patch(VSC, meta(content)["name"], patch)
        self._update_status(snapshot, content)

    def _create_content(self, snapshot: Obj) -> None:
        kube, m = self.sim.kube, meta(snapshot)
        claim_name = (spec(snapshot).get("source") or {}).get("persistentVolumeClaimName") or ""
        claim = kube.get(PVC, claim_name, m["namespace"])
        failed = "Failed to create snapshot content with error "
        if claim is None:
            self._error(snapshot, "SnapshotContentCreationFailed", failed + "cannot get claim from snapshot")
            return
        if PVC_AS_SOURCE not in (meta(claim).get("finalizers") or []):
            if terminating(claim):
                why = "cannot add finalizer on claim because it is being deleted"
                self._error(snapshot, "SnapshotContentCreationFailed", failed + why)
                return
            finalizers = [*(meta(claim).get("finalizers") or []), PVC_AS_SOURCE]
            kube.patch(PVC, claim_name, {"metadata": {"finalizers": finalizers}}, m["namespace"])
        class_name = spec(snapshot)["volumeSnapshotClassName"]
        snapshot_class = kube.get(VSCLASS, class_name)
        inputs = f"failed to get input parameters to create snapshot {m['name']}: "
        if snapshot_class is None:
            why = f'failed to retrieve snapshot class {class_name}: {VSCLASS}.{GROUP} "{class_name}" not found'
            self._error(snapshot, "SnapshotContentCreationFailed", failed + inputs + why)
            return
        volume, why = self._volume_of(snapshot)
        if volume is None:
            self._error(snapshot, "SnapshotContentCreationFailed", failed + inputs + why)
            return
        csi = spec(volume).get("csi")
        if not csi:
            why = f"cannot find CSI PersistentVolumeSource for volume {meta(volume)['name']}"
            self._error(snapshot, "SnapshotContentCreationFailed", failed + why)
            return
        content_spec: Obj = {
            "volumeSnapshotRef": {
                "kind": "VolumeSnapshot",
                "apiVersion": API_VERSION,
                "namespace": m["namespace"],
                "name": m["name"],
                "uid": m["uid"],
                "resourceVersion": m["resourceVersion"],
            },
            "source": {"volumeHandle": csi["volumeHandle"]},
            "volumeSnapshotClassName": class_name,
            "deletionPolicy": snapshot_class["deletionPolicy"],
            "driver": snapshot_class["driver"],
        }
        if spec(volume).get("volumeMode"):
            content_spec["sourceVolumeMode"] = spec(volume)["volumeMode"]
        body = {
            "apiVersion": API_VERSION,
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": content_name(snapshot)},
        }
        content = kube.create(VSC, {**body, "spec": content_spec})
        message = f"Waiting for a snapshot {m['namespace']}/{m['name']} to be created by the CSI driver."
        self._event(snapshot, "CreatingSnapshot", message)
        self._update_status(snapshot, content)

    def _update_status(self, snapshot: Obj, content: Obj) -> None:
        """The snapshot's status from its content's, as the snapshot-controller's updateSnapshotStatus."""
        found = status(content)
        current = status(snapshot)
        new = dict(current)
        new.setdefault("boundVolumeSnapshotContentName", meta(content)["name"])
        if "creationTime" not in new and found.get("creationTime") is not None:
            new["creationTime"] = _rfc3339_from_ns(int(found["creationTime"]))
        ready = found.get("readyToUse") is True
        new["readyToUse"] = ready
        if ready:
            new.pop("error", None)
        size = found.get("restoreSize")
        if size is not None and (current.get("restoreSize") in (None, "0", 0)):
            new["restoreSize"] = binary_quantity(int(size))
        if found.get("error") is not None:
            new["error"] = found["error"]
        elif "error" in new and ready:
            del new["error"]
        if new == current:
            return
        m = meta(snapshot)
        self.sim.kube.patch(VS, m["name"], {"status": {**new, "error": new.get("error")}}, m["namespace"])
        key = f"{m['namespace']}/{m['name']}"
        if "creationTime" not in current and "creationTime" in new:
            self._event(snapshot, "SnapshotCreated", f"Snapshot {key} was successfully created by the CSI driver.")
        if current.get("readyToUse") is not True and ready:
            self._event(snapshot, "SnapshotReady", f"Snapshot {key} is ready to use.")

    def _delete_snapshot(self, snapshot: Obj) -> None:
        """processSnapshotWithDeletionTimestamp: the content (bound both ways) gets the being-deleted annotation
        and, under Delete, is deleted; the finalizers come off (bound-protection only once that content is
        gone), unless a Pending claim is being provisioned from the snapshot."""
        kube, m = self.sim.kube, meta(snapshot)
        finalizers = meta(snapshot).get("finalizers") or []
        if AS_SOURCE not in finalizers and BOUND not in finalizers:
            return
        name = status(snapshot).get("boundVolumeSnapshotContentName") or ""
        if not name and (spec(snapshot).get("source") or {}).get("persistentVolumeClaimName"):
            name = content_name(snapshot)
        content = kube.get(VSC, name) if name else None
        if content is not None and not _bound_both_ways(content, snapshot):
            content = None
        delete_content = content is not None and spec(content).get("deletionPolicy") == "Delete"
        if content is not None and self._restoring_from(snapshot):
            self._event(
                snapshot, "SnapshotDeletePending", "Snapshot is being used to restore a PVC", warning=True, once=True
            )
            return
        if content is not None:
            if annotations_of(content).get(BEING_DELETED) != "yes":
                content = kube.patch(VSC, meta(content)["name"], {"metadata": {"annotations": {BEING_DELETED: "yes"}}})
            if delete_content and not terminating(content):
                kube.delete(VSC, meta(content)["name"])
        keep = [BOUND] if delete_content else []
        rest = [f for f in finalizers if f not in (AS_SOURCE, BOUND) or f in keep]
        if rest != finalizers:
            kube.patch(VS, m["name"], {"metadata": {"finalizers": rest or None}}, m["namespace"])

    def _restoring_from(self, snapshot: Obj) -> bool:
        """A Pending claim in the snapshot's namespace has it as its dataSource."""
        m = meta(snapshot)
        for claim in self.sim.kube.list(PVC, m["namespace"]):
            source = spec(claim).get("dataSource") or {}
            ours = (source.get("kind"), source.get("apiGroup"), source.get("name")) == (
                "VolumeSnapshot",
                GROUP,
                m["name"],
            )
            if ours and phase(claim) == "Pending":
                return True
        return False

    # -- contents ------------------------------------------------------------------------------
    def _sync_content(self, content: Obj) -> None:
        ref = spec(content).get("volumeSnapshotRef") or {}
        if not ref.get("uid"):
            return  # pre-bound to a snapshot that has not bound it yet
        name = meta(content)["name"]
        if not terminating(content) and CONTENT_BOUND not in (meta(content).get("finalizers") or []):
            finalizers = [*(meta(content).get("finalizers") or []), CONTENT_BOUND]
            content = self.sim.kube.patch(VSC, name, {"metadata": {"finalizers": finalizers}})
        snapshot = self.sim.kube.get(VS, ref.get("name", ""), ref.get("namespace", ""))
        if snapshot is None or meta(snapshot)["uid"] != ref["uid"]:
            return
        candidate = terminating(snapshot) and bool({AS_SOURCE, BOUND} & set(meta(snapshot).get("finalizers") or []))
        if candidate and annotations_of(content).get(BEING_DELETED) != "yes":
            self.sim.kube.patch(VSC, name, {"metadata": {"annotations": {BEING_DELETED: "yes"}}})

    def _release_claims(self) -> None:
        """pvc-as-source-protection comes off a claim once no snapshot of it is still being cut (not ready)."""
        kube = self.sim.kube
        snapshots = kube.list(VS)
        for claim in kube.list(PVC):
            finalizers = meta(claim).get("finalizers") or []
            if PVC_AS_SOURCE not in finalizers:
                continue
            namespace, name = meta(claim)["namespace"], meta(claim)["name"]
            in_use = any(
                meta(s)["namespace"] == namespace
                and (spec(s).get("source") or {}).get("persistentVolumeClaimName") == name
                and not is_ready(s)
                for s in snapshots
            )
            if not in_use:
                rest = [f for f in finalizers if f != PVC_AS_SOURCE]
                kube.patch(PVC, name, {"metadata": {"finalizers": rest or None}}, namespace)


class Snapshotter:
    """The csi-snapshotter sidecar of ``csi.ferry.test`` with the driver's CreateSnapshot, ListSnapshots and
    DeleteSnapshot: cuts the snapshots of dynamic contents, checks pre-provisioned handles, and deletes
    contents (and, under Delete, their storage snapshots) once they may go."""

    name = "csi-snapshotter"

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self.component = f"csi-snapshotter {sim.PROVISIONER}"

    async def step(self) -> None:
        if not self.sim.serves_snapshots:
            return
        for content in self.sim.kube.list(VSC):
            if spec(content).get("driver") == self.sim.PROVISIONER:
                self._sync(content)

    def _should_delete(self, content: Obj) -> bool:
        if not terminating(content):
            return False
        if (spec(content).get("source") or {}).get("snapshotHandle") and not (
            spec(content).get("volumeSnapshotRef") or {}
        ).get("uid"):
            return True
        notes = annotations_of(content)
        return BEING_CREATED not in notes and BEING_DELETED in notes

    def _sync(self, content: Obj) -> None:
        kube, name = self.sim.kube, meta(content)["name"]
        storage = self.sim.snapshot_storage
        if self._should_delete(content):
            handle = status(content).get("snapshotHandle")
            if spec(content).get("deletionPolicy") == "Delete" and handle:
                storage.delete(handle)
            finalizers = meta(content).get("finalizers") or []
            if CONTENT_BOUND in finalizers:
                rest = [f for f in finalizers if f != CONTENT_BOUND]
                kube.patch(VSC, name, {"metadata": {"finalizers": rest or None}})
            return
        source = spec(content).get("source") or {}
        if source.get("volumeHandle") and not status(content).get("snapshotHandle"):
            self._create(content)
            return
        if status(content).get("readyToUse") is not True:
            self._check(content)
        elif BEING_CREATED in annotations_of(content):
            kube.patch(VSC, name, {"metadata": {"annotations": {BEING_CREATED: None}}})

    def _create(self, content: Obj) -> None:
        """CreateSnapshot, with the being-created annotation on the content while the call is under way (held
        there while snapshots are paused); a volume that does not exist fails it (retried on every pass, as
        the sidecar retries, without rewriting an unchanged error)."""
        kube, name = self.sim.kube, meta(content)["name"]
        volume_handle = spec(content)["source"]["volumeHandle"]
        volumes = [v for v in kube.list(PV) if (spec(v).get("csi") or {}).get("volumeHandle") == volume_handle]
        data = self.sim.volume_data(meta(volumes[0])["name"]) if volumes else None
        creating = annotations_of(content).get(BEING_CREATED) == "yes"
        if not volumes or data is None:
            if creating:
                kube.patch(VSC, name, {"metadata": {"annotations": {BEING_CREATED: None}}})
            rpc = f"rpc error: code = NotFound desc = source volume {volume_handle} not found"
            why = f'failed to take snapshot of the volume {volume_handle}: "{rpc}"'
            self._fail(content, "SnapshotCreationFailed", f"Failed to create snapshot: {why}")
            return
        if not creating:
            kube.patch(VSC, name, {"metadata": {"annotations": {BEING_CREATED: "yes"}}})
        if self.sim.snapshots_paused:
            return  # the CreateSnapshot call has not returned
        volume = volumes[0]
        capacity = quantity((spec(volume).get("capacity") or {}).get("storage"))
        handle = f"snapshot-{meta(content)['uid']}"
        info = self.sim.snapshot_storage.cut(handle, data, capacity, volume_mode(volume))
        new = {
            "snapshotHandle": handle,
            "readyToUse": True,
            "restoreSize": info["size"],
            "creationTime": info["created"],
        }
        kube.patch(VSC, name, {"status": {**new, "error": None}})
        kube.patch(VSC, name, {"metadata": {"annotations": {BEING_CREATED: None}}})

    def _check(self, content: Obj) -> None:
        name = meta(content)["name"]
        handle = (spec(content).get("source") or {}).get("snapshotHandle") or status(content).get("snapshotHandle")
        info = self.sim.snapshot_storage.info(handle) if handle else None
        if info is None:
            why = f'failed to list snapshot for content {name}: "can not find snapshot for snapshotID {handle}"'
            self._fail(
                content, "SnapshotContentCheckandUpdateFailed", f"Failed to check and update snapshot content: {why}"
            )
            return
        new = {
            "snapshotHandle": handle,
            "readyToUse": True,
            "restoreSize": info["size"],
            "creationTime": info["created"],
        }
        self.sim.kube.patch(VSC, name, {"status": {**new, "error": None}})

    def _fail(self, content: Obj, reason: str, message: str) -> None:
        current = status(content).get("error") or {}
        if current.get("message") == message:
            return
        new = {"readyToUse": False, "error": {"message": message, "time": now_rfc3339()}}
        self.sim.kube.patch(VSC, meta(content)["name"], {"status": new})
        self.sim.event(content, reason, message, api_version=API_VERSION, component=self.component, warning=True)


def provision_from(source: Path, backing: Path, claim: Obj) -> None:
    """A new volume's backing storage as a copy of the snapshot's data (a Block image grown to the request)."""
    try:
        _copy(source, backing)
    except subprocess.CalledProcessError as error:  # pragma: no cover - a broken test environment
        raise KubeError(500, f"copying snapshot data failed: {error.stderr!r}") from error
    if volume_mode(claim) == "Block":
        size = quantity(requested_storage(claim) or "1Gi")
        if backing.stat().st_size < size:
            with backing.open("r+b") as image:
                image.truncate(size)
