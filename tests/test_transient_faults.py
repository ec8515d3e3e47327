"""Transient faults are not damage: bodies flipped or cut short on the way are fetched again before
anything is called damaged; bytes that come back different every time say "could not fetch", and only
bytes that stay wrong say "damaged". Over the wire, through a proxy in front of the real S3 server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import ChunkCorrupt, CorruptedInTransit, ManifestInvalid
from agent.pipeline.restore import restore
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from agent.storage.s3 import S3Storage
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for

SNAP = SnapshotSettings(block_chunk_bytes=128 * KiB, pack_bytes=1 * MiB, threads=2)
RESTORE = RestoreSettings(reads_in_flight=4, max_range_bytes=256 * KiB, memory_bytes=8 * MiB)


@asynccontextmanager
async def repository(server: SeaweedServer, bucket: str, endpoint: str | None = None) -> AsyncIterator[Repository]:
    settings = s3_settings_for(server)
    if endpoint is not None:
        settings = type(settings)(**{**settings.__dict__, "endpoint_url": endpoint, "backoff_base_s": 0.01})
    storage = await S3Storage.open(settings, bucket, "faults")
    try:
        yield Repository(storage)
    finally:
        await storage.aclose()


async def small_snapshots(server: SeaweedServer, bucket: str, tmp_path: Path, count: int) -> list[tuple[str, bytes]]:
    made = []
    async with repository(server, bucket) as repo:
        for n in range(count):
            data = os.urandom(300 * KiB) + bytes(200 * KiB) + os.urandom(n * 1000 + 1)
            (tmp_path / "src.img").write_bytes(data)
            made.append(((await create_snapshot(repo, str(tmp_path / "src.img"), SNAP)).snapshot_id, data))
    return made


async def test_flipped_and_truncated_bodies_do_not_fail_restores(
    s3_server: SeaweedServer, proxy: FaultyProxy, tmp_path: Path
) -> None:
    bucket = await make_bucket(s3_server)
    snapshots = await small_snapshots(s3_server, bucket, tmp_path, 40)
    proxy.flip_percent, proxy.truncate_percent = 10, 10
    # Fewer damaged fetches in a row than a reader makes: five in a row (a 1-in-1,500 chance per object, 40
    # manifests here) would rightly end in "could not fetch intact", which the next test covers.
    proxy.damage_run_limit = 3
    refetches = 0
    async with repository(s3_server, bucket, proxy.endpoint) as repo:
        for n, (snapshot_id, data) in enumerate(snapshots):
            out = tmp_path / f"out-{n}.img"
            result = await restore(repo, snapshot_id, str(out), RESTORE)
            assert out.read_bytes() == data
            refetches += result.refetches
    assert proxy.faults >= 20, "the proxy damaged bodies on the way"
    assert refetches >= 5, "damaged chunks were fetched again"


async def test_bytes_that_differ_on_every_fetch_say_could_not_fetch(
    s3_server: SeaweedServer, proxy: FaultyProxy, tmp_path: Path
) -> None:
    bucket = await make_bucket(s3_server)
    [(snapshot_id, _)] = await small_snapshots(s3_server, bucket, tmp_path, 1)
    async with repository(s3_server, bucket, proxy.endpoint) as repo:
        proxy.flip_percent = 100
        with pytest.raises(CorruptedInTransit, match=r"could not fetch the manifest of snapshot .* intact") as caught:
            await restore(repo, snapshot_id, str(tmp_path / "out.img"), RESTORE)
        assert "damaged" not in str(caught.value)
        proxy.ranges_only = True  # the manifest comes through; every pack read is damaged
        with pytest.raises(CorruptedInTransit, match=r"could not fetch chunk [0-9a-f]{64} \(pack .*\) intact"):
            await restore(repo, snapshot_id, str(tmp_path / "out.img"), RESTORE)
    assert not (tmp_path / "out.img").exists(), "nothing half-made is left"


async def test_bytes_that_stay_wrong_say_damaged(s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = await make_bucket(s3_server)
    [(snapshot_id, _)] = await small_snapshots(s3_server, bucket, tmp_path, 1)
    async with repository(s3_server, bucket) as repo:
        m = await repo.read_manifest(snapshot_id)
        key = pack_key(m.packs[0])
        pack = bytearray(await repo.storage.get(key))
        pack[10] ^= 0xFF
        await repo.storage.put(key, bytes(pack))
        with pytest.raises(ChunkCorrupt, match="the same bytes came back in 2 fetches, so the repository is damaged"):
            await restore(repo, snapshot_id, str(tmp_path / "out.img"), RESTORE)
        stored = await repo.storage.get(snapshot_key(snapshot_id))
        await repo.storage.put(snapshot_key(snapshot_id), stored[:-1] + bytes([stored[-1] ^ 1]))
        with pytest.raises(ManifestInvalid, match="the same bytes came back twice"):
            await repo.read_manifest(snapshot_id)
