"""Fetch → decompress → verify → write, in parallel and within a memory bound.

``reads_in_flight`` workers take ranges from one shared iterator. Each receives its range into a buffer of
its own, reused from range to range (fresh multi-MiB allocations per GET cost more CPU in page faults than
the copy they replace), and holds the range's bytes in the ``ByteBudget`` from before its GET until its
chunks are written, so fetched-but-unwritten data never exceeds ``memory_bytes``. Decompression, BLAKE3
verification and the write of a range's chunks run together in one worker-thread call, into that thread's
reused, page-aligned buffer, each chunk placed so that its whole blocks can be written with O_DIRECT (see
``direct``); writes land at each chunk's offsets, in any order. A chunk that fails is never written: it is
fetched again on its own, up to ``fetch_attempts`` fetches in all, and then the restore fails naming the
chunk and pack.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from agent.errors import ChunkCorrupt, ObjectTruncated
from agent.pipeline.direct import ALIGN, pad_for
from agent.pipeline.plan import ChunkJob, FetchRange, Plan
from agent.repo.chunks import decode_buffer, decode_chunk
from agent.repo.repository import Repository
from agent.settings import RestoreSettings
from agent.taskgroups import task_group
from agent.threads import WorkerPool


class Sink(Protocol):
    def write(self, slot: int, offset: int, data: memoryview) -> None: ...


@dataclass
class TransferStats:
    fetched_bytes: int = 0
    """Bytes received from storage, re-fetches included."""
    requests: int = 0
    refetches: int = 0
    verify_failures: int = 0
    in_flight_bytes: int = 0
    """Fetched (or being fetched) bytes not yet written: the byte budget in use."""


class ByteBudget:
    """A FIFO counting semaphore over bytes. A request larger than the whole budget takes all of it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def used(self) -> int:
        return self._used

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        if not self._waiters and self._used + n <= self.limit:
            self._used += n
            return n
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((n, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(n)
            else:  # still queued, or already dropped by _wake as cancelled
                with contextlib.suppress(ValueError):
                    self._waiters.remove((n, waiter))
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        self._used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used + self._waiters[0][0] <= self.limit:
            n, waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += n
                waiter.set_result(None)


def _decode_and_write(
    data: bytes | memoryview, base: int, jobs: list[ChunkJob], sink: Sink, stop: threading.Event, max_plain: int
) -> tuple[int, list[tuple[ChunkJob, str]]]:
    """Runs in a worker thread: verify each chunk of a fetched range and write it where it goes.
    Returns the bytes written and the chunks that failed, with why."""
    out = decode_buffer(max_plain + ALIGN)
    view = memoryview(data)
    written = 0
    bad: list[tuple[ChunkJob, str]] = []
    for job in jobs:
        if stop.is_set():
            break
        start = job.offset - base
        pad = pad_for(job.places[0][1])
        plain = decode_chunk(view[start : start + job.stored], job.plain, job.id, out[pad:])
        if isinstance(plain, str):
            bad.append((job, plain))
            continue
        for slot, offset in job.places:
            sink.write(slot, offset, plain)
        written += job.plain * len(job.places)
    return written, bad


async def transfer(
    repo: Repository,
    plan: Plan,
    sink: Sink,
    settings: RestoreSettings,
    pool: WorkerPool,
    advance: Callable[[int], None],
    stats: TransferStats,
) -> None:
    """Move every range of the plan onto the sink; ``advance`` is called with bytes written."""
    budget = ByteBudget(settings.memory_bytes)
    ranges: Iterator[FetchRange] = iter(plan.ranges)

    async def fetch(pack: str, offset: int, into: memoryview) -> None:
        stats.requests += 1
        await repo.read_pack_range_into(pack, offset, into)
        stats.fetched_bytes += len(into)

    async def refetch(rng: FetchRange, job: ChunkJob, reason: str, attempt: int, buffer: bytearray) -> None:
        """Fetch one failed chunk again on its own (into the range's buffer, which holds it) and write it."""
        stats.verify_failures += 1
        while attempt < settings.fetch_attempts:
            attempt += 1
            stats.refetches += 1
            with memoryview(buffer)[: job.stored] as data:
                try:
                    await fetch(rng.pack, job.offset, data)
                except ObjectTruncated:
                    reason = "the pack ends before the chunk"
                    continue
                written, bad = await pool.run(
                    _decode_and_write, data, job.offset, [job], sink, pool.stop, plan.max_plain
                )
            if not bad:
                advance(written)
                return
            stats.verify_failures += 1
            reason = bad[0][1]
        raise ChunkCorrupt(job.id.hex(), rng.pack, job.offset, reason, attempt)

    async def move(rng: FetchRange, buffer: bytearray) -> None:
        held = await budget.acquire(rng.length)
        stats.in_flight_bytes = budget.used
        try:
            with memoryview(buffer)[: rng.length] as data:
                try:
                    await fetch(rng.pack, rng.offset, data)
                except ObjectTruncated:
                    # The pack is shorter than the range: find out chunk by chunk which ones are lost.
                    bad = [(job, "the pack ends before the chunk") for job in rng.chunks]
                    written = 0
                else:
                    written, bad = await pool.run(
                        _decode_and_write, data, rng.offset, rng.chunks, sink, pool.stop, plan.max_plain
                    )
            advance(written)
            for job, reason in bad:
                await refetch(rng, job, reason, 1, buffer)
        finally:
            budget.release(held)
            stats.in_flight_bytes = budget.used

    async def worker() -> None:
        buffer = bytearray()
        for rng in ranges:
            if len(buffer) < rng.length:
                buffer = bytearray(max(rng.length, settings.max_range_bytes))
            await move(rng, buffer)

    async with task_group() as tg:
        for n in range(min(settings.reads_in_flight, len(plan.ranges))):
            tg.create_task(worker(), name=f"restore reader {n}")
