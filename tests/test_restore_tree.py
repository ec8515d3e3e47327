"""Filesystem restores: whole trees with their metadata, and refusing every way out of the target."""

from __future__ import annotations

import errno
import os
import threading
from array import array
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import ManifestInvalid, TargetError, UnsafePath
from agent.fs import beneath as safefs
from agent.pipeline.restore import restore
from agent.pipeline.tree_target import TreeTarget
from agent.repo.format import ChunkTable, Entry, Manifest, Meta, encode_manifest
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from tests.support.data import make_sample_tree, tree_differences

SNAP = SnapshotSettings(pack_bytes=1 * MiB, threads=2)
TIGHT = RestoreSettings(reads_in_flight=4, max_range_bytes=256 * KiB, max_gap_bytes=16 * KiB, memory_bytes=12 * MiB)
META = Meta(mode=0o644, uid=0, gid=0, mtime_ns=0)


async def test_sample_tree_round_trips_with_metadata(repo: Repository, tmp_path: Path) -> None:
    tree = make_sample_tree(tmp_path / "tree")
    snap = await create_snapshot(repo, str(tree), SNAP)
    out = tmp_path / "restored"
    progress: list[tuple[int, int]] = []
    result = await restore(repo, snap.snapshot_id, str(out), TIGHT, lambda d, t: progress.append((d, t)))
    assert tree_differences(tree, out) == []
    assert progress[-1] == (result.total_bytes, result.total_bytes) == (snap.size, snap.size)
    assert os.stat(out / "data" / "big.bin").st_ino == os.stat(out / "deep" / "big-hardlink.bin").st_ino


async def test_sparse_file_stays_sparse(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    with (tree / "sparse").open("wb") as f:
        f.write(b"head")
        f.truncate(64 * MiB)
    snap = await create_snapshot(repo, str(tree), SNAP)
    out = tmp_path / "out"
    await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert (out / "sparse").stat().st_size == 64 * MiB
    assert (out / "sparse").stat().st_blocks * 512 < 8 * MiB


async def test_restoring_twice_replaces_files_and_keeps_foreign_entries(repo: Repository, tmp_path: Path) -> None:
    tree = make_sample_tree(tmp_path / "tree", big_file=1 * MiB)
    snap = await create_snapshot(repo, str(tree), SNAP)
    out = tmp_path / "out"
    out.mkdir()
    (out / "lost+found").mkdir()
    (out / "etc").mkdir()
    (out / "etc" / "app.conf").write_bytes(b"stale content that is much longer than the real file " * 100)
    (out / "etc" / "empty").symlink_to("/etc/passwd")
    await restore(repo, snap.snapshot_id, str(out), TIGHT)
    await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert tree_differences(tree, out) == ["unexpected: 'lost+found'"]


async def test_a_filesystem_snapshot_needs_a_directory(repo: Repository, tmp_path: Path) -> None:
    tree = make_sample_tree(tmp_path / "tree", big_file=1 * MiB)
    snap = await create_snapshot(repo, str(tree), SNAP)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(TargetError, match="not a directory"):
        await restore(repo, snap.snapshot_id, str(tmp_path / "file"), TIGHT)


async def test_a_directory_in_the_way_of_a_file_is_not_removed(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "thing").write_bytes(b"file")
    snap = await create_snapshot(repo, str(tree), SNAP)
    out = tmp_path / "out"
    (out / "thing").mkdir(parents=True)
    (out / "thing" / "precious").write_bytes(b"keep")
    with pytest.raises(TargetError, match="exists in the target as a directory"):
        await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert (out / "thing" / "precious").read_bytes() == b"keep"


async def test_symlinks_in_the_target_are_never_followed(repo: Repository, tmp_path: Path) -> None:
    """A target that already holds symlinks pointing outside: the restore replaces them, never writes
    through them."""
    tree = tmp_path / "tree"
    (tree / "dir").mkdir(parents=True)
    (tree / "dir" / "file").write_bytes(b"restored")
    (tree / "top").write_bytes(b"restored")
    snap = await create_snapshot(repo, str(tree), SNAP)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"untouched")
    (outside / "top").write_bytes(b"untouched")
    out = tmp_path / "out"
    out.mkdir()
    (out / "dir").symlink_to(outside)
    (out / "top").symlink_to(outside / "top")
    await restore(repo, snap.snapshot_id, str(out), TIGHT)
    assert (outside / "file").read_bytes() == b"untouched"
    assert (outside / "top").read_bytes() == b"untouched"
    assert not (out / "dir").is_symlink()
    assert (out / "dir" / "file").read_bytes() == b"restored"
    assert (out / "top").read_bytes() == b"restored"


def _hostile_manifest(entries: tuple[Entry, ...]) -> Manifest:
    return Manifest(
        mode="filesystem",
        size=0,
        created="2026-11-21T00:00:00Z",
        packs=(),
        chunks=ChunkTable(b""),
        slots=array("q"),
        root=META,
        entries=entries,
    )


@pytest.mark.parametrize("path", ["../escaped", "/tmp/escaped-absolute", "sub/../../escaped", "link/escaped"])
def test_target_refuses_escaping_entries_even_from_an_unchecked_manifest(tmp_path: Path, path: str) -> None:
    """Defence in depth: the target checks paths itself, even for a manifest that skipped decoding."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").mkdir()
    (out / "link").symlink_to(tmp_path)
    target = TreeTarget.open(str(out), _hostile_manifest((Entry(path, "file", META),)))
    try:
        with pytest.raises(UnsafePath):
            target.prepare(threading.Event())
    finally:
        target.close()
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/escaped-absolute").exists()


async def test_a_stored_manifest_with_an_escaping_entry_is_refused(repo: Repository, tmp_path: Path) -> None:
    stored = encode_manifest(_hostile_manifest((Entry("../escaped", "file", META),)))
    sid = await repo.write_manifest(stored)
    with pytest.raises(ManifestInvalid, match=r"'\.\.'"):
        await restore(repo, sid, str(tmp_path / "out"), TIGHT)
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("force_walk", [False, True])
def test_open_beneath_refuses_symlinks_on_the_way(tmp_path: Path, force_walk: bool) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "flink").symlink_to(tmp_path / "real" / "f")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(safefs.open_beneath(root, "real/f", os.O_RDONLY, force_walk=force_walk))
        for bad in ("link/f", "flink"):
            with pytest.raises(OSError) as refused:
                safefs.open_beneath(root, bad, os.O_RDONLY, force_walk=force_walk)
            assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)
    finally:
        os.close(root)
    assert safefs.have_openat2(), "this kernel supports openat2; the walk is only the fallback"
