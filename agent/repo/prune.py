"""Removing data no snapshot needs (``ferry repo prune``), safely while snapshots are being written and
restored, and rebuilding the index (``ferry repo repair-index``).

Prune is a two-phase mark and sweep with a grace period, as kopia's (docs/FORMAT.md, section 10), with
the locks and marks of ``agent.repo.locks``:

1. **Find what is live**: every manifest is read; a chunk it names is read from its place there if that
   pack exists and is not marked, else from the place the index gives (``agent.repo.locate``: where a
   repack moved it). The packs holding those places are *needed*.
2. **Repack**: needed packs that are mostly unused (their live chunks fill little of them) have their live
   chunks copied, each verified first, into new packs (with their trailer), indexed; then the old packs
   are no longer needed. Most unused first, until what the kept packs hold unused is at most
   ``max_unused`` of what they hold used (restic's ``--max-unused``).
3. **Mark**: packs not needed, older than the grace period and than every running writer, are listed in a
   new mark. Writers never reuse a chunk of a marked pack, readers read one from it only if the index
   knows no other place.
4. **Sweep** (a later run): a mark older than the grace period and than every running writer's start, with
   no reader running, is swept: its packs still needed (a writer that had read the index before the mark
   reused a chunk the index has nowhere else) are kept, the others deleted: first out of the index (all
   index objects merged into one, holding each live chunk's chosen place), then from storage, then the
   mark, so a prune stopped anywhere leaves nothing inconsistent.

Why this loses nothing: a writer either started after the mark was written (it read the marks and reuses
nothing in them), or before (its lock holds the sweep back until it has ended, and then its manifest
exists, so the sweep sees what it needs). A reader holds every sweep back while it runs, and one that
starts later reads the marks and the index, which name the new places before the mark exists. A writer's
own new packs are younger than its lock, so they are never marked while it runs. A writer whose lock went
stale (it stalled for ``STALE_S``) checks, before writing its manifest, that every pack it reused still
exists, and fails rather than write a snapshot that could not be restored. Prune refuses to run while any
manifest cannot be read (it cannot tell what that snapshot needs).

Manifests never change (a snapshot's ID is the hash of its manifest, and Velero keeps it): moved chunks are
found by ID, and a restore verifies each chunk against its ID wherever it is read from.
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
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import blake3

from agent.aio.taskgroups import task_group
from agent.aio.threads import offload
from agent.errors import ConfigError, FerryError, NoRepository, ObjectNotFound, RepositoryError
from agent.repo.format import ChunkRecord
from agent.repo.index import Index, IndexObject, index_objects, pack_trailer, read_trailer, write_index
from agent.repo.locate import Place
from agent.repo.locks import (
    GARBAGE,
    LOCKS,
    MAX_MARK_BYTES,
    PRUNE_LOCK,
    READER,
    STALE_S,
    WRITER,
    held,
    live_locks,
    lock_body,
    marked_packs,
    read_mark,
)
from agent.repo.repository import PACKS, Repository, pack_key, summary_of
from agent.storage.base import ObjectInfo

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_GRACE_S", "DEFAULT_MAX_UNUSED", "GARBAGE", "LOCKS", "PruneReport", "prune", "repair_index"]

DEFAULT_GRACE_S = 3600.0
DEFAULT_MAX_UNUSED = 0.05
"""Unused bytes the kept packs may hold, as a fraction of the used ones (restic's default, 5%)."""
DEFAULT_PACK_BYTES = 32 * 1024 * 1024
"""The size of the packs a repack writes (as a snapshot writer's, ``SnapshotSettings.pack_bytes``)."""


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
    """Packs marked by this run, unused or repacked (deleted by a run at least the grace period later)."""
    marked_bytes: int = 0
    repacked_packs: int = 0
    """Mostly unused packs whose live chunks this run copied into new packs (they are among the marked)."""
    repacked_bytes: int = 0
    """Bytes of live chunks copied (stored size)."""
    written_packs: int = 0
    written_bytes: int = 0
    pending_packs: int = 0
    """Packs of earlier marks not yet swept (too recent, or a writer older than the mark or a reader is
    running)."""
    kept_packs: int = 0
    """Packs of swept marks still needed by a snapshot written meanwhile: kept."""
    unused_bytes: int = 0
    """Bytes the packs kept hold that no snapshot needs, after this run (repacking aside, the garbage mixed
    into packs that also hold live chunks)."""
    writers: int = 0
    """Writers running (live locks) during this prune."""
    readers: int = 0
    """Readers (restores, checks) running during this prune: while any does, no mark is swept."""
    index_objects: tuple[int, int] = (0, 0)
    """Index objects before and after."""
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def stored_bytes_after(self) -> int:
        return self.stored_bytes - self.deleted_bytes + self.written_bytes


@asynccontextmanager
async def _prune_lock(repo: Repository, now: float) -> AsyncIterator[None]:
    body = lock_body(now)
    if not await repo.storage.put_new(PRUNE_LOCK, body):
        info = (await repo.storage.info(PRUNE_LOCK)).get(PRUNE_LOCK)
        if info is not None and info.modified >= now - STALE_S and not await _holder_gone(repo):
            raise ConfigError(
                f"another prune of {repo.describe()} is running (its lock {PRUNE_LOCK} was written "
                f"{now - info.modified:.0f} s ago); try again once it has ended (a prune killed on another "
                f"machine leaves a lock that goes stale {STALE_S / 60:.0f} minutes after its last write)"
            )
        await repo.storage.delete(PRUNE_LOCK)  # stale: that prune is gone
        if not await repo.storage.put_new(PRUNE_LOCK, body):
            raise ConfigError(f"another prune of {repo.describe()} started just now; try again once it has ended")
    async with held(repo, PRUNE_LOCK, body):
        yield


async def _holder_gone(repo: Repository) -> bool:
    """Whether the prune lock was written by a process of this machine that no longer runs (killed: its lock
    was never deleted)."""
    try:
        holder = json.loads(await repo.storage.get(PRUNE_LOCK, max_bytes=64 * 1024))
        pid = int(holder["pid"])
        if holder.get("host") != socket.gethostname() or pid == os.getpid():
            return False
    except (ObjectNotFound, ValueError, KeyError, TypeError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


async def prune(
    repo: Repository,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    dry_run: bool = False,
    max_unused: float | None = DEFAULT_MAX_UNUSED,
    pack_bytes: int = DEFAULT_PACK_BYTES,
) -> PruneReport:
    """Find what is live, repack, mark and sweep (module docstring). ``grace_s``: seconds a pack and a
    mark must be old to be acted on; ``max_unused``: unused bytes tolerated in kept packs as a fraction of
    the used ones (None: never repack); ``pack_bytes``: the size of the packs a repack writes;
    ``dry_run``: report what would be done, change nothing. Raises NoRepository (a format 1 repository),
    ConfigError (bad arguments, another prune running), RepositoryError (a manifest cannot be read) and
    storage errors."""
    if repo.config is None:
        raise NoRepository(
            f"{repo.describe()} holds a format 1 Ferry repository: `ferry repo init --no-encryption` upgrades it, "
            "then it can be pruned"
        )
    if grace_s < 0:
        raise ConfigError("the grace period cannot be negative")
    if max_unused is not None and max_unused < 0:
        raise ConfigError("the unused data tolerated cannot be negative")
    report = PruneReport(dry_run=dry_run)
    now = time.time()
    run = _Run(repo, report, now, grace_s, dry_run, max_unused, pack_bytes)
    if dry_run:
        await run.go()
        return report
    async with _prune_lock(repo, now):
        await run.go()
    return report


class _Run:
    """One prune: the steps of the module docstring over one view of the repository."""

    def __init__(
        self,
        repo: Repository,
        report: PruneReport,
        now: float,
        grace_s: float,
        dry_run: bool,
        max_unused: float | None,
        pack_bytes: int,
    ) -> None:
        self.repo = repo
        self.report = report
        self.now = now
        self.grace_s = grace_s
        self.dry_run = dry_run
        self.max_unused = max_unused
        self.pack_bytes = pack_bytes
        self.homes: dict[bytes, Place] = {}
        """Live chunks read from the index (their manifest's place is gone or marked): the place chosen."""
        self.sizes: dict[str, int] = {}

    async def go(self) -> None:
        repo, report, now = self.repo, self.report, self.now
        writers = await live_locks(repo, WRITER, now, delete_stale=not self.dry_run)
        readers = await live_locks(repo, READER, now, delete_stale=not self.dry_run)
        report.writers, report.readers = len(writers), len(readers)
        oldest_writer = min(writers, default=now)
        newest = min(now - self.grace_s, oldest_writer)
        """Packs and marks younger than this are not acted on."""
        referenced = await self._referenced()
        infos = {
            k.rsplit("/", 1)[-1]: v
            for k, v in (await repo.storage.info(PACKS)).items()
            if k == pack_key(k.rsplit("/", 1)[-1])
        }
        sizes = {name: i.size for name, i in infos.items()}
        report.packs = len(infos)
        report.stored_bytes = sum(max(0, s) for s in sizes.values())
        self.sizes = sizes
        marks, swept, unreadable_marks = await self._marks(newest, bool(readers))
        marked = {p for listed in marks.values() for p in listed if p in sizes}
        objects, unreadable = await index_objects(repo)
        if unreadable:
            _, why = unreadable[0]
            raise RepositoryError(
                f"{why}; prune deletes nothing while it cannot tell where every chunk is: `ferry repo repair-index` "
                f"rebuilds the index from the manifests and packs ({len(unreadable)} index objects cannot be read)"
            )
        stored_objects = len(objects)
        objects += await _unindexed(repo, objects, sizes)

        # 1. What is live, and where each live chunk is read from.
        live: dict[str, dict[bytes, Place]] = {}
        """Needed packs: the live chunks read from each (by ID)."""
        lost: set[bytes] = set()
        for (pack, offset), (cid, stored, plain) in referenced.items():
            if pack not in marked and sizes.get(pack, -1) >= offset + stored:
                live.setdefault(pack, {}).setdefault(cid, Place(pack, offset, stored, plain))
            else:
                lost.add(cid)
        # A reader whose manifest's place is gone or marked reads the chunk where the index says.
        self.homes = _choose(objects, lost, sizes, marked, set(live), referenced)
        for cid, place in self.homes.items():
            live.setdefault(place.pack, {})[cid] = place

        # 2. Repack the mostly unused packs.
        content = _content(objects, sizes, referenced)
        chosen = self._to_repack(live, content, infos, marked, newest)
        if chosen:
            await self._repack(chosen, live)
        needed = set(live) - set(chosen)
        report.unused_bytes = sum(
            max(0, content[p] - sum(c.stored for c in live[p].values())) for p in needed if p in content
        )

        # 3 and 4. Sweep old marks; mark what is no longer needed.
        deleted: set[str] = set()
        pending: set[str] = set()
        for key, listed in marks.items():
            if key not in swept:
                pending.update(p for p in listed if p in sizes)
                continue
            for name in listed:
                if name in needed:
                    report.kept_packs += 1
                elif name in sizes and name not in deleted:
                    report.deleted_packs += 1
                    report.deleted_bytes += max(0, sizes[name])
                    deleted.add(name)
        report.pending_packs = len(pending - deleted)
        candidates = sorted(
            name
            for name, info in infos.items()
            if name not in needed and name not in marked and info.modified <= newest
        )
        report.marked_packs = len(candidates)
        report.marked_bytes = sum(max(0, sizes[n]) for n in candidates)
        report.index_objects = (stored_objects, stored_objects)
        if self.dry_run:
            return
        # The index first (without the packs about to go, with the place chosen for every chunk read from
        # the index), then the new mark (readers that see it find the new places), then the packs, then the
        # swept marks. Stopped anywhere in between, nothing names a pack that is gone but a mark (which the
        # next run sweeps again), and writers reuse nothing of a pack a mark still lists.
        if deleted or chosen or len(objects) > 1 or unreadable:
            report.index_objects = (
                stored_objects,
                await self._compact(objects, unreadable, set(sizes) - deleted, marked | set(candidates)),
            )
        if candidates:
            body = json.dumps({"packs": candidates, "host": socket.gethostname()}).encode()
            await repo.storage.put(f"{GARBAGE}{secrets.token_hex(16)}", body)
        for name in sorted(deleted):
            await repo.storage.delete(pack_key(name))
        for key in sorted(swept | unreadable_marks):
            await repo.storage.delete(key)

    async def _referenced(self) -> dict[tuple[str, int], tuple[bytes, int, int]]:
        """Every place a snapshot names: (pack, offset) -> (chunk ID, stored, plain). Raises RepositoryError
        if a manifest cannot be read."""
        repo = self.repo
        places: dict[tuple[str, int], tuple[bytes, int, int]] = {}
        ids = await repo.snapshot_ids()
        self.report.snapshots = len(ids)
        for snapshot_id in ids:
            try:
                manifest = await repo.read_manifest(snapshot_id)
            except FerryError as e:
                raise RepositoryError(
                    f"snapshot {snapshot_id} cannot be read ({e}); prune deletes nothing while it cannot tell what "
                    f"every snapshot needs: forget it (`ferry snapshot forget {snapshot_id[:12]}`) or repair the "
                    "repository"
                ) from None
            cols = manifest.chunks.columns()
            table = manifest.chunks
            for i, (pack, offset) in enumerate(zip(cols.pack, cols.offset, strict=True)):
                key = (manifest.packs[pack], offset)
                if key not in places:
                    places[key] = (table.id(i), cols.stored[i], cols.plain[i])
        return places

    async def _marks(self, newest: float, readers: bool) -> tuple[dict[str, list[str]], set[str], set[str]]:
        """Every mark (key -> packs), the keys of those to sweep now, and the keys of malformed ones."""
        marks: dict[str, list[str]] = {}
        swept: set[str] = set()
        malformed: set[str] = set()
        for key, info in sorted((await self.repo.storage.info(GARBAGE)).items()):
            try:
                marks[key] = read_mark(await self.repo.storage.get(key, max_bytes=MAX_MARK_BYTES))
            except ObjectNotFound:
                continue
            except RepositoryError as e:
                self.report.notes.append(f"{key}: {e}; deleted" if not self.dry_run else f"{key}: {e}")
                malformed.add(key)
                continue
            if info.modified <= newest and not readers:
                swept.add(key)
        if readers and marks:
            self.report.notes.append(
                f"{self.report.readers} restores or checks are running: no mark is swept until they have ended"
            )
        return marks, swept, malformed

    def _to_repack(
        self,
        live: dict[str, dict[bytes, Place]],
        content: dict[str, int],
        infos: dict[str, ObjectInfo],
        marked: set[str],
        newest: float,
    ) -> list[str]:
        """The needed packs to repack, most unused first, until the unused bytes of the packs kept are at
        most ``max_unused`` of their used bytes. Only packs older than ``newest`` and not marked."""
        if self.max_unused is None:
            return []
        used = {p: sum(c.stored for c in chunks.values()) for p, chunks in live.items() if content.get(p, 0) > 0}
        unused = {p: max(0, content[p] - u) for p, u in used.items()}
        total_used = sum(used.values())
        total_unused = sum(unused.values())
        candidates = sorted(
            (p for p in used if unused[p] and p not in marked and infos[p].modified <= newest),
            key=lambda p: (used[p] / content[p], p),
        )
        chosen: list[str] = []
        for p in candidates:
            if total_unused <= self.max_unused * total_used:
                break
            chosen.append(p)
            total_unused -= unused[p]
        return chosen

    async def _repack(self, chosen: list[str], live: dict[str, dict[bytes, Place]]) -> None:
        """Copy the live chunks of ``chosen`` (each verified) into new packs and index them; their places
        become the chunks' homes. Dry run: count what would be copied. A pack with a chunk that does not
        verify is left as it is (noted): its other chunks may have been copied too, which costs space only.
        Holds one old pack and one new pack in memory at a time."""
        repo, report = self.repo, self.report
        copied: set[bytes] = set()
        writer = _PackWriter(repo, self.pack_bytes)
        failed: list[str] = []
        for name in chosen:
            chunks = sorted((c for c in live[name].items() if c[0] not in copied), key=lambda c: c[1].offset)
            report.repacked_packs += 1
            report.repacked_bytes += sum(p.stored for _, p in chunks)
            if self.dry_run:
                continue
            data = await repo.storage.get(pack_key(name), max_bytes=max(0, self.sizes[name]))
            verdicts = await offload(partial(_verify, repo, data, chunks))
            if any(verdicts):
                bad = next(v for v in verdicts if v)
                failed.append(name)
                report.repacked_bytes -= sum(p.stored for _, p in chunks)
                report.notes.append(
                    f"pack {name} was not repacked: a chunk in it does not verify ({bad}); `ferry repo check "
                    "--read-data` tells which snapshots need it"
                )
                continue
            for cid, place in chunks:
                frame = data[place.offset : place.offset + place.stored]
                await writer.add(cid, frame, place.plain)
                copied.add(cid)
        if self.dry_run:
            return
        await writer.flush()
        if writer.records:
            # Before any mark: a reader that sees the mark finds the new places.
            await write_index(repo, writer.packs, [rec for _, rec in writer.records], {})
        for name in failed:
            chosen.remove(name)
            report.repacked_packs -= 1
        report.written_packs = len(writer.packs)
        report.written_bytes = writer.written
        for _, rec in writer.records:
            pack = writer.packs[rec.pack]
            place = Place(pack, rec.offset, rec.stored, rec.plain)
            self.homes[rec.id] = place
            live.setdefault(pack, {})[rec.id] = place

    async def _compact(
        self, objects: list[IndexObject], unreadable: list[tuple[str, str]], remaining: set[str], marked: set[str]
    ) -> int:
        """Replace the index objects read by one: for each chunk its chosen home if it has one, else one
        place in a pack that remains (an unmarked one if there is); the summaries of snapshots that exist.
        Index objects written meanwhile are left alone. Returns how many index objects there are now."""
        repo = self.repo
        ids = set(await repo.snapshot_ids())
        best: dict[bytes, tuple[bool, Place]] = {}
        summaries: dict[str, dict[str, object]] = {}
        for obj in objects:
            summaries.update({k: v for k, v in obj.snapshots.items() if k in ids})
            for rec in obj.records:
                pack = obj.packs[rec.pack]
                if pack not in remaining or rec.id in self.homes:
                    continue
                rank = (pack in marked, Place(pack, rec.offset, rec.stored, rec.plain))
                if rec.id not in best or rank < best[rec.id]:
                    best[rec.id] = rank
        index = Index()
        for cid, (_, place) in best.items():
            index.add(ChunkRecord(cid, 0, place.offset, place.stored, place.plain), place.pack)
        for cid, place in self.homes.items():
            index.add(ChunkRecord(cid, 0, place.offset, place.stored, place.plain), place.pack)
        new = await write_index(repo, index.packs, list(index.chunks.values()), summaries)
        replaced = {obj.key for obj in objects} | {key for key, _ in unreadable}
        for key in await repo.storage.list("index/"):
            if key in replaced and key != new:
                await repo.storage.delete(key)
        return len(await repo.storage.list("index/"))


async def _unindexed(repo: Repository, objects: list[IndexObject], sizes: dict[str, int]) -> list[IndexObject]:
    """The chunks of packs no index object names, from their trailers (an interrupted snapshot's packs, or
    any whose index object was lost): one object each, with no key (``_compact`` writes them into the
    index). A lost index object must not make prune take the packs it described for unused."""
    named = {p for obj in objects for p in obj.packs}
    found: list[IndexObject] = []
    limit = asyncio.Semaphore(8)

    async def one(name: str) -> None:
        async with limit:
            records = await read_trailer(repo, name, sizes[name])
        if records:
            found.append(IndexObject("", [name], records, {}))

    async with task_group() as tg:
        for name, size in sizes.items():
            if size > 0 and name not in named:
                tg.create_task(one(name))
    return sorted(found, key=lambda o: o.packs[0])


def _content(
    objects: list[IndexObject], sizes: dict[str, int], referenced: dict[tuple[str, int], tuple[bytes, int, int]]
) -> dict[str, int]:
    """The bytes of chunks each existing pack holds (its size less its trailer): for a pack the index (or
    its trailer) describes, the places the index and the manifests know in it, each once; for any other
    (a format 1 pack, which has no trailer), its size."""
    places = {key: stored for key, (_, stored, _) in referenced.items()}
    described = {p for obj in objects for p in obj.packs}
    for obj in objects:
        for rec in obj.records:
            places.setdefault((obj.packs[rec.pack], rec.offset), rec.stored)
    content: dict[str, int] = {}
    for (pack, _), stored in places.items():
        if pack in described:
            content[pack] = content.get(pack, 0) + stored
    return {p: min(size, content.get(p, size)) for p, size in sizes.items() if size > 0}


def _choose(
    objects: list[IndexObject],
    lost: set[bytes],
    sizes: dict[str, int],
    marked: set[str],
    needed: set[str],
    referenced: dict[tuple[str, int], tuple[bytes, int, int]],
) -> dict[bytes, Place]:
    """For each chunk of ``lost`` (live, its manifest's place gone or marked) the place to read it from:
    from the index, in an existing unmarked pack, preferring packs already ``needed`` (then the lowest
    pack name and offset, so the choice is the same every run); failing that, the manifest's own place in a
    marked pack that still holds it (that pack stays). Chunks found nowhere are left out (damage, which
    ``repo check`` reports)."""
    best: dict[bytes, tuple[int, Place]] = {}
    for obj in objects:
        for rec in obj.records:
            if rec.id not in lost:
                continue
            pack = obj.packs[rec.pack]
            if sizes.get(pack, -1) < rec.offset + rec.stored:
                continue
            rank = 2 if pack in marked else 0 if pack in needed else 1
            candidate = (rank, Place(pack, rec.offset, rec.stored, rec.plain))
            if rec.id not in best or candidate < best[rec.id]:
                best[rec.id] = candidate
    for (pack, offset), (cid, stored, plain) in referenced.items():
        if cid in lost and sizes.get(pack, -1) >= offset + stored:
            candidate = (2, Place(pack, offset, stored, plain))
            if cid not in best or candidate < best[cid]:
                best[cid] = candidate
    return {cid: place for cid, (_, place) in best.items()}


def _verify(repo: Repository, data: bytes, chunks: list[tuple[bytes, Place]], stop: object) -> list[str]:
    """For each chunk, "" if its bytes in ``data`` decode to it (as a restore checks them), else why not."""
    view = memoryview(data)
    out: list[str] = []
    for cid, place in chunks:
        result = repo.codec.decode(
            view[place.offset : place.offset + place.stored], place.plain, cid, bytearray(place.plain)
        )
        out.append(result if isinstance(result, str) else "")
    return out


class _PackWriter:
    """Packs as a snapshot writer makes them (frames, then the trailer), for a repack."""

    def __init__(self, repo: Repository, limit: int) -> None:
        self.repo = repo
        self.limit = limit
        self.buf = bytearray()
        self.open: list[tuple[bytes, int, int, int]] = []
        self.packs: list[str] = []
        self.records: list[tuple[bytes, ChunkRecord]] = []
        """(ID, record with pack as an index into ``packs``)."""
        self.written = 0

    async def add(self, cid: bytes, frame: bytes, plain: int) -> None:
        self.open.append((cid, len(self.buf), len(frame), plain))
        self.buf += frame
        if len(self.buf) >= self.limit:
            await self.flush()

    async def flush(self) -> None:
        if not self.open:
            return
        data = bytes(self.buf) + pack_trailer(self.open, self.repo.master)
        name = blake3.blake3(data).hexdigest()
        await self.repo.write_pack(name, data)
        at = len(self.packs)
        self.packs.append(name)
        self.records.extend((cid, ChunkRecord(cid, at, off, stored, plain)) for cid, off, stored, plain in self.open)
        self.written += len(data)
        self.buf, self.open = bytearray(), []


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
    marked = await marked_packs(repo)  # before the listing, as readers do (agent.repo.locate)
    sizes = await repo.pack_sizes()
    index = Index()
    later: list[tuple[ChunkRecord, str]] = []
    """Places in marked packs: indexed only for chunks found nowhere else (a repack's old packs)."""
    for snapshot_id in await repo.snapshot_ids():
        try:
            manifest = await repo.read_manifest(snapshot_id)
        except FerryError as e:
            report.unreadable.append(f"{snapshot_id}: {e}")
            continue
        for r in manifest.chunks:
            pack = manifest.packs[r.pack]
            if r.offset + r.stored <= sizes.get(pack, -1):
                if pack in marked:
                    later.append((r, pack))
                else:
                    index.add(r, pack)
        index.snapshots[snapshot_id] = summary_of(manifest)
    limit = asyncio.Semaphore(8)
    trailers: dict[str, list[ChunkRecord]] = {}

    async def trailer(name: str) -> None:
        async with limit:
            records = await read_trailer(repo, name, sizes[name])
        if records:
            trailers[name] = records

    async with task_group() as tg:
        for name, size in sizes.items():
            if size >= 0:
                tg.create_task(trailer(name))
    for name in sorted(trailers, key=lambda n: (n in marked, n)):
        if name in marked:
            for r, pack in later:
                index.add(r, pack)
            later = []
        index.add_all(trailers[name], [name])
    for r, pack in later:
        index.add(r, pack)
    new = await write_index(repo, index.packs, list(index.chunks.values()), index.snapshots)
    for key in old:
        if key != new:
            await repo.storage.delete(key)
    report.index_objects = len(old)
    report.chunks = len(index.chunks)
    report.packs = len(index.packs)
    report.snapshots = len(index.snapshots)
    return report
