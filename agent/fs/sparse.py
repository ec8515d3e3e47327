"""Where a file's data is: its data extents (lseek SEEK_DATA/SEEK_HOLE, lseek(2)) and, inside them,
long runs of zeros that need not be stored or written.

Offsets are bytes. Zero runs are found in whole ``BLOCK`` (4 KiB) blocks aligned to the file's offsets,
so a run that becomes a hole on restore frees whole filesystem blocks; only runs of at least
``MIN_ZERO_RUN`` count, so ordinary data with a few zero blocks is not cut into pieces.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int

BLOCK = 4096
MIN_ZERO_RUN = 64 * 1024
_ZERO_BLOCK = bytes(BLOCK)
_ZERO_RUN = bytes(MIN_ZERO_RUN)


def data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The (offset, length) runs of ``[start, end)`` that hold data, in order. Filesystems that do not
    track holes report one extent. Raises OSError (other than the "no more data" and "not supported"
    answers, which are handled here)."""
    extents: list[tuple[int, int]] = []
    offset = start
    while offset < end:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after offset
                break
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(start, end - start)] if not extents else [*extents, (offset, end - offset)]
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        extents.append((data, hole - data))
        offset = hole
    return extents


def zero_runs(data: bytes | bytearray | memoryview, base: int) -> list[tuple[int, int]]:
    """The runs of zeros in ``data`` (which starts at file offset ``base``) that cover whole aligned
    blocks and are at least ``MIN_ZERO_RUN`` long, as (offset, length) in file offsets, in order."""
    view = memoryview(data)
    n = len(view)
    runs: list[tuple[int, int]] = []
    if n < MIN_ZERO_RUN:
        return runs
    buf = data if isinstance(data, bytes | bytearray) else view.tobytes()
    search = 0
    while True:
        found = buf.find(_ZERO_RUN, search)
        if found < 0:
            return runs
        # A run that a hole can replace starts at an aligned block: the first one at or after ``found``.
        start = found + (-(base + found) % BLOCK)
        end = start
        while end + MIN_ZERO_RUN <= n and buf.startswith(_ZERO_RUN, end):
            end += MIN_ZERO_RUN
        while end + BLOCK <= n and buf.startswith(_ZERO_BLOCK, end):
            end += BLOCK
        if end - start >= MIN_ZERO_RUN:
            if runs and runs[-1][0] + runs[-1][1] == base + start:
                runs[-1] = (runs[-1][0], runs[-1][1] + end - start)
            else:
                runs.append((base + start, end - start))
            search = end
        else:  # the block at ``end`` is not all zeros: the next candidate starts after it
            search = end + BLOCK


def _finder(data: memoryview) -> tuple[Callable[[bytes, int, int], int], int] | None:
    """A C-speed substring search over ``data``'s memory and where ``data`` starts in it."""
    obj = data.obj
    if isinstance(obj, mmap.mmap):
        start = _address(data) - _address(memoryview(obj))
        return obj.find, start
    if isinstance(obj, bytes | bytearray):
        start = _address(data) - _address(memoryview(obj)) if isinstance(obj, bytearray) else -1
        if start >= 0:
            return obj.find, start
    return None


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def data_blocks(data: memoryview, offset: int) -> list[tuple[int, int]]:
    """The (start, end) runs of ``data`` (destined for file offset ``offset``) that must be written to a
    target that already reads as zeros: everything but whole aligned ``BLOCK``s of zeros. Data without a
    single zero block (the common case) is found out by one C-speed search."""
    n = len(data)
    finder = _finder(data) if not data.readonly else None
    if finder is not None:
        find, base = finder
        if find(_ZERO_BLOCK, base, base + n) < 0:
            return [(0, n)]

        def zero(pos: int) -> bool:
            return find(_ZERO_BLOCK, base + pos, base + pos + BLOCK) == base + pos
    else:

        def zero(pos: int) -> bool:
            return data[pos : pos + BLOCK].tobytes() == _ZERO_BLOCK

    runs: list[tuple[int, int]] = []
    start = 0
    pos = -offset % BLOCK
    while pos + BLOCK <= n:
        if zero(pos):
            if pos > start:
                runs.append((start, pos))
            start = pos + BLOCK
        pos += BLOCK
    if start < n:
        runs.append((start, n))
    return runs


def make_hole(fd: int, offset: int, length: int) -> None:
    """Make ``length`` bytes at ``offset`` of a regular file read as zeros: punched out where the
    filesystem can (fallocate(2) FALLOC_FL_PUNCH_HOLE, the size kept), written as zeros where it cannot.
    Raises OSError from the writes."""
    if length <= 0 or _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    zeros = memoryview(bytes(min(length, 4 * 1024 * 1024)))
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, zeros[: min(len(zeros), end - offset)], offset)
        offset += n
