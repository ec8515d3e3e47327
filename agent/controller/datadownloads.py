"""The DataDownload controller: a restore through the shared phase machine (``agent.controller.movers``),
then the hand-over of the new volume (Velero's ``pkg/controller/data_download_controller.go`` and
``pkg/exposer/generic_restore.go`` are the reference).

    Accepted   the acceptor exposes a restore PVC and a restore pod (``agent.expose.exposer``) once the
               target PVC exists (and has its selected node, for WaitForFirstConsumer classes); the restore
               pod's node goes into annotation ferry.dev/restore-node
    InProgress (node=me, data restored: annotation ferry.dev/restored-pv) → hand the PV to the target PVC
               (``agent.expose.rebind``) → Completed (finalizer removed in the same write)
    InProgress (node=me, nothing running here: the agent restarted) → restore again, keeping what the
               volume already holds (``agent.pipeline.resume``; Event ``Resumed`` says how much)
    cleanup    restore pod, PVC and PV; a PV the target PVC names: finishes the hand-over instead
    spec.cancel during the hand-over: honoured only until the target PVC names the PV
    operationTimeout: also bounds the hand-over → Failed

Hand-written DataDownloads with ``dataMoverConfig`` ``ferry.inPlace: "true"`` skip exposing and handing
over: an agent claims them only where the target PVC is mounted by a running pod, and restores into it.
"""

from __future__ import annotations

import asyncio
import logging

from agent.controller.jobs import Notice, Progress, RestoreJob, Restorer
from agent.controller.load import LoadLimiter
from agent.controller.movers import MoverController
from agent.controller.supervisor import Transfer
from agent.errors import KubeError, VolumeError
from agent.expose.exposer import Exposure, RestoreExposer
from agent.expose.pods import Exposed, Waiting
from agent.expose.rebind import Done, Pending, Rebinder, Record
from agent.expose.volumes import Volume
from agent.kube.api import Kube
from agent.kube.times import now, parse_time, seconds_since, timestamp
from agent.metrics import Metrics
from agent.settings import AgentSettings
from agent.velero.locations import StorageLocation
from agent.velero.objects import (
    ACCEPTED,
    CANCELED,
    CANCELING,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    NEW,
    PREPARED,
    REBIND_STARTED,
    RECLAIM_POLICY,
    RESTORED_PV,
    TERMINAL,
    DataDownload,
)
from agent.velero.tuning import restore_settings_for

log = logging.getLogger(__name__)


