"""What the volume holds (empty, many small files, hardlinks, sparse files, special files, entries that
cannot be read), through the whole cycle: backup, stored snapshot, Velero-style restore. An incomplete
snapshot says what it lacks in the DataUpload's message and an Event, not only in the agent's log."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.data import tree_differences
from tests.support.velero import NS, handed_over, start_workload, wait_done, world
from tests.support.velero_backup import (
    app_volume,
    backup_cleaned_up,
    exact_copy,
    file_bytes,
    restore_of,
    start_app,
    start_backup,
    stored_tree,
    wait_ended,
)

MiB = 1024 * 1024


async def _cycle(cluster: Cluster, w: object, tmp_path: Path, volume: Path) -> tuple[dict[str, object], Path]:
    """Back up, compare the stored tree, delete the app, restore, compare the restored volume."""
    kube = cluster.kube
    expected = exact_copy(volume, tmp_path / "expected")
    total = file_bytes(expected)
    backup = await start_backup(kube)
    done = await wait_ended(kube, backup)
    assert done["status"]["phase"] == "Completed", done["status"].get("message")
    assert done["status"]["progress"] == {"totalBytes": total, "bytesDone": total}
    await backup_cleaned_up(w.sim, backup)  # type: ignore[attr-defined]
    assert tree_differences(expected, await stored_tree(cluster, done, tmp_path / "stored")) == []
    claim = kube.get("persistentvolumeclaims", "data", namespace="app")
    pv = claim["spec"]["volumeName"]
    kube.delete("pods", "db-0", namespace="app")
    kube.delete("persistentvolumeclaims", "data", namespace="app")
    await kube.wait_gone("persistentvolumes", pv, None, timeout=30)
    restore = restore_of(kube, done, storage_class="immediate", size="64Mi")
    pod = start_workload(kube, restore)
    ended = await wait_done(cluster, restore)
    assert ended["status"]["phase"] == "Completed", ended["status"].get("message")
    restored = await handed_over(w, restore, pod)  # type: ignore[arg-type]
    assert tree_differences(expected, restored) == []
    return done, restored


async def test_empty_volume(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        start_app(cluster.kube)
        volume = await app_volume(w.sim)
        assert list(volume.iterdir()) == []
        done, _ = await _cycle(cluster, w, tmp_path, volume)
        assert done["status"]["snapshotID"]


@pytest.mark.root
async def test_many_small_files_hardlinks_sparse_special(cluster: Cluster, tmp_path: Path) -> None:
    async with world(cluster, tmp_path) as w:
        start_app(cluster.kube)
        volume = await app_volume(w.sim)
        small = volume / "small"
        small.mkdir()
        for i in range(3000):
            (small / f"f{i:05d}").write_bytes(str(i).encode() * (i % 7))
        (volume / "orig").write_bytes(b"hardlinked content\n" * 100)
        os.link(volume / "orig", volume / "link1")
        (volume / "sub").mkdir()
        os.link(volume / "orig", volume / "sub" / "link2")
        with open(volume / "sparse", "wb") as f:
            f.seek(20 * MiB)
            f.write(b"end")
            f.seek(3 * MiB)
            f.write(b"middle")
        os.mkfifo(volume / "fifo")
        os.mknod(volume / "null", 0o640 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(volume / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))
        os.symlink("does/not/exist", volume / "dangling")
        os.symlink("/etc/passwd", volume / "absolute")
        (volume / "locked").write_text("mode 000\n")
        os.chmod(volume / "locked", 0)
        (volume / "closed").mkdir()
        (volume / "closed" / "inner").write_text("in a 000 directory\n")
        os.chmod(volume / "closed", 0)
        os.chown(volume / "orig", 1234, 5678)
        os.setxattr(volume / "orig", "user.note", b"kept")
        (volume / "name-\udcff".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")).write_text("x")
        _, restored = await _cycle(cluster, w, tmp_path, volume)
        assert os.stat(restored / "sparse").st_blocks * 512 < 2 * MiB, "the sparse file was restored dense"


async def test_unreadable_entries_are_reported(cluster: Cluster, tmp_path: Path) -> None:
    """An extended attribute name that is not UTF-8 cannot be stored: the backup completes, but someone
    must be told which entry was incomplete (message or Event), not only a log line."""
    async with world(cluster, tmp_path) as w:
        kube = cluster.kube
        start_app(kube)
        volume = await app_volume(w.sim)
        (volume / "fine.txt").write_text("fine\n")
        (volume / "odd.txt").write_text("odd xattr\n")
        os.setxattr(os.fsencode(volume / "odd.txt"), b"user.\xff\xfe", b"v")
        backup = await start_backup(kube)
        done = await wait_ended(kube, backup)
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        await backup_cleaned_up(w.sim, backup)
        events = [e for e in kube.list("events", namespace=NS) if e["involvedObject"].get("name") == backup.dataupload]
        said = " ".join([done["status"].get("message", "")] + [e.get("message", "") for e in events])
        assert "odd.txt" in said, f"nothing tells the user odd.txt was not fully backed up: {said!r}"
