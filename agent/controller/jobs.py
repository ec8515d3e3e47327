"""What the controller hands the data path: one restore job, and the interface that runs it.

The controller knows nothing of S3 clients, zstd or BLAKE3; the composition root (``agent.app``) supplies
a ``Restorer`` built on ``agent.pipeline``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.settings import RestoreSettings
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
