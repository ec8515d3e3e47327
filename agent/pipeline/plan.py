"""Planning a restore from a manifest: which byte ranges to GET, and where each chunk goes.

Every distinct chunk is fetched once, however many places use it. Chunks are grouped by pack, sorted by
offset and coalesced into ranged GETs through gaps of at most ``max_gap_bytes``, up to
``max_range_bytes`` per GET. Packs are visited in table order, which is the order the writer first met
their chunks, so writes move through the target roughly front to back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.repo.format import HOLE, Manifest
from agent.settings import RestoreSettings

Place = tuple[int, int]
"""(file slot, offset): file slot 0 is a block target; in a tree, the n-th regular file."""


@dataclass(slots=True)
class ChunkJob:
    index: int
    id: bytes
    offset: int
    """Offset in the pack."""
    stored: int
    plain: int
    places: list[Place] = field(default_factory=list)


@dataclass(slots=True)
class FetchRange:
    pack: str
    offset: int
    length: int
    chunks: list[ChunkJob]

    @property
    def output_bytes(self) -> int:
        return sum(c.plain * len(c.places) for c in self.chunks)


@dataclass
class Plan:
    ranges: list[FetchRange]
    holes: list[tuple[int, int, int]]
    """(file slot, offset, length) extents that are all zeros."""
    total_bytes: int
    """Bytes the restore accounts for: data placed plus holes. Known before anything is fetched."""
    max_plain: int
    """Largest chunk, for sizing decode buffers."""

    @property
    def fetch_bytes(self) -> int:
        return sum(r.length for r in self.ranges)


def plan_block(manifest: Manifest, settings: RestoreSettings) -> Plan:
    cs = manifest.chunk_size
    places: dict[int, list[Place]] = {}
    holes: list[tuple[int, int, int]] = []
    for slot, chunk in enumerate(manifest.slots):
        offset = slot * cs
        if chunk == HOLE:
            length = min(cs, manifest.size - offset)
            if holes and holes[-1][1] + holes[-1][2] == offset:
                holes[-1] = (0, holes[-1][1], holes[-1][2] + length)
            else:
                holes.append((0, offset, length))
        else:
            places.setdefault(chunk, []).append((0, offset))
    return _plan(manifest, places, holes, settings)


def plan_tree(manifest: Manifest, settings: RestoreSettings) -> Plan:
    """File slots number the manifest's regular files (type 'file') in order."""
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
    return _plan(manifest, places, holes, settings)


def _plan(
    manifest: Manifest,
    places: dict[int, list[Place]],
    holes: list[tuple[int, int, int]],
    settings: RestoreSettings,
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
