"""`repo prune` repacks mostly unused packs: the live chunks are copied (verified) into new packs, the old
packs deleted, and every snapshot still restores byte for byte through the index, although its manifest
(whose hash is its ID) still names the old places (issue 12)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import ConfigError, RepositoryError, StorageError
from agent.pipeline.restore import restore
from agent.repo.check import check_repository
from agent.repo.config import init_repository
from agent.repo.crypto import KdfParams
from agent.repo.index import INDEX, decode_index, encode_index, index_key, index_objects, read_index
from agent.repo.locks import GARBAGE, LOCKS, reader_lock
from agent.repo.prune import prune, repair_index
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.repo.stats import repository_stats
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage
from tests.support.cli import ferry

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
        # Marked, not yet deleted: the kept snapshot already reads the new places, and stats and check agree
        # that the old packs are used by nothing.
        await _restores(repo, kept.snapshot_id, new, tmp_path / "a.img")
        unused = (await check_repository(repo)).unreferenced_bytes
        assert unused >= 4 * MiB
        assert (await repository_stats(repo)).unreferenced_bytes == unused

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
    assert report.repacked_bytes <= report.written_bytes, "bytes not copied were counted as repacked"
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
        self.replacement = ""

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        if key.startswith(INDEX) and not self.replaced:
            self.replaced = True
            packs, records, snapshots = decode_index(await super().get(key, max_bytes), None, 1 << 30, "index")
            merged = encode_index(packs, records, {**snapshots, "0" * 64: {}}, None)  # what a prune writes
            self.replacement = index_key(merged)
            await super().put(self.replacement, merged)
            await super().delete(key)
        return await super().get(key, max_bytes)


async def test_an_index_object_replaced_while_it_is_read_is_found_again(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")), encrypted=False)
    (tmp_path / "a.img").write_bytes(random.Random(11).randbytes(1 * MiB))
    made = await create_snapshot(repo, str(tmp_path / "a.img"), SETTINGS)
    vanishing = Repository(_IndexVanishes(str(tmp_path / "repo")), config=repo.config, master=repo.master)
    objects, unreadable = await index_objects(vanishing)
    assert not unreadable
    assert [o.key for o in objects] == [vanishing.storage.replacement]  # type: ignore[attr-defined]
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


async def _repacked(tmp_path: Path) -> tuple[Repository, str, bytes]:
    """A repository where a prune repacked the kept snapshot's chunks and marked the old packs (grace 0)."""
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    old = random.Random(21).randbytes(8 * MiB)
    new = _half_changed(old, 22)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(new)
    first = await create_snapshot(repo, str(tmp_path / "old.img"), SETTINGS)
    kept = await create_snapshot(repo, str(tmp_path / "new.img"), SETTINGS)
    await repo.forget(first.snapshot_id)
    report = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert report.repacked_packs
    assert report.marked_packs
    return repo, kept.snapshot_id, new


