"""Property: every manifest the writer can produce, over the whole range of every value, reads back
equal; nothing the writer makes is refused by the reader (hypothesis)."""

from __future__ import annotations

import os
from array import array

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.repo.decoder import decode_manifest
from agent.repo.format import (
    INT64_MAX,
    MAX_CHUNK_BYTES,
    MTIME_MAX,
    MTIME_MIN,
    UID_MAX,
    ChunkRecord,
    ChunkTable,
    Entry,
    Manifest,
    Meta,
    compress_bound,
    encode_manifest,
    snapshot_id_of,
)

PACK = "cd" * 32
SETTINGS = settings(
    max_examples=int(os.environ.get("FERRY_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    derandomize="FERRY_PROPERTY_EXAMPLES" not in os.environ,  # repeatable in make test; wider when asked
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _component(raw: bytes) -> bool:
    return b"/" not in raw and b"\x00" not in raw and raw not in (b".", b"..")


names = (
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=12),
        st.binary(min_size=1, max_size=12),  # any bytes, UTF-8 or not
    )
    .map(lambda n: os.fsdecode(n) if isinstance(n, bytes) else n)
    .filter(lambda n: _component(os.fsencode(n)))
)

xattr_names = st.builds(
    lambda ns, rest: f"{ns}.{rest}",
    st.sampled_from(["user", "trusted", "security", "system"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20),
)
xattr_lists = st.dictionaries(xattr_names, st.binary(max_size=300), max_size=4).map(lambda d: tuple(sorted(d.items())))

metas = st.builds(
    Meta,
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, UID_MAX),
    gid=st.integers(0, UID_MAX),
    mtime_ns=st.integers(MTIME_MIN, MTIME_MAX),
    xattrs=xattr_lists,
)


@st.composite
def tables(draw: st.DrawFn) -> ChunkTable:
    n = draw(st.integers(0, 6))
    records = []
    for i in range(n):
        plain = draw(st.integers(1, MAX_CHUNK_BYTES))
        stored = draw(st.integers(1, compress_bound(plain)))
        offset = draw(st.integers(0, INT64_MAX - stored))
        records.append(ChunkRecord(i.to_bytes(32, "big"), 0, offset, stored, plain))
    return ChunkTable.from_records(records)


@st.composite
def trees(draw: st.DrawFn) -> Manifest:
    table = draw(tables())
    plain = table.columns().plain
    entries: list[Entry] = []
    dirs = [""]
    files: list[str] = []
    used: set[str] = set()
    total = 0
    for _ in range(draw(st.integers(0, 12))):
        parent = draw(st.sampled_from(dirs))
        name = draw(names)
        path = f"{parent}/{name}" if parent else name
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(["dir", "file", "symlink", "hardlink", "fifo", "chardev", "blockdev"]))
        meta = draw(metas)
        if kind == "dir":
            dirs.append(path)
            entries.append(Entry(path, "dir", meta))
        elif kind == "file" or (kind == "hardlink" and not files):
            content = array("q")
            size = 0
            for _ in range(draw(st.integers(0, 4))):
                if len(table) and draw(st.booleans()):
                    c = draw(st.integers(0, len(table) - 1))
                    grow = plain[c]
                else:
                    grow = draw(st.integers(1, 2**40))
                    c = -grow
                if size + grow > INT64_MAX:
                    break
                content.append(c)
                size += grow
            if draw(st.booleans()) and size < INT64_MAX:  # a file of the largest size Linux allows
                content.append(-(INT64_MAX - size))
                size = INT64_MAX
            files.append(path)
            total += size
            entries.append(Entry(path, "file", meta, size=size, content=content))
        elif kind == "symlink":
            target = draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\x00" not in b))
            entries.append(Entry(path, "symlink", meta, target=os.fsdecode(target)))
        elif kind == "hardlink":
            entries.append(Entry(path, "hardlink", meta, target=draw(st.sampled_from(files))))
        elif kind == "fifo":
            entries.append(Entry(path, "fifo", meta))
        else:
            major, minor = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
            entries.append(Entry(path, kind, meta, major=major, minor=minor))
    return Manifest(
        mode="filesystem",
        size=total,
        created="2026-11-29T00:00:00Z",
        packs=(PACK,) if len(table) else (),
        chunks=table,
        root=draw(metas),
        entries=tuple(entries),
        source={"path": draw(st.text(max_size=30)), "host": "h"},
    )


@st.composite
def blocks(draw: st.DrawFn) -> Manifest:
    chunk_size = draw(st.sampled_from([1, 4096, 4 * 1024 * 1024, MAX_CHUNK_BYTES]))
    max_slots = INT64_MAX // chunk_size
    slots = array("q")
    count = 0
    records = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            run = draw(st.integers(1, max(1, max_slots - count - 1)))
            if count + run >= max_slots:
                break
            if slots and slots[-1] < 0:
                slots[-1] -= run
            else:
                slots.append(-run)
            count += run
        else:
            records.append(ChunkRecord(len(records).to_bytes(32, "big"), 0, 0, 1, chunk_size))
            slots.append(len(records) - 1)
            count += 1
    tail = draw(st.integers(0, chunk_size - 1)) if count and slots[-1] < 0 else 0
    size = count * chunk_size - tail
    return Manifest(
        mode="block",
        size=size,
        created="2026-11-29T00:00:00Z",
        packs=(PACK,) if records else (),
        chunks=ChunkTable.from_records(records),
        chunk_size=chunk_size,
        slots=slots,
    )


@SETTINGS
@given(trees())
def test_every_filesystem_manifest_reads_back_equal(m: Manifest) -> None:
    stored = encode_manifest(m)
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert out.entries == m.entries
    assert out.root == m.root
    assert (out.size, out.source, list(out.chunks)) == (m.size, m.source, list(m.chunks))


@SETTINGS
@given(blocks())
@example(  # found by this test: the reader refused more than 2**62 slots, which 1-byte slots can have
    Manifest("block", 2**62 + 1, "2026-11-29T00:00:00Z", (), ChunkTable(b""), 1, array("q", [-(2**62 + 1)]))
)
def test_every_block_manifest_reads_back_equal(m: Manifest) -> None:
    stored = encode_manifest(m)
    out = decode_manifest(stored, snapshot_id_of(stored))
    assert (out.size, out.chunk_size, list(out.slots)) == (m.size, m.chunk_size, list(m.slots))
