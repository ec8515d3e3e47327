"""Resuming a restore: what an earlier, interrupted run already put on the target is kept, not fetched again.

Before fetching, the chunks of a plan are checked against the target in fetch order: every place a chunk
goes is read back from the target and hashed the way the repository names chunks (BLAKE3, keyed in an
encrypted repository); a chunk whose every place holds it is kept and left out of the fetch. The bytes on
the target are the only evidence: no journal says what was written, so nothing can claim a chunk that is
not there (a write lost in a crash simply hashes wrong and is fetched). What is kept is made durable by
the restore's final flush like everything it writes.

Checking stops by itself on a target that holds nothing of the snapshot (a fresh volume): an interrupted
run takes ranges in the same fetch order, so when it stopped, everything before its oldest range in flight
was written and nothing after its newest was started; between the two lie at most the ranges it had in
flight, whose stored bytes its memory limit bounds. Once more than ``window`` stored bytes in a row are
missing, the rest of the plan was never started, and the check ends. A restore into a fresh target
therefore reads about ``window`` bytes before it starts; a resumed one reads back what it keeps (local
reads at the target's speed instead of fetches). docs/PERFORMANCE.md ("Resuming an interrupted restore")
has the trade-off against a journal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

from agent.aio.taskgroups import task_group
from agent.aio.threads import WorkerPool
from agent.pipeline.plan import FetchRange, Plan
from agent.repo.chunks import decode_buffer
from agent.settings import MiB, RestoreSettings

RANGES_PER_CALL = 4
"""Ranges checked by one worker-thread call."""


class Readable(Protocol):
    def read_into(self, slot: int, offset: int, into: memoryview) -> int:
        """Read up to ``len(into)`` bytes at ``offset`` of file slot ``slot``; returns the bytes read
        (fewer at the end of the file, 0 if the slot's file cannot be read)."""
        ...


@dataclass
class Kept:
    chunks: bytearray
    """One byte per chunk of the manifest's table: 1 if it is on the target at every place it goes."""
    bytes: int = 0
    """Plain bytes those chunks account for, every place counted."""
    checked_bytes: int = 0
    """Plain bytes of the chunks checked (each read back until a place does not hold it)."""


def window_bytes(settings: RestoreSettings) -> int:
    """Stored bytes missing in a row after which the check ends: twice what a run's receive buffers can
    hold (a margin for a run that had a larger memory limit), and at least 256 MiB."""
    return max(2 * settings.memory_bytes, 256 * MiB)


def _check(
    ranges: list[FetchRange],
    target: Readable,
    id_of: Callable[[memoryview], bytes],
    max_plain: int,
    stop: threading.Event,
) -> list[tuple[int, int, int, bool]]:
    """In a worker thread: (chunk index, stored bytes, plain bytes placed, on the target?) for each chunk."""
    buf = decode_buffer(max_plain)
    found: list[tuple[int, int, int, bool]] = []
    for rng in ranges:
        for job in rng.chunks:
            if stop.is_set():
                return found
            view = buf[: job.plain]
            there = all(
                target.read_into(slot, offset, view) == job.plain and id_of(view) == job.id
                for slot, offset in job.places
            )
            found.append((job.index, job.stored, job.plain * len(job.places), there))
    return found


async def find_kept(
    plan: Plan,
    target: Readable,
    id_of: Callable[[memoryview], bytes],
    pool: WorkerPool,
    window: int,
    chunks: int,
    found: Callable[[int], None] | None = None,
) -> Kept:
    """Which of the plan's chunks the target already holds (``chunks``: the manifest's table size).
    Runs on ``pool``'s threads, ``RANGES_PER_CALL`` ranges per call, and stops as described above.
    ``found`` is called on the event loop with the plain bytes kept by each round of calls, as they are
    found (a check of a large resumed volume takes minutes: progress shows it going)."""
    kept = Kept(bytearray(chunks))
    ranges = iter(plan.ranges)
    missing = 0
    while missing <= window:
        calls = [c for c in (list(islice(ranges, RANGES_PER_CALL)) for _ in range(pool.threads)) if c]
        if not calls:
            break
        async with task_group() as tg:
            tasks = [tg.create_task(pool.run(_check, c, target, id_of, plan.max_plain, pool.stop)) for c in calls]
        before = kept.bytes
        for task in tasks:
            for index, stored, placed, there in task.result():
                kept.checked_bytes += placed
                if there:
                    kept.chunks[index] = 1
                    kept.bytes += placed
                    missing = 0
                else:
                    missing += stored
        if found is not None and kept.bytes > before:
            found(kept.bytes - before)
    return kept
