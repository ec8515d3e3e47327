"""What a snapshot reads: a block device or image file, or one regular file of a tree. Blocking
functions and classes, run in worker threads.

A regular file is opened once, beneath the tree's root (``open_file``), and read front to back once
(``FileReader``): its data extents (SEEK_DATA/SEEK_HOLE) and, inside them, long zero runs become holes;
the data between is cut into content-defined chunks (FastCDC) as it streams past. So the snapshot holds
exactly the bytes it read from that file, whatever happens to it meanwhile: a file that shrinks ends
where reading ended; one that grows is read to its size when it was opened; one replaced by a rename
is read as it was when opened. Memory is one read window plus one unfinished chunk per file.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pyfastcdc import FastCDC

from agent.errors import SourceError
from agent.fs import xattrs
from agent.fs.beneath import open_beneath
from agent.fs.sparse import MIN_ZERO_RUN, data_extents, zero_runs
from agent.repo.format import Meta, Xattrs
from agent.settings import SnapshotSettings

WINDOW_BYTES = 8 * 1024 * 1024
"""Bytes of a file read at a time."""

Piece = bytes | memoryview | int
"""A file's content in order: a chunk's bytes (a view into the window it was read in: no copy), or the
length of a hole (zeros not stored)."""


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


@dataclass
class OpenedFile:
    fd: int
    size: int
    """Bytes when opened: reading stops there even if the file grows."""
    meta: Meta
    key: tuple[int, int]
    """(device, inode)."""
    found_xattrs: list[tuple[str, bytes]]
    stamp: tuple[int, int, int]
    """(size, mtime, ctime) when opened, to tell whether the file changed while it was read."""

    def changed(self) -> bool:
        st = os.fstat(self.fd)
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns) != self.stamp

    def close(self) -> None:
        os.close(self.fd)


def open_file(root_fd: int, path: str) -> OpenedFile:
    """Open a regular file beneath the tree's root without following a symlink anywhere on its path.
    Raises OSError (ENOENT if it vanished, ELOOP if a symlink took its place, EISDIR/ENODEV-like errors
    as ``EFTYPE`` if it is no longer a regular file)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = open_beneath(root_fd, path, flags | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs the file's owner or CAP_FOWNER
        fd = open_beneath(root_fd, path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "it is no longer a regular file", path)
        found = xattrs.read(fd)  # (O_NONBLOCK does nothing to a regular file's reads: it stays)
    except BaseException:
        os.close(fd)
        raise
    meta = Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    return OpenedFile(fd, st.st_size, meta, (st.st_dev, st.st_ino), found, (st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def with_xattrs(meta: Meta, kept: Xattrs) -> Meta:
    return Meta(meta.mode, meta.uid, meta.gid, meta.mtime_ns, kept)


class _Cutter:
    """Content-defined chunking of a stream of data: chunks come out as soon as their end is certain,
    exactly as FastCDC would cut the whole run at once."""

    def __init__(self, settings: SnapshotSettings) -> None:
        self._cdc = FastCDC(settings.cdc_avg_bytes, min_size=settings.cdc_min_bytes, max_size=settings.cdc_max_bytes)
        self._max = settings.cdc_max_bytes
        self._buf = b""
        """Data not cut yet: immutable, so the chunks handed out are views into it, never copies."""

    def feed(self, data: bytes | memoryview, out: list[Piece]) -> None:
        self._buf = self._buf + data if self._buf else data if isinstance(data, bytes) else bytes(data)
        if len(self._buf) < 2 * self._max:
            return
        view = memoryview(self._buf)
        consumed = 0
        for chunk in self._cdc.cut_buf(view):
            end = chunk.offset + chunk.length
            if end == len(view) and chunk.length < self._max:
                break  # its end depends on data not read yet
            out.append(view[chunk.offset : end])
            consumed = end
            if len(view) - consumed < self._max:
                break
        self._buf = self._buf[consumed:]

    def flush(self, out: list[Piece]) -> None:
        if self._buf:
            view = memoryview(self._buf)
            out.extend(view[chunk.offset : chunk.offset + chunk.length] for chunk in self._cdc.cut_buf(view))
            self._buf = b""


def _add_hole(out: list[Piece], length: int) -> None:
    if out and isinstance(out[-1], int):
        out[-1] += length
    else:
        out.append(length)


class FileReader:
    """Reads an ``OpenedFile`` front to back once, as pieces (``Piece``): holes and chunks. A file no
    larger than the smallest chunk is one chunk (or one hole)."""

    def __init__(self, opened: OpenedFile, settings: SnapshotSettings, limit: int | None = None) -> None:
        self._fd = opened.fd
        self._size = opened.size if limit is None else min(opened.size, limit)
        self.cut_short = self._size < opened.size
        """Only the first ``limit`` bytes are read (the file grew past them since it was listed)."""
        self._small = self._size <= settings.cdc_min_bytes
        self._settings = settings
        self._made: _Cutter | None = None
        self._extents: list[tuple[int, int]] | None = None
        self._next = 0
        """Index of the next extent."""
        self._pos = 0
        """File offset up to which pieces have been made."""
        self.done = False
        self.length = 0
        """Bytes the pieces made so far account for."""

    def _cutter(self) -> _Cutter:
        if self._made is None:  # most files are smaller than one chunk and never need one
            self._made = _Cutter(self._settings)
        return self._made

    def read(self, budget: int = WINDOW_BYTES) -> list[Piece]:
        """The next pieces, after reading at most about ``budget`` bytes; ``done`` once the file is read.
        Raises OSError (EIO)."""
        out: list[Piece] = []
        if self._extents is None:  # a file smaller than a zero run holds no hole worth recording
            small = self._size < MIN_ZERO_RUN
            self._extents = [(0, self._size)] if small and self._size else data_extents(self._fd, 0, self._size)
        read = 0
        while not self.done and read < budget:
            if self._next >= len(self._extents):
                self._cutter().flush(out)
                if self._pos < self._size:
                    _add_hole(out, self._size - self._pos)
                    self._pos = self._size
                self.done = True
                break
            start, length = self._extents[self._next]
            if start > self._pos:  # a hole between extents
                self._cutter().flush(out)
                _add_hole(out, start - self._pos)
                self._pos = start
            end = start + length
            want = min(WINDOW_BYTES, end - self._pos)
            data = os.pread(self._fd, want, self._pos)
            read += len(data)
            if len(data) < want:  # the file shrank while we read it: it ends here
                self._take(data, out)
                self._cutter().flush(out)
                self.done = True
                break
            self._take(data, out)
            if self._pos >= end:
                self._next += 1
        self.length += sum(p if isinstance(p, int) else len(p) for p in out)
        return out

    def _take(self, data: bytes, out: list[Piece]) -> None:
        """Cut freshly read data (at ``_pos``) into holes and chunks."""
        base = self._pos
        self._pos += len(data)
        if not data:
            return
        if self._small and len(data) == self._size:  # the whole small file: one chunk or one hole
            if data.count(0) == len(data):
                _add_hole(out, len(data))
            else:
                out.append(data)
            return
        runs = zero_runs(data, base)
        if not runs:
            self._cutter().feed(data, out)
            return
        at = base
        view = memoryview(data)
        for run_start, run_length in runs:
            if run_start > at:
                self._cutter().feed(view[at - base : run_start - base], out)
            self._cutter().flush(out)
            _add_hole(out, run_length)
            at = run_start + run_length
        if at < base + len(data):
            self._cutter().feed(view[at - base :], out)
