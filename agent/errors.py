"""Ferry's own exceptions, one tree, mapped from third-party errors at the boundaries.

    FerryError                        anything Ferry raises on purpose; str() is for operators
    ├── ConfigError                   a setting, flag or repository URL is invalid
    │   └── WrongPassword             the password opens none of the repository's keys
    ├── StorageError                  object storage could not do what was asked
    │   ├── TransientStorageError     worth retrying: timeouts, resets, 5xx, throttling (transient=True)
    │   ├── ObjectNotFound            the key does not exist
    │   ├── BucketNotFound            the bucket does not exist
    │   ├── LocationMissing           a local repository directory does not exist
    │   ├── AccessDenied              credentials missing, wrong, or not allowed
    │   ├── ObjectTruncated           the object is shorter than a read needs (the store says so)
    │   ├── ObjectTooLarge            an object is larger than the reader takes into memory
    │   └── CorruptedInTransit        every fetch of an object came back different: the path corrupts data
    ├── RepositoryError               the repository's content is not what the format promises
    │   ├── NoRepository              no Ferry repository at that location (nothing, or something else)
    │   ├── SnapshotNotFound          no manifest under that snapshot ID
    │   ├── ObjectAltered             a hash-named object's stored bytes do not hash to its name
    │   ├── ManifestInvalid           truncated, tampered, or not a manifest at all
    │   ├── ManifestTooLarge          it describes more than the manifest memory limit allows
    │   ├── UnsupportedFormat         a format major version this Ferry does not read
    │   ├── PackMissing               a pack the manifest names is gone
    │   └── ChunkCorrupt              a chunk stayed bad after every allowed re-fetch
    ├── Stopped                       asked to stop (the agent shutting down), a restore stopped once what it
    │                                 had fetched was written: nothing to fetch twice when it goes on
    ├── TargetError                   the restore target cannot take this snapshot
    │   ├── TargetTooSmall            block target smaller than the snapshot
    │   └── UnsafePath                a path would leave the target or pass through a symlink
    ├── SourceError                   a snapshot source cannot be read or holds what we cannot store
    ├── KubeError                     the Kubernetes API refused or failed a request
    │   ├── KubeConflict              409: the object changed since it was read, or already exists
    │   ├── KubeNotFound              404: the object (or its namespace) does not exist
    │   └── KubeExpired               410: a resourceVersion is older than the server's history
    ├── LocationError                 a BackupStorageLocation or its credentials cannot be used
    ├── VolumeError                   the target volume cannot be found or used on this node
    └── OperationTimeout              something outside the agent did not happen within operationTimeout

botocore/aiohttp errors are translated in ``agent.storage``, kubernetes_asyncio's in
``agent.kube.api``; OS errors on the target are wrapped
in ``TargetError`` by the pipeline. Cancellation is never an error: it stays ``asyncio.CancelledError``.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base class. ``transient`` says whether retrying the same operation may succeed."""

    transient: bool = False


class ConfigError(FerryError):
    """A setting, command-line flag or repository URL is invalid."""


class WrongPassword(ConfigError):
    """The password given opens none of the repository's keys."""


class StorageError(FerryError):
    """Object storage failed."""


class TransientStorageError(StorageError):
    """A failure that a retry may cure (timeout, connection reset, 5xx, throttling)."""

    transient = True


class ObjectNotFound(StorageError):
    """The key does not exist."""

    def __init__(self, key: str, where: str) -> None:
        super().__init__(f"object {key!r} not found in {where}")
        self.key = key


class BucketNotFound(StorageError):
    """The bucket does not exist."""


class LocationMissing(StorageError):
    """A local repository's directory does not exist."""


class AccessDenied(StorageError):
    """Credentials are missing, wrong, or lack the permission."""


class ObjectTruncated(StorageError):
    """The object is shorter than a read needs, as the store itself reports (its size, or a 416)."""


class ObjectTooLarge(StorageError):
    """An object is larger than the reader will hold in memory."""


class CorruptedInTransit(StorageError):
    """An object's bytes failed their check on every fetch, and no two fetches agreed: the network path
    or the server corrupts data in flight; the stored object may be intact."""

    def __init__(self, what: str, where: str, attempts: int, reason: str = "") -> None:
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"could not fetch {what} intact from {where}: {attempts} fetches came back different each time"
            f"{because}, so the network path or the server is corrupting data; the stored object may be intact, "
            "try again or check the path to the storage"
        )


class RepositoryError(FerryError):
    """The repository's content contradicts the format."""


class NoRepository(RepositoryError):
    """There is no Ferry repository at the location: nothing, something else, or another tool's repository."""


class SnapshotNotFound(RepositoryError):
    """There is no manifest for that snapshot ID."""


class ObjectAltered(RepositoryError):
    """An object named by the hash of its bytes (a manifest, an index object) came back twice with the same
    other bytes: it was altered or cut short where it is stored."""


class ManifestInvalid(RepositoryError):
    """A manifest is truncated, tampered with, or malformed."""


class ManifestTooLarge(RepositoryError):
    """A manifest describes more (entries, chunks, slots) than the manifest memory limit allows."""


class UnsupportedFormat(RepositoryError):
    """The manifest uses a format major version this build cannot read."""


class PackMissing(RepositoryError):
    """A pack that a manifest refers to does not exist."""


class ChunkCorrupt(RepositoryError):
    """A chunk failed decompression or verification, with the same stored bytes on two fetches."""

    def __init__(self, chunk_id: str, pack: str, offset: int, reason: str, attempts: int) -> None:
        super().__init__(
            f"chunk {chunk_id} in pack {pack} at offset {offset} is corrupt ({reason}): the same bytes came back "
            f"in {attempts} fetches, so the repository is damaged; restore from another snapshot"
        )
        self.chunk_id = chunk_id
        self.pack = pack


class Stopped(FerryError):
    """A restore asked to stop (``stopping``) stopped taking ranges and ended once those it had fetched
    were written and flushed."""


class TargetError(FerryError):
    """The restore target cannot take this snapshot."""


class TargetTooSmall(TargetError):
    """A block target is smaller than the snapshot."""


class UnsafePath(TargetError):
    """A path would leave the target or go through a symlink."""


class SourceError(FerryError):
    """A snapshot source cannot be read, or holds something we cannot store."""


class KubeError(FerryError):
    """The Kubernetes API refused or failed a request. ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.transient = status in {0, 429} or status >= 500

    @property
    def refusal(self) -> bool:
        """Refused for a reason that does not clear by itself: 400 (malformed), 401/403 (credentials,
        RBAC), 405, 415, 422 (schema, immutable fields, admission policies)."""
        return self.status in {400, 401, 403, 405, 415, 422}


class KubeConflict(KubeError):
    """409: the object changed since it was read (optimistic concurrency lost), or already exists."""


class KubeNotFound(KubeError):
    """404: the object or its namespace does not exist."""


class KubeExpired(KubeError):
    """410: the resourceVersion asked for is older than the server keeps; list again."""


class LocationError(FerryError):
    """A BackupStorageLocation is missing, malformed, of a provider Ferry cannot serve, or lacks credentials."""


class VolumeError(FerryError):
    """The target volume cannot be found or used on this node."""


class OperationTimeout(FerryError):
    """Something outside the agent (a volume, a transfer's progress) did not happen within the timeout."""