class DataDownloadController(MoverController[DataDownload]):
    view = DataDownload
    noun = "restore"

    def __init__(
        self, kube: Kube, settings: AgentSettings, restorer: Restorer, metrics: Metrics, load: LoadLimiter | None = None
    ) -> None:
        super().__init__(
            kube, settings, metrics, load or LoadLimiter(settings.concurrency), metrics.restores, metrics.finished
        )
        self.restorer = restorer
        self.exposer = RestoreExposer(kube, self.pods)
        self.rebinder = Rebinder(kube)

    async def _step(self, dd: DataDownload, wake: asyncio.Event) -> float | None:
        if not self._wants(dd):
            return None
        if dd.phase in TERMINAL:  # ended, with our finalizer still on it: remove what was exposed
            return await self._clean_up(dd)
        stopping = dd.cancel or dd.deleting
        if dd.phase == NEW:
            if stopping:
                await self.finish(dd, CANCELED, "canceled before any node accepted it", NEW)
                return None
            return await self._claim(dd)
        if dd.phase == ACCEPTED:
            if dd.in_place:
                if dd.accepted_by != self.me:
                    return None
                if stopping:
                    await self.finish(dd, CANCELED, "canceled before the restore started", ACCEPTED)
                    return None
                found = await self._find(dd, ACCEPTED)
                return found if not isinstance(found, Volume) else await self._write_prepared(dd)
            return await self._prepare_exposed(dd)
        if dd.node != self.me:
            return await self._orphan(dd) if stopping else None
        if dd.phase in (PREPARED, IN_PROGRESS):
            if dd.restored_pv:
                return await self._rebind(dd)
            if stopping:
                stopped = (
                    "; the restore had already stopped" if dd.phase == IN_PROGRESS else " before the restore started"
                )
                await self.finish(dd, CANCELED, "canceled" + stopped, dd.phase)
                return None if dd.in_place else 0.0
            return await self._start(dd, wake)
        if dd.phase == CANCELING:  # a cancel whose restore is not running here (the agent restarted)
            await self.finish(dd, CANCELED, "canceled; the restore had already stopped", CANCELING)
            return None if dd.in_place else 0.0
        return None

    def exposure(self, dd: DataDownload) -> Exposure:
        """Where the restore PVC and pod of ``dd`` are (named after it, in its namespace), and its target."""
        return Exposure(dd.namespace, dd.name, dd.uid, self.noun, dd.target_namespace, dd.target_pvc)

    def describe(self, dd: DataDownload) -> str:
        return self.exposure(dd).target

    def volume_claim(self, dd: DataDownload) -> tuple[str, str]:
        return (dd.target_namespace, dd.target_pvc) if dd.in_place else (dd.namespace, dd.name)

    def volume_wait(self, dd: DataDownload) -> str:
        if not dd.in_place:
            return super().volume_wait(dd)
        if dd.phase in (NEW, ACCEPTED):
            return (
                f"PVC {dd.target_namespace}/{dd.target_pvc} to be bound and mounted by a running pod on a node "
                "with a Ferry agent"
            )
        return f"the volume of PVC {dd.target_namespace}/{dd.target_pvc} to be mounted on node {self.me}"

    async def expose(self, dd: DataDownload) -> Exposed | Waiting:
        where = self.exposure(dd)
        try:
            return await self.exposer.expose(where, self.owner(dd))
        except VolumeError as e:
            raise VolumeError(f"cannot restore into PVC {where.target}: {e}") from e

    def transfer(self, dd: DataDownload, location: StorageLocation, volume: Volume) -> Transfer:
        settings, unknown = restore_settings_for(dd.config, self.settings.restore)
        job = RestoreJob(dd.key, location, dd.source_namespace, dd.snapshot_id, volume.path, settings)

        async def run(progress: Progress, notice: Notice, stopping: asyncio.Event) -> None:
            await self.restorer(job, progress, notice, stopping)

        what = f"restoring snapshot {dd.snapshot_id} from {location.describe()} onto {volume.describe()}"
        return Transfer(self.noun, what, run, tuple(unknown), resumable=True)

    async def transferred(self, dd: DataDownload, total: int, result: object) -> None:
        """The data is complete. In place: Completed. Into a new volume: record the PV (and its reclaim
        policy) on the object, so that the rebind survives a restart, and go on with it."""
        full = {"totalBytes": total, "bytesDone": total}
        if dd.in_place:
            cur = self.latest(dd.name) or dd
            if cur.cancel:
                await self.finish(dd, CANCELED, "canceled (spec.cancel) as the restore finished", IN_PROGRESS)
            else:
                await self.finish(dd, COMPLETED, "", IN_PROGRESS, progress=lambda _: full)
            return
        record = await self.rebinder.record(self.exposure(dd))
        if not isinstance(record, Record):  # the restore PVC was Bound when the data was written into it
            raise VolumeError(f"restore PVC {self.exposure(dd).restore} is not bound after the restore")
        stamp = timestamp(now())
        written = await self.write(
            dd,
            lambda cur: {"progress": full} if cur.phase == IN_PROGRESS and cur.node == self.me else None,
            lambda cur: {
                "annotations": {RESTORED_PV: record.pv, RECLAIM_POLICY: record.reclaim_policy, REBIND_STARTED: stamp}
            },
        )
        if written is not None:
            log.info("data restored; handing the volume over", extra={"datadownload": dd.key, "pv": record.pv})

    async def _rebind(self, dd: DataDownload) -> float | None:
        """Hand the restored PV to the target PVC (``agent.expose.rebind``), then Completed. A cancel, a
        deletion or a phase someone else ended it in is honoured until the target PVC names the PV; after
        that the volume is the application's. ``spec.operationTimeout`` from the start of the hand-over
        bounds the waiting for the cluster before that point (checked after trying, so that an agent back
        from a long absence first tries; and on API errors, so that they cannot hold it off)."""
        where = self.exposure(dd)
        record = Record(dd.restored_pv, dd.annotations.get(RECLAIM_POLICY, "Delete"))
        full = {"totalBytes": dd.total_bytes, "bytesDone": dd.total_bytes}
        started = parse_time(dd.annotations.get(REBIND_STARTED))
        # An agent back from an absence longer than the timeout gets the whole timeout again: the time it
        # was away is not time the cluster kept it waiting.
        waited = min(seconds_since(started), self._since(dd.name))
        limit = self.timeout_s(dd)

        def stopping() -> bool:
            cur = self.latest(dd.name)
            return cur is None or cur.cancel or cur.deleting or cur.phase in TERMINAL

        async def timed_out(what: str) -> float:
            await self.finish(
                dd,
                FAILED,
                f"restored, but timed out after {dd.operation_timeout} (spec.operationTimeout) handing PV "
                f"{record.pv} to PVC {where.target}: still waiting for {what}",
                dd.phase,
            )
            return 0.0

        try:
            result = await self.rebinder.advance(where, record, lambda: not stopping())
        except VolumeError as e:
            await self.finish(dd, FAILED, f"restored, but could not hand the volume over: {e}", dd.phase)
            return 0.0
        except KubeError as e:
            if waited >= limit and not await self.rebinder.handed_over(where, record):
                return await timed_out(f"the Kubernetes API, which answered: {e}")
            raise
        if isinstance(result, Pending) and result.stopped:
            cur = self.latest(dd.name) or dd
            await self.finish(cur, CANCELED, "canceled before the restored volume was handed over", dd.phase)
            return 0.0
        if isinstance(result, Done):
            cur = self.latest(dd.name) or dd
            late = cur.cancel or cur.deleting
            note = "completed; the cancel came after the volume was handed to the PVC" if late else ""
            await self.finish(cur, COMPLETED, note, dd.phase, progress=lambda _: full, release=True)
            return 0.0
        if result.acted:
            return 0.0
        self._note(dd.name).waiting = result.reason
        if waited >= limit and not await self.rebinder.handed_over(where, record):
            return await timed_out(result.reason)
        return self.settings.volume_poll_interval_s

    async def clean_up_exposed(self, dd: DataDownload) -> list[str] | float:
        """Delete the restore pod and PVC, and the restored PV — unless the target PVC already names it: then
        the PV holds the application's data, and the hand-over is finished instead (claimRef, labels, Bound,
        reclaim policy), since a PV left with the restore PVC's claim would be released and deleted."""
        where = self.exposure(dd)
        keep = ""
        if dd.restored_pv:
            record = Record(dd.restored_pv, dd.annotations.get(RECLAIM_POLICY, "Delete"))
            if await self.rebinder.handed_over(where, record):
                keep = record.pv
                try:
                    finished = await self.rebinder.advance(where, record, lambda: True)
                except VolumeError as e:
                    log.warning("cannot finish handing the volume over: %s", e, extra={"datadownload": dd.key})
                    finished = Done()  # the PV or the PVC is gone: nothing of ours is left to keep
                if not isinstance(finished, Done):
                    return 0.0 if finished.acted else self.settings.volume_poll_interval_s
        left = await self.pods.clean_up(where, keep_pv=keep)  # idempotent
        if not left and dd.restored_pv and not keep:
            await self.pods.discard_pv(dd.restored_pv, delete=True)
        return left
