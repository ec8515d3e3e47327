"""The DataUpload controller: a backup of a CSI snapshot through the shared phase machine
(``agent.controller.movers``; Velero's ``pkg/controller/data_upload_controller.go`` and
``pkg/exposer/csi_snapshot.go`` are the reference).

    New        only ``spec.snapshotType: CSI`` is claimed; canceled before any agent claimed it: Velero's
               VolumeSnapshot is deleted (no storage snapshot may outlive the backup), then Canceled
    Accepted   the acceptor records Velero's VolumeSnapshotContent (annotation ferry.dev/snapshot-content)
               once the VolumeSnapshot is ready, moves the snapshot into Velero's namespace and exposes
               a backup PVC and pod (``agent.expose.snapshots``); the pod's node goes into annotation
               ferry.dev/backup-node
    InProgress the snapshot writer reads the volume on this node into the repository
               ``<bucket>/<prefix>/ferry/<sourceNamespace>/``, recording the Velero backup, namespace and PVC
               in the snapshot; once its manifest is stored: annotation ferry.dev/uploaded-snapshot,
               progress totalBytes == bytesDone (and ``incrementalBytes`` where the CRD has it)
    uploaded   clean up (backup pod, PVC, PV; backup VolumeSnapshot and content, which deletes the storage
               snapshot; Velero's VolumeSnapshot if still there) → Completed with ``status.snapshotID``;
               the finalizer comes off once every snapshot object is gone; with maintenance on, the
               finalizer ``ferry.dev/snapshot`` goes on (``agent.controller.maintenance`` takes it off)
    InProgress (node=me, nothing running here, not uploaded: the agent restarted) → back up again
    Failed/Canceled: the same cleanup; no snapshot ID is ever recorded for a snapshot not wholly stored

A cancel that arrives after the snapshot is stored is too late: the backup completes (the message says so).
"""

from __future__ import annotations

import asyncio
import logging

from agent.controller.jobs import BackupJob, Notice, Progress, Uploaded, Uploader
from agent.controller.load import LoadLimiter
from agent.controller.movers import MoverController
from agent.controller.supervisor import Transfer
from agent.expose.pods import Exposed, Waiting
from agent.expose.snapshots import SnapshotExposer, SnapshotExposure
from agent.expose.volumes import Volume
from agent.kube.api import Kube
from agent.metrics import Metrics
from agent.settings import AgentSettings
from agent.velero.locations import StorageLocation
from agent.velero.objects import (
    ACCEPTED,
    BACKUP_NAME,
    BACKUP_UID,
    CANCELED,
    CANCELING,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    NEW,
    PREPARED,
    SKIPPED,
    SNAPSHOT_CONTENT,
    SNAPSHOT_FINALIZER,
    TERMINAL,
    UPLOADED,
    DataUpload,
)
from agent.velero.tuning import backup_settings_for

log = logging.getLogger(__name__)

CSI = "CSI"
"""The only ``spec.snapshotType`` Ferry backs up (Velero's other one, PodVolume, is file-system backup)."""


SHOWN_SKIPPED = 5
"""Entries an incomplete backup's message names (the agent's log lists every one)."""


def incomplete(skipped: tuple[str, ...]) -> str:
    """What an incomplete snapshot lacks, in one line: how many entries, the first few with the reason."""
    shown = "; ".join(skipped[:SHOWN_SKIPPED]) + ("; ..." if len(skipped) > SHOWN_SKIPPED else "")
    text = f"{len(skipped)} entries could not be read and are not in the snapshot (see the agent's log): {shown}"
    return text[:2000]


