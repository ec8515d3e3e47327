"""A whole restore: manifest → target checks → plan → resume check → holes → transfer → metadata → flush.

The target is checked (kind and size) before a byte is written, and the restore's memory before a byte is
fetched: decode buffers for its threads (fewer threads if ``memory_bytes`` cannot hold one per CPU) and
receive buffers share ``memory_bytes``. A target that existed already is checked for chunks it holds
(``resume``). A target this restore created (an image file, a directory) is removed if the restore fails
or is cancelled, not when it is asked to stop (``stopping``). Progress is reported as (bytes done, total
bytes): total is known before the first fetch and never changes, done only grows and equals total when
``restore`` returns. Cancelling the awaiting task stops the restore: worker threads see ``stop`` between
chunks and ``restore`` returns (raising CancelledError) only once none is running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.aio.taskgroups import task_group
from agent.aio.threads import WorkerPool, offload
from agent.errors import ConfigError, Stopped, TargetError
from agent.fs.names import Problem, shown
from agent.pipeline.block_target import BlockTarget
from agent.pipeline.plan import Plan, plan_block, plan_tree
from agent.pipeline.resume import Kept, find_kept, window_bytes
from agent.pipeline.select import select_entries
from agent.pipeline.transfer import TransferStats, decode_bytes, transfer
from agent.pipeline.tree_target import TreeTarget
from agent.repo.format import Manifest
from agent.repo.locate import Locator
from agent.repo.locks import reader_lock
from agent.repo.repository import Repository
from agent.settings import RestoreSettings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called on the event loop with (bytes done, total bytes)."""
Resumed = Callable[[int, int], None]
"""Called on the event loop, once, when the target already holds part of the snapshot (an interrupted
restore's work) and the check of it is over: (bytes kept, total bytes). Progress has counted the kept
bytes as they were found (``TransferStats.kept_bytes`` too)."""


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
    kept_bytes: int = 0
    """Bytes already on the target (an interrupted restore's work, checked chunk by chunk) and not fetched."""
    checked_bytes: int = 0
    """Bytes read back from the target to find out what it already holds."""
    problems: tuple[Problem, ...] = ()
    """Entries or attributes not restored as the snapshot has them (a device node without the privilege
    to make one, an attribute the target refuses): the restore is otherwise complete."""


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
            f"the snapshot is a block volume but {shown(target)} is a directory: restore it onto a block device "
            "or an image file"
        )
    if manifest.mode == "filesystem" and not stat.S_ISDIR(mode):
        raise TargetError(
            f"the snapshot is a filesystem but {shown(target)} is not a directory: restore it into a mounted volume"
        )


def _kib(n: int) -> str:
    return f"{-(-n // 1024)} KiB" if n < 1024 * 1024 else f"{-(-n // (1024 * 1024))} MiB"


def decode_threads(manifest: Manifest, settings: RestoreSettings) -> int:
    """Threads that decode within ``memory_bytes``, which must also hold one receive buffer. Raises
    ConfigError if it cannot hold even one thread's buffers for this snapshot's largest chunk."""
    if not len(manifest.chunks):
        return settings.worker_threads
    _, _, stored, plain = manifest.chunks.columns()
    per_thread = decode_bytes(1, max(plain))
    receive = max(settings.max_range_bytes, max(stored))  # noqa: PLW3301 - no unpacking of a large array
    room = settings.memory_bytes - receive
    if room < per_thread:
        raise ConfigError(
            f"a restore memory limit of {_kib(settings.memory_bytes)} cannot hold this snapshot's buffers: its "
            f"chunks of up to {_kib(max(plain))} need at least {_kib(per_thread + receive)} "
            "(--memory, FERRY_RESTORE_MEMORY, dataMoverConfig ferry.memory)"
        )
    return min(settings.worker_threads, room // per_thread)


async def restore(
    repo: Repository,
    snapshot_id: str,
    target: str,
    settings: RestoreSettings,
    progress: Progress | None = None,
    stats: TransferStats | None = None,
    include: Sequence[str] = (),
    resumed: Resumed | None = None,
    stopping: asyncio.Event | None = None,
) -> RestoreResult:
    """Restore ``snapshot_id`` onto ``target``: all of it, or the entries ``include`` selects
    (``agent.pipeline.select``; ConfigError when it selects nothing). ``stats``, when given, is updated as
    the transfer goes (for metrics that are read while it runs). A target that existed before (a volume,
    an image file or directory left by an interrupted restore) is checked first: chunks it already holds
    are kept and not fetched (``agent.pipeline.resume``), and progress starts from them. Once ``stopping``
    is set (an agent shutting down) no further range is fetched: the ranges in flight are written and
    flushed, and Stopped is raised, so that going on later fetches nothing twice."""
    started = time.monotonic()
    manifest = await repo.read_manifest(snapshot_id)
    if include:
        whole = manifest
        manifest = await offload(lambda _stop: select_entries(whole, include, snapshot_id))
    # The reader lock holds back prune's sweeps until this restore has read every pack it planned to.
    async with reader_lock(repo):
        if repo.config is not None:  # format 1 repositories are never repacked: nothing to look up
            manifest = await (await Locator.open(repo)).relocate(manifest)
        options = _Options(progress, stats, resumed, stopping)
        return await _restore(repo, snapshot_id, manifest, target, settings, options, started)


async def _restore(
    repo: Repository,
    snapshot_id: str,
    manifest: Manifest,
    target: str,
    settings: RestoreSettings,
    options: _Options,
    started: float,
) -> RestoreResult:
    stats = options.stats if options.stats is not None else TransferStats()
    threads = decode_threads(manifest, settings)
    if threads < settings.worker_threads:
        log.info("restoring with %d threads: the memory limit holds the decode buffers of no more", threads)
    with WorkerPool(threads, "ferry-restore") as pool:
        await pool.run(_check_target_kind, manifest, target)
        block = manifest.mode == "block"
        plan = await pool.run(plan_block if block else plan_tree, manifest, settings)
        tracker = _Tracker(plan.total_bytes, options.progress)
        tracker.advance(0)
        run = _Run(repo, manifest, plan, settings, pool, tracker, stats, options.resumed, options.stopping)
        problems, kept = await (_restore_block if block else _restore_tree)(run, target)
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
        kept_bytes=kept.bytes,
        checked_bytes=kept.checked_bytes,
        problems=tuple(problems),
    )
    log.info(
        "snapshot %s restored to %s: %d bytes in %.2f s, %d of them kept from the target",
        snapshot_id,
        target,
        result.total_bytes,
        result.seconds,
        result.kept_bytes,
    )
    return result


