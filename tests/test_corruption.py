"""A damaged repository: nothing unverified is ever written, and the error names what is damaged."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.backup.writer import SnapshotResult, create_snapshot
from agent.errors import ChunkCorrupt, ConfigError, ManifestInvalid, PackMissing, SnapshotNotFound, UnsupportedFormat
from agent.pipeline.restore import restore
from agent.repo.format import MAGIC
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from agent.storage.base import ObjectInfo, Storage

SNAP = SnapshotSettings(block_chunk_bytes=256 * KiB, pack_bytes=1 * MiB, threads=2)
SETTINGS = RestoreSettings(reads_in_flight=2, max_range_bytes=512 * KiB, memory_bytes=2 * MiB, fetch_attempts=3)


async def _snapshot(repo: Repository, tmp_path: Path) -> tuple[SnapshotResult, bytes]:
    data = random.Random(4).randbytes(2 * MiB)
    (tmp_path / "disk.img").write_bytes(data)
    return await create_snapshot(repo, str(tmp_path / "disk.img"), SNAP), data


async def test_a_corrupted_byte_fails_naming_chunk_and_pack_and_is_never_written(
    repo: Repository, tmp_path: Path
) -> None:
    snap, _ = await _snapshot(repo, tmp_path)
    m = await repo.read_manifest(snap.snapshot_id)
    victim_slot = 5
    rec = m.chunks[m.slots[victim_slot]]
    pack = m.packs[rec.pack]
    stored = bytearray(await repo.storage.get(pack_key(pack)))
    stored[rec.offset + rec.stored // 2] ^= 0x40
    await repo.storage.put(pack_key(pack), bytes(stored))

    out = tmp_path / "out.img"
    out.write_bytes(bytes(m.size))  # an existing image: a failed restore leaves it (a new one is removed)
    with pytest.raises(ChunkCorrupt) as caught:
        await restore(repo, snap.snapshot_id, str(out), SETTINGS)
    message = str(caught.value)
    assert rec.id.hex() in message
    assert pack in message
    assert "the same bytes came back in 2 fetches" in message
    restored = out.read_bytes()
    cs = m.chunk_size
    assert restored[victim_slot * cs : (victim_slot + 1) * cs] == bytes(cs), "the bad chunk was never written"


class FlakyStorage(Storage):
    """Delivers the first ``bad_reads`` ranged reads with a flipped byte, a different one each time, like a
    bad network path."""

    def __init__(self, inner: Storage, bad_reads: int) -> None:
        self.inner = inner
        self.bad_reads = bad_reads

    def describe(self) -> str:
        return self.inner.describe()

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return await self.inner.get(key, max_bytes)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = await self.inner.get_range(key, offset, length)
        if self.bad_reads > 0:
            self.bad_reads -= 1
            flipped = bytearray(data)
            flipped[(length // 3 + 7 * self.bad_reads) % length] ^= 0x01
            return bytes(flipped)
        return data

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def put_new(self, key: str, data: bytes) -> bool:
        return await self.inner.put_new(key, data)

    async def info(self, prefix: str) -> dict[str, ObjectInfo]:
        return await self.inner.info(prefix)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def list(self, prefix: str) -> list[str]:
        return await self.inner.list(prefix)

    async def sizes(self, prefix: str) -> dict[str, int]:
        return await self.inner.sizes(prefix)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_chunk_that_arrives_corrupted_once_is_fetched_again(repo: Repository, tmp_path: Path) -> None:
    snap, data = await _snapshot(repo, tmp_path)
    flaky = Repository(FlakyStorage(repo.storage, bad_reads=2))
    out = tmp_path / "out.img"
    result = await restore(flaky, snap.snapshot_id, str(out), SETTINGS)
    assert out.read_bytes() == data
    assert result.verify_failures >= 2
    assert result.refetches >= 2


async def test_a_missing_pack_says_the_repository_is_damaged(repo: Repository, tmp_path: Path) -> None:
    snap, _ = await _snapshot(repo, tmp_path)
    m = await repo.read_manifest(snap.snapshot_id)
    keys = await repo.storage.list("packs/")
    assert len(keys) == len(m.packs) >= 2
    await repo.storage.delete(keys[-1])
    with pytest.raises(PackMissing, match=keys[-1].rsplit("/", 1)[-1]):
        await restore(repo, snap.snapshot_id, str(tmp_path / "out.img"), SETTINGS)


async def test_a_truncated_pack_is_reported_as_corrupt(repo: Repository, tmp_path: Path) -> None:
    snap, _ = await _snapshot(repo, tmp_path)
    m = await repo.read_manifest(snap.snapshot_id)
    key = pack_key(m.packs[0])
    stored = await repo.storage.get(key)
    await repo.storage.put(key, stored[: len(stored) // 2])
    with pytest.raises(ChunkCorrupt, match="the pack ends before the chunk"):
        await restore(repo, snap.snapshot_id, str(tmp_path / "out.img"), SETTINGS)


@pytest.mark.parametrize("damage", ["truncated", "tampered"])
async def test_a_damaged_manifest_restores_nothing(repo: Repository, tmp_path: Path, damage: str) -> None:
    snap, _ = await _snapshot(repo, tmp_path)
    key = snapshot_key(snap.snapshot_id)
    stored = await repo.storage.get(key)
    bad = stored[:-10] if damage == "truncated" else stored.replace(b"ferry-snapshot 1.1", b"ferry-snapshot 1.2")
    await repo.storage.put(key, bad)
    out = tmp_path / "out.img"
    with pytest.raises(ManifestInvalid, match="truncated or altered"):
        await restore(repo, snap.snapshot_id, str(out), SETTINGS)
    assert not out.exists()


async def test_unknown_and_malformed_snapshot_ids(repo: Repository, tmp_path: Path) -> None:
    snap, _ = await _snapshot(repo, tmp_path)
    with pytest.raises(SnapshotNotFound, match="does not exist"):
        await restore(repo, "0" * 64, str(tmp_path / "out.img"), SETTINGS)
    with pytest.raises(ConfigError, match="not a snapshot ID"):
        await restore(repo, snap.snapshot_id[:20], str(tmp_path / "out.img"), SETTINGS)
    assert not (tmp_path / "out.img").exists()


async def test_a_future_format_is_refused(repo: Repository, tmp_path: Path) -> None:
    stored = MAGIC + b"3.0\n" + b"a body this version cannot read"
    sid = await repo.write_manifest(stored)
    with pytest.raises(UnsupportedFormat, match="upgrade Ferry"):
        await restore(repo, sid, str(tmp_path / "out.img"), SETTINGS)
