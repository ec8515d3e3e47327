"""Reading a stored manifest: verify it against its ID, then parse it in bounded memory, checking every
rule of docs/FORMAT.md before anything in it is used.

No content can crash, exhaust or mislead the reader: the body is decompressed and parsed as a stream
(``agent.repo.jsonstream``), each field's type and range is checked as it arrives, and what the manifest
describes is charged against ``memory_bytes`` (an estimate of what the parsed manifest holds: its entries,
chunk table, slots and pack names), so a small manifest that describes a huge volume is refused in one
line instead of taking the process down. The limits are in docs/FORMAT.md ("Limits").

Format 2 manifests (an encrypted repository) hold the same body, sealed (``agent.repo.crypto``): the
frame is opened with the repository's master key before anything else is read, and a manifest that does
not authenticate, or an unsealed manifest in an encrypted repository, is refused whole.

Raises ``ManifestInvalid`` (wrong hash, malformed content, does not authenticate), ``UnsupportedFormat``
(unknown major version) or ``ManifestTooLarge``; every message names the snapshot and the field.
"""

from __future__ import annotations

import base64
import binascii
import gc
import os
import re
import threading
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import zstandard

from agent.errors import ManifestInvalid, ManifestTooLarge, UnsupportedFormat
from agent.fs.names import is_utf8, shown
from agent.repo.crypto import SEAL_OVERHEAD, MasterKey
from agent.repo.format import (
    CHUNK_RECORD,
    DEVICE_NUMBER_MAX,
    DEVICE_TYPES,
    ENTRY_TYPES,
    ENTRY_TYPES_1_0,
    FORMAT_MAJOR,
    INT64_MAX,
    MAGIC,
    MAX_BODY_BYTES,
    MAX_CHUNK_BYTES,
    MAX_LINK_BYTES,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_XATTR_NAME_BYTES,
    MAX_XATTR_VALUE_BYTES,
    MAX_XATTRS_BYTES,
    MTIME_MAX,
    MTIME_MAX_1_0,
    MTIME_MIN,
    MTIME_MIN_1_0,
    SEALED_MAJOR,
    UID_MAX,
    ChunkTable,
    Entry,
    EntryType,
    Manifest,
    Meta,
    check_relative_path,
    compress_bound,
    is_pack_name,
    manifest_aad,
    snapshot_id_of,
)
from agent.repo.jsonstream import TOO_BIG, JsonError, JsonStream, Stop, Stopped, check_text

DEFAULT_MEMORY_BYTES = 1024 * 1024 * 1024
MAX_WINDOW_BYTES = 16 * 1024 * 1024
"""Largest zstd window a manifest frame may ask for (a compressor that knows the content size never
needs more for a level below 20)."""
PIECE_BYTES = 1024 * 1024
"""Decompressed bytes handed to the parser at a time."""
ENTRY_FAST_CHARS = 64 * 1024
"""Entries whose JSON is at most this long are parsed by the C parser in one call; longer ones (a
large file's chunk list) are read as a stream."""
ENTRY_BYTES = 480
"""What one parsed entry holds beyond its path and content (objects, integers), for the budget."""
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Invalid(Exception):
    pass


class _TooLarge(Exception):
    pass


def read_version(stored: bytes | memoryview) -> tuple[tuple[int, int], int]:
    """The format version in a stored manifest's first line, and where the zstd frame starts."""
    head = bytes(stored[:64])
    end = head.find(b"\n")
    if not head.startswith(MAGIC) or end < 0:
        raise _Invalid("it does not start with 'ferry-snapshot <version>'")
    m = re.fullmatch(rb"(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})", head[len(MAGIC) : end])
    if not m:
        raise _Invalid("its version line is malformed")
    return (int(m.group(1)), int(m.group(2))), end + 1


def declared_body_bytes(stored: bytes) -> int:
    """The body size a stored manifest's frame declares (-1 if it cannot be told): what reading it costs,
    which its stored size does not say (a 100 KB frame can hold gigabytes)."""
    try:
        _, start = read_version(stored)
        return int(zstandard.frame_content_size(memoryview(stored)[start:]))
    except (_Invalid, zstandard.ZstdError):
        return -1


