"""The manifest format: round trips, and every way a reader refuses a manifest."""

from __future__ import annotations

import json
from array import array
from dataclasses import replace

import blake3
import pytest
import zstandard

from agent.errors import ManifestInvalid, UnsupportedFormat
from agent.repo.chunks import chunk_id, decode_buffer, decode_chunk, encode_chunk
from agent.repo.format import (
    HOLE,
    MAGIC,
    ChunkRecord,
    ChunkTable,
    Entry,
    Manifest,
    Meta,
    check_relative_path,
    decode_manifest,
    encode_manifest,
    snapshot_id_of,
)

PACK = "ab" * 32
META = Meta(mode=0o644, uid=0, gid=0, mtime_ns=1_700_000_000_000_000_001)


def block_manifest() -> Manifest:
    table = ChunkTable.from_records(
        [ChunkRecord(b"\x01" * 32, 0, 0, 100, 4096), ChunkRecord(b"\x02" * 32, 0, 100, 50, 1000)]
    )
    return Manifest(
        mode="block",
        size=4096 * 3 + 1000,
        created="2026-11-21T00:00:00Z",
        packs=(PACK,),
        chunks=table,
        chunk_size=4096,
        slots=array("q", [0, HOLE, 0, 1]),
        source={"path": "/dev/x"},
    )


def tree_manifest(entries: tuple[Entry, ...] | None = None, size: int = 5000) -> Manifest:
    table = ChunkTable.from_records([ChunkRecord(b"\x03" * 32, 0, 0, 10, 4000)])
    default = (
        Entry("d", "dir", META),
        Entry("d/f", "file", META, size=5000, content=(0, -1000)),
        Entry("d/l", "symlink", META, target="../outside/is/just/text"),
        Entry("d/h", "hardlink", META, target="d/f"),
    )
    return Manifest(
        mode="filesystem",
        size=size,
        created="2026-11-21T00:00:00Z",
        packs=(PACK,),
        chunks=table,
        root=META,
        entries=default if entries is None else entries,
    )


def restamp(stored: bytes, body_edit: dict[str, object] | None = None, version: bytes | None = None) -> bytes:
    """Rewrite a stored manifest (body fields and/or version line) with a valid frame; the caller
    re-hashes it, so only the edited content is wrong, not the hash."""
    line_end = stored.index(b"\n") + 1
    body = json.loads(zstandard.ZstdDecompressor().decompress(stored[line_end:]))
    body.update(body_edit or {})
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(json.dumps(body).encode())
    head = stored[:line_end] if version is None else MAGIC + version + b"\n"
    return head + frame


def test_block_manifest_round_trips() -> None:
    m = block_manifest()
    stored = encode_manifest(m)
    assert stored.startswith(b"ferry-snapshot 1.0\n")
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert (out.mode, out.size, out.chunk_size, list(out.slots)) == ("block", m.size, 4096, [0, HOLE, 0, 1])
    assert list(out.chunks) == list(m.chunks)
    assert out.packs == (PACK,)


def test_filesystem_manifest_round_trips() -> None:
    m = tree_manifest()
    stored = encode_manifest(m)
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert out.entries == m.entries
    assert out.root == META


def test_snapshot_id_is_the_blake3_of_the_stored_bytes() -> None:
    stored = encode_manifest(block_manifest())
    assert snapshot_id_of(stored) == blake3.blake3(stored).hexdigest()


@pytest.mark.parametrize("damage", ["truncate", "flip", "append"])
def test_damaged_manifest_is_refused(damage: str) -> None:
    stored = encode_manifest(block_manifest())
    sid = snapshot_id_of(stored)
    bad = {
        "truncate": stored[:-7],
        "flip": stored[:40] + bytes([stored[40] ^ 0x20]) + stored[41:],
        "append": stored + b"\n",
    }[damage]
    with pytest.raises(ManifestInvalid, match="does not hash to that ID"):
        decode_manifest(bad, sid)


