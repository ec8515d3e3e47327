"""Snapshot creation: read → cut → hash → deduplicate → compress → pack → upload → manifest.

Reading, hashing and compressing run in a worker pool, at most ``2 × threads`` chunks in flight, and are
consumed in source order (so a restore finds neighbouring chunks next to each other in packs). Sealed
packs upload concurrently, at most ``uploads_in_flight`` at once; adding to a new pack waits for a slot,
which bounds memory. The manifest is written only after every pack is stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import blake3
from pyfastcdc import FastCDC

from agent.errors import FerryError, SourceError
from agent.repo.chunks import chunk_id, encode_chunk, is_zero
from agent.repo.format import (
    HOLE,
    ChunkRecord,
    ChunkTable,
    Entry,
    Manifest,
    VolumeMode,
    encode_manifest,
)
from agent.repo.repository import Repository
from agent.repo.sources import open_block_source, scan_tree
from agent.settings import SnapshotSettings
from agent.taskgroups import task_group
from agent.threads import WorkerPool

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes read so far, total bytes)."""


@dataclass(frozen=True)
class SnapshotResult:
    snapshot_id: str
    mode: VolumeMode
    size: int
    """Logical bytes (block: the volume; filesystem: all regular files)."""
    chunks: int
    """Distinct chunks the snapshot refers to."""
    new_chunks: int
    new_stored_bytes: int
    """Compressed bytes uploaded in new packs."""
    reused_chunks: int
    """Chunks already in the repository (deduplicated across snapshots)."""
    hole_bytes: int
    packs: int
    entries: int
    skipped: tuple[str, ...]
    seconds: float


@dataclass(slots=True)
class _Piece:
    """What a worker made of one piece of the source."""

    length: int
    id: bytes = b""
    frame: bytes | None = None
    """Set when the chunk was new to the worker: its stored frame."""


class _PackRef:
    """A pack's name, known once it is sealed (names are the BLAKE3 of the pack)."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name


class _Table:
    """The chunk table being built, and the repository's existing chunks to deduplicate against."""

    def __init__(self, known: dict[bytes, ChunkRecord], known_packs: list[str]) -> None:
        self.index: dict[bytes, int] = {}
        self.records: list[tuple[bytes, _PackRef, int, int, int]] = []
        self._known = known
        self._known_refs = [_PackRef(name) for name in known_packs]
        self.reused = 0
        self.new = 0
        self.new_stored = 0

    def has(self, cid: bytes) -> bool:
        """Thread-safe membership test used by workers to skip compressing duplicates."""
        return cid in self.index or cid in self._known

    def add(self, cid: bytes, ref: _PackRef, offset: int, stored: int, plain: int) -> int:
        self.index[cid] = len(self.records)
        self.records.append((cid, ref, offset, stored, plain))
        return len(self.records) - 1

    async def resolve(self, piece: _Piece, packer: _Packer) -> int:
        """The table index of a piece's chunk, storing it if it is new."""
        found = self.index.get(piece.id)
        if found is not None:
            return found
        old = self._known.get(piece.id)
        if old is not None:
            self.reused += 1
            return self.add(piece.id, self._known_refs[old.pack], old.offset, old.stored, old.plain)
        if piece.frame is None:  # pragma: no cover - a worker only skips chunks the table has
            raise FerryError(f"chunk {piece.id.hex()} was skipped but is not stored")
        ref, offset = await packer.add(piece.frame)
        self.new += 1
        self.new_stored += len(piece.frame)
        return self.add(piece.id, ref, offset, len(piece.frame), piece.length)

    def finish(self) -> tuple[tuple[str, ...], ChunkTable]:
        packs: dict[str, int] = {}
        records = []
        for cid, ref, offset, stored, plain in self.records:
            pack = packs.setdefault(ref.name, len(packs))
            records.append(ChunkRecord(cid, pack, offset, stored, plain))
        return tuple(packs), ChunkTable.from_records(records)


class _Packer:
    """Appends frames to the open pack; seals it at ``pack_bytes`` and uploads it in the task group."""

    def __init__(self, repo: Repository, settings: SnapshotSettings, tg: asyncio.TaskGroup, pool: WorkerPool):
        self._repo = repo
        self._limit = settings.pack_bytes
        self._slots = asyncio.Semaphore(settings.uploads_in_flight)
        self._tg = tg
        self._pool = pool
        self._buf = bytearray()
        self._ref = _PackRef()
        self.packs = 0

    async def add(self, frame: bytes) -> tuple[_PackRef, int]:
        ref, offset = self._ref, len(self._buf)
        self._buf += frame
        if len(self._buf) >= self._limit:
            await self.seal()
        return ref, offset

    async def seal(self) -> None:
        if not self._buf:
            return
        data, ref = bytes(self._buf), self._ref
        self._buf, self._ref = bytearray(), _PackRef()
        await self._slots.acquire()
        self.packs += 1
        self._tg.create_task(self._upload(ref, data), name=f"upload pack {self.packs}")

    async def _upload(self, ref: _PackRef, data: bytes) -> None:
        try:
            name = await self._pool.run(lambda: blake3.blake3(data).hexdigest())
            await self._repo.write_pack(name, data)
            ref.name = name
        finally:
            self._slots.release()


