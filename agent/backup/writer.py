"""Snapshot creation: read → cut → hash → deduplicate → compress → pack → upload → manifest.

Reading, hashing and compressing run in a worker pool, a bounded window of items in flight (``_Stream``),
and are consumed in source order (so a restore finds neighbouring chunks next to each other in packs). Sealed
packs upload concurrently, at most ``uploads_in_flight`` at once; adding to a new pack waits for a slot,
which bounds memory. The manifest is written only after every pack is stored.

A tree snapshot records exactly what it read: each regular file is opened once and read front to back
once (``agent.backup.sources``), and its entry gets the metadata of the file it read. Entries that vanish
or cannot be read are left out and listed in ``SnapshotResult.skipped``; the snapshot is still written.
A hardlink is stored as a link only to a file that was read as the same inode; otherwise it is read as
a file of its own. Small files (at most ``cdc_max_bytes``) go to the pool in batches (``BATCH_FILES``,
``BATCH_BYTES``): one task and one thread hop for up to 64 files, not one each.

Memory. Nothing a snapshot holds grows with the bytes of the volume, only with its number of chunks and
files, which the manifest needs (``SnapshotSettings`` fields in brackets, defaults after them)::

    peak RSS ≈ base                                     ~55 MiB (interpreter, libraries; ~70 with the S3 client)
             + (uploads_in_flight + 1) × (pack_bytes + largest chunk)          (3 + 1) × (32 + 4) = 144 MiB
             + window: 2 × max(2 × threads × chunk, WINDOW_BYTES)              2 × max(16, 16) = 32 MiB
             + file reading: 2 × (sources.WINDOW_BYTES + 2 × cdc_max_bytes)   2 × (8 + 8) = 32 MiB
             + threads × zstd context                                          a few MiB each
             + ~330 bytes per distinct chunk (the chunk table; ~650 while the manifest is encoded)
             + ~1.4 KiB per entry of a tree (its scanned metadata, its state, its manifest entry)
             + the repository's existing chunks (``known_chunks``, ~300 bytes per chunk it holds)

- Packs: the open pack, and up to ``uploads_in_flight`` sealed ones uploading (each held until stored).
  A pack is copied out of the open one only once it has an upload slot, and the S3 upload does not copy
  it again (``agent.storage.s3``).
- The window (``_Stream``): at most ``WINDOW_ITEMS`` items, and beyond ``2 × threads`` items at most
  ``WINDOW_BYTES`` of source data, each item holding what was read and its compressed frame.
- Reading a file (``agent.backup.sources.FileReader``): an 8 MiB read window and the data not cut yet
  (less than ``2 × cdc_max_bytes``); chunks handed on are views into it, so the previous window stays
  alive until its last chunk is packed.
- glibc's malloc: buffers of 1-36 MiB, freed by one thread and allocated by another, come from the
  threads' heap arenas once its mmap threshold has risen (it does after the first large free), and the
  arenas keep them: about 65 MiB more than the live data above. A fixed 1 MiB threshold
  (``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576``) removes that and costs about 40% more CPU
  (every buffer freshly mapped and faulted in), so it is not set; set it where memory is scarcer than CPU.

So with the defaults a block volume or a large file of any size takes about 200-280 MiB plus 330 bytes per
chunk (4 MiB chunks: 85 MiB per TiB; files' ~1 MiB chunks: 330 MiB per TiB), and a tree about 1.4 KiB
per file more (1.4 GiB for a million files). ``tests/test_snapshot_memory.py`` checks the window's and the
packs' bounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import blake3

from agent.aio.taskgroups import task_group
from agent.aio.threads import WorkerPool
from agent.backup.scan import ScannedEntry, ScannedTree, clean_xattrs, open_root, reason, scan_tree
from agent.backup.sources import FileReader, OpenedFile, Piece, open_block_source, open_file, with_xattrs
from agent.errors import FerryError, RepositoryError, SourceError
from agent.fs.names import Problem
from agent.repo.chunks import ChunkCodec, is_zero
from agent.repo.format import (
    ChunkRecord,
    ChunkTable,
    Entry,
    Manifest,
    Meta,
    VolumeMode,
    snapshot_id_of,
)
from agent.repo.index import Index, pack_trailer, read_index, read_trailer, write_index
from agent.repo.locks import marked_packs, writer_lock
from agent.repo.repository import Repository, summary_of
from agent.settings import SnapshotSettings

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
    skipped: tuple[Problem, ...]
    """Entries (or attributes) that could not be read and are not in the snapshot: it is incomplete."""
    notes: tuple[Problem, ...]
    """Entries not stored by design (sockets) and files that changed while they were read."""
    seconds: float


@dataclass(slots=True)
class _Piece:
    """What a worker made of one piece of the source."""

    length: int
    id: bytes = b""
    frame: bytes | None = None
    """Set when the chunk was new to the worker: its stored frame."""


class _PackRef:
    """A pack's name, known once it is sealed (names are the BLAKE3 of the pack); ``new``: stored by this
    snapshot."""

    __slots__ = ("name", "new")

    def __init__(self, name: str = "", new: bool = True) -> None:
        self.name = name
        self.new = new


class _Table:
    """The chunk table being built, and the repository's existing chunks to deduplicate against."""

    def __init__(self, known: dict[bytes, ChunkRecord], known_packs: list[str], codec: ChunkCodec) -> None:
        self.codec = codec
        self.index: dict[bytes, int] = {}
        self.records: list[tuple[bytes, _PackRef, int, int, int]] = []
        self._known = known
        self._known_refs = [_PackRef(name, new=False) for name in known_packs]
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

    def plain(self, index: int) -> int:
        return self.records[index][4]

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
        ref, offset = await packer.add(piece.frame, piece.id, piece.length)
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

    def stored(self) -> tuple[list[str], list[ChunkRecord]]:
        """The chunks this snapshot stored (not those it reused), for its index object."""
        packs: dict[str, int] = {}
        records = []
        for cid, ref, offset, stored, plain in self.records:
            if ref.new:
                records.append(ChunkRecord(cid, packs.setdefault(ref.name, len(packs)), offset, stored, plain))
        return list(packs), records


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
        self._records: list[tuple[bytes, int, int, int]] = []
        self._trailers = repo.config is not None
        """Format 2: each pack ends with the list of its chunks (``agent.repo.index``)."""
        self.packs = 0

    async def add(self, frame: bytes, cid: bytes, plain: int) -> tuple[_PackRef, int]:
        ref, offset = self._ref, len(self._buf)
        self._buf += frame
        self._records.append((cid, offset, len(frame), plain))
        if len(self._buf) >= self._limit:
            await self.seal()
        return ref, offset

    async def seal(self) -> None:
        if not self._buf:
            return
        # The slot first: a sealed pack is copied out of the open one only when it can upload, so at most
        # ``uploads_in_flight`` sealed packs and the open one are held (plus that copy, for a moment).
        await self._slots.acquire()
        if self._trailers:
            self._buf += pack_trailer(self._records, self._repo.master)
        data, ref = bytes(self._buf), self._ref
        self._buf, self._ref, self._records = bytearray(), _PackRef(), []
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
    """Every chunk the repository holds that a snapshot may reuse (pack as an index into the returned list
    of pack names): those of its index objects, those of manifests the index does not describe (format 1
    snapshots; read two at a time, each may take up to the manifest memory limit; unreadable ones are
    skipped with a warning), and those of packs no index object names, from their trailers (packs left by
    an interrupted snapshot: reused, not uploaded again).

    A chunk is reused only where its pack exists and is long enough to hold it (one listing of the packs'
    sizes): an index or manifest that names a pack that is missing, cut short or not a file (damage, or a
    manifest forged into the repository) would otherwise make every later snapshot refer to bytes that are
    not there, and such snapshots could not be restored. Those chunks are stored again instead, with a
    warning. (That the bytes in place are the chunk's is checked only when they are read: a restore
    verifies every chunk.)"""
    ids = await repo.snapshot_ids()
    sizes = await repo.pack_sizes()
    index = await read_index(repo) if repo.config is not None else Index()
    limit = asyncio.Semaphore(2)

    async def load(sid: str) -> None:
        async with limit:
            try:
                manifest = await repo.read_manifest(sid)
            except FerryError as e:
                log.warning("not deduplicating against snapshot %s: %s", sid, e)
                return
        index.add_all(manifest.chunks, manifest.packs)

    async def trailer(name: str) -> None:
        async with limit:
            records = await read_trailer(repo, name, sizes[name])
        if records:
            index.add_all(records, [name])

    async with task_group() as tg:
        for sid in ids:
            if sid not in index.snapshots:
                tg.create_task(load(sid))
    if repo.config is not None:
        indexed = index.indexed_packs()
        async with task_group() as tg:
            for name in sizes:
                if name not in indexed:
                    tg.create_task(trailer(name))
    marked = await marked_packs(repo) if repo.config is not None else set()
    lengths = [-1 if name in marked else sizes.get(name, -1) for name in index.packs]
    known = {cid: rec for cid, rec in index.chunks.items() if rec.offset + rec.stored <= lengths[rec.pack]}
    if len(known) < len(index.chunks):
        log.info(
            "%d chunks of %s lie in packs that are missing, too short or marked by a prune: they are stored "
            "again if needed, not reused (`ferry repo check` tells damage from pruning)",
            len(index.chunks) - len(known),
            repo.describe(),
        )
    return known, index.packs


