"""Where a snapshot's chunks are now: a manifest names the pack and offset each chunk was stored at, but
``repo prune`` moves the live chunks of mostly unused packs into new ones (repacking) and then deletes
the old packs. The snapshot's manifest cannot change (its hash is the snapshot ID Velero keeps), so
readers find such chunks through the index, by chunk ID. That is safe wherever the bytes come from: a
restore verifies every chunk against its ID (and, encrypted, authenticates it with the ID as associated
data), so no place can hand it other bytes.

A chunk is looked up when its pack is missing, too short for it, or listed in a prune's mark (about to
be deleted); a place in an unmarked pack is preferred, then the manifest's own place if the pack is still
there (a marked pack is deleted only once no chunk needs it, and never while a reader holds a lock).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple

from agent.repo.format import CHUNK_RECORD, ChunkTable, Manifest
from agent.repo.index import IndexObject, index_objects
from agent.repo.locks import marked_packs
from agent.repo.repository import Repository

log = logging.getLogger(__name__)


class Place(NamedTuple):
    """Where a chunk is stored: pack name, offset and stored length in bytes, plain length in bytes."""

    pack: str
    offset: int
    stored: int
    plain: int


class Locator:
    """Relocates the chunks of manifests against one view of the repository: the packs' sizes (a missing
    pack is absent, -1 is not an object) and the packs marked by a prune. The index is read once, the
    first time a manifest needs it."""

    def __init__(self, repo: Repository, sizes: dict[str, int], marked: set[str]) -> None:
        self.repo = repo
        self.sizes = sizes
        self.marked = marked
        self._objects: list[IndexObject] | None = None

    @classmethod
    async def open(cls, repo: Repository) -> Locator:
        """A locator for ``repo`` as it is now (one listing of the marks, then one of the packs: a prune
        deletes a mark only after its packs, so a pack listed here as present and unmarked was not being
        deleted)."""
        marked = await marked_packs(repo)
        return cls(repo, await repo.pack_sizes(), marked)

    def usable(self, pack: str, end: int) -> bool:
        """Whether ``pack`` exists, holds ``end`` bytes at least, and no prune has marked it."""
        return pack not in self.marked and self.sizes.get(pack, -1) >= end

    async def relocate(self, manifest: Manifest) -> Manifest:
        """``manifest`` with every chunk whose pack is missing, too short or marked placed where the index
        finds it instead (the same manifest if none is: format 1 repositories have nothing to relocate).
        Chunks found nowhere keep their place (reading them reports the missing pack). Raises storage
        errors."""
        if self.repo.config is None or not manifest.chunks:
            return manifest
        cols = manifest.chunks.columns()
        reach = [0] * len(manifest.packs)
        for pack, offset, stored in zip(cols.pack, cols.offset, cols.stored, strict=True):
            end = offset + stored
            reach[pack] = max(reach[pack], end)
        bad = {i for i, name in enumerate(manifest.packs) if reach[i] and not self.usable(name, reach[i])}
        if not bad:
            return manifest
        table = manifest.chunks
        moving = [i for i, pack in enumerate(cols.pack) if pack in bad]
        places = await self.places({table.id(i) for i in moving})
        packs = list(manifest.packs)
        at = {name: n for n, name in enumerate(packs)}
        raw = bytearray(table.raw)
        moved = 0
        for i in moving:
            cid = table.id(i)
            place = places.get(cid)
            if place is None or place.plain != cols.plain[i]:
                continue
            here = manifest.packs[cols.pack[i]]
            if not self.usable(place.pack, place.offset + place.stored) and self.sizes.get(here, -1) >= (
                cols.offset[i] + cols.stored[i]
            ):
                continue  # both marked: the manifest's own place is as good
            pack = at.setdefault(place.pack, len(packs))
            if pack == len(packs):
                packs.append(place.pack)
            CHUNK_RECORD.pack_into(raw, i * CHUNK_RECORD.size, cid, pack, place.offset, place.stored, place.plain)
            moved += 1
        if not moved:
            return manifest
        log.info("%d chunks of a snapshot are read from where prune moved them (the index)", moved)
        return dataclasses.replace(manifest, packs=tuple(packs), chunks=ChunkTable(bytes(raw)))

    async def places(self, ids: set[bytes]) -> dict[bytes, Place]:
        """The best place the index knows for each of ``ids`` found: in an unmarked pack that holds it,
        else in a marked one that still does (the lowest pack name and offset among equals, so every
        reader of one index chooses alike)."""
        if self._objects is None:
            self._objects, _ = await index_objects(self.repo)
        best: dict[bytes, tuple[bool, Place]] = {}
        for obj in self._objects:
            for rec in obj.records:
                if rec.id not in ids:
                    continue
                place = Place(obj.packs[rec.pack], rec.offset, rec.stored, rec.plain)
                end = place.offset + place.stored
                if self.sizes.get(place.pack, -1) < end:
                    continue
                rank = (place.pack in self.marked, place)
                if rec.id not in best or rank < best[rec.id]:
                    best[rec.id] = rank
        return {cid: place for cid, (_, place) in best.items()}
