"""Repository maintenance: forgetting the snapshots of Velero backups that no longer exist, then pruning
and checking the repositories, in exactly one agent of the cluster.

Velero deletes the data of a deleted or expired backup only for its own data mover
(``pkg/datamover/dataupload_delete_action.go`` does nothing for others), so Ferry finds such snapshots
itself. A snapshot records the backup's name and UID (``agent.controller.datauploads``). Its backup
exists while either

- a Backup of that name and UID is in Velero's namespace, not being deleted (a backup still being
  written: its ``velero-backup.json`` is uploaded only at its end), or
- the storage location holds ``backups/<name>/velero-backup.json`` with that UID (or none): a backup
  synced from another cluster (a synced Backup object gets a new UID from this cluster's API server), or
  one not synced yet.

A snapshot whose backup has not existed, seen from this agent, for the grace period (and made longer
ago than that) is forgotten; then the repository is pruned with the same grace period and its
structure checked. Each pass reports an Event on the BackupStorageLocation and counts in metrics.

Faster, for backups deleted through Velero: DataUploads completed while maintenance is on carry the
finalizer ``ferry.dev/snapshot``. Velero deletes a backup's DataUploads while its Backup is ``Deleting``;
the leader watches DataUploads, forgets the snapshot of one being deleted whose Backup is ``Deleting``
or gone (from the cluster and the location), then removes the finalizer (``release``), and the next pass
prunes that repository. One deleted by hand while its backup stays keeps its snapshot.

One agent runs it: the holder of the Lease ``ferry-maintenance`` in Velero's namespace, through
kubernetes_asyncio's leader election (``LeaseLock``). That library lets some errors escape ``run()``
without stopping the leader's work and logs expected conflicts as errors with tracebacks, so the
election runs here inside a task this module owns: the maintenance loop runs only while the election
task runs and has led, and is cancelled when it ends for any reason; its logger is quietened and the
transitions are logged here instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from agent.aio.taskgroups import task_group
from agent.controller.jobs import Maintainer, VeleroSnapshot
from agent.errors import FerryError, KubeNotFound
from agent.kube.api import Kube, Obj
from agent.kube.events import EventRecorder, ObjectRef
from agent.kube.watching import Watcher
from agent.metrics import Metrics
from agent.velero.locations import SERVED_PROVIDERS, LocationResolver
from agent.velero.objects import BACKUP_STORAGE_LOCATIONS, BACKUPS, DATAUPLOADS, SNAPSHOT_FINALIZER, DataUpload

log = logging.getLogger(__name__)

LEASE = "ferry-maintenance"
LEASE_DURATION_S = 15
RENEW_DEADLINE_S = 10
RETRY_PERIOD_S = 2
"""Lease timings: a leader that cannot renew stops its work within the renew deadline, before the lease
expires for the others (duration > deadline + retry period)."""
DELETING = "Deleting"
"""A Backup's ``status.phase`` while Velero deletes it, and a state of ``_in_cluster``."""
PRESENT, ABSENT = "Present", "Absent"
READ_ONLY = "ReadOnly"
"""``spec.accessMode`` of a BackupStorageLocation Velero only restores from."""
RELEASE_RETRY_S = 10.0
"""Seconds before a DataUpload that could not be released is tried again (sooner if it changes)."""


@dataclass
class PassReport:
    """One maintenance pass over every storage location."""

    locations: int = 0
    snapshots: int = 0
    """Velero-made snapshots seen."""
    missing: int = 0
    """Of those, whose backup does not exist now (forgotten once it has not for the grace period)."""
    forgotten: int = 0
    deleted_bytes: int = 0
    errors: list[str] = field(default_factory=list)


