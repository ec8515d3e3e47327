"""The index: where each stored chunk is, and what each snapshot is, without reading manifests.

    index/<hex BLAKE3 of the object>    ferry-index 1\\n, then a zstd frame (sealed if encrypted) of:
                                          u32 length of a JSON header, the header, then 52-byte records

The header is ``{"packs": [names], "snapshots": {id: summary}}``; the records are chunk table records
(``agent.repo.format.CHUNK_RECORD``: ID, pack index into ``packs``, offset, stored and plain length). A
snapshot writer stores one index object after its packs and before its manifest: the chunks it stored
(not those it reused) and its snapshot's summary (what ``snapshot list`` shows). Deduplication reads the
index objects instead of every manifest (a manifest repeats every chunk of its volume; the index holds each
stored chunk once), and ``repo repair-index`` and ``repo prune`` rewrite them into one.

Packs of a format 2 repository end with a **trailer** listing their own chunks (``pack_trailer``), so the
index can be rebuilt from the packs alone, and packs left by an interrupted snapshot (no index object,
no manifest) are found and reused by the next one:

    pack = stored chunks ‖ T ‖ u32 len(T) ‖ b"FRYP"      T = 16 random bytes ‖ records (pack index 0),
                                                         sealed if encrypted

The random bytes make every pack unique, even of chunks stored before: a pack name (its hash) is never
written twice, so a prune deleting a pack can never delete one a writer has just uploaded again.

Everything read here is bounded (``MAX_INDEX_BYTES`` and the manifest memory limit) and, in an encrypted
repository, authenticated: an index object or trailer that does not is skipped with a warning, never used.
"""

from __future__ import annotations

import json
import logging
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3
import zstandard

from agent.errors import CorruptedInTransit, ObjectNotFound, ObjectTooLarge, ObjectTruncated, RepositoryError
from agent.repo.crypto import MasterKey
from agent.repo.format import CHUNK_RECORD, ChunkRecord, is_pack_name, is_snapshot_id
from agent.repo.repository import Repository, pack_key

log = logging.getLogger(__name__)

INDEX = "index/"
MAGIC = b"ferry-index 1\n"
TRAILER_MAGIC = b"FRYP"
_FOOTER = struct.Struct("<I4s")
_U32 = struct.Struct("<I")
_SALT = 16
MAX_TRAILER_BYTES = 64 * 1024 * 1024
"""A pack's trailer is at most this long (a 32 MiB pack of 64 KiB chunks has a 26 KiB one)."""


def _aad(kind: bytes, master: MasterKey) -> bytes:
    return kind + master.repository_id.encode("ascii")


def pack_trailer(records: Iterable[tuple[bytes, int, int, int]], master: MasterKey | None) -> bytes:
    """What a format 2 writer appends to a pack: its chunks' (ID, offset, stored, plain), then the
    footer. ``records`` in pack order."""
    table = secrets.token_bytes(_SALT) + b"".join(
        CHUNK_RECORD.pack(cid, 0, offset, stored, plain) for cid, offset, stored, plain in records
    )
    if master is not None:
        table = master.sealer().seal(table, _aad(b"ferry-pack\n", master))
    return table + _FOOTER.pack(len(table), TRAILER_MAGIC)


async def read_trailer(repo: Repository, name: str, size: int) -> list[ChunkRecord] | None:
    """The chunks a pack's trailer lists (pack index 0), or None if it has none (a format 1 pack), it is
    not usable (too short, malformed, does not authenticate) or the pack is gone; raises storage errors."""
    if size < _FOOTER.size:
        return None
    try:
        footer = await repo.storage.get_range(pack_key(name), size - _FOOTER.size, _FOOTER.size)
        length, magic = _FOOTER.unpack(footer)
        if magic != TRAILER_MAGIC or length > min(size - _FOOTER.size, MAX_TRAILER_BYTES):
            return None
        end = size - _FOOTER.size - length
        table = await repo.storage.get_range(pack_key(name), end, length)
    except (ObjectNotFound, ObjectTruncated):  # deleted (by a prune) or replaced since it was listed
        return None
    if repo.master is not None:
        opened = repo.master.sealer().open(table, _aad(b"ferry-pack\n", repo.master))
        if opened is None:
            log.warning("the trailer of pack %s does not authenticate: its chunks are not reused", name)
            return None
        table = opened
    if len(table) < _SALT or (len(table) - _SALT) % CHUNK_RECORD.size:
        return None
    records = [ChunkRecord(*r) for r in CHUNK_RECORD.iter_unpack(memoryview(table)[_SALT:])]
    if any(r.offset + r.stored > end or r.stored == 0 for r in records):
        return None
    return records


@dataclass
class Index:
    """Chunk locations by ID (first seen wins), the pack names they refer to, and snapshot summaries."""

    chunks: dict[bytes, ChunkRecord] = field(default_factory=dict)
    """Pack as an index into ``packs``."""
    packs: list[str] = field(default_factory=list)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)
    """The index objects this was read from (keys)."""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """Index objects that could not be used: (key, why)."""
    _pack_at: dict[str, int] = field(default_factory=dict)

    def pack_index(self, name: str) -> int:
        found = self._pack_at.get(name)
        if found is None:
            found = self._pack_at[name] = len(self.packs)
            self.packs.append(name)
        return found

    def add(self, record: ChunkRecord, pack: str) -> None:
        if record.id not in self.chunks:
            self.chunks[record.id] = record._replace(pack=self.pack_index(pack))

    def add_all(self, records: Iterable[ChunkRecord], packs: tuple[str, ...] | list[str]) -> None:
        for record in records:
            self.add(record, packs[record.pack])

    def indexed_packs(self) -> set[str]:
        return set(self.packs)


