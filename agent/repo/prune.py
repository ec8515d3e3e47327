"""Removing data no snapshot needs (``ferry repo prune``), safely while snapshots are being written, and
rebuilding the index (``ferry repo repair-index``).

Prune is a two-phase mark and sweep with a grace period, as kopia's (docs/FORMAT.md, section 10):

    locks/writer-<id>    a snapshot being written: made before it reads the index, rewritten every
                         ``REFRESH_S`` while it runs, deleted when it ends; stale after ``STALE_S``
    locks/prune          the one prune running (made with a conditional write)
    garbage/<id>         a mark: packs no snapshot referred to when it was written

1. **Mark**: packs no manifest refers to, older than the grace period and than every running writer, are
   listed in a new mark. Writers never reuse a chunk of a marked pack (``marked_packs``).
2. **Sweep** (a later run): a mark older than the grace period, and older than every running writer's
   start, is swept: each of its packs that a manifest refers to by now (a writer that had read the index
   before the mark reused it) is kept, the others are deleted: first out of the index (merged into one
   object), then from storage, then the mark, so a prune stopped anywhere leaves nothing inconsistent.

Why this loses nothing: a writer either started after the mark was written (it read the marks and reuses
nothing in them), or before (its lock holds the sweep back until it has ended, and then its manifest
exists, so the sweep sees what it reused). A writer's own new packs are younger than its lock, so they are
never marked while it runs. A writer whose lock went stale (it stalled for ``STALE_S``) checks, before
writing its manifest, that every pack it reused still exists, and fails rather than write a snapshot
that could not be restored. Prune refuses to run while any manifest cannot be read (it cannot tell what
that snapshot needs).

Packs partly referenced are kept whole: a manifest names the exact location of each chunk (and its
snapshot ID is the hash of the manifest, which Velero keeps), so a chunk cannot be moved without making a
new snapshot ID.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from agent.aio.taskgroups import task_group
from agent.errors import ConfigError, FerryError, NoRepository, ObjectNotFound, RepositoryError, StorageError
from agent.repo.index import Index, read_index, read_trailer, write_index
from agent.repo.repository import PACKS, Repository, pack_key, summary_of

log = logging.getLogger(__name__)

LOCKS = "locks/"
PRUNE_LOCK = LOCKS + "prune"
GARBAGE = "garbage/"
REFRESH_S = 300.0
STALE_S = 1800.0
"""A lock not rewritten for this long belongs to a writer or prune that is gone."""
DEFAULT_GRACE_S = 3600.0


def _lock_body(started: float) -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode()


@asynccontextmanager
async def writer_lock(repo: Repository) -> AsyncIterator[None]:
    """Hold a writer lock while the block runs (format 2 repositories; nothing for others): prune then
    neither marks this writer's new packs nor sweeps marks it may have missed."""
    if repo.config is None:
        yield
        return
    key = f"{LOCKS}writer-{secrets.token_hex(8)}"
    body = _lock_body(time.time())
    await repo.storage.put(key, body)
    async with _held(repo, key, body):
        yield


@asynccontextmanager
async def _held(repo: Repository, key: str, body: bytes) -> AsyncIterator[None]:
    """While the block runs, rewrite the lock ``key`` every ``REFRESH_S`` (so it never looks stale); delete
    it when the block ends, however it ends."""

    async def refresh() -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await repo.storage.put(key, body)
            except StorageError as e:  # the next one may succeed; a stale lock is covered (module docstring)
                log.warning("could not refresh the lock %s in %s: %s", key, repo.describe(), e)

    try:
        async with task_group() as tg:
            refresher = tg.create_task(refresh(), name=f"refresh {key}")
            try:
                yield
            finally:
                refresher.cancel()
    finally:
        with suppress(StorageError):
            await asyncio.shield(repo.storage.delete(key))


async def marked_packs(repo: Repository) -> set[str]:
    """The packs the marks of a running prune list (a writer reuses nothing in them)."""
    found: set[str] = set()
    for key in await repo.storage.list(GARBAGE):
        try:
            found.update(_read_mark(await repo.storage.get(key, max_bytes=_MAX_MARK_BYTES)))
        except (ObjectNotFound, RepositoryError):
            continue
    return found


_MAX_MARK_BYTES = 256 * 1024 * 1024


def _read_mark(stored: bytes) -> list[str]:
    try:
        packs = json.loads(stored)["packs"]
        return [str(p) for p in packs]
    except (ValueError, KeyError, TypeError):
        raise RepositoryError("a prune mark is malformed") from None


