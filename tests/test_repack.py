"""`repo prune` repacks mostly unused packs: the live chunks are copied (verified) into new packs, the old
packs deleted, and every snapshot still restores byte for byte through the index, although its manifest
(whose hash is its ID) still names the old places (issue 12)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import StorageError
from agent.pipeline.restore import restore
from agent.repo.check import check_repository
from agent.repo.config import init_repository
from agent.repo.crypto import KdfParams
from agent.repo.index import INDEX, index_objects, read_index
from agent.repo.locks import GARBAGE, LOCKS, reader_lock
from agent.repo.prune import prune
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.repo.stats import repository_stats
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage
from tests.support.cli import ferry
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for

CHEAP = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
CHUNK = 128 * 1024
SETTINGS = SnapshotSettings(pack_bytes=1 * MiB, block_chunk_bytes=CHUNK)


async def _repo(storage: LocalStorage | S3Storage, encrypted: bool = True) -> Repository:
    return (await init_repository(storage, None, b"pw" if encrypted else None, kdf=CHEAP)).repository


async def _pack_bytes(repo: Repository) -> int:
    return sum(max(0, s) for s in (await repo.pack_sizes()).values())


async def _restores(repo: Repository, snapshot_id: str, expected: bytes, target: Path) -> None:
    if target.exists():
        target.unlink()
    await restore(repo, snapshot_id, str(target), RestoreSettings())
    assert target.read_bytes() == expected, f"snapshot {snapshot_id} does not restore its data"


def _half_changed(old: bytes, seed: int, chunk: int = CHUNK) -> bytes:
    """``old`` with every other chunk replaced: each pack of ``old`` is then half used by the result."""
    rng = random.Random(seed)
    out = bytearray(old)
    for at in range(0, len(old), 2 * chunk):
        out[at : at + chunk] = rng.randbytes(chunk)
    return bytes(out)


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStorage | S3Storage:
    if request.param == "local":
        return LocalStorage(str(tmp_path / "repo"))
    server: SeaweedServer = request.getfixturevalue("s3_server")
    return await S3Storage.open(s3_settings_for(server), await make_bucket(server), "velero/ferry/app")


async def test_half_used_packs_are_repacked_and_the_kept_snapshot_restores_through_the_index(
    storage: LocalStorage | S3Storage, tmp_path: Path
) -> None:
    async with storage:
        repo = await _repo(storage)
        old = random.Random(1).randbytes(8 * MiB)
        new = _half_changed(old, 2)
        (tmp_path / "old.img").write_bytes(old)
        (tmp_path / "new.img").write_bytes(new)
        first = await create_snapshot(repo, str(tmp_path / "old.img"), SETTINGS)
        kept = await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
        manifest_before = await repo.storage.get(snapshot_key(kept.snapshot_id))
        old_packs = set((await repo.read_manifest(first.snapshot_id)).packs)
        await repo.forget(first.snapshot_id)
        before = await _pack_bytes(repo)
        assert before >= 12 * MiB

        unlimited = await prune(repo, grace_s=0, max_unused=None, dry_run=True)
        assert unlimited.repacked_packs == 0
        assert unlimited.marked_packs == 0, "packs half used were marked without repacking"

        marked = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
        assert marked.repacked_packs == len(old_packs)
        assert 3.9 * MiB <= marked.repacked_bytes <= 4.2 * MiB, "not the live half of the old packs"
        assert marked.marked_packs == len(old_packs)
        assert marked.unused_bytes <= 0.05 * (before - 4 * MiB)
        # Marked, not yet deleted: the kept snapshot already reads the new places.
        await _restores(repo, kept.snapshot_id, new, tmp_path / "a.img")

        swept = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
        assert swept.deleted_packs == len(old_packs)
        assert not old_packs & set(await repo.pack_sizes())
        after = await _pack_bytes(repo)
        assert after <= 8.3 * MiB, f"{after} bytes stored for 8 MiB of live data"
        assert await repo.storage.get(snapshot_key(kept.snapshot_id)) == manifest_before, "the manifest changed"
        await _restores(repo, kept.snapshot_id, new, tmp_path / "b.img")
        report = await check_repository(repo, read_data=True)
        assert not report.damage, report.damage
        assert not report.notes, report.notes
        assert not report.unreferenced_packs
        stats = await repository_stats(repo)
        assert stats.unreferenced_bytes == 0
        assert stats.unique_bytes == 8 * MiB
        # The next snapshot of the same data reuses the moved chunks.
        again = await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
        assert again.new_chunks == 0
        assert not await repo.storage.list(LOCKS)


async def test_repacking_stops_once_the_unused_data_is_within_the_limit(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    old = random.Random(3).randbytes(8 * MiB)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(_half_changed(old, 4))
    first = await create_snapshot(repo, str(tmp_path / "old.img"), SETTINGS)
    await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
    await repo.forget(first.snapshot_id)
    # About 4 MiB unused among 8 MiB used, half a MiB in each of eight packs: 25% (2 MiB) leaves about four.
    report = await prune(repo, grace_s=0, max_unused=0.25, dry_run=True)
    assert 4 <= report.repacked_packs <= 5, report
    assert report.unused_bytes <= 0.25 * 8.01 * MiB  # of the used bytes as stored (frames and seals)
    assert report.unused_bytes >= 0.25 * 8 * MiB - 0.6 * MiB, "more was repacked than the limit asks"
    everything = await prune(repo, grace_s=0, max_unused=0.0, dry_run=True)
    assert everything.repacked_packs == 8


async def test_a_chunk_that_does_not_verify_is_not_copied_and_its_pack_is_kept(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")), encrypted=False)
    old = random.Random(5).randbytes(2 * MiB)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(_half_changed(old, 6))
    first = await create_snapshot(repo, str(tmp_path / "old.img"), SETTINGS)
    kept = await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
    manifest = await repo.read_manifest(kept.snapshot_id)
    old_packs = set((await repo.read_manifest(first.snapshot_id)).packs)
    victim = next(r for r in manifest.chunks if manifest.packs[r.pack] in old_packs)
    name = manifest.packs[victim.pack]
    path = tmp_path / "repo" / pack_key(name)
    data = bytearray(path.read_bytes())
    data[victim.offset + victim.stored // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    await repo.forget(first.snapshot_id)
    report = await prune(repo, grace_s=0, max_unused=0.0, pack_bytes=1 * MiB)
    assert any(name in n and "does not verify" in n for n in report.notes), report.notes
    await prune(repo, grace_s=0, max_unused=0.0, pack_bytes=1 * MiB)
    assert name in await repo.pack_sizes(), "a pack holding a chunk that could not be copied was deleted"
    damage = (await check_repository(repo, read_data=True)).damage
    assert [d.what for d in damage] == [f"pack {name}"], damage


async def test_a_running_restore_holds_back_every_sweep(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    old = random.Random(7).randbytes(4 * MiB)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(_half_changed(old, 8))
    first = await create_snapshot(repo, str(tmp_path / "old.img"), SETTINGS)
    await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
    await repo.forget(first.snapshot_id)
    entered, release = asyncio.Event(), asyncio.Event()

    async def reader() -> None:
        async with reader_lock(repo):
            entered.set()
            await release.wait()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(entered.wait(), 30)
    marked = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert marked.marked_packs > 0
    held = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert held.readers == 1
    assert held.deleted_packs == 0
    assert held.pending_packs == marked.marked_packs
    assert any("no mark is swept" in n for n in held.notes), held.notes
    release.set()
    await asyncio.wait_for(task, 30)
    swept = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert swept.deleted_packs == marked.marked_packs


class _MarksFail(LocalStorage):
    """A prune stopped after its repack wrote new packs and their index object, before its mark."""

    async def put(self, key: str, data: bytes) -> None:
        if key.startswith(GARBAGE):
            raise StorageError("stopped here")
        await super().put(key, data)


async def test_a_repack_stopped_before_its_mark_loses_nothing_and_the_next_prune_finishes(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    old = random.Random(9).randbytes(4 * MiB)
    new = _half_changed(old, 10)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(new)
    first = await create_snapshot(repo, str(tmp_path / "old.img"), SETTINGS)
    kept = await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
    await repo.forget(first.snapshot_id)
    failing = Repository(_MarksFail(str(tmp_path / "repo")), config=repo.config, master=repo.master)
    with pytest.raises(StorageError, match="stopped here"):
        await prune(failing, grace_s=0, pack_bytes=1 * MiB)
    assert not await repo.storage.list(GARBAGE)
    report = await check_repository(repo, read_data=True)
    assert not report.damage, report.damage
    await _restores(repo, kept.snapshot_id, new, tmp_path / "a.img")
    for _ in range(4):
        await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert await _pack_bytes(repo) <= 4.2 * MiB
    await _restores(repo, kept.snapshot_id, new, tmp_path / "b.img")
    assert not (await check_repository(repo, read_data=True)).damage


class _IndexVanishes(LocalStorage):
    """The first read of an index object finds it gone: a prune replaced it between listing and reading."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.replaced = False

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        if key.startswith(INDEX) and not self.replaced:
            self.replaced = True
            data = await super().get(key, max_bytes)
            await super().delete(key)
            await super().put(INDEX + "f" * 64, data)
        return await super().get(key, max_bytes)