async def known_chunks(repo: Repository) -> tuple[dict[bytes, ChunkRecord], list[str]]:
    """Every chunk the repository's snapshots refer to, for deduplication (pack as an index into the
    returned list of pack names). Unreadable manifests are skipped with a warning."""
    ids = await repo.snapshot_ids()
    limit = asyncio.Semaphore(8)
    known: dict[bytes, ChunkRecord] = {}
    pack_index: dict[str, int] = {}

    async def load(sid: str) -> None:
        async with limit:
            try:
                manifest = await repo.read_manifest(sid)
            except FerryError as e:
                log.warning("not deduplicating against snapshot %s: %s", sid, e)
                return
        for rec in manifest.chunks:
            if rec.id not in known:
                pack = pack_index.setdefault(manifest.packs[rec.pack], len(pack_index))
                known[rec.id] = rec._replace(pack=pack)

    async with task_group() as tg:
        for sid in ids:
            tg.create_task(load(sid))
    return known, list(pack_index)


def _piece(data: bytes, table: _Table, level: int) -> _Piece:
    if is_zero(data):
        return _Piece(len(data))
    cid = chunk_id(data)
    if table.has(cid):
        return _Piece(len(data), cid)
    return _Piece(len(data), cid, encode_chunk(data, level))


def _read_block(fd: int, offset: int, length: int, table: _Table, level: int) -> _Piece:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise SourceError(f"the source ended at byte {offset + len(data)} while reading; it shrank during the snapshot")
    return _piece(data, table, level)


def _read_file(path: str, offset: int, length: int, table: _Table, level: int) -> _Piece:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
    except OSError as e:
        raise SourceError(f"cannot read {path!r}: {e.strerror}") from e
    return _piece(data, table, level)


def _cut_file(path: str, settings: SnapshotSettings) -> list[tuple[int, int]]:
    cdc = FastCDC(settings.cdc_avg_bytes, min_size=settings.cdc_min_bytes, max_size=settings.cdc_max_bytes)
    try:
        return [(c.offset, c.length) for c in cdc.cut_file(path)]
    except OSError as e:
        raise SourceError(f"cannot read {path!r}: {e.strerror}") from e


def _source_info(source: str) -> dict[str, str]:
    return {"path": os.path.abspath(source), "host": socket.gethostname()}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def create_snapshot(
    repo: Repository, source: str, settings: SnapshotSettings, progress: Progress | None = None
) -> SnapshotResult:
    """Snapshot a directory (filesystem mode) or a block device/image file (block mode)."""
    started = asyncio.get_running_loop().time()
    known, known_packs = await known_chunks(repo)
    table = _Table(known, known_packs)
    with WorkerPool(settings.worker_threads, "ferry-snapshot") as pool:
        if await pool.run(os.path.isdir, source):
            manifest, entries, skipped, holes, packs = await _snapshot_tree(
                repo, source, settings, table, pool, progress
            )
        else:
            manifest, entries, skipped, holes, packs = await _snapshot_block(
                repo, source, settings, table, pool, progress
            )
        stored = await pool.run(encode_manifest, manifest)
    snapshot_id = await repo.write_manifest(stored)
    result = SnapshotResult(
        snapshot_id=snapshot_id,
        mode=manifest.mode,
        size=manifest.size,
        chunks=len(manifest.chunks),
        new_chunks=table.new,
        new_stored_bytes=table.new_stored,
        reused_chunks=table.reused,
        hole_bytes=holes,
        packs=packs,
        entries=entries,
        skipped=tuple(skipped),
        seconds=asyncio.get_running_loop().time() - started,
    )
    log.info(
        "snapshot %s created: %s, %d bytes, %d new chunks, %d reused",
        snapshot_id,
        result.mode,
        result.size,
        result.new_chunks,
        result.reused_chunks,
    )
    return result


