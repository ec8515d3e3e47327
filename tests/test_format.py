"""The manifest format: round trips in 1.1 and 1.0, and every way a reader refuses a manifest."""

from __future__ import annotations

import base64
import json
import os
from array import array
from dataclasses import replace

import blake3
import pytest
import zstandard

from agent.errors import ManifestInvalid, UnsupportedFormat
from agent.repo.chunks import chunk_id, decode_buffer, decode_chunk, encode_chunk
from agent.repo.decoder import decode_manifest
from agent.repo.format import (
    HOLE,
    MAGIC,
    ChunkRecord,
    ChunkTable,
    Entry,
    Manifest,
    Meta,
    check_relative_path,
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


@pytest.mark.parametrize("version", [(1, 1), (1, 0)])
def test_block_manifest_round_trips(version: tuple[int, int]) -> None:
    m = replace(block_manifest(), version=version)
    stored = encode_manifest(m)
    assert stored.startswith(b"ferry-snapshot %d.%d\n" % version)
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert (out.mode, out.size, out.chunk_size, list(out.slot_values())) == ("block", m.size, 4096, [0, HOLE, 0, 1])
    assert list(out.chunks) == list(m.chunks)
    assert out.packs == (PACK,)
    assert out.version == version


def test_hole_runs_are_one_value_in_1_1_and_one_per_slot_in_1_0() -> None:
    table = ChunkTable.from_records([ChunkRecord(b"\x01" * 32, 0, 0, 100, 4096)])
    m = Manifest("block", 4096 * 1000, "2026-11-21T00:00:00Z", (PACK,), table, 4096, array("q", [0, -999]))
    assert list(m.slots) == [0, -999]
    new = decode_manifest(encode_manifest(m), snapshot_id_of(encode_manifest(m)))
    assert list(new.slots) == [0, -999]
    old_stored = encode_manifest(replace(m, version=(1, 0)))
    body = json.loads(zstandard.ZstdDecompressor().decompress(old_stored[old_stored.index(b"\n") + 1 :]))
    assert body["block"]["slots"] == [0] + [-1] * 999, "format 1.0 writes one -1 per hole slot"
    old = decode_manifest(old_stored, snapshot_id_of(old_stored))
    assert list(old.slots) == [0, -999], "and a reader merges them into one run"


def test_a_1_0_manifest_may_not_use_hole_runs() -> None:
    stored = restamp(encode_manifest(block_manifest()), {"block": {"chunkSize": 4096, "slots": [0, -1, 0, 1]}}, b"1.0")
    decode_manifest(stored, snapshot_id_of(stored))
    stored = restamp(stored, {"block": {"chunkSize": 4096, "slots": [0, -2, 1]}}, b"1.0")
    with pytest.raises(ManifestInvalid, match=r"format 1\.0 marks each hole slot with -1"):
        decode_manifest(stored, snapshot_id_of(stored))


@pytest.mark.parametrize("version", [(1, 1), (1, 0)])
def test_filesystem_manifest_round_trips(version: tuple[int, int]) -> None:
    m = replace(tree_manifest(), version=version)
    stored = encode_manifest(m)
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert out.entries == m.entries
    assert out.root == META


def test_1_1_holds_names_that_are_not_utf8_attributes_and_special_files() -> None:
    odd = os.fsdecode(b"caf\xe9")  # Latin-1 bytes, not UTF-8
    rich = Meta(0o4755, 2**32 - 2, 7, -(10**18) * 100, (("security.capability", b"\x01\x00"), ("user.a", b"")))
    entries = (
        Entry("d", "dir", rich),
        Entry(f"d/{odd}", "file", META, size=5000, content=(0, -1000)),
        Entry("d/link", "symlink", META, target=f"../{odd}"),
        Entry("d/h", "hardlink", META, target=f"d/{odd}"),
        Entry("d/fifo", "fifo", META),
        Entry("d/null", "chardev", META, major=1, minor=3),
        Entry("d/disk", "blockdev", META, major=259, minor=2**20),
    )
    m = tree_manifest(entries)
    stored = encode_manifest(m)
    body = json.loads(zstandard.ZstdDecompressor().decompress(stored[stored.index(b"\n") + 1 :]))
    assert body["entries"][1]["rawPath"] == base64.b64encode(b"d/caf\xe9").decode()
    assert "path" not in body["entries"][1]
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert out.entries == entries


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"path": "d/x", "rawPath": base64.b64encode(b"d/\xff").decode()}, "has both 'path' and 'rawPath'"),
        ({"rawPath": base64.b64encode(b"d/plain").decode()}, "is valid UTF-8: it must be given as 'path'"),
        ({"rawPath": "!!"}, "rawPath is not base64"),
        ({"path": "d/\ud800"}, "lone surrogate"),
        ({"type": "socket"}, "unknown type"),
        ({"type": "chardev"}, r"\.major must be an integer"),
        ({"xattrs": [["user.b", "AA=="], ["user.a", "AA=="]]}, "sorted by name"),
        ({"xattrs": [["noprefix", "AA=="]]}, "is not an extended attribute name"),
        ({"xattrs": [["user.a", base64.b64encode(bytes(65537)).decode()]]}, "longer than 65536 bytes"),
        ({"xattrs": {"user.a": "AA=="}}, r"xattrs must be a list"),
        ({"uid": 2**32 - 1}, r"\.uid must be an integer in \[0, 4294967294\]"),
        ({"mtime": (2**63) * 10**9}, r"\.mtime must be an integer"),
        ({"path": "d/" + "n" * 256}, "a component is longer than 255 bytes"),
        ({"size": 0, "content": []}, "a dir has no content or size"),
        ({"target": "x"}, "a dir has no target"),
        ({"major": 1}, "a dir has no major"),
    ],
)
def test_entries_of_1_1_are_checked_field_by_field(edit: dict[str, object], message: str) -> None:
    stored = encode_manifest(tree_manifest((Entry("d", "dir", META), Entry("d/x", "dir", META)), size=0))
    line_end = stored.index(b"\n") + 1
    body = json.loads(zstandard.ZstdDecompressor().decompress(stored[line_end:]))
    entry = body["entries"][1]
    if "rawPath" in edit and "path" not in edit:
        del entry["path"]
    entry.update(edit)
    stored = restamp(stored, {"entries": body["entries"]})
    with pytest.raises(ManifestInvalid, match=message) as refused:
        decode_manifest(stored, snapshot_id_of(stored))
    assert "entries[1]" in str(refused.value), "the message names the entry"