@dataclass(frozen=True)
class _Options:
    """What the caller of ``restore`` passes on to the phases besides the settings."""

    progress: Progress | None
    stats: TransferStats | None
    resumed: Resumed | None
    stopping: asyncio.Event | None


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
    resumed: Resumed | None
    stopping: asyncio.Event | None

    async def transfer(self, plan: Plan, target: BlockTarget | TreeTarget) -> None:
        """Move the plan's data onto ``target``; when asked to stop, flush what was written first."""
        try:
            await transfer(
                self.repo, plan, target, self.settings, self.pool, self.tracker.advance, self.stats, self.stopping
            )
        except Stopped:
            await self.pool.run(target.flush)
            raise

    async def keep(self, target: BlockTarget | TreeTarget) -> tuple[Plan, Kept]:
        """Check what the target already holds; the plan for the rest, and what is kept (counted done)."""
        manifest = self.manifest
        stats, tracker = self.stats, self.tracker

        def found(n: int) -> None:
            stats.kept_bytes += n  # before progress counts it: a reader of both never sees it as written
            tracker.advance(n)

        window = window_bytes(self.settings)
        kept = await find_kept(self.plan, target, self.repo.codec.id_of, self.pool, window, len(manifest.chunks), found)
        if not kept.bytes:
            return self.plan, kept
        log.info("the target already holds %d bytes of the snapshot: kept, not fetched again", kept.bytes)
        replan = plan_block if manifest.mode == "block" else plan_tree
        plan = await self.pool.run(replan, manifest, self.settings, kept.chunks)
        if self.resumed is not None:
            self.resumed(kept.bytes, tracker.total)
        return plan, kept


async def _restore_block(run: _Run, path: str) -> tuple[list[Problem], Kept]:
    pool = run.pool
    target = await pool.run(BlockTarget.open, path, run.manifest.size, run.settings.sparse, run.settings.direct_io)
    finished = False
    try:
        plan, kept = (run.plan, Kept(bytearray())) if target.fresh else await run.keep(target)
        for _, offset, length in run.plan.holes:
            await pool.run(target.fill_hole, offset, length, pool.stop)
            run.tracker.advance(length)
        await run.transfer(plan, target)
        await pool.run(target.flush)
        finished = True
    except Stopped:
        finished = True  # asked to stop: what it wrote stays, to go on from
        raise
    finally:
        target.close()
        if not finished:
            await _discard(pool, target.discard)
    return [], kept


async def _restore_tree(run: _Run, path: str) -> tuple[list[Problem], Kept]:
    pool = run.pool
    target = await pool.run(TreeTarget.open, path, run.manifest, run.settings.direct_io)
    finished = False
    try:
        for stage in target.prepare_stages(pool.threads):
            async with task_group() as tg:
                for batch in stage:
                    tg.create_task(pool.run(target.prepare_batch, batch, pool.stop))
        run.tracker.advance(sum(length for _, _, length in run.plan.holes))  # holes are made by now
        plan, kept = await run.keep(target) if target.kept_files else (run.plan, Kept(bytearray()))
        await run.transfer(plan, target)
        await pool.run(target.apply_metadata, pool.stop)
        await pool.run(target.flush)
        finished = True
    except Stopped:
        finished = True  # asked to stop: what it wrote stays, to go on from
        raise
    finally:
        target.close()
        if not finished:
            await _discard(pool, target.discard)
    return target.problems, kept


async def _discard(pool: WorkerPool, discard: Callable[[], None]) -> None:
    """Remove what an unfinished restore created, even while it is being cancelled (the removal is not
    interrupted: a half-removed target would be worse than either)."""
    task = asyncio.ensure_future(asyncio.to_thread(discard))
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
    task.result()