class _Gated(LocalStorage):
    """Holds a prune just before it deletes a pack, and a reader just before it lists the marks."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.hold_pack_delete: asyncio.Event | None = None
        self.at_pack_delete = asyncio.Event()
        self.hold_mark_listing: asyncio.Event | None = None
        self.at_mark_listing = asyncio.Event()

    async def delete(self, key: str) -> None:
        if key.startswith("packs/") and self.hold_pack_delete is not None:
            self.at_pack_delete.set()
            await self.hold_pack_delete.wait()
        await super().delete(key)

    async def list(self, prefix: str) -> list[str]:
        if prefix == GARBAGE and self.hold_mark_listing is not None:
            self.at_mark_listing.set()
            await self.hold_mark_listing.wait()
        return await super().list(prefix)


async def test_a_restore_starting_while_a_prune_sweeps_reads_no_deleted_pack(tmp_path: Path) -> None:
    """The restore's lock is written after the prune looked for readers, and it reads the marks while the
    prune is about to delete packs: it must not take those packs for usable (found by a break-test: it read
    the packs before the deletion and the marks after, and failed with "pack ... is missing")."""
    repo, kept, data = await _repacked(tmp_path)
    pruner, reader = _Gated(str(tmp_path / "repo")), _Gated(str(tmp_path / "repo"))
    pruner.hold_pack_delete, reader.hold_mark_listing = asyncio.Event(), asyncio.Event()
    sweeping = asyncio.create_task(prune(Repository(pruner, config=repo.config, master=repo.master), grace_s=0))
    await asyncio.wait_for(pruner.at_pack_delete.wait(), 30)  # no reader seen; about to delete
    rrepo = Repository(reader, config=repo.config, master=repo.master)
    restoring = asyncio.create_task(restore(rrepo, kept, str(tmp_path / "out.img"), RestoreSettings()))
    await asyncio.wait_for(reader.at_mark_listing.wait(), 30)  # the restore holds its lock
    pruner.hold_pack_delete.set()
    assert (await asyncio.wait_for(sweeping, 60)).deleted_packs  # packs, then marks, deleted
    reader.hold_mark_listing.set()
    await asyncio.wait_for(restoring, 60)
    assert (tmp_path / "out.img").read_bytes() == data


class _FlipIndexOnce(LocalStorage):
    """The first read of each index object arrives with a byte flipped (in transit: the stored one is intact)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.flipped: set[str] = set()

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        data = await super().get(key, max_bytes)
        if key.startswith(INDEX) and key not in self.flipped:
            self.flipped.add(key)
            damaged = bytearray(data)
            damaged[len(damaged) // 2] ^= 1
            return bytes(damaged)
        return data


async def test_an_index_object_damaged_in_transit_is_fetched_again_and_prune_keeps_moved_chunks(
    tmp_path: Path,
) -> None:
    """Found by a break-test: a prune that read the index with a byte flipped on the way took it for
    unreadable, marked the repacked pack, and the next prune deleted it (the kept snapshot was lost)."""
    repo, kept, data = await _repacked(tmp_path)
    await prune(repo, grace_s=0, pack_bytes=1 * MiB)  # the old packs are swept: chunks are where the index says
    flaky = Repository(_FlipIndexOnce(str(tmp_path / "repo")), config=repo.config, master=repo.master)
    assert (await prune(flaky, grace_s=0)).marked_packs == 0
    await prune(repo, grace_s=0)
    await _restores(repo, kept, data, tmp_path / "out.img")


async def test_prune_refuses_while_an_index_object_cannot_be_read_and_repair_index_mends_it(tmp_path: Path) -> None:
    repo, kept, data = await _repacked(tmp_path)
    await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    [key] = await repo.storage.list(INDEX)
    path = tmp_path / "repo" / key
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(RepositoryError, match=r"does not hash to its name .* repair-index"):
        await prune(repo, grace_s=0)
    assert not await repo.storage.list(GARBAGE)
    await repair_index(repo)
    for _ in range(2):
        await prune(repo, grace_s=0)
    await _restores(repo, kept, data, tmp_path / "out.img")
    assert not (await check_repository(repo, read_data=True)).damage


async def test_a_lost_index_object_does_not_make_prune_delete_the_packs_it_described(tmp_path: Path) -> None:
    """Chunks a repack moved are found through the index; with its object deleted by hand, prune reads the
    trailers of the packs no index object names, so it still sees where those chunks are."""
    repo, kept, data = await _repacked(tmp_path)
    await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    for key in await repo.storage.list(INDEX):
        await repo.storage.delete(key)
    for _ in range(2):
        await prune(repo, grace_s=0)
    await _restores(repo, kept, data, tmp_path / "out.img")


async def test_repair_index_between_a_repack_and_its_sweep_keeps_the_new_places(tmp_path: Path) -> None:
    repo, kept, data = await _repacked(tmp_path)
    await repair_index(repo)
    swept = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert swept.kept_packs == 0, "the rebuilt index sent readers back to the packs being removed"
    assert swept.repacked_packs == 0
    await _restores(repo, kept, data, tmp_path / "out.img")


async def test_a_killed_prune_s_lock_on_this_machine_does_not_hold_the_next_one(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    body = {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": 0}  # above Linux's pid_max: no process
    await repo.storage.put(f"{LOCKS}prune", json.dumps(body).encode())
    await prune(repo, grace_s=0)
    await repo.storage.put(f"{LOCKS}prune", json.dumps({**body, "host": "elsewhere"}).encode())
    with pytest.raises(ConfigError, match=r"another prune .* goes stale"):
        await prune(repo, grace_s=0)


async def test_packs_of_an_upgraded_format_1_repository_are_repacked_too(tmp_path: Path) -> None:
    """Format 1 packs have no trailer and no index describes them: their unused part counts from their size
    (found by a break-test: prune reported 0 B unused and never repacked them)."""
    old = random.Random(31).randbytes(8 * MiB)
    new = _half_changed(old, 32)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(new)
    bare = Repository(LocalStorage(str(tmp_path / "repo")))  # no config: written as format 1
    first = await create_snapshot(bare, str(tmp_path / "old.img"), SETTINGS)
    kept = await create_snapshot(bare, str(tmp_path / "new.img"), SETTINGS)
    repo = (await init_repository(LocalStorage(str(tmp_path / "repo")), None, None)).repository
    assert repo.config is not None
    await repo.forget(first.snapshot_id)
    report = await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert report.repacked_packs >= 7
    await prune(repo, grace_s=0, pack_bytes=1 * MiB)
    assert await _pack_bytes(repo) <= 8.3 * MiB
    await _restores(repo, kept.snapshot_id, new, tmp_path / "out.img")