class DataUploadController(MoverController[DataUpload]):
    view = DataUpload
    noun = "backup"

    def __init__(
        self, kube: Kube, settings: AgentSettings, uploader: Uploader, metrics: Metrics, load: LoadLimiter | None = None
    ) -> None:
        super().__init__(
            kube,
            settings,
            metrics,
            load or LoadLimiter(settings.concurrency),
            metrics.backups,
            metrics.backups_finished,
        )
        self.uploader = uploader
        self.exposer = SnapshotExposer(kube, self.pods)

    async def _step(self, du: DataUpload, wake: asyncio.Event) -> float | None:
        if not self._wants(du):
            return None
        if du.phase in TERMINAL:  # ended, with our finalizer still on it: remove what was exposed
            return await self._clean_up(du)
        stopping = du.cancel or du.deleting
        if du.phase == NEW:
            if stopping:
                return await self._cancel_new(du)
            if du.snapshot_type != CSI:
                message = (
                    f"spec.snapshotType is {du.snapshot_type or '(empty)'}: Ferry backs up CSI snapshots only "
                    "(velero backup create --snapshot-move-data)"
                )
                await self.finish(du, FAILED, message, NEW)
                return None
            return await self._claim(du)
        if du.phase == ACCEPTED:
            return await self._prepare_exposed(du)
        if du.node != self.me:
            return await self._orphan(du) if stopping else None
        if du.phase in (PREPARED, IN_PROGRESS):
            if du.uploaded:
                return await self._complete(du)
            if stopping:
                stopped = (
                    "; the backup had already stopped" if du.phase == IN_PROGRESS else " before the backup started"
                )
                await self.finish(du, CANCELED, "canceled" + stopped, du.phase)
                return 0.0
            return await self._start(du, wake)
        if du.phase == CANCELING:  # a cancel whose backup is not running here (the agent restarted)
            await self.finish(du, CANCELED, "canceled; the backup had already stopped", CANCELING)
            return 0.0
        return None

    async def _cancel_new(self, du: DataUpload) -> float | None:
        """Canceled (or deleted) before any agent claimed it: Velero's VolumeSnapshot would outlive the backup,
        so it goes first (its content set to Delete: the storage snapshot goes with it), then Canceled."""
        left = await self.exposer.clean_up(self.exposure(du), du.snapshot_content)
        if left and not du.deleting:
            self._note(du.name).waiting = left.describe() + " to be gone"
            return self.settings.volume_poll_interval_s
        await self.finish(du, CANCELED, "canceled before any node accepted it", NEW)
        return None

    def exposure(self, du: DataUpload) -> SnapshotExposure:
        """Where the backup VolumeSnapshot, content, PVC and pod of ``du`` are, and what it backs up."""
        return SnapshotExposure(
            du.namespace,
            du.name,
            du.uid,
            self.noun,
            du.source_namespace,
            du.source_pvc,
            du.volume_snapshot,
            du.storage_class,
        )

    def describe(self, du: DataUpload) -> str:
        where = self.exposure(du)
        return f"PVC {where.pvc} (VolumeSnapshot {where.source})"

    async def expose(self, du: DataUpload) -> Exposed | Waiting | float | None:
        where = self.exposure(du)
        if not du.snapshot_content:
            content = await self.exposer.original_content(where)
            if isinstance(content, Waiting):
                return content
            await self.write_metadata(
                du, lambda cur: {"annotations": {SNAPSHOT_CONTENT: content}} if cur.phase == ACCEPTED else None
            )
            return 0.0
        return await self.exposer.expose(where, self.owner(du), du.snapshot_content)

    def transfer(self, du: DataUpload, location: StorageLocation, volume: Volume) -> Transfer:
        settings, unknown = backup_settings_for(du.config, self.settings.snapshot)
        backup, uid = du.backup
        labels = {
            BACKUP_NAME: backup,
            BACKUP_UID: uid,
            "velero.io/dataupload": du.name,
            "namespace": du.source_namespace,
            "pvc": du.source_pvc,
            "volumeMode": volume.mode,
        }
        job = BackupJob(du.key, location, du.source_namespace, volume.path, labels, settings)
        reported = 0

        async def run(progress: Progress, _notice: Notice, _stopping: asyncio.Event) -> Uploaded:
            def counted(done: int, total: int) -> None:
                nonlocal reported
                if done > reported:
                    self.metrics.backed_up_bytes.inc(done - reported)
                    reported = done
                progress(done, total)

            return await self.uploader(job, counted)

        what = f"backing up {self.describe(du)}, {volume.mode}, into {location.describe()}"
        return Transfer(self.noun, what, run, tuple(unknown))

    async def transferred(self, du: DataUpload, total: int, result: object) -> None:
        """Every byte is stored and the snapshot's manifest written: record its ID on the object (so a restart
        goes on with the cleanup, not a new backup) with the final progress, then clean up and complete."""
        assert isinstance(result, Uploaded)
        size = result.size
        fields = {"progress": {"totalBytes": size, "bytesDone": size}, "incrementalBytes": result.new_stored_bytes}
        annotations = {UPLOADED: result.snapshot_id}
        if result.skipped:
            annotations[SKIPPED] = incomplete(result.skipped)
        written = await self.write(
            du,
            lambda cur: fields if cur.phase == IN_PROGRESS and cur.node == self.me else None,
            lambda cur: {"annotations": annotations},
        )
        if written is not None:
            log.info(
                "data stored; cleaning up",
                extra={"dataupload": du.key, "snapshot": result.snapshot_id, "newBytes": result.new_stored_bytes},
            )
            if result.skipped:
                await self.events.record(written.ref(), "Incomplete", annotations[SKIPPED], "Warning")

    async def _complete(self, du: DataUpload) -> float | None:
        """The snapshot is stored: clean up what was exposed (the pod and PVC must be gone, the snapshot objects'
        deletion asked for), then Completed with ``status.snapshotID``; the finalizer comes off in the same
        write if the snapshot objects are gone already, else once they are (the terminal-phase cleanup)."""
        left = await self.exposer.clean_up(self.exposure(du), du.snapshot_content)
        if left.exposed:
            self._note(du.name).waiting = left.describe() + " to be gone"
            return self.settings.volume_poll_interval_s
        cur = self.latest(du.name) or du
        notes = [du.annotations[SKIPPED]] if du.annotations.get(SKIPPED) else []
        if cur.cancel or cur.deleting:
            notes.append("the cancel came after the snapshot was stored")
        note = "completed; " + "; ".join(notes) if notes else ""
        full = {"totalBytes": du.total_bytes, "bytesDone": du.total_bytes}
        await self.finish(
            cur,
            COMPLETED,
            note,
            PREPARED,
            IN_PROGRESS,
            CANCELING,
            progress=lambda _: full,
            extra={"snapshotID": du.uploaded},
            release=not left,
            # Maintenance forgets the snapshot when Velero deletes the DataUpload with its backup.
            hold=SNAPSHOT_FINALIZER if self.settings.maintenance_interval_s > 0 else "",
        )
        return 0.0

    async def clean_up_exposed(self, du: DataUpload) -> list[str] | float:
        left = await self.exposer.clean_up(self.exposure(du), du.snapshot_content)
        return left.exposed + left.snapshots
