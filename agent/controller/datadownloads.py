"""The DataDownload controller: one serial worker per object, every claim an optimistic-concurrency write.

Lifecycle of a DataDownload as Velero creates it (``me`` is this node; Velero's built-in mover is the
reference: ``pkg/controller/data_download_controller.go`` and ``pkg/exposer/generic_restore.go``):

    New        ─(any agent; a lost race is fine)→ Accepted (annotation ferry.dev/accepted-by=me, finalizer)
    Accepted   acceptor: expose (restore PVC + restore pod, ``agent.expose.exposer``), watch the pod (one
               that can never run → Failed), name its node (annotation ferry.dev/restore-node);
               that node's agent, once the volume is mounted → Prepared(node=me);
               any agent: the prepare timeout → Failed
    Prepared   (node=me) ─(volume found, load limit free)→ InProgress(startTimestamp) → data restored
    InProgress (node=me, data restored: annotation ferry.dev/restored-pv) → hand the PV to the target PVC
               (``agent.expose.rebind``) → Completed (finalizer removed in the same write)
    InProgress (node=me, nothing running here: the agent restarted) → restore again from the start
    Canceling  (node=me, nothing running here) → Canceled
    Failed/Canceled/deleted with our finalizer: its holder (any agent after orphan_grace_s) deletes the
               restore pod, PVC and PV (a PV the target PVC names: finishes the hand-over instead), then
               removes the finalizer
    spec.cancel: New/Accepted/Prepared → Canceled; InProgress → Canceling → (pipeline stopped) → Canceled;
               during the hand-over only until the target PVC names the PV
    operationTimeout: bounds a transfer making no progress, and the hand-over → Failed
    another node's agent gone: any agent ends what it held once canceled or deleted (Prepared at once,
               InProgress/Canceling after orphan_grace_s)
    the API server refusing a step 3 times (403, 400, 422) → Failed, quoting the refusal

Hand-written DataDownloads with ``dataMoverConfig`` ``ferry.inPlace: "true"`` skip exposing and handing
over: an agent claims them only where the target PVC is mounted by a running pod, and restores into it.

Objects whose ``spec.datamover`` is not ours are never written. Workers decide from the latest watched
state, which may lag the server; that is safe because every write is conditional (resourceVersion
precondition, change recomputed on the fresh object), every step of exposing and handing over is
idempotent, and a worker that stops early is started again by the next event. A write's answer replaces
the watched state only if the watch delivered nothing meanwhile (resourceVersions cannot be ordered, and
a cancel may have overtaken it). Only monotone facts (cancel requested, deleted, a terminal phase) stop
a running restore.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.aio.waiting import sleep_until
from agent.controller import supervisor
from agent.controller.jobs import Restorer
from agent.controller.load import LoadLimiter
from agent.errors import ConfigError, KubeError, VolumeError
from agent.expose.exposer import Exposure, Owner, PodTemplate, RestoreExposer, Waiting
from agent.expose.rebind import Done, Pending, Rebinder, Record
from agent.expose.volumes import Volume, VolumeFinder
from agent.kube.api import Kube, Obj
from agent.kube.events import EventRecorder
from agent.kube.times import now, parse_time, seconds_since, timestamp
from agent.kube.watching import Watcher
from agent.metrics import Metrics
from agent.settings import AgentSettings, parse_duration
from agent.velero.locations import LocationResolver
from agent.velero.objects import (
    ACCEPTED,
    ACCEPTED_AT,
    ACCEPTED_BY,
    API_VERSION,
    CANCELED,
    CANCELING,
    COMPLETED,
    DATADOWNLOADS,
    FAILED,
    FINALIZER,
    IN_PROGRESS,
    NEW,
    PREPARED,
    REBIND_STARTED,
    RECLAIM_POLICY,
    RESTORE_NODE,
    RESTORED_PV,
    TERMINAL,
    DataDownload,
)
from agent.velero.statuses import Change, MetadataChange, StatusWriter

log = logging.getLogger(__name__)

REFUSALS_TO_FAIL = 3
"""Consecutive refusals of a step (403, 400, 422) after which the DataDownload fails naming the error."""
SLOT_WAIT_S = 3600.0
"""A queued worker re-checks this rarely on its own: its turn, a cancel or a change wake it."""


@dataclass
class Tracked:
    """What this agent keeps about one DataDownload while a worker handles it."""

    latest: DataDownload | None
    """The newest state known: watched, or a write's answer the watch had not overtaken."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by each delivery (and by the load limiter): the worker looks again at once."""
    deliveries: int = 0
    """How many times the watch delivered it (tells ``write`` whether its answer was overtaken)."""
    waiting: str = ""
    """What the last look found it waiting for (the timeout messages say it)."""
    error: str = ""
    """The Kubernetes API error of the last step that failed ("" once a step succeeds)."""
    orphan_since: float | None = None
    """When this agent first saw another agent's DataDownload in need of it: canceled or deleted while held
    there, or ended with our finalizer (monotonic; ``orphan_grace_s`` counts from it)."""
    rebind_since: float | None = None
    """When this agent first worked on its hand-over (monotonic)."""


