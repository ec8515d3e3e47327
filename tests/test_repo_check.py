"""``ferry repo check``: a sound repository passes; each kind of damage is found and named — a pack
deleted, cut short or replaced by a directory, a manifest tampered with or unreadable, and (with
``--read-data``) a flipped byte inside a pack — while packs no snapshot refers to are reported, not as
damage (``agent.repo.check``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.repo.check import check_repository
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.settings import MiB, SnapshotSettings
from agent.storage.local import LocalStorage
from tests.support.cli import ferry
from tests.support.data import write_mixed_image

SETTINGS = SnapshotSettings(pack_bytes=1 * MiB)


async def _repo(tmp_path: Path) -> tuple[Repository, Path, str, list[str]]:
    image = write_mixed_image(tmp_path / "disk.img", 4 * MiB, seed=31, run=256 * 1024)
    root = tmp_path / "repo"
    repo = Repository(LocalStorage(str(root)))
    made = await create_snapshot(repo, str(image), SETTINGS)
    packs = list((await repo.read_manifest(made.snapshot_id)).packs)
    return repo, root, made.snapshot_id, packs


async def test_a_sound_repository_passes_with_and_without_reading_data(repo: Repository, tmp_path: Path) -> None:
    image = write_mixed_image(tmp_path / "disk.img", 3 * MiB, seed=32, run=256 * 1024)
    made = await create_snapshot(repo, str(image), SETTINGS)
    seen: list[tuple[int, int]] = []
    report = await check_repository(repo, read_data=True, progress=lambda d, t: seen.append((d, t)))
    assert report.ok, report.damage
    assert report.snapshots == 1
    assert report.chunks_read == made.chunks
    assert report.bytes_read == made.new_stored_bytes
    assert seen[-1] == (made.new_stored_bytes, made.new_stored_bytes)
    assert report.unreferenced_packs == []


@pytest.mark.parametrize("damage", ["deleted", "truncated", "directory"])
async def test_a_damaged_pack_is_named_with_the_snapshots_that_need_it(tmp_path: Path, damage: str) -> None:
    repo, root, sid, packs = await _repo(tmp_path)
    victim = root / pack_key(packs[0])
    if damage == "deleted":
        victim.unlink()
    elif damage == "truncated":
        with victim.open("r+b") as f:
            f.truncate(victim.stat().st_size - 1)
    else:
        victim.unlink()
        victim.mkdir()
    report = await check_repository(repo)
    assert not report.ok
    (found,) = report.damage
    assert found.what == f"pack {packs[0]}"
    if damage == "directory":
        assert "not an object" in found.problem
    else:
        assert sid in found.problem
        assert ("missing" if damage == "deleted" else "cut short") in found.problem


async def test_a_flipped_byte_is_found_only_by_reading_the_data(tmp_path: Path) -> None:
    repo, root, _, packs = await _repo(tmp_path)
    victim = root / pack_key(packs[-1])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    victim.write_bytes(bytes(data))
    assert (await check_repository(repo)).ok
    report = await check_repository(repo, read_data=True)
    (found,) = report.damage
    assert found.what == f"pack {packs[-1]}"
    assert "chunk " in found.problem
    assert report.transit_faults == 0


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
async def test_a_damaged_manifest_is_named(tmp_path: Path, damage: str) -> None:
    repo, root, sid, _ = await _repo(tmp_path)
    manifest = root / snapshot_key(sid)
    data = bytearray(manifest.read_bytes())
    if damage == "tampered":
        data[-2] ^= 1
    else:
        del data[len(data) // 2 :]
    manifest.write_bytes(bytes(data))
    report = await check_repository(repo)
    (found,) = report.damage
    assert found.what == f"snapshot {sid}"


async def test_packs_no_snapshot_needs_are_reported_not_as_damage(tmp_path: Path) -> None:
    repo, root, sid, packs = await _repo(tmp_path)
    await repo.forget(sid)
    report = await check_repository(repo, read_data=True)
    assert report.ok
    assert sorted(report.unreferenced_packs) == sorted(packs)
    assert report.unreferenced_bytes == sum((root / pack_key(p)).stat().st_size for p in packs)


def test_the_command_reports_and_exits_1_on_damage(tmp_path: Path) -> None:
    image = write_mixed_image(tmp_path / "disk.img", 2 * MiB, seed=33, run=256 * 1024)
    repo = str(tmp_path / "repo")
    sid = ferry("snapshot", "create", "--repo", repo, str(image)).stdout.strip()
    sound = ferry("repo", "check", "--repo", repo, "--read-data")
    assert sound.returncode == 0, sound.stderr
    assert sound.stdout.splitlines()[-1] == "no damage found"
    pack = next((tmp_path / "repo" / "packs").rglob("*"), None)
    while pack is not None and pack.is_dir():
        pack = next(pack.iterdir())
    assert pack is not None
    pack.unlink()
    damaged = ferry("repo", "check", "--repo", repo, "--json")
    assert damaged.returncode == 1
    report = json.loads(damaged.stdout)
    assert report["ok"] is False
    assert report["damage"] == [f"pack {pack.name}: missing; snapshots {sid} refer to it"]