@dataclass
class PruneReport:
    snapshots: int = 0
    packs: int = 0
    """Packs before."""
    stored_bytes: int = 0
    """Bytes of packs before."""
    deleted_packs: int = 0
    deleted_bytes: int = 0
    marked_packs: int = 0
    """Unreferenced packs marked by this run (deleted by a run at least the grace period later)."""
    marked_bytes: int = 0
    pending_packs: int = 0
    """Packs of earlier marks not yet swept (too recent, or a writer older than the mark is running)."""
    kept_packs: int = 0
    """Packs of swept marks that a snapshot written meanwhile refers to: kept."""
    writers: int = 0
    """Writers running (live locks) during this prune."""
    index_objects: tuple[int, int] = (0, 0)
    """Index objects before and after."""
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def stored_bytes_after(self) -> int:
        return self.stored_bytes - self.deleted_bytes


async def _live_writers(repo: Repository, now: float, dry_run: bool) -> list[float]:
    """The start times of the writers running now; stale locks are deleted (they block nothing)."""
    starts: list[float] = []
    for key, info in (await repo.storage.info(LOCKS)).items():
        if not key.startswith(f"{LOCKS}writer-"):
            continue
        if info.modified < now - STALE_S:
            if not dry_run:
                await repo.storage.delete(key)
            continue
        try:
            starts.append(float(json.loads(await repo.storage.get(key, max_bytes=64 * 1024))["started"]))
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError, StorageError):
            starts.append(info.modified)  # unreadable: as old as its last write
    return starts


@asynccontextmanager
async def _prune_lock(repo: Repository, now: float) -> AsyncIterator[None]:
    body = _lock_body(now)
    if not await repo.storage.put_new(PRUNE_LOCK, body):
        info = (await repo.storage.info(PRUNE_LOCK)).get(PRUNE_LOCK)
        if info is not None and info.modified >= now - STALE_S:
            raise ConfigError(
                f"another prune of {repo.describe()} is running (its lock {PRUNE_LOCK} was written "
                f"{now - info.modified:.0f} s ago); try again once it has ended"
            )
        await repo.storage.delete(PRUNE_LOCK)  # stale: that prune is gone
        if not await repo.storage.put_new(PRUNE_LOCK, body):
            raise ConfigError(f"another prune of {repo.describe()} started just now; try again once it has ended")
    async with _held(repo, PRUNE_LOCK, body):
        yield


async def prune(repo: Repository, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False) -> PruneReport:
    """Mark unreferenced packs and sweep old marks (module docstring). ``dry_run``: report what would be
    done, change nothing. Raises NoRepository (a format 1 repository), ConfigError (another prune running),
    RepositoryError (a manifest cannot be read) and storage errors."""
    if repo.config is None:
        raise NoRepository(
            f"{repo.describe()} holds a format 1 Ferry repository: `ferry repo init --no-encryption` upgrades it, "
            "then it can be pruned"
        )
    if grace_s < 0:
        raise ConfigError("the grace period cannot be negative")
    report = PruneReport(dry_run=dry_run)
    now = time.time()
    if dry_run:
        await _prune(repo, report, now, grace_s, dry_run)
        return report
    async with _prune_lock(repo, now):
        await _prune(repo, report, now, grace_s, dry_run)
    return report


async def _prune(repo: Repository, report: PruneReport, now: float, grace_s: float, dry_run: bool) -> None:
    writers = await _live_writers(repo, now, dry_run)
    report.writers = len(writers)
    oldest_writer = min(writers, default=now)
    referenced = await _referenced(repo, report)
    packs = {
        k.rsplit("/", 1)[-1]: v
        for k, v in (await repo.storage.info(PACKS)).items()
        if k == pack_key(k.rsplit("/", 1)[-1])
    }
    report.packs = len(packs)
    report.stored_bytes = sum(max(0, i.size) for i in packs.values())
    deleted: set[str] = set()
    pending: set[str] = set()
    swept: list[str] = []
    for key, info in sorted((await repo.storage.info(GARBAGE)).items()):
        try:
            listed = _read_mark(await repo.storage.get(key, max_bytes=_MAX_MARK_BYTES))
        except ObjectNotFound:
            continue
        except RepositoryError as e:
            report.notes.append(f"{key}: {e}; deleted" if not dry_run else f"{key}: {e}")
            swept.append(key)
            continue
        if info.modified > now - grace_s or info.modified > oldest_writer:
            pending.update(p for p in listed if p in packs)
            continue
        for name in listed:
            if name in referenced:
                report.kept_packs += 1
            elif name in packs and name not in deleted:
                report.deleted_packs += 1
                report.deleted_bytes += max(0, packs[name].size)
                deleted.add(name)
        swept.append(key)
    report.pending_packs = len(pending - deleted)
    newest = min(now - grace_s, oldest_writer)
    candidates = sorted(
        name
        for name, info in packs.items()
        if name not in referenced and name not in pending and name not in deleted and info.modified <= newest
    )
    if candidates:
        report.marked_packs = len(candidates)
        report.marked_bytes = sum(max(0, packs[n].size) for n in candidates)
        if not dry_run:
            body = json.dumps({"packs": candidates, "host": socket.gethostname()}).encode()
            await repo.storage.put(f"{GARBAGE}{secrets.token_hex(16)}", body)
    index = await read_index(repo)
    report.index_objects = (len(index.objects), len(index.objects))
    if dry_run:
        return
    # The index first, without the packs about to go; then the packs; then the marks. Stopped anywhere in
    # between, nothing names a pack that is gone but a mark (which the next run sweeps again), and writers
    # reuse nothing of a pack a mark still lists.
    if deleted or len(index.objects) > 1 or index.unreadable:
        report.index_objects = (len(index.objects), await _compact(repo, index, set(packs) - deleted))
    for name in sorted(deleted):
        await repo.storage.delete(pack_key(name))
    for key in swept:
        await repo.storage.delete(key)


