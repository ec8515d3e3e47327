"""What the DataUpload and DataDownload controllers share: one serial worker per object, every claim an
optimistic-concurrency write, and the phase machine up to the transfer (Velero's built-in mover is the
reference: ``pkg/controller/data_upload_controller.go`` and ``data_download_controller.go``).

    New        ─(any agent; a lost race is fine)→ Accepted (annotation ferry.dev/accepted-by=me, finalizer)
    Accepted   acceptor: expose (a PVC and a pod holding it, ``agent.expose``), watch the pod (one that can
               never run → Failed), name its node (annotation ``NODE_ANNOTATION`` of the kind);
               that node's agent, once the volume is mounted → Prepared(node=me);
               any agent: the prepare timeout → Failed
    Prepared   (node=me) ─(volume found, load limit free)→ InProgress(startTimestamp, nodeOS) → transfer
               (``agent.controller.supervisor``) → the subclass's ``transferred``
    Canceling  (node=me, nothing running here) → Canceled
    Failed/Canceled/deleted with our finalizer: its holder (any agent after orphan_grace_s) removes what
               was exposed (the subclass's ``clean_up_exposed``), then the finalizer
    spec.cancel: New/Accepted/Prepared → Canceled; InProgress → Canceling → (transfer stopped) → Canceled
    operationTimeout: bounds a transfer making no progress → Failed
    another node's agent gone: any agent ends what it held once canceled or deleted (Prepared at once,
               InProgress/Canceling after orphan_grace_s)
    the API server refusing a step 3 times (403, 400, 422) → Failed, quoting the refusal

Objects whose ``spec.datamover`` is not ours are never written. Workers decide from the latest watched
state, which may lag the server; that is safe because every write is conditional (resourceVersion
precondition, change recomputed on the fresh object), every step of exposing and cleaning up is
idempotent, and a worker that stops early is started again by the next event. A write's answer replaces
the watched state only if the watch delivered nothing meanwhile (resourceVersions cannot be ordered, and
a cancel may have overtaken it). Only monotone facts (cancel requested, deleted, a terminal phase) stop
a running transfer.

The node's load limit (Velero's ``loadConcurrency``) is one ``LoadLimiter`` the controllers share: it
counts backups and restores together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

from agent.aio.waiting import sleep_until
from agent.controller import supervisor
from agent.controller.load import LoadLimiter
from agent.controller.supervisor import Transfer
from agent.errors import ConfigError, KubeError, VolumeError
from agent.expose.pods import Exposed, Owner, Place, Pods, PodState, PodTemplate, Waiting
from agent.expose.volumes import Volume, VolumeFinder
from agent.kube.api import Kube, Obj
from agent.kube.events import EventRecorder
from agent.kube.times import now, seconds_since, timestamp
from agent.kube.watching import Watcher
from agent.metrics import Metrics
from agent.settings import AgentSettings, parse_duration
from agent.velero.locations import LocationResolver, StorageLocation
from agent.velero.objects import (
    ACCEPTED,
    ACCEPTED_AT,
    ACCEPTED_BY,
    API_VERSION,
    CANCELED,
    CANCELING,
    FAILED,
    FINALIZER,
    IN_PROGRESS,
    NEW,
    PREPARED,
    TERMINAL,
    MoverObject,
)
from agent.velero.statuses import Change, MetadataChange, StatusWriter

log = logging.getLogger(__name__)

T = TypeVar("T", bound=MoverObject)

REFUSALS_TO_FAIL = 3
"""Consecutive refusals of a step (403, 400, 422) after which the object fails naming the error."""
SLOT_WAIT_S = 3600.0
"""A queued worker re-checks this rarely on its own: its turn, a cancel or a change wake it."""


@dataclass
class Tracked(Generic[T]):
    """What this agent keeps about one object while a worker handles it."""

    latest: T | None
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
    """When this agent first saw another agent's object in need of it: canceled or deleted while held
    there, or ended with our finalizer (monotonic; ``orphan_grace_s`` counts from it)."""
    since: float | None = None
    """When this agent first worked on the step after the transfer (a hand-over, a cleanup; monotonic)."""


OTHERS_MARGIN_S = 2.0
"""Seconds past the prepare timeout after which agents other than the acceptor fail an Accepted object."""


class MoverController(ABC, Generic[T]):
    """The shared machinery; a subclass names its kind (``view``), what exposing means, the transfer and
    what follows it."""

    view: type[T]
    noun: str
    """"restore" or "backup": names the exposed pod and PVC in messages."""

    def __init__(
        self, kube: Kube, settings: AgentSettings, metrics: Metrics, load: LoadLimiter, held: Gauge, ended: Counter
    ) -> None:
        self.settings = settings
        self.me = settings.node_name
        self.kube = kube
        self.metrics = metrics
        self.held = held
        self.ended = ended
        self.events = EventRecorder(kube, self.me)
        self.volumes = VolumeFinder(kube, self.me, settings.kubelet_root)
        self.pods = Pods(kube, PodTemplate(settings.pod_image))
        self.load = load
        self.watcher = Watcher(kube, self.view.RESOURCE, settings.watch_timeout_s, self._deliver)
        self.shutdown = asyncio.Event()
        self.statuses: StatusWriter[T] | None = None
        self.locations: LocationResolver | None = None
        self._tracked: dict[str, Tracked[T]] = {}
        """What this agent keeps about each object a worker handles (only those)."""
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None

    @property
    def kind(self) -> str:
        return self.view.KIND.lower()

    @property
    def ready(self) -> bool:
        return self.watcher.opened.is_set() and not self.shutdown.is_set()

    def subject(self, dd: T) -> dict[str, str]:
        """The log fields naming ``dd``."""
        return {self.kind: dd.key}

    async def run(self, stop: asyncio.Event, image: str = "") -> None:
        """Work until ``stop`` is set, then stop intake and give in-flight transfers the shutdown grace to
        stop and record their state. ``image``: the exposing pods' image when the settings name none."""
        via_status = await self.kube.has_status_subresource(self.view.RESOURCE)
        self.statuses = StatusWriter(self.kube, self.view, via_status)
        if not self.pods.template.image and image:
            self.pods.template = PodTemplate(image)
        log.info(
            "controller started",
            extra={
                "kind": self.view.KIND,
                "node": self.me,
                "namespace": self.kube.namespace,
                "statusSubresource": via_status,
            },
        )
        with tempfile.TemporaryDirectory(prefix=f"ferry-{self.kind}-") as state_dir:
            self.locations = LocationResolver(self.kube, self.settings.credentials_file, state_dir)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                watch = tg.create_task(self.watcher.run(), name=f"watch {self.view.RESOURCE.plural}")
                await stop.wait()
                log.info("stopping: taking no new work", extra={"kind": self.view.KIND, "inFlight": len(self._workers)})
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
        log.info("controller stopped", extra={"kind": self.view.KIND})

    # --- intake ----------------------------------------------------------------------------------------

    def _deliver(self, name: str, obj: Obj | None) -> None:
        dd = self.view.from_obj(obj) if obj is not None else None
        tracked = self._tracked.get(name)
        if tracked is None:
            if dd is None or not self._wants(dd) or self.shutdown.is_set() or self._tg is None:
                return
            tracked = self._tracked[name] = Tracked(dd)
            self._workers[name] = self._tg.create_task(self._work(name, tracked), name=f"{self.kind} {name}")
        tracked.latest = dd
        tracked.deliveries += 1
        tracked.wake.set()

    def _wants(self, dd: T) -> bool:
        """Ours (``spec.datamover``), and not ended — or ended with our finalizer still to remove."""
        return dd.datamover == self.settings.datamover and (dd.phase not in TERMINAL or FINALIZER in dd.finalizers)

    def worker(self, name: str) -> asyncio.Task[None] | None:
        """The task handling ``name`` right now, if any."""
        return self._workers.get(name)

    def latest(self, name: str) -> T | None:
        tracked = self._tracked.get(name)
        return tracked.latest if tracked is not None else None

    async def write(self, dd: T, change: Change[T], metadata: MetadataChange[T] | None = None) -> T | None:
        """A conditional write (``StatusWriter.update``). The newest version the server returned (the write's
        result, or the re-read that showed the change no longer applies) becomes the state the worker acts
        on next — unless the watch delivered the object meanwhile: that version may be newer (a cancel
        that arrived while the write was in flight), and resourceVersions cannot be ordered, so the
        watched state stays (if it is older, the next conditional write is refused and re-reads)."""
        assert self.statuses is not None
        tracked = self._tracked.get(dd.name)
        mark = tracked.deliveries if tracked is not None else 0
        seen: list[T] = []
        written = await self.statuses.update(dd, change, metadata, observe=seen.append)
        if seen and tracked is not None and tracked.deliveries == mark:
            tracked.latest = seen[-1]
        return written

    async def write_metadata(self, dd: T, change: MetadataChange[T]) -> T | None:
        """``write`` of metadata alone (annotations, finalizers)."""
        return await self.write(dd, lambda cur: {} if change(cur) is not None else None, change)

    async def _work(self, name: str, tracked: Tracked[T]) -> None:
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
                    log.warning("Kubernetes API error (%s); retrying in %.1f s", e, delay, extra=self.subject(dd))
                    if failures >= REFUSALS_TO_FAIL and e.refusal:
                        delay = await self._refused(dd, e, failures, delay)
                except Exception:
                    failures += 1
                    delay = min(300.0, 5.0 * 2**failures)
                    log.exception("unexpected error; retrying in %.0f s", delay, extra=self.subject(dd))
                if delay is None:
                    if wake.is_set():
                        continue
                    break
                await sleep_until(wake, delay)
        finally:
            self.load.release(self._load_key(name))
            self._workers.pop(name, None)
            self._tracked.pop(name, None)

    async def _refused(self, dd: T, error: KubeError, attempts: int, delay: float) -> float | None:
        """The API server refused the same step ``attempts`` times in a row with an error that does not clear by
        itself (403 Forbidden: a missing grant; 422/400: a request an admission policy or the schema refuses):
        fail the object saying so, instead of retrying until some timeout with only a log line. An object
        that already ended (its cleanup is what fails) keeps retrying."""
        if dd.phase in TERMINAL:
            return delay
        message = (
            f"the Kubernetes API refused a request {attempts} times: {error}; check Ferry's RBAC "
            "(daemonset/rbac.yaml) and the cluster's admission policies"
        )
        try:
            await self.finish(dd, FAILED, message, dd.phase, anyone=True)
        except KubeError as e:
            log.warning("could not record the failure either: %s", e, extra=self.subject(dd))
            return delay
        return 0.0

    # --- decisions -------------------------------------------------------------------------------------

    @abstractmethod
    async def _step(self, dd: T, wake: asyncio.Event) -> float | None:
        """Do what the object's state calls for; return seconds until it should be looked at again, or
        None when there is nothing left to do for it here."""

    async def _orphan(self, dd: T) -> float | None:
        """Canceled or deleted while another node holds it (``status.node``). Prepared: nothing runs yet, so any
        agent ends it at once. InProgress or Canceling: that node's agent stops its transfer and ends it
        within moments; if it has not after ``orphan_grace_s`` (measured from when this agent first saw
        the request), that agent or its node is gone, and any agent ends it (should the transfer still be
        running there, its supervisor sees the terminal phase and stops)."""
        if dd.phase == PREPARED:
            await self.finish(dd, CANCELED, f"canceled before the {self.noun} started", PREPARED, anyone=True)
            return 0.0 if not dd.in_place else None
        if dd.phase not in (IN_PROGRESS, CANCELING):
            return None
        left = self.settings.orphan_grace_s - self._orphan_for(dd.name)
        if left > 0:
            return left
        message = (
            f"canceled; the Ferry agent on node {dd.node} did not stop the {self.noun} within "
            f"{self.settings.orphan_grace_s:g} s (FERRY_ORPHAN_GRACE): is it running?"
        )
        await self.finish(dd, CANCELED, message, IN_PROGRESS, CANCELING, anyone=True)
        return 0.0 if not dd.in_place else None

    def timeout_s(self, dd: T) -> float:
        seconds = parse_duration(dd.operation_timeout, "spec.operationTimeout") if dd.operation_timeout else 0
        return seconds if seconds > 0 else math.inf

    def place(self, dd: T) -> Place:
        """Where the exposing pod and PVC of ``dd`` are: named after it, in its namespace."""
        return Place(dd.namespace, dd.name, dd.uid, self.noun)

    def volume_claim(self, dd: T) -> tuple[str, str]:
        """The PVC whose volume the transfer reads or writes on this node."""
        return dd.namespace, dd.name

    def volume_wait(self, dd: T) -> str:
        """What a transfer whose volume is not usable here waits for (the timeout message says it)."""
        return f"{self.noun} PVC {dd.namespace}/{dd.name} to be mounted on node {self.me} by its {self.noun} pod"

    async def _find(self, dd: T, *phases: str) -> Volume | float | None:
        """The volume if usable here; else seconds to wait for it, or None once the object was failed (it
        can never be used, or operationTimeout passed)."""
        try:
            timeout = self.timeout_s(dd)
            volume = await self.volumes.find(self.volume_claim(dd))
        except (ConfigError, VolumeError) as e:
            await self.finish(dd, FAILED, str(e), *phases)
            return None
        if volume is not None:
            return volume
        if not dd.in_place:  # the exposing pod holds the volume here: one that died or went never brings it back
            where = self.place(dd)
            pod = await self.pods.pod(where)
            problem = pod.problem or ("" if pod.exists else f"{self.noun} pod {where.exposed} was deleted")
            if problem:
                await self.finish(dd, FAILED, f"{problem}; the {self.noun} cannot go on without it", *phases)
                return None
        base = dd.accepted_at or dd.created
        waited = seconds_since(base)
        if waited >= timeout:
            await self.finish(
                dd,
                FAILED,
                f"timed out after {dd.operation_timeout} (spec.operationTimeout) waiting for {self.volume_wait(dd)}; "
                "check the PVC and the pod that should mount it",
                *phases,
            )
            return None
        return min(self.settings.volume_poll_interval_s, timeout - waited)

    async def _claim(self, dd: T) -> float | None:
        """Accept ``dd`` for this node: one conditional write (a lost race is not an error). An object to be
        exposed is claimed at once (this agent then exposes it); an in-place restore only by a node where
        the target is mounted. Who accepted is kept in an annotation too, since older CRDs prune
        ``status.acceptedByNode``; the finalizer keeps deletion waiting for the cleanup of what is exposed."""
        found: Volume | None = None
        if dd.in_place:
            located = await self._find(dd, NEW)
            if not isinstance(located, Volume):
                return located
            found = located
        stamp = timestamp(now())

        def status(cur: T) -> Obj | None:
            if cur.phase != NEW or not self._wants(cur) or cur.cancel or cur.deleting:
                return None
            if cur.accepted_by not in ("", self.me) and not self._claim_abandoned(cur):
                return None
            return {"phase": ACCEPTED, "acceptedByNode": self.me, "acceptedTimestamp": stamp}

        def metadata(cur: T) -> Obj | None:
            fields: Obj = {"annotations": {ACCEPTED_BY: self.me, ACCEPTED_AT: stamp}}
            if not cur.in_place and FINALIZER not in cur.finalizers:
                fields["finalizers"] = [*cur.finalizers, FINALIZER]
            return fields

        accepted = await self.write(dd, status, metadata)
        if accepted is None or accepted.phase != ACCEPTED:
            log.info(
                "not claimed: it changed meanwhile (another agent claimed it, or it was canceled)",
                extra=self.subject(dd),
            )
            return 0.0
        log.info("accepted", extra=self.subject(dd) | {"volume": found.describe() if found else self.describe(dd)})
        await self.events.record(accepted.ref(), "Accepted", f"accepted by the Ferry agent on node {self.me}")
        if found is not None:
            return await self._write_prepared(accepted)
        return 0.0

    def describe(self, dd: T) -> str:
        """The volume the object is about, for logs."""
        return dd.key

    def _claim_abandoned(self, dd: T) -> bool:
        """A New object whose claim annotation names another agent that never wrote Accepted (with a /status
        subresource the claim is two writes, and that agent may have died between them): after the prepare
        timeout any agent may claim it again."""
        since = dd.accepted_at or dd.created
        return since is None or seconds_since(since) >= self.settings.prepare_timeout_s

    async def _write_prepared(self, dd: T) -> float | None:
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
        await self.events.record(prepared.ref(), "Prepared", f"the {self.noun} volume is mounted on node {self.me}")
        return 0.0

    @abstractmethod
    async def expose(self, dd: T) -> Exposed | Waiting | float | None:
        """Create what exposes ``dd``'s volume (idempotent). ``Waiting`` says what it waits for; a number or
        None is what ``_step`` returns at once (e.g. after a metadata write, or once ``dd`` was failed).
        Raises VolumeError when it can never be exposed (the object then fails saying so)."""

    async def _prepare_exposed(self, dd: T) -> float | None:
        """Accepted. The acceptor exposes it (a PVC and a pod), watches the pod (a pod that can never run fails
        it) and, once the pod is scheduled, names its node on the object (``NODE_ANNOTATION``); that node's
        agent, told by the watch, writes Prepared once the kubelet has mounted the volume. Other agents make
        no API calls for it: they only fail it when the prepare timeout and a margin pass (checked first, so that
        failing API calls cannot hold it off) — also what ends an object whose acceptor died, as with
        Velero's own mover."""
        where = self.place(dd)
        if dd.cancel or dd.deleting:
            await self.finish(dd, CANCELED, f"canceled before the {self.noun} started", ACCEPTED, anyone=True)
            return 0.0
        since = dd.accepted_at or dd.created
        waited = seconds_since(since)
        # The acceptor knows what it waits for and says so; the others give it a margin to (they also end
        # the object of an acceptor that died, a little later).
        margin = 0.0 if dd.accepted_by == self.me else max(OTHERS_MARGIN_S, 0.1 * self.settings.prepare_timeout_s)
        left = self.settings.prepare_timeout_s + margin - waited
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
        node = dd.exposed_node
        if dd.accepted_by != self.me:
            if node == self.me and await self.volumes.find(self.volume_claim(dd)) is not None:
                return await self._write_prepared(dd)
            return poll if node == self.me else left
        if not self.pods.template.image:
            message = (
                f"no image for {self.noun} pods: set FERRY_POD_IMAGE, or FERRY_POD_NAME from the downward API so "
                f"{self.noun} pods run the agent's own image"
            )
            await self.finish(dd, FAILED, message, ACCEPTED)
            return 0.0
        try:
            exposed = await self.expose(dd)
        except VolumeError as e:
            await self.finish(dd, FAILED, str(e), ACCEPTED)
            return 0.0
        if not isinstance(exposed, (Exposed, Waiting)):
            return exposed
        if isinstance(exposed, Waiting):
            self._note(dd.name).waiting = exposed.reason
            return poll
        pod = await self.pods.pod(where)
        if pod.problem:
            message = f"{pod.problem}; see `kubectl -n {dd.namespace} describe pod {dd.name}`"
            await self.finish(dd, FAILED, message, ACCEPTED)
            return 0.0
        if pod.unschedulable:
            stuck = seconds_since(pod.unschedulable_since)
            if stuck >= self.settings.unschedulable_grace_s:
                message = f"{self.noun} pod {where.exposed} cannot be scheduled: {pod.unschedulable}"
                await self.finish(dd, FAILED, message, ACCEPTED)
                return 0.0
            self._note(dd.name).waiting = f"{self.noun} pod {where.exposed} to be scheduled ({pod.unschedulable})"
            return poll
        if pod.node and node != pod.node:
            key = self.view.NODE_ANNOTATION
            await self.write_metadata(
                dd, lambda cur: {"annotations": {key: pod.node}} if cur.phase == ACCEPTED else None
            )
            return 0.0
        if pod.running and pod.node == self.me and await self.volumes.find(self.volume_claim(dd)) is not None:
            return await self._write_prepared(dd)
        self._note(dd.name).waiting = self._default_wait(dd, pod)
        return poll

    def _default_wait(self, dd: T, pod: PodState | None = None) -> str:
        """What an Accepted object waits for, as far as its annotations (and the pod) tell."""
        exposed = self.place(dd).exposed
        node = dd.exposed_node
        running = pod is not None and pod.running
        if node and (running or dd.accepted_by != self.me):
            return (
                f"the Ferry agent on node {node}, where {self.noun} pod {exposed} runs, to find its volume "
                "(is Ferry's DaemonSet running on that node?)"
            )
        if node:
            return f"{self.noun} pod {exposed} to run with its volume on node {node}"
        if (pod is None or pod.exists) and dd.accepted_by == self.me:
            return f"{self.noun} pod {exposed} to be scheduled"
        return f"the Ferry agent on node {dd.accepted_by or '?'} to expose the volume ({self.noun} pod {exposed})"

    def _last_error(self, name: str) -> str:
        error = self._note(name).error
        return f" (the last Kubernetes API error: {error})" if error else ""

    def _note(self, name: str) -> Tracked[T]:
        """The tracked state of an object a worker handles (a detached one outside a worker)."""
        return self._tracked.get(name) or Tracked(None)

    def _orphan_for(self, name: str) -> float:
        """Seconds since this agent first saw ``name`` in need of it while another agent holds it."""
        tracked = self._note(name)
        if tracked.orphan_since is None:
            tracked.orphan_since = time.monotonic()
        return time.monotonic() - tracked.orphan_since

    def _since(self, name: str) -> float:
        """Seconds since this agent first worked on the step after the transfer."""
        tracked = self._note(name)
        if tracked.since is None:
            tracked.since = time.monotonic()
        return time.monotonic() - tracked.since

    def owner(self, dd: T) -> Owner:
        return Owner(API_VERSION, self.view.KIND, dd.name, dd.uid)

    def _load_key(self, name: str) -> str:
        return f"{self.kind}/{name}"

    async def _start(self, dd: T, wake: asyncio.Event) -> float | None:
        found = await self._find(dd, dd.phase)
        if not isinstance(found, Volume):
            return found
        key = self._load_key(dd.name)
        if not self.load.acquire(key, wake):
            self.held.labels("Queued").set(self._queued())
            return SLOT_WAIT_S
        self.held.labels("Queued").set(self._queued())
        try:
            await supervisor.run(self, dd, found, wake)
        finally:
            self.load.release(key)
            self.held.labels("Queued").set(self._queued())
        return None if dd.in_place else 0.0

    def _queued(self) -> int:
        return self.load.queued_of(f"{self.kind}/")

    @abstractmethod
    def transfer(self, dd: T, location: StorageLocation, volume: Volume) -> Transfer: ...

    @abstractmethod
    async def transferred(self, dd: T, total: int, result: object) -> None: ...

    @abstractmethod
    async def clean_up_exposed(self, dd: T) -> list[str] | float:
        """Remove what was exposed for ``dd`` (idempotent): what is still going away (empty once nothing is
        left), or seconds to wait before trying again."""

    async def _clean_up(self, dd: T) -> float | None:
        """An object that ended (or is being deleted) with our finalizer, by the agent that holds it
        (``status.node``, else the acceptor; any agent after ``orphan_grace_s``): remove what was exposed,
        then the finalizer."""
        holder = dd.node or dd.accepted_by
        if holder not in (self.me, ""):
            # The holder's own worker runs the step after the transfer and this cleanup one after the other;
            # another agent deleting what it exposed meanwhile could pull the volume from under it.
            grace = self.settings.orphan_grace_s - self._orphan_for(dd.name)
            if grace > 0:
                return grace
        left = await self.clean_up_exposed(dd)
        if not isinstance(left, list):
            return left
        if left:
            self._note(dd.name).waiting = ", ".join(left) + " to be gone"
            return self.settings.volume_poll_interval_s
        done = await self.write_metadata(
            dd,
            lambda cur: (
                {"finalizers": [f for f in cur.finalizers if f != FINALIZER]} if FINALIZER in cur.finalizers else None
            ),
        )
        if done is not None:
            log.info("cleaned up", extra=self.subject(dd))
        return None

    # --- writes ----------------------------------------------------------------------------------------

    async def finish(
        self,
        dd: T,
        phase: str,
        message: str,
        *from_phases: str,
        progress: Callable[[T], Obj | None] | None = None,
        extra: Obj | None = None,
        anyone: bool = False,
        release: bool = False,
        hold: str = "",
    ) -> T | None:
        """Move to a terminal phase (with completionTimestamp and message, and the ``extra`` status fields) if
        the object is still in one of ``from_phases`` and handled here (``anyone``: by whichever agent, e.g.
        a prepare timeout); with ``release``, drop our finalizer in the same write (nothing is left to clean
        up); ``hold``: a finalizer to add in the same write. Record the Event. Returns the written object or
        None."""
        stamp = timestamp(now())

        def change(cur: T) -> Obj | None:
            if cur.phase not in from_phases or cur.datamover != self.settings.datamover:
                return None
            if not anyone and cur.phase != NEW and (cur.node or cur.accepted_by) not in (self.me, ""):
                return None
            fields: Obj = {"phase": phase, "message": message, "completionTimestamp": stamp} | (extra or {})
            if progress is not None and (figures := progress(cur)) is not None:
                fields["progress"] = figures
            return fields

        def metadata(cur: T) -> Obj | None:
            kept = [f for f in cur.finalizers if f != FINALIZER or not release]
            if hold and hold not in kept:
                kept.append(hold)
            return {"finalizers": kept} if kept != list(cur.finalizers) else None

        written = await self.write(dd, change, metadata if release or hold else None)
        if written is None:
            return None
        self.ended.labels(phase).inc()
        level = logging.INFO if phase != FAILED else logging.WARNING
        log.log(level, "%s", f"{phase.lower()}: {message}" if message else phase.lower(), extra=self.subject(dd))
        await self.events.record(written.ref(), phase, message, "Warning" if phase == FAILED else "Normal")
        return written
