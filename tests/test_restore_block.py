"""Block restores: image files and a real loop device, holes, sizes, progress."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import TargetError, TargetTooSmall
from agent.pipeline.restore import restore
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from tests.support.data import write_mixed_image

SNAP = SnapshotSettings(block_chunk_bytes=256 * KiB, pack_bytes=2 * MiB, threads=2)
TIGHT = RestoreSettings(reads_in_flight=4, max_range_bytes=512 * KiB, max_gap_bytes=64 * KiB, memory_bytes=2 * MiB)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


async def test_mixed_image_round_trips_with_an_unaligned_tail(repo: Repository, tmp_path: Path) -> None:
    image = write_mixed_image(tmp_path / "disk.img", 12 * MiB + 12345, seed=7, run=700 * KiB)
    snap = await create_snapshot(repo, str(image), SNAP)
    assert snap.hole_bytes > 0
    out = tmp_path / "restored.img"
    progress: list[tuple[int, int]] = []
    result = await restore(repo, snap.snapshot_id, str(out), TIGHT, lambda d, t: progress.append((d, t)))
    assert out.read_bytes() == image.read_bytes()
    assert result.total_bytes == image.stat().st_size
    assert progress[0] == (0, result.total_bytes)
    assert {t for _, t in progress} == {result.total_bytes}
    dones = [d for d, _ in progress]
    assert dones == sorted(dones)
    assert dones[-1] == result.total_bytes
    assert result.requests > 1, "the tight settings split the restore into several ranged GETs"


async def test_holes_stay_holes_in_a_new_image_file(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    with image.open("wb") as f:
        f.write(random.Random(1).randbytes(MiB))
        f.truncate(32 * MiB)
    snap = await create_snapshot(repo, str(image), SNAP)
    out = tmp_path / "restored.img"
    await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert out.read_bytes() == image.read_bytes()
    assert allocated(out) < 4 * MiB, "31 MiB of zeros must not be written out"


async def test_holes_are_punched_in_an_existing_image(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    with image.open("wb") as f:
        f.write(b"\x01" * MiB)
        f.truncate(8 * MiB)
    snap = await create_snapshot(repo, str(image), SNAP)
    out = tmp_path / "dirty.img"
    out.write_bytes(b"\xee" * (10 * MiB))
    await restore(repo, snap.snapshot_id, str(out), TIGHT)
    data = out.read_bytes()
    assert data[: 8 * MiB] == image.read_bytes()
    assert data[8 * MiB :] == b"\xee" * (2 * MiB), "bytes beyond the snapshot are left alone"
    assert allocated(out) < 5 * MiB


async def test_a_target_too_small_is_refused_before_writing(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(2).randbytes(2 * MiB))
    snap = await create_snapshot(repo, str(image), SNAP)
    out = tmp_path / "small.img"
    out.write_bytes(b"\xaa" * MiB)
    with pytest.raises(TargetTooSmall, match="needs 2097152"):
        await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert out.read_bytes() == b"\xaa" * MiB


async def test_a_block_snapshot_will_not_go_into_a_directory(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"x" * 1000)
    snap = await create_snapshot(repo, str(image), SNAP)
    with pytest.raises(TargetError, match="is a directory"):
        await restore(repo, snap.snapshot_id, str(tmp_path), TIGHT)


async def test_chunks_used_many_times_are_fetched_once(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "repeat.img"
    block = random.Random(3).randbytes(SNAP.block_chunk_bytes)
    image.write_bytes(block * 16)
    snap = await create_snapshot(repo, str(image), SNAP)
    out = tmp_path / "out.img"
    result = await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert out.read_bytes() == image.read_bytes()
    assert result.requests == 1
    assert result.fetched_bytes < len(block) * 1.01


@pytest.mark.parametrize("sparse", [False, True])
async def test_loop_device_round_trip(
    repo: Repository, tmp_path: Path, loop_device: tuple[str, Path], sparse: bool
) -> None:
    device, _ = loop_device
    image = write_mixed_image(tmp_path / "disk.img", 20 * MiB + 4096, seed=11, run=1 * MiB)
    snap = await create_snapshot(repo, str(image), SNAP)
    with open(device, "r+b") as f:  # a dirty device: old data everywhere
        f.write(b"\x5a" * (48 * MiB))
    settings = RestoreSettings(reads_in_flight=4, max_range_bytes=1 * MiB, memory_bytes=16 * MiB, sparse=sparse)
    await restore(repo, snap.snapshot_id, device, settings)
    with open(device, "rb") as f:
        restored = f.read(image.stat().st_size)
        rest = f.read()
    original = image.read_bytes()
    if sparse:
        # --sparse promises a zeroed device; on this dirty one the holes keep the old bytes, data is exact.
        m = await repo.read_manifest(snap.snapshot_id)
        cs = m.chunk_size
        for slot, chunk in enumerate(m.slot_values()):
            piece = slice(slot * cs, min((slot + 1) * cs, m.size))
            assert restored[piece] == (b"\x5a" * len(original[piece]) if chunk < 0 else original[piece])
    else:
        assert restored == original, "holes on a block device are zeroed"
    assert rest == b"\x5a" * len(rest), "nothing beyond the snapshot was written"


async def test_loop_device_too_small(repo: Repository, tmp_path: Path, loop_device: tuple[str, Path]) -> None:
    device, _ = loop_device
    image = tmp_path / "big.img"
    with image.open("wb") as f:
        f.write(b"\x01" * MiB)
        f.truncate(64 * MiB)
    snap = await create_snapshot(repo, str(image), SNAP)
    with pytest.raises(TargetTooSmall, match=device):
        await restore(repo, snap.snapshot_id, device, TIGHT)
