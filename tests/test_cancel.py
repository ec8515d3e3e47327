"""Cancelling a restore: it stops within a second, and no worker thread outlives it."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.pipeline.restore import restore
from agent.pipeline.transfer import BufferPool
from agent.repo.repository import Repository
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.base import Storage
from agent.storage.local import LocalStorage


class GatedStorage(LocalStorage):
    """Lets ``open_reads`` ranged reads through, then holds every further one until ``gate`` opens."""

    def __init__(self, root: str, open_reads: int) -> None:
        super().__init__(root)
        self.open_reads = open_reads
        self.gate = asyncio.Event()

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if self.open_reads <= 0:
            await self.gate.wait()
        self.open_reads -= 1
        return await super().get_range(key, offset, length)


def ferry_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("ferry-")]


async def _snapshot(storage: Storage, tmp_path: Path, size: int) -> str:
    (tmp_path / "disk.img").write_bytes(random.Random(8).randbytes(size))
    result = await create_snapshot(Repository(storage), str(tmp_path / "disk.img"), SnapshotSettings(threads=2))
    return result.snapshot_id


async def _cancel_after_first_progress(repo: Repository, sid: str, target: Path, settings: RestoreSettings) -> float:
    started = asyncio.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done > 0:
            started.set()

    task = asyncio.create_task(restore(repo, sid, str(target), settings, progress))
    async with asyncio.timeout(30):
        await started.wait()
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    elapsed = time.monotonic() - t0
    assert ferry_threads() == [], "a worker thread outlived the cancelled restore"
    assert seen == sorted(seen)
    return elapsed


async def test_cancel_while_waiting_on_storage(tmp_path: Path) -> None:
    storage = GatedStorage(str(tmp_path / "repo"), open_reads=1_000_000)
    sid = await _snapshot(storage, tmp_path, 24 * MiB)
    storage.open_reads = 2
    settings = RestoreSettings(reads_in_flight=4, max_range_bytes=1 * MiB, memory_bytes=16 * MiB)
    elapsed = await _cancel_after_first_progress(Repository(storage), sid, tmp_path / "out.img", settings)
    assert elapsed < 1.0


async def test_cancel_while_threads_are_busy(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "repo"))
    sid = await _snapshot(storage, tmp_path, 160 * MiB)
    settings = RestoreSettings(reads_in_flight=8, max_range_bytes=16 * MiB, memory_bytes=64 * MiB)
    elapsed = await _cancel_after_first_progress(Repository(storage), sid, tmp_path / "out.img", settings)
    assert elapsed < 1.0


async def test_buffer_pool_survives_cancelled_waiters_and_stays_within_its_limit() -> None:
    pool = BufferPool(limit=10, size=4)
    first = await pool.take(10)
    assert (len(first), pool.allocated, pool.held) == (10, 10, 10)
    waiter = asyncio.create_task(pool.take(5))
    second = asyncio.create_task(pool.take(5))
    await asyncio.sleep(0)  # let both queue
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.give(first)
    got = await second
    assert len(got) == 10, "a free buffer large enough is reused, not reallocated"
    assert pool.allocated == 10
    pool.give(got)
    big = await pool.take(50)
    assert len(big) == 50, "a request larger than the limit is served alone"
    assert pool.allocated == 50
    small = asyncio.create_task(pool.take(4))
    await asyncio.sleep(0)
    assert not small.done(), "nothing more is allocated while the pool is over its limit"
    pool.give(big)
    assert len(await small) >= 4
    assert pool.allocated <= 10, "the oversized buffer was dropped to make room"
