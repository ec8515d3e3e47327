"""`repo prune` deletes what no snapshot needs and nothing else, also while snapshots are written and restored
at the same time; packs of an interrupted snapshot are reused by the next one or pruned; the index is
rebuilt by `repo repair-index` and checked by `repo check` (issue 12)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import ConfigError, RepositoryError, StorageError
from agent.pipeline.restore import restore
from agent.repo.check import check_repository
from agent.repo.config import init_repository
from agent.repo.crypto import KdfParams
from agent.repo.index import INDEX, read_index
from agent.repo.prune import GARBAGE, LOCKS, PruneReport, prune, repair_index
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage
from tests.support.cli import ferry

CHEAP = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
SETTINGS = SnapshotSettings(pack_bytes=1 * MiB, block_chunk_bytes=128 * 1024)


async def _repo(storage: LocalStorage | S3Storage, encrypted: bool = True) -> Repository:
    return (await init_repository(storage, None, b"pw" if encrypted else None, kdf=CHEAP)).repository


def _image(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


async def _restores(repo: Repository, snapshot_id: str, expected: bytes, target: Path) -> None:
    if target.exists():
        target.unlink()
    await restore(repo, snapshot_id, str(target), RestoreSettings())
    assert target.read_bytes() == expected, f"snapshot {snapshot_id} does not restore its data"


async def _pack_bytes(repo: Repository) -> int:
    return sum(max(0, s) for s in (await repo.pack_sizes()).values())


async def test_forgotten_snapshots_data_is_marked_then_deleted_and_the_rest_restores(
    storage: LocalStorage | S3Storage, tmp_path: Path
) -> None:
    async with storage:
        repo = await _repo(storage)
        shared = random.Random(1).randbytes(2 * MiB)
        a, b = tmp_path / "a.img", tmp_path / "b.img"
        a.write_bytes(shared + random.Random(2).randbytes(2 * MiB))
        b.write_bytes(shared + random.Random(3).randbytes(2 * MiB))
        first = await create_snapshot(repo, str(a), SETTINGS)
        second = await create_snapshot(repo, str(b), SETTINGS)
        before = await _pack_bytes(repo)
        await repo.forget(first.snapshot_id)
        marked = await prune(repo, grace_s=0)
        assert marked.marked_packs > 0
        assert marked.deleted_packs == 0, "a pack was deleted in the run that marked it"
        assert await _pack_bytes(repo) == before
        swept = await prune(repo, grace_s=0)
        assert swept.deleted_packs == marked.marked_packs
        after = await _pack_bytes(repo)
        assert after < before
        # The unique 2 MiB of the first snapshot are gone (within a pack's worth of shared data).
        assert before - after >= 2 * MiB - SETTINGS.pack_bytes
        await _restores(repo, second.snapshot_id, b.read_bytes(), tmp_path / "out.img")
        assert not (await check_repository(repo, read_data=True)).damage
        assert len((await read_index(repo)).objects) == 1


async def test_prune_leaves_recent_data_and_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    image = _image(tmp_path / "a.img", 1 * MiB, 4)
    made = await create_snapshot(repo, str(image), SETTINGS)
    await repo.forget(made.snapshot_id)
    assert (await prune(repo)).marked_packs == 0, "packs younger than the grace period were marked"
    dry = await prune(repo, grace_s=0, dry_run=True)
    assert dry.marked_packs > 0
    assert not await repo.storage.list(GARBAGE)
    assert (await prune(repo, grace_s=0)).marked_packs == dry.marked_packs


async def test_a_running_writer_holds_back_marks_made_after_it_started(tmp_path: Path) -> None:
    """A writer that read the index before a mark may reuse the marked packs: the sweep waits until it has
    ended, then keeps what its snapshot uses."""
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    image = _image(tmp_path / "a.img", 1 * MiB, 5)
    old = await create_snapshot(repo, str(image), SETTINGS)
    await repo.forget(old.snapshot_id)
    release = asyncio.Event()
    reached = asyncio.Event()

    def progress(done: int, total: int) -> None:
        reached.set()

    async def slow_writer() -> str:
        from agent.repo.locks import writer_lock  # noqa: PLC0415

        async with writer_lock(repo):
            reached.set()
            await release.wait()
        return (await create_snapshot(repo, str(image), SETTINGS, progress)).snapshot_id

    # The writer holds a lock from before the mark; the mark's sweep must wait for it.
    task = asyncio.create_task(slow_writer())
    await asyncio.wait_for(reached.wait(), 30)
    marked = await prune(repo, grace_s=0)
    assert marked.marked_packs > 0
    held = await prune(repo, grace_s=0)
    assert held.deleted_packs == 0
    assert held.pending_packs == marked.marked_packs
    release.set()
    new_id = await asyncio.wait_for(task, 60)
    swept = await prune(repo, grace_s=0)
    assert swept.deleted_packs + swept.kept_packs == marked.marked_packs
    await _restores(repo, new_id, image.read_bytes(), tmp_path / "out.img")


async def test_prune_races_snapshots_and_restores_and_loses_nothing(tmp_path: Path) -> None:
    """Many rounds: snapshots of data that forgotten snapshots held (so writers reuse what prune marks and
    sweeps, and packs are partly used, so prune repacks them), restores of every live snapshot, and prunes
    with no grace period, all at once. Every snapshot written restores byte for byte at the end of each
    round and of the test."""
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    rng = random.Random(7)
    data = rng.randbytes(3 * MiB + 4096)
    chunk = SETTINGS.block_chunk_bytes
    refused: list[str] = []
    reports: list[PruneReport] = []
    live: dict[str, bytes] = {}
    restores = 0
    for round_ in range(8):
        # A third of the chunks rewritten each round: the packs of a forgotten snapshot stay partly used by
        # the next two, and new snapshots reuse chunks of packs prune is moving.
        changed = bytearray(data)
        for at in range((round_ % 3) * chunk, len(data), 3 * chunk):
            changed[at : at + chunk] = rng.randbytes(min(chunk, len(data) - at))
        data = bytes(changed)
        source = tmp_path / f"v{round_}.img"
        source.write_bytes(data)
        for old in list(live)[:-1]:  # forget all but the newest: their data becomes prune's to take
            await repo.forget(old)
            del live[old]

        async def write(src: Path = source, content: bytes = data) -> None:
            made = await create_snapshot(repo, str(src), SETTINGS)
            live[made.snapshot_id] = content

        async def read(n: int) -> None:
            nonlocal restores
            for snapshot_id, content in list(live.items()):
                await _restores(repo, snapshot_id, content, tmp_path / f"r{n}.img")
                restores += 1

        async def pruner() -> None:
            for _ in range(3):
                try:
                    reports.append(await prune(repo, grace_s=0, pack_bytes=1 * MiB))
                except ConfigError as e:  # the other pruner holds the lock: fine
                    refused.append(str(e))

        await asyncio.gather(write(), write(), read(0), read(1), pruner(), pruner())
        for snapshot_id, content in live.items():
            await _restores(repo, snapshot_id, content, tmp_path / "check.img")
    await prune(repo, grace_s=0)
    await prune(repo, grace_s=0)
    report = await check_repository(repo, read_data=True)
    assert not report.damage, report.damage
    for snapshot_id, content in live.items():
        await _restores(repo, snapshot_id, content, tmp_path / "final.img")
    assert restores > 0
    assert sum(r.repacked_packs for r in reports) > 0, "nothing was repacked: the race did not move chunks"
    assert sum(r.deleted_packs for r in reports) > 0
    assert all("another prune" in r for r in refused), refused
    assert not await repo.storage.list(LOCKS), "a lock was left behind"


async def _interrupted(repo: Repository, image: Path) -> None:
    """A snapshot cancelled once most of the image has been read: some packs stored, no manifest."""
    size = image.stat().st_size
    before = await repo.snapshot_ids()
    packs = len(await repo.pack_sizes())
    stop = asyncio.Event()

    def progress(done: int, total: int) -> None:
        if done >= size * 3 // 4:
            stop.set()

    task = asyncio.create_task(create_snapshot(repo, str(image), SETTINGS, progress))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await repo.snapshot_ids() == before
    assert len(await repo.pack_sizes()) > packs, "nothing was stored before the interruption"


async def test_packs_of_an_interrupted_snapshot_are_reused_by_the_next(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    image = _image(tmp_path / "a.img", 4 * MiB, 8)
    await _interrupted(repo, image)
    orphans = await _pack_bytes(repo)
    made = await create_snapshot(repo, str(image), SETTINGS)
    assert made.reused_chunks > 0, "the interrupted snapshot's packs were uploaded again"
    assert made.new_stored_bytes < 4 * MiB - orphans // 2
    await _restores(repo, made.snapshot_id, image.read_bytes(), tmp_path / "out.img")


async def test_packs_of_an_interrupted_snapshot_are_pruned(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")), encrypted=False)
    image = _image(tmp_path / "a.img", 4 * MiB, 9)
    await _interrupted(repo, image)
    await prune(repo, grace_s=0)
    await prune(repo, grace_s=0)
    assert not await repo.pack_sizes()


async def test_prune_refuses_while_a_snapshot_cannot_be_read(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    made = await create_snapshot(repo, str(_image(tmp_path / "a.img", 1 * MiB, 10)), SETTINGS)
    path = tmp_path / "repo" / snapshot_key(made.snapshot_id)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(RepositoryError, match="prune deletes nothing while it cannot tell"):
        await prune(repo, grace_s=0)
    assert not await repo.storage.list(LOCKS)


async def test_one_prune_at_a_time(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    await repo.storage.put(f"{LOCKS}prune", b"{}")
    with pytest.raises(ConfigError, match="another prune"):
        await prune(repo, grace_s=0)
    os.utime(tmp_path / "repo" / "locks" / "prune", (0, 0))  # its owner is long gone
    await prune(repo, grace_s=0)


async def test_the_index_is_rebuilt_from_manifests_and_pack_trailers(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    image = _image(tmp_path / "a.img", 2 * MiB, 11)
    made = await create_snapshot(repo, str(image), SETTINGS)
    await _interrupted(repo, _image(tmp_path / "b.img", 6 * MiB, 12))
    for key in await repo.storage.list(INDEX):
        await repo.storage.delete(key)
    (tmp_path / "repo" / "index").mkdir()
    (tmp_path / "repo" / "index" / ("0" * 64)).write_bytes(b"not an index")
    report = await check_repository(repo)
    assert any("index object" in str(d) and "repair-index" in str(d) for d in report.damage), report.damage
    rebuilt = await repair_index(repo)
    assert rebuilt.snapshots == 1
    index = await read_index(repo)
    assert made.snapshot_id in index.snapshots
    assert len(index.chunks) > made.chunks, "the interrupted snapshot's chunks were not indexed from its packs"
    assert not (await check_repository(repo)).damage
    again = await create_snapshot(repo, str(tmp_path / "b.img"), SETTINGS)
    assert again.reused_chunks > 0


async def test_check_notes_packs_the_index_places_chunks_in_that_are_gone(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    made = await create_snapshot(repo, str(_image(tmp_path / "a.img", 1 * MiB, 13)), SETTINGS)
    await repo.forget(made.snapshot_id)
    index = await read_index(repo)
    victim = index.packs[0]
    count = sum(1 for r in index.chunks.values() if index.packs[r.pack] == victim)
    (tmp_path / "repo" / pack_key(victim)).unlink()
    report = await check_repository(repo)
    assert not report.damage, "no snapshot refers to those chunks: nothing is lost"
    assert report.notes == [
        f"the index places {count} chunks in pack {victim}, which is missing (no snapshot refers to them there); "
        "`ferry repo repair-index` rebuilds the index from the packs and manifests"
    ]
    await repair_index(repo)
    assert not (await check_repository(repo)).notes


def test_the_command_line_prunes_and_repairs(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    _image(tmp_path / "a.img", 1 * MiB, 14)
    made = ferry("snapshot", "create", "--repo", root, str(tmp_path / "a.img"))
    assert made.returncode == 0, made.stderr
    assert ferry("snapshot", "forget", "--repo", root, made.stdout.strip()).returncode == 0
    out = ferry("repo", "prune", "--repo", root, "--grace", "0s")
    assert out.returncode == 0, out.stderr
    assert "mark 1 packs" in out.stdout or "mark 2 packs" in out.stdout, out.stdout
    out = ferry("repo", "prune", "--repo", root, "--grace", "0s", "--json")
    assert out.returncode == 0, out.stderr
    assert '"stored_bytes_after": 0' in out.stdout, out.stdout
    out = ferry("repo", "repair-index", "--repo", root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("rebuilt the index: 0 chunks in 0 packs, 0 snapshots")
    status = ferry("repo", "prune", "--repo", root, "--grace", "soon")
    assert status.returncode == 2
    assert "--grace" in status.stderr


class _PackDeletesFail(LocalStorage):
    """A prune stopped while it deletes packs (as by Ctrl-C or a crash): the second pack delete fails."""

    deleted = 0

    async def delete(self, key: str) -> None:
        if key.startswith("packs/"):
            if self.deleted:
                raise StorageError("stopped here")
            self.deleted += 1
        await super().delete(key)


async def test_a_prune_stopped_while_it_deletes_packs_leaves_no_damage(tmp_path: Path) -> None:
    repo = await _repo(LocalStorage(str(tmp_path / "repo")))
    kept = await create_snapshot(repo, str(_image(tmp_path / "a.img", 2 * MiB, 15)), SETTINGS)
    gone = await create_snapshot(repo, str(_image(tmp_path / "b.img", 4 * MiB, 16)), SETTINGS)
    await repo.forget(gone.snapshot_id)
    await prune(repo, grace_s=0)
    failing = Repository(_PackDeletesFail(str(tmp_path / "repo")), config=repo.config, master=repo.master)
    with pytest.raises(StorageError, match="stopped here"):
        await prune(failing, grace_s=0)
    assert not await repo.storage.list(LOCKS)
    report = await check_repository(repo, read_data=True)
    assert not report.damage, report.damage
    assert not report.notes, report.notes
    swept = await prune(repo, grace_s=0)
    assert swept.deleted_packs > 0
    await _restores(repo, kept.snapshot_id, (tmp_path / "a.img").read_bytes(), tmp_path / "out.img")
    assert not (await check_repository(repo)).damage


def test_local_puts_and_deletes_in_one_directory_at_once_never_fail(tmp_path: Path) -> None:
    """A delete removes the directory it empties; a put into it at that moment could fail with "File
    exists" from makedirs (seen as a prune lock that could not be written, in the race test above)."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    storage = LocalStorage(str(tmp_path / "repo"))

    def churn(n: int) -> None:
        for i in range(300):
            storage._put(f"locks/{n}-{i}", b"x")
            storage._delete(f"locks/{n}-{i}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(churn, range(4), timeout=120))
    assert not (tmp_path / "repo" / "locks").exists()
