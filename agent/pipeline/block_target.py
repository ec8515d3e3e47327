"""A block device or image file being restored. Blocking methods, called from worker threads.

Data: written with O_DIRECT where it lines up and ``direct`` is asked for (see ``direct``).
Holes: on a regular file they stay holes (a new file already reads as zeros; an existing one has them
punched); on a block device they are zeroed with BLKZEROOUT (falling back to writing zeros) unless the
caller says the device is fresh (``sparse``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
import threading

from agent.errors import TargetError, TargetTooSmall
from agent.pipeline.direct import open_direct, pwrite_all, write_split

BLKZEROOUT = 0x127F  # _IO(0x12, 127)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_STEP = 64 * 1024 * 1024  # bytes zeroed per call, so a stop request is seen quickly

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


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

    @classmethod
    def open(cls, path: str, size: int, sparse: bool, direct: bool = False) -> BlockTarget:
        """Open (or create, for an image file) the target; refuse it if it is smaller than ``size``."""
        fresh = False
        try:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                fresh = True
        except OSError as e:
            raise TargetError(f"cannot open target {path!r}: {e.strerror}") from e
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
                raise TargetError(f"target {path!r} is not a block device or an image file")
            if fresh:
                os.ftruncate(fd, size)
            have = os.lseek(fd, 0, os.SEEK_END)
            if have < size:
                raise TargetTooSmall(
                    f"target {path!r} holds {have} bytes but the snapshot needs {size}: give the volume at "
                    "least the snapshot's size"
                )
            direct_fd = open_direct(fd, os.O_WRONLY) if direct else -1
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, stat.S_ISBLK(mode), fresh, sparse, direct_fd)

    def write(self, slot: int, offset: int, data: memoryview) -> None:
        try:
            if self._direct_ok:
                self._direct_ok = write_split(self.fd, self.direct_fd, data, offset)
            else:
                pwrite_all(self.fd, data, offset)
        except OSError as e:
            raise TargetError(f"writing {len(data)} bytes at {offset} of {self.path!r} failed: {e.strerror}") from e

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
                raise TargetError(f"zeroing {length} bytes at {offset} of {self.path!r} failed: {e.strerror}") from e
            self._write_zeros(offset, length)

    def _punch(self, offset: int, length: int) -> None:
        if _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            self._write_zeros(offset, length)

    def _write_zeros(self, offset: int, length: int) -> None:
        zeros = memoryview(bytes(min(length, 4 * 1024 * 1024)))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self.write(0, offset, zeros[:n])
            offset += n

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise TargetError(f"flushing {self.path!r} failed: {e.strerror}") from e

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
        os.close(self.fd)
