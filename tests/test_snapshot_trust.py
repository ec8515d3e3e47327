"""Deduplication trusts no pack it has not seen: a snapshot made after a pack was lost or cut short, or
after a manifest naming packs that are not there was put into the repository, stores those chunks again
and restores whole. (Issue 12: both left `snapshot create` of intact data at "0 new chunks", and the new
snapshot could not be restored.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.pipeline.restore import restore
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from tests.support.data import write_mixed_image

SETTINGS = SnapshotSettings(pack_bytes=1 * MiB)


def _image(tmp_path: Path) -> Path:
    return write_mixed_image(tmp_path / "disk.img", 6 * MiB + 123, seed=11, run=512 * 1024)


async def _restores_whole(repo: Repository, snapshot_id: str, image: Path, target: Path) -> None:
    await restore(repo, snapshot_id, str(target), RestoreSettings())
    assert target.read_bytes() == image.read_bytes()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
async def test_a_snapshot_after_a_pack_was_damaged_stores_its_chunks_again(tmp_path: Path, damage: str) -> None:
    image = _image(tmp_path)
    root = tmp_path / "repo"
    repo = Repository(LocalStorage(str(root)))
    first = await create_snapshot(repo, str(image), SETTINGS)
    manifest = await repo.read_manifest(first.snapshot_id)
    victim = root / pack_key(manifest.packs[0])
    size = victim.stat().st_size
    if damage == "deleted":
        victim.unlink()
    else:
        with victim.open("r+b") as f:
            f.truncate(size // 2)
    second = await create_snapshot(repo, str(image), SETTINGS)
    assert second.new_chunks > 0, "chunks of the damaged pack were taken as stored"
    await _restores_whole(repo, second.snapshot_id, image, tmp_path / "restored.img")
    # The same chunks packed the same way make the same pack (named by its hash): the damaged one is
    # whole again, and the first snapshot restores too.
    assert victim.stat().st_size == size
    await _restores_whole(repo, first.snapshot_id, image, tmp_path / "first.img")


async def test_a_manifest_naming_packs_that_are_not_there_poisons_nothing(tmp_path: Path) -> None:
    """A manifest copied in from another repository (or forged) names chunks of the same data in packs this
    repository does not have."""
    image = _image(tmp_path)
    elsewhere = Repository(LocalStorage(str(tmp_path / "elsewhere")))
    foreign = await create_snapshot(elsewhere, str(image), SETTINGS)
    root = tmp_path / "repo"
    (root / "snapshots").mkdir(parents=True)
    shutil.copy(tmp_path / "elsewhere" / snapshot_key(foreign.snapshot_id), root / snapshot_key(foreign.snapshot_id))
    repo = Repository(LocalStorage(str(root)))
    made = await create_snapshot(repo, str(image), SETTINGS)
    assert made.reused_chunks == 0
    assert made.new_chunks == foreign.new_chunks
    await _restores_whole(repo, made.snapshot_id, image, tmp_path / "restored.img")


async def test_intact_packs_are_still_reused(repo: Repository, tmp_path: Path) -> None:
    image = _image(tmp_path)
    await create_snapshot(repo, str(image), SETTINGS)
    again = await create_snapshot(repo, str(image), SETTINGS)
    assert again.new_chunks == 0
    assert again.reused_chunks > 0
    sizes = await repo.pack_sizes()
    assert sizes
    assert all(size > 0 for size in sizes.values())
