"""One restore's data transfer, from InProgress until every byte is written (then the controller's
``restored`` takes over: Completed in place, or the hand-over of a new volume) or it stops.

Everything that can fail the DataDownload without touching the volume (tuning keys, the storage
location, its credentials, the timeout) is checked before the InProgress write, so no byte is written
for a DataDownload that was bound to fail. While the data path runs, the supervisor watches for:

    spec.cancel        → Canceling, stop the pipeline, Canceled
    deletion           → stop the pipeline; write Canceled only if the object still exists
    a terminal phase written by someone else (e.g. Velero forcing Canceled) → stop the pipeline
    no progress for operationTimeout → stop the pipeline, Failed
    agent shutdown     → stop the pipeline, stay InProgress with a message saying it will start again

and a reporter writes ``status.progress`` every progress interval (at once when the total is known).
``Host`` is what the supervisor needs of the controller (a Protocol: the two modules do not import each
other).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from agent.aio.waiting import sleep_until
from agent.controller.jobs import RestoreJob, Restorer
from agent.controller.progress import ProgressTracker
from agent.errors import ConfigError, FerryError, KubeError, LocationError
from agent.expose.volumes import Volume
from agent.kube.events import EventRecorder
from agent.kube.times import now, timestamp
from agent.metrics import Metrics
from agent.settings import AgentSettings
from agent.velero.locations import LocationResolver
from agent.velero.objects import (
    CANCELED,
    CANCELING,
    FAILED,
    IN_PROGRESS,
    PREPARED,
    TERMINAL,
    DataDownload,
    Obj,
)
from agent.velero.statuses import Change, MetadataChange, StatusWriter
from agent.velero.tuning import KNOWN_KEYS, restore_settings_for

log = logging.getLogger(__name__)


class Host(Protocol):
    """What a supervised restore needs from the controller that runs it."""

    me: str
    settings: AgentSettings
    restorer: Restorer
    metrics: Metrics
    events: EventRecorder
    shutdown: asyncio.Event
    statuses: StatusWriter | None
    locations: LocationResolver | None

    def latest(self, name: str) -> DataDownload | None: ...

    async def write(
        self, dd: DataDownload, change: Change, metadata: MetadataChange | None = None
    ) -> DataDownload | None: ...

    def timeout_s(self, dd: DataDownload) -> float: ...

    async def restored(self, dd: DataDownload, total: int) -> None:
        """The restore wrote every byte of ``total``: what comes next is the controller's."""

    async def finish(
        self,
        dd: DataDownload,
        phase: str,
        message: str,
        *from_phases: str,
        progress: Callable[[DataDownload], Obj | None] | None = None,
        anyone: bool = False,
        release: bool = False,
    ) -> DataDownload | None: ...


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


async def run(ctl: Host, dd: DataDownload, volume: Volume, wake: asyncio.Event) -> None:
    assert ctl.statuses is not None
    assert ctl.locations is not None
    try:
        timeout = ctl.timeout_s(dd)
        settings, unknown = restore_settings_for(dd.config, ctl.settings.restore)
        location = await ctl.locations.resolve(dd.storage_location)
    except (ConfigError, LocationError) as e:
        await ctl.finish(dd, FAILED, str(e), dd.phase)
        return
    restarted = dd.phase == IN_PROGRESS
    stamp = timestamp(now())
    message = f"restarted on node {ctl.me} after an interruption" if restarted else ""
    started = await ctl.write(
        dd,
        lambda cur: (
            {"phase": IN_PROGRESS, "startTimestamp": cur.started or stamp, "node": ctl.me, "message": message}
            if cur.phase in (PREPARED, IN_PROGRESS) and cur.node == ctl.me and not (cur.cancel or cur.deleting)
            else None
        ),
    )
    if started is None:
        return
    if unknown:
        await ctl.events.record(
            started.ref(),
            "UnknownConfig",
            f"spec.dataMoverConfig keys {', '.join(unknown)} mean nothing to Ferry and were ignored "
            f"(Ferry reads {', '.join(sorted(KNOWN_KEYS))})",
            "Warning",
        )
    what = f"snapshot {dd.snapshot_id} from {location.describe()} onto {volume.describe()}"
    log.info("restarting" if restarted else "starting", extra={"datadownload": dd.key, "restore": what})
    await ctl.events.record(
        started.ref(), "Restarted" if restarted else "Started", f"restoring {what} on node {ctl.me}"
    )
    job = RestoreJob(dd.key, location, dd.source_namespace, dd.snapshot_id, volume.path, settings)
    await _supervise(ctl, started, job, wake, timeout, what)


