"""Resuming an interrupted restore: what is on the target and verified is kept, the rest fetched.

A "kill" here stops the restore at a random point of its progress (the awaiting task is cancelled, so the
worker threads finish the chunk they are on, as a killed process's writes already issued would be on the
volume); the command line's SIGKILL is tried in tests/test_cli_resume.py, the agent's in
tests/test_agent_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.aio.threads import WorkerPool
from agent.backup.writer import SnapshotResult, create_snapshot
from agent.errors import Stopped
from agent.pipeline.block_target import BlockTarget
from agent.pipeline.plan import plan_block, plan_tree
from agent.pipeline.restore import RestoreResult, restore
from agent.pipeline.resume import find_kept
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from tests.support.data import make_sample_tree, tree_differences, write_mixed_image
from tests.support.fidelity import ANY, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, acl

SNAP = SnapshotSettings(block_chunk_bytes=256 * KiB, pack_bytes=2 * MiB, threads=2)
SMALL = RestoreSettings(reads_in_flight=4, max_range_bytes=256 * KiB, max_gap_bytes=16 * KiB, memory_bytes=4 * MiB)
IN_FLIGHT = SMALL.reads_in_flight * SMALL.max_range_bytes
"""At most this many fetched bytes are lost with a killed run (received, not yet written)."""


class CountingStorage(LocalStorage):
    """Counts the bytes of ranged reads."""

    fetched = 0

    async def get_range_into(self, key: str, offset: int, buffer: memoryview) -> float:
        first_byte = await super().get_range_into(key, offset, buffer)
        self.fetched += len(buffer)
        return first_byte


async def _killed_at(repo: Repository, sid: str, target: Path, fraction: float) -> int:
    """Restore until ``fraction`` of the bytes are done, then stop it; returns the last progress seen."""
    reached = asyncio.Event()
    seen = [0]

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done >= fraction * total:
            reached.set()

    task = asyncio.create_task(restore(repo, sid, str(target), SMALL, progress))
    async with asyncio.timeout(60):
        await reached.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return seen[-1]


async def _rerun(repo: Repository, sid: str, target: Path) -> tuple[RestoreResult, list[int]]:
    seen: list[int] = []
    resumed: list[tuple[int, int]] = []
    result = await restore(
        repo, sid, str(target), SMALL, lambda d, _t: seen.append(d), resumed=lambda k, t: resumed.append((k, t))
    )
    assert seen == sorted(seen), "progress only grows"
    assert resumed == ([(result.kept_bytes, result.total_bytes)] if result.kept_bytes else [])
    return result, seen


@pytest.fixture
def counting(tmp_path: Path) -> CountingStorage:
    return CountingStorage(str(tmp_path / "repo"))


_IMAGES: dict[str, tuple[str, Path, int]] = {}


async def _image(counting: CountingStorage, tmp_path: Path) -> tuple[Repository, str, Path, int]:
    """A snapshot of a mixed image, made once per test (hypothesis runs the test body many times), and
    the bytes an uninterrupted restore of it fetches."""
    repo = Repository(counting)
    if str(tmp_path) not in _IMAGES:
        image = write_mixed_image(tmp_path / "disk.img", 24 * MiB + 4321, seed=11, run=900 * KiB)
        snap = await create_snapshot(repo, str(image), SNAP)
        whole = await restore(repo, snap.snapshot_id, str(tmp_path / "whole.img"), SMALL)
        _IMAGES[str(tmp_path)] = (snap.snapshot_id, image, whole.fetched_bytes)
    sid, image, whole = _IMAGES[str(tmp_path)]
    return repo, sid, image, whole


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.02, 0.98))
async def test_an_image_restore_stopped_anywhere_resumes_without_fetching_again(
    counting: CountingStorage, tmp_path: Path, fraction: float
) -> None:
    repo, sid, image, whole = await _image(counting, tmp_path)
    target = tmp_path / f"target-{uuid.uuid4().hex}.img"
    target.write_bytes(b"")
    os.truncate(target, image.stat().st_size)  # an existing target: a stopped restore leaves it behind
    counting.fetched = 0
    done_before = await _killed_at(repo, sid, target, fraction)
    first = counting.fetched
    counting.fetched = 0
    result, seen = await _rerun(repo, sid, target)
    assert target.read_bytes() == image.read_bytes()
    assert result.fetched_bytes == counting.fetched
    # Nothing the first run had written is fetched again: only what it had in flight, unwritten.
    assert first + result.fetched_bytes <= whole + IN_FLIGHT
    assert result.fetched_bytes <= whole - first + IN_FLIGHT
    # Everything the first run counted done is on the target: progress resumes at least from there.
    holes = await _hole_bytes(repo, sid)
    assert result.kept_bytes + holes >= done_before
    assert seen[0] == 0
    if result.kept_bytes:
        assert result.kept_bytes in seen, "kept bytes are counted done before anything is fetched"


async def _hole_bytes(repo: Repository, sid: str) -> int:
    manifest = await repo.read_manifest(sid)
    plan = (plan_block if manifest.mode == "block" else plan_tree)(manifest, SMALL)
    return sum(length for _, _, length in plan.holes)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 0.95])
async def test_a_restore_asked_to_stop_writes_what_it_fetched_and_going_on_fetches_nothing_twice(
    counting: CountingStorage, tmp_path: Path, fraction: float
) -> None:
    """What an agent shutting down does (``stopping``): unlike a kill, nothing in flight is lost."""
    repo, sid, image, whole = await _image(counting, tmp_path)
    target = tmp_path / "target.img"
    target.write_bytes(b"")
    os.truncate(target, image.stat().st_size)
    stopping = asyncio.Event()
    holes = await _hole_bytes(repo, sid)

    def progress(done: int, total: int) -> None:
        if done >= holes + fraction * (total - holes):  # a share of the data, past the holes
            stopping.set()

    counting.fetched = 0
    stopped = False
    try:
        await restore(repo, sid, str(target), SMALL, progress, stopping=stopping)
    except Stopped:
        stopped = True
    first = counting.fetched
    if fraction <= 0.5:
        assert stopped
        assert first < 0.8 * whole, "it stopped taking ranges when asked"
    # else it may have been asked once every range was taken: then it finished them
    counting.fetched = 0
    result, _ = await _rerun(repo, sid, target)
    assert target.read_bytes() == image.read_bytes()
    assert first > 0
    assert first + result.fetched_bytes <= whole + 4 * SMALL.max_gap_bytes, "only gaps between ranges, twice"


async def test_a_tree_restore_stopped_midway_keeps_its_files_and_fetches_the_rest(
    counting: CountingStorage, tmp_path: Path
) -> None:
    tree = make_sample_tree(tmp_path / "tree", big_file=6 * MiB)
    for i in range(12):
        (tree / "data" / f"file-{i:02}.bin").write_bytes(random.Random(i).randbytes(700 * KiB))
    repo = Repository(counting)
    snap = await create_snapshot(repo, str(tree), SnapshotSettings(pack_bytes=1 * MiB, threads=2))
    whole = (await restore(repo, snap.snapshot_id, str(tmp_path / "whole"), SMALL)).fetched_bytes
    target = tmp_path / "target"
    target.mkdir()
    counting.fetched = 0
    done_before = await _killed_at(repo, snap.snapshot_id, target, 0.6)
    first = counting.fetched
    inodes = {p.name: p.stat().st_ino for p in (target / "data").iterdir() if p.is_file() and not p.is_symlink()}
    result, _ = await _rerun(repo, snap.snapshot_id, target)
    assert tree_differences(tree, target) == []
    assert result.kept_bytes > 0
    assert first + result.fetched_bytes <= whole + IN_FLIGHT
    assert result.kept_bytes + await _hole_bytes(repo, snap.snapshot_id) >= done_before
    after = {p.name: p.stat().st_ino for p in (target / "data").iterdir() if p.name in inodes}
    assert after == inodes, "files of the right size are kept, not made anew"


async def test_files_that_inherited_the_volume_s_default_acl_are_still_kept(
    counting: CountingStorage, tmp_path: Path
) -> None:
    """A volume whose root has a default ACL gives every file the interrupted run made an ACL of its own;
    restoring metadata removes it, so it does not make the file foreign."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(12):
        (tree / f"file-{i:02}.bin").write_bytes(random.Random(i).randbytes(700 * KiB))
    repo = Repository(counting)
    snap = await create_snapshot(repo, str(tree), SnapshotSettings(pack_bytes=1 * MiB, threads=2))
    target = tmp_path / "target"
    target.mkdir()
    default = acl((USER_OBJ, 7, ANY), (USER, 7, 1000), (GROUP_OBJ, 5, ANY), (MASK, 7, ANY), (OTHER, 5, ANY))
    os.setxattr(target, "system.posix_acl_default", default)
    await _killed_at(repo, snap.snapshot_id, target, 0.6)
    assert "system.posix_acl_access" in os.listxattr(target / "file-00.bin"), "inherited from the target"
    result, _ = await _rerun(repo, snap.snapshot_id, target)
    assert tree_differences(tree, target) == []
    assert result.kept_bytes > 0