async def _check_reused(repo: Repository, manifest: Manifest) -> None:
    """Every pack the manifest names is there and long enough, just before the manifest is written: a
    prune that took this writer for gone (its lock stale) may have deleted a pack it reused. Raises
    RepositoryError then (nothing is lost: the snapshot is not written, and a new one stores what it needs)."""
    if repo.config is None:
        return
    sizes = await repo.pack_sizes()
    reach: dict[int, int] = {}
    for rec in manifest.chunks:
        reach[rec.pack] = max(reach.get(rec.pack, 0), rec.offset + rec.stored)
    gone = [manifest.packs[i] for i, end in reach.items() if sizes.get(manifest.packs[i], -1) < end]
    if gone:
        raise RepositoryError(
            f"{len(gone)} packs this snapshot reuses (such as {gone[0]}) are no longer in {repo.describe()}: a prune "
            "removed them while the snapshot was being written; it was not saved, nothing else is lost: run it again"
        )


def _piece(data: bytes | memoryview, table: _Table, level: int) -> _Piece:
    if is_zero(data):
        return _Piece(len(data))
    codec = table.codec
    cid = codec.id_of(data)
    if table.has(cid):
        return _Piece(len(data), cid)
    return _Piece(len(data), cid, codec.encode(data, cid, level))


