"""One data transfer (a DataDownload's restore or a DataUpload's backup), from InProgress until every byte
is moved (then the controller's ``transferred`` takes over: for a restore Completed in place or the
hand-over of a new volume, for a backup the cleanup and Completed) or it stops.

Everything that can fail the object without touching the volume or the repository (tuning keys, the
storage location, its credentials, the timeout) is checked before the InProgress write, so no byte is
moved for an object that was bound to fail. While the data path runs, the supervisor watches for:

    spec.cancel        → Canceling, stop the pipeline, Canceled
    deletion           → stop the pipeline; write Canceled only if the object still exists
    a terminal phase written by someone else (e.g. Velero forcing Canceled) → stop the pipeline
    no progress for operationTimeout → stop the pipeline, Failed
    agent shutdown     → a restore writes what it has in flight (a quarter of the shutdown grace at most),
                         then the pipeline stops; stay InProgress with a message saying it will go on

and a reporter writes ``status.progress`` every progress interval (at once when the total is known).
``Host`` is what the supervisor needs of the controller (a Protocol: the two modules do not import each
other); the controller describes the transfer itself as a ``Transfer``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter, Gauge

from agent.aio.waiting import sleep_until
from agent.controller.jobs import Notice, Progress
from agent.controller.progress import ProgressTracker
from agent.errors import ConfigError, FerryError, KubeError, LocationError
from agent.expose.volumes import Volume
from agent.kube.events import EventRecorder
from agent.kube.times import now, timestamp
from agent.settings import AgentSettings
from agent.velero.locations import REPOSITORY_SECRET, REPOSITORY_SECRET_KEY, LocationResolver, StorageLocation
from agent.velero.objects import (
    CANCELED,
    CANCELING,
    FAILED,
    IN_PROGRESS,
    PREPARED,
    TERMINAL,
    MoverObject,
    Obj,
)
from agent.velero.statuses import Change, MetadataChange
from agent.velero.tuning import KNOWN_KEYS

log = logging.getLogger(__name__)

T = TypeVar("T", bound=MoverObject)

DRAIN_SHARE = 0.25
"""Share of ``shutdown_grace_s`` a resumable transfer gets to write what it has in flight when the agent
shuts down, before it is cancelled (the rest is for recording its state)."""


@dataclass(frozen=True)
class Transfer:
    """One transfer as the controller describes it to the supervisor."""

    noun: str
    """"restore" or "backup"."""
    what: str
    """For messages: "restoring snapshot … onto …", "backing up … into …"."""
    run: Callable[[Progress, Notice, asyncio.Event], Awaitable[object]]
    """Moves the data, reporting (bytes done, total bytes) and what the Events should say; returns what
    ``Host.transferred`` gets; raises FerryError saying why it could not. Cancelling it stops it, with no
    write still running. A resumable transfer also stops when the event is set, after writing what it
    fetched (raising Stopped): the agent sets it when it shuts down."""
    unknown_config: tuple[str, ...] = ()
    """``spec.dataMoverConfig`` keys that mean nothing to Ferry (reported in an Event)."""
    resumable: bool = False
    """Run again after an interruption, it keeps what the first run moved (a restore does)."""


class Host(Protocol, Generic[T]):
    """What a supervised transfer needs from the controller that runs it."""

    me: str
    settings: AgentSettings
    events: EventRecorder
    shutdown: asyncio.Event
    locations: LocationResolver | None
    held: Gauge
    """The objects this agent holds, by phase (``ferry_restores`` or ``ferry_backups``)."""
    ended: Counter
    """The transfers this agent ended, by final phase."""

    def latest(self, name: str) -> T | None: ...

    async def write(self, dd: T, change: Change[T], metadata: MetadataChange[T] | None = None) -> T | None: ...

    def timeout_s(self, dd: T) -> float: ...

    def transfer(self, dd: T, location: StorageLocation, volume: Volume) -> Transfer:
        """The transfer of ``dd`` between ``location`` and ``volume``; raises ConfigError for bad settings."""
        ...

    async def transferred(self, dd: T, total: int, result: object) -> None:
        """The transfer moved every byte of ``total`` and returned ``result``: what comes next is the
        controller's."""

    async def finish(
        self,
        dd: T,
        phase: str,
        message: str,
        *from_phases: str,
        progress: Callable[[T], Obj | None] | None = None,
        anyone: bool = False,
        release: bool = False,
    ) -> T | None: ...


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.1f} MB"