def test_1_0_ignores_the_fields_1_1_added_and_refuses_its_values() -> None:
    stored = encode_manifest(replace(tree_manifest((Entry("d", "dir", META),), size=0), version=(1, 0)))
    with_xattrs = restamp(stored, {"root": {"mode": 0o755, "uid": 0, "gid": 0, "mtime": 0, "xattrs": "ignored"}})
    assert decode_manifest(with_xattrs, snapshot_id_of(with_xattrs)).root == Meta(0o755, 0, 0, 0)
    fifo = restamp(stored, {"entries": [{"path": "p", "type": "fifo", "mode": 0, "uid": 0, "gid": 0, "mtime": 0}]})
    with pytest.raises(ManifestInvalid, match="unknown type 'fifo'"):
        decode_manifest(fifo, snapshot_id_of(fifo))
    late = restamp(stored, {"root": {"mode": 0, "uid": 0, "gid": 0, "mtime": 2**63}})
    with pytest.raises(ManifestInvalid, match="mtime"):
        decode_manifest(late, snapshot_id_of(late))


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
    stored = restamp(encode_manifest(block_manifest()), version=b"3.0")
    with pytest.raises(UnsupportedFormat, match=r"format 3\.0.*upgrade Ferry"):
        decode_manifest(stored, snapshot_id_of(stored))


@pytest.mark.parametrize("version", [b"01.1", b"1.01", b"1.", b".1", b"1.1.0", b"1234567.0"])
def test_a_version_line_has_one_spelling(version: bytes) -> None:
    stored = restamp(encode_manifest(block_manifest()), version=version)
    with pytest.raises(ManifestInvalid, match=r"version line is malformed|does not start with"):
        decode_manifest(stored, snapshot_id_of(stored))


def test_newer_minor_version_is_read() -> None:
    stored = restamp(encode_manifest(block_manifest()), {"newField": [1, {"a": [None, True, 1.5]}]}, version=b"1.7")
    assert decode_manifest(stored, snapshot_id_of(stored)).version == (1, 7)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"mode": "tape"}, "unknown volume mode"),
        ({"size": -1}, "'size'"),
        ({"packs": ["nothex"]}, "is not a pack name"),
        ({"chunks": "!!!"}, "base64"),
        ({"block": {"chunkSize": 4096, "slots": [0, -1]}}, "do not cover"),
        ({"block": {"chunkSize": 4096, "slots": [0, -1, 0, 7]}}, "not in the table"),
        ({"block": {"chunkSize": 4096, "slots": [1, -1, 0, 1]}}, "needs 4096 bytes"),
        ({"block": {"chunkSize": 4096, "slots": [0, -4]}}, "5 slots do not cover"),
        ({"source": ["a", "list"]}, "expected '{' to open 'source'"),
        ({"source": {"path": 7}}, r"'source' field 'path' must be a string"),
        ({"size": 2**63}, r"beyond the largest block volume"),
        ({"created": 20261121}, "'created' must be a string"),
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
        ((Entry("s", "symlink", META, target=""),), "a symlink needs a target without NUL"),
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


def test_an_entry_too_long_for_one_piece_is_read_field_by_field() -> None:
    """A large file's chunk list (here 30,000 items, 200 KB of JSON) is read as a stream, checked as the
    short ones are."""
    table = ChunkTable.from_records([ChunkRecord(b"\x03" * 32, 0, 0, 10, 4000)])
    content = tuple(0 if i % 2 else -(i + 1) for i in range(30_000))
    size = sum(4000 if c == 0 else -c for c in content)
    big = Entry("big", "file", Meta(0o600, 1, 2, 3, (("user.x", b"y"),)), size=size, content=content)
    m = replace(tree_manifest((big,), size=size), chunks=table)
    stored = encode_manifest(m)
    assert decode_manifest(stored, snapshot_id_of(stored)).entries == (big,)
    line_end = stored.index(b"\n") + 1
    body = json.loads(zstandard.ZstdDecompressor().decompress(stored[line_end:]))
    body["entries"][0]["later"] = {"nested": [1, 2]}
    body["entries"][0]["mode"] = 0o10000
    stored = restamp(stored, {"entries": body["entries"]})
    with pytest.raises(ManifestInvalid, match=r"entries\[0\] \(big\)\.mode must be an integer in \[0, 4095\]"):
        decode_manifest(stored, snapshot_id_of(stored))
