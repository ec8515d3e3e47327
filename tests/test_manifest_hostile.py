"""Manifests made to hurt the reader: each is refused in one line naming the snapshot and the field, or
read in bounded memory; none raises anything but Ferry's own errors. Peak memory is measured in a fresh
process (``bench.hostile``), so the reader's own allocations are what is counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from agent.errors import ManifestInvalid, ManifestTooLarge
from agent.repo.decoder import decode_manifest
from agent.repo.format import MAGIC, snapshot_id_of
from bench import hostile

MiB = 1024 * 1024
EMPTY_BLOCK = (
    '{"mode":"block","size":0,"created":"2026-11-29T00:00:00Z","source":{},"packs":[],"chunks":"",'
    '"block":{"chunkSize":4096,"slots":[]}}'
)
TREE = (
    '{"mode":"filesystem","size":0,"created":"2026-11-29T00:00:00Z","source":{},"packs":[],"chunks":"",'
    '"root":{"mode":493,"uid":0,"gid":0,"mtime":0},"entries":[ENTRY]}'
)


def stored(body: bytes | str, version: bytes = b"1.1") -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return MAGIC + version + b"\n" + zstandard.ZstdCompressor(write_content_size=True).compress(data)


def refused(stored_bytes: bytes, match: str) -> str:
    sid = snapshot_id_of(stored_bytes)
    with pytest.raises(ManifestInvalid, match=match) as caught:
        decode_manifest(stored_bytes, sid)
    message = str(caught.value)
    assert sid in message
    assert "\n" not in message
    return message


def entry(fields: str) -> str:
    return TREE.replace("ENTRY", "{" + fields + "}")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('{"mode":"block","future":' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than 32 deep"),
        (
            entry('"path":"a","type":"dir","mode":0,"uid":0,"gid":0,"mtime":0,"x":' + "[" * 5000 + "]" * 5000),
            "nested too deeply",
        ),
        ('{"size":' + "9" * 5000 + "}", "'size' has more than 40 digits"),
        (entry('"path":"a","type":"dir","mode":0,"uid":0,"gid":0,"mtime":' + "9" * 5000), "thousands of digits"),
        (entry('"path":"a","type":"dir","mode":0,"uid":0,"gid":0,"mtime":' + "9" * 60), r"\.mtime must be"),
        ('{"source":["a"]}', "expected '{' to open 'source'"),
        # Found by the fuzzer: a key holding a line feed made a two-line message.
        ('{"source":{"\\n":null}}', r"'source' field '\\n' must be a string"),
        ('{"packs":"' + "ab" * 32 + '"}', "expected '\\[' to open 'packs'"),
        ('{"entries":{}}', "expected '\\[' to open 'entries'"),
        (TREE.replace("ENTRY", '["a"]'), r"entries\[0\] must be an object"),
        (
            entry('"path":"a","type":"file","mode":0,"uid":0,"gid":0,"mtime":0,"size":0,"content":"x"'),
            "content must list",
        ),
        (entry('"path":"a","type":"dir","mode":"0755","uid":0,"gid":0,"mtime":0'), r"\.mode must be an integer"),
        (entry('"path":"a","type":"dir","mode":0,"uid":0.0,"gid":0,"mtime":0'), r"\.uid must be an integer"),
        (entry('"path":"a","type":"dir","mode":0,"uid":NaN,"gid":0,"mtime":0'), r"\.uid must be an integer"),
        (entry('"path":"a\\ud800b","type":"dir","mode":0,"uid":0,"gid":0,"mtime":0'), "lone surrogate"),
        (entry('"path":"a","path":"b","type":"dir","mode":0,"uid":0,"gid":0,"mtime":0'), "appears twice"),
        ('{"mode":"block","mode":"block"}', "appears twice"),
        (EMPTY_BLOCK + " {}", "text follows the JSON document"),
        (EMPTY_BLOCK[:-1], "is not closed"),
        (EMPTY_BLOCK.replace('"chunks":""', '"chunks":"AA\\/A"'), "base64 text holds an escape"),
        (EMPTY_BLOCK.replace('"created":"2026-11-29T00:00:00Z"', '"created":"' + "x" * 100 + '"'), "longer than 64"),
        ('{"future":"' + "x" * (2 * MiB) + '"}', "longer than 1048576 characters"),
        ("[]", "expected '{' to open the body"),
        ("", "expected '{' to open the body"),
        ('{"mode":"block"}', "field 'size' is missing"),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else None,
)
def test_malformed_bodies_are_refused_in_one_line(body: str, match: str) -> None:
    refused(stored(body), match)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (EMPTY_BLOCK.replace("2026", "\xe9").encode("latin-1"), "not UTF-8"),
        (EMPTY_BLOCK.encode("utf-16"), "not UTF-8|byte order mark"),
        (b"\xef\xbb\xbf" + EMPTY_BLOCK.encode(), "byte order mark"),
    ],
)
def test_a_body_that_is_not_utf8_is_refused(raw: bytes, match: str) -> None:
    refused(stored(raw), match)


def test_exactly_one_frame_with_its_size_declared() -> None:
    one = stored(EMPTY_BLOCK)
    decode_manifest(one, snapshot_id_of(one))
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(EMPTY_BLOCK.encode())
    refused(MAGIC + b"1.1\n" + frame + frame, "more than one zstd frame")
    refused(MAGIC + b"1.1\n" + frame + b"\x00", "more than one zstd frame")
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(EMPTY_BLOCK.encode())
    refused(MAGIC + b"1.1\n" + unsized, "does not declare the body's size")
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"junk" + frame
    refused(MAGIC + b"1.1\n" + skippable, "not a zstd frame")
    refused(MAGIC + b"1.1\n" + frame[:-3], "truncated|does not decompress")
    lying = bytearray(frame)
    lying[5] += 1  # the declared size (single-segment frame header) no longer matches the content
    refused(MAGIC + b"1.1\n" + bytes(lying), "declares|decompress")


def test_unknown_fields_of_a_later_minor_version_are_skipped() -> None:
    body = EMPTY_BLOCK[:-1] + ',"later":{"a":[1,-2.5e3,true,false,null,"s"],"b":{}}}'
    m = decode_manifest(stored(body, b"1.9"), snapshot_id_of(stored(body, b"1.9")))
    assert m.version == (1, 9)


def decode_in_fresh_process(tmp_path: Path, stored_bytes: bytes) -> dict[str, object]:
    path = tmp_path / "manifest"
    path.write_bytes(stored_bytes)
    out = subprocess.run(
        [sys.executable, "-m", "bench.hostile", "decode", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize(
    ("case", "n", "outcome", "peak_mib"),
    [
        ("whitespace", 512 * MiB, "read: block, 0 bytes", 80),
        ("hole_slots", 20_000_000, "read: block, 81920000000 bytes, 1 slot values", 80),
        ("long_string", 64 * MiB, "refused: 'created' is longer than 64", 80),
        ("nesting", 1_000_000, "refused: field 'future' is nested more than 32 deep", 80),
        ("huge_chunks", 1000, "refused: chunk 0 says 4294967295 stored bytes", 80),
    ],
)
def test_small_manifests_that_expand_cost_little_memory(
    tmp_path: Path, case: str, n: int, outcome: str, peak_mib: int
) -> None:
    result = decode_in_fresh_process(tmp_path, getattr(hostile, case)(n))
    assert str(result["outcome"]).startswith(outcome), result
    assert int(result["stored_bytes"]) < 64 * 1024  # type: ignore[call-overload]
    assert float(result["peak_rss_MiB"]) < peak_mib, result  # type: ignore[arg-type]


def test_a_manifest_describing_more_than_the_memory_limit_is_refused() -> None:
    s = hostile.alternating_slots(2_000_000)  # 16 MB of slot values
    with pytest.raises(ManifestTooLarge, match=r"describes 1\d+ slots: more than the 8 MiB") as caught:
        decode_manifest(s, snapshot_id_of(s), memory_bytes=8 * MiB)
    assert "--manifest-memory" in str(caught.value)
    assert len(decode_manifest(s, snapshot_id_of(s), memory_bytes=64 * MiB).slots) == 2_000_000
