"""Fetch → decompress → verify → write, in parallel and within a memory bound.

Workers take ranges from one shared iterator, as many at once as the ``Pacer`` allows (``pacing``: reads in
flight and range size follow the link's measured latency and rate, within ``reads_in_flight`` and
``max_range_bytes``); a plan's range larger than the pacer's range size is split at chunk boundaries. Each
receives its range into a buffer from the ``BufferPool``, reused from range to range (fresh multi-MiB
allocations per GET cost more CPU in page faults than the copy they replace); the pool holds every receive
buffer within the byte limit the restore gives it (``memory_bytes`` less the decode buffers), so memory
never follows what a manifest says. Decompression, BLAKE3 verification and the write of a range's chunks run
together in one worker-thread call, into that thread's reused, page-aligned buffer, each chunk placed so
that its whole blocks can be written with O_DIRECT (see ``direct``); writes land at each chunk's offsets, in
any order.

A chunk that fails is never written: it is fetched again on its own. The same wrong bytes twice mean the
stored chunk is damaged (``ChunkCorrupt``); bytes that differ on every one of ``fetch_attempts`` fetches
mean the path to the storage corrupts data (``CorruptedInTransit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import blake3

from agent.aio.taskgroups import task_group
from agent.aio.threads import WorkerPool
from agent.errors import ChunkCorrupt, CorruptedInTransit, ObjectTruncated, Stopped
from agent.pipeline.direct import ALIGN, pad_for
from agent.pipeline.pacing import Pacer
from agent.pipeline.plan import ChunkJob, FetchRange, Plan
from agent.repo.chunks import ChunkCodec, decode_buffer
from agent.repo.repository import Repository
from agent.settings import RestoreSettings


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
    """Receive buffers held for ranges being fetched, verified and written."""
    reads_in_flight: int = 0
    """Ranges being fetched, verified and written now."""
    kept_bytes: int = 0
    """Bytes found already on the target and kept, so far (counted done, not written)."""
    most_reads_in_flight: int = 0
    """The most ranges in flight at once so far."""
    range_bytes: int = 0
    """The range size the pacer picks now."""


class BufferPool:
    """Receive buffers within a byte limit. ``take(n)`` hands out a free buffer of ``n`` to twice
    ``max(n, size)`` bytes, or allocates one of ``max(n, size)`` bytes if the limit allows (dropping free
    ones to make room), or waits for one to be given back, first come first served (``size`` follows the
    pacer's range size). A request larger than the limit is served alone,
    once nothing else is allocated."""

    def __init__(self, limit: int, size: int) -> None:
        self.limit = limit
        self.size = size
        self.allocated = 0
        """Bytes of every buffer the pool made and has not dropped."""
        self.held = 0
        """Bytes of the buffers handed out."""
        self._free: list[bytearray] = []
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _try(self, n: int) -> bytearray | None:
        want = max(n, self.size)
        for i, buf in enumerate(self._free):
            if n <= len(buf) <= 2 * want:  # a much larger one would hold memory smaller ranges could share
                return self._free.pop(i)
        while self.allocated + want > self.limit and self._free:
            self.allocated -= len(self._free.pop())
        if self.allocated + want > self.limit:
            if self.allocated:
                return None
            want = n
        self.allocated += want
        return bytearray(want)

    async def take(self, n: int) -> bytearray:
        while True:
            buf = None if self._waiters else self._try(n)
            if buf is not None:
                self.held += len(buf)
                return buf
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()
                raise
            buf = self._try(n)
            if buf is not None:
                self.held += len(buf)
                self._wake()
                return buf

    def give(self, buf: bytearray) -> None:
        self.held -= len(buf)
        if self.allocated > self.limit:  # an oversized buffer served alone: not kept
            self.allocated -= len(buf)
        else:
            self._free.append(buf)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


Bad = tuple[ChunkJob, str, bytes]
"""A chunk that failed: its job, why, and a digest of the stored bytes that failed (to tell damage in
storage, the same bytes every time, from corruption in transit)."""
_SHORT = b"short"
"""The digest of a fetch that ended before the chunk."""


def _decode_and_write(
    data: bytes | memoryview,
    base: int,
    jobs: list[ChunkJob],
    sink: Sink,
    stop: threading.Event,
    max_plain: int,
    codec: ChunkCodec,
) -> tuple[int, list[Bad], float]:
    """Runs in a worker thread: verify each chunk of a fetched range and write it where it goes.
    Returns the bytes written, the chunks that failed and the seconds it took."""
    started = time.perf_counter()
    out = decode_buffer(max_plain + ALIGN)
    view = memoryview(data)
    written = 0
    bad: list[Bad] = []
    for job in jobs:
        if stop.is_set():
            break
        start = job.offset - base
        frame = view[start : start + job.stored]
        pad = pad_for(job.places[0][1])
        plain = codec.decode(frame, job.plain, job.id, out[pad:])
        if isinstance(plain, str):
            bad.append((job, plain, blake3.blake3(frame).digest()))
            continue
        for slot, offset in job.places:
            sink.write(slot, offset, plain)
        written += job.plain * len(job.places)
    return written, bad, time.perf_counter() - started


def split(rng: FetchRange, size: int) -> list[FetchRange]:
    """``rng`` cut at chunk boundaries into ranges of at most ``size`` stored bytes (a larger chunk is a
    range of its own); chunks at the same offset stay together."""
    pieces: list[FetchRange] = []
    current: FetchRange | None = None
    for job in rng.chunks:
        end = job.offset + job.stored
        if current is not None:
            current_end = current.offset + current.length
            if job.offset < current_end or max(end, current_end) - current.offset <= size:
                current.length = max(end, current_end) - current.offset
                current.chunks.append(job)
                continue
        current = FetchRange(rng.pack, job.offset, job.stored, [job])
        pieces.append(current)
    return pieces


class _Ranges:
    """The plan's ranges in order, each split (``split``) to the size asked when it is taken."""

    def __init__(self, ranges: Sequence[FetchRange]) -> None:
        self._ranges = iter(ranges)
        self._left = len(ranges)
        self._pending: deque[FetchRange] = deque()

    @property
    def left(self) -> bool:
        """Some range is still to be taken."""
        return bool(self._left or self._pending)

    def take(self, size: int) -> FetchRange | None:
        if not self._pending:
            rng = next(self._ranges, None)
            if rng is None:
                return None
            self._left -= 1
            if rng.length <= size:
                return rng
            self._pending.extend(split(rng, size))
        return self._pending.popleft()


def decode_bytes(threads: int, max_plain: int) -> int:
    """Memory the decoding threads hold: per thread, its output buffer and zstd's window."""
    return threads * (2 * max_plain + ALIGN)


class _Transfer:
    def __init__(
        self,
        repo: Repository,
        plan: Plan,
        sink: Sink,
        settings: RestoreSettings,
        pool: WorkerPool,
        advance: Callable[[int], None],
        stats: TransferStats,
        stopping: asyncio.Event | None,
    ) -> None:
        self.stopping = stopping
        self.repo = repo
        self.plan = plan
        self.sink = sink
        self.settings = settings
        self.pool = pool
        self.advance = advance
        self.stats = stats
        limit = settings.memory_bytes - decode_bytes(pool.threads, plan.max_plain)
        self.buffers = BufferPool(limit, settings.max_range_bytes)
        self.pacer = Pacer(settings.reads_in_flight, settings.max_range_bytes, limit, pool.threads)
        self.ranges = _Ranges(plan.ranges)

    async def fetch(self, pack: str, offset: int, into: memoryview) -> None:
        self.stats.requests += 1
        started = time.monotonic()
        first_byte = await self.repo.read_pack_range_into(pack, offset, into)
        self.pacer.fetched(len(into), first_byte, time.monotonic() - started)
        self.pacer.throttles(self.repo.storage.throttles())
        self.stats.fetched_bytes += len(into)

    async def decode(self, data: memoryview, base: int, jobs: list[ChunkJob]) -> tuple[int, list[Bad]]:
        pool = self.pool
        written, bad, seconds = await pool.run(
            _decode_and_write, data, base, jobs, self.sink, pool.stop, self.plan.max_plain, self.repo.codec
        )
        self.pacer.decoded(len(data), seconds)
        return written, bad

    async def refetch(self, rng: FetchRange, failed: Bad, buffer: bytearray) -> None:
        """Fetch one failed chunk again on its own (into the range's buffer, which holds it) and write it."""
        stats = self.stats
        job, reason, digest = failed
        stats.verify_failures += 1
        seen = {digest}
        attempt = 1
        while attempt < self.settings.fetch_attempts:
            attempt += 1
            stats.refetches += 1
            with memoryview(buffer)[: job.stored] as data:
                try:
                    await self.fetch(rng.pack, job.offset, data)
                except ObjectTruncated:
                    bad = [(job, "the pack ends before the chunk", _SHORT)]
                else:
                    written, bad = await self.decode(data, job.offset, [job])
            if not bad:
                self.advance(written)
                return
            stats.verify_failures += 1
            _, reason, digest = bad[0]
            if digest in seen:
                raise ChunkCorrupt(job.id.hex(), rng.pack, job.offset, reason, attempt)
            seen.add(digest)
        raise CorruptedInTransit(
            f"chunk {job.id.hex()} (pack {rng.pack}, offset {job.offset})", self.repo.describe(), attempt, reason
        )

    async def move(self, rng: FetchRange) -> None:
        self.buffers.size = max(self.pacer.range_bytes(), 64 * 1024)
        buffer = await self.buffers.take(rng.length)
        self.stats.in_flight_bytes = self.buffers.held
        try:
            with memoryview(buffer)[: rng.length] as data:
                try:
                    await self.fetch(rng.pack, rng.offset, data)
                except ObjectTruncated:
                    # The pack is shorter than the range: find out chunk by chunk which ones are lost.
                    bad: list[Bad] = [(job, "the pack ends before the chunk", _SHORT) for job in rng.chunks]
                    written = 0
                else:
                    written, bad = await self.decode(data, rng.offset, rng.chunks)
            self.advance(written)
            for failed in bad:
                await self.refetch(rng, failed, buffer)
        finally:
            self.buffers.give(buffer)
            self.stats.in_flight_bytes = self.buffers.held

    async def worker(self) -> None:
        pacer, stopping = self.pacer, self.stopping
        while True:
            await pacer.acquire()
            try:
                if stopping is not None and stopping.is_set():
                    return
                rng = self.ranges.take(pacer.range_bytes())
                stats = self.stats
                stats.reads_in_flight, stats.range_bytes = pacer.in_flight, pacer.range_bytes()
                stats.most_reads_in_flight = max(stats.most_reads_in_flight, pacer.in_flight)
                if rng is None:
                    return
                await self.move(rng)
            finally:
                await pacer.release()


async def transfer(
    repo: Repository,
    plan: Plan,
    sink: Sink,
    settings: RestoreSettings,
    pool: WorkerPool,
    advance: Callable[[int], None],
    stats: TransferStats,
    stopping: asyncio.Event | None = None,
) -> None:
    """Move every range of the plan onto the sink; ``advance`` is called with bytes written. Once
    ``stopping`` is set no further range is taken; the ranges taken are fetched and written, and then
    Stopped is raised (if any range was left)."""
    run = _Transfer(repo, plan, sink, settings, pool, advance, stats, stopping)
    async with task_group() as tg:
        for n in range(settings.reads_in_flight if len(plan.ranges) else 0):
            tg.create_task(run.worker(), name=f"restore reader {n}")
    if run.ranges.left:
        raise Stopped("the restore stopped when asked to, with what it had fetched written")
