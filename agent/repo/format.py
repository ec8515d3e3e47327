"""The snapshot manifest: encoding, decoding, and every check a reader makes (docs/FORMAT.md).

Stored manifest = the ASCII line ``ferry-snapshot <major>.<minor>\\n`` followed by one zstd frame
(content size in its header) holding a UTF-8 JSON object. The snapshot ID is the BLAKE3-256 of all
stored bytes, so a manifest is verified against the ID it was asked for before anything in it is used.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import re
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal, NamedTuple

import blake3
import zstandard

from agent.errors import ManifestInvalid, UnsupportedFormat

FORMAT_MAJOR = 1
FORMAT_MINOR = 0
MAGIC = b"ferry-snapshot "
MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""No chunk is larger than this (plain bytes); readers size their buffers from it."""
MAX_MANIFEST_BYTES = 4 * 1024 * 1024 * 1024
"""Largest decompressed manifest a reader accepts."""

CHUNK_RECORD = struct.Struct("<32sIQII")
"""A chunk table record: BLAKE3-256 of the plain bytes, pack index, offset in the pack, stored
(compressed) length, plain length. Little-endian, 52 bytes."""

HOLE = -1
"""A block slot that is all zeros and stored nowhere."""

EntryType = Literal["dir", "file", "symlink", "hardlink"]
ENTRY_TYPES: tuple[EntryType, ...] = ("dir", "file", "symlink", "hardlink")
VolumeMode = Literal["block", "filesystem"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_snapshot_id(text: str) -> bool:
    return bool(_HEX64.match(text))


def snapshot_id_of(stored: bytes) -> str:
    return blake3.blake3(stored).hexdigest()


def check_relative_path(path: str) -> str | None:
    """Why ``path`` is not a safe relative path inside a target, or None if it is."""
    if not path:
        return "empty path"
    if "\x00" in path:
        return "NUL byte in path"
    if path.startswith("/"):
        return "absolute path"
    wrapped = f"/{path}/"
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        return "'.', '..' or empty component"
    return None


class ChunkRecord(NamedTuple):
    id: bytes
    pack: int
    offset: int
    stored: int
    plain: int


class ChunkColumns(NamedTuple):
    """The chunk table's numeric fields, one array each, indexed like the table."""

    pack: array[int]
    offset: array[int]
    stored: array[int]
    plain: array[int]


# (field offset in a record, width, array type code) of pack, offset, stored and plain.
_COLUMNS = ((32, 4, "I"), (36, 8, "Q"), (44, 4, "I"), (48, 4, "I"))
_NATIVE_COLUMNS = all(array(code).itemsize == width for _, width, code in _COLUMNS)


def _column(raw: bytes, n: int, at: int, width: int, code: str) -> array[int]:
    """One little-endian field of every record, gathered by strided slices (no object per record)."""
    size = CHUNK_RECORD.size
    gathered = bytearray(n * width)
    for k in range(width):
        gathered[k::width] = raw[at + k :: size]
    out = array(code)
    out.frombytes(gathered)
    if sys.byteorder == "big":  # pragma: no cover - the records are little-endian
        out.byteswap()
    return out


class ChunkTable(Sequence[ChunkRecord]):
    """The chunk table, kept as its packed bytes (52 per chunk) and decoded on access."""

    __slots__ = ("_columns", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) % CHUNK_RECORD.size:
            raise ValueError("chunk table length is not a multiple of the record size")
        self._raw = raw
        self._columns: ChunkColumns | None = None

    @classmethod
    def from_records(cls, records: Iterator[ChunkRecord] | Sequence[ChunkRecord]) -> ChunkTable:
        return cls(b"".join(CHUNK_RECORD.pack(*r) for r in records))

    @property
    def raw(self) -> bytes:
        return self._raw

    def id(self, index: int) -> bytes:
        """The ID of chunk ``index`` (0 <= index < len), without decoding the rest of its record."""
        at = index * CHUNK_RECORD.size
        return self._raw[at : at + 32]

    def columns(self) -> ChunkColumns:
        """Every record's pack, offset, stored and plain length as arrays (20 bytes per chunk, made
        once and kept): what code that visits many chunks reads instead of a ChunkRecord each."""
        if self._columns is None:
            n = len(self)
            if _NATIVE_COLUMNS:
                cols = [_column(self._raw, n, at, width, code) for at, width, code in _COLUMNS]
            else:  # pragma: no cover - platforms whose array item sizes differ
                cols = [array(code) for _, _, code in _COLUMNS]
                for rec in CHUNK_RECORD.iter_unpack(self._raw):
                    for col, value in zip(cols, rec[1:], strict=True):
                        col.append(value)
            self._columns = ChunkColumns(*cols)
        return self._columns

    def __len__(self) -> int:
        return len(self._raw) // CHUNK_RECORD.size

    def __getitem__(self, index: int) -> ChunkRecord:  # type: ignore[override]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return ChunkRecord(*CHUNK_RECORD.unpack_from(self._raw, index * CHUNK_RECORD.size))

    def __iter__(self) -> Iterator[ChunkRecord]:
        return (ChunkRecord(*t) for t in CHUNK_RECORD.iter_unpack(self._raw))


@dataclass(frozen=True, slots=True)
class Meta:
    """Ownership, permission bits (0o7777) and modification time in nanoseconds since the epoch."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One filesystem entry. ``content`` (files): chunk indexes in order, a negative number -n
    meaning n zero bytes (a hole). ``target``: a symlink's text, or a hardlink's earlier file path."""

    path: str
    type: EntryType
    meta: Meta
    size: int = 0
    content: tuple[int, ...] = ()
    target: str = ""


@dataclass(frozen=True)
class Manifest:
    mode: VolumeMode
    size: int
    """Block: the volume's size. Filesystem: the sum of regular file sizes. Bytes, holes included."""
    created: str
    packs: tuple[str, ...]
    chunks: ChunkTable
    chunk_size: int = 0
    """Block: bytes per slot."""
    slots: array[int] = field(default_factory=lambda: array("q"))
    """Block: per slot, a chunk index or HOLE."""
    root: Meta | None = None
    """Filesystem: the target directory's own metadata."""
    entries: tuple[Entry, ...] = ()
    source: dict[str, str] = field(default_factory=dict)
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)