async def test_an_index_object_replaced_while_it_is_read_is_found_again(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")), encrypted=False)
    (tmp_path / "a.img").write_bytes(random.Random(11).randbytes(1 * MiB))
    made = await create_snapshot(repo, str(tmp_path / "a.img"), SETTINGS)
    vanishing = Repository(_IndexVanishes(str(tmp_path / "repo")), config=repo.config, master=repo.master)
    objects, unreadable = await index_objects(vanishing)
    assert not unreadable
    assert [o.key for o in objects] == [INDEX + "f" * 64]
    assert sum(len(o.records) for o in objects) == made.chunks
    assert len((await read_index(repo)).chunks) == made.chunks


def test_the_command_line_repacks_and_checks_its_limit(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    old = random.Random(12).randbytes(16 * MiB)  # four chunks of the default 4 MiB, in one pack
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(_half_changed(old, 13, SnapshotSettings().block_chunk_bytes))
    first = ferry("snapshot", "create", "--repo", root, str(tmp_path / "old.img"))
    assert first.returncode == 0, first.stderr
    second = ferry("snapshot", "create", "--repo", root, str(tmp_path / "new.img"))
    assert second.returncode == 0, second.stderr
    assert ferry("snapshot", "forget", "--repo", root, first.stdout.strip()).returncode == 0
    out = ferry("repo", "prune", "--repo", root, "--grace", "0s", "--max-unused", "0%")
    assert out.returncode == 0, out.stderr
    assert "repack 1 mostly unused packs" in out.stdout, out.stdout
    for bad in ("150%", "-1%", "lots", "nan"):
        status = ferry("repo", "prune", "--repo", root, "--max-unused", bad)
        assert status.returncode == 2, (bad, status.stdout, status.stderr)
        assert "--max-unused" in status.stderr
    out = ferry("repo", "prune", "--repo", root, "--grace", "0s", "--max-unused", "unlimited")
    assert out.returncode == 0, out.stderr
    assert "repack 0 mostly unused packs" in out.stdout
    restored = ferry("restore", "--repo", root, "--snapshot", second.stdout.strip(), str(tmp_path / "out.img"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "out.img").read_bytes() == (tmp_path / "new.img").read_bytes()