def _read_block(fd: int, offset: int, length: int, table: _Table, level: int) -> list[_Piece]:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise SourceError(f"the source ended at byte {offset + len(data)} while reading; it shrank during the snapshot")
    return [_piece(data, table, level)]


def _source_info(source: str) -> dict[str, str]:
    return {"path": os.path.abspath(source), "host": socket.gethostname()}


def _now() -> str:
    """RFC 3339 UTC with microseconds: ``latest`` tells snapshots of the same second apart."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chunked_as(repo: Repository, settings: SnapshotSettings) -> SnapshotSettings:
    """``settings`` with the file chunker of the repository's config (so every writer cuts files alike and
    deduplicates against the others)."""
    chunker = repo.config.chunker if repo.config else {}
    if not chunker:
        return settings
    return dataclasses.replace(
        settings,
        cdc_min_bytes=chunker.get("minSize", settings.cdc_min_bytes),
        cdc_avg_bytes=chunker.get("avgSize", settings.cdc_avg_bytes),
        cdc_max_bytes=chunker.get("maxSize", settings.cdc_max_bytes),
    )


async def create_snapshot(
    repo: Repository,
    source: str,
    settings: SnapshotSettings,
    progress: Progress | None = None,
    labels: Mapping[str, str] | None = None,
) -> SnapshotResult:
    """Snapshot a directory (filesystem mode) or a block device/image file (block mode). ``labels`` go
    into the manifest's ``source`` fields beside ``path`` and ``host`` (what the snapshot is of: a Velero
    backup, namespace and PVC). Raises SourceError when the source itself cannot be read, and storage
    errors; entries of a directory that cannot be read are reported in the result instead."""
    async with writer_lock(repo):  # before the index is read: a prune then sweeps nothing this may reuse
        return await _create(repo, source, _chunked_as(repo, settings), progress, labels)


async def _create(
    repo: Repository,
    source: str,
    settings: SnapshotSettings,
    progress: Progress | None,
    labels: Mapping[str, str] | None,
) -> SnapshotResult:
    started = asyncio.get_running_loop().time()
    known, known_packs = await known_chunks(repo)
    table = _Table(known, known_packs, repo.codec)
    with WorkerPool(settings.worker_threads, "ferry-snapshot") as pool:
        if await pool.run(os.path.isdir, source):
            made = await _TreeSnapshot(repo, source, settings, table, pool, progress).run()
        else:
            made = await _snapshot_block(repo, source, settings, table, pool, progress)
        if labels:
            made.manifest = dataclasses.replace(made.manifest, source=made.manifest.source | dict(labels))
        stored = await pool.run(repo.encode_manifest, made.manifest)
        snapshot_id = snapshot_id_of(stored)
        await _check_reused(repo, made.manifest)
        if repo.config is not None:  # format 2: what it stored, and what it is, for later writers and lists
            packs, records = table.stored()
            summary = await pool.run(summary_of, made.manifest)
            await write_index(repo, packs, records, {snapshot_id: summary})
    await repo.write_manifest(stored)
    manifest = made.manifest
    result = SnapshotResult(
        snapshot_id=snapshot_id,
        mode=manifest.mode,
        size=manifest.size,
        chunks=len(manifest.chunks),
        new_chunks=table.new,
        new_stored_bytes=table.new_stored,
        reused_chunks=table.reused,
        hole_bytes=made.holes,
        packs=made.packs,
        entries=len(manifest.entries),
        skipped=tuple(made.skipped),
        notes=tuple(made.notes),
        seconds=asyncio.get_running_loop().time() - started,
    )
    log.info(
        "snapshot %s created: %s, %d bytes, %d new chunks, %d reused, %d entries skipped",
        snapshot_id,
        result.mode,
        result.size,
        result.new_chunks,
        result.reused_chunks,
        len(result.skipped),
    )
    return result


@dataclass
class _Made:
    manifest: Manifest
    holes: int
    packs: int
    skipped: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)


WINDOW_ITEMS = 8
"""Most items being made at once: enough to keep every thread busy on a tree of tiny files."""
WINDOW_BYTES = 16 * 1024 * 1024
"""Most bytes of source data in the window beyond ``2 × threads`` items (a large file's chunks count
at their size, so memory stays bounded whatever the files are)."""

Then = Callable[[list[int]], None]
"""Takes the values an item's pieces became, in order: chunk indexes, and -n for n bytes of zeros."""