# ----------------------------------------------------------------------------------------------------------
# Encoding


def _meta_json(m: Meta) -> dict[str, int]:
    return {"mode": m.mode, "uid": m.uid, "gid": m.gid, "mtime": m.mtime_ns}


def _entry_json(e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": e.path, "type": e.type, **_meta_json(e.meta)}
    if e.type == "file":
        out["size"] = e.size
        out["content"] = list(e.content)
    elif e.type in ("symlink", "hardlink"):
        out["target"] = e.target
    return out


def encode_manifest(m: Manifest) -> bytes:
    """The stored bytes of a manifest. Its snapshot ID is ``snapshot_id_of`` of the result."""
    body: dict[str, Any] = {
        "mode": m.mode,
        "size": m.size,
        "created": m.created,
        "source": m.source,
        "packs": list(m.packs),
        "chunks": base64.b64encode(m.chunks.raw).decode("ascii"),
    }
    if m.mode == "block":
        body["block"] = {"chunkSize": m.chunk_size, "slots": m.slots.tolist()}
    else:
        if m.root is None:
            raise ValueError("a filesystem manifest needs root metadata")
        body["root"] = _meta_json(m.root)
        body["entries"] = [_entry_json(e) for e in m.entries]
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(text)
    return MAGIC + f"{m.version[0]}.{m.version[1]}\n".encode("ascii") + frame


# ----------------------------------------------------------------------------------------------------------
# Decoding


class _Invalid(Exception):
    pass


def _int(obj: dict[str, Any], key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    v = obj.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise _Invalid(f"field {key!r} must be an integer in [{lo}, {hi}], not {v!r}")
    return v


def _str(obj: dict[str, Any], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise _Invalid(f"field {key!r} must be a string")
    return v


def _meta(obj: Any, where: str) -> Meta:
    if not isinstance(obj, dict):
        raise _Invalid(f"{where} must be an object")
    mode, uid, gid, mtime = obj.get("mode"), obj.get("uid"), obj.get("gid"), obj.get("mtime")
    if (
        type(mode) is int
        and type(uid) is int
        and type(gid) is int
        and type(mtime) is int
        and 0 <= mode <= 0o7777
        and 0 <= uid <= 2**32 - 1
        and 0 <= gid <= 2**32 - 1
        and -(2**63) <= mtime <= 2**63 - 1
    ):
        return Meta(mode, uid, gid, mtime)
    return Meta(
        mode=_int(obj, "mode", 0, 0o7777),
        uid=_int(obj, "uid", 0, 2**32 - 1),
        gid=_int(obj, "gid", 0, 2**32 - 1),
        mtime_ns=_int(obj, "mtime", -(2**63), 2**63 - 1),
    )


def read_version(stored: bytes) -> tuple[tuple[int, int], int]:
    """The format version in a stored manifest's first line, and where the zstd frame starts."""
    end = stored.find(b"\n", 0, 64)
    if not stored.startswith(MAGIC) or end < 0:
        raise _Invalid("it does not start with 'ferry-snapshot <version>'")
    m = re.fullmatch(rb"(\d{1,6})\.(\d{1,6})", stored[len(MAGIC) : end])
    if not m:
        raise _Invalid("its version line is malformed")
    return (int(m.group(1)), int(m.group(2))), end + 1


def decode_manifest(stored: bytes, snapshot_id: str) -> Manifest:
    """Verify stored manifest bytes against the ID they were fetched for, then parse and check them.

    Raises ManifestInvalid (wrong hash, malformed content) or UnsupportedFormat (unknown major version).
    """
    if snapshot_id_of(stored) != snapshot_id:
        raise ManifestInvalid(
            f"the manifest stored for snapshot {snapshot_id} does not hash to that ID: it was truncated or "
            "altered in storage; nothing was restored"
        )
    try:
        version, start = read_version(stored)
        if version[0] != FORMAT_MAJOR:
            raise UnsupportedFormat(
                f"snapshot {snapshot_id} uses repository format {version[0]}.{version[1]}; this Ferry reads "
                f"format {FORMAT_MAJOR}.x: upgrade Ferry to restore it"
            )
        with _collector_paused():
            return _parse(memoryview(stored)[start:], version)
    except _Invalid as e:
        raise ManifestInvalid(f"the manifest of snapshot {snapshot_id} is malformed: {e}") from None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a manifest is parsed. Parsing makes millions of objects
    (a filesystem's entries) that form no cycles; the collector would walk them again and again as they
    accumulate, a third of the time a large manifest takes. Left off if something else turned it off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse(frame: memoryview, version: tuple[int, int]) -> Manifest:
    try:
        plain_size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise _Invalid("its body is not a zstd frame") from None
    if not 0 <= plain_size <= MAX_MANIFEST_BYTES:
        raise _Invalid("its body does not declare a size within limits")
    try:
        # Decoded to str as json.loads would, but here, so the bytes go before the JSON is parsed.
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=plain_size)
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        del data
        body = json.loads(text)
        del text
    except (zstandard.ZstdError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Invalid(f"its body does not decode: {e}") from None
    if not isinstance(body, dict):
        raise _Invalid("its body is not a JSON object")

    mode = body.get("mode")
    if mode not in ("block", "filesystem"):
        raise _Invalid(f"unknown volume mode {mode!r}")
    size = _int(body, "size")
    packs = body.get("packs")
    if not isinstance(packs, list) or not all(isinstance(p, str) and _HEX64.match(p) for p in packs):
        raise _Invalid("'packs' must be a list of 64-hex-digit pack names")
    try:
        chunks = ChunkTable(base64.b64decode(_str(body, "chunks"), validate=True))
    except (binascii.Error, ValueError):
        raise _Invalid("'chunks' is not a base64 chunk table") from None
    del body["chunks"]  # its text, a third larger than the table, is not kept while the rest is checked
    _check_chunks(chunks, len(packs))
    common = {
        "size": size,
        "created": _str(body, "created"),
        "packs": tuple(packs),
        "chunks": chunks,
        "source": {str(k): str(v) for k, v in (body.get("source") or {}).items()},
        "version": version,
    }
    if mode == "block":
        return _parse_block(body, common, chunks)
    return _parse_filesystem(body, common, chunks)


def _parse_block(body: dict[str, Any], common: dict[str, Any], chunks: ChunkTable) -> Manifest:
    block = body.get("block")
    if not isinstance(block, dict):
        raise _Invalid("a block manifest needs a 'block' object")
    chunk_size = _int(block, "chunkSize", 1, MAX_CHUNK_BYTES)
    raw_slots = block.get("slots")
    if not isinstance(raw_slots, list):
        raise _Invalid("'block.slots' must be a list")
    try:
        slots = array("q", raw_slots)
    except (TypeError, OverflowError):
        raise _Invalid("'block.slots' must hold integers") from None
    size: int = common["size"]
    if len(slots) != -(-size // chunk_size):
        raise _Invalid(f"{len(slots)} slots do not cover {size} bytes in {chunk_size}-byte chunks")
    if not _slots_fit(slots, size, chunk_size, chunks):
        plain = chunks.columns().plain
        n = len(chunks)
        last = len(slots) - 1
        for i, c in enumerate(slots):
            if c == HOLE:
                continue
            if not 0 <= c < n:
                raise _Invalid(f"slot {i} names chunk {c}, not in the table")
            want = size - i * chunk_size if i == last else chunk_size
            if plain[c] != want:
                raise _Invalid(f"slot {i} needs {want} bytes but chunk {c} holds {plain[c]}")
    return Manifest(mode="block", chunk_size=chunk_size, slots=slots, **common)


def _check_chunks(chunks: ChunkTable, packs: int) -> None:
    """Every record names a pack of the manifest and has lengths within limits. The whole table is
    checked through its columns (no object per record); the first bad record is looked for only if
    there is one."""
    if not len(chunks):
        return
    pack, _, stored, plain = chunks.columns()
    if max(pack) < packs and min(stored) > 0 and min(plain) > 0 and max(plain) <= MAX_CHUNK_BYTES:
        return
    for i in range(len(chunks)):
        if pack[i] >= packs or stored[i] == 0 or not 0 < plain[i] <= MAX_CHUNK_BYTES:
            raise _Invalid(f"chunk {i} has an invalid pack index or length")


def _slots_fit(slots: array[int], size: int, chunk_size: int, chunks: ChunkTable) -> bool:
    """Whether every slot is a hole or a chunk of the table holding exactly the slot's bytes: a full
    chunk, or the volume's tail in the last slot. Checked without a loop over slots in Python."""
    if not slots:
        return True
    n = len(chunks)
    if min(slots) < HOLE or max(slots) >= n:
        return False
    plain = chunks.columns().plain
    last = len(slots) - 1
    tail = slots[last]
    if tail != HOLE and plain[tail] != size - last * chunk_size:
        return False
    if plain.count(chunk_size) == n:
        return True
    short = {i for i, p in enumerate(plain) if p != chunk_size}
    return short.isdisjoint(islice(slots, last))


def _parse_filesystem(body: dict[str, Any], common: dict[str, Any], chunks: ChunkTable) -> Manifest:
    root = _meta(body.get("root"), "'root'")
    raw_entries = body.get("entries")
    if not isinstance(raw_entries, list):
        raise _Invalid("a filesystem manifest needs an 'entries' list")
    n = len(chunks)
    plain = chunks.columns().plain
    kinds: dict[str, EntryType] = {}
    entries: list[Entry] = []
    total = 0
    for i, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            raise _Invalid("every entry must be an object")
        path = _str(raw, "path")
        why = check_relative_path(path)
        if why:
            raise _Invalid(f"entry {path!r}: {why}")
        if path in kinds:
            raise _Invalid(f"entry {path!r} appears twice")
        parent = path.rpartition("/")[0]
        if parent and kinds.get(parent) != "dir":
            raise _Invalid(f"entry {path!r} comes before its directory")
        kind = raw.get("type")
        if kind not in ENTRY_TYPES:
            raise _Invalid(f"entry {path!r} has unknown type {kind!r}")
        meta = _meta(raw, "an entry")  # (raw is an object: the name is never used)
        entry: Entry
        if kind == "file":
            size = _int(raw, "size")
            content = raw.get("content")
            if not isinstance(content, list) or not all(type(c) is int and -size <= c < n for c in content):
                raise _Invalid(f"entry {path!r}: 'content' must list chunk indexes or negative hole lengths")
            length = sum(-c if c < 0 else plain[c] for c in content)
            if length != size:
                raise _Invalid(f"entry {path!r}: content adds up to {length} bytes, size says {size}")
            total += size
            entry = Entry(path, "file", meta, size=size, content=tuple(content))
        elif kind == "symlink":
            target = _str(raw, "target")
            if not target or "\x00" in target:
                raise _Invalid(f"symlink {path!r} has an empty or invalid target")
            entry = Entry(path, "symlink", meta, target=target)
        elif kind == "hardlink":
            target = _str(raw, "target")
            if kinds.get(target) != "file":
                raise _Invalid(f"hardlink {path!r} must point to an earlier regular file, not {target!r}")
            entry = Entry(path, "hardlink", meta, target=target)
        else:
            entry = Entry(path, "dir", meta)
        kinds[path] = kind
        entries.append(entry)
        raw_entries[i] = None  # the parsed JSON goes as the entries are made, not all at the end
    if total != common["size"]:
        raise _Invalid(f"files add up to {total} bytes, 'size' says {common['size']}")
    return Manifest(mode="filesystem", root=root, entries=tuple(entries), **common)
