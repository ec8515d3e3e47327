"""The snapshot manifest: what it holds, its limits, and how it is written (docs/FORMAT.md).

Stored manifest = the ASCII line ``ferry-snapshot <major>.<minor>\\n`` followed by one zstd frame
(content size in its header) holding a UTF-8 JSON object. The snapshot ID is the BLAKE3-256 of all
stored bytes, so a manifest is verified against the ID it was asked for before anything in it is used.
Reading (every check a reader makes, in bounded memory) is ``agent.repo.decoder``.

Names (paths, link targets, attribute names) are held as ``os.fsdecode`` makes them from the bytes Linux
stores: lossless for names that are not UTF-8, which the JSON carries as base64 (``rawPath``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import blake3
import zstandard

from agent.fs.names import is_utf8
from agent.repo.crypto import MasterKey

FORMAT_MAJOR = 1
FORMAT_MINOR = 1
SEALED_MAJOR = 2
"""Manifests of an encrypted repository: the body of 1.1, sealed (docs/FORMAT.md, section 9)."""
SEALED_VERSION = (SEALED_MAJOR, 0)
"""What this Ferry writes; it reads 1.0 and 1.1 (and later 1.x, ignoring fields it does not know)."""
MAGIC = b"ferry-snapshot "
MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""No chunk is larger than this (plain bytes); readers size their buffers from it."""
MAX_BODY_BYTES = 4 * 1024 * 1024 * 1024
"""Largest decompressed manifest body a reader accepts."""

INT64_MAX = 2**63 - 1
UID_MAX = 2**32 - 2
"""Largest user or group ID (2**32 - 1 is (uid_t) -1, which chown reads as "leave unchanged")."""
DEVICE_NUMBER_MAX = 2**32 - 1
MTIME_MIN_1_0, MTIME_MAX_1_0 = -(2**63), INT64_MAX
"""Format 1.0's modification times: nanoseconds in a signed 64-bit integer (1677 to 2262)."""
MTIME_MIN, MTIME_MAX = -(2**63) * 10**9, INT64_MAX * 10**9 + 999_999_999
"""Format 1.1's: every time Linux can store (a signed 64-bit count of seconds plus nanoseconds),
in nanoseconds. ext4 holds 1901-2446, XFS (bigtime) 1901-2486, Btrfs the whole range."""
MAX_NAME_BYTES = 255
"""Longest path component (Linux NAME_MAX)."""
MAX_PATH_BYTES = 1024 * 1024
"""Longest path a reader accepts: far beyond PATH_MAX (4096), which deep trees exceed."""
MAX_LINK_BYTES = 4095
"""Longest symlink target (Linux stores at most PATH_MAX - 1 bytes)."""
MAX_XATTR_NAME_BYTES = 255
MAX_XATTR_VALUE_BYTES = 65536
MAX_XATTRS_BYTES = 1024 * 1024
"""Most bytes of extended attributes (names and values) one entry may carry."""

CHUNK_RECORD = struct.Struct("<32sIQII")
"""A chunk table record: BLAKE3-256 of the plain bytes, pack index, offset in the pack, stored
(compressed) length, plain length. Little-endian, 52 bytes."""

HOLE = -1
"""One block slot that is all zeros and stored nowhere (``-n``: n such slots in a row)."""

