"""A repository: where packs and manifests live under a storage root, and reading them safely.

packs/<first two hex digits>/<pack name>     pack objects (concatenated zstd frames)
snapshots/<snapshot id>                      manifests; a snapshot exists once its manifest does
"""

from __future__ import annotations

import asyncio

from agent.errors import ConfigError, ObjectNotFound, PackMissing, SnapshotNotFound
from agent.repo.format import Manifest, decode_manifest, is_snapshot_id, snapshot_id_of
from agent.storage.base import Storage

PACKS = "packs/"
SNAPSHOTS = "snapshots/"

# Manifests larger than this are decoded in a thread so the event loop keeps serving.
_DECODE_INLINE_BYTES = 256 * 1024


def pack_key(name: str) -> str:
    return f"{PACKS}{name[:2]}/{name}"


def snapshot_key(snapshot_id: str) -> str:
    return f"{SNAPSHOTS}{snapshot_id}"


class Repository:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def describe(self) -> str:
        return self.storage.describe()

    async def snapshot_ids(self) -> list[str]:
        keys = await self.storage.list(SNAPSHOTS)
        return [k[len(SNAPSHOTS) :] for k in keys if is_snapshot_id(k[len(SNAPSHOTS) :])]

    async def read_manifest(self, snapshot_id: str) -> Manifest:
        """Fetch, verify (against the ID) and parse a manifest."""
        snapshot_id = snapshot_id.strip().lower()
        if not is_snapshot_id(snapshot_id):
            raise ConfigError(f"{snapshot_id!r} is not a snapshot ID (64 hexadecimal digits)")
        try:
            stored = await self.storage.get(snapshot_key(snapshot_id))
        except ObjectNotFound:
            raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist in {self.describe()}") from None
        if len(stored) <= _DECODE_INLINE_BYTES:
            return decode_manifest(stored, snapshot_id)
        return await asyncio.to_thread(decode_manifest, stored, snapshot_id)

    async def write_manifest(self, stored: bytes) -> str:
        """Store a manifest (after all its packs); returns the snapshot ID."""
        snapshot_id = snapshot_id_of(stored)
        await self.storage.put(snapshot_key(snapshot_id), stored)
        return snapshot_id

    async def write_pack(self, name: str, data: bytes) -> None:
        await self.storage.put(pack_key(name), data)

    async def read_pack_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            return await self.storage.get_range(pack_key(name), offset, length)
        except ObjectNotFound:
            raise self._pack_missing(name) from None

    async def read_pack_range_into(self, name: str, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the pack's bytes from ``offset``."""
        try:
            await self.storage.get_range_into(pack_key(name), offset, buffer)
        except ObjectNotFound:
            raise self._pack_missing(name) from None

    def _pack_missing(self, name: str) -> PackMissing:
        return PackMissing(
            f"pack {name} is missing from {self.describe()}: the repository is damaged; restore from another snapshot"
        )