class _Stream:
    """Items made in the pool, a bounded window of them in flight, taken in the order they were added.

    Each taken item's pieces become values in the manifest's own encoding, a chunk table index (the chunk
    stored first if new) or ``-length`` for zeros, handed to the item's ``then``.
    """

    def __init__(
        self,
        tg: asyncio.TaskGroup,
        pool: WorkerPool,
        table: _Table,
        packer: _Packer,
        total: int,
        progress: Progress | None,
    ) -> None:
        self._tg = tg
        self._pool = pool
        self._table = table
        self._packer = packer
        self.total = total
        self._progress = progress
        self._items: deque[tuple[asyncio.Future[list[_Piece]], Then, int]] = deque()
        self._pending = 0
        """Bytes of the items in the window."""
        self.done = 0
        self.holes = 0

    @property
    def packs(self) -> int:
        return self._packer.packs

    async def add(self, work: Callable[[], list[_Piece]], then: Then, size: int) -> None:
        """Start making an item of about ``size`` bytes in the pool; first take the oldest ones while the
        window is full."""
        await self._room(size)
        self._items.append((self._tg.create_task(self._pool.run(work)), then, size))
        self._pending += size

    async def add_ready(self, pieces: list[_Piece], then: Then) -> None:
        """An item already made (holes), kept in order with the others."""
        future: asyncio.Future[list[_Piece]] = asyncio.get_running_loop().create_future()
        future.set_result(pieces)
        await self._room(0)
        self._items.append((future, then, 0))

    async def _room(self, size: int) -> None:
        """Wait until one more item fits: at most ``window_items`` items, and (beyond the first
        ``2 × threads`` items) at most ``window_bytes`` bytes being read, hashed and compressed."""
        threads = self._pool.threads
        while self._items and (
            len(self._items) >= WINDOW_ITEMS
            or (len(self._items) >= 2 * threads and self._pending + size > WINDOW_BYTES)
        ):
            await self._take()

    async def drain(self) -> None:
        while self._items:
            await self._take()

    async def _take(self) -> None:
        future, then, size = self._items.popleft()
        pieces = await future
        self._pending -= size
        values: list[int] = []
        for piece in pieces:
            if piece.id:
                values.append(await self._table.resolve(piece, self._packer))
            else:
                values.append(-piece.length)
                self.holes += piece.length
            self.done += piece.length
        if self._progress:
            self._progress(self.done, max(self.total, self.done))
        then(values)


