"""A whole restore: manifest → target checks → plan → holes → transfer → metadata → flush.

The target is checked (kind and size) before a byte is written. Progress is reported as
(bytes done, total bytes): total is known before the first fetch and never changes, done only grows and
equals total when ``restore`` returns. Cancelling the awaiting task stops the restore: worker threads
see ``stop`` between chunks and ``restore`` returns (raising CancelledError) only once none is running.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import TargetError
from agent.pipeline.block_target import BlockTarget
from agent.pipeline.plan import Plan, plan_block, plan_tree
from agent.pipeline.transfer import Sink, TransferStats, transfer
from agent.pipeline.tree_target import TreeTarget
from agent.repo.format import Manifest
from agent.repo.repository import Repository
from agent.settings import RestoreSettings
from agent.taskgroups import task_group
from agent.threads import WorkerPool

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called on the event loop with (bytes done, total bytes)."""


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    mode: str
    total_bytes: int
    """Bytes restored, holes included (the snapshot's logical size)."""
    fetched_bytes: int
    requests: int
    refetches: int
    verify_failures: int
    seconds: float


class _Tracker:
    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback

    def advance(self, n: int) -> None:
        """Add ``n`` bytes done and report; ``advance(0)`` reports the starting point."""
        self.done += max(n, 0)
        if self._callback is not None:
            self._callback(self.done, self.total)


def _check_target_kind(manifest: Manifest, target: str) -> None:
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return
    if manifest.mode == "block" and stat.S_ISDIR(mode):
        raise TargetError(
            f"the snapshot is a block volume but {target!r} is a directory: restore it onto a block device or "
            "an image file"
        )
    if manifest.mode == "filesystem" and not stat.S_ISDIR(mode):
        raise TargetError(
            f"the snapshot is a filesystem but {target!r} is not a directory: restore it into a mounted volume"
        )


async def restore(
    repo: Repository,
    snapshot_id: str,
    target: str,
    settings: RestoreSettings,
    progress: Progress | None = None,
    stats: TransferStats | None = None,
) -> RestoreResult:
    """Restore ``snapshot_id`` onto ``target``. ``stats``, when given, is updated as the transfer goes
    (for metrics that are read while it runs)."""
    started = time.monotonic()
    manifest = await repo.read_manifest(snapshot_id)
    stats = stats if stats is not None else TransferStats()
    with WorkerPool(settings.worker_threads, "ferry-restore") as pool:
        await pool.run(_check_target_kind, manifest, target)
        block = manifest.mode == "block"
        plan = await pool.run(plan_block if block else plan_tree, manifest, settings)
        tracker = _Tracker(plan.total_bytes, progress)
        tracker.advance(0)
        run = _Run(repo, manifest, plan, settings, pool, tracker, stats)
        await (_restore_block if block else _restore_tree)(run, target)
    if tracker.done != tracker.total:  # pragma: no cover - a planning bug, never a data condition
        raise TargetError(f"restore accounted for {tracker.done} of {tracker.total} bytes")
    result = RestoreResult(
        snapshot_id=snapshot_id,
        mode=manifest.mode,
        total_bytes=tracker.total,
        fetched_bytes=stats.fetched_bytes,
        requests=stats.requests,
        refetches=stats.refetches,
        verify_failures=stats.verify_failures,
        seconds=time.monotonic() - started,
    )
    log.info(
        "snapshot %s restored to %s: %d bytes in %.2f s",
        snapshot_id,
        target,
        result.total_bytes,
        result.seconds,
    )
    return result


@dataclass(frozen=True)
class _Run:
    """What the phases of one restore share."""

    repo: Repository
    manifest: Manifest
    plan: Plan
    settings: RestoreSettings
    pool: WorkerPool
    tracker: _Tracker
    stats: TransferStats

    async def transfer(self, sink: Sink) -> None:
        await transfer(self.repo, self.plan, sink, self.settings, self.pool, self.tracker.advance, self.stats)


async def _restore_block(run: _Run, path: str) -> None:
    pool = run.pool
    target = await pool.run(BlockTarget.open, path, run.manifest.size, run.settings.sparse, run.settings.direct_io)
    try:
        for _, offset, length in run.plan.holes:
            await pool.run(target.fill_hole, offset, length, pool.stop)
            run.tracker.advance(length)
        await run.transfer(target)
        await pool.run(target.flush)
    finally:
        target.close()


async def _restore_tree(run: _Run, path: str) -> None:
    pool = run.pool
    target = await pool.run(TreeTarget.open, path, run.manifest, run.settings.direct_io)
    try:
        for stage in target.prepare_stages(pool.threads):
            async with task_group() as tg:
                for batch in stage:
                    tg.create_task(pool.run(target.prepare_batch, batch, pool.stop))
        run.tracker.advance(sum(length for _, _, length in run.plan.holes))  # new files are sparse: holes are done
        await run.transfer(target)
        await pool.run(target.apply_metadata, pool.stop)
        await pool.run(target.flush)
    finally:
        target.close()