def encode_index(
    packs: list[str] | tuple[str, ...],
    records: Iterable[ChunkRecord],
    snapshots: Mapping[str, Mapping[str, Any]],
    master: MasterKey | None,
) -> bytes:
    """An index object's stored bytes (its key is ``index_key`` of them)."""
    header = json.dumps({"packs": list(packs), "snapshots": snapshots}, separators=(",", ":")).encode()
    body = _U32.pack(len(header)) + header + b"".join(CHUNK_RECORD.pack(*r) for r in records)
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(body)
    if master is not None:
        frame = master.sealer().seal(frame, _aad(MAGIC, master))
    return MAGIC + frame


def index_key(stored: bytes) -> str:
    return INDEX + blake3.blake3(stored).hexdigest()


def decode_index(
    stored: bytes, master: MasterKey | None, limit: int, what: str
) -> tuple[list[str], list[ChunkRecord], dict[str, dict[str, Any]]]:
    """Parse an index object. Raises RepositoryError saying what is wrong."""
    if not stored.startswith(MAGIC):
        raise RepositoryError(f"{what} is not a Ferry index object")
    frame = stored[len(MAGIC) :]
    if master is not None:
        opened = master.sealer().open(frame, _aad(MAGIC, master))
        if opened is None:
            raise RepositoryError(f"{what} does not authenticate with this repository's key: it is not used")
        frame = opened
    try:
        size = zstandard.frame_content_size(frame)
        if size < 0 or size > limit:
            raise RepositoryError(f"{what} declares {size} bytes: more than the {limit} an index may take here")
        body = zstandard.ZstdDecompressor().decompress(frame, max_output_size=limit)
    except zstandard.ZstdError as e:
        raise RepositoryError(f"{what} does not decompress: {e}") from None
    try:
        (length,) = _U32.unpack_from(body)
        header = json.loads(body[4 : 4 + length])
        packs = [str(p) for p in header["packs"]]
        snapshots = {str(k): dict(v) for k, v in header.get("snapshots", {}).items()}
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise RepositoryError(f"{what} is malformed ({type(e).__name__})") from None
    table = body[4 + length :]
    if len(table) % CHUNK_RECORD.size or not all(is_pack_name(p) for p in packs):
        raise RepositoryError(f"{what} is malformed (its records or pack names)")
    records = [ChunkRecord(*r) for r in CHUNK_RECORD.iter_unpack(table)]
    if any(r.pack >= len(packs) for r in records) or not all(is_snapshot_id(s) for s in snapshots):
        raise RepositoryError(f"{what} is malformed (a record names no pack of it, or a snapshot ID is not one)")
    return packs, records, {k: v for k, v in snapshots.items() if _summary_ok(v)}


def _summary_ok(summary: dict[str, Any]) -> bool:
    """A summary has what ``snapshot list`` shows, of the right types (else the manifest is read instead)."""
    source = summary.get("source")
    created = summary.get("created")
    return (
        summary.get("mode") in ("block", "filesystem")
        and isinstance(summary.get("size"), int)
        and summary["size"] >= 0
        and isinstance(created, str)
        and len(created) <= 64
        and isinstance(source, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in source.items())
    )


@dataclass(frozen=True)
class IndexObject:
    """One index object as stored: its key, pack names, records (pack as an index into ``packs``) and
    snapshot summaries."""

    key: str
    packs: list[str]
    records: list[ChunkRecord]
    snapshots: dict[str, dict[str, Any]]


async def index_objects(repo: Repository) -> tuple[list[IndexObject], list[tuple[str, str]]]:
    """Every readable index object, and the unreadable ones as (key, why), logged as a warning. An object
    deleted between the listing and its read (a prune replacing several by one) makes the listing be taken
    again, so the object that replaced it is read too. Raises storage errors."""
    limit = repo.settings.manifest_memory_bytes
    seen: set[str] = set()
    objects: list[IndexObject] = []
    unreadable: list[tuple[str, str]] = []
    for _ in range(_LISTINGS):
        vanished = False
        for key in await repo.storage.list(INDEX):
            if key in seen:
                continue
            seen.add(key)
            what = f"index object {key[len(INDEX) :][:16]}"
            try:
                stored = await repo.fetch_named(key, what, limit)
                packs, records, snapshots = decode_index(stored, repo.master, limit, what)
            except ObjectNotFound:
                vanished = True
                continue
            except (RepositoryError, ObjectTooLarge, CorruptedInTransit) as e:
                log.warning("%s is not used: %s", what, e)
                unreadable.append((key, str(e)))
                continue
            objects.append(IndexObject(key, packs, records, snapshots))
        if not vanished:
            break
    return objects, unreadable


_LISTINGS = 4
"""Listings of ``index/`` taken at most while objects vanish under the reader (each prune replaces the
objects once, so a second listing is nearly always the last)."""


async def read_index(repo: Repository) -> Index:
    """Every index object of the repository merged (``index_objects``); those that cannot be read are
    skipped with a warning (a rebuilt index, ``repo repair-index``, replaces them)."""
    index = Index()
    objects, index.unreadable = await index_objects(repo)
    for obj in objects:
        index.objects.append(obj.key)
        index.add_all(obj.records, obj.packs)
        index.snapshots.update(obj.snapshots)
    return index


async def write_index(
    repo: Repository,
    packs: list[str] | tuple[str, ...],
    records: Iterable[ChunkRecord],
    snapshots: Mapping[str, Mapping[str, Any]],
) -> str:
    """Store an index object; returns its key."""
    stored = encode_index(packs, records, snapshots, repo.master)
    key = index_key(stored)
    await repo.storage.put(key, stored)
    return key