def decode_manifest(
    stored: bytes,
    snapshot_id: str,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    stop: Stop | None = None,
    *,
    verified: bool = False,
    master: MasterKey | None = None,
) -> Manifest:
    """Verify stored manifest bytes against the ID they were fetched for, then parse and check them.
    ``verified``: the caller has just compared their BLAKE3 with the ID (it is not hashed again).
    ``master``: the repository's master key if it is encrypted (then only sealed manifests are read).

    ``memory_bytes`` bounds what the parsed manifest may hold; ``stop``, when set, makes the parse raise
    ``Stopped`` within one piece of text (a megabyte).
    """
    if not verified and snapshot_id_of(stored) != snapshot_id:
        raise ManifestInvalid(
            f"the manifest stored for snapshot {snapshot_id} does not hash to that ID: it was truncated or "
            "altered in storage; nothing was restored"
        )
    try:
        version, start = read_version(stored)
        frame = _open_frame(stored, start, version, snapshot_id, master)
        size = _check_frame(frame)
        reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).stream_reader(
            frame, read_across_frames=False
        )
        with reader:
            body = _Body(version, _Budget(memory_bytes))
            got = 0

            def read() -> bytes:
                nonlocal got
                try:
                    piece = reader.read(PIECE_BYTES)
                except zstandard.ZstdError as e:
                    raise _Invalid(f"its body does not decompress: {e}") from None
                got += len(piece)
                if got > size:
                    raise _Invalid(f"its body holds more than the {size} bytes its frame declares")
                return piece

            with _collector_paused():
                manifest = body.parse(JsonStream(read, stop), stop)
            if got != size:
                raise _Invalid(f"its body holds {got} bytes, its frame declares {size}")
            return manifest
    except JsonError as e:
        raise ManifestInvalid(f"the manifest of snapshot {snapshot_id} is malformed: {e}") from None
    except _Invalid as e:
        raise ManifestInvalid(f"the manifest of snapshot {snapshot_id} is malformed: {e}") from None
    except _TooLarge as e:
        raise ManifestTooLarge(
            f"snapshot {snapshot_id} describes {e}: more than the {memory_bytes // (1024 * 1024)} MiB a manifest "
            "may take here; raise the limit (--manifest-memory, FERRY_MANIFEST_MEMORY) on a machine that has it"
        ) from None


