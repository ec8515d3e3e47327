"""A snapshot records exactly what it read, and every snapshot the writer makes can be restored:
files that change while they are read, entries that vanish or cannot be read, every value Linux
filesystems store, the metadata users lose elsewhere (extended attributes, ACLs, capabilities, device
nodes, FIFOs, names that are not UTF-8, paths longer than PATH_MAX) and sparse files."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.backup import scan, writer
from agent.backup.scan import MAX_OPEN_DIRS
from agent.backup.writer import WINDOW_ITEMS, create_snapshot
from agent.fs.beneath import open_beneath
from agent.pipeline.restore import restore
from agent.repo.format import ChunkTable, Entry, Manifest, Meta, encode_manifest
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from tests.support.data import describe_tree, tree_differences
from tests.support.fidelity import (
    ANY,
    GROUP_OBJ,
    OTHER,
    USER_OBJ,
    acl,
    allocated,
    make_deep,
    make_metadata_tree,
    make_sparse,
)

ROOT = os.geteuid() == 0
SMALL_CHUNKS = SnapshotSettings(
    block_chunk_bytes=256 * KiB,
    cdc_min_bytes=64 * KiB,
    cdc_avg_bytes=128 * KiB,
    cdc_max_bytes=256 * KiB,
    pack_bytes=1 * MiB,
    threads=1,
)
RESTORE = RestoreSettings(reads_in_flight=4, max_range_bytes=1 * MiB, memory_bytes=16 * MiB)
NOBODY = 65534


async def round_trip(repo: Repository, tree: Path, out: Path, snap: SnapshotSettings = SMALL_CHUNKS) -> list[str]:
    made = await create_snapshot(repo, str(tree), snap)
    assert made.skipped == ()
    result = await restore(repo, made.snapshot_id, str(out), RESTORE)
    assert result.problems == ()
    return tree_differences(tree, out)


# --------------------------------------------------------------------------------------------------------
# Files that change while they are read


RECORD = struct.Struct("<IIQ")
"""16 bytes: file number, version, record number. A restored record names the file it came from."""


def content(file_no: int, version: int, records: int) -> bytes:
    return b"".join(RECORD.pack(file_no + 1, version, i) for i in range(records))


class Tree:
    """Files of numbered records, and every version each path has had."""

    def __init__(self, root: Path, sizes: list[int]) -> None:
        self.root = root
        self.versions: dict[str, list[bytes]] = {}
        root.mkdir()
        for n, records in enumerate(sizes):
            self.write(n, content(n, 0, records))

    def path(self, n: int) -> Path:
        return self.root / f"f{n:02}"

    def write(self, n: int, data: bytes) -> None:
        self.path(n).write_bytes(data)
        self.versions.setdefault(self.path(n).name, []).append(data)

    def mutate(self, op: str, n: int) -> None:
        path = self.path(n)
        if not path.exists():
            return
        old = path.read_bytes()
        records = len(old) // RECORD.size
        name = path.name
        if op == "truncate":
            path.write_bytes(b"")  # log rotation: truncated to zero in place
            self.versions[name].append(b"")
        elif op == "shrink":
            with path.open("r+b") as f:
                f.truncate(len(old) // 2)
            self.versions[name].append(old[: len(old) // 2])
        elif op == "grow":
            more = content(n, len(self.versions[name]), records + 3000)[len(old) :]
            with path.open("ab") as f:
                f.write(more)
            self.versions[name].append(old + more)
        elif op == "rewrite":
            new = content(n, len(self.versions[name]), records)
            with path.open("r+b") as f:
                f.write(new[: len(new) // 2])
            self.versions[name].append(new[: len(new) // 2] + old[len(new) // 2 :])
        elif op == "rename":
            tmp = self.root / f".new-{name}"
            new = content(n, len(self.versions[name]), records // 3 + 1)
            tmp.write_bytes(new)
            os.rename(tmp, path)
            self.versions[name].append(new)
        elif op == "delete":
            path.unlink()
        elif op == "extend-with-zeros":
            with path.open("r+b") as f:
                f.truncate(0)
                f.truncate(len(old))
            self.versions[name].extend([b"", bytes(len(old))])

    def check(self, restored: Path) -> None:
        for name, versions in self.versions.items():
            got_path = restored / name
            if not got_path.exists():
                continue  # skipped: it vanished or could not be read (the snapshot says so)
            got = got_path.read_bytes()
            assert len(got) <= max(len(v) for v in versions), f"{name} is longer than it ever was"
            for at in range(0, len(got), RECORD.size):
                piece = got[at : at + RECORD.size]
                ok = any(v[at : at + len(piece)] == piece for v in versions)
                assert ok, f"{name} holds, at byte {at}, {piece!r}: bytes that file never contained"


mutations = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.sampled_from(["truncate", "shrink", "grow", "rewrite", "rename", "delete", "extend-with-zeros"]),
        st.integers(0, 11),
    ),
    max_size=8,
)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sizes=st.lists(st.integers(0, 40_000), min_size=1, max_size=12), plan=mutations)
def test_files_changing_during_the_snapshot_restore_only_their_own_bytes(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], plan: list[tuple[int, str, int]]
) -> None:
    base = tmp_path_factory.mktemp("changing")
    tree = Tree(base / "tree", sizes)
    calls = 0

    def progress(done: int, total: int) -> None:
        nonlocal calls
        for at, op, n in plan:
            if at == calls and n < len(sizes):
                tree.mutate(op, n)
        calls += 1

    async def run() -> None:
        async with LocalStorage(str(base / "repo")) as storage:
            repo = Repository(storage)
            made = await create_snapshot(repo, str(tree.root), SMALL_CHUNKS, progress)
            vanished = {p.path for p in made.skipped}
            assert all("vanished" in p.reason for p in made.skipped), made.skipped
            await restore(repo, made.snapshot_id, str(base / "out"), RESTORE)
            assert [await repo.read_manifest(i) for i in await repo.snapshot_ids()]
            for name in vanished:
                assert not (base / "out" / name).exists()

    asyncio.run(run())
    tree.check(base / "out")


async def test_a_file_truncated_to_zero_while_an_earlier_one_is_read_holds_nothing_of_another(
    repo: Repository, tmp_path: Path
) -> None:
    """The reported case: a small log file truncated to 0 bytes during the snapshot was restored holding
    the first megabyte of another file (its hole of 0 bytes was written as -0, chunk 0)."""
    last = WINDOW_ITEMS + 2  # not yet opened when the first item is taken
    tree = Tree(tmp_path / "tree", [70_000] + [100] * last)

    def progress(done: int, total: int) -> None:  # after the walk saw 1,600 bytes, before it is opened
        tree.mutate("truncate", last)

    made = await create_snapshot(repo, str(tree.root), SMALL_CHUNKS, progress)
    m = await repo.read_manifest(made.snapshot_id)
    empty = next(e for e in m.entries if e.path == f"f{last:02}")
    assert (empty.size, list(empty.content)) == (0, [])
    await restore(repo, made.snapshot_id, str(tmp_path / "out"), RESTORE)
    assert (tmp_path / "out" / f"f{last:02}").read_bytes() == b""
    tree.check(tmp_path / "out")


async def test_a_file_replaced_by_a_symlink_or_deleted_is_skipped_and_listed(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "BATCH_FILES", 2)  # small files go to the pool two at a time
    n = WINDOW_ITEMS * 2 + 4  # the last two are not yet opened when the first item is taken
    tree = Tree(tmp_path / "tree", [20_000] * n)
    (tree.root / "secret").write_bytes(b"outside the tree")

    def progress(done: int, total: int) -> None:
        if tree.path(n - 2).exists():
            tree.path(n - 2).unlink()
            os.symlink("../secret", tree.path(n - 2))
            tree.path(n - 1).unlink()

    made = await create_snapshot(repo, str(tree.root), SnapshotSettings(threads=1), progress)
    reasons = {p.path: p.reason for p in made.skipped}
    assert set(reasons) == {f"f{n - 2:02}", f"f{n - 1:02}"}
    assert "replaced" in reasons[f"f{n - 2:02}"]
    assert "vanished" in reasons[f"f{n - 1:02}"]
    m = await repo.read_manifest(made.snapshot_id)
    assert {e.path for e in m.entries} == {f"f{i:02}" for i in range(n - 2)} | {"secret"}


# --------------------------------------------------------------------------------------------------------
# Entries that cannot be read: the snapshot is saved without them, each listed, exit status 3


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _without_dac() -> None:
    """In the child before exec: drop the capabilities that let root ignore file permissions, so the
    command meets EACCES as any other user would (its own files stay readable)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def ferry(*args: str, permissions_apply: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_without_dac if permissions_apply else None,
    )


