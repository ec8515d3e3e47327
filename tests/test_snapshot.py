"""The snapshot writer: what it stores, holes, deduplication, and content-defined chunking."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import SourceError
from agent.repo.format import HOLE
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, SnapshotSettings
from tests.support.data import make_sample_tree

SMALL = SnapshotSettings(block_chunk_bytes=256 * KiB, pack_bytes=1 * MiB, threads=2)


async def test_block_snapshot_records_chunks_holes_and_tail(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    chunk = SMALL.block_chunk_bytes
    rng = random.Random(5)
    with image.open("wb") as f:
        f.write(rng.randbytes(chunk))  # slot 0: data
        f.write(bytes(2 * chunk))  # slots 1-2: hole
        f.write(rng.randbytes(chunk // 2) + bytes(chunk // 2))  # slot 3: data with zeros is still data
        f.write(b"unaligned tail")  # slot 4: short
    progress: list[tuple[int, int]] = []
    result = await create_snapshot(repo, str(image), SMALL, lambda d, t: progress.append((d, t)))
    m = await repo.read_manifest(result.snapshot_id)
    assert m.mode == "block"
    assert m.size == image.stat().st_size == 4 * chunk + len(b"unaligned tail")
    assert [s == HOLE for s in m.slot_values()] == [False, True, True, False, False]
    assert list(m.slots)[1] == -2, "consecutive hole slots are one run"
    assert m.chunks[m.slots[-1]].plain == len(b"unaligned tail")
    assert result.hole_bytes == 2 * chunk
    assert result.new_chunks == 3
    assert progress[-1] == (m.size, m.size)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert await repo.snapshot_ids() == [result.snapshot_id]


async def test_repeated_chunks_are_stored_once(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "repeat.img"
    block = random.Random(1).randbytes(SMALL.block_chunk_bytes)
    image.write_bytes(block * 6)
    result = await create_snapshot(repo, str(image), SMALL)
    m = await repo.read_manifest(result.snapshot_id)
    assert len(m.chunks) == 1
    assert list(m.slots) == [0] * 6
    assert result.new_chunks == 1


async def test_second_snapshot_stores_only_what_changed(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(3).randbytes(6 * MiB))
    first = await create_snapshot(repo, str(image), SMALL)
    again = await create_snapshot(repo, str(image), SMALL)
    assert (again.new_chunks, again.reused_chunks, again.packs) == (0, first.chunks, 0)
    with image.open("r+b") as f:  # change one byte in one chunk
        f.seek(3 * MiB + 17)
        f.write(b"\xff")
    changed = await create_snapshot(repo, str(image), SMALL)
    assert (changed.new_chunks, changed.reused_chunks) == (1, first.chunks - 1)
    assert changed.snapshot_id != first.snapshot_id


async def test_an_insertion_in_a_large_file_changes_few_chunks(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    data = random.Random(9).randbytes(24 * MiB)
    (tree / "big.bin").write_bytes(data)
    first = await create_snapshot(repo, str(tree), SnapshotSettings(threads=2))
    (tree / "big.bin").write_bytes(data[: 12 * MiB] + b"inserted in the middle" + data[12 * MiB :])
    second = await create_snapshot(repo, str(tree), SnapshotSettings(threads=2))
    assert first.chunks >= 6
    assert second.new_chunks <= 2, "content-defined chunking should re-align after the edit"
    assert second.reused_chunks >= first.chunks - 2


async def test_tree_snapshot_lists_every_entry(repo: Repository, tmp_path: Path) -> None:
    tree = make_sample_tree(tmp_path / "tree", big_file=3 * MiB)
    os.mkfifo(tree / "a-fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "a-socket"))
        result = await create_snapshot(repo, str(tree), SMALL)
    m = await repo.read_manifest(result.snapshot_id)
    kinds = {e.path: e.type for e in m.entries}
    assert kinds["data/conf-link"] == "symlink"
    assert kinds["data/app.conf.hardlink"] == "hardlink" or kinds["etc/app.conf"] == "hardlink"
    assert kinds["empty-dir"] == "dir"
    assert kinds["a-fifo"] == "fifo"
    assert "a-socket" not in kinds
    assert result.skipped == ()
    assert [(n.path, "socket" in n.reason) for n in result.notes] == [("a-socket", True)]
    deep = [p for p in kinds if p.endswith("bottom.txt")]
    assert len(deep) == 1
    assert deep[0].count("/") == 41
    sparse = next(e for e in m.entries if e.path == "data/sparse.img")
    assert sparse.size == 8 * MiB + 3
    assert any(c < 0 for c in sparse.content), "the sparse file's zero run is recorded as a hole"


async def test_unreadable_source_is_a_clear_error(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open"):
        await create_snapshot(repo, str(tmp_path / "missing.img"), SMALL)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SourceError, match="neither a block device"):
        await create_snapshot(repo, str(tmp_path / "fifo"), SMALL)


async def test_non_utf8_names_are_stored_as_their_bytes(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(os.path.join(os.fsencode(tree), b"bad-\xff-name"), "wb") as f:
        f.write(b"x")
    os.symlink(b"target-\xfe", os.path.join(os.fsencode(tree), b"link-\xfe"))
    result = await create_snapshot(repo, str(tree), SMALL)
    m = await repo.read_manifest(result.snapshot_id)
    assert {os.fsencode(e.path): os.fsencode(e.target) for e in m.entries} == {
        b"bad-\xff-name": b"",
        b"link-\xfe": b"target-\xfe",
    }
