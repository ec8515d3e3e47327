"""What the controllers hand the data path: one restore or backup job, and the interfaces that run them.

The controllers know nothing of S3 clients, zstd or BLAKE3; the composition root (``agent.app``) supplies
a ``Restorer`` and an ``Uploader`` built on ``agent.pipeline`` and ``agent.backup``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.settings import RestoreSettings, SnapshotSettings
from agent.velero.locations import StorageLocation

Progress = Callable[[int, int], None]
"""Called on the event loop with (bytes done, total bytes)."""


@dataclass(frozen=True)
class RestoreJob:
    key: str
    """namespace/name of the DataDownload, for logs."""
    location: StorageLocation
    source_namespace: str
    """The repository is ``<bucket>/<prefix>/ferry/<source_namespace>``."""
    snapshot_id: str
    target: str
    """A mounted directory (Filesystem volumes) or a block device."""
    settings: RestoreSettings


class Restorer(Protocol):
    async def __call__(self, job: RestoreJob, progress: Progress) -> None:
        """Restore the whole snapshot onto the target; raise a FerryError saying why it could not.
        Cancelling the caller stops it, with no write still running when it returns."""


@dataclass(frozen=True)
class BackupJob:
    key: str
    """namespace/name of the DataUpload, for logs."""
    location: StorageLocation
    source_namespace: str
    """The repository is ``<bucket>/<prefix>/ferry/<source_namespace>``."""
    source: str
    """A mounted directory (Filesystem volumes, read-only) or a block device."""
    labels: Mapping[str, str]
    """Recorded in the snapshot (its ``source`` fields): which Velero backup, namespace and PVC it holds."""
    settings: SnapshotSettings


@dataclass(frozen=True)
class Uploaded:
    """A snapshot stored whole (its manifest written last, after every pack)."""

    snapshot_id: str
    size: int
    """Logical bytes: the volume (Block) or all regular files (Filesystem)."""
    new_stored_bytes: int
    """Bytes this backup added to the repository (the rest were there already)."""
    skipped: tuple[str, ...] = ()
    """Entries (or attributes) that could not be read and are not in the snapshot, each "path: why"."""


class Uploader(Protocol):
    async def __call__(self, job: BackupJob, progress: Progress) -> Uploaded:
        """Snapshot the source into the repository; raise a FerryError saying why it could not. Cancelling
        the caller stops it; no manifest is written for a snapshot that did not finish."""