async def _supervise(
    ctl: Host, dd: DataDownload, job: RestoreJob, wake: asyncio.Event, limit_s: float, what: str
) -> None:
    progress = ProgressTracker(dd.bytes_done, dd.total_bytes)
    outcome: list[BaseException | None] = []

    async def restore() -> None:
        try:
            await ctl.restorer(job, progress.update)
            outcome.append(None)
        except FerryError as e:
            outcome.append(e)
        except Exception as e:
            log.exception("restore failed unexpectedly", extra={"datadownload": dd.key})
            outcome.append(e)
        finally:
            wake.set()

    reason = ""
    ctl.metrics.restores.labels(IN_PROGRESS).inc()
    try:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(restore(), name=f"restore {dd.key}")
            reporter = tg.create_task(_report(ctl, dd, progress), name=f"progress {dd.key}")
            while not task.done():
                wake.clear()
                cur = ctl.latest(dd.name)
                if ctl.shutdown.is_set():
                    reason = "shutdown"
                elif cur is None or cur.deleting:
                    reason = "deleted"
                elif cur.cancel:
                    reason = "cancel"
                elif cur.phase in TERMINAL:
                    reason = "ended elsewhere"
                elif progress.idle_s() >= limit_s:
                    reason = "stalled"
                if reason:
                    task.cancel()
                    if reason == "cancel":
                        await _canceling(ctl, cur or dd)
                    await asyncio.wait([task])
                    break
                await sleep_until(wake, limit_s - progress.idle_s())
            reporter.cancel()
    finally:
        ctl.metrics.restores.labels(IN_PROGRESS).dec()
    await _conclude(ctl, dd, reason, outcome[0] if outcome else None, progress, what)


async def _canceling(ctl: Host, dd: DataDownload) -> None:
    assert ctl.statuses is not None
    ctl.metrics.restores.labels(CANCELING).inc()
    try:
        await ctl.write(
            dd, lambda cur: {"phase": CANCELING} if cur.phase == IN_PROGRESS and cur.node == ctl.me else None
        )
    except KubeError as e:
        log.warning("could not record Canceling: %s", e, extra={"datadownload": dd.key})
    finally:
        ctl.metrics.restores.labels(CANCELING).dec()


async def _conclude(
    ctl: Host,
    dd: DataDownload,
    reason: str,
    error: BaseException | None,
    progress: ProgressTracker,
    what: str,
) -> None:
    assert ctl.statuses is not None
    done, total = progress.reported(), progress.total
    at = f"after {_size(done)} of {_size(total)}"
    if reason == "ended elsewhere":
        log.info("stopped: someone else ended it", extra={"datadownload": dd.key})
        return
    # Write from the latest state known (our progress writes included), not the one the restore started
    # from, whose resourceVersion is stale: that would cost a refused write, a re-read and a second write.
    dd = ctl.latest(dd.name) or dd
    if reason == "deleted":
        await ctl.finish(dd, CANCELED, f"the DataDownload was deleted; restore stopped {at}", IN_PROGRESS, CANCELING)
        log.info("restore stopped: the DataDownload was deleted", extra={"datadownload": dd.key})
        return
    if reason == "cancel":
        await ctl.finish(dd, CANCELED, f"canceled (spec.cancel) {at}", IN_PROGRESS, CANCELING)
        return
    if reason == "shutdown":
        message = (
            f"interrupted {at}: the Ferry agent on node {ctl.me} is shutting down; it restores this volume again "
            "from the start when it is back"
        )
        progress_fields = _progress_change(ctl.me, done, total)

        def interrupted(cur: DataDownload) -> Obj | None:
            fields = progress_fields(cur)  # None unless it is still ours and InProgress
            if fields is not None and not total:
                del fields["progress"]  # the restore stopped before it knew its size
            return fields if fields is None else {"message": message, **fields}

        written = await ctl.write(dd, interrupted)
        ctl.metrics.finished.labels("Interrupted").inc()
        log.info("interrupted by shutdown", extra={"datadownload": dd.key, "bytesDone": done})
        if written is not None:
            await ctl.events.record(written.ref(), "Interrupted", message, "Warning")
        return
    if reason == "stalled":
        await ctl.finish(
            dd,
            FAILED,
            f"no progress for {dd.operation_timeout} (spec.operationTimeout) {at}: restoring {what} stalled; check "
            "that the object store answers and the volume accepts writes",
            IN_PROGRESS,
        )
        return
    if error is not None:
        await ctl.finish(dd, FAILED, f"restoring {what} failed {at}: {error}", IN_PROGRESS)
        return

    await ctl.restored(ctl.latest(dd.name) or dd, total)


async def _report(ctl: Host, dd: DataDownload, progress: ProgressTracker) -> None:
    """Write ``status.progress`` when the total is first known, then every interval while it changes."""
    assert ctl.statuses is not None
    await progress.known.wait()
    written: tuple[int, int] | None = None
    while True:
        figures = (progress.reported(), progress.total)
        if figures != written:
            try:
                await ctl.write(ctl.latest(dd.name) or dd, _progress_change(ctl.me, *figures))
                written = figures
            except KubeError as e:
                log.warning("could not write progress: %s", e, extra={"datadownload": dd.key})
        await asyncio.sleep(ctl.settings.progress_interval_s)


def _progress_change(me: str, done: int, total: int) -> Callable[[DataDownload], Obj | None]:
    def change(cur: DataDownload) -> Obj | None:
        if cur.phase != IN_PROGRESS or cur.node != me:
            return None
        return {"progress": {"totalBytes": total, "bytesDone": max(done, cur.bytes_done)}}

    return change