async def _referenced(repo: Repository, report: PruneReport) -> set[str]:
    """Every pack a snapshot refers to. Raises RepositoryError if a manifest cannot be read."""
    referenced: set[str] = set()
    ids = await repo.snapshot_ids()
    report.snapshots = len(ids)
    for snapshot_id in ids:
        try:
            manifest = await repo.read_manifest(snapshot_id)
        except FerryError as e:
            raise RepositoryError(
                f"snapshot {snapshot_id} cannot be read ({e}); prune deletes nothing while it cannot tell what every "
                f"snapshot needs: forget it (`ferry snapshot forget {snapshot_id[:12]}`) or repair the repository"
            ) from None
        referenced.update(manifest.packs)
    return referenced


async def _compact(repo: Repository, index: Index, remaining: set[str]) -> int:
    """Replace the index objects ``index`` was read from by one: the chunks in packs that remain, the
    summaries of snapshots that exist. Index objects written meanwhile are left alone. Returns how many
    index objects there are now."""
    ids = set(await repo.snapshot_ids())
    kept = [rec for rec in index.chunks.values() if index.packs[rec.pack] in remaining]
    summaries = {k: v for k, v in index.snapshots.items() if k in ids}
    new = await write_index(repo, index.packs, kept, summaries)
    for key in index.objects:
        if key != new:
            await repo.storage.delete(key)
    for key, _ in index.unreadable:
        await repo.storage.delete(key)
    return len(await repo.storage.list("index/"))


@dataclass
class RepairReport:
    index_objects: int = 0
    """Index objects replaced."""
    chunks: int = 0
    packs: int = 0
    snapshots: int = 0
    unreadable: list[str] = field(default_factory=list)
    """Snapshots whose manifests could not be read (their chunks are indexed from the packs' trailers)."""


async def repair_index(repo: Repository) -> RepairReport:
    """Rebuild the index from the manifests (their chunks and summaries) and the packs' trailers (chunks no
    manifest refers to), then replace every index object there was with the one written. Raises
    ConfigError for a format 1 repository, and storage errors."""
    if repo.config is None:
        raise NoRepository(
            f"{repo.describe()} holds a format 1 Ferry repository (no index): `ferry repo init --no-encryption` "
            "upgrades it"
        )
    report = RepairReport()
    old = await repo.storage.list("index/")
    sizes = await repo.pack_sizes()
    index = Index()
    for snapshot_id in await repo.snapshot_ids():
        try:
            manifest = await repo.read_manifest(snapshot_id)
        except FerryError as e:
            report.unreadable.append(f"{snapshot_id}: {e}")
            continue
        index.add_all(
            (r for r in manifest.chunks if r.offset + r.stored <= sizes.get(manifest.packs[r.pack], -1)), manifest.packs
        )
        index.snapshots[snapshot_id] = summary_of(manifest)
    limit = asyncio.Semaphore(8)

    async def trailer(name: str) -> None:
        async with limit:
            records = await read_trailer(repo, name, sizes[name])
        if records:
            index.add_all(records, [name])

    async with task_group() as tg:
        for name, size in sizes.items():
            if size >= 0:
                tg.create_task(trailer(name))
    new = await write_index(repo, index.packs, list(index.chunks.values()), index.snapshots)
    for key in old:
        if key != new:
            await repo.storage.delete(key)
    report.index_objects = len(old)
    report.chunks = len(index.chunks)
    report.packs = len(index.packs)
    report.snapshots = len(index.snapshots)
    return report
