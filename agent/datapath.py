"""The bridge from the controllers' jobs to the data path: open the repository the job's storage location
names, restore through the pipeline (``RestoreJob``) or snapshot a volume into it (``BackupJob``), and feed
the agent's metrics on the way."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from agent.backup.writer import create_snapshot
from agent.controller.jobs import (
    BackupJob,
    Inventory,
    Maintained,
    Notice,
    Progress,
    RestoreJob,
    Uploaded,
    VeleroSnapshot,
)
from agent.errors import FerryError, NoRepository, ObjectNotFound, RepositoryError
from agent.metrics import Metrics
from agent.pipeline.restore import restore
from agent.pipeline.transfer import TransferStats
from agent.repo.check import check_repository
from agent.repo.config import open_or_init, open_repository
from agent.repo.index import read_index
from agent.repo.locks import GARBAGE
from agent.repo.prune import prune as prune_repository
from agent.repo.repository import created_at, summary_of
from agent.settings import RepositorySettings
from agent.storage.base import ObjectInfo, Storage
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix
from agent.velero.locations import StorageLocation

log = logging.getLogger(__name__)


class MeteredStorage(Storage):
    """A storage whose ranged reads are timed into ``ferry_fetch_seconds``."""

    def __init__(self, inner: Storage, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def describe(self) -> str:
        return self._inner.describe()

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return await self._inner.get(key, max_bytes)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        started = time.monotonic()
        try:
            return await self._inner.get_range(key, offset, length)
        finally:
            self._metrics.fetch_seconds.observe(time.monotonic() - started)

    async def get_range_into(self, key: str, offset: int, buffer: memoryview) -> float:
        started = time.monotonic()
        try:
            return await self._inner.get_range_into(key, offset, buffer)
        finally:
            self._metrics.fetch_seconds.observe(time.monotonic() - started)

    def throttles(self) -> int:
        return self._inner.throttles()

    async def put(self, key: str, data: bytes) -> None:
        await self._inner.put(key, data)

    async def put_new(self, key: str, data: bytes) -> bool:
        return await self._inner.put_new(key, data)

    async def info(self, prefix: str) -> dict[str, ObjectInfo]:
        return await self._inner.info(prefix)

    async def is_empty(self) -> bool:
        return await self._inner.is_empty()

    async def delete(self, key: str) -> None:
        await self._inner.delete(key)

    async def list(self, prefix: str) -> list[str]:
        return await self._inner.list(prefix)

    async def sizes(self, prefix: str) -> dict[str, int]:
        return await self._inner.sizes(prefix)

    async def aclose(self) -> None:
        await self._inner.aclose()


class DataPathRestorer:
    """Implements ``agent.controller.jobs.Restorer`` with S3 storage and the restore pipeline."""

    def __init__(self, metrics: Metrics, repository: RepositorySettings | None = None) -> None:
        self._metrics = metrics
        self._repository = repository or RepositorySettings()
        self._stats: dict[int, TransferStats] = {}
        metrics.track_inflight(lambda: float(sum(s.in_flight_bytes for s in self._stats.values())))

    def _on_retry(self, op: str, key: str, attempt: int, error: FerryError) -> None:
        self._metrics.storage_retries.inc()

    async def __call__(self, job: RestoreJob, progress: Progress, notice: Notice, stopping: asyncio.Event) -> None:
        loc = job.location
        prefix = velero_repository_prefix(loc.prefix, job.source_namespace)
        stats = TransferStats()
        reported = 0

        def on_progress(done: int, total: int) -> None:
            nonlocal reported
            written = done - stats.kept_bytes  # kept bytes were written by the run that was interrupted
            if written > reported:
                self._metrics.restored_bytes.inc(written - reported)
                reported = written
            progress(done, total)

        def on_resumed(kept: int, total: int) -> None:
            notice(
                "Resumed",
                f"kept {kept / 1e9:.2f} GB of {total / 1e9:.2f} GB already on the volume (each chunk checked "
                "against the snapshot): an interrupted restore had written it; fetching the rest",
            )

        s3 = await S3Storage.open(loc.s3, loc.bucket, prefix)
        s3.on_retry = self._on_retry
        self._stats[id(stats)] = stats
        try:
            async with MeteredStorage(s3, self._metrics) as storage:
                repo = await open_repository(storage, self._repository, loc.repository_password)
                result = await restore(
                    repo,
                    job.snapshot_id,
                    job.target,
                    job.settings,
                    on_progress,
                    stats,
                    resumed=on_resumed,
                    stopping=stopping,
                )
            for problem in result.problems:  # the data is complete; this metadata could not be applied
                log.warning("not restored: %s", problem, extra={"snapshot": job.snapshot_id})
        finally:
            del self._stats[id(stats)]
            self._metrics.verification_failures.inc(stats.verify_failures)


class DataPathUploader:
    """Implements ``agent.controller.jobs.Uploader`` with S3 storage and the snapshot writer."""

    def __init__(self, metrics: Metrics, repository: RepositorySettings | None = None) -> None:
        self._metrics = metrics
        self._repository = repository or RepositorySettings()

    def _on_retry(self, op: str, key: str, attempt: int, error: FerryError) -> None:
        self._metrics.storage_retries.inc()

    async def __call__(self, job: BackupJob, progress: Progress) -> Uploaded:
        loc = job.location
        prefix = velero_repository_prefix(loc.prefix, job.source_namespace)
        s3 = await S3Storage.open(loc.s3, loc.bucket, prefix)
        s3.on_retry = self._on_retry
        async with s3 as storage:
            opened = await open_or_init(storage, self._repository, loc.repository_password)
            if opened.created:
                log.info("created an encrypted repository at %s", storage.describe(), extra={"dataupload": job.key})
            result = await create_snapshot(opened.repository, job.source, job.settings, progress, job.labels)
        for problem in result.skipped:  # the snapshot is stored without these
            log.warning("not backed up: %s", problem, extra={"dataupload": job.key})
        skipped = tuple(str(p) for p in result.skipped)
        return Uploaded(result.snapshot_id, result.size, result.new_stored_bytes, skipped)


_BACKUP_NAME = "velero.io/backup-name"
_BACKUP_UID = "velero.io/backup-uid"
"""The snapshot source fields a DataUpload's backup is recorded in (``agent.controller.datauploads``)."""
_BACKUP_JSON_LIMIT = 16 * 1024 * 1024


