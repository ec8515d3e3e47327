"""Planning at scale: the compact plan gives exactly what the straightforward one did, in bounded memory,
and the chunk table's column checks refuse what the record-by-record checks refused."""

from __future__ import annotations

import base64
import json
import random
import tracemalloc
from array import array
from pathlib import Path

import pytest
import zstandard

from agent.errors import ManifestInvalid
from agent.pipeline.plan import ChunkJob, FetchRange, Place, Plan, PlannedRanges, plan_block, plan_tree
from agent.repo.decoder import decode_manifest
from agent.repo.format import (
    HOLE,
    ChunkRecord,
    ChunkTable,
    Entry,
    Manifest,
    Meta,
    encode_manifest,
    snapshot_id_of,
)
from agent.settings import KiB, MiB, RestoreSettings
from bench import planning

GiB = 1024 * MiB
META = Meta(mode=0o644, uid=0, gid=0, mtime_ns=0)
SETTINGS = [
    RestoreSettings(),
    RestoreSettings(max_range_bytes=64 * KiB, max_gap_bytes=0),
    RestoreSettings(max_range_bytes=96 * KiB, max_gap_bytes=3000),
]


# ----------------------------------------------------------------------------------------------------------
# The reference: planning as it was written first, one object per chunk and per place.


def reference_block(manifest: Manifest, settings: RestoreSettings) -> Plan:
    cs = manifest.chunk_size
    places: dict[int, list[Place]] = {}
    holes: list[tuple[int, int, int]] = []
    for slot, chunk in enumerate(manifest.slot_values()):
        offset = slot * cs
        if chunk == HOLE:
            length = min(cs, manifest.size - offset)
            if holes and holes[-1][1] + holes[-1][2] == offset:
                holes[-1] = (0, holes[-1][1], holes[-1][2] + length)
            else:
                holes.append((0, offset, length))
        else:
            places.setdefault(chunk, []).append((0, offset))
    return reference_plan(manifest, places, holes, settings)


def reference_tree(manifest: Manifest, settings: RestoreSettings) -> Plan:
    places: dict[int, list[Place]] = {}
    holes: list[tuple[int, int, int]] = []
    slot = 0
    for entry in manifest.entries:
        if entry.type != "file":
            continue
        offset = 0
        for c in entry.content:
            if c < 0:
                holes.append((slot, offset, -c))
                offset -= c
            else:
                places.setdefault(c, []).append((slot, offset))
                offset += manifest.chunks[c].plain
        slot += 1
    return reference_plan(manifest, places, holes, settings)


def reference_plan(
    manifest: Manifest, places: dict[int, list[Place]], holes: list[tuple[int, int, int]], settings: RestoreSettings
) -> Plan:
    by_pack: dict[int, list[ChunkJob]] = {}
    max_plain = 0
    for index, where in places.items():
        rec = manifest.chunks[index]
        by_pack.setdefault(rec.pack, []).append(ChunkJob(index, rec.id, rec.offset, rec.stored, rec.plain, where))
        max_plain = max(max_plain, rec.plain)
    ranges: list[FetchRange] = []
    for pack in sorted(by_pack):
        name = manifest.packs[pack]
        jobs = sorted(by_pack[pack], key=lambda j: j.offset)
        current: FetchRange | None = None
        for job in jobs:
            end = job.offset + job.stored
            if current is not None:
                current_end = current.offset + current.length
                if (
                    job.offset - current_end <= settings.max_gap_bytes
                    and max(end, current_end) - current.offset <= settings.max_range_bytes
                ):
                    current.length = max(end, current_end) - current.offset
                    current.chunks.append(job)
                    continue
            current = FetchRange(name, job.offset, job.stored, [job])
            ranges.append(current)
    data = sum(r.output_bytes for r in ranges)
    total = data + sum(h[2] for h in holes)
    return Plan(ranges=ranges, holes=holes, total_bytes=total, max_plain=max_plain)


def assert_same(plan: Plan, reference: Plan) -> None:
    assert isinstance(plan.ranges, PlannedRanges)
    assert len(plan.ranges) == len(reference.ranges)
    assert list(plan.ranges) == reference.ranges
    assert plan.holes == reference.holes
    assert plan.total_bytes == reference.total_bytes
    assert plan.max_plain == reference.max_plain
    assert plan.fetch_bytes == reference.fetch_bytes