async def run(ctl: Host[T], dd: T, volume: Volume, wake: asyncio.Event) -> None:
    assert ctl.locations is not None
    try:
        timeout = ctl.timeout_s(dd)
        location = await ctl.locations.resolve(dd.storage_location)
        transfer = ctl.transfer(dd, location, volume)
    except (ConfigError, LocationError) as e:
        await ctl.finish(dd, FAILED, str(e), dd.phase)
        return
    restarted = dd.phase == IN_PROGRESS
    stamp = timestamp(now())
    message = f"restarted on node {ctl.me} after an interruption" if restarted else ""
    started = await ctl.write(
        dd,
        lambda cur: (
            {
                "phase": IN_PROGRESS,
                "startTimestamp": cur.started or stamp,
                "node": ctl.me,
                "nodeOS": "linux",
                "message": message,
            }
            if cur.phase in (PREPARED, IN_PROGRESS) and cur.node == ctl.me and not (cur.cancel or cur.deleting)
            else None
        ),
    )
    if started is None:
        return
    if transfer.unknown_config:
        await ctl.events.record(
            started.ref(),
            "UnknownConfig",
            f"spec.dataMoverConfig keys {', '.join(transfer.unknown_config)} mean nothing to Ferry and were ignored "
            f"(Ferry reads {', '.join(sorted(KNOWN_KEYS))})",
            "Warning",
        )
    if location.default_password:
        log.warning("the repository password is Velero's well-known default", extra={dd.KIND.lower(): dd.key})
        await ctl.events.record(
            started.ref(),
            "DefaultRepositoryPassword",
            f"the password in Secret {REPOSITORY_SECRET} (key {REPOSITORY_SECRET_KEY}) is Velero's well-known default, "
            "so anyone who can read the bucket can decrypt these backups: set a password of your own before the "
            "first backup (once repositories exist, add it to each with `ferry repo key add` first)",
            "Warning",
        )
    log.info("restarting" if restarted else "starting", extra={dd.KIND.lower(): dd.key, "transfer": transfer.what})
    await ctl.events.record(started.ref(), "Restarted" if restarted else "Started", f"{transfer.what} on node {ctl.me}")
    await _supervise(ctl, started, transfer, wake, timeout)


async def _supervise(ctl: Host[T], dd: T, transfer: Transfer, wake: asyncio.Event, limit_s: float) -> None:
    progress = ProgressTracker(dd.bytes_done, dd.total_bytes)
    outcome: list[tuple[BaseException | None, object]] = []
    subject = {dd.KIND.lower(): dd.key}

    async def move() -> None:
        try:
            outcome.append((None, await transfer.run(progress.update, notice, stopping)))
        except FerryError as e:
            outcome.append((e, None))
        except Exception as e:
            log.exception("%s failed unexpectedly", transfer.noun, extra=subject)
            outcome.append((e, None))
        finally:
            wake.set()

    reason = ""
    stopping = asyncio.Event()
    ctl.held.labels(IN_PROGRESS).inc()
    try:
        async with asyncio.TaskGroup() as tg:

            def notice(reason: str, message: str) -> None:
                log.info("%s", message, extra=subject)
                tg.create_task(ctl.events.record(dd.ref(), reason, message), name=f"event {reason} {dd.key}")

            task = tg.create_task(move(), name=f"{transfer.noun} {dd.key}")
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
                if reason == "shutdown" and transfer.resumable:
                    # Let what is in flight be written (within a share of the shutdown grace): going on
                    # later then fetches nothing twice.
                    stopping.set()
                    await asyncio.wait([task], timeout=ctl.settings.shutdown_grace_s * DRAIN_SHARE)
                if reason:
                    task.cancel()
                    if reason == "cancel":
                        await _canceling(ctl, cur or dd)
                    await asyncio.wait([task])
                    break
                await sleep_until(wake, limit_s - progress.idle_s())
            reporter.cancel()
    finally:
        ctl.held.labels(IN_PROGRESS).dec()
    error, result = outcome[0] if outcome else (None, None)
    await _conclude(ctl, dd, reason, error, result, progress, transfer)


