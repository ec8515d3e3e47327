"""Sample data for tests, the demo and benchmarks: mixed block images and directory trees, and a strict
comparison of two trees (content, types, modes, ownership, mtimes, symlink targets, hardlink groups)."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

MiB = 1024 * 1024

_WORDS = (
    b"ferry restore volume chunk verify snapshot kubernetes velero pack zstd blake3 block device filesystem "
    b"node agent progress status cancel manifest repository object storage bucket prefix range fetch write"
).split()


def _text(rng: random.Random, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(_WORDS) for _ in range(12)) + b"\n"
    return bytes(out[:n])


def _binary(rng: random.Random, n: int) -> bytes:
    """Structured, partly compressible bytes, like executables: repeated records with varying fields."""
    record = bytearray(rng.randbytes(64))
    out = bytearray()
    while len(out) < n:
        record[rng.randrange(64)] = rng.randrange(256)
        out += record + rng.randbytes(16)
    return bytes(out[:n])


def mixed_bytes(rng: random.Random, n: int, run: int) -> bytes:
    """``n`` bytes of random, text, binary and zero runs of about ``run`` bytes each, in equal parts."""
    out = bytearray()
    kinds = ["random", "text", "binary", "zero"]
    while len(out) < n:
        length = min(n - len(out), max(1, int(run * rng.uniform(0.5, 1.5))))
        kind = rng.choice(kinds)
        if kind == "random":
            out += rng.randbytes(length)
        elif kind == "text":
            out += _text(rng, length)
        elif kind == "binary":
            out += _binary(rng, length)
        else:
            out += bytes(length)
    return bytes(out)


def write_mixed_image(path: Path, size: int, seed: int = 1, run: int = 3 * MiB) -> Path:
    """A block image of mixed content with zero runs, written in pieces (memory stays small)."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        written = 0
        while written < size:
            piece = mixed_bytes(rng, min(64 * MiB, size - written), run)
            f.write(piece)
            written += len(piece)
    return path


def make_sample_tree(root: Path, seed: int = 2, big_file: int = 12 * MiB, as_root: bool | None = None) -> Path:
    """A tree with what a volume holds: nested and empty directories, empty, small and multi-chunk files,
    a sparse file, relative/absolute/dangling symlinks, hardlinks, odd permissions, unicode and deep paths,
    and (as root) other owners."""
    rng = random.Random(seed)
    as_root = os.geteuid() == 0 if as_root is None else as_root
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "app.conf").write_bytes(_text(rng, 3000))
    (root / "etc" / "empty").write_bytes(b"")
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(mixed_bytes(rng, big_file, 1 * MiB))
    (root / "data" / "twin.bin").write_bytes((root / "data" / "big.bin").read_bytes()[: 3 * MiB])
    with (root / "data" / "sparse.img").open("wb") as f:
        f.write(rng.randbytes(100_000))
        f.seek(8 * MiB)
        f.write(b"end")
    for i in range(40):
        (root / "data" / f"small-{i:03}.txt").write_bytes(_text(rng, rng.randrange(0, 9000)))
    (root / "empty-dir").mkdir()
    (root / "ünïcødé ✓ 文件").mkdir()
    (root / "ünïcødé ✓ 文件" / "naïve résumé.txt").write_bytes("zażółć gęślą jaźń\n".encode())
    deep = root / "deep"
    for i in range(40):
        deep = deep / f"level-{i:02}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"at the bottom\n")
    os.symlink("../etc/app.conf", root / "data" / "conf-link")
    os.symlink("/etc/hostname", root / "absolute-link")
    os.symlink("does/not/exist", root / "dangling-link")
    os.symlink("data", root / "dir-link")
    os.link(root / "etc" / "app.conf", root / "data" / "app.conf.hardlink")
    os.link(root / "data" / "big.bin", root / "deep" / "big-hardlink.bin")
    os.chmod(root / "etc" / "app.conf", 0o640)
    os.chmod(root / "data" / "small-001.txt", 0o4755)
    os.chmod(root / "data" / "small-002.txt", 0o000)
    os.chmod(root / "empty-dir", 0o1777)
    os.chmod(root / "etc", 0o750)
    if as_root:
        os.chown(root / "etc" / "app.conf", 1001, 2002)
        os.chown(root / "data", 33, 33)
        os.lchown(root / "data" / "conf-link", 1234, 4321)
        os.chown(root, 1000, 1000)
    os.chmod(root, 0o2775)
    t = 1_600_000_000_123_456_789
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            t += 1_000_000_007
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)
    os.utime(root, ns=(t, t))
    return root


def _xattrs(where: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(where, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(where, n, follow_symlinks=False)) for n in names))


def describe_tree(root: Path | str) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce, per relative path ('' is the root): type, mode, owner, mtime
    (ns), extended attributes (ACLs and capabilities among them), then the size and content of files
    with their hardlink group, a symlink's target, or a device's numbers. Walked with directory
    descriptors (``os.fwalk``), so paths longer than PATH_MAX and names that are not UTF-8 work."""
    out: dict[str, tuple[object, ...]] = {}
    inode_first: dict[tuple[int, int], str] = {}

    def visit(dir_fd: int, name: str, rel: str) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        where = f"/proc/self/fd/{dir_fd}/{name}" if name != "." else f"/proc/self/fd/{dir_fd}"
        common = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            _xattrs(where),
        )
        if stat.S_ISLNK(st.st_mode):
            out[rel] = (*common, os.readlink(name, dir_fd=dir_fd))
        elif stat.S_ISREG(st.st_mode):
            group = inode_first.setdefault((st.st_dev, st.st_ino), rel)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as f:
                out[rel] = (*common, st.st_size, f.read(), group)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out[rel] = (*common, (os.major(st.st_rdev), os.minor(st.st_rdev)))
        else:
            out[rel] = common

    top = os.fsencode(root)
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(top):
        dirnames.sort()
        base = os.path.relpath(dirpath, top)
        if base == b".":
            visit(dir_fd, ".", "")
            base = b""
        for name in sorted(filenames) + dirnames:
            rel = os.fsdecode(os.path.join(base, name)) if base else os.fsdecode(name)
            visit(dir_fd, os.fsdecode(name), rel)
    return out


def tree_differences(expected: Path, actual: Path) -> list[str]:
    a, b = describe_tree(expected), describe_tree(actual)
    diffs = [f"missing: {p!r}" for p in sorted(a.keys() - b.keys())]
    diffs += [f"unexpected: {p!r}" for p in sorted(b.keys() - a.keys())]
    fields = ("type", "mode", "uid", "gid", "mtime", "xattrs", "size/target/device", "content", "hardlink group")
    for p in sorted(a.keys() & b.keys()):
        for name, x, y in zip(fields, a[p], b[p], strict=False):
            if x != y:
                shown = (x, y) if name != "content" else (f"{len(x)} bytes", f"{len(y)} bytes")  # type: ignore[arg-type]
                diffs.append(f"{p!r}: {name} differs: {shown[0]!r} != {shown[1]!r}")
    return diffs
