"""Fuzzing the manifest and chunk readers (hypothesis): whatever bytes a repository holds, reading them
ends in a manifest or in one of Ferry's own errors, within the memory limit, and a chunk decode ends in
verified bytes or a reason, never an exception.

The run in ``make test`` is short and repeatable (``derandomize``). A longer, random run:

    FERRY_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/test_fuzz_manifest.py -p no:cacheprovider

Every input a run finds that breaks a property becomes an ``@example`` here.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from array import array
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.errors import FerryError
from agent.repo.chunks import chunk_id, decode_buffer, decode_chunk, encode_chunk
from agent.repo.decoder import decode_manifest
from agent.repo.format import MAGIC, ChunkRecord, ChunkTable, Entry, Manifest, Meta, encode_manifest, snapshot_id_of

EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "400"))
LONG = "FERRY_FUZZ_EXAMPLES" in os.environ
pytestmark = pytest.mark.timeout(120 + EXAMPLES // 10)  # a longer run gets the time it needs
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    database=None,
    suppress_health_check=list(HealthCheck),
)
LIMIT = 32 * 1024 * 1024
"""The manifest memory limit under fuzzing; Python's peak allocation while reading stays near it."""

META = Meta(0o644, 1000, 1000, 1_767_225_600_123_456_789, (("user.k", b"v"),))
TABLE = ChunkTable.from_records([ChunkRecord(bytes([i]) * 32, i % 2, i * 1000, 900, 4096) for i in range(4)])
SEEDS: list[Manifest] = [
    Manifest(
        "block",
        4096 * 6 - 100,
        "2026-11-29T00:00:00Z",
        ("ab" * 32, "cd" * 32),
        TABLE,
        4096,
        array("q", [0, -2, 1, 2, 3]),
    ),
    Manifest(
        "filesystem",
        8192 + 10,
        "2026-11-29T00:00:00Z",
        ("ab" * 32, "cd" * 32),
        TABLE,
        root=META,
        entries=(
            Entry("d", "dir", META),
            Entry("d/f", "file", META, size=8192 + 10, content=(0, -10, 1)),
            Entry("d/" + os.fsdecode(b"\xff"), "symlink", META, target="f"),
            Entry("d/h", "hardlink", META, target="d/f"),
            Entry("d/p", "fifo", META),
            Entry("d/c", "chardev", META, major=1, minor=3),
        ),
        source={"path": "/src", "host": "h"},
    ),
]
BODIES = [json.loads(zstandard.ZstdDecompressor().decompress(encode_manifest(m).split(b"\n", 1)[1])) for m in SEEDS]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def read(stored: bytes) -> None:
    """The property: a manifest or a FerryError, and Python's peak allocation bounded."""
    tracemalloc.start()
    message = ""
    try:
        decode_manifest(stored, snapshot_id_of(stored), memory_bytes=LIMIT)
    except FerryError as e:
        message = str(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert "\n" not in message, "an error is one line"
    assert peak < 3 * LIMIT + (8 << 20), f"reading took {peak} bytes"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    body[path[0]] = _set(body[path[0]], path[1:], value)
    return body


@FUZZ
@given(st.integers(0, len(SEEDS) - 1), st.data(), json_values, st.sampled_from(["1.0", "1.1", "1.4"]))
def test_any_field_replaced_by_any_json_value(seed: int, data: st.DataObject, value: Any, version: str) -> None:
    body = json.loads(json.dumps(BODIES[seed]))
    path = data.draw(st.sampled_from(_paths(body)))
    body = _set(body, path, value)
    text = json.dumps(body).encode()
    read(MAGIC + version.encode() + b"\n" + zstandard.ZstdCompressor(write_content_size=True).compress(text))


@FUZZ
@given(st.integers(0, len(SEEDS) - 1), st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=4)), max_size=4))
def test_any_text_of_the_body_changed(seed: int, edits: list[tuple[int, bytes]]) -> None:
    text = bytearray(json.dumps(BODIES[seed], ensure_ascii=False).encode())
    for place, new in edits:
        at = place % (len(text) + 1)
        text[at : at + len(new)] = new
    read(MAGIC + b"1.1\n" + zstandard.ZstdCompressor(write_content_size=True).compress(bytes(text)))


@FUZZ
@given(st.integers(0, len(SEEDS) - 1), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6))
def test_any_stored_byte_changed(seed: int, flips: list[tuple[int, int]]) -> None:
    stored = bytearray(encode_manifest(SEEDS[seed]))
    for at, value in flips:
        stored[at % len(stored)] = value
    read(bytes(stored))


@FUZZ
@given(st.binary(max_size=200))
@example(MAGIC + b"1.1\n" + b"\x28\xb5\x2f\xfd")
def test_any_bytes_at_all(raw: bytes) -> None:
    read(raw)
    read(MAGIC + b"1.1\n" + raw)


@FUZZ
@given(
    st.binary(min_size=1, max_size=5000),
    st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), max_size=4),
    st.integers(-8, 8),
)
def test_a_chunk_decodes_to_verified_bytes_or_a_reason(plain: bytes, flips: list[tuple[int, int]], skew: int) -> None:
    frame = bytearray(encode_chunk(plain, 3))
    for at, value in flips:
        frame[at % len(frame)] = value
    length = max(1, len(plain) + skew)
    out = decode_buffer(length + 8192)
    guard = bytes(out[length : length + 4096])
    result = decode_chunk(memoryview(bytes(frame)), length, chunk_id(plain), out)
    if isinstance(result, str):
        assert result
    else:
        assert bytes(result) == plain, "only the verified bytes come back"
    assert bytes(out[length : length + 4096]) == guard, "nothing is written past the chunk's length"
