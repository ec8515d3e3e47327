"""Loop devices for tests that need a real block device (root only)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def attached_loop(backing: Path, size: int, *options: str) -> Iterator[str]:
    """A loop device over ``backing`` (created sparse, ``size`` bytes), detached afterwards. ``options``
    go to ``losetup``, e.g. ``--sector-size 4096``."""
    with backing.open("wb") as f:
        f.truncate(size)
    device = subprocess.run(
        ["losetup", "--find", "--show", *options, str(backing)], check=True, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, timeout=30)
