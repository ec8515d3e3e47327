"""What a snapshot reads: a block device or image file, or a directory tree (scanned without following
symlinks). Blocking functions, run in worker threads."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from agent.errors import SourceError
from agent.repo.format import EntryType, Meta


def open_block_source(path: str) -> tuple[int, int]:
    """Open a block device or regular file for reading: (fd, size in bytes)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it changes nothing for files and devices.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise SourceError(f"cannot open {path!r}: {e.strerror}") from e
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise SourceError(f"{path!r} is neither a block device, an image file nor a directory")
    os.set_blocking(fd, True)
    return fd, os.lseek(fd, 0, os.SEEK_END)


def meta_of(st: os.stat_result) -> Meta:
    return Meta(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns)


@dataclass(slots=True)
class ScannedEntry:
    path: str
    type: EntryType
    meta: Meta
    size: int = 0
    target: str = ""


@dataclass
class ScannedTree:
    root: Meta
    entries: list[ScannedEntry]
    skipped: list[str] = field(default_factory=list)
    """Paths not stored (sockets, FIFOs, device nodes), for the report."""


def _checked_name(directory: str, name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.path.join(directory, name).encode("utf-8", "backslashreplace").decode()
        raise SourceError(f"{shown!r}: file names that are not valid UTF-8 cannot be stored") from None
    return name


def scan_tree(root: str) -> ScannedTree:
    """Every entry under ``root``, parents before children, names sorted; symlinks are not followed."""
    try:
        root_st = os.stat(root)
    except OSError as e:
        raise SourceError(f"cannot read {root!r}: {e.strerror}") from e
    tree = ScannedTree(root=meta_of(root_st), entries=[])
    first_link: dict[tuple[int, int], str] = {}

    def listing(abs_dir: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(abs_dir) as it:
                return sorted(it, key=lambda d: d.name, reverse=True)
        except OSError as e:
            raise SourceError(f"cannot list {abs_dir!r}: {e.strerror}") from e

    # Depth-first, parents before children, without recursion (trees can be deeper than the stack).
    stack: list[tuple[str, str, list[os.DirEntry[str]]]] = [(root, "", listing(root))]
    while stack:
        abs_dir, rel_dir, pending = stack[-1]
        if not pending:
            stack.pop()
            continue
        child = pending.pop()
        rel = f"{rel_dir}/{_checked_name(abs_dir, child.name)}" if rel_dir else _checked_name(abs_dir, child.name)
        try:
            st = child.stat(follow_symlinks=False)
        except OSError as e:
            raise SourceError(f"cannot stat {child.path!r}: {e.strerror}") from e
        meta = meta_of(st)
        if stat.S_ISDIR(st.st_mode):
            tree.entries.append(ScannedEntry(rel, "dir", meta))
            stack.append((child.path, rel, listing(child.path)))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first_link:
                tree.entries.append(ScannedEntry(rel, "hardlink", meta, target=first_link[key]))
                continue
            if st.st_nlink > 1:
                first_link[key] = rel
            tree.entries.append(ScannedEntry(rel, "file", meta, size=st.st_size))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(child.path)
            tree.entries.append(ScannedEntry(rel, "symlink", meta, target=_checked_name(abs_dir, target)))
        else:
            tree.skipped.append(rel)
    return tree
