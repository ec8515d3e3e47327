"""``ferry restore --include PATTERN``: single files and subtrees out of a filesystem snapshot
(``agent.pipeline.select``): what is selected lands where it was, with the directories above it, and
nothing else is written or fetched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.pipeline.restore import restore
from agent.repo.repository import Repository
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from tests.support.cli import ferry


def _tree(root: Path) -> Path:
    (root / "logs" / "old").mkdir(parents=True)
    (root / "logs" / "a.txt").write_text("a\n")
    (root / "logs" / "b.log").write_text("b\n")
    (root / "logs" / "old" / "c.txt").write_text("c\n")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(os.urandom(3 * MiB))
    (root / "keep").mkdir()
    (root / "keep" / "x.txt").write_text("x\n")
    os.link(root / "data" / "big.bin", root / "keep" / "big-link")
    os.chmod(root / "logs", 0o750)
    return root


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
async def snapshot(tmp_path: Path) -> tuple[Repository, str, Path]:
    source = _tree(tmp_path / "src")
    repo = Repository(LocalStorage(str(tmp_path / "repo")))
    made = await create_snapshot(repo, str(source), SnapshotSettings(pack_bytes=1 * MiB))
    return repo, made.snapshot_id, source


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["logs/old"], {"logs", "logs/old", "logs/old/c.txt"}),
        (["/logs/old/"], {"logs", "logs/old", "logs/old/c.txt"}),
        (["*.log"], {"logs", "logs/b.log"}),
        (["logs/a.txt", "keep/x.txt"], {"logs", "logs/a.txt", "keep", "keep/x.txt"}),
        (["keep"], {"keep", "keep/x.txt", "keep/big-link"}),
    ],
)
async def test_what_the_patterns_select_lands_where_it_was(
    snapshot: tuple[Repository, str, Path], tmp_path: Path, patterns: list[str], expected: set[str]
) -> None:
    repo, sid, source = snapshot
    target = tmp_path / "out"
    result = await restore(repo, sid, str(target), RestoreSettings(), include=patterns)
    assert _files(target) == expected
    for rel in expected:
        if (source / rel).is_file():
            assert (target / rel).read_bytes() == (source / rel).read_bytes()
    if "logs" in expected:  # a directory above the selection keeps its metadata
        assert (target / "logs").stat().st_mode & 0o777 == 0o750
    assert result.total_bytes == sum((source / rel).stat().st_size for rel in expected if (source / rel).is_file())


async def test_a_hardlink_whose_file_is_left_out_becomes_that_file(
    snapshot: tuple[Repository, str, Path], tmp_path: Path
) -> None:
    repo, sid, source = snapshot
    target = tmp_path / "out"
    result = await restore(repo, sid, str(target), RestoreSettings(), include=["keep/big-link"])
    assert (target / "keep" / "big-link").read_bytes() == (source / "data" / "big.bin").read_bytes()
    assert not (target / "data").exists()
    assert result.total_bytes == 3 * MiB


async def test_only_what_is_selected_is_fetched(snapshot: tuple[Repository, str, Path], tmp_path: Path) -> None:
    repo, sid, _ = snapshot
    small = await restore(repo, sid, str(tmp_path / "small"), RestoreSettings(), include=["logs"])
    whole = await restore(repo, sid, str(tmp_path / "whole"), RestoreSettings())
    assert small.fetched_bytes < 64 * 1024 < 3 * MiB < whole.fetched_bytes


def test_the_command_refuses_a_selection_of_nothing_and_block_snapshots(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    repo = str(tmp_path / "repo")
    sid = ferry("snapshot", "create", "--repo", repo, str(source)).stdout.strip()
    target = tmp_path / "out"
    nothing = ferry("restore", "--repo", repo, "--snapshot", sid, "--include", "nowhere/*", str(target))
    assert nothing.returncode == 2
    assert nothing.stderr.strip() == f"ferry: --include nowhere/* matches nothing in snapshot {sid}"
    assert not target.exists(), "a refused restore created its target"
    one = ferry("restore", "--repo", repo, "--snapshot", sid, "--include", "logs/a.txt", str(target))
    assert one.returncode == 0, one.stderr
    assert _files(target) == {"logs", "logs/a.txt"}
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(8192))
    block = ferry("snapshot", "create", "--repo", repo, str(image)).stdout.strip()
    refused = ferry("restore", "--repo", repo, "--snapshot", block, "--include", "x", str(tmp_path / "b.img"))
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"ferry: --include selects files: snapshot {block} is of a block volume"