class _Stream:
    """Pieces made in the pool, at most ``2 × threads`` in flight, taken in the order they were started.

    Each taken piece is turned into a value in the manifest's own encoding, a chunk table index (the
    chunk stored first if new) or ``-length`` for a hole, and handed to ``place(tag, value)``.
    """

    def __init__(
        self,
        tg: asyncio.TaskGroup,
        pool: WorkerPool,
        table: _Table,
        packer: _Packer,
        total: int,
        progress: Progress | None,
        place: Callable[[int, int], None],
    ) -> None:
        self._tg = tg
        self._pool = pool
        self._table = table
        self._packer = packer
        self._total = total
        self._progress = progress
        self._place = place
        self._tasks: deque[tuple[int, asyncio.Task[_Piece]]] = deque()
        self.done = 0
        self.holes = 0

    @property
    def packs(self) -> int:
        return self._packer.packs

    async def add(self, tag: int, fn: Callable[..., _Piece], *args: Any) -> None:
        """Start making a piece in the pool; first take the oldest one if the window is full."""
        if len(self._tasks) >= 2 * self._pool.threads:
            await self._take()
        self._tasks.append((tag, self._tg.create_task(self._pool.run(fn, *args))))

    async def drain(self) -> None:
        while self._tasks:
            await self._take()
        await self._packer.seal()

    async def _take(self) -> None:
        tag, task = self._tasks.popleft()
        piece = await task
        if piece.id:
            value = await self._table.resolve(piece, self._packer)
        else:
            value = -piece.length
            self.holes += piece.length
        self.done += piece.length
        if self._progress:
            self._progress(self.done, self._total)
        self._place(tag, value)


@asynccontextmanager
async def _stream(
    repo: Repository,
    settings: SnapshotSettings,
    table: _Table,
    pool: WorkerPool,
    total: int,
    progress: Progress | None,
    place: Callable[[int, int], None],
) -> AsyncIterator[_Stream]:
    """A stream whose pieces are all taken, and whose packs are all stored, when the block exits."""
    async with task_group() as tg:
        stream = _Stream(tg, pool, table, _Packer(repo, settings, tg, pool), total, progress, place)
        yield stream
        await stream.drain()


async def _snapshot_block(
    repo: Repository,
    source: str,
    settings: SnapshotSettings,
    table: _Table,
    pool: WorkerPool,
    progress: Progress | None,
) -> tuple[Manifest, int, list[str], int, int]:
    fd, size = await pool.run(open_block_source, source)
    cs = settings.block_chunk_bytes
    level = settings.compression_level
    slots = array("q", [HOLE]) * (-(-size // cs))

    def place(slot: int, value: int) -> None:
        slots[slot] = value if value >= 0 else HOLE

    try:
        async with _stream(repo, settings, table, pool, size, progress, place) as stream:
            for slot in range(len(slots)):
                offset = slot * cs
                await stream.add(slot, _read_block, fd, offset, min(cs, size - offset), table, level)
    finally:
        os.close(fd)
    packs, chunks = table.finish()
    manifest = Manifest(
        mode="block",
        size=size,
        created=_now(),
        packs=packs,
        chunks=chunks,
        chunk_size=cs,
        slots=slots,
        source=_source_info(source),
    )
    return manifest, 0, [], stream.holes, stream.packs


async def _snapshot_tree(
    repo: Repository,
    source: str,
    settings: SnapshotSettings,
    table: _Table,
    pool: WorkerPool,
    progress: Progress | None,
) -> tuple[Manifest, int, list[str], int, int]:
    tree = await pool.run(scan_tree, source)
    level = settings.compression_level
    total = sum(e.size for e in tree.entries if e.type == "file")
    contents: dict[int, list[int]] = {i: [] for i, e in enumerate(tree.entries) if e.type == "file"}

    def place(index: int, value: int) -> None:
        contents[index].append(value)

    async with _stream(repo, settings, table, pool, total, progress, place) as stream:
        for index, entry in enumerate(tree.entries):
            if entry.type != "file" or entry.size == 0:
                continue
            path = f"{source}/{entry.path}"
            if entry.size <= settings.cdc_min_bytes:
                cuts = [(0, entry.size)]
            else:
                cuts = await pool.run(_cut_file, path, settings)
            for offset, length in cuts:
                await stream.add(index, _read_file, path, offset, length, table, level)

    entries: list[Entry] = []
    size = 0
    for index, e in enumerate(tree.entries):
        if e.type == "file":
            content = tuple(contents[index])
            length = sum(-c if c < 0 else table.records[c][4] for c in content)
            size += length
            entries.append(Entry(e.path, "file", e.meta, size=length, content=content))
        else:
            entries.append(Entry(e.path, e.type, e.meta, target=e.target))
    packs, chunks = table.finish()
    manifest = Manifest(
        mode="filesystem",
        size=size,
        created=_now(),
        packs=packs,
        chunks=chunks,
        root=tree.root,
        entries=tuple(entries),
        source=_source_info(source),
    )
    if tree.skipped:
        log.warning("skipped %d special files (sockets, FIFOs, devices), e.g. %s", len(tree.skipped), tree.skipped[0])
    return manifest, len(entries), tree.skipped, stream.holes, stream.packs
