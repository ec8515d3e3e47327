"""Opening paths strictly beneath a directory, never through a symlink, whatever their length.

``open_beneath`` uses Linux's openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, so the kernel
refuses any path that would leave the directory or pass through a symlink, whatever raced with us. A path
longer than the kernel takes in one call (PATH_MAX, 4096 bytes with its NUL) is resolved in hops of whole
components, each hop beneath the directory the previous one opened. Where openat2 is unavailable (old
kernels, seccomp filters) it walks the path one component at a time with O_NOFOLLOW. Either way a refusal
is an ``OSError``: ELOOP (a symlink on the way), EXDEV (a way out), ENOTDIR, or whatever the kernel said.
Functions are blocking and thread-safe.
"""

from __future__ import annotations

import ctypes
import errno
import os

_SYS_OPENAT2 = 437  # the same on every architecture (asm-generic numbering)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS

HOP_BYTES = 3072
"""Most path bytes resolved by one openat2 call (PATH_MAX is 4096 including the NUL)."""

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _openat2(dir_fd: int, path: bytes, flags: int, mode: int) -> int:
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    fd = _syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return int(fd)


def _probe_openat2() -> bool:
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(_openat2(root, b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0))
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


def hops(path: bytes) -> list[bytes]:
    """``path`` cut at '/' into pieces of at most ``HOP_BYTES`` bytes (a single longer component, which
    no Linux filesystem allows, stays whole and is refused by the kernel)."""
    if len(path) <= HOP_BYTES:
        return [path]
    pieces: list[bytes] = []
    current = b""
    for part in path.split(b"/"):
        if current and len(current) + 1 + len(part) > HOP_BYTES:
            pieces.append(current)
            current = part
        else:
            current = current + b"/" + part if current else part
    pieces.append(current)
    return pieces


def _walk(root_fd: int, path: bytes, flags: int, mode: int) -> int:
    parts = path.split(b"/")
    fd = root_fd
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = next_fd
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=fd)
    finally:
        if fd != root_fd:
            os.close(fd)


def _hop(root_fd: int, pieces: list[bytes], flags: int, mode: int) -> int:
    fd = root_fd
    try:
        for piece in pieces[:-1]:
            next_fd = _openat2(fd, piece, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0)
            if fd != root_fd:
                os.close(fd)
            fd = next_fd
        return _openat2(fd, pieces[-1], flags | os.O_NOFOLLOW, mode)
    finally:
        if fd != root_fd:
            os.close(fd)


def open_beneath(root_fd: int, path: str, flags: int, mode: int = 0o600, *, force_walk: bool = False) -> int:
    """Open ``path`` (relative, '/'-separated, already checked for '..'; a str as ``os.fsdecode`` makes
    it) beneath ``root_fd``; the last component is never followed if it is a symlink. An empty path
    opens the root itself. Raises OSError."""
    flags |= os.O_CLOEXEC
    if not path:
        return os.open(".", flags, dir_fd=root_fd)
    raw = os.fsencode(path)
    if have_openat2() and not force_walk:
        return _hop(root_fd, hops(raw), flags, mode)
    return _walk(root_fd, raw, flags, mode)


def open_parent(root_fd: int, path: str, *, force_walk: bool = False) -> tuple[int, str]:
    """The directory that holds ``path`` (opened beneath the root, O_RDONLY) and the last component."""
    parent, _, name = path.rpartition("/")
    return open_beneath(root_fd, parent, os.O_RDONLY | os.O_DIRECTORY, force_walk=force_walk), name


def proc_path(fd: int, name: str = "") -> str:
    """A path that names what ``fd`` refers to (through /proc), or ``name`` inside that directory: for
    calls that have no descriptor form (setxattr on a symlink, chmod through an O_PATH descriptor)."""
    return f"/proc/self/fd/{fd}/{name}" if name else f"/proc/self/fd/{fd}"