class Maintenance:
    """Reconciles snapshots with Velero's backups (module docstring); ``pass_once`` is one pass, ``run``
    repeats it every ``interval_s`` while this agent leads."""

    def __init__(
        self,
        kube: Kube,
        maintainer: Maintainer,
        metrics: Metrics,
        events: EventRecorder,
        resolver: LocationResolver,
        *,
        interval_s: float,
        grace_s: float,
        datamover: str = "ferry",
        watch_timeout_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.maintainer = maintainer
        self.metrics = metrics
        self.events = events
        self.resolver = resolver
        self.interval_s = interval_s
        self.grace_s = grace_s
        self.clock = clock
        self.datamover = datamover
        self.watch_timeout_s = watch_timeout_s
        self.missing_since: dict[tuple[str, str], float] = {}
        """(location, snapshot ID) -> when this agent first saw its backup missing (monotonic seconds)."""
        self.to_prune: set[tuple[str, str]] = set()
        """(location, namespace) of repositories a deleted DataUpload's snapshot was forgotten from."""
        self.deleted: dict[str, DataUpload] = {}
        """DataUploads being deleted that hold ``SNAPSHOT_FINALIZER``, by name (the latest version seen)."""
        self.wake = asyncio.Event()
        self.forgotten_for: set[str] = set()
        """UIDs of DataUploads whose snapshot was forgotten and whose finalizer is still to remove."""

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: passes every ``interval_s`` (a failed pass is logged; the next one runs),
        and DataUploads being deleted released as they come (``release``)."""
        watcher = Watcher(self.kube, DATAUPLOADS, self.watch_timeout_s, self._deliver)
        async with task_group() as tg:
            watch = tg.create_task(watcher.run(), name="watch datauploads being deleted")
            releases = tg.create_task(self._releases(stop), name="release datauploads")
            await self._passes(stop)
            watch.cancel()
            releases.cancel()

    def _deliver(self, name: str, obj: Obj | None) -> None:
        du = DataUpload.from_obj(obj) if obj is not None else None
        if du is not None and du.deleting and SNAPSHOT_FINALIZER in du.finalizers and du.datamover == self.datamover:
            self.deleted[name] = du
            self.wake.set()
        else:
            self.deleted.pop(name, None)

    async def _releases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.wake.wait()
            self.wake.clear()
            retry = False
            for name, du in list(self.deleted.items()):
                try:
                    await self.release(du)
                except FerryError as e:
                    retry = True
                    log.warning("cannot release DataUpload %s yet: %s", name, e)
                else:
                    if self.deleted.get(name) is du:
                        del self.deleted[name]
            if retry:  # the watch wakes this for a newer version; else try again after a while
                try:
                    async with asyncio.timeout(RELEASE_RETRY_S):
                        await self.wake.wait()
                except TimeoutError:
                    self.wake.set()

    async def release(self, du: DataUpload) -> bool:
        """A DataUpload being deleted with ``SNAPSHOT_FINALIZER``: forget its snapshot if its backup is being
        deleted (the Backup with its name and UID is Deleting) or gone (no such Backup, and no
        ``velero-backup.json`` with its UID in its location), then remove the finalizer. Returns whether the
        snapshot was forgotten. Raises FerryError (the finalizer stays; it is tried again)."""
        name, uid = du.backup
        forget = False
        location = None
        if name and du.snapshot_id:
            state = _in_cluster(await self._backups(), name, uid)
            if state != ABSENT:
                forget = state == DELETING
            else:
                location = await self.resolver.resolve(du.storage_location)
                forget = not _recorded(await self.maintainer.backup_in_location(location, name), uid)
        if forget and du.uid not in self.forgotten_for:  # once, though removing the finalizer may be retried
            location = location or await self.resolver.resolve(du.storage_location)
            await self.maintainer.forget(location, du.source_namespace, [du.snapshot_id])
            self.forgotten_for.add(du.uid)
            self.to_prune.add((location.name, du.source_namespace))
            self.metrics.snapshots_forgotten.inc()
            message = (
                f"forgot snapshot {du.snapshot_id[:16]} of namespace {du.source_namespace}: Velero backup {name} is "
                f"being deleted or is gone (DataUpload {du.name} deleted); the next maintenance pass prunes its data"
            )
            log.info(message, extra={"dataupload": du.key})
            await self.events.record(du.ref(), "SnapshotForgotten", message[:1024])
        kept = [f for f in du.finalizers if f != SNAPSHOT_FINALIZER]
        patch = {"metadata": {"resourceVersion": du.resource_version, "finalizers": kept}}
        with suppress(KubeNotFound):  # gone: released already
            await self.kube.patch_object(DATAUPLOADS, du.name, patch, status=False)
        self.forgotten_for.discard(du.uid)
        return forget

    async def _passes(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.pass_once()
            except FerryError as e:
                log.warning("repository maintenance failed: %s", e)
            remaining = self.interval_s - (time.monotonic() - started)
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def pass_once(self) -> PassReport:
        """Reconcile every S3 storage location once. Raises KubeError if Backups or locations cannot be
        listed; a location that cannot be maintained is reported (log, Event, metric) and passed over."""
        report = PassReport()
        in_cluster = await self._backups()
        locations, _ = await self.kube.list_objects(BACKUP_STORAGE_LOCATIONS)
        for bsl in locations:
            if str((bsl.get("spec") or {}).get("provider", "")) not in SERVED_PROVIDERS:
                continue
            if str((bsl.get("spec") or {}).get("accessMode", "")) == READ_ONLY:
                continue  # Velero's restore-only locations: nothing is written there
            report.locations += 1
            try:
                await self._location(bsl, in_cluster, report)
            except FerryError as e:
                await self._failed(bsl, str((bsl.get("metadata") or {}).get("name", "")), str(e), report)
        self.metrics.maintenance_passes.inc()
        return report

    async def _location(
        self, bsl: dict[str, object], in_cluster: dict[str, tuple[str, bool]], report: PassReport
    ) -> None:
        meta = bsl.get("metadata")
        name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
        location = await self.resolver.resolve(name)
        inventory = await self.maintainer.inventory(location)
        snapshots = inventory.snapshots
        report.snapshots += len(snapshots)
        in_location: dict[str, str | None] = {}
        now, wall = self.clock(), time.time()
        doomed: dict[str, list[VeleroSnapshot]] = {}
        seen: set[tuple[str, str]] = set()
        for snap in snapshots:
            key = (name, snap.snapshot_id)
            seen.add(key)
            alive = _in_cluster(in_cluster, snap.backup_name, snap.backup_uid) == PRESENT
            if not alive:
                if snap.backup_name not in in_location:
                    in_location[snap.backup_name] = await self.maintainer.backup_in_location(location, snap.backup_name)
                alive = _recorded(in_location[snap.backup_name], snap.backup_uid)
            if alive:
                self.missing_since.pop(key, None)
                continue
            report.missing += 1
            since = self.missing_since.setdefault(key, now)
            if now - since >= self.grace_s and wall - snap.created >= self.grace_s:
                doomed.setdefault(snap.namespace, []).append(snap)
        for key in [k for k in self.missing_since if k[0] == name and k not in seen]:
            del self.missing_since[key]  # forgotten (by us or by hand)
        for problem in inventory.problems:
            await self._failed(bsl, name, problem, report)
        for namespace in sorted(set(inventory.namespaces) | set(doomed)):
            snaps = doomed.get(namespace, [])
            asked = (name, namespace) in self.to_prune
            try:
                done = await self.maintainer.forget_and_prune(
                    location, namespace, [s.snapshot_id for s in snaps], self.grace_s, prune=asked
                )
            except FerryError as e:  # this repository only: the others are still maintained
                await self._failed(bsl, name, f"the repository of namespace {namespace}: {e}", report)
                continue
            self.to_prune.discard((name, namespace))
            for s in snaps:
                self.missing_since.pop((name, s.snapshot_id), None)
            report.forgotten += done.forgotten
            report.deleted_bytes += done.deleted_bytes
            self.metrics.snapshots_forgotten.inc(done.forgotten)
            self.metrics.pruned_bytes.inc(done.deleted_bytes)
            pruned = f"prune deleted {done.deleted_bytes} bytes and marked {done.marked_bytes} bytes to delete later"
            if snaps:
                backups = ", ".join(sorted({s.backup_name for s in snaps}))
                message = (
                    f"forgot {done.forgotten} snapshots of namespace {namespace} whose Velero backups no longer "
                    f"exist ({backups}); {pruned}"
                )
                log.info(message, extra={"location": name})
                await self.events.record(_ref(bsl), "SnapshotsForgotten", message[:1024])
            elif done.deleted_bytes:
                message = f"repository of namespace {namespace}: {pruned}"
                log.info(message, extra={"location": name})
                await self.events.record(_ref(bsl), "RepositoryPruned", message[:1024])
            if done.damage:
                self.metrics.maintenance_failures.inc()
                damage = f"the repository of namespace {namespace} is damaged: " + "; ".join(done.damage[:5])
                log.warning(damage, extra={"location": name})
                await self.events.record(_ref(bsl), "RepositoryDamaged", damage[:1024], "Warning")

    async def _backups(self) -> dict[str, tuple[str, bool]]:
        """Velero's Backups: name -> (UID, being deleted: phase Deleting or a deletion timestamp)."""
        backups, _ = await self.kube.list_objects(BACKUPS)
        found: dict[str, tuple[str, bool]] = {}
        for b in backups:
            meta = b.get("metadata") or {}
            deleting = (b.get("status") or {}).get("phase") == DELETING or bool(meta.get("deletionTimestamp"))
            found[str(meta.get("name", ""))] = (str(meta.get("uid", "")), deleting)
        return found

    async def _failed(self, bsl: Obj, name: str, problem: str, report: PassReport) -> None:
        report.errors.append(f"{name}: {problem}")
        self.metrics.maintenance_failures.inc()
        log.warning("maintenance of BackupStorageLocation %s: %s", name, problem)
        await self.events.record(_ref(bsl), "MaintenanceFailed", problem[:1024], "Warning")


def _in_cluster(backups: dict[str, tuple[str, bool]], name: str, uid: str) -> str:
    """Whether the backup a snapshot records (``uid`` "" when it recorded none) is a Backup here: PRESENT,
    DELETING, or ABSENT (none of that name, or one of another UID: the name was used again)."""
    found = backups.get(name)
    if found is None or (uid and found[0] != uid):
        return ABSENT
    return DELETING if found[1] else PRESENT


def _recorded(recorded: str | None, uid: str) -> bool:
    """Whether the location's ``velero-backup.json`` (its UID, "" without one; None: absent) is that of the
    backup a snapshot records."""
    return recorded is not None and (not recorded or not uid or recorded == uid)


def _ref(bsl: dict[str, object]) -> ObjectRef:
    meta = bsl.get("metadata")
    m = meta if isinstance(meta, dict) else {}
    return ObjectRef(
        BACKUP_STORAGE_LOCATIONS.group_version,
        "BackupStorageLocation",
        str(m.get("namespace", "")),
        str(m.get("name", "")),
        str(m.get("uid", "")),
        str(m.get("resourceVersion", "")),
    )


async def while_leading(
    kube: Kube,
    identity: str,
    work: Callable[[], Coroutine[Any, Any, None]],
    stop: asyncio.Event,
    lease: str = LEASE,
) -> None:
    """Run ``work()`` while this process holds the Lease ``lease`` in Velero's namespace, until ``stop`` is
    set; stand again for election whenever leadership is lost. ``work`` is cancelled when it is."""
    logging.getLogger("kubernetes_asyncio.leaderelection").setLevel(logging.CRITICAL)
    while not stop.is_set():
        led = asyncio.Event()

        async def started(led: asyncio.Event = led) -> None:
            led.set()

        async def stopped() -> None:
            return None

        config = electionconfig.Config(
            LeaseLock(lease, kube.namespace, identity, kube.api_client),
            lease_duration=LEASE_DURATION_S,
            renew_deadline=RENEW_DEADLINE_S,
            retry_period=RETRY_PERIOD_S,
            onstarted_leading=started,
            onstopped_leading=stopped,
        )
        election = leaderelection.LeaderElection(config)
        async with task_group() as tg:
            elect = tg.create_task(_elect(election), name="leader election")
            stopping = tg.create_task(stop.wait(), name="leader election stop")
            leading = tg.create_task(led.wait(), name="leader election won")
            await asyncio.wait({elect, stopping, leading}, return_when=asyncio.FIRST_COMPLETED)
            if led.is_set() and not elect.done() and not stop.is_set():
                log.info("leading repository maintenance", extra={"lease": lease, "identity": identity})
                worker = tg.create_task(work(), name="maintenance")
                await asyncio.wait({elect, stopping, worker}, return_when=asyncio.FIRST_COMPLETED)
                worker.cancel()
                if not stop.is_set():
                    log.info("no longer leading repository maintenance", extra={"lease": lease})
            for task in (elect, stopping, leading):
                task.cancel()
        if not stop.is_set():
            try:  # before standing again: a lost lease means the API server was unreachable
                async with asyncio.timeout(RETRY_PERIOD_S):
                    await stop.wait()
            except TimeoutError:
                pass


async def _elect(election: leaderelection.LeaderElection) -> None:
    try:
        await election.run()
    except Exception as e:  # noqa: BLE001 - any failure of the library's loop is a lost election
        log.warning("leader election for repository maintenance stopped: %s: %s", type(e).__name__, e)