@pytest.mark.root
def test_unreadable_entries_are_listed_and_the_rest_is_saved(tmp_path: Path) -> None:
    if not ROOT:
        pytest.skip("dropping root's permission override needs root")
    tree = tmp_path / "tree"
    (tree / "locked-dir").mkdir(parents=True)
    (tree / "locked-dir" / "inside").write_bytes(b"x")
    (tree / "ok.txt").write_bytes(b"fine")
    (tree / "locked.txt").write_bytes(b"private")
    repo = tmp_path / "repo"
    for path in (tree / "locked-dir", tree / "locked.txt"):
        os.chown(path, NOBODY, NOBODY)
        os.chmod(path, 0o000)

    made = ferry("snapshot", "create", "--repo", str(repo), str(tree), permissions_apply=True)
    assert made.returncode == 3, made.stderr
    assert len(made.stdout.strip()) == 64, "the snapshot is saved and its ID printed"
    assert "ferry: skipped locked-dir: its entries cannot be listed: Permission denied" in made.stderr
    assert "ferry: skipped locked.txt: Permission denied" in made.stderr
    assert "Traceback" not in made.stderr

    as_json = ferry("snapshot", "create", "--json", "--repo", str(repo), str(tree), permissions_apply=True)
    assert as_json.returncode == 3
    skipped = json.loads(as_json.stdout)["skipped"]
    assert {(s["path"], s["reason"]) for s in skipped} == {
        ("locked-dir", "its entries cannot be listed: Permission denied"),
        ("locked.txt", "Permission denied"),
    }
    out = tmp_path / "out"
    restored = ferry("restore", "--repo", str(repo), "--snapshot", made.stdout.strip(), str(out))
    assert restored.returncode == 0, restored.stderr
    assert (out / "ok.txt").read_bytes() == b"fine"
    assert (out / "locked-dir").is_dir()
    assert not (out / "locked.txt").exists()


