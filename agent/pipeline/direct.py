"""Writes that bypass the page cache (O_DIRECT) where they can, plain writes where they cannot.

Copying restored data into the page cache costs more CPU than verifying it (on a 2-core machine about
0.5 CPU seconds per GB for a new file, against 0.1 with O_DIRECT), and a restore never reads it back.
O_DIRECT needs the file offset, the length and the memory address aligned to the device's block size;
``ALIGN`` (4 KiB) satisfies every common device. The decoder places each chunk in its buffer so that the
chunk's address and its file offset are congruent modulo ``ALIGN`` (``pad_for``); then every whole
aligned block of a chunk is written directly and only the partial blocks at its two ends go through the
page cache. Any other write (a chunk placed twice at different alignments, a short one) is a plain write.
Both kinds of write reach the same file, never the same block, and ``fsync`` makes both durable.

If the filesystem refuses O_DIRECT (tmpfs, some FUSE or network filesystems), or a direct write fails
with EINVAL, the target falls back to plain writes; the data written is the same either way.
"""

from __future__ import annotations

import ctypes
import errno
import os

ALIGN = 4096


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def pread_all(fd: int, into: memoryview, offset: int) -> int:
    """Read until ``into`` is full or the file ends; returns the bytes read."""
    done = 0
    while done < len(into):
        n = os.preadv(fd, [into[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def pad_for(offset: int) -> int:
    """Where in a page-aligned buffer to put data destined for ``offset`` so direct writes line up."""
    return offset % ALIGN


def address(data: memoryview) -> int:
    """The memory address of a writable buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(data))


def open_direct(path: str | int, flags: int, dir_fd: int | None = None) -> int:
    """A second descriptor with O_DIRECT for ``path``, or -1 if the filesystem refuses it."""
    try:
        if isinstance(path, int):  # reopen an open descriptor (works for files and block devices)
            return os.open(f"/proc/self/fd/{path}", flags | os.O_DIRECT | os.O_CLOEXEC)
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT):
            return -1
        raise


def write_split(fd: int, direct_fd: int, data: memoryview, offset: int) -> bool:
    """Write ``data`` at ``offset``: whole aligned blocks through ``direct_fd`` (when it is >= 0 and the
    buffer lines up), the rest through ``fd``. Returns False if a direct write was refused (EINVAL):
    the data was then written through ``fd`` and the caller should stop using ``direct_fd``."""
    n = len(data)
    head = -offset % ALIGN
    if direct_fd < 0 or n - head < ALIGN or data.readonly or not data.contiguous or (address(data) - offset) % ALIGN:
        pwrite_all(fd, data, offset)
        return True
    middle = (n - head) // ALIGN * ALIGN
    if head:
        pwrite_all(fd, data[:head], offset)
    try:
        pwrite_all(direct_fd, data[head : head + middle], offset + head)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        pwrite_all(fd, data[head:], offset + head)
        return False
    if head + middle < n:
        pwrite_all(fd, data[head + middle :], offset + head + middle)
    return True