EntryType = Literal["dir", "file", "symlink", "hardlink", "fifo", "chardev", "blockdev"]
ENTRY_TYPES: tuple[EntryType, ...] = ("dir", "file", "symlink", "hardlink", "fifo", "chardev", "blockdev")
ENTRY_TYPES_1_0: tuple[EntryType, ...] = ("dir", "file", "symlink", "hardlink")
DEVICE_TYPES: tuple[EntryType, ...] = ("chardev", "blockdev")
VolumeMode = Literal["block", "filesystem"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_snapshot_id(text: str) -> bool:
    return bool(_HEX64.match(text))


def is_pack_name(text: str) -> bool:
    return bool(_HEX64.match(text))


def snapshot_id_of(stored: bytes) -> str:
    return blake3.blake3(stored).hexdigest()


def compress_bound(plain: int) -> int:
    """The largest zstd frame a compressor makes of ``plain`` bytes (zstd's ZSTD_COMPRESSBOUND): a
    chunk's stored length can never be more, so a reader refuses a table that says otherwise."""
    margin = (128 * 1024 - plain) >> 11 if plain < 128 * 1024 else 0
    return plain + (plain >> 8) + margin


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


Xattrs = tuple[tuple[str, bytes], ...]
"""Extended attributes (POSIX ACLs and capabilities among them): (name, value) sorted by name."""


@dataclass(frozen=True, slots=True)
class Meta:
    """Ownership, permission bits (0o7777), modification time in nanoseconds since the epoch (may be
    negative, or beyond 64 bits), and extended attributes."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: Xattrs = ()


@dataclass(frozen=True, slots=True)
class Entry:
    """One filesystem entry. ``content`` (files): chunk indexes in order, a negative number -n
    meaning n zero bytes (a hole). ``target``: a symlink's text, or a hardlink's earlier file path.
    ``major``/``minor``: a device node's numbers."""

    path: str
    type: EntryType
    meta: Meta
    size: int = 0
    content: Sequence[int] = ()
    target: str = ""
    major: int = 0
    minor: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.content, array):  # one compact form: 8 bytes per item, not an object each
            object.__setattr__(self, "content", array("q", self.content))


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
    """Block: the slots in order, a chunk index for one slot holding data, or -n for n slots of zeros
    (a per-slot array with HOLE for every hole is a valid special case)."""
    root: Meta | None = None
    """Filesystem: the target directory's own metadata."""
    entries: tuple[Entry, ...] = ()
    source: dict[str, str] = field(default_factory=dict)
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)

    def slot_values(self) -> Iterator[int]:
        """Block: one value per slot, a chunk index or HOLE (for tests and small volumes: a large sparse
        volume has many slots)."""
        for value in self.slots:
            if value >= 0:
                yield value
            else:
                yield from (HOLE for _ in range(-value))


# ----------------------------------------------------------------------------------------------------------
# Encoding


def _name(key: str, raw_key: str, name: str) -> dict[str, str]:
    """A name as JSON: UTF-8 text under ``key``, or its bytes in base64 under ``raw_key``."""
    if is_utf8(name):
        return {key: name}
    return {raw_key: base64.b64encode(os.fsencode(name)).decode("ascii")}


def _meta_json(m: Meta, version: tuple[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": m.mode, "uid": m.uid, "gid": m.gid, "mtime": m.mtime_ns}
    if m.xattrs and version >= (1, 1):
        out["xattrs"] = [[name, base64.b64encode(value).decode("ascii")] for name, value in m.xattrs]
    return out


def _entry_json(e: Entry, version: tuple[int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {**_name("path", "rawPath", e.path), "type": e.type, **_meta_json(e.meta, version)}
    if e.type == "file":
        out["size"] = e.size
        out["content"] = list(e.content)
    elif e.type in ("symlink", "hardlink"):
        out.update(_name("target", "rawTarget", e.target))
    elif e.type in DEVICE_TYPES:
        out["major"] = e.major
        out["minor"] = e.minor
    return out


def manifest_aad(version_line: bytes, repository_id: str) -> bytes:
    """The associated data a format 2 manifest is sealed with: its version line and the repository ID."""
    return bytes(version_line) + repository_id.encode("ascii")


def encode_manifest(m: Manifest, master: MasterKey | None = None) -> bytes:
    """The stored bytes of a manifest, in format ``m.version``, or sealed with ``master`` in format 2.0
    (an encrypted repository; the body is that of ``m.version``, which must then be 1.1). Its snapshot ID
    is ``snapshot_id_of`` of the result."""
    body: dict[str, Any] = {
        "mode": m.mode,
        "size": m.size,
        "created": m.created,
        "source": m.source,
        "packs": list(m.packs),
        "chunks": base64.b64encode(m.chunks.raw).decode("ascii"),
    }
    if m.mode == "block":
        slots = m.slots if m.version >= (1, 1) else array("q", m.slot_values())
        body["block"] = {"chunkSize": m.chunk_size, "slots": slots.tolist()}
    else:
        if m.root is None:
            raise ValueError("a filesystem manifest needs root metadata")
        body["root"] = _meta_json(m.root, m.version)
        body["entries"] = [_entry_json(e, m.version) for e in m.entries]
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(text)
    if master is None:
        if m.version[0] != FORMAT_MAJOR:
            raise ValueError(f"a format {m.version[0]} manifest is sealed: it needs the master key")
        return MAGIC + f"{m.version[0]}.{m.version[1]}\n".encode("ascii") + frame
    if m.version not in ((FORMAT_MAJOR, FORMAT_MINOR), SEALED_VERSION):
        raise ValueError(f"an encrypted manifest holds a {FORMAT_MAJOR}.{FORMAT_MINOR} body, not {m.version}")
    line = MAGIC + f"{SEALED_MAJOR}.{SEALED_VERSION[1]}\n".encode("ascii")
    return line + master.sealer().seal(frame, manifest_aad(line, master.repository_id))