_pauses = 0
_pauses_lock = threading.Lock()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a manifest is parsed. Parsing makes millions of objects
    (a filesystem's entries) that form no cycles; the collector would walk them again and again as they
    accumulate, a third of the time a large manifest takes. Parses may overlap (the agent reads several
    manifests at once, in threads): the last one to finish turns it back on, if it was on."""
    global _pauses, _was_enabled  # noqa: PLW0603 - the collector is process-wide
    with _pauses_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pauses_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


_was_enabled = True


def _check_frame(frame: memoryview) -> int:
    """The declared size of the body, after checking that ``frame`` is exactly one zstd frame that
    declares its content size (RFC 8878: frame header, blocks, optional checksum)."""
    if bytes(frame[:4]) != _ZSTD_MAGIC:
        raise _Invalid("its body is not a zstd frame")
    try:
        size = zstandard.frame_content_size(frame)
        header = zstandard.frame_header_size(frame)
        checksum = zstandard.get_frame_parameters(frame).has_checksum
    except zstandard.ZstdError:
        raise _Invalid("its body's zstd frame header is malformed") from None
    if size < 0:
        raise _Invalid("its zstd frame does not declare the body's size")
    if size > MAX_BODY_BYTES:
        raise _Invalid(f"its body declares {size} bytes, more than the {MAX_BODY_BYTES} a reader accepts")
    pos = header
    n = len(frame)
    while True:
        if pos + 3 > n:
            raise _Invalid("its zstd frame is truncated")
        h = frame[pos] | frame[pos + 1] << 8 | frame[pos + 2] << 16
        kind = (h >> 1) & 3
        if kind == 3:
            raise _Invalid("its zstd frame holds a reserved block type")
        pos += 3 + (1 if kind == 1 else h >> 3)
        if h & 1:
            break
    pos += 4 if checksum else 0
    if pos > n:
        raise _Invalid("its zstd frame is truncated")
    if pos < n:
        raise _Invalid("more than one zstd frame (or trailing bytes) follows the version line")
    return size


class _Budget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, n: int, what: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise _TooLarge(what)


@dataclass
class _Fields:
    """What the body's top level said, as it arrives (a writer may order the fields any way)."""

    mode: str | None = None
    size: int | None = None
    created: str | None = None
    source: dict[str, str] | None = None
    packs: list[str] | None = None
    chunks: ChunkTable | None = None
    chunk_size: int | None = None
    slots: array[int] | None = None
    slot_count: int = 0
    root: Meta | None = None
    entries: list[Entry] | None = None


def _where(index: int, path: str | None) -> str:
    return f"entries[{index}]" + (f" ({shown(path)})" if path else "")


class _Body:
    def __init__(self, version: tuple[int, int], budget: _Budget) -> None:
        self.version = version
        self.v11 = version >= (1, 1)
        self.budget = budget
        self.f = _Fields()
        self.kinds: dict[str, EntryType] = {}
        self.path: str | None = None
        """The path of the entry being checked, once known (for messages)."""

    # --- top level -------------------------------------------------------------------------------------------
    def parse(self, s: JsonStream, stop: Stop | None = None) -> Manifest:
        f = self.f
        for key in s.keys("the body"):
            if key == "mode":
                mode = s.string(16, "'mode'")
                if mode not in ("block", "filesystem"):
                    raise _Invalid(f"unknown volume mode {mode!r}")
                f.mode = mode
            elif key == "size":
                f.size = self._int(s.integer("'size'"), "'size'", 0, None)
            elif key == "created":
                f.created = s.string(64, "'created'")
            elif key == "source":
                f.source = self._source(s)
            elif key == "packs":
                f.packs = self._packs(s)
            elif key == "chunks":
                f.chunks = self._chunks(s)
            elif key == "block":
                self._block(s)
            elif key == "root":
                f.root = self._meta(self._small(s, "'root'", 4 * MAX_XATTRS_BYTES), "'root'")
            elif key == "entries":
                f.entries = self._entries(s)
            else:
                s.skip(f"field {key!r}")
        s.end()
        return self._finish(stop)

    def _finish(self, stop: Stop | None) -> Manifest:
        f = self.f
        for name, value in (("mode", f.mode), ("size", f.size), ("created", f.created), ("packs", f.packs)):
            if value is None:
                raise _Invalid(f"field {name!r} is missing")
        if f.chunks is None:
            raise _Invalid("field 'chunks' is missing")
        assert f.mode is not None
        assert f.size is not None
        assert f.created is not None
        assert f.packs is not None
        _check_chunks(f.chunks, len(f.packs), SEAL_OVERHEAD if self.version[0] == SEALED_MAJOR else 0)
        common: dict[str, Any] = {
            "size": f.size,
            "created": f.created,
            "packs": tuple(f.packs),
            "chunks": f.chunks,
            "source": f.source or {},
            "version": self.version,
        }
        if f.mode == "block":
            if f.chunk_size is None or f.slots is None:
                raise _Invalid("a block manifest needs 'block.chunkSize' and 'block.slots'")
            if f.size > INT64_MAX:
                raise _Invalid(f"'size' {f.size} is beyond the largest block volume ({INT64_MAX} bytes)")
            _check_slots(f.slots, f.slot_count, f.size, f.chunk_size, f.chunks)
            return Manifest(mode="block", chunk_size=f.chunk_size, slots=f.slots, **common)
        if f.root is None or f.entries is None:
            raise _Invalid("a filesystem manifest needs 'root' and 'entries'")
        if not self.v11 and f.size > INT64_MAX:
            raise _Invalid(f"'size' must be at most {INT64_MAX} in format 1.0")
        _check_contents(f.entries, f.chunks, f.size, stop)
        return Manifest(mode="filesystem", root=f.root, entries=tuple(f.entries), **common)

    # --- values ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _int(value: object, what: str, lo: int, hi: int | None) -> int:
        if type(value) is not int or value < lo or (hi is not None and value > hi):
            bound = f"in [{lo}, {hi}]" if hi is not None else f"of at least {lo}"
            raise _Invalid(f"{what} must be an integer {bound}, not {_brief(value)}")
        return value

    @staticmethod
    def _small(s: JsonStream, what: str, limit: int) -> Any:
        value = s.value(limit)
        if value is TOO_BIG:
            raise _Invalid(f"{what} is longer than {limit} characters")
        return value

    def _source(self, s: JsonStream) -> dict[str, str]:
        out: dict[str, str] = {}
        for key in s.keys("'source'"):
            if len(out) >= 64:
                raise _Invalid("'source' has more than 64 fields")
            out[key] = s.string(64 * 1024, f"'source' field {key!r}")
        self.budget.charge(sum(len(k) + len(v) + 100 for k, v in out.items()), "its source")
        return out

    def _packs(self, s: JsonStream) -> list[str]:
        packs: list[str] = []
        for _ in s.items("'packs'"):
            name = s.string(64, f"'packs[{len(packs)}]'")
            if not is_pack_name(name):
                raise _Invalid(f"'packs[{len(packs)}]' is not a pack name (64 hexadecimal digits): {name!r}")
            packs.append(name)
            self.budget.used += 120
            if self.budget.used > self.budget.limit:
                raise _TooLarge(f"{len(packs)} packs")
        return packs

    def _chunks(self, s: JsonStream) -> ChunkTable:
        pieces: list[bytes] = []
        total = 0
        for piece in s.base64("'chunks'"):
            pieces.append(piece)
            total += len(piece)
            # The records, their columns (20 bytes each), and the joined copy while it is made.
            self.budget.charge(len(piece) * 2 + len(piece) * 20 // CHUNK_RECORD.size, f"{total // 52} chunks")
        raw = b"".join(pieces)
        del pieces
        if len(raw) % CHUNK_RECORD.size:
            raise _Invalid(f"'chunks' holds {len(raw)} bytes, not a whole number of {CHUNK_RECORD.size}-byte records")
        return ChunkTable(raw)

    def _block(self, s: JsonStream) -> None:
        f = self.f
        for key in s.keys("'block'"):
            if key == "chunkSize":
                f.chunk_size = self._int(s.integer("'block.chunkSize'"), "'block.chunkSize'", 1, MAX_CHUNK_BYTES)
            elif key == "slots":
                f.slots = self._slots(s)
            else:
                s.skip(f"'block' field {key!r}")

    def _slots(self, s: JsonStream) -> array[int]:
        """The slots, holes merged into runs (-n): memory follows the data slots, not the volume's size."""
        out = array("q")
        count = 0
        lowest = -(2**63) if self.v11 else -1
        for batch in s.integers("'block.slots'"):
            if min(batch) < lowest:
                raise _Invalid(f"'block.slots' holds {min(batch)}: format 1.0 marks each hole slot with -1")
            before = len(out)
            if max(batch) < 0:  # holes only: one run
                holes = sum(batch)
                count -= holes
                if out and out[-1] < 0:
                    out[-1] += holes
                else:
                    out.append(holes)
            elif min(batch) >= 0:  # data only: as it is
                out.extend(batch)
                count += len(batch)
            else:
                for v in batch:
                    if v >= 0:
                        out.append(v)
                        count += 1
                    else:
                        count -= v
                        if out and out[-1] < 0:
                            out[-1] += v
                        else:
                            out.append(v)
            self.budget.charge(8 * (len(out) - before), f"{count} slots")
            if count > INT64_MAX:
                raise _Invalid("'block.slots' covers more slots than any volume has")
        self.f.slot_count = count
        return out

    def _xattrs(self, raw: object, what: str) -> tuple[tuple[str, bytes], ...]:
        if not isinstance(raw, list):
            raise _Invalid(f"{what}.xattrs must be a list of [name, base64 value] pairs")
        out: list[tuple[str, bytes]] = []
        total = 0
        for item in raw:
            pair = isinstance(item, list) and len(item) == 2
            if not (pair and isinstance(item[0], str) and isinstance(item[1], str)):
                raise _Invalid(f"{what}.xattrs must be a list of [name, base64 value] pairs")
            name = _text(item[0], f"{what}: an attribute name")
            encoded = name.encode("utf-8")
            if not 0 < len(encoded) <= MAX_XATTR_NAME_BYTES or "\x00" in name or "." not in name:
                raise _Invalid(f"{what}: {name!r} is not an extended attribute name")
            try:
                value = base64.b64decode(item[1], validate=True)
            except (binascii.Error, ValueError):
                raise _Invalid(f"{what}: the value of {name!r} is not base64") from None
            if len(value) > MAX_XATTR_VALUE_BYTES:
                raise _Invalid(f"{what}: the value of {name!r} is longer than {MAX_XATTR_VALUE_BYTES} bytes")
            if out and name <= out[-1][0]:
                raise _Invalid(f"{what}.xattrs must be sorted by name, each name once")
            total += len(encoded) + len(value)
            out.append((name, value))
        if total > MAX_XATTRS_BYTES:
            raise _Invalid(f"{what}: its extended attributes hold more than {MAX_XATTRS_BYTES} bytes")
        self.budget.charge(total + 100 * len(out), "its extended attributes")
        return tuple(out)

    def _meta(self, raw: object, what: str) -> Meta:
        if not isinstance(raw, dict):
            raise _Invalid(f"{what} must be an object")
        lo, hi = (MTIME_MIN, MTIME_MAX) if self.v11 else (MTIME_MIN_1_0, MTIME_MAX_1_0)
        mode, uid, gid, mtime = raw.get("mode"), raw.get("uid"), raw.get("gid"), raw.get("mtime")
        if not (
            type(mode) is int
            and type(uid) is int
            and type(gid) is int
            and type(mtime) is int
            and 0 <= mode <= 0o7777
            and 0 <= uid <= UID_MAX
            and 0 <= gid <= UID_MAX
            and lo <= mtime <= hi
        ):
            mode = self._int(mode, f"{what}.mode", 0, 0o7777)
            uid = self._int(uid, f"{what}.uid", 0, UID_MAX)
            gid = self._int(gid, f"{what}.gid", 0, UID_MAX)
            mtime = self._int(mtime, f"{what}.mtime", lo, hi)
        xattrs = raw.get("xattrs") if self.v11 else None
        return Meta(mode, uid, gid, mtime, self._xattrs(xattrs, what) if xattrs is not None else ())

    # --- entries ----------------------------------------------------------------------------------------------------
    def _entries(self, s: JsonStream) -> list[Entry]:
        entries: list[Entry] = []
        for parsed in s.values("'entries'", ENTRY_FAST_CHARS):
            index = len(entries)
            raw = self._entry_streamed(s, index) if parsed is TOO_BIG else parsed
            self.path = None
            try:
                entries.append(self._entry(raw, index))
            except _Invalid as e:  # the entry is named here, once: its checks say only which field
                raise _Invalid(f"{_where(index, self.path)}{e}") from None
        return entries

    def _entry_streamed(self, s: JsonStream, index: int) -> dict[str, Any]:
        """An entry too long for the fast path, field by field (its content as it comes, in batches)."""
        out: dict[str, Any] = {}
        what = _where(index, None)
        for key in s.keys(what):
            if key == "content":
                content = array("q")
                for batch in s.integers(f"{what}.content"):
                    content.extend(batch)
                    self.budget.charge(8 * len(batch), f"a file of {len(content)} chunks")
                out[key] = content
            elif key in ("path", "target"):
                out[key] = s.string(MAX_PATH_BYTES * 6, f"{what}.{key}")
            elif key in ("rawPath", "rawTarget"):
                out[key] = s.string(MAX_PATH_BYTES * 4 // 3 + 4, f"{what}.{key}")
            elif key == "type":
                out[key] = s.string(16, f"{what}.type")
            elif key == "xattrs":
                out[key] = self._small(s, f"{what}.xattrs", 4 * MAX_XATTRS_BYTES)
            elif key in ("mode", "uid", "gid", "mtime", "size", "major", "minor"):
                out[key] = s.integer(f"{what}.{key}")
            else:
                s.skip(f"{what} field {key!r}")
        return out

    def _name(self, raw: dict[str, Any], key: str, raw_key: str, what: str, limit: int) -> str | None:
        """A name given as UTF-8 text (``key``) or, in format 1.1, as base64 bytes (``raw_key``)."""
        text = raw.get(key)
        coded = raw.get(raw_key) if self.v11 else None
        if text is not None and coded is not None:
            raise _Invalid(f"{what} has both {key!r} and {raw_key!r}")
        if text is not None:
            if type(text) is not str:
                raise _Invalid(f"{what}.{key} must be a string, not {_brief(text)}")
            if text.isascii():
                if len(text) > limit:
                    raise _Invalid(f"{what}.{key} is longer than {limit} bytes")
                return text
            if len(_text(text, f"{what}.{key}").encode("utf-8")) > limit:
                raise _Invalid(f"{what}.{key} is longer than {limit} bytes")
            return text
        if coded is None:
            return None
        if not isinstance(coded, str):
            raise _Invalid(f"{what}.{raw_key} must be a base64 string, not {_brief(coded)}")
        try:
            data = base64.b64decode(coded, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(f"{what}.{raw_key} is not base64") from None
        if len(data) > limit:
            raise _Invalid(f"{what}.{raw_key} is longer than {limit} bytes")
        name = os.fsdecode(data)
        if is_utf8(name):
            raise _Invalid(f"{what}.{raw_key} is valid UTF-8: it must be given as {key!r}")
        return name

    def _entry(self, raw: Any, index: int) -> Entry:
        """One entry, checked; an error's message says which field, ``_entries`` says which entry."""
        if type(raw) is not dict:
            raise _Invalid(" must be an object")
        path = raw.get("path")
        if not (type(path) is str and path.isascii() and len(path) <= MAX_PATH_BYTES and "rawPath" not in raw):
            path = self._name(raw, "path", "rawPath", "", MAX_PATH_BYTES)  # the general case, and its errors
            if path is None:
                raise _Invalid(" has no 'path'")
        self.path = path
        why = check_relative_path(path)
        if why:
            raise _Invalid(f": {why}")
        if len(path) > 63 and any(len(p) > 63 and len(os.fsencode(p)) > MAX_NAME_BYTES for p in path.split("/")):
            raise _Invalid(f": a component is longer than {MAX_NAME_BYTES} bytes")
        kinds = self.kinds
        if path in kinds:
            raise _Invalid(" appears twice")
        parent = path.rpartition("/")[0]
        if parent and kinds.get(parent) != "dir":
            raise _Invalid(" comes before its directory")
        kind = raw.get("type")
        if kind not in (ENTRY_TYPES if self.v11 else ENTRY_TYPES_1_0):
            raise _Invalid(f" has unknown type {_brief(kind)}")
        meta = self._meta(raw, "")
        for fields, kinds_with in _FIELDS_OF:
            if kind not in kinds_with and not fields.isdisjoint(raw):
                raise _Invalid(f": a {kind} has no {' or '.join(sorted(fields & raw.keys()))}")
        charge = ENTRY_BYTES + 2 * len(path)
        entry: Entry
        if kind == "file":
            size = self._int(raw.get("size"), ".size", 0, INT64_MAX)
            content = raw.get("content")
            if isinstance(content, list):
                if not set(map(type, content)) <= {int}:  # (a JSON true would read as 1)
                    raise _Invalid(".content must list chunk indexes or negative hole lengths")
                try:
                    content = array("q", content)
                except OverflowError:
                    raise _Invalid(".content holds a number outside the signed 64-bit range") from None
            elif not isinstance(content, array):
                raise _Invalid(".content must list chunk indexes or negative hole lengths")
            charge += 8 * len(content)
            entry = Entry(path, "file", meta, size=size, content=content)
        elif kind in ("symlink", "hardlink"):
            limit = MAX_LINK_BYTES if kind == "symlink" else MAX_PATH_BYTES
            target = self._name(raw, "target", "rawTarget", "", limit)
            if kind == "symlink" and (not target or "\x00" in target):
                raise _Invalid(": a symlink needs a target without NUL")
            if kind == "hardlink" and (target is None or kinds.get(target) != "file"):
                raise _Invalid(f": a hardlink must point to an earlier regular file, not {_brief(target)}")
            assert target is not None
            charge += 2 * len(target)
            entry = Entry(path, kind, meta, target=target)
        elif kind in DEVICE_TYPES:
            major = self._int(raw.get("major"), ".major", 0, DEVICE_NUMBER_MAX)
            minor = self._int(raw.get("minor"), ".minor", 0, DEVICE_NUMBER_MAX)
            entry = Entry(path, kind, meta, major=major, minor=minor)
        else:
            entry = Entry(path, kind, meta)
        budget = self.budget
        budget.used += charge
        if budget.used > budget.limit:
            raise _TooLarge(f"{index + 1} entries")
        kinds[path] = kind
        return entry


def _text(value: str, what: str) -> str:
    try:
        return check_text(value, what)
    except JsonError as e:
        raise _Invalid(str(e)) from None


_FIELDS_OF: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (frozenset({"size", "content"}), ("file",)),
    (frozenset({"target", "rawTarget"}), ("symlink", "hardlink")),
    (frozenset({"major", "minor"}), ("chardev", "blockdev")),
)
"""Fields that belong to some entry types: on another type they would mean nothing, so they are refused."""


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _open_frame(
    stored: bytes, start: int, version: tuple[int, int], snapshot_id: str, master: MasterKey | None
) -> memoryview:
    """The body's zstd frame: what follows the version line (format 1), or what it seals (format 2,
    authenticated with the version line and the repository ID as associated data)."""
    if version[0] not in (FORMAT_MAJOR, SEALED_MAJOR):
        raise UnsupportedFormat(
            f"snapshot {snapshot_id} uses repository format {version[0]}.{version[1]}; this Ferry reads "
            f"formats {FORMAT_MAJOR}.x and {SEALED_MAJOR}.x: upgrade Ferry to restore it"
        )
    if version[0] == FORMAT_MAJOR:
        if master is not None:
            raise ManifestInvalid(
                f"snapshot {snapshot_id} is not encrypted, but its repository is: Ferry did not write it there "
                "(forged, or copied from an unencrypted repository); it is refused"
            )
        return memoryview(stored)[start:]
    if master is None:
        raise ManifestInvalid(
            f"snapshot {snapshot_id} is encrypted, but its repository is not: it was copied from another "
            "repository; it is refused"
        )
    opened = master.sealer().open(memoryview(stored)[start:], manifest_aad(stored[:start], master.repository_id))
    if opened is None:
        raise ManifestInvalid(
            f"the manifest of snapshot {snapshot_id} does not authenticate with this repository's key: it was "
            "forged, altered, or copied from another repository; it is refused"
        )
    return memoryview(opened)


def _check_chunks(chunks: ChunkTable, packs: int, overhead: int) -> None:
    """Every record names a pack of the manifest, has lengths within limits (stored no more than zstd's
    worst case for its plain length, plus ``overhead`` for sealing) and lies within a pack a reader can
    address. The whole table is checked through its columns where it can; a record at a time only where
    it must."""
    if not len(chunks):
        return
    pack, offset, stored, plain = chunks.columns()
    if max(pack) >= packs or min(stored) == 0 or min(plain) == 0 or max(plain) > MAX_CHUNK_BYTES:
        for i in range(len(chunks)):
            if pack[i] >= packs:
                raise _Invalid(f"chunk {i} names pack {pack[i]}, but the manifest lists {packs}")
            if stored[i] == 0 or not 0 < plain[i] <= MAX_CHUNK_BYTES:
                raise _Invalid(f"chunk {i} has a stored length of {stored[i]} and a plain length of {plain[i]}")
    if max(offset) > INT64_MAX - 2**32:
        for i in range(len(chunks)):
            if offset[i] + stored[i] > INT64_MAX:
                raise _Invalid(f"chunk {i} lies beyond byte {INT64_MAX} of its pack")
    if overhead and min(stored) <= overhead:
        raise _Invalid(f"a chunk has {min(stored)} stored bytes: a sealed chunk has more than {overhead}")
    if max(stored) > compress_bound(min(plain)) + overhead:
        for i, (s, p) in enumerate(zip(stored, plain, strict=True)):
            if s > compress_bound(p) + overhead:
                raise _Invalid(f"chunk {i} says {s} stored bytes, more than zstd makes of {p} plain bytes")


def _slot_of(slots: array[int], bad: Callable[[int], bool]) -> tuple[int, int]:
    """The first slot whose value is ``bad``, and that value."""
    slot = 0
    for v in slots:
        if v >= 0 and bad(v):
            return slot, v
        slot += 1 if v >= 0 else -v
    raise AssertionError("no such slot")  # pragma: no cover - called only when one exists


def _check_slots(slots: array[int], count: int, size: int, chunk_size: int, chunks: ChunkTable) -> None:
    want = -(-size // chunk_size)
    if count != want:
        raise _Invalid(f"{count} slots do not cover {size} bytes in {chunk_size}-byte chunks")
    if not slots:
        return
    n = len(chunks)
    if max(slots) >= n:
        slot, v = _slot_of(slots, lambda c: c >= n)
        raise _Invalid(f"slot {slot} names chunk {v}, not in the table of {n}")
    plain = chunks.columns().plain
    tail = slots[-1]
    last_slot = want - 1
    if tail >= 0 and plain[tail] != size - last_slot * chunk_size:
        need = size - last_slot * chunk_size
        raise _Invalid(f"slot {last_slot} (the last) needs {need} bytes but chunk {tail} holds {plain[tail]}")
    if plain.count(chunk_size) == n:
        return
    short = {i for i, p in enumerate(plain) if p != chunk_size}
    body = slots[:-1] if tail >= 0 else slots
    if not short.isdisjoint(body):
        slot, v = _slot_of(body, short.__contains__)
        raise _Invalid(f"slot {slot} needs {chunk_size} bytes but chunk {v} holds {plain[v]}")


def _check_contents(entries: list[Entry], chunks: ChunkTable, size: int, stop: Stop | None) -> None:
    """Each file's chunks and holes add up to its size, and the files' sizes to the manifest's."""
    n = len(chunks)
    plain = chunks.columns().plain
    total = 0
    for index, entry in enumerate(entries):
        if not index & 0xFFFF and stop is not None and stop.is_set():
            raise Stopped
        if entry.type != "file":
            continue
        content = entry.content
        length = 0
        if content:
            if max(content) >= n:
                raise _Invalid(f"{_where(index, entry.path)}: content names chunk {max(content)}, not in the table")
            for c in content:
                length += plain[c] if c >= 0 else -c
        if length != entry.size:
            raise _Invalid(f"{_where(index, entry.path)}: content adds up to {length} bytes, size says {entry.size}")
        total += entry.size
    if total != size:
        raise _Invalid(f"files add up to {total} bytes, 'size' says {size}")
