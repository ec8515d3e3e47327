"""A directory being restored from a filesystem snapshot. Blocking methods, called from worker threads.

Three phases: ``prepare`` creates directories (private until the end), regular files (sized, data
extents of multi-chunk files preallocated, holes left as holes), symlinks, FIFOs, device nodes and
hardlinks, in stages whose batches may run on several threads at once (``prepare_stages``: creating files
is kernel work, a quarter of a millisecond each on some filesystems); the pipeline then writes file data
through ``write``; ``apply_metadata`` sets each entry's metadata, files first and directories
deepest-first, so restoring data never disturbs a directory's mtime afterwards.

Metadata goes on in the one order that keeps all of it: owner (when root; changing the owner clears
capabilities and set-uid/set-gid bits), mode (which rewrites an ACL's mask), extended attributes (ACLs,
then capabilities last), modification time. What cannot be applied (a device node without the privilege
to make one, an attribute the target filesystem refuses) is listed in ``problems``; the restore goes on.

Every path is opened beneath the target with ``agent.fs.beneath``: nothing is created, followed or
overwritten outside it, whatever the manifest says, and paths longer than PATH_MAX work. An existing
non-directory at an entry's path is replaced, except a regular file of the entry's size whose only
names are its own and the snapshot's hardlinks to it, with no extended attribute the snapshot's lacks:
that one is kept (what an interrupted restore left), its holes made, and its content checked against the
chunks before any is fetched (``resume``). An existing directory where a non-directory belongs is
refused. A target directory this restore created is removed if the restore does not finish.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

from agent.errors import TargetError, UnsafePath
from agent.fs import xattrs
from agent.fs.beneath import open_beneath, proc_path
from agent.fs.names import Problem, shown
from agent.fs.sparse import make_hole
from agent.pipeline.direct import open_direct, pread_all, pwrite_all, write_split
from agent.repo.format import Entry, Manifest, Meta, check_relative_path

_libc = ctypes.CDLL(None, use_errno=True)
DIRECT_MIN_BYTES = 256 * 1024
"""Chunks smaller than this are written through the page cache."""
T = TypeVar("T")


def _refusal(path: str, e: OSError) -> TargetError:
    if e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return UnsafePath(f"refusing {shown(path)}: it would leave the target or pass through a symlink")
    return TargetError(f"cannot open {shown(path)} in the target: {e.strerror}")


def _beneath(root_fd: int, path: str, flags: int) -> int:
    try:
        return open_beneath(root_fd, path, flags)
    except OSError as e:
        raise _refusal(path, e) from e


def _parent(root_fd: int, path: str) -> tuple[int, str]:
    parent, _, name = path.rpartition("/")
    return _beneath(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY), name


class TreeTarget:
    def __init__(self, path: str, root_fd: int, manifest: Manifest, direct: bool = False, created: bool = False):
        self.path = path
        self.root_fd = root_fd
        self.direct = direct
        """Write whole aligned blocks with O_DIRECT; turned off if the filesystem refuses it."""
        self.created = created
        """This restore made the target directory (so it may remove it if the restore does not finish)."""
        self._manifest = manifest
        self._files = [e for e in manifest.entries if e.type == "file"]
        self._links: dict[str, list[str]] = {}
        """The snapshot's hardlinks, by the path they link to."""
        for e in manifest.entries:
            if e.type == "hardlink":
                self._links.setdefault(e.target, []).append(e.path)
        self._as_root = os.geteuid() == 0
        self.problems: list[Problem] = []
        """Entries or attributes that could not be restored as the snapshot has them."""
        self.kept_files = False
        """``prepare`` kept a regular file that was already there (else nothing can hold a chunk yet)."""
        self._not_created: set[str] = set()
        """FIFOs and device nodes that could not be made (their metadata is not applied either)."""

    @classmethod
    def open(cls, path: str, manifest: Manifest, direct: bool = False) -> TreeTarget:
        created = False
        try:
            try:
                os.mkdir(path, 0o700)
                created = True
            except FileExistsError:
                pass
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise TargetError(
                f"target {shown(path)} is not a directory; a filesystem snapshot restores into one"
            ) from None
        except OSError as e:
            raise TargetError(f"cannot open target directory {shown(path)}: {e.strerror}") from e
        return cls(path, fd, manifest, direct, created)

    # --- phase 1 ----------------------------------------------------------------------------------------
    def prepare(self, stop: threading.Event) -> None:
        """All of phase 1 on this thread."""
        for stage in self.prepare_stages(1):
            for batch in stage:
                self.prepare_batch(batch, stop)

    def prepare_stages(self, parts: int) -> list[list[list[Entry]]]:
        """Phase 1 as stages to run in order; the batches of one stage may run at once. Directories first
        (one batch, parents before children), then everything but hardlinks in up to ``parts`` batches of
        neighbouring entries, then hardlinks (their targets exist by then)."""
        entries = self._manifest.entries
        dirs = [e for e in entries if e.type == "dir"]
        others = [e for e in entries if e.type not in ("dir", "hardlink")]
        links = [e for e in entries if e.type == "hardlink"]
        size = -(-len(others) // max(parts, 1)) or 1
        return [[dirs], [others[i : i + size] for i in range(0, len(others), size)], [links]]

    def prepare_batch(self, batch: list[Entry], stop: threading.Event) -> None:
        for entry in batch:
            if stop.is_set():
                return
            why = check_relative_path(entry.path)
            if why:
                raise UnsafePath(f"refusing entry {shown(entry.path)}: {why}")
            parent_fd, name = _parent(self.root_fd, entry.path)
            try:
                self._create(parent_fd, name, entry)
            except OSError as e:
                raise TargetError(f"cannot create {shown(entry.path)} in {shown(self.path)}: {e.strerror}") from e
            finally:
                os.close(parent_fd)

    def _create(self, parent_fd: int, name: str, entry: Entry) -> None:
        kind = entry.type
        if kind == "dir":
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                    return
                self._remove(parent_fd, name, entry.path)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        elif kind == "file":
            fd = self._existing(parent_fd, name, entry)
            if fd >= 0:
                self.kept_files = True
                try:
                    self._make_holes(fd, entry)
                finally:
                    os.close(fd)
                return
            fd = self._replace(
                parent_fd,
                name,
                entry.path,
                lambda: os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=parent_fd,
                ),
            )
            try:
                os.ftruncate(fd, entry.size)
                self._preallocate(fd, entry)
            finally:
                os.close(fd)
        elif kind == "symlink":
            self._replace(parent_fd, name, entry.path, lambda: os.symlink(entry.target, name, dir_fd=parent_fd))
        elif kind == "hardlink":
            target_fd, target_name = _parent(self.root_fd, entry.target)
            try:
                self._replace(
                    parent_fd,
                    name,
                    entry.path,
                    lambda: os.link(
                        target_name, name, src_dir_fd=target_fd, dst_dir_fd=parent_fd, follow_symlinks=False
                    ),
                )
            finally:
                os.close(target_fd)
        else:
            self._make_node(parent_fd, name, entry)

    def _existing(self, parent_fd: int, name: str, entry: Entry) -> int:
        """A descriptor for writing the regular file already at the entry's path, if it can be kept: of the
        entry's size, writable, and with no name but its own and the snapshot's hardlinks to it (another
        name could be outside the target); else -1. Its content is checked chunk by chunk before anything
        is fetched (``agent.pipeline.resume``)."""
        try:
            before = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return -1
        if not stat.S_ISREG(before.st_mode) or before.st_size != entry.size:
            return -1
        if before.st_nlink != 1 and before.st_nlink != 1 + self._own_links(entry.path, before):
            return -1
        try:
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError:
            return -1
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, now.st_nlink, now.st_size) != (
            before.st_dev,
            before.st_ino,
            before.st_nlink,
            entry.size,
        ):
            os.close(fd)  # replaced or linked between the two looks
            return -1
        if self._foreign_attributes(fd, entry):
            os.close(fd)
            return -1
        return fd

    @staticmethod
    def _foreign_attributes(fd: int, entry: Entry) -> bool:
        """The file has extended attributes the snapshot's does not (a capability, a user attribute of
        other content): restoring metadata sets the snapshot's but removes only ACLs, so such a file is made
        anew rather than kept. ACLs (inherited from a directory's default ACL, removed with the metadata)
        and the security module's own label (``security.selinux``) do not count."""
        try:
            present = os.listxattr(fd)
        except OSError:
            return False  # a filesystem without extended attributes has none to carry over
        ignored = {name for name, _ in entry.meta.xattrs} | set(xattrs.ACL_NAMES) | {"security.selinux"}
        return bool(set(present) - ignored)

    def _own_links(self, path: str, st: os.stat_result) -> int:
        """How many of the snapshot's hardlinks to ``path`` are in the target as names of the file ``st``."""
        found = 0
        for link in self._links.get(path, ()):
            try:
                parent_fd, name = _parent(self.root_fd, link)
            except TargetError:
                continue
            try:
                there = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                continue
            finally:
                os.close(parent_fd)
            found += (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino)
        return found

    def _make_holes(self, fd: int, entry: Entry) -> None:
        """Make the snapshot's holes in a kept file read as zeros (a file left by an interrupted restore
        has them already, one with other content does not)."""
        plain = self._manifest.chunks.columns().plain
        offset = 0
        for c in entry.content:
            if c < 0:
                make_hole(fd, offset, -c)
                offset -= c
            else:
                offset += plain[c]

    def _make_node(self, parent_fd: int, name: str, entry: Entry) -> None:
        """A FIFO or a device node (created private; its mode is applied with the rest of its metadata)."""
        what = "FIFO" if entry.type == "fifo" else f"device node {entry.major}:{entry.minor}"
        try:
            if entry.type == "fifo":
                node, device = stat.S_IFIFO, 0
            else:
                node = stat.S_IFCHR if entry.type == "chardev" else stat.S_IFBLK
                device = os.makedev(entry.major, entry.minor)
            self._replace(parent_fd, name, entry.path, lambda: os.mknod(name, node | 0o600, device, dir_fd=parent_fd))
        except PermissionError as e:
            self._not_made(entry.path, f"{what} not created: {e.strerror} (making one needs root)")
        except (OverflowError, ValueError):  # numbers this system's dev_t cannot hold
            self._not_made(entry.path, f"{what} not created: this system has no such device numbers")
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EOVERFLOW):
                raise
            self._not_made(entry.path, f"{what} not created: {e.strerror}")

    def _not_made(self, path: str, why: str) -> None:
        self._not_created.add(path)
        self.problems.append(Problem(path, why))

    def _replace(self, parent_fd: int, name: str, path: str, create: Callable[[], T]) -> T:
        try:
            return create()
        except FileExistsError:
            self._remove(parent_fd, name, path)
            return create()

    @staticmethod
    def _remove(parent_fd: int, name: str, path: str) -> None:
        if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise TargetError(f"{shown(path)} exists in the target as a directory; refusing to replace it")
        os.unlink(name, dir_fd=parent_fd)

    def _preallocate(self, fd: int, entry: Entry) -> None:
        """Allocate the file's data extents (not its holes) so out-of-order writes do not fragment it.
        A file of one chunk is written at once: nothing to preallocate."""
        if len(entry.content) < 2:
            return
        plain = self._manifest.chunks.columns().plain
        offset = 0
        start: int | None = None
        for c in entry.content:
            if c < 0:
                self._fallocate(fd, start, offset)
                start = None
                offset -= c
            else:
                if start is None:
                    start = offset
                offset += plain[c]
        self._fallocate(fd, start, offset)

    @staticmethod
    def _fallocate(fd: int, start: int | None, end: int) -> None:
        if start is None or end <= start:
            return
        try:
            os.posix_fallocate(fd, start, end - start)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise

    # --- phase 2 ----------------------------------------------------------------------------------------
    def write(self, slot: int, offset: int, data: memoryview) -> None:
        entry = self._files[slot]
        fd = _beneath(self.root_fd, entry.path, os.O_WRONLY)
        direct_fd = -1
        try:
            # A large chunk goes out with O_DIRECT (see ``direct``); the direct descriptor reopens the same
            # file through /proc, not the path. For a small one that reopen costs more than the copy it saves.
            if self.direct and len(data) >= DIRECT_MIN_BYTES:
                direct_fd = open_direct(fd, os.O_WRONLY)
            if direct_fd >= 0:
                self.direct = write_split(fd, direct_fd, data, offset)
            else:
                pwrite_all(fd, data, offset)
        except OSError as e:
            raise TargetError(f"writing {shown(entry.path)} in {shown(self.path)} failed: {e.strerror}") from e
        finally:
            if direct_fd >= 0:
                os.close(direct_fd)
            os.close(fd)

    def read_into(self, slot: int, offset: int, into: memoryview) -> int:
        """Read back up to ``len(into)`` bytes at ``offset`` of the slot's file (``agent.pipeline.resume``);
        returns the count, 0 if the file cannot be opened."""
        try:
            fd = _beneath(self.root_fd, self._files[slot].path, os.O_RDONLY | os.O_NONBLOCK)
        except TargetError:
            return 0
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return 0
            return pread_all(fd, into, offset)
        finally:
            os.close(fd)

    # --- phase 3 ----------------------------------------------------------------------------------------
    def apply_metadata(self, stop: threading.Event) -> None:
        entries = self._manifest.entries
        for entry in entries:
            if stop.is_set():
                return
            if entry.type not in ("dir", "hardlink"):
                self._apply(entry)
        for entry in reversed(entries):
            if stop.is_set():
                return
            if entry.type == "dir":
                self._apply(entry)
        if self._manifest.root is not None:
            self._apply(Entry("", "dir", self._manifest.root))

    def _apply(self, entry: Entry) -> None:
        path, meta = entry.path, entry.meta
        try:
            if entry.type == "symlink":
                self._apply_symlink(path, meta)
            elif entry.type in ("file", "dir"):
                fd = _beneath(self.root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    self._apply_to(path, meta, fd, fd)
                finally:
                    os.close(fd)
            else:  # FIFOs and device nodes are never opened: they are reached through an O_PATH descriptor
                try:
                    fd = _beneath(self.root_fd, path, os.O_PATH)
                except TargetError:
                    if path in self._not_created:
                        return
                    raise
                try:
                    self._apply_to(path, meta, fd, proc_path(fd))
                finally:
                    os.close(fd)
        except OSError as e:
            raise TargetError(f"cannot set the owner, mode or time of {shown(path or '.')}: {e.strerror}") from e

    def _apply_to(self, path: str, meta: Meta, fd: int, target: int | str) -> None:
        self._chown(path, meta, lambda: os.chown(target, meta.uid, meta.gid))
        os.chmod(target, meta.mode)
        self._xattrs(path, target, meta, follow=True)
        os.utime(target, ns=(meta.mtime_ns, meta.mtime_ns))
        self._check_mtime(path, meta, os.stat(target).st_mtime_ns)

    def _apply_symlink(self, path: str, meta: Meta) -> None:
        parent_fd, name = _parent(self.root_fd, path)
        try:
            self._chown(path, meta, lambda: os.chown(name, meta.uid, meta.gid, dir_fd=parent_fd, follow_symlinks=False))
            self._xattrs(path, proc_path(parent_fd, name), meta, follow=False)
            os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
            self._check_mtime(path, meta, os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mtime_ns)
        finally:
            os.close(parent_fd)

    def _chown(self, path: str, meta: Meta, chown: Callable[[], None]) -> None:
        """Set the owner when running as root; root without the capability (a container's) gets a problem,
        not an aborted restore."""
        if not self._as_root:
            return
        try:
            chown()
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EINVAL):
                raise
            self.problems.append(Problem(path or ".", f"owner {meta.uid}:{meta.gid} not set: {e.strerror}"))

    def _check_mtime(self, path: str, meta: Meta, stored: int) -> None:
        """A filesystem stores times in its own range (ext4: 1901-2446) and clamps others without an error.
        (A coarser granularity than nanoseconds, such as ext4's with small inodes, is not reported.)"""
        if abs(stored - meta.mtime_ns) >= 1_000_000_000:
            why = f"modification time {meta.mtime_ns} ns stored as {stored}: out of the target filesystem's range"
            self.problems.append(Problem(path or ".", why))

    def _xattrs(self, path: str, target: int | str, meta: Meta, *, follow: bool) -> None:
        for failure in xattrs.apply(target, meta.xattrs, follow_symlinks=follow):
            self.problems.append(Problem(path or ".", f"extended attribute {failure}"))

    def flush(self) -> None:
        """Make everything written durable (syncfs on the target's filesystem)."""
        if _libc.syncfs(self.root_fd) != 0:
            err = ctypes.get_errno()
            raise TargetError(f"flushing {shown(self.path)} failed: {os.strerror(err)}")

    def close(self) -> None:
        os.close(self.root_fd)

    def discard(self) -> None:
        """Remove the target directory if this restore created it (when the restore does not finish)."""
        if self.created:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.path)