async def _canceling(ctl: Host[T], dd: T) -> None:
    ctl.held.labels(CANCELING).inc()
    try:
        await ctl.write(
            dd, lambda cur: {"phase": CANCELING} if cur.phase == IN_PROGRESS and cur.node == ctl.me else None
        )
    except KubeError as e:
        log.warning("could not record Canceling: %s", e, extra={dd.KIND.lower(): dd.key})
    finally:
        ctl.held.labels(CANCELING).dec()


async def _conclude(
    ctl: Host[T],
    dd: T,
    reason: str,
    error: BaseException | None,
    result: object,
    progress: ProgressTracker,
    transfer: Transfer,
) -> None:
    done, total = progress.reported(), progress.total
    at = f"after {_size(done)} of {_size(total)}"
    subject = {dd.KIND.lower(): dd.key}
    if reason == "ended elsewhere":
        log.info("stopped: someone else ended it", extra=subject)
        return
    # Write from the latest state known (our progress writes included), not the one the transfer started
    # from, whose resourceVersion is stale: that would cost a refused write, a re-read and a second write.
    dd = ctl.latest(dd.name) or dd
    if reason == "deleted":
        await ctl.finish(
            dd, CANCELED, f"the {dd.KIND} was deleted; {transfer.noun} stopped {at}", IN_PROGRESS, CANCELING
        )
        log.info("%s stopped: the %s was deleted", transfer.noun, dd.KIND, extra=subject)
        return
    if reason == "cancel":
        await ctl.finish(dd, CANCELED, f"canceled (spec.cancel) {at}", IN_PROGRESS, CANCELING)
        return
    if reason == "shutdown":
        message = f"interrupted {at}: the Ferry agent on node {ctl.me} is shutting down; " + (
            f"it goes on with this {transfer.noun} when it is back, keeping what is already on the volume"
            if transfer.resumable
            else f"it starts this {transfer.noun} again from the start when it is back"
        )
        progress_fields = _progress_change(ctl.me, done, total)

        def interrupted(cur: T) -> Obj | None:
            fields = progress_fields(cur)  # None unless it is still ours and InProgress
            if fields is not None and not total:
                del fields["progress"]  # the transfer stopped before it knew its size
            return fields if fields is None else {"message": message, **fields}

        written = await ctl.write(dd, interrupted)
        ctl.ended.labels("Interrupted").inc()
        log.info("interrupted by shutdown", extra=subject | {"bytesDone": done})
        if written is not None:
            await ctl.events.record(written.ref(), "Interrupted", message, "Warning")
        return
    if reason == "stalled":
        await ctl.finish(
            dd,
            FAILED,
            f"no progress for {dd.operation_timeout} (spec.operationTimeout) {at}: {transfer.what} stalled; check "
            "that the object store answers and the volume can be read and written",
            IN_PROGRESS,
        )
        return
    if error is not None:
        await ctl.finish(dd, FAILED, f"{transfer.what} failed {at}: {error}", IN_PROGRESS)
        return

    await ctl.transferred(ctl.latest(dd.name) or dd, total, result)


async def _report(ctl: Host[T], dd: T, progress: ProgressTracker) -> None:
    """Write ``status.progress`` when the total is first known, then every interval while it changes."""
    await progress.known.wait()
    written: tuple[int, int] | None = None
    while True:
        figures = (progress.reported(), progress.total)
        if figures != written:
            try:
                await ctl.write(ctl.latest(dd.name) or dd, _progress_change(ctl.me, *figures))
                written = figures
            except KubeError as e:
                log.warning("could not write progress: %s", e, extra={dd.KIND.lower(): dd.key})
        await asyncio.sleep(ctl.settings.progress_interval_s)


def _progress_change(me: str, done: int, total: int) -> Callable[[MoverObject], Obj | None]:
    def change(cur: MoverObject) -> Obj | None:
        if cur.phase != IN_PROGRESS or cur.node != me:
            return None
        return {"progress": {"totalBytes": total, "bytesDone": max(done, cur.bytes_done)}}

    return change
