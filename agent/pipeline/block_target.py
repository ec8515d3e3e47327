"""A block device or image file being restored. Blocking methods, called from worker threads.

Data: written with O_DIRECT where it lines up and ``direct`` is asked for (see ``direct``). On a target
that reads as zeros (an image file this restore created), whole 4 KiB blocks of zeros inside chunks are
not written, so a sparse image comes back sparse.
Holes: on a regular file they stay holes (a new file already reads as zeros; an existing one has them
punched); on a block device they are zeroed with BLKZEROOUT (falling back to writing zeros) unless the
caller says the device is fresh (``sparse``).

An image file this restore created is removed if the restore does not finish (``discard``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading

from agent.errors import TargetError, TargetTooSmall
from agent.fs.names import shown
from agent.fs.sparse import data_blocks, make_hole
from agent.pipeline.direct import open_direct, pread_all, pwrite_all, write_split

BLKZEROOUT = 0x127F  # _IO(0x12, 127)
_ZERO_STEP = 64 * 1024 * 1024  # bytes zeroed per call, so a stop request is seen quickly


def _size_file(fd: int, path: str, size: int) -> None:
    """Give a new image file its size, saying in words what a filesystem's file size limit means."""
    try:
        os.ftruncate(fd, size)
    except OSError as e:
        if e.errno in (errno.EFBIG, errno.EINVAL):
            raise TargetError(
                f"the snapshot is a volume of {size} bytes, more than the filesystem holding {shown(path)} allows in "
                "one file: restore it onto a block device or into an image file on a filesystem that takes files "
                "that large"
            ) from e
        raise


class BlockTarget:
    def __init__(self, path: str, fd: int, is_device: bool, fresh: bool, sparse: bool, direct_fd: int = -1) -> None:
        self.path = path
        self.fd = fd
        self.is_device = is_device
        self.fresh = fresh
        self.sparse = sparse
        self.direct_fd = direct_fd
        """A second descriptor with O_DIRECT, or -1."""
        self._direct_ok = direct_fd >= 0
        self.reads_as_zeros = fresh and not is_device

    @classmethod
    def open(cls, path: str, size: int, sparse: bool, direct: bool = False) -> BlockTarget:
        """Open (or create, for an image file) the target; refuse it if it is smaller than ``size``."""
        fresh = False
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
            except FileNotFoundError:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fresh = True
        except OSError as e:
            raise TargetError(f"cannot open target {shown(path)}: {e.strerror}") from e
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
                raise TargetError(f"target {shown(path)} is not a block device or an image file")
            os.set_blocking(fd, True)
            if fresh:
                _size_file(fd, path, size)
            have = os.lseek(fd, 0, os.SEEK_END)
            if have < size:
                raise TargetTooSmall(
                    f"target {shown(path)} holds {have} bytes but the snapshot needs {size}: give the volume at "
                    "least the snapshot's size"
                )
            direct_fd = open_direct(fd, os.O_WRONLY) if direct else -1
        except BaseException as e:
            os.close(fd)
            if fresh:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if isinstance(e, OSError):
                raise TargetError(f"cannot use target {shown(path)}: {e.strerror}") from e
            raise
        return cls(path, fd, stat.S_ISBLK(mode), fresh, sparse, direct_fd)

    def discard(self) -> None:
        """Remove the image file if this restore created it (called when the restore does not finish)."""
        if self.fresh and not self.is_device:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def write(self, slot: int, offset: int, data: memoryview) -> None:
        try:
            if self.reads_as_zeros:
                for start, end in data_blocks(data, offset):
                    self._write(data[start:end], offset + start)
            else:
                self._write(data, offset)
        except OSError as e:
            where = f"{len(data)} bytes at {offset} of {shown(self.path)}"
            raise TargetError(f"writing {where} failed: {e.strerror}") from e

    def _write(self, data: memoryview, offset: int) -> None:
        if self._direct_ok:
            self._direct_ok = write_split(self.fd, self.direct_fd, data, offset)
        else:
            pwrite_all(self.fd, data, offset)

    def read_into(self, slot: int, offset: int, into: memoryview) -> int:
        """Read back up to ``len(into)`` bytes at ``offset`` (``agent.pipeline.resume``); returns the count."""
        return pread_all(self.fd, into, offset)

    def fill_hole(self, offset: int, length: int, stop: threading.Event) -> None:
        """Make ``length`` bytes at ``offset`` read as zeros, in steps so ``stop`` is honoured."""
        if self.fresh or (self.is_device and self.sparse):
            return
        end = offset + length
        while offset < end and not stop.is_set():
            step = min(_ZERO_STEP, end - offset)
            if self.is_device:
                self._zero_device(offset, step)
            else:
                self._punch(offset, step)
            offset += step

    def _zero_device(self, offset: int, length: int) -> None:
        try:
            fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                where = f"{length} bytes at {offset} of {shown(self.path)}"
                raise TargetError(f"zeroing {where} failed: {e.strerror}") from e
            self._write_zeros(offset, length)

    def _punch(self, offset: int, length: int) -> None:
        try:
            make_hole(self.fd, offset, length)
        except OSError as e:
            raise TargetError(f"writing zeros at {offset} of {shown(self.path)} failed: {e.strerror}") from e

    def _write_zeros(self, offset: int, length: int) -> None:
        zeros = memoryview(bytes(min(length, 4 * 1024 * 1024)))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            try:
                pwrite_all(self.fd, zeros[:n], offset)
            except OSError as e:
                raise TargetError(f"writing zeros at {offset} of {shown(self.path)} failed: {e.strerror}") from e
            offset += n

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise TargetError(f"flushing {shown(self.path)} failed: {e.strerror}") from e

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
        os.close(self.fd)