def test_unknown_major_version_is_refused_with_upgrade_advice() -> None:
    stored = restamp(encode_manifest(block_manifest()), version=b"2.0")
    with pytest.raises(UnsupportedFormat, match=r"format 2\.0.*upgrade Ferry"):
        decode_manifest(stored, snapshot_id_of(stored))


def test_newer_minor_version_is_read() -> None:
    stored = restamp(encode_manifest(block_manifest()), {"newField": [1, 2]}, version=b"1.7")
    assert decode_manifest(stored, snapshot_id_of(stored)).version == (1, 7)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"mode": "tape"}, "unknown volume mode"),
        ({"size": -1}, "'size'"),
        ({"packs": ["nothex"]}, "pack names"),
        ({"chunks": "!!!"}, "base64"),
        ({"block": {"chunkSize": 4096, "slots": [0, -1]}}, "do not cover"),
        ({"block": {"chunkSize": 4096, "slots": [0, -1, 0, 7]}}, "not in the table"),
        ({"block": {"chunkSize": 4096, "slots": [1, -1, 0, 1]}}, "needs 4096 bytes"),
    ],
)
def test_malformed_block_manifest_is_refused(edit: dict[str, object], message: str) -> None:
    stored = restamp(encode_manifest(block_manifest()), edit)
    with pytest.raises(ManifestInvalid, match=message):
        decode_manifest(stored, snapshot_id_of(stored))


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../escape", "'..'"),
        ("/etc/passwd", "absolute"),
        ("d/../../x", "'..'"),
        ("d//x", "empty component"),
        ("./x", "'.'"),
        ("", "empty path"),
        ("d/\x00", "NUL"),
    ],
)
def test_entries_that_would_escape_the_target_are_refused(path: str, why: str) -> None:
    entries = (Entry("d", "dir", META), Entry(path, "file", META, size=0))
    stored = encode_manifest(tree_manifest(entries, size=0))
    with pytest.raises(ManifestInvalid, match=why):
        decode_manifest(stored, snapshot_id_of(stored))
    assert check_relative_path(path) is not None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((Entry("f", "file", META, size=10, content=(0,)),), "adds up to 4000"),
        ((Entry("a/f", "file", META, size=0),), "before its directory"),
        ((Entry("f", "file", META, size=0), Entry("f/g", "file", META, size=0)), "before its directory"),
        ((Entry("h", "hardlink", META, target="nope"),), "earlier regular file"),
        ((Entry("d", "dir", META), Entry("d", "dir", META)), "twice"),
        ((Entry("s", "symlink", META, target=""),), "empty or invalid target"),
    ],
)
def test_malformed_tree_manifest_is_refused(entries: tuple[Entry, ...], message: str) -> None:
    size = sum(e.size for e in entries)
    stored = encode_manifest(tree_manifest(entries, size=size))
    with pytest.raises(ManifestInvalid, match=message):
        decode_manifest(stored, snapshot_id_of(stored))


def test_tree_size_must_match_files() -> None:
    stored = encode_manifest(replace(tree_manifest(), size=1))
    with pytest.raises(ManifestInvalid, match="files add up to 5000"):
        decode_manifest(stored, snapshot_id_of(stored))


def test_chunk_codec_verifies_everything() -> None:
    data = b"ferry " * 100_000
    frame = encode_chunk(data, 3)
    cid = chunk_id(data)
    buf = decode_buffer(len(data))
    ok = decode_chunk(memoryview(frame), len(data), cid, buf)
    assert isinstance(ok, memoryview)
    assert bytes(ok) == data
    flipped = bytearray(frame)
    flipped[len(frame) // 2] ^= 0x01
    assert isinstance(decode_chunk(memoryview(bytes(flipped)), len(data), cid, buf), str)
    assert isinstance(decode_chunk(memoryview(frame[:-3]), len(data), cid, buf), str)
    assert "declares" in str(decode_chunk(memoryview(frame), len(data) - 1, cid, buf))
    assert decode_chunk(memoryview(frame), len(data), b"\x00" * 32, buf) == "BLAKE3 mismatch"
    assert decode_chunk(memoryview(b"garbage!" * 4), len(data), cid, buf) == "not a zstd frame"
