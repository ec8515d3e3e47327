"""Checking a repository (``ferry repo check``): its structure always, every chunk's data on request.

Structure: every manifest is read (fetched, hashed against its ID, parsed with every field checked), and
every chunk it refers to must lie inside a pack that exists (one listing of the packs' sizes), where the
manifest places it or, if a prune moved it, where the index does (``agent.repo.locate``); in format 2,
every index object must read (damage otherwise), and chunks it places in packs that are gone are noted. Packs no
readable snapshot refers to are reported, not as damage: interrupted or forgotten snapshots leave them.

``read_data``: every chunk a snapshot refers to is read once and verified as a restore verifies it
(decompressed to its length, BLAKE3 against its ID). A chunk that fails is read again before it is
called damaged: the same failure twice is damage in storage, a pass on the second read means the first
was corrupted in transit (reported apart, as the restore's rule has it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.aio.threads import offload
from agent.errors import ObjectNotFound, ObjectTruncated, RepositoryError, StorageError
from agent.repo.index import read_index
from agent.repo.locate import Locator
from agent.repo.locks import reader_lock
from agent.repo.repository import Repository, pack_key

Progress = Callable[[int, int], None]
"""Called with (bytes read so far, bytes to read)."""
READS_IN_FLIGHT = 4


@dataclass(frozen=True)
class Damage:
    what: str
    """``snapshot <id>`` or ``pack <name>``."""
    problem: str

    def __str__(self) -> str:
        return f"{self.what}: {self.problem}"


@dataclass
class CheckReport:
    snapshots: int = 0
    """Snapshots whose manifest was read and found sound."""
    packs: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    damage: list[Damage] = field(default_factory=list)
    unreferenced_packs: list[str] = field(default_factory=list)
    unreferenced_bytes: int = 0
    transit_faults: int = 0
    """Reads whose bytes were wrong once and right when read again (the network path, not the store)."""
    notes: list[str] = field(default_factory=list)
    """What is not as it should be but loses nothing (the index naming packs that are gone)."""

    @property
    def ok(self) -> bool:
        return not self.damage


def _names(snapshots: set[str]) -> str:
    ids = sorted(snapshots)
    return ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


async def check_repository(
    repo: Repository, *, read_data: bool = False, progress: Progress | None = None
) -> CheckReport:
    """Check ``repo`` (see the module docstring). Raises only storage errors that stop the check itself
    (the listing fails); what is wrong with objects goes into the report."""
    async with reader_lock(repo):  # prune sweeps nothing while the check runs
        return await _check(repo, read_data, progress)


async def _check(repo: Repository, read_data: bool, progress: Progress | None) -> CheckReport:
    report = CheckReport()
    locator = await Locator.open(repo)
    sizes = locator.sizes
    report.packs = len(sizes)
    users: dict[str, set[str]] = {}
    reach: dict[str, int] = {}
    chunks: dict[tuple[str, int], tuple[int, int, bytes]] = {}
    for snapshot_id in await repo.snapshot_ids():
        try:
            manifest = await repo.read_manifest(snapshot_id)
        except (RepositoryError, StorageError) as e:
            report.damage.append(Damage(f"snapshot {snapshot_id}", str(e)))
            continue
        report.snapshots += 1
        manifest = await locator.relocate(manifest)  # chunks a prune moved are read where it put them
        for rec in manifest.chunks:
            pack = manifest.packs[rec.pack]
            users.setdefault(pack, set()).add(snapshot_id)
            reach[pack] = max(reach.get(pack, 0), rec.offset + rec.stored)
            chunks.setdefault((pack, rec.offset), (rec.stored, rec.plain, rec.id))
    for pack in sorted(users):
        size = sizes.get(pack)
        if size is None:
            report.damage.append(Damage(f"pack {pack}", f"missing; snapshots {_names(users[pack])} refer to it"))
        elif size < 0:
            report.damage.append(Damage(f"pack {pack}", "not an object (a directory?) where the pack should be"))
        elif reach[pack] > size:
            report.damage.append(
                Damage(
                    f"pack {pack}",
                    f"{size} bytes, but snapshots {_names(users[pack])} have chunks in it up to byte {reach[pack]}: "
                    "it was cut short",
                )
            )
    if repo.config is not None:
        await _check_index(repo, sizes, report)
    for pack, size in sorted(sizes.items()):
        if pack not in users:
            report.unreferenced_packs.append(pack)
            report.unreferenced_bytes += max(0, size)
    if read_data:
        readable = {k: v for k, v in chunks.items() if k[0] in sizes and reach[k[0]] <= sizes[k[0]]}
        await _read_data(repo, readable, report, progress)
    return report


async def _check_index(repo: Repository, sizes: dict[str, int], report: CheckReport) -> None:
    """Every index object reads (and authenticates), and every chunk it names lies in a pack that exists."""
    index = await read_index(repo)
    for key, why in index.unreadable:
        report.damage.append(Damage(f"index object {key.rsplit('/', 1)[-1][:16]}", f"{why}; {_REPAIR}"))
    beyond: dict[str, int] = {}
    named = {d.what for d in report.damage}
    for rec in index.chunks.values():
        pack = index.packs[rec.pack]
        if rec.offset + rec.stored > sizes.get(pack, -1) and f"pack {pack}" not in named:
            beyond[pack] = beyond.get(pack, 0) + 1
    for pack, count in sorted(beyond.items()):
        # No snapshot refers to these chunks there (that would be damage, reported above): the index is only
        # out of date (a pack lost or removed by hand). Writers check packs before reusing anything.
        state = "missing" if pack not in sizes else "too short"
        report.notes.append(
            f"the index places {count} chunks in pack {pack}, which is {state} (no snapshot refers to them there); "
            f"{_REPAIR}"
        )


_REPAIR = "`ferry repo repair-index` rebuilds the index from the packs and manifests"


async def _read_data(
    repo: Repository,
    chunks: dict[tuple[str, int], tuple[int, int, bytes]],
    report: CheckReport,
    progress: Progress | None,
) -> None:
    total = sum(stored for stored, _, _ in chunks.values())
    gate = asyncio.Semaphore(READS_IN_FLIGHT)
    lock = asyncio.Lock()

    async def one(pack: str, offset: int, stored: int, plain: int, cid: bytes) -> None:
        try:
            first = await _verify(repo, pack, offset, stored, plain, cid)
            problem = first
            if first:
                problem = await _verify(repo, pack, offset, stored, plain, cid)
        finally:
            gate.release()
        async with lock:
            report.chunks_read += 1
            report.bytes_read += stored
            if first and not problem:
                report.transit_faults += 1
            if problem:
                report.damage.append(Damage(f"pack {pack}", f"chunk {cid.hex()[:16]} at byte {offset}: {problem}"))
            if progress is not None:
                progress(report.bytes_read, total)

    if progress is not None:
        progress(0, total)
    async with asyncio.TaskGroup() as tg:  # at most READS_IN_FLIGHT tasks exist at a time
        for (pack, offset), (stored, plain, cid) in sorted(chunks.items()):
            await gate.acquire()
            tg.create_task(one(pack, offset, stored, plain, cid))


async def _verify(repo: Repository, pack: str, offset: int, stored: int, plain: int, cid: bytes) -> str:
    """ "" when the chunk reads back right, else what is wrong with it."""
    try:
        frame = await repo.storage.get_range(pack_key(pack), offset, stored)
    except (ObjectNotFound, ObjectTruncated) as e:
        return str(e)

    def decode(_stop: object) -> str:
        result = repo.codec.decode(memoryview(frame), plain, cid, bytearray(plain))
        return result if isinstance(result, str) else ""

    return await offload(decode)
