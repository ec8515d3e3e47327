"""Opening paths strictly beneath a target directory, never through a symlink.

``open_beneath`` uses Linux's openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so the kernel
refuses any path that would leave the target or pass through a symlink, whatever raced with us. Where
openat2 is unavailable (old kernels, seccomp filters) it walks the path one component at a time with
O_NOFOLLOW. Either way a refusal is ``UnsafePath``. Functions are blocking and thread-safe.
"""

from __future__ import annotations

import ctypes
import errno
import os

from agent.errors import TargetError, UnsafePath

_SYS_OPENAT2 = 437  # the same on every architecture (asm-generic numbering)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _openat2(dir_fd: int, path: str, flags: int, mode: int) -> int:
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _probe_openat2() -> bool:
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(_openat2(root, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0))
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL)
    finally:
        os.close(root)
    return True


_HAVE_OPENAT2: bool | None = None


def have_openat2() -> bool:
    global _HAVE_OPENAT2  # noqa: PLW0603 - a process-wide capability, probed once
    if _HAVE_OPENAT2 is None:
        _HAVE_OPENAT2 = _probe_openat2()
    return _HAVE_OPENAT2


def _refusal(path: str, e: OSError) -> TargetError:
    if e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return UnsafePath(f"refusing {path!r}: it would leave the target or pass through a symlink")
    return TargetError(f"cannot open {path!r} in the target: {e.strerror}")


def _walk(root_fd: int, path: str, flags: int, mode: int) -> int:
    parts = path.split("/")
    fd = root_fd
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = next_fd
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0o600, *, force_walk: bool = False) -> int:
    """Open ``path`` (relative, '/'-separated, already checked for '..') beneath ``root_fd``.
    An empty path opens the root itself."""
    flags |= os.O_CLOEXEC
    if not path:
        return os.open(".", flags, dir_fd=root_fd)
    try:
        if have_openat2() and not force_walk:
            return _openat2(root_fd, path, flags | os.O_NOFOLLOW, mode)
        return _walk(root_fd, path, flags, mode)
    except OSError as e:
        raise _refusal(path, e) from e


def open_parent(root_fd: int, path: str, *, force_walk: bool = False) -> tuple[int, str]:
    """The directory that holds ``path`` (opened beneath the root) and the last component's name."""
    parent, _, name = path.rpartition("/")
    return open_beneath(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY, force_walk=force_walk), name
