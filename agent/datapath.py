"""The bridge from the controllers' jobs to the data path: open the repository the job's storage location
names, restore through the pipeline (``RestoreJob``) or snapshot a volume into it (``BackupJob``), and feed
the agent's metrics on the way."""

from __future__ import annotations

import logging
import time

from agent.backup.writer import create_snapshot
from agent.controller.jobs import BackupJob, Progress, RestoreJob, Uploaded
from agent.errors import FerryError
from agent.metrics import Metrics
from agent.pipeline.restore import restore
from agent.pipeline.transfer import TransferStats
from agent.repo.config import open_or_init, open_repository
from agent.settings import RepositorySettings
from agent.storage.base import ObjectInfo, Storage
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix

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

    async def get_range_into(self, key: str, offset: int, buffer: memoryview) -> None:
        started = time.monotonic()
        try:
            await self._inner.get_range_into(key, offset, buffer)
        finally:
            self._metrics.fetch_seconds.observe(time.monotonic() - started)

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

    async def __call__(self, job: RestoreJob, progress: Progress) -> None:
        loc = job.location
        prefix = velero_repository_prefix(loc.prefix, job.source_namespace)
        stats = TransferStats()
        reported = 0

        def on_progress(done: int, total: int) -> None:
            nonlocal reported
            if done > reported:
                self._metrics.restored_bytes.inc(done - reported)
                reported = done
            progress(done, total)

        s3 = await S3Storage.open(loc.s3, loc.bucket, prefix)
        s3.on_retry = self._on_retry
        self._stats[id(stats)] = stats
        try:
            async with MeteredStorage(s3, self._metrics) as storage:
                repo = await open_repository(storage, self._repository, loc.repository_password)
                result = await restore(repo, job.snapshot_id, job.target, job.settings, on_progress, stats)
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