async def test_a_damaged_byte_in_kept_data_is_found_and_fetched_again(
    counting: CountingStorage, tmp_path: Path
) -> None:
    repo, sid, image, _ = await _image(counting, tmp_path)
    target = tmp_path / "target.img"
    target.write_bytes(image.read_bytes())
    with target.open("r+b") as f:  # one byte in the middle of a chunk that holds data
        f.seek(3 * MiB + 1000)
        old = f.read(1)
        f.seek(3 * MiB + 1000)
        f.write(bytes([old[0] ^ 0xFF]))
    counting.fetched = 0
    result, seen = await _rerun(repo, sid, target)
    assert target.read_bytes() == image.read_bytes()
    assert 0 < result.fetched_bytes <= 2 * SNAP.block_chunk_bytes, "only the damaged chunk is fetched"
    during_check = [d for d in seen if 0 < d <= result.kept_bytes]
    assert len(during_check) > 2, "progress goes on while a long check runs (no stall for operationTimeout)"
    assert result.kept_bytes == result.total_bytes - SNAP.block_chunk_bytes - await _hole_bytes(repo, sid)


async def _one_file(repo: Repository, tmp_path: Path, name: str, size: int) -> tuple[Path, SnapshotResult, Path]:
    """A snapshot of a tree holding one random file ``name``, and an empty target directory."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / name).write_bytes(random.Random(size).randbytes(size))
    snap = await create_snapshot(repo, str(tree), SnapshotSettings(pack_bytes=1 * MiB, threads=2))
    target = tmp_path / "target"
    target.mkdir()
    return tree, snap, target


async def test_a_file_with_a_name_outside_the_snapshot_is_replaced_not_written_through(
    repo: Repository, tmp_path: Path
) -> None:
    tree, snap, target = await _one_file(repo, tmp_path, "victim", 300 * KiB)
    outside = tmp_path / "outside"
    outside.write_bytes(b"\x07" * (300 * KiB))  # the right size, and a second name outside the target
    os.link(outside, target / "victim")
    result = await restore(repo, snap.snapshot_id, str(target), SMALL)
    assert (target / "victim").read_bytes() == (tree / "victim").read_bytes()
    assert outside.read_bytes() == b"\x07" * (300 * KiB)
    assert result.kept_bytes == 0


async def test_checking_a_fresh_target_stops_after_the_window(counting: CountingStorage, tmp_path: Path) -> None:
    repo, sid, image, _ = await _image(counting, tmp_path)
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(bytes(image.stat().st_size))  # written zeros: a device that was never restored onto
    manifest = await repo.read_manifest(sid)
    plan = plan_block(manifest, SMALL)
    target = BlockTarget.open(str(zeros), manifest.size, sparse=False)
    try:
        with WorkerPool(2, "ferry-test") as pool:
            kept = await find_kept(plan, target, repo.codec.id_of, pool, MiB, len(manifest.chunks))
    finally:
        target.close()
    assert kept.bytes == 0
    # The window, and at most one round of calls beyond it (2 threads x 4 ranges x 256 KiB stored).
    data = manifest.size - await _hole_bytes(repo, sid)
    assert kept.checked_bytes * plan.fetch_bytes / data <= MiB + 2 * 4 * 256 * KiB + 256 * KiB
    assert kept.checked_bytes < data, "the check stopped before the end"


async def test_a_file_with_attributes_the_snapshot_lacks_is_made_anew(repo: Repository, tmp_path: Path) -> None:
    """Restoring metadata removes only ACLs the snapshot lacks: a kept file would carry a stale capability
    or user attribute over, so such a file is replaced (its content hashing right notwithstanding)."""
    tree, snap, target = await _one_file(repo, tmp_path, "tool", 200 * KiB)
    (target / "tool").write_bytes((tree / "tool").read_bytes())
    os.setxattr(target / "tool", "user.stale", b"from other content")
    result = await restore(repo, snap.snapshot_id, str(target), SMALL)
    assert os.listxattr(target / "tool") == []
    assert (target / "tool").read_bytes() == (tree / "tool").read_bytes()
    assert result.kept_bytes == 0, "made anew (ext4 may give the new file the old inode number)"


async def test_a_new_image_asked_to_stop_is_kept_to_go_on_from(counting: CountingStorage, tmp_path: Path) -> None:
    """Cancelling removes an image file the restore created; being asked to stop keeps it (and what was
    written in it), since going on is the point."""
    repo, sid, image, whole = await _image(counting, tmp_path)
    target = tmp_path / "new.img"
    stopping = asyncio.Event()
    holes = await _hole_bytes(repo, sid)

    def progress(done: int, total: int) -> None:
        if done > holes:
            stopping.set()

    counting.fetched = 0
    with pytest.raises(Stopped):
        await restore(repo, sid, str(target), SMALL, progress, stopping=stopping)
    first = counting.fetched
    assert target.exists()
    counting.fetched = 0
    result, _ = await _rerun(repo, sid, target)
    assert target.read_bytes() == image.read_bytes()
    assert result.kept_bytes > 0
    assert first + result.fetched_bytes <= whole + 4 * SMALL.max_gap_bytes