# --------------------------------------------------------------------------------------------------------
# Paths longer than PATH_MAX, and names that are not UTF-8


async def test_paths_longer_than_path_max_and_names_that_are_not_utf8_round_trip(
    repo: Repository, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    deepest = make_deep(tree, 45, b"d" * 200 + b"-\xff\xfe")  # 9,200 bytes of path
    assert len(deepest) > 8192
    (tree / os.fsdecode(b"caf\xe9.txt")).write_bytes(b"latin-1 name")
    os.symlink(b"target-\x80", os.path.join(os.fsencode(tree), b"link-\x81"))
    assert await round_trip(repo, tree, tmp_path / "out") == []
    assert describe_tree(tmp_path / "out")[os.fsdecode(deepest)][-2].startswith(b"at the bottom")


def test_names_that_are_not_utf8_are_shown_as_ls_shows_them(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / os.fsdecode(b"bad-\xff\xfe")).write_bytes(b"x")
    os.mkfifo(tree / "keep")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "sock et"))
        made = ferry("snapshot", "create", "--repo", str(tmp_path / "repo"), str(tree))
        listed = ferry("snapshot", "create", "--json", "--repo", str(tmp_path / "repo"), str(tree))
    assert made.returncode == 0, made.stderr
    assert "ferry: note: 'sock et': a socket: not stored" in made.stderr
    assert json.loads(listed.stdout)["notes"][0]["path"] == "sock et"


# --------------------------------------------------------------------------------------------------------
# The whole value range, and the metadata users lose elsewhere


