"""A directory being restored from a filesystem snapshot. Blocking methods, called from worker threads.

Three phases: ``prepare`` creates directories (private until the end), regular files (sized, data
extents of multi-chunk files preallocated, holes left as holes), symlinks and hardlinks, in stages whose
batches may run on several threads at once (``prepare_stages``: creating files is kernel work, a quarter
of a millisecond each on some filesystems); the pipeline then writes file data
through ``write``; ``apply_metadata`` sets ownership (when root), modes and mtimes, files first and
directories deepest-first, so restoring data never disturbs a directory's mtime afterwards.

Every path is opened beneath the target with ``safefs``: nothing is created, followed or overwritten
outside it, whatever the manifest says. An existing non-directory at an entry's path is replaced; an
existing directory where a non-directory belongs is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

from agent.errors import TargetError, UnsafePath
from agent.pipeline.direct import open_direct, pwrite_all, write_split
from agent.pipeline.safefs import open_beneath, open_parent
from agent.repo.format import Entry, Manifest, Meta, check_relative_path

_libc = ctypes.CDLL(None, use_errno=True)
DIRECT_MIN_BYTES = 256 * 1024
"""Chunks smaller than this are written through the page cache."""
T = TypeVar("T")


class TreeTarget:
    def __init__(self, path: str, root_fd: int, manifest: Manifest, direct: bool = False) -> None:
        self.path = path
        self.root_fd = root_fd
        self.direct = direct
        """Write whole aligned blocks with O_DIRECT; turned off if the filesystem refuses it."""
        self._manifest = manifest
        self._files = [e for e in manifest.entries if e.type == "file"]
        self._as_root = os.geteuid() == 0

    @classmethod
    def open(cls, path: str, manifest: Manifest, direct: bool = False) -> TreeTarget:
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except NotADirectoryError:
            raise TargetError(f"target {path!r} is not a directory; a filesystem snapshot restores into one") from None
        except OSError as e:
            raise TargetError(f"cannot open target directory {path!r}: {e.strerror}") from e
        return cls(path, fd, manifest, direct)

    # --- phase 1 ----------------------------------------------------------------------------------------
    def prepare(self, stop: threading.Event) -> None:
        """All of phase 1 on this thread."""
        for stage in self.prepare_stages(1):
            for batch in stage:
                self.prepare_batch(batch, stop)

    def prepare_stages(self, parts: int) -> list[list[list[Entry]]]:
        """Phase 1 as stages to run in order; the batches of one stage may run at once. Directories first
        (one batch, parents before children), then regular files and symlinks in up to ``parts`` batches
        of neighbouring entries, then hardlinks (their targets exist by then)."""
        entries = self._manifest.entries
        dirs = [e for e in entries if e.type == "dir"]
        others = [e for e in entries if e.type in ("file", "symlink")]
        links = [e for e in entries if e.type not in ("dir", "file", "symlink")]
        size = -(-len(others) // max(parts, 1)) or 1
        return [[dirs], [others[i : i + size] for i in range(0, len(others), size)], [links]]

    def prepare_batch(self, batch: list[Entry], stop: threading.Event) -> None:
        for entry in batch:
            if stop.is_set():
                return
            why = check_relative_path(entry.path)
            if why:
                raise UnsafePath(f"refusing entry {entry.path!r}: {why}")
            parent_fd, name = open_parent(self.root_fd, entry.path)
            try:
                self._create(parent_fd, name, entry)
            except OSError as e:
                raise TargetError(f"cannot create {entry.path!r} in {self.path!r}: {e.strerror}") from e
            finally:
                os.close(parent_fd)

    def _create(self, parent_fd: int, name: str, entry: Entry) -> None:
        if entry.type == "dir":
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                    return
                self._remove(parent_fd, name, entry.path)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        elif entry.type == "file":
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
        elif entry.type == "symlink":
            self._replace(parent_fd, name, entry.path, lambda: os.symlink(entry.target, name, dir_fd=parent_fd))
        else:
            target_fd, target_name = open_parent(self.root_fd, entry.target)
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

    def _replace(self, parent_fd: int, name: str, path: str, create: Callable[[], T]) -> T:
        try:
            return create()
        except FileExistsError:
            self._remove(parent_fd, name, path)
            return create()

    @staticmethod
    def _remove(parent_fd: int, name: str, path: str) -> None:
        if stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise TargetError(f"{path!r} exists in the target as a directory; refusing to replace it")
        os.unlink(name, dir_fd=parent_fd)

    def _preallocate(self, fd: int, entry: Entry) -> None:
        """Allocate the file's data extents (not its holes) so out-of-order writes do not fragment it.
        A file of one chunk is written at once: nothing to preallocate."""
        if len(entry.content) < 2:
            return
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
                offset += self._manifest.chunks[c].plain
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
        fd = open_beneath(self.root_fd, entry.path, os.O_WRONLY)
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
            raise TargetError(f"writing {entry.path!r} in {self.path!r} failed: {e.strerror}") from e
        finally:
            if direct_fd >= 0:
                os.close(direct_fd)
            os.close(fd)

    # --- phase 3 ----------------------------------------------------------------------------------------
    def apply_metadata(self, stop: threading.Event) -> None:
        entries = self._manifest.entries
        for entry in entries:
            if stop.is_set():
                return
            if entry.type in ("file", "symlink"):
                self._apply(entry.path, entry.meta, symlink=entry.type == "symlink")
        for entry in reversed(entries):
            if stop.is_set():
                return
            if entry.type == "dir":
                self._apply(entry.path, entry.meta, symlink=False)
        if self._manifest.root is not None:
            self._apply("", self._manifest.root, symlink=False)

    def _apply(self, path: str, meta: Meta, symlink: bool) -> None:
        try:
            if symlink:
                parent_fd, name = open_parent(self.root_fd, path)
                try:
                    if self._as_root:
                        os.chown(name, meta.uid, meta.gid, dir_fd=parent_fd, follow_symlinks=False)
                    os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
                finally:
                    os.close(parent_fd)
                return
            fd = open_beneath(self.root_fd, path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                if self._as_root:
                    os.fchown(fd, meta.uid, meta.gid)
                os.fchmod(fd, meta.mode)
                os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(fd)
        except OSError as e:
            raise TargetError(f"cannot set ownership, mode or time of {path or '.'!r}: {e.strerror}") from e

    def flush(self) -> None:
        """Make everything written durable (syncfs on the target's filesystem)."""
        if _libc.syncfs(self.root_fd) != 0:
            err = ctypes.get_errno()
            raise TargetError(f"flushing {self.path!r} failed: {os.strerror(err)}")

    def close(self) -> None:
        os.close(self.root_fd)
