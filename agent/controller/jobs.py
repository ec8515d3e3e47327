"""What the controllers hand the data path: one restore or backup job, and the interfaces that run them.

The controllers know nothing of S3 clients, zstd or BLAKE3; the composition root (``agent.app``) supplies
a ``Restorer`` and an ``Uploader`` built on ``agent.pipeline`` and ``agent.backup``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.settings import RestoreSettings, SnapshotSettings
from agent.velero.locations import StorageLocation

Progress = Callable[[int, int], None]
"""Called on the event loop with (bytes done, total bytes)."""
Notice = Callable[[str, str], None]
"""Called on the event loop with (reason, message): something the object's Events should say while the
transfer runs (``Resumed``: a restore found part of its data already on the volume)."""


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
    async def __call__(self, job: RestoreJob, progress: Progress, notice: Notice, stopping: asyncio.Event) -> None:
        """Restore the whole snapshot onto the target, keeping what an interrupted restore already put
        there (and saying so through ``notice``); raise a FerryError saying why it could not. Once
        ``stopping`` is set it fetches nothing more, writes what it fetched and raises Stopped. Cancelling
        the caller stops it at once, with no write still running when it returns."""


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


@dataclass(frozen=True)
class VeleroSnapshot:
    """A snapshot in one of a location's repositories that a Velero backup made (its source records the
    backup's name and UID)."""

    namespace: str
    """The repository's source namespace."""
    snapshot_id: str
    backup_name: str
    backup_uid: str
    created: float
    """Seconds since the epoch (0 when unknown)."""


@dataclass(frozen=True)
class Maintained:
    """What one repository's maintenance did."""

    forgotten: int
    deleted_bytes: int
    """Bytes of packs the prune deleted (marked by an earlier one)."""
    marked_bytes: int
    """Bytes of packs it marked (deleted by the next run at least the grace period later)."""
    damage: tuple[str, ...]
    """What the structural check found wrong, each "what: problem"."""


@dataclass(frozen=True)
class Inventory:
    """A location's Ferry repositories (by source namespace) and the Velero-made snapshots in them."""

    namespaces: tuple[str, ...]
    snapshots: tuple[VeleroSnapshot, ...]
    problems: tuple[str, ...] = ()
    """Repositories that could not be read (a wrong password, damage), each "namespace N: why"."""


class Maintainer(Protocol):
    async def inventory(self, location: StorageLocation) -> Inventory:
        """Every Ferry repository of the location and the Velero-made snapshots in them. Raises FerryError."""

    async def forget(self, location: StorageLocation, namespace: str, snapshot_ids: list[str]) -> None:
        """Forget the snapshots (their data stays until a prune). Raises FerryError."""

    async def backup_in_location(self, location: StorageLocation, name: str) -> str | None:
        """The UID recorded in the location's ``backups/<name>/velero-backup.json`` ("" if it has none), or
        None when the location holds no such backup. Raises FerryError."""

    async def forget_and_prune(
        self, location: StorageLocation, namespace: str, snapshot_ids: list[str], grace_s: float, *, prune: bool
    ) -> Maintained:
        """Forget the snapshots (none: only the rest), prune the repository with that grace period if
        ``prune``, if that forgot any, or if earlier marks wait to be swept; check its structure. Raises
        FerryError."""