def stored_and_decoded(manifest: Manifest) -> Manifest:
    stored = encode_manifest(manifest)
    return decode_manifest(stored, snapshot_id_of(stored))


# ----------------------------------------------------------------------------------------------------------
# Synthetic manifests: the benchmark's, and small random ones with every awkward case in them.


def random_table(rng: random.Random, n: int, packs: int, plain: int) -> ChunkTable:
    """Packs out of order, chunks sharing or overlapping offsets, gaps of every size."""
    return ChunkTable.from_records(
        ChunkRecord(rng.randbytes(32), rng.randrange(packs), rng.randrange(40) * 1500, rng.randrange(1, 5000), plain)
        for _ in range(n)
    )


def random_block(rng: random.Random) -> Manifest:
    cs = 64 * KiB
    nslots = rng.randrange(1, 60)
    size = nslots * cs - rng.randrange(cs)
    tail = size - (nslots - 1) * cs
    n = rng.randrange(1, nslots + 3)
    packs = rng.randrange(1, 5)
    table = random_table(rng, n, packs, cs)
    records = [*table, ChunkRecord(rng.randbytes(32), rng.randrange(packs), rng.randrange(40) * 1500, 77, tail)]
    slots = array("q", (HOLE if rng.random() < 0.3 else rng.randrange(n) for _ in range(nslots - 1)))
    slots.append(HOLE if rng.random() < 0.3 else n)
    return Manifest(
        mode="block",
        size=size,
        created="x",
        packs=tuple(f"{p:064x}" for p in range(packs)),
        chunks=ChunkTable.from_records(records),
        chunk_size=cs,
        slots=slots,
    )


def random_tree(rng: random.Random) -> Manifest:
    n = rng.randrange(1, 50)
    packs = rng.randrange(1, 5)
    records = [
        ChunkRecord(rng.randbytes(32), rng.randrange(packs), rng.randrange(40) * 1500, rng.randrange(1, 5000), p)
        for p in (rng.randrange(1, 100_000) for _ in range(n))
    ]
    entries: list[Entry] = [Entry("d", "dir", META)]
    total = 0
    for f in range(rng.randrange(0, 20)):
        content = tuple(
            -rng.randrange(1, 9000) if rng.random() < 0.2 else rng.randrange(n) for _ in range(rng.randrange(6))
        )
        size = sum(-c if c < 0 else records[c].plain for c in content)
        entries.append(Entry(f"d/f{f}", "file", META, size=size, content=content))
        if f % 3 == 0:
            entries.append(Entry(f"d/l{f}", "symlink", META, target="x"))
        total += size
    return Manifest(
        mode="filesystem",
        size=total,
        created="x",
        packs=tuple(f"{p:064x}" for p in range(packs)),
        chunks=ChunkTable.from_records(records),
        root=META,
        entries=tuple(entries),
    )


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "tight", "small-gap"])
def test_a_64_gib_block_snapshot_plans_as_the_reference_does(settings: RestoreSettings) -> None:
    manifest = stored_and_decoded(planning.block_manifest(64 * GiB))
    assert_same(plan_block(manifest, settings), reference_block(manifest, settings))


def test_a_block_snapshot_with_a_short_tail_and_trailing_holes_plans_as_the_reference_does() -> None:
    manifest = stored_and_decoded(planning.block_manifest(3 * GiB + 12345, seed=7))
    settings = RestoreSettings()
    assert_same(plan_block(manifest, settings), reference_block(manifest, settings))
    holes = replace_slots(manifest, 10)
    assert_same(plan_block(holes, settings), reference_block(holes, settings))


def replace_slots(manifest: Manifest, last: int) -> Manifest:
    """The manifest with its last ``last`` slots made holes (the tail slot a short one)."""
    slots = array("q", manifest.slots)
    for i in range(len(slots) - last, len(slots)):
        slots[i] = HOLE
    return Manifest(
        mode="block",
        size=manifest.size,
        created=manifest.created,
        packs=manifest.packs,
        chunks=manifest.chunks,
        chunk_size=manifest.chunk_size,
        slots=slots,
    )


def test_a_filesystem_snapshot_plans_as_the_reference_does() -> None:
    manifest = stored_and_decoded(planning.tree_manifest(2 * GiB, 3000))
    for settings in SETTINGS:
        assert_same(plan_tree(manifest, settings), reference_tree(manifest, settings))