class DataDownloadController:
    def __init__(self, kube: Kube, settings: AgentSettings, restorer: Restorer, metrics: Metrics) -> None:
        self.settings = settings
        self.me = settings.node_name
        self.kube = kube
        self.restorer = restorer
        self.metrics = metrics
        self.events = EventRecorder(kube, self.me)
        self.volumes = VolumeFinder(kube, self.me, settings.kubelet_root)
        self.template = PodTemplate(settings.pod_image)
        self.exposer = RestoreExposer(kube, self.template)
        self.rebinder = Rebinder(kube)
        self.load = LoadLimiter(settings.concurrency)
        self.watcher = Watcher(kube, DATADOWNLOADS, settings.watch_timeout_s, self._deliver)
        self.shutdown = asyncio.Event()
        self.statuses: StatusWriter | None = None
        self.locations: LocationResolver | None = None
        self._tracked: dict[str, Tracked] = {}
        """What this agent keeps about each DataDownload a worker handles (only those)."""
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None

    @property
    def ready(self) -> bool:
        return self.watcher.opened.is_set() and not self.shutdown.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then stop intake and give in-flight restores the shutdown grace to
        stop and record their state."""
        via_status = await self.kube.has_status_subresource(DATADOWNLOADS)
        self.statuses = StatusWriter(self.kube, via_status)
        if not self.template.image and self.settings.pod_name:
            self.template = PodTemplate(await self._own_image())
            self.exposer = RestoreExposer(self.kube, self.template)
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
                for tracked in self._tracked.values():
                    tracked.wake.set()
                workers = list(self._workers.values())
                if workers:
                    _, late = await asyncio.wait(workers, timeout=self.settings.shutdown_grace_s)
                    for task in late:
                        log.warning("worker %s did not stop within the shutdown grace", task.get_name())
                        task.cancel()
        self.watcher.opened.clear()
        log.info("agent stopped")

    async def _own_image(self) -> str:
        """The image of this agent's own container (restore pods run it): the pod's first container. ""
        when it cannot be read (restores into new volumes then fail saying so)."""
        try:
            pod = await self.kube.get_pod(self.kube.namespace, self.settings.pod_name)
        except KubeError as e:
            log.warning("cannot read this agent's pod for the restore pods' image (set FERRY_POD_IMAGE): %s", e)
            return ""
        containers = (pod.get("spec") or {}).get("containers") or []
        return str(containers[0].get("image", "")) if containers else ""

    # --- intake ----------------------------------------------------------------------------------------

    def _deliver(self, name: str, obj: Obj | None) -> None:
        dd = DataDownload.from_obj(obj) if obj is not None else None
        tracked = self._tracked.get(name)
        if tracked is None:
            if dd is None or not self._wants(dd) or self.shutdown.is_set() or self._tg is None:
                return
            tracked = self._tracked[name] = Tracked(dd)
            self._workers[name] = self._tg.create_task(self._work(name, tracked), name=f"datadownload {name}")
        tracked.latest = dd
        tracked.deliveries += 1
        tracked.wake.set()

    def _wants(self, dd: DataDownload) -> bool:
        """Ours (``spec.datamover``), and not ended — or ended with our finalizer still to remove."""
        return dd.datamover == self.settings.datamover and (dd.phase not in TERMINAL or FINALIZER in dd.finalizers)

    def worker(self, name: str) -> asyncio.Task[None] | None:
        """The task handling ``name`` right now, if any."""
        return self._workers.get(name)

    def latest(self, name: str) -> DataDownload | None:
        tracked = self._tracked.get(name)
        return tracked.latest if tracked is not None else None

    async def write(
        self, dd: DataDownload, change: Change, metadata: MetadataChange | None = None
    ) -> DataDownload | None:
        """A conditional write (``StatusWriter.update``). The newest version the server returned (the write's
        result, or the re-read that showed the change no longer applies) becomes the state the worker acts
        on next — unless the watch delivered the object meanwhile: that version may be newer (a cancel
        that arrived while the write was in flight), and resourceVersions cannot be ordered, so the
        watched state stays (if it is older, the next conditional write is refused and re-reads)."""
        assert self.statuses is not None
        tracked = self._tracked.get(dd.name)
        mark = tracked.deliveries if tracked is not None else 0
        seen: list[DataDownload] = []
        written = await self.statuses.update(dd, change, metadata, observe=seen.append)
        if seen and tracked is not None and tracked.deliveries == mark:
            tracked.latest = seen[-1]
        return written

    async def write_metadata(self, dd: DataDownload, change: MetadataChange) -> DataDownload | None:
        """``write`` of metadata alone (annotations, finalizers)."""
        return await self.write(dd, lambda cur: {} if change(cur) is not None else None, change)

    async def _work(self, name: str, tracked: Tracked) -> None:
        wake = tracked.wake
        failures = 0
        try:
            while not self.shutdown.is_set():
                wake.clear()
                dd = tracked.latest
                if dd is None:
                    break
                delay: float | None
                try:
                    delay = await self._step(dd, wake)
                    failures = 0
                    tracked.error = ""
                except KubeError as e:
                    failures += 1
                    tracked.error = str(e)
                    delay = min(30.0, 0.5 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                    log.warning(
                        "Kubernetes API error (%s); retrying in %.1f s", e, delay, extra={"datadownload": dd.key}
                    )
                    if failures >= REFUSALS_TO_FAIL and e.refusal:
                        delay = await self._refused(dd, e, failures, delay)
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
            self._tracked.pop(name, None)

    async def _refused(self, dd: DataDownload, error: KubeError, attempts: int, delay: float) -> float | None:
        """The API server refused the same step ``attempts`` times in a row with an error that does not clear by
        itself (403 Forbidden: a missing grant; 422/400: a request an admission policy or the schema refuses):
        fail the DataDownload saying so, instead of retrying until some timeout with only a log line. A
        DataDownload that already ended (its cleanup is what fails) keeps retrying."""
        if dd.phase in TERMINAL:
            return delay
        message = (
            f"the Kubernetes API refused a request {attempts} times: {error}; check Ferry's RBAC "
            "(daemonset/rbac.yaml) and the cluster's admission policies"
        )
        try:
            await self.finish(dd, FAILED, message, dd.phase, anyone=True)
        except KubeError as e:
            log.warning("could not record the failure either: %s", e, extra={"datadownload": dd.key})
            return delay
        return 0.0

    # --- decisions -------------------------------------------------------------------------------------

    async def _step(self, dd: DataDownload, wake: asyncio.Event) -> float | None:
        """Do what the object's state calls for; return seconds until it should be looked at again, or
        None when there is nothing left to do for it here."""
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
                return await self._prepare_in_place(dd)
            return await self._prepare_exposed(dd)
        if dd.node != self.me:
            return await self._orphan(dd) if stopping else None
        if dd.phase in (PREPARED, IN_PROGRESS):
            if dd.restored_pv:
                return await self._rebind(dd)
            if stopping:
                await self.finish(dd, CANCELED, "canceled before the restore started", dd.phase)
                return None if dd.in_place else 0.0
            return await self._start(dd, wake)
        if dd.phase == CANCELING:  # a cancel whose restore is not running here (the agent restarted)
            await self.finish(dd, CANCELED, "canceled; the restore had already stopped", CANCELING)
            return None if dd.in_place else 0.0
        return None

    async def _orphan(self, dd: DataDownload) -> float | None:
        """Canceled or deleted while another node holds it (``status.node``). Prepared: nothing runs yet, so any
        agent ends it at once. InProgress or Canceling: that node's agent stops its restore and ends it
        within moments; if it has not after ``orphan_grace_s`` (measured from when this agent first saw
        the request), that agent or its node is gone, and any agent ends it (should the restore still be
        running there, its supervisor sees the terminal phase and stops)."""
        if dd.phase == PREPARED:
            await self.finish(dd, CANCELED, "canceled before the restore started", PREPARED, anyone=True)
            return 0.0 if not dd.in_place else None
        if dd.phase not in (IN_PROGRESS, CANCELING):
            return None
        left = self.settings.orphan_grace_s - self._orphan_for(dd.name)
        if left > 0:
            return left
        message = (
            f"canceled; the Ferry agent on node {dd.node} did not stop the restore within "
            f"{self.settings.orphan_grace_s:g} s (FERRY_ORPHAN_GRACE): is it running?"
        )
        await self.finish(dd, CANCELED, message, IN_PROGRESS, CANCELING, anyone=True)
        return 0.0 if not dd.in_place else None

    def timeout_s(self, dd: DataDownload) -> float:
        seconds = parse_duration(dd.operation_timeout, "spec.operationTimeout") if dd.operation_timeout else 0
        return seconds if seconds > 0 else math.inf

    def exposure(self, dd: DataDownload) -> Exposure:
        """Where the restore PVC and pod of ``dd`` are (named after it, in its namespace), and its target."""
        return Exposure(dd.namespace, dd.name, dd.target_namespace, dd.target_pvc, dd.uid)

    async def _find(self, dd: DataDownload, *phases: str) -> Volume | float | None:
        """The volume if usable here; else seconds to wait for it, or None once the DataDownload was
        failed (it can never be used, or operationTimeout passed)."""
        claim = (dd.target_namespace, dd.target_pvc) if dd.in_place else (dd.namespace, dd.name)
        try:
            timeout = self.timeout_s(dd)
            volume = await self.volumes.find(claim)
        except (ConfigError, VolumeError) as e:
            await self.finish(dd, FAILED, str(e), *phases)
            return None
        if volume is not None:
            return volume
        if not dd.in_place:  # the restore pod holds the volume here: one that died or went never brings it back
            where = self.exposure(dd)
            pod = await self.exposer.pod(where)
            problem = pod.problem or ("" if pod.exists else f"restore pod {where.restore} was deleted")
            if problem:
                await self.finish(dd, FAILED, f"{problem}; the restore cannot go on without it", *phases)
                return None
        base = dd.accepted_at or dd.created
        waited = seconds_since(base)
        if waited >= timeout:
            if not dd.in_place:
                what = f"restore PVC {dd.namespace}/{dd.name} to be mounted on node {self.me} by its restore pod"
            elif dd.phase in (NEW, ACCEPTED):
                what = (
                    f"PVC {dd.target_namespace}/{dd.target_pvc} to be bound and mounted by a running pod on a node "
                    "with a Ferry agent"
                )
            else:
                what = f"the volume of PVC {dd.target_namespace}/{dd.target_pvc} to be mounted on node {self.me}"
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
        """Accept ``dd`` for this node: one conditional write (a lost race is not an error). A restore into a
        new volume is claimed at once (this agent then exposes it); an in-place restore only by a node where
        the target is mounted. Who accepted is kept in an annotation too, since older CRDs prune
        ``status.acceptedByNode``; the finalizer keeps deletion waiting for the cleanup of what is exposed."""
        found: Volume | None = None
        if dd.in_place:
            located = await self._find(dd, NEW)
            if not isinstance(located, Volume):
                return located
            found = located
        assert self.statuses is not None
        stamp = timestamp(now())

        def status(cur: DataDownload) -> Obj | None:
            if cur.phase != NEW or not self._wants(cur) or cur.cancel or cur.deleting:
                return None
            if cur.accepted_by not in ("", self.me) and not self._claim_abandoned(cur):
                return None
            return {"phase": ACCEPTED, "acceptedByNode": self.me, "acceptedTimestamp": stamp}

        def metadata(cur: DataDownload) -> Obj | None:
            fields: Obj = {"annotations": {ACCEPTED_BY: self.me, ACCEPTED_AT: stamp}}
            if not cur.in_place and FINALIZER not in cur.finalizers:
                fields["finalizers"] = [*cur.finalizers, FINALIZER]
            return fields

        accepted = await self.write(dd, status, metadata)
        if accepted is None or accepted.phase != ACCEPTED:
            log.info(
                "not claimed: it changed meanwhile (another agent claimed it, or it was canceled)",
                extra={"datadownload": dd.key},
            )
            return 0.0
        log.info(
            "accepted",
            extra={"datadownload": dd.key, "volume": found.describe() if found else self.exposure(dd).target},
        )
        await self.events.record(accepted.ref(), "Accepted", f"accepted by the Ferry agent on node {self.me}")
        if found is not None:
            return await self._prepare_in_place(accepted, found)
        return 0.0

    def _claim_abandoned(self, dd: DataDownload) -> bool:
        """A New object whose claim annotation names another agent that never wrote Accepted (with a /status
        subresource the claim is two writes, and that agent may have died between them): after the prepare
        timeout any agent may claim it again."""
        since = dd.accepted_at or dd.created
        return since is None or seconds_since(since) >= self.settings.prepare_timeout_s

    async def _prepare_in_place(self, dd: DataDownload, volume: Volume | None = None) -> float | None:
        if volume is None:
            found = await self._find(dd, ACCEPTED)
            if not isinstance(found, Volume):
                return found
        return await self._write_prepared(dd)

    async def _write_prepared(self, dd: DataDownload) -> float | None:
        assert self.statuses is not None
        prepared = await self.write(
            dd,
            lambda cur: (
                {"phase": PREPARED, "node": self.me}
                if cur.phase == ACCEPTED
                and not (cur.cancel or cur.deleting)
                and (cur.accepted_by == self.me or not cur.in_place)
                else None
            ),
        )
        if prepared is None:
            return 0.0
        await self.events.record(prepared.ref(), "Prepared", f"the restore volume is mounted on node {self.me}")
        return 0.0

    async def _prepare_exposed(self, dd: DataDownload) -> float | None:
        """Accepted, restoring into a new volume. The acceptor exposes it (restore PVC and pod), watches the pod
        (a pod that can never run fails it) and, once the pod is scheduled, names its node on the object
        (annotation ``ferry.dev/restore-node``); that node's agent, told by the watch, writes Prepared once
        the kubelet has mounted the volume. Other agents make no API calls for it: they only fail it when
        the prepare timeout passes (checked first, so that failing API calls cannot hold it off) — also
        what ends a restore whose acceptor died, as with Velero's own mover."""
        where = self.exposure(dd)
        if dd.cancel or dd.deleting:
            await self.finish(dd, CANCELED, "canceled before the restore started", ACCEPTED, anyone=True)
            return 0.0
        since = dd.accepted_at or dd.created
        waited = seconds_since(since)
        left = self.settings.prepare_timeout_s - waited
        if left <= 0:
            await self.finish(
                dd,
                FAILED,
                f"timed out after {self.settings.prepare_timeout_s:g} s (the prepare timeout, FERRY_PREPARE_TIMEOUT) "
                f"waiting for {self._note(dd.name).waiting or self._default_wait(dd)}{self._last_error(dd.name)}",
                ACCEPTED,
                anyone=True,
            )
            return 0.0
        poll = min(self.settings.volume_poll_interval_s, left)
        if dd.accepted_by != self.me:
            if dd.restore_node == self.me and await self.volumes.find((dd.namespace, dd.name)) is not None:
                return await self._write_prepared(dd)
            return poll if dd.restore_node == self.me else left
        if not self.template.image:
            message = (
                "no image for restore pods: set FERRY_POD_IMAGE, or FERRY_POD_NAME from the downward API so "
                "restore pods run the agent's own image"
            )
            await self.finish(dd, FAILED, message, ACCEPTED)
            return 0.0
        try:
            exposed = await self.exposer.expose(where, self.owner(dd))
        except VolumeError as e:
            await self.finish(dd, FAILED, f"cannot restore into PVC {where.target}: {e}", ACCEPTED)
            return 0.0
        if isinstance(exposed, Waiting):
            self._note(dd.name).waiting = exposed.reason
            return poll
        pod = await self.exposer.pod(where)
        if pod.problem:
            message = f"{pod.problem}; see `kubectl -n {dd.namespace} describe pod {dd.name}`"
            await self.finish(dd, FAILED, message, ACCEPTED)
            return 0.0
        if pod.unschedulable:
            stuck = seconds_since(pod.unschedulable_since)
            if stuck >= self.settings.unschedulable_grace_s:
                message = f"restore pod {where.restore} cannot be scheduled: {pod.unschedulable}"
                await self.finish(dd, FAILED, message, ACCEPTED)
                return 0.0
            self._note(dd.name).waiting = f"restore pod {where.restore} to be scheduled ({pod.unschedulable})"
            return poll
        if pod.node and dd.restore_node != pod.node:
            await self.write_metadata(
                dd, lambda cur: {"annotations": {RESTORE_NODE: pod.node}} if cur.phase == ACCEPTED else None
            )
            return 0.0
        if pod.running and pod.node == self.me and await self.volumes.find((dd.namespace, dd.name)) is not None:
            return await self._write_prepared(dd)
        self._note(dd.name).waiting = self._default_wait(dd, pod.exists, pod.running)
        return poll

    def _default_wait(self, dd: DataDownload, exists: bool = True, running: bool = False) -> str:
        """What an Accepted DataDownload waits for, as far as its annotations (and the pod) tell."""
        restore = self.exposure(dd).restore
        if dd.restore_node and (running or dd.accepted_by != self.me):
            return (
                f"the Ferry agent on node {dd.restore_node}, where restore pod {restore} runs, to find its volume "
                "(is Ferry's DaemonSet running on that node?)"
            )
        if dd.restore_node:
            return f"restore pod {restore} to run with its volume on node {dd.restore_node}"
        if exists and dd.accepted_by == self.me:
            return f"restore pod {restore} to be scheduled"
        return f"the Ferry agent on node {dd.accepted_by or '?'} to expose the volume (restore pod {restore})"

    def _last_error(self, name: str) -> str:
        error = self._note(name).error
        return f" (the last Kubernetes API error: {error})" if error else ""

    def _note(self, name: str) -> Tracked:
        """The tracked state of a DataDownload a worker handles (a detached one outside a worker)."""
        return self._tracked.get(name) or Tracked(None)

    def _orphan_for(self, name: str) -> float:
        """Seconds since this agent first saw ``name`` in need of it while another agent holds it."""
        tracked = self._note(name)
        if tracked.orphan_since is None:
            tracked.orphan_since = time.monotonic()
        return time.monotonic() - tracked.orphan_since

    def owner(self, dd: DataDownload) -> Owner:
        return Owner(API_VERSION, "DataDownload", dd.name, dd.uid)

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
        return None if dd.in_place else 0.0

    async def restored(self, dd: DataDownload, total: int) -> None:
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
        assert self.statuses is not None
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
        tracked = self._note(dd.name)
        if tracked.rebind_since is None:
            tracked.rebind_since = time.monotonic()
        # An agent back from an absence longer than the timeout gets the whole timeout again: the time it
        # was away is not time the cluster kept it waiting.
        waited = min(
            seconds_since(started),
            time.monotonic() - tracked.rebind_since,
        )
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

    async def _clean_up(self, dd: DataDownload) -> float | None:
        """A DataDownload that ended (or is being deleted) with our finalizer, by the agent that holds it
        (``status.node``, else the acceptor; any agent after ``orphan_grace_s``): delete its restore pod and PVC,
        and the restored PV — unless the target PVC already names it: then the PV holds the application's
        data, and the hand-over is finished instead (claimRef, labels, Bound, reclaim policy), since a PV
        left with the restore PVC's claim would be released and deleted. Then remove the finalizer."""
        holder = dd.node or dd.accepted_by
        if holder not in (self.me, ""):
            # The holder's own worker runs the hand-over and this cleanup one after the other; another agent
            # deleting the restore PVC or PV meanwhile could pull the volume from under a hand-over.
            grace = self.settings.orphan_grace_s - self._orphan_for(dd.name)
            if grace > 0:
                return grace
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
        left = await self.exposer.clean_up(where, keep_pv=keep)  # idempotent
        if not left and dd.restored_pv and not keep:
            await self.exposer.discard_pv(dd.restored_pv, delete=True)
        if left:
            return self.settings.volume_poll_interval_s
        assert self.statuses is not None
        done = await self.write_metadata(
            dd,
            lambda cur: (
                {"finalizers": [f for f in cur.finalizers if f != FINALIZER]} if FINALIZER in cur.finalizers else None
            ),
        )
        if done is not None:
            log.info("cleaned up", extra={"datadownload": dd.key})
        return None

    # --- writes ----------------------------------------------------------------------------------------

    async def finish(
        self,
        dd: DataDownload,
        phase: str,
        message: str,
        *from_phases: str,
        progress: Callable[[DataDownload], Obj | None] | None = None,
        anyone: bool = False,
        release: bool = False,
    ) -> DataDownload | None:
        """Move to a terminal phase (with completionTimestamp and message) if the object is still in one of
        ``from_phases`` and handled here (``anyone``: by whichever agent, e.g. a prepare timeout); with
        ``release``, drop our finalizer in the same write (nothing is left to clean up). Record the Event.
        Returns the written object or None."""
        assert self.statuses is not None
        stamp = timestamp(now())

        def change(cur: DataDownload) -> Obj | None:
            if cur.phase not in from_phases or cur.datamover != self.settings.datamover:
                return None
            if not anyone and cur.phase != NEW and (cur.node or cur.accepted_by) not in (self.me, ""):
                return None
            fields: Obj = {"phase": phase, "message": message, "completionTimestamp": stamp}
            if progress is not None and (extra := progress(cur)) is not None:
                fields["progress"] = extra
            return fields

        def metadata(cur: DataDownload) -> Obj | None:
            return (
                {"finalizers": [f for f in cur.finalizers if f != FINALIZER]} if FINALIZER in cur.finalizers else None
            )

        written = await self.write(dd, change, metadata if release else None)
        if written is None:
            return None
        self.metrics.finished.labels(phase).inc()
        level = logging.INFO if phase != FAILED else logging.WARNING
        log.log(
            level, "%s", f"{phase.lower()}: {message}" if message else phase.lower(), extra={"datadownload": dd.key}
        )
        await self.events.record(written.ref(), phase, message, "Warning" if phase == FAILED else "Normal")
        return written
