"""Trees that hold what users lose elsewhere: every kind of metadata Linux keeps, paths longer than
PATH_MAX, names that are not UTF-8, sparse files. Shared by the fidelity tests and ``bench.fidelity``."""

from __future__ import annotations

import os
import shutil
import stat
import struct
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
ROOT = os.geteuid() == 0


def make_deep(root: Path, levels: int, name: bytes) -> bytes:
    """A chain of ``levels`` directories named ``name`` under ``root`` with a file at the bottom; the
    relative path of that file (longer than PATH_MAX for long chains)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        leaf = os.open(b"bottom", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(leaf, b"at the bottom of a very long path\n")
        os.close(leaf)
        os.symlink(b"../" * 3 + name, b"up-link", dir_fd=fd)
    finally:
        os.close(fd)
    return b"/".join([name] * levels + [b"bottom"])


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in system.posix_acl_* (version 2; tag, permissions, id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, qid) for tag, perm, qid in entries)


ANY = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CAP_NET_RAW_EP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
"""security.capability for cap_net_raw+ep (vfs_cap_data revision 2)."""


def make_metadata_tree(root: Path) -> dict[str, int]:
    """Every kind of entry and metadata Linux keeps; returns the mtimes set (path → ns)."""
    root.mkdir()
    times = {
        "before-1970": -1_234_567_890_123_456_789,
        "year-2300": 10_413_792_000_987_654_321,
        "year-2400": 13_569_465_600_000_000_001,
        "epoch": 0,
    }
    for name, ns in times.items():
        (root / name).write_bytes(name.encode())
        os.utime(root / name, ns=(ns, ns))
    (root / "modes").mkdir()
    for mode in (0o4755, 0o2711, 0o1777, 0o000, 0o7777):
        path = root / "modes" / f"{mode:04o}"
        path.write_bytes(b"m")
        os.chmod(path, mode)
    (root / "sticky-dir").mkdir()
    os.chmod(root / "sticky-dir", 0o1777)
    (root / "attrs.txt").write_bytes(b"with attributes")
    os.setxattr(root / "attrs.txt", "user.comment", b"hello \x00 binary")
    os.setxattr(root / "attrs.txt", "user.empty", b"")
    (root / "acl-dir").mkdir()
    os.setxattr(
        root / "acl-dir",
        "system.posix_acl_access",
        acl((USER_OBJ, 7, ANY), (USER, 5, 1234), (GROUP_OBJ, 5, ANY), (MASK, 5, ANY), (OTHER, 0, ANY)),
    )
    os.setxattr(
        root / "acl-dir",
        "system.posix_acl_default",
        acl((USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (GROUP, 7, 4321), (MASK, 7, ANY), (OTHER, 1, ANY)),
    )
    os.mkfifo(root / "fifo", 0o620)
    os.symlink("attrs.txt", root / "link")
    if ROOT:
        os.setxattr(root / "attrs.txt", "trusted.secret", b"only root reads this")
        os.setxattr(root / "attrs.txt", "security.label", b"restricted")
        os.setxattr(root / "link", "trusted.on-a-symlink", b"yes", follow_symlinks=False)
        shutil.copy(shutil.which("true") or "/bin/true", root / "ping")
        os.chown(root / "ping", 1000, 1000)  # chown clears capabilities: they must go on after it
        os.setxattr(root / "ping", "security.capability", CAP_NET_RAW_EP)
        os.chmod(root / "ping", 0o755)
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "disk", 0o660 | stat.S_IFBLK, os.makedev(259, 70000))
        os.chown(root / "epoch", 2**32 - 2, 2**32 - 2)
        os.chown(root / "modes" / "4755", 0, 4000)
        os.lchown(root / "link", 77, 88)
    for name in ("link",):
        os.utime(root / name, ns=(5, 5), follow_symlinks=False)
    return times


def make_sparse(path: Path, size: int = 256 * MiB, every: int = 4 * MiB) -> None:
    """``size`` bytes holding 4 KiB of data in every ``every`` bytes, the rest never written."""
    with path.open("wb") as f:
        for offset in range(0, size, every):
            f.seek(offset)
            f.write(os.urandom(4 * KiB))
        f.truncate(size)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512