async def test_every_kind_of_metadata_round_trips(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    times = make_metadata_tree(tree)
    out = tmp_path / "out"
    assert await round_trip(repo, tree, out) == []
    for name, ns in times.items():
        assert os.stat(out / name).st_mtime_ns == ns
    if ROOT:
        assert os.getxattr(out / "ping", "security.capability") == os.getxattr(tree / "ping", "security.capability")
        assert os.stat(out / "ping").st_uid == 1000
        assert os.stat(out / "disk").st_rdev == os.makedev(259, 70000)
        assert os.stat(out / "epoch").st_uid == 2**32 - 2


async def test_a_restore_into_a_directory_with_a_default_acl_does_not_add_acls(
    repo: Repository, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"plain")
    out = tmp_path / "out"
    out.mkdir()
    os.setxattr(out, "system.posix_acl_default", acl((USER_OBJ, 7, ANY), (GROUP_OBJ, 7, ANY), (OTHER, 7, ANY)))
    made = await create_snapshot(repo, str(tree), SMALL_CHUNKS)
    await restore(repo, made.snapshot_id, str(out), RESTORE)
    assert tree_differences(tree, out) == []


# --------------------------------------------------------------------------------------------------------
# Sparse files


async def test_a_sparse_file_comes_back_sparse_in_a_tree_and_as_an_image(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_sparse(tree / "sparse.bin")
    original = allocated(tree / "sparse.bin")
    assert original <= 512 * KiB
    made = await create_snapshot(repo, str(tree), SnapshotSettings(threads=2))
    m = await repo.read_manifest(made.snapshot_id)
    holes = [c for c in m.entries[0].content if c < 0]
    assert len(holes) == 64, "each gap between the 4 KiB blocks is one hole"
    await restore(repo, made.snapshot_id, str(tmp_path / "out"), RESTORE)
    assert (tmp_path / "out" / "sparse.bin").read_bytes() == (tree / "sparse.bin").read_bytes()
    assert allocated(tmp_path / "out" / "sparse.bin") <= 2 * original

    image = await create_snapshot(repo, str(tree / "sparse.bin"), SnapshotSettings(threads=2))
    await restore(repo, image.snapshot_id, str(tmp_path / "image.out"), RESTORE)
    assert (tmp_path / "image.out").read_bytes() == (tree / "sparse.bin").read_bytes()
    assert allocated(tmp_path / "image.out") <= 2 * original


async def test_long_zero_runs_inside_data_become_holes(repo: Repository, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    data = os.urandom(100 * KiB) + bytes(2 * MiB) + os.urandom(5000) + bytes(10 * KiB)
    (tree / "zeros.bin").write_bytes(data)  # written: every block allocated
    made = await create_snapshot(repo, str(tree), SnapshotSettings(threads=2))
    m = await repo.read_manifest(made.snapshot_id)
    holes = [-c for c in m.entries[0].content if c < 0]
    assert len(holes) == 1
    assert 2 * MiB - 8 * KiB <= holes[0] <= 2 * MiB, "the aligned blocks of the zero run, no more"
    await restore(repo, made.snapshot_id, str(tmp_path / "out"), RESTORE)
    assert (tmp_path / "out" / "zeros.bin").read_bytes() == data
    assert allocated(tmp_path / "out" / "zeros.bin") < 512 * KiB


# --------------------------------------------------------------------------------------------------------
# What a target cannot take is listed, not silently changed, and the rest is restored


async def test_times_and_devices_the_target_cannot_hold_are_listed(repo: Repository, tmp_path: Path) -> None:
    year_3000 = 32_503_680_000 * 10**9  # beyond ext4's 2446
    meta = Meta(0o755, 0, 0, 0)
    entries = (
        Entry("future", "dir", Meta(0o755, 0, 0, year_3000)),
        Entry("huge-device", "chardev", meta, major=2**31, minor=0),
        Entry("ok", "dir", Meta(0o700, 0, 0, 5)),
    )
    m = Manifest("filesystem", 0, "2026-11-29T00:00:00Z", (), ChunkTable(b""), root=meta, entries=entries)
    snapshot_id = await repo.write_manifest(encode_manifest(m))
    result = await restore(repo, snapshot_id, str(tmp_path / "out"), RESTORE)
    problems = {p.path: p.reason for p in result.problems}
    assert set(problems) == {"future", "huge-device"}
    assert "out of the target filesystem's range" in problems["future"]
    assert "no such device numbers" in problems["huge-device"]
    assert os.stat(tmp_path / "out" / "ok").st_mtime_ns == 5, "the rest is restored"


_CAP_CHOWN = 0


def _without_chown() -> None:
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_CAPBSET_DROP, _CAP_CHOWN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.root
def test_root_without_the_chown_capability_lists_owners_and_restores_the_rest(tmp_path: Path) -> None:
    if not ROOT:
        pytest.skip("dropping a capability needs root")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    os.chown(tmp_path / "src" / "f", 1234, 1234)
    repo = str(tmp_path / "repo")
    snap = ferry("snapshot", "create", "--repo", repo, str(tmp_path / "src")).stdout.strip()
    out = subprocess.run(
        [sys.executable, "-m", "agent", "restore", "--repo", repo, "--snapshot", snap, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_without_chown,
    )
    assert out.returncode == 3, out.stderr
    assert "ferry: not restored: f: owner 1234:1234 not set: Operation not permitted" in out.stderr
    assert (tmp_path / "out" / "f").read_bytes() == b"data", "the restore is kept"


async def test_the_pack_count_includes_the_last_pack(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_bytes(os.urandom(5000))
    made = await create_snapshot(repo, str(tmp_path / "tree"), SMALL_CHUNKS)
    assert made.packs == len(await repo.storage.list("packs/")) == 1


async def test_a_tree_deeper_than_the_descriptors_held_round_trips(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk holds at most MAX_OPEN_DIRS directory descriptors: deeper, it closes ancestors and opens
    them again by path when it comes back to them (checking they are still the same directories)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    make_deep(tree, MAX_OPEN_DIRS * 2, b"d")
    # Met after the deep branch, in a directory whose descriptor was closed: opened again to reach them.
    (tree / "d" / "z-dir").mkdir()
    (tree / "d" / "z-link").symlink_to("z-dir")
    reopened: list[str] = []

    def counted(root_fd: int, path: str, flags: int, mode: int = 0o600) -> int:
        reopened.append(path)
        return open_beneath(root_fd, path, flags, mode)

    monkeypatch.setattr(scan, "open_beneath", counted)
    assert await round_trip(repo, tree, tmp_path / "out") == []
    assert "d" in reopened, "the walk closed and reopened an ancestor"
