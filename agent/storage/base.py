"""The storage interface every backend implements."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import NamedTuple

from agent.errors import ConfigError


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated, without empty, '.' or '..' parts."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ConfigError(f"invalid storage key {key!r}")
    return key


class ObjectInfo(NamedTuple):
    size: int
    """Bytes; -1 for something that is not an object (a directory where one should be)."""
    modified: float
    """When it was last written, in seconds since the epoch (the store's clock)."""


class Storage(abc.ABC):
    """A flat namespace of immutable objects under one root. Implementations are safe to use from
    many tasks at once on one event loop."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this is, for messages: a URL without credentials."""

    @abc.abstractmethod
    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object. Raises ObjectNotFound, or ObjectTooLarge if it is longer than ``max_bytes``."""

    @abc.abstractmethod
    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset``. Raises ObjectNotFound, ObjectTruncated (the object is
        shorter), or TransientStorageError when fewer bytes arrived than the object holds."""

    async def get_range_into(self, key: str, offset: int, buffer: memoryview) -> float:
        """Fill ``buffer`` with the ``len(buffer)`` bytes from ``offset``. Raises as ``get_range``.
        Returns the seconds the store took to begin answering (its time to first byte; 0.0 where a backend
        cannot tell), which a restore paces its reads by. Backends that can receive straight into the
        buffer override this."""
        buffer[:] = await self.get_range(key, offset, len(buffer))
        return 0.0

    def throttles(self) -> int:
        """How many answers so far asked this client to slow down (HTTP 503 SlowDown, 429 and the like):
        a restore halves its reads in flight on a new one. 0 for backends that never throttle."""
        return 0

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store an object atomically: readers see all of it or nothing."""

    @abc.abstractmethod
    async def put_new(self, key: str, data: bytes) -> bool:
        """Store an object only if there is none at ``key`` (atomically: of two writers at once, one
        wins). Returns False, storing nothing, if one exists. S3: a conditional PUT (``If-None-Match: *``)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix``, sorted."""

    @abc.abstractmethod
    async def sizes(self, prefix: str) -> dict[str, int]:
        """The keys that start with ``prefix`` and their objects' sizes in bytes (one listing, no reads)."""

    @abc.abstractmethod
    async def info(self, prefix: str) -> dict[str, ObjectInfo]:
        """The keys that start with ``prefix``, with their sizes and modification times (one listing)."""

    async def is_empty(self) -> bool:
        """True if no object is stored here at all (without listing everything: backends override this)."""
        return not await self.list("")

    async def check(self) -> None:  # noqa: B027 - optional: only a local directory can be missing
        """Raise StorageError if nothing can be read here at all (a local directory that does not exist
        or is not a directory). An object store's prefix is always there, empty or not."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads."""

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