@asynccontextmanager
async def _stream(
    repo: Repository,
    settings: SnapshotSettings,
    table: _Table,
    pool: WorkerPool,
    total: int,
    progress: Progress | None,
) -> AsyncIterator[_Stream]:
    """A stream whose items are all taken, and whose packs are all stored, when the block exits."""
    async with task_group() as tg:
        packer = _Packer(repo, settings, tg, pool)
        stream = _Stream(tg, pool, table, packer, total, progress)
        yield stream
        await stream.drain()
        await packer.seal()


def _append(values: array[int], new: list[int]) -> None:
    """Append values to a content or slot list, merging consecutive holes."""
    for v in new:
        if v < 0 and values and values[-1] < 0:
            values[-1] += v
        else:
            values.append(v)


async def _snapshot_block(
    repo: Repository,
    source: str,
    settings: SnapshotSettings,
    table: _Table,
    pool: WorkerPool,
    progress: Progress | None,
) -> _Made:
    fd, size = await pool.run(open_block_source, source)
    cs = settings.block_chunk_bytes
    level = settings.compression_level
    slots = array("q")
    count = -(-size // cs)

    def place(values: list[int]) -> None:
        _append(slots, [v if v >= 0 else -1 for v in values])

    try:
        async with _stream(repo, settings, table, pool, size, progress) as stream:
            for slot in range(count):
                offset = slot * cs
                length = min(cs, size - offset)
                await stream.add(partial(_read_block, fd, offset, length, table, level), place, length)
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
    return _Made(manifest, stream.holes, stream.packs)


@dataclass(slots=True)
class _FileState:
    """What reading one file entry produced."""

    content: array[int] = field(default_factory=lambda: array("q"))
    meta: Meta | None = None
    """The metadata of the file that was read (None until it was opened and read)."""
    key: tuple[int, int] = (0, 0)
    """(device, inode) of the file that was read."""
    skipped: str = ""
    """Why it is not in the snapshot, if it is not."""
    changed: bool = False
    notes: list[Problem] = field(default_factory=list)
    """For the result's notes (stored, but not quite as the file is now)."""
    lost: list[Problem] = field(default_factory=list)
    """Parts not stored (attributes whose names are not UTF-8): for the result's skipped list."""


def _finish_file(opened: OpenedFile, path: str, state: _FileState) -> None:
    """Record the metadata of the file just read (in a worker: fstat)."""
    state.meta = with_xattrs(opened.meta, clean_xattrs(opened.found_xattrs, path, state.lost))
    state.key = opened.key
    state.changed = opened.changed()


def _small_file(root_fd: int, path: str, settings: SnapshotSettings, table: _Table, state: _FileState) -> list[_Piece]:
    """Open, read and make the pieces of a small file: one call in a worker."""
    try:
        opened = open_file(root_fd, path)
    except OSError as e:
        state.skipped = reason(e)
        return []
    try:
        reader = FileReader(opened, settings, limit=2 * settings.cdc_max_bytes)
        pieces: list[Piece] = []
        while not reader.done:
            pieces.extend(reader.read())
        _finish_file(opened, path, state)
        if reader.cut_short:
            state.changed = True
            state.notes.append(
                Problem(path, f"it grew past {reader.length} bytes while the snapshot ran: only those are stored")
            )
    except OSError as e:
        state.skipped = f"reading it failed: {reason(e)}"
        return []
    finally:
        opened.close()
    level = settings.compression_level
    return [_Piece(p) if isinstance(p, int) else _piece(p, table, level) for p in pieces]


BATCH_FILES = 64
"""Most small files (at most ``cdc_max_bytes``, one chunk or a few) in one worker item: one thread hop
and one task for many files, instead of one each."""
BATCH_BYTES = 4 * 1024 * 1024
"""A batch of small files is handed on once it holds this many bytes."""


def _small_files(
    root_fd: int, batch: list[tuple[str, _FileState]], settings: SnapshotSettings, table: _Table, counts: list[int]
) -> list[_Piece]:
    """``_small_file`` for each file of a batch, in order: their pieces, and in ``counts`` how many each made."""
    out: list[_Piece] = []
    for path, state in batch:
        pieces = _small_file(root_fd, path, settings, table, state)
        counts.append(len(pieces))
        out.extend(pieces)
    return out


class _TreeSnapshot:
    def __init__(
        self,
        repo: Repository,
        source: str,
        settings: SnapshotSettings,
        table: _Table,
        pool: WorkerPool,
        progress: Progress | None,
    ) -> None:
        self.repo = repo
        self.source = source
        self.settings = settings
        self.table = table
        self.pool = pool
        self.progress = progress
        self.states: dict[int, _FileState] = {}
        self._batch: list[tuple[str, _FileState]] = []
        """Small files not handed to the pool yet: they go as one item (``_small_files``)."""
        self._batch_bytes = 0

    async def run(self) -> _Made:
        try:
            root_fd = await self.pool.run(open_root, self.source)
        except OSError as e:
            raise SourceError(f"cannot read {self.source!r}: {e.strerror}") from e
        try:
            tree = await self.pool.run(scan_tree, root_fd)
            return await self._store(root_fd, tree)
        finally:
            os.close(root_fd)

    async def _store(self, root_fd: int, tree: ScannedTree) -> _Made:
        total = sum(e.size for e in tree.entries if e.type == "file")
        leaders: dict[tuple[int, int], str] = {}
        async with _stream(self.repo, self.settings, self.table, self.pool, total, self.progress) as stream:
            for index, entry in enumerate(tree.entries):
                if entry.type == "file":
                    await self._read(stream, root_fd, index, entry)
            await self._flush(stream, root_fd)
            await stream.drain()
            # A hardlink is stored as a link only to a file read as the inode it shares; one whose group has
            # no such file (it vanished, or was replaced) is read as a file itself and leads the rest.
            for index, entry in enumerate(tree.entries):
                if entry.type == "file":
                    if self._leads(index, entry):
                        leaders.setdefault(entry.key, entry.path)
                elif entry.type == "hardlink" and entry.key not in leaders:
                    await self._read(stream, root_fd, index, entry)
                    await self._flush(stream, root_fd)
                    await stream.drain()
                    if self._leads(index, entry):
                        leaders[entry.key] = entry.path
        return self._manifest(tree, leaders, stream.holes, stream.packs)  # (every pack sealed by now)

    def _leads(self, index: int, entry: ScannedEntry) -> bool:
        state = self.states[index]
        return entry.key != (0, 0) and not state.skipped and state.key == entry.key

    async def _read(self, stream: _Stream, root_fd: int, index: int, entry: ScannedEntry) -> None:
        state = self.states[index] = _FileState()
        settings = self.settings
        table = self.table

        if entry.size <= settings.cdc_max_bytes:
            self._batch.append((entry.path, state))
            self._batch_bytes += entry.size
            if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                await self._flush(stream, root_fd)
            return
        await self._flush(stream, root_fd)  # (the files before it, in order)

        def then(values: list[int]) -> None:
            _append(state.content, values)

        try:
            opened = await self.pool.run(open_file, root_fd, entry.path)
        except OSError as e:
            state.skipped = reason(e)
            return
        stream.total += opened.size - entry.size
        level = settings.compression_level
        try:
            reader = FileReader(opened, settings)
            while not reader.done:
                for piece in await self.pool.run(reader.read):
                    if isinstance(piece, int):
                        await stream.add_ready([_Piece(piece)], then)
                    else:
                        await stream.add(partial(_one_piece, piece, table, level), then, len(piece))
            await self.pool.run(_finish_file, opened, entry.path, state)
        except OSError as e:
            state.skipped = f"reading it failed: {reason(e)}"
        finally:
            opened.close()

    async def _flush(self, stream: _Stream, root_fd: int) -> None:
        """Hand the batch of small files to the pool as one item."""
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        counts: list[int] = []

        def then(values: list[int]) -> None:
            at = 0
            for (_, state), n in zip(batch, counts, strict=True):
                _append(state.content, values[at : at + n])
                at += n

        work = partial(_small_files, root_fd, batch, self.settings, self.table, counts)
        await stream.add(work, then, size)

    def _manifest(self, tree: ScannedTree, leaders: dict[tuple[int, int], str], holes: int, packs: int) -> _Made:
        entries: list[Entry] = []
        skipped = list(tree.skipped)
        notes = list(tree.notes)
        size = 0
        for index, e in enumerate(tree.entries):
            state = self.states.get(index)
            if state is not None:  # read as a file
                notes.extend(state.notes)
                skipped.extend(state.lost)
                if state.skipped or state.meta is None:
                    skipped.append(Problem(e.path, state.skipped or "it could not be read"))
                    continue
                length = sum(-c if c < 0 else self.table.plain(c) for c in state.content)
                if state.changed and not state.notes:
                    notes.append(Problem(e.path, "it changed while it was read: the snapshot holds what was read"))
                size += length
                entries.append(Entry(e.path, "file", state.meta, size=length, content=state.content))
            elif e.type == "hardlink":
                entries.append(Entry(e.path, "hardlink", e.meta, target=leaders[e.key]))
            else:
                entries.append(Entry(e.path, e.type, e.meta, target=e.target, major=e.major, minor=e.minor))
        pack_names, chunks = self.table.finish()
        manifest = Manifest(
            mode="filesystem",
            size=size,
            created=_now(),
            packs=pack_names,
            chunks=chunks,
            root=tree.root,
            entries=tuple(entries),
            source=_source_info(self.source),
        )
        return _Made(manifest, holes, packs, skipped, notes)


def _one_piece(data: bytes | memoryview, table: _Table, level: int) -> list[_Piece]:
    return [_piece(data, table, level)]