class DataPathMaintainer:
    """Implements ``agent.controller.jobs.Maintainer`` with S3 storage and ``agent.repo``."""

    def __init__(self, metrics: Metrics, repository: RepositorySettings | None = None) -> None:
        self._metrics = metrics
        self._repository = repository or RepositorySettings()

    async def inventory(self, location: StorageLocation) -> Inventory:
        found: list[VeleroSnapshot] = []
        repositories: list[str] = []
        top = await S3Storage.open(location.s3, location.bucket, location.prefix)
        async with top:
            namespaces = await top.subdirectories("ferry/")
        problems: list[str] = []
        for namespace in namespaces:
            try:
                found.extend(await self._snapshots(location, namespace))
                repositories.append(namespace)
            except NoRepository:
                continue  # something else under ferry/: not a repository of ours
            except FerryError as e:  # this one only (a wrong password, damage): the others are still visited
                problems.append(f"the repository of namespace {namespace}: {e}")
        return Inventory(tuple(repositories), tuple(found), tuple(problems))

    async def _snapshots(self, location: StorageLocation, namespace: str) -> list[VeleroSnapshot]:
        found: list[VeleroSnapshot] = []
        prefix = velero_repository_prefix(location.prefix, namespace)
        async with await S3Storage.open(location.s3, location.bucket, prefix) as storage:
            repo = await open_repository(storage, self._repository, location.repository_password)
            summaries = (await read_index(repo)).snapshots if repo.config is not None else {}
            for snapshot_id in await repo.snapshot_ids():
                summary = summaries.get(snapshot_id)
                if summary is None:
                    try:
                        summary = summary_of(await repo.read_manifest(snapshot_id))
                    except RepositoryError as e:
                        log.warning("snapshot %s in %s cannot be read: %s", snapshot_id, storage.describe(), e)
                        continue
                source = summary.get("source")
                if not isinstance(source, dict):
                    continue
                name = str(source.get(_BACKUP_NAME, ""))
                if not name:
                    continue
                created = created_at(str(summary.get("created", ""))).timestamp()
                uid = str(source.get(_BACKUP_UID, ""))
                found.append(VeleroSnapshot(namespace, snapshot_id, name, uid, created))
        return found

    async def forget(self, location: StorageLocation, namespace: str, snapshot_ids: list[str]) -> None:
        prefix = velero_repository_prefix(location.prefix, namespace)
        async with await S3Storage.open(location.s3, location.bucket, prefix) as storage:
            repo = await open_repository(storage, self._repository, location.repository_password, write=True)
            for snapshot_id in snapshot_ids:
                await repo.forget(snapshot_id)

    async def backup_in_location(self, location: StorageLocation, name: str) -> str | None:
        async with await S3Storage.open(location.s3, location.bucket, location.prefix) as top:
            try:
                stored = await top.get(f"backups/{name}/velero-backup.json", max_bytes=_BACKUP_JSON_LIMIT)
            except ObjectNotFound:
                return None
        try:
            return str(((json.loads(stored) or {}).get("metadata") or {}).get("uid", ""))
        except (ValueError, AttributeError):
            return ""  # there, but unreadable: it exists, which is all that keeps its snapshots

    async def forget_and_prune(
        self, location: StorageLocation, namespace: str, snapshot_ids: list[str], grace_s: float, *, prune: bool
    ) -> Maintained:
        prefix = velero_repository_prefix(location.prefix, namespace)
        async with await S3Storage.open(location.s3, location.bucket, prefix) as storage:
            # Writing refuses a format 1 repository (read-only until upgraded): only when there is something to do.
            repo = await open_repository(
                storage, self._repository, location.repository_password, write=bool(snapshot_ids)
            )
            for snapshot_id in snapshot_ids:
                await repo.forget(snapshot_id)
            deleted = marked = 0
            if repo.config is not None and (prune or snapshot_ids or await storage.list(GARBAGE)):
                pruned = await prune_repository(repo, grace_s=grace_s)
                deleted, marked = pruned.deleted_bytes, pruned.marked_bytes
            report = await check_repository(repo)
        return Maintained(len(snapshot_ids), deleted, marked, tuple(str(d) for d in report.damage))
