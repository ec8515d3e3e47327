"""Planning a restore from a manifest: which byte ranges to GET, and where each chunk goes.

Every distinct chunk is fetched once, however many places use it. Chunks are grouped by pack, sorted by
offset and coalesced into ranged GETs through gaps of at most ``max_gap_bytes``, up to
``max_range_bytes`` per GET. Packs are visited in index order (the order the writer first met their
chunks, so writes move through the target roughly front to back); chunks at the same offset of a pack
in the order they are first used.

A plan is kept in arrays, a few bytes per chunk, and ``Plan.ranges`` makes each ``FetchRange`` (with its
``ChunkJob``s) only when it is read: a plan for a 10 TiB volume is not millions of Python objects, and
the transfer, which takes ranges one at a time, holds only those in flight.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from agent.repo.format import ChunkTable, Manifest
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


class _Places:
    """Where each chunk goes, filled in the order places are met. A chunk's first place is in arrays
    indexed by chunk (most chunks have only one); any further ones are in ``more``, as flat
    (file slot, offset) pairs. ``used`` lists the chunks placed, in the order first met."""

    __slots__ = ("first_file", "first_offset", "more", "used")

    def __init__(self, chunks: int, tree: bool) -> None:
        self.first_offset = array("q", [-1]) * chunks
        """-1: the chunk is not used."""
        self.first_file: array[int] | None = array("q", [0]) * chunks if tree else None
        """None: every place is in file slot 0 (a block target)."""
        self.more: dict[int, array[int]] = {}
        self.used = array("q")

    def of(self, chunk: int) -> list[Place]:
        first = (0 if self.first_file is None else self.first_file[chunk], self.first_offset[chunk])
        more = self.more.get(chunk)
        if more is None:
            return [first]
        return [first, *zip(more[0::2], more[1::2], strict=True)]

    def count(self, chunk: int) -> int:
        more = self.more.get(chunk)
        return 1 if more is None else 1 + len(more) // 2


class PlannedRanges(Sequence[FetchRange]):
    """A plan's ranged GETs, in order. Each ``FetchRange`` is made when it is read (by index or by
    iterating), from arrays: ``order`` lists the chunks to fetch, range by range, and range ``i`` holds
    ``order[starts[i]:starts[i + 1]]``."""

    __slots__ = ("_chunks", "_lengths", "_names", "_offsets", "_order", "_places", "_starts", "fetch_bytes")

    def __init__(
        self,
        names: tuple[str, ...],
        chunks: ChunkTable,
        places: _Places,
        order: array[int],
        starts: array[int],
        offsets: array[int],
        lengths: array[int],
    ) -> None:
        self._names = names
        self._chunks = chunks
        self._places = places
        self._order = order
        self._starts = starts
        self._offsets = offsets
        self._lengths = lengths
        self.fetch_bytes = sum(lengths)
        """Stored bytes of all ranges."""

    def __len__(self) -> int:
        return len(self._offsets)

    @overload
    def __getitem__(self, index: int) -> FetchRange: ...
    @overload
    def __getitem__(self, index: slice) -> list[FetchRange]: ...
    def __getitem__(self, index: int | slice) -> FetchRange | list[FetchRange]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._make(index)

    def __iter__(self) -> Iterator[FetchRange]:
        for i in range(len(self)):
            yield self._make(i)

    def _make(self, i: int) -> FetchRange:
        cols = self._chunks.columns()
        table, places = self._chunks, self._places
        jobs = [
            ChunkJob(c, table.id(c), cols.offset[c], cols.stored[c], cols.plain[c], places.of(c))
            for c in self._order[self._starts[i] : self._starts[i + 1]]
        ]
        return FetchRange(self._names[cols.pack[jobs[0].index]], self._offsets[i], self._lengths[i], jobs)


@dataclass
class Plan:
    ranges: Sequence[FetchRange]
    """In fetch order; a ``PlannedRanges`` when made by ``plan_block``/``plan_tree``."""
    holes: list[tuple[int, int, int]]
    """(file slot, offset, length) extents that are all zeros."""
    total_bytes: int
    """Bytes the restore accounts for: data placed plus holes. Known before anything is fetched."""
    max_plain: int
    """Largest chunk, for sizing decode buffers."""

    @property
    def fetch_bytes(self) -> int:
        if isinstance(self.ranges, PlannedRanges):
            return self.ranges.fetch_bytes
        return sum(r.length for r in self.ranges)


def plan_block(manifest: Manifest, settings: RestoreSettings, kept: bytearray | None = None) -> Plan:
    """``kept``: one byte per chunk of the table, 1 for a chunk the target already holds (not fetched; see
    ``agent.pipeline.resume``)."""
    cs = manifest.chunk_size
    size = manifest.size
    plain = manifest.chunks.columns().plain
    places = _Places(len(manifest.chunks), tree=False)
    first, more, used = places.first_offset, places.more, places.used
    holes: list[tuple[int, int, int]] = []
    data = 0
    offset = 0
    for chunk in manifest.slots:
        if chunk < 0:  # -n: n slots of zeros (the last one may be short)
            end = min(offset - chunk * cs, size)
            if holes and holes[-1][1] + holes[-1][2] == offset:
                holes[-1] = (0, holes[-1][1], end - holes[-1][1])
            else:
                holes.append((0, offset, end - offset))
            offset = end
            continue
        data += plain[chunk]
        if first[chunk] < 0:
            first[chunk] = offset
            used.append(chunk)
        else:
            extra = more.get(chunk)
            if extra is None:
                more[chunk] = extra = array("q")
            extra.append(0)
            extra.append(offset)
        offset += cs
    return _plan(manifest, places, holes, data, settings, kept)


def plan_tree(manifest: Manifest, settings: RestoreSettings, kept: bytearray | None = None) -> Plan:
    """File slots number the manifest's regular files (type 'file') in order; ``kept`` as for
    ``plan_block``."""
    plain = manifest.chunks.columns().plain
    places = _Places(len(manifest.chunks), tree=True)
    first, first_file, more, used = places.first_offset, places.first_file, places.more, places.used
    assert first_file is not None
    holes: list[tuple[int, int, int]] = []
    data = 0
    slot = 0
    for entry in manifest.entries:
        if entry.type != "file":
            continue
        offset = 0
        for c in entry.content:
            if c < 0:
                holes.append((slot, offset, -c))
                offset -= c
                continue
            if first[c] < 0:
                first[c] = offset
                first_file[c] = slot
                used.append(c)
            else:
                extra = more.get(c)
                if extra is None:
                    more[c] = extra = array("q")
                extra.append(slot)
                extra.append(offset)
            n = plain[c]
            offset += n
            data += n
        slot += 1
    return _plan(manifest, places, holes, data, settings, kept)


def _plan(
    manifest: Manifest,
    places: _Places,
    holes: list[tuple[int, int, int]],
    data: int,
    settings: RestoreSettings,
    kept: bytearray | None,
) -> Plan:
    """Order the used chunks by (pack, offset), first use breaking ties, and cut them into ranges."""
    pack, offset, stored, plain = manifest.chunks.columns()
    used = places.used if kept is None else [c for c in places.used if not kept[c]]
    # Offsets are below 2**64: one integer key sorts by pack, then offset; the sort is stable.
    order = array("q", sorted(used, key=lambda c: (pack[c] << 64) | offset[c]))
    gap, most = settings.max_gap_bytes, settings.max_range_bytes
    starts = array("q")
    offsets = array("Q")
    lengths = array("Q")
    current_pack = -1
    start = end = 0
    max_plain = 0
    for i, c in enumerate(order):
        chunk_start = offset[c]
        chunk_end = chunk_start + stored[c]
        max_plain = max(max_plain, plain[c])
        if pack[c] == current_pack and chunk_start - end <= gap:
            new_end = chunk_end if chunk_end > end else end
            if new_end - start <= most:
                end = new_end
                continue
        if current_pack >= 0:
            offsets.append(start)
            lengths.append(end - start)
        starts.append(i)
        current_pack, start, end = pack[c], chunk_start, chunk_end
    if current_pack >= 0:
        offsets.append(start)
        lengths.append(end - start)
    starts.append(len(order))
    ranges = PlannedRanges(manifest.packs, manifest.chunks, places, order, starts, offsets, lengths)
    total = data + sum(h[2] for h in holes)
    return Plan(ranges=ranges, holes=holes, total_bytes=total, max_plain=max_plain)