@pytest.mark.parametrize("seed", range(60))
def test_random_block_manifests_plan_as_the_reference_does(seed: int) -> None:
    """Packs out of table order, chunks at the same offset (first use goes first), overlaps, unused
    chunks, chunks used many times, holes anywhere."""
    rng = random.Random(seed)
    manifest = random_block(rng)
    for settings in SETTINGS:
        assert_same(plan_block(manifest, settings), reference_block(manifest, settings))


@pytest.mark.parametrize("seed", range(60))
def test_random_tree_manifests_plan_as_the_reference_does(seed: int) -> None:
    rng = random.Random(1000 + seed)
    manifest = random_tree(rng)
    for settings in SETTINGS:
        assert_same(plan_tree(manifest, settings), reference_tree(manifest, settings))


def test_planned_ranges_read_like_a_list() -> None:
    manifest = planning.block_manifest(4 * GiB)
    plan = plan_block(manifest, RestoreSettings(max_range_bytes=4 * MiB))
    ranges = plan.ranges
    listed = list(ranges)
    assert len(listed) == len(ranges) > 10
    assert list(ranges) == listed  # iterating again makes equal ranges
    assert ranges[0] == listed[0]
    assert ranges[-1] == listed[-1]
    assert ranges[2:5] == listed[2:5]
    assert ranges[::-3] == listed[::-3]
    with pytest.raises(IndexError):
        ranges[len(ranges)]
    with pytest.raises(IndexError):
        ranges[-len(ranges) - 1]
    assert plan.fetch_bytes == sum(r.length for r in listed)


def test_an_empty_volume_plans_nothing() -> None:
    manifest = Manifest(mode="block", size=0, created="x", packs=(), chunks=ChunkTable(b""), chunk_size=4096)
    plan = plan_block(manifest, RestoreSettings())
    assert (len(plan.ranges), list(plan.ranges), plan.holes, plan.total_bytes, plan.fetch_bytes) == (0, [], [], 0, 0)


def test_a_plan_holds_a_few_bytes_per_chunk_not_an_object_per_chunk() -> None:
    """The plan for a volume is arrays: it used to hold a ChunkJob, a list and a tuple per chunk (well
    over 300 bytes each, 1.3 GiB of planning for 10 TiB)."""
    manifest = planning.block_manifest(64 * GiB)
    chunks = len(manifest.chunks)
    manifest.chunks.columns()  # made (and kept) by decoding; not the plan's
    tracemalloc.start()
    try:
        plan = plan_block(manifest, RestoreSettings())
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(plan.ranges) > 1000
    assert held / chunks < 64, f"{held / chunks:.0f} bytes held per chunk"
    assert peak / chunks < 160, f"{peak / chunks:.0f} bytes per chunk at the peak"


# ----------------------------------------------------------------------------------------------------------
# The chunk table's columns, and the checks made through them


def test_columns_are_the_records_fields() -> None:
    rng = random.Random(5)
    records = [
        ChunkRecord(rng.randbytes(32), rng.randrange(2**32), rng.randrange(2**64), rng.randrange(2**32), p)
        for p in (rng.randrange(2**32) for _ in range(300))
    ]
    table = ChunkTable.from_records(records)
    cols = table.columns()
    assert table.columns() is cols
    assert list(cols.pack) == [r.pack for r in records]
    assert list(cols.offset) == [r.offset for r in records]
    assert list(cols.stored) == [r.stored for r in records]
    assert list(cols.plain) == [r.plain for r in records]
    assert [table.id(i) for i in range(len(table))] == [r.id for r in records]
    assert [list(c) for c in ChunkTable(b"").columns()] == [[], [], [], []]


def block_stored(slots: list[int], plains: list[int], stored: list[int] | None = None, packs: int = 1) -> bytes:
    cs = 4096
    records = [
        ChunkRecord(bytes([i]) * 32, i % 2 if packs > 1 else 0, i * 100, (stored or [100] * len(plains))[i], p)
        for i, p in enumerate(plains)
    ]
    size = (len(slots) - 1) * cs + (plains[slots[-1]] if slots[-1] >= 0 else cs)
    return encode_manifest(
        Manifest(
            mode="block",
            size=size,
            created="x",
            packs=tuple("ab" * 32 for _ in range(packs)),
            chunks=ChunkTable.from_records(records),
            chunk_size=cs,
            slots=array("q", slots),
        )
    )


