"""Walking a directory tree for a snapshot: every entry with its metadata, parents before children,
names sorted, symlinks never followed. Blocking; run in a worker thread.

The walk holds directory descriptors and names each entry relative to its directory, so paths of any
length are walked (no call ever sees a whole path longer than PATH_MAX) and a directory swapped for a
symlink mid-walk is never followed. At most ``MAX_OPEN_DIRS`` descriptors are held at once; a deeper
tree reopens an ancestor by its path beneath the root when it gets back to it, and checks it is still
the same directory.

An entry that vanishes or cannot be read is left out and reported (``Problem``); the walk goes on.
Sockets are not stored (nothing can be restored from one) and are reported as notes.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from agent.fs import xattrs
from agent.fs.beneath import open_beneath, proc_path
from agent.fs.names import Problem, is_utf8
from agent.repo.format import EntryType, Meta, Xattrs

MAX_OPEN_DIRS = 64


@dataclass(slots=True)
class ScannedEntry:
    path: str
    type: EntryType
    meta: Meta
    size: int = 0
    target: str = ""
    key: tuple[int, int] = (0, 0)
    """Files and hardlinks: (device, inode) of a file with more than one link, else (0, 0)."""
    major: int = 0
    minor: int = 0


@dataclass
class ScannedTree:
    root: Meta
    entries: list[ScannedEntry]
    skipped: list[Problem] = field(default_factory=list)
    """Entries that could not be read: the snapshot is incomplete without them."""
    notes: list[Problem] = field(default_factory=list)
    """Entries not stored by design (sockets)."""


def reason(e: OSError) -> str:
    """An OS error in words, naming the common races of a live filesystem."""
    if e.errno == errno.ENOENT:
        return "it vanished during the snapshot"
    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
        return "it was replaced during the snapshot (a symlink or a non-directory is now on its path)"
    return e.strerror or str(e)


def clean_xattrs(found: list[tuple[str, bytes]], path: str, lost: list[Problem]) -> Xattrs:
    """The attributes the format can hold; those whose names are not UTF-8 are added to ``lost``."""
    kept = []
    for name, value in found:
        if is_utf8(name):
            kept.append((name, value))
        else:
            lost.append(Problem(path, f"extended attribute {name!r} not stored: its name is not UTF-8"))
    return tuple(kept)


def meta_of(st: os.stat_result, found: Xattrs = ()) -> Meta:
    return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, found)


@dataclass
class _Dir:
    rel: str
    fd: int
    ident: tuple[int, int]
    pending: list[tuple[str, os.stat_result]]
    """Children still to visit, last first."""


class _Walk:
    def __init__(self, root_fd: int, tree: ScannedTree) -> None:
        self.root_fd = root_fd
        self.tree = tree
        self.first_link: dict[tuple[int, int], str] = {}
        self.stack: list[_Dir] = []
        self.open_dirs = 0

    def skip(self, rel: str, why: str) -> None:
        self.tree.skipped.append(Problem(rel, why))

    def attrs(self, target: int | str, rel: str, *, follow: bool = True) -> Xattrs:
        try:
            found = xattrs.read(target, follow_symlinks=follow)
        except OSError as e:
            self.tree.skipped.append(Problem(rel, f"its extended attributes cannot be read: {reason(e)}"))
            return ()
        return clean_xattrs(found, rel, self.tree.skipped)

    def listing(self, fd: int, rel: str) -> list[tuple[str, os.stat_result]]:
        """The children of an open directory with their lstat, sorted by name, last first."""
        out: list[tuple[str, os.stat_result]] = []
        try:
            with os.scandir(fd) as it:
                for child in it:
                    path = f"{rel}/{child.name}" if rel else child.name
                    try:
                        out.append((child.name, child.stat(follow_symlinks=False)))
                    except OSError as e:
                        self.skip(path, reason(e))
        except OSError as e:
            self.skip(rel or ".", f"its entries cannot be listed: {reason(e)}")
        out.sort(key=lambda item: item[0], reverse=True)
        return out

    def fd_of(self, frame: _Dir) -> int:
        """The frame's directory descriptor, reopened if it was closed to bound the number held."""
        if frame.fd < 0:
            fd = open_beneath(self.root_fd, frame.rel, os.O_RDONLY | os.O_DIRECTORY)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != frame.ident:
                os.close(fd)
                raise OSError(errno.ENOTDIR, "replaced", frame.rel)
            frame.fd = fd
            self.open_dirs += 1
        return frame.fd

    def push(self, rel: str, fd: int) -> None:
        st = os.fstat(fd)
        self.open_dirs += 1
        if self.open_dirs > MAX_OPEN_DIRS:
            for older in self.stack[1:]:
                if older.fd >= 0:
                    os.close(older.fd)
                    older.fd = -1
                    self.open_dirs -= 1
                    break
        self.stack.append(_Dir(rel, fd, (st.st_dev, st.st_ino), self.listing(fd, rel)))

    def pop(self) -> None:
        frame = self.stack.pop()
        if frame.fd >= 0 and frame.fd != self.root_fd:
            os.close(frame.fd)
            self.open_dirs -= 1

    def close(self) -> None:
        while self.stack:
            self.pop()

    def visit(self, frame: _Dir, name: str, st: os.stat_result) -> None:
        rel = f"{frame.rel}/{name}" if frame.rel else name
        entries = self.tree.entries
        mode = st.st_mode
        if stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else (0, 0)
            first = self.first_link.get(key) if st.st_nlink > 1 else None
            if first is not None:
                entries.append(ScannedEntry(rel, "hardlink", meta_of(st), target=first, key=key))
                return
            if st.st_nlink > 1:
                self.first_link[key] = rel
            entries.append(ScannedEntry(rel, "file", meta_of(st), size=st.st_size, key=key))
            return
        if stat.S_ISSOCK(mode):
            self.tree.notes.append(Problem(rel, "a socket: not stored (nothing can be restored from one)"))
            return
        try:
            parent_fd = self.fd_of(frame)
        except OSError as e:
            frame.pending.clear()
            self.skip(frame.rel, f"the rest of its entries were not read: {reason(e)}")
            return
        if stat.S_ISDIR(mode):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EPERM):  # stored without its content
                    entries.append(ScannedEntry(rel, "dir", meta_of(st, self.attrs(proc_path(parent_fd, name), rel))))
                    self.skip(rel, f"its entries cannot be listed: {reason(e)}")
                else:
                    self.skip(rel, reason(e))
                return
            now = os.fstat(fd)
            entries.append(ScannedEntry(rel, "dir", meta_of(now, self.attrs(fd, rel))))
            self.push(rel, fd)
            return
        where = proc_path(parent_fd, name)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=parent_fd)
            except OSError as e:
                self.skip(rel, reason(e))
                return
            found = self.attrs(where, rel, follow=False)
            entries.append(ScannedEntry(rel, "symlink", meta_of(st, found), target=target))
        elif stat.S_ISFIFO(mode):
            entries.append(ScannedEntry(rel, "fifo", meta_of(st, self.attrs(where, rel, follow=False))))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind: EntryType = "chardev" if stat.S_ISCHR(mode) else "blockdev"
            found = self.attrs(where, rel, follow=False)
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
            entries.append(ScannedEntry(rel, kind, meta_of(st, found), major=major, minor=minor))
        else:  # pragma: no cover - a file type Linux does not have
            self.tree.notes.append(Problem(rel, f"an unknown kind of file (mode {mode:o}): not stored"))


def scan_tree(root_fd: int) -> ScannedTree:
    """Every entry under the directory ``root_fd`` (which stays open; the caller closes it)."""
    root_st = os.fstat(root_fd)
    tree = ScannedTree(root=meta_of(root_st), entries=[])
    walk = _Walk(root_fd, tree)
    tree.root = meta_of(root_st, walk.attrs(root_fd, "."))
    walk.stack.append(_Dir("", root_fd, (root_st.st_dev, root_st.st_ino), walk.listing(root_fd, "")))
    try:
        while walk.stack:
            frame = walk.stack[-1]
            if not frame.pending:
                walk.pop()
                continue
            name, st = frame.pending.pop()
            walk.visit(frame, name, st)
    finally:
        walk.close()
    return tree


def open_root(path: str) -> int:
    """The source directory, opened for walking. Raises OSError."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
