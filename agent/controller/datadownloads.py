"""The DataDownload controller: one serial worker per object, every claim an optimistic-concurrency write.

Lifecycle as this agent drives it (``me`` is this node):

    New        ─(volume usable here)→ Accepted(acceptedByNode=me) → Prepared(node=me)
    Accepted   (acceptedByNode=me, e.g. after a restart) → Prepared(node=me)
    Prepared   (node=me) ─(volume found, slot free)→ InProgress(startTimestamp) → Completed | Failed
    InProgress (node=me, nothing running here: the agent restarted) → restore again from the start
    Canceling  (node=me, nothing running here) → Canceled
    spec.cancel: New/Accepted/Prepared → Canceled; InProgress → Canceling → (pipeline stopped) → Canceled
    deleted while restoring: the restore stops; nothing is written to an object that is gone
    operationTimeout: bounds waiting for the volume and a transfer making no progress → Failed

Objects whose ``spec.datamover`` is not ours are never written. Workers decide from the latest watched
state, which may lag the server; that is safe because every write is conditional (resourceVersion
precondition, change recomputed on the fresh object), and a worker that stops early is started again by
the next event. Only monotone facts (cancel requested, deleted, a terminal phase) stop a running restore.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tempfile
from collections.abc import Callable

from agent.aio.waiting import sleep_until
from agent.controller import supervisor
from agent.controller.jobs import Restorer
from agent.controller.load import LoadLimiter
from agent.errors import ConfigError, KubeError, VolumeError
from agent.expose.volumes import Volume, VolumeFinder
from agent.kube.api import Kube, Obj
from agent.kube.events import EventRecorder
from agent.kube.times import now, timestamp
from agent.kube.watching import Watcher
from agent.metrics import Metrics
from agent.settings import AgentSettings, parse_duration
from agent.velero.locations import LocationResolver
from agent.velero.objects import (
    ACCEPTED,
    CANCELED,
    CANCELING,
    FAILED,
    IN_PROGRESS,
    NEW,
    PREPARED,
    TERMINAL,
    DataDownload,
)
from agent.velero.statuses import StatusWriter

log = logging.getLogger(__name__)

SLOT_WAIT_S = 3600.0
"""A queued worker re-checks this rarely on its own: its turn, a cancel or a change wake it."""


class DataDownloadController:
    def __init__(self, kube: Kube, settings: AgentSettings, restorer: Restorer, metrics: Metrics) -> None:
        self.settings = settings
        self.me = settings.node_name
        self.kube = kube
        self.restorer = restorer
        self.metrics = metrics
        self.events = EventRecorder(kube, self.me)
        self.volumes = VolumeFinder(kube, self.me, settings.kubelet_root)
        self.load = LoadLimiter(settings.concurrency)
        self.watcher = Watcher(kube, settings.watch_timeout_s, self._deliver)
        self.shutdown = asyncio.Event()
        self.statuses: StatusWriter | None = None
        self.locations: LocationResolver | None = None
        self._latest: dict[str, DataDownload | None] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None

    @property
    def ready(self) -> bool:
        return self.watcher.opened.is_set() and not self.shutdown.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then stop intake and give in-flight restores the shutdown grace to
        stop and record their state."""
        via_status = await self.kube.has_status_subresource()
        self.statuses = StatusWriter(self.kube, via_status)
        log.info(
            "agent started",
            extra={"node": self.me, "namespace": self.kube.namespace, "statusSubresource": via_status},
        )
        with tempfile.TemporaryDirectory(prefix="ferry-agent-") as state_dir:
            self.locations = LocationResolver(self.kube, self.settings.credentials_file, state_dir)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                watch = tg.create_task(self.watcher.run(), name="watch datadownloads")
                await stop.wait()
                log.info("stopping: taking no new work", extra={"inFlight": self.load.running})
                watch.cancel()
                self.shutdown.set()
                for wake in self._wake.values():
                    wake.set()
                workers = list(self._workers.values())
                if workers:
                    _, late = await asyncio.wait(workers, timeout=self.settings.shutdown_grace_s)
                    for task in late:
                        log.warning("worker %s did not stop within the shutdown grace", task.get_name())
                        task.cancel()
        self.watcher.opened.clear()
        log.info("agent stopped")

    # --- intake ----------------------------------------------------------------------------------------

    def _deliver(self, name: str, obj: Obj | None) -> None:
        dd = DataDownload.from_obj(obj) if obj is not None else None
        if name not in self._workers and (dd is None or not self._wants(dd)):
            self._latest.pop(name, None)
            return
        self._latest[name] = dd
        self.wake(name)
        if name not in self._workers and not self.shutdown.is_set() and self._tg is not None:
            self._workers[name] = self._tg.create_task(self._work(name), name=f"datadownload {name}")

    def _wants(self, dd: DataDownload) -> bool:
        return dd.datamover == self.settings.datamover and dd.phase not in TERMINAL

    def wake(self, name: str) -> asyncio.Event:
        wake = self._wake.get(name)
        if wake is None:
            wake = self._wake[name] = asyncio.Event()
        wake.set()
        return wake

    def worker(self, name: str) -> asyncio.Task[None] | None:
        """The task handling ``name`` right now, if any."""
        return self._workers.get(name)

    def latest(self, name: str) -> DataDownload | None:
        return self._latest.get(name)

    def remember(self, dd: DataDownload) -> None:
        """Our own write's result: the freshest state we know until the watch says more."""
        self._latest[dd.name] = dd

    async def _work(self, name: str) -> None:
        wake = self._wake[name]
        failures = 0
        try:
            while not self.shutdown.is_set():
                wake.clear()
                dd = self._latest.get(name)
                if dd is None:
                    break
                delay: float | None
                try:
                    delay = await self._step(dd, wake)
                    failures = 0
                except KubeError as e:
                    failures += 1
                    delay = min(30.0, 0.5 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                    log.warning(
                        "Kubernetes API error (%s); retrying in %.1f s", e, delay, extra={"datadownload": dd.key}
                    )
                except Exception:
                    failures += 1
                    delay = min(300.0, 5.0 * 2**failures)
                    log.exception("unexpected error; retrying in %.0f s", delay, extra={"datadownload": dd.key})
                if delay is None:
                    if wake.is_set():
                        continue
                    break
                await sleep_until(wake, delay)
        finally:
            self.load.release(name)
            self._workers.pop(name, None)
            self._latest.pop(name, None)
            self._wake.pop(name, None)

    # --- decisions -------------------------------------------------------------------------------------

    async def _step(self, dd: DataDownload, wake: asyncio.Event) -> float | None:
        """Do what the object's state calls for; return seconds until it should be looked at again, or
        None when there is nothing left to do for it here."""
        if not self._wants(dd):
            return None
        stopping = dd.cancel or dd.deleting
        if dd.phase == NEW:
            if stopping:
                await self.finish(dd, CANCELED, "canceled before any node accepted it", NEW)
                return None
            return await self._claim(dd)
        if dd.phase == ACCEPTED:
            if dd.accepted_by != self.me:
                return None
            if stopping:
                await self.finish(dd, CANCELED, "canceled before the restore started", ACCEPTED)
                return None
            return await self._prepare(dd)
        if dd.node != self.me:
            return None
        if dd.phase in (PREPARED, IN_PROGRESS):
            if stopping:
                await self.finish(dd, CANCELED, "canceled before the restore started", dd.phase)
                return None
            return await self._start(dd, wake)
        if dd.phase == CANCELING:  # a cancel whose restore is not running here (the agent restarted)
            await self.finish(dd, CANCELED, "canceled; the restore had already stopped", CANCELING)
        return None

    def timeout_s(self, dd: DataDownload) -> float:
        seconds = parse_duration(dd.operation_timeout, "spec.operationTimeout") if dd.operation_timeout else 0
        return seconds if seconds > 0 else math.inf

    async def _find(self, dd: DataDownload, *phases: str) -> Volume | float | None:
        """The volume if usable here; else seconds to wait for it, or None once the DataDownload was
        failed (it can never be used, or operationTimeout passed)."""
        try:
            timeout = self.timeout_s(dd)
            volume = await self.volumes.find((dd.namespace, dd.name), (dd.target_namespace, dd.target_pvc))
        except (ConfigError, VolumeError) as e:
            await self.finish(dd, FAILED, str(e), *phases)
            return None
        if volume is not None:
            return volume
        base = dd.accepted_at or dd.created
        waited = (now() - base).total_seconds() if base else 0.0
        if waited >= timeout:
            what = (
                f"PVC {dd.target_namespace}/{dd.target_pvc} (or {dd.namespace}/{dd.name}) to be bound and mounted "
                "by a running pod on a node with a Ferry agent"
                if dd.phase in (NEW, ACCEPTED)
                else f"the volume of PVC {dd.target_namespace}/{dd.target_pvc} to be mounted on node {self.me}"
            )
            await self.finish(
                dd,
                FAILED,
                f"timed out after {dd.operation_timeout} (spec.operationTimeout) waiting for {what}; check the PVC "
                "and the pod that should mount it",
                *phases,
            )
            return None
        return min(self.settings.volume_poll_interval_s, timeout - waited)

    async def _claim(self, dd: DataDownload) -> float | None:
        found = await self._find(dd, NEW)
        if not isinstance(found, Volume):
            return found
        assert self.statuses is not None
        stamp = timestamp(now())
        accepted = await self.statuses.update(
            dd,
            lambda cur: (
                {"phase": ACCEPTED, "acceptedByNode": self.me, "acceptedTimestamp": stamp}
                if cur.phase == NEW and self._wants(cur) and not (cur.cancel or cur.deleting)
                else None
            ),
        )
        if accepted is None:
            log.info("another agent claimed it first", extra={"datadownload": dd.key})
            return None
        self.remember(accepted)
        log.info("accepted", extra={"datadownload": dd.key, "volume": found.describe()})
        await self.events.record(accepted.ref(), "Accepted", f"accepted by the Ferry agent on node {self.me}")
        return await self._prepare(accepted, found)

    async def _prepare(self, dd: DataDownload, volume: Volume | None = None) -> float | None:
        if volume is None:
            found = await self._find(dd, ACCEPTED)
            if not isinstance(found, Volume):
                return found
        assert self.statuses is not None
        prepared = await self.statuses.update(
            dd,
            lambda cur: (
                {"phase": PREPARED, "node": self.me}
                if cur.phase == ACCEPTED and cur.accepted_by == self.me and not (cur.cancel or cur.deleting)
                else None
            ),
        )
        if prepared is None:
            return 0.0
        self.remember(prepared)
        return 0.0

    async def _start(self, dd: DataDownload, wake: asyncio.Event) -> float | None:
        found = await self._find(dd, dd.phase)
        if not isinstance(found, Volume):
            return found
        if not self.load.acquire(dd.name, wake):
            self.metrics.restores.labels("Queued").set(self.load.queued)
            return SLOT_WAIT_S
        self.metrics.restores.labels("Queued").set(self.load.queued)
        try:
            await supervisor.run(self, dd, found, wake)
        finally:
            self.load.release(dd.name)
            self.metrics.restores.labels("Queued").set(self.load.queued)
        return None

    # --- writes ----------------------------------------------------------------------------------------

    async def finish(
        self,
        dd: DataDownload,
        phase: str,
        message: str,
        *from_phases: str,
        progress: Callable[[DataDownload], Obj | None] | None = None,
    ) -> DataDownload | None:
        """Move to a terminal phase (with completionTimestamp and message) if the object is still in one of
        ``from_phases`` and handled here; record the Event. Returns the written object or None."""
        assert self.statuses is not None
        stamp = timestamp(now())

        def change(cur: DataDownload) -> Obj | None:
            if cur.phase not in from_phases or cur.datamover != self.settings.datamover:
                return None
            if cur.phase not in (NEW,) and (cur.node or cur.accepted_by) not in (self.me, ""):
                return None
            fields: Obj = {"phase": phase, "message": message, "completionTimestamp": stamp}
            if progress is not None and (extra := progress(cur)) is not None:
                fields["progress"] = extra
            return fields

        written = await self.statuses.update(dd, change)
        if written is None:
            return None
        self.remember(written)
        self.metrics.finished.labels(phase).inc()
        level = logging.INFO if phase != FAILED else logging.WARNING
        log.log(
            level, "%s", f"{phase.lower()}: {message}" if message else phase.lower(), extra={"datadownload": dd.key}
        )
        await self.events.record(written.ref(), phase, message, "Warning" if phase == FAILED else "Normal")
        return written