def edit_body(stored: bytes, **fields: object) -> bytes:
    line_end = stored.index(b"\n") + 1
    body = json.loads(zstandard.ZstdDecompressor().decompress(stored[line_end:]))
    body.update(fields)
    return stored[:line_end] + zstandard.ZstdCompressor(write_content_size=True).compress(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("slots", "plains", "message"),
    [
        ([0, 1, 0, 1], [4096, 4096], None),
        ([0, HOLE, 1], [4096, 1000], None),
        ([0, HOLE, HOLE], [4096], None),
        ([0, 1, 0], [4096, 1000], "slot 1 needs 4096 bytes but chunk 1 holds 1000"),
        ([1, 0, 1, 2], [4096, 4096, 1000], None),
        ([0, 2, 0, 2], [4096, 4096, 1000], "slot 1 needs 4096 bytes but chunk 2 holds 1000"),
        ([0, 0, 0], [4096, 1000], None),  # an unused short chunk
    ],
)
def test_slot_lengths_are_checked_through_the_columns(slots: list[int], plains: list[int], message: str | None) -> None:
    stored = block_stored(slots, plains)
    if message is None:
        assert list(decode_manifest(stored, snapshot_id_of(stored)).slot_values()) == slots
    else:
        with pytest.raises(ManifestInvalid, match=message):
            decode_manifest(stored, snapshot_id_of(stored))


@pytest.mark.parametrize(
    ("slots", "message"),
    [
        ([0, 5, 0], "slot 1 names chunk 5, not in the table"),
        ([0, -2, 7], "4 slots do not cover"),
        ([-2, 9], "slot 2 names chunk 9, not in the table"),
        ([0, 0, 1], r"slot 2 \(the last\) needs 4096 bytes but chunk 1 holds 1000"),
    ],
)
def test_slots_naming_no_chunk_are_refused(slots: list[int], message: str) -> None:
    stored = edit_body(block_stored([0, 0, 0], [4096, 1000]), block={"chunkSize": 4096, "slots": slots})
    with pytest.raises(ManifestInvalid, match=message):
        decode_manifest(stored, snapshot_id_of(stored))


@pytest.mark.parametrize(
    ("index", "record", "ok"),
    [
        (2, ChunkRecord(b"\x07" * 32, 1, 0, 1, 4096), None),
        (2, ChunkRecord(b"\x07" * 32, 2, 0, 1, 4096), "chunk 2 names pack 2, but the manifest lists 2"),
        (1, ChunkRecord(b"\x07" * 32, 0, 0, 0, 4096), "chunk 1 has a stored length of 0"),
        (2, ChunkRecord(b"\x07" * 32, 0, 0, 1, 0), "plain length of 0"),
        (0, ChunkRecord(b"\x07" * 32, 0, 0, 1, 16 * MiB + 1), "plain length of 16777217"),
        (0, ChunkRecord(b"\x07" * 32, 0, 0, 2**32 - 1, 4096), "more than zstd makes of 4096 plain bytes"),
        (1, ChunkRecord(b"\x07" * 32, 0, 2**63 - 1, 2, 4096), "lies beyond byte"),
    ],
)
def test_chunk_records_are_checked_through_the_columns(index: int, record: ChunkRecord, ok: str | None) -> None:
    stored = block_stored([0, 1, 2], [4096, 4096, 4096], packs=2)
    line_end = stored.index(b"\n") + 1
    body = json.loads(zstandard.ZstdDecompressor().decompress(stored[line_end:]))
    records = list(ChunkTable(base64.b64decode(body["chunks"])))
    records[index] = record
    stored = edit_body(stored, chunks=base64.b64encode(ChunkTable.from_records(records).raw).decode())
    if ok is None:
        decode_manifest(stored, snapshot_id_of(stored))
    else:
        with pytest.raises(ManifestInvalid, match=ok):
            decode_manifest(stored, snapshot_id_of(stored))


# ----------------------------------------------------------------------------------------------------------
# The benchmark itself


def test_the_planning_benchmark_runs(tmp_path: Path) -> None:
    result = planning.run([1 / 1024], runs=1, tree_files=200, tree_tib=1 / 4096)
    block = result["block"]["1 GiB"]
    assert block["chunks"] > 0
    assert block["ranges"] > 0
    assert block["peak_rss_MiB"] >= block["baseline_rss_MiB"] > 0
    assert result["filesystem"]
    assert "block" in planning.table(result)
