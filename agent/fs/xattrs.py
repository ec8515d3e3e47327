"""Extended attributes, which carry POSIX ACLs (``system.posix_acl_access``, ``system.posix_acl_default``)
and file capabilities (``security.capability``) as well as ``user.*``, ``trusted.*`` and ``security.*``
attributes, read and written as the kernel's bytes (xattr(7), acl(5), capabilities(7)).

Order matters when applying them: changing a file's owner clears its capabilities (and its set-uid and
set-gid bits), and changing its mode rewrites the ACL's mask, so ``apply`` is meant to run after chown
and chmod, and sets ACLs and then capabilities last.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

XATTR_NAME_MAX = 255
"""Longest attribute name in bytes (Linux XATTR_NAME_MAX)."""
XATTR_SIZE_MAX = 65536
"""Largest attribute value in bytes (Linux XATTR_SIZE_MAX)."""

ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")
CAPABILITY = "security.capability"

Target = int | str
"""A descriptor (not O_PATH), or a path."""

_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def read(target: Target, *, follow_symlinks: bool = True) -> list[tuple[str, bytes]]:
    """Every extended attribute ``target`` has, sorted by name; names as ``os.fsdecode`` makes them.
    A filesystem without extended attributes has none; one removed while listed is left out.
    Raises OSError for anything else (EACCES, EIO)."""
    try:
        names = os.listxattr(target, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return []
        raise
    out: list[tuple[str, bytes]] = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(target, name, follow_symlinks=follow_symlinks)))
        except OSError as e:
            if e.errno in (errno.ENODATA, *_UNSUPPORTED):
                continue
            raise
    return out


def _order(name: str) -> int:
    if name == CAPABILITY:
        return 2
    return 1 if name in ACL_NAMES else 0


def apply(target: Target, xattrs: Sequence[tuple[str, bytes]], *, follow_symlinks: bool = True) -> list[str]:
    """Set every attribute (capabilities last) and remove inherited ACLs the list does not have.
    Returns one line per attribute that could not be set, saying why; raises nothing for those."""
    failures: list[str] = []
    wanted = {name for name, _ in xattrs}
    try:
        present = os.listxattr(target, follow_symlinks=follow_symlinks)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        present = []
    for name in ACL_NAMES:
        if name in present and name not in wanted:
            try:
                os.removexattr(target, name, follow_symlinks=follow_symlinks)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    failures.append(f"{name}: removing the ACL inherited from the target failed: {e.strerror}")
    for name, value in sorted(xattrs, key=lambda item: (_order(item[0]), item[0])):
        try:
            os.setxattr(target, name, value, follow_symlinks=follow_symlinks)
        except OSError as e:
            failures.append(f"{name}: {e.strerror}")
    return failures
