"""``ferry repo stats``: what the snapshots restore, the distinct data they share, what it takes stored,
and how much of the packs no snapshot refers to (``agent.repo.stats``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.backup.writer import create_snapshot
from agent.repo.repository import Repository
from agent.repo.stats import repository_stats
from agent.settings import MiB, SnapshotSettings
from agent.storage.local import LocalStorage
from tests.support.data import write_mixed_image

SETTINGS = SnapshotSettings(pack_bytes=1 * MiB)


async def test_figures_follow_what_the_snapshots_share(tmp_path: Path) -> None:
    image = write_mixed_image(tmp_path / "disk.img", 5 * MiB, seed=21, run=256 * 1024)
    other = tmp_path / "tree"
    other.mkdir()
    (other / "unique.bin").write_bytes(os.urandom(2 * MiB))
    repo = Repository(LocalStorage(str(tmp_path / "repo")))
    empty = await repository_stats(repo)
    assert (empty.snapshots, empty.restore_bytes, empty.pack_bytes, empty.dedup_ratio) == (0, 0, 0, 1.0)

    first = await create_snapshot(repo, str(image), SETTINGS)
    await create_snapshot(repo, str(image), SETTINGS)  # all of it deduplicated
    tree = await create_snapshot(repo, str(other), SETTINGS)
    st = await repository_stats(repo)
    assert st.snapshots == 3
    assert st.restore_bytes == 2 * image.stat().st_size + 2 * MiB
    assert st.unique_chunks == first.chunks + tree.chunks
    image_data = image.stat().st_size - first.hole_bytes
    assert st.unique_bytes == image_data + 2 * MiB
    assert st.referenced_stored_bytes == first.new_stored_bytes + tree.new_stored_bytes
    assert st.pack_bytes == st.referenced_stored_bytes
    assert st.unreferenced_bytes == 0
    assert st.dedup_ratio > 1.5

    await repo.forget(tree.snapshot_id)
    after = await repository_stats(repo)
    assert after.snapshots == 2
    assert after.unreferenced_bytes == tree.new_stored_bytes  # the forgotten snapshot's packs stay


def test_the_command_prints_and_emits_json(tmp_path: Path) -> None:
    image = write_mixed_image(tmp_path / "disk.img", 3 * MiB, seed=22, run=256 * 1024)
    repo = str(tmp_path / "repo")
    env = os.environ
    run = [sys.executable, "-m", "agent"]
    subprocess.run([*run, "snapshot", "create", "--repo", repo, str(image)], env=env, check=True, capture_output=True)
    text = subprocess.run(
        [*run, "repo", "stats", "--repo", repo], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "snapshots:            1"
    assert "referenced by no snapshot" in text.stdout
    as_json = subprocess.run(
        [*run, "repo", "stats", "--repo", repo, "--json"], env=env, capture_output=True, text=True, check=True
    )
    figures = json.loads(as_json.stdout)
    assert figures["restore_bytes"] == 3 * MiB
    assert figures["unreferenced_bytes"] == 0
    missing = subprocess.run(
        [*run, "repo", "stats", "--repo", str(tmp_path / "nowhere")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert "nowhere" in missing.stderr
