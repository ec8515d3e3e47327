"""A repository: where packs and manifests live under a storage root, and reading them safely.

packs/<first two hex digits>/<pack name>     pack objects (concatenated zstd frames)
snapshots/<snapshot id>                      manifests; a snapshot exists once its manifest does

A manifest whose bytes do not hash to its ID is fetched again before anything is called damaged: the
same wrong bytes twice are damage in storage (``ManifestInvalid``); bytes that differ on every fetch are
a transport fault (``CorruptedInTransit``).
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import TYPE_CHECKING

from agent.aio.threads import offload
from agent.errors import (
    ConfigError,
    CorruptedInTransit,
    ManifestInvalid,
    ObjectAltered,
    ObjectNotFound,
    PackMissing,
    RepositoryError,
    SnapshotNotFound,
)
from agent.repo.chunks import ChunkCodec
from agent.repo.crypto import MasterKey
from agent.repo.decoder import declared_body_bytes, decode_manifest
from agent.repo.format import Manifest, encode_manifest, is_snapshot_id, snapshot_id_of
from agent.settings import RepositorySettings
from agent.storage.base import Storage

if TYPE_CHECKING:
    from agent.repo.config import RepoConfig

PACKS = "packs/"
SNAPSHOTS = "snapshots/"

# Manifests larger than this (stored, or their body once decompressed) are hashed and decoded in a thread, so
# the event loop keeps serving and a cancellation stops them.
_DECODE_INLINE_BYTES = 256 * 1024


LATEST = "latest"
MIN_PREFIX = 4
"""Hex digits a short snapshot ID needs at least (restic shows 8)."""
_HEX = frozenset("0123456789abcdef")


def check_reference(reference: str) -> str:
    """``reference`` lower-cased if it can name a snapshot: a whole ID, a prefix of at least ``MIN_PREFIX``
    hex digits, or ``latest``. Raises ConfigError otherwise (before anything is read)."""
    ref = reference.strip().lower()
    if ref == LATEST or is_snapshot_id(ref) or (MIN_PREFIX <= len(ref) < 64 and set(ref) <= _HEX):
        return ref
    raise ConfigError(
        f"{reference!r} is not a snapshot ID: give the whole ID (64 hexadecimal digits), a unique prefix of at "
        f"least {MIN_PREFIX} of them, or {LATEST!r}"
    )


def match_snapshot(prefix: str, ids: list[str]) -> str:
    """The one ID among ``ids`` that starts with ``prefix`` (as restic accepts short IDs). Raises
    SnapshotNotFound (the caller says where) when none does, ConfigError when several do."""
    found = [i for i in ids if i.startswith(prefix)]
    if not found:
        raise SnapshotNotFound(f"no snapshot ID starts with {prefix}")
    if len(found) > 1:
        shown = ", ".join(i[:16] + "…" for i in found[:5]) + (", …" if len(found) > 5 else "")
        raise ConfigError(f"{prefix} is the prefix of {len(found)} snapshot IDs ({shown}): give more digits")
    return found[0]


def created_at(created: str) -> dt.datetime:
    """A manifest's ``created`` as a time (RFC 3339; any other text counts as the oldest)."""
    try:
        parsed = dt.datetime.fromisoformat(created)
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def summary_of(m: Manifest) -> dict[str, object]:
    """What ``snapshot list`` shows of a snapshot (and the index keeps of it): format, mode, size in bytes,
    created, source, chunk count, stored bytes, pack count, entries, and a block snapshot's chunk size."""
    return {
        "format": f"{m.version[0]}.{m.version[1]}",
        "mode": m.mode,
        "size": m.size,
        "created": m.created,
        "source": m.source,
        "chunks": len(m.chunks),
        "storedBytes": sum(m.chunks.columns().stored),
        "packs": len(m.packs),
        "entries": len(m.entries),
        **({"chunkSize": m.chunk_size} if m.mode == "block" else {}),
    }


def pack_key(name: str) -> str:
    return f"{PACKS}{name[:2]}/{name}"


def snapshot_key(snapshot_id: str) -> str:
    return f"{SNAPSHOTS}{snapshot_id}"


def _digest(stored: bytes, stop: object) -> str:
    return snapshot_id_of(stored)


class Repository:
    """Packs and manifests under ``storage``. ``config``: the repository's config object (None: format 1,
    or a bare location a test writes to); ``master``: its master key if it is encrypted (then chunks are
    sealed and named by keyed hashes, and only sealed manifests are read); ``key_id``: the key that
    unlocked it. ``agent.repo.config.open_repository`` makes one from a location."""

    def __init__(
        self,
        storage: Storage,
        settings: RepositorySettings | None = None,
        *,
        config: RepoConfig | None = None,
        master: MasterKey | None = None,
        key_id: str = "",
    ) -> None:
        self.storage = storage
        self.settings = settings or RepositorySettings()
        self.config = config
        self.master = master
        self.key_id = key_id
        self.codec = ChunkCodec(master)

    def encode_manifest(self, manifest: Manifest) -> bytes:
        """The stored bytes of ``manifest`` in this repository (sealed if it is encrypted). Blocking."""
        return encode_manifest(manifest, self.master)

    def describe(self) -> str:
        return self.storage.describe()

    async def snapshot_ids(self) -> list[str]:
        """Every snapshot ID under ``snapshots/``, including any that is damaged (a directory where its
        manifest should be lists as the ID, so reading it reports the damage)."""
        keys = await self.storage.list(SNAPSHOTS)
        ids = {k[len(SNAPSHOTS) :].split("/", 1)[0] for k in keys}
        return sorted(i for i in ids if is_snapshot_id(i))

    async def pack_sizes(self) -> dict[str, int]:
        """Every pack's name and stored size in bytes (one listing of ``packs/``; keys that are not a pack's
        are left out)."""
        found = await self.storage.sizes(PACKS)
        return {key.rsplit("/", 1)[-1]: size for key, size in found.items() if key == pack_key(key.rsplit("/", 1)[-1])}

    async def resolve(self, reference: str) -> str:
        """The snapshot ID ``reference`` names: a whole ID (returned lower-cased: reading it says whether it
        exists), a unique prefix (``match_snapshot``), or ``latest``: the snapshot created last (by its
        manifest's ``created``, then its ID; unreadable manifests are passed over). Raises ConfigError,
        SnapshotNotFound naming this repository, and storage errors."""
        ref = check_reference(reference)
        if is_snapshot_id(ref):
            return ref
        ids = await self.snapshot_ids()
        if ref != LATEST:
            try:
                return match_snapshot(ref, ids)
            except SnapshotNotFound as e:
                raise SnapshotNotFound(f"{e} in {self.describe()}") from None
        newest: tuple[dt.datetime, str] | None = None
        for snapshot_id in ids:
            try:
                created = created_at((await self.read_manifest(snapshot_id)).created)
            except RepositoryError:
                continue
            if newest is None or (created, snapshot_id) > newest:
                newest = (created, snapshot_id)
        if newest is None:
            raise SnapshotNotFound(f"there is no readable snapshot in {self.describe()}, so no latest one")
        return newest[1]

    async def forget(self, snapshot_id: str) -> None:
        """Delete a snapshot's manifest (its data stays in the packs: other snapshots may share it).
        Raises ConfigError for what is not an ID, and storage errors; forgetting a missing one is not an
        error."""
        if not is_snapshot_id(snapshot_id):
            raise ConfigError(f"{snapshot_id!r} is not a snapshot ID (64 hexadecimal digits)")
        await self.storage.delete(snapshot_key(snapshot_id))

    async def read_manifest(self, snapshot_id: str) -> Manifest:
        """Fetch, verify (against the ID) and parse a manifest. Raises ConfigError (not an ID),
        SnapshotNotFound, ManifestInvalid, ManifestTooLarge, UnsupportedFormat, CorruptedInTransit or a
        StorageError."""
        snapshot_id = snapshot_id.strip().lower()
        if not is_snapshot_id(snapshot_id):
            raise ConfigError(f"{snapshot_id!r} is not a snapshot ID (64 hexadecimal digits)")
        limit = self.settings.manifest_memory_bytes
        try:
            stored = await self.fetch_named(snapshot_key(snapshot_id), f"the manifest of snapshot {snapshot_id}", limit)
        except ObjectNotFound:
            raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist in {self.describe()}") from None
        except ObjectAltered:
            raise ManifestInvalid(
                f"the manifest stored for snapshot {snapshot_id} does not hash to that ID (the same bytes came "
                f"back twice): it was truncated or altered in {self.describe()}; nothing was restored"
            ) from None
        master = self.master
        if len(stored) <= _DECODE_INLINE_BYTES and 0 <= declared_body_bytes(stored) <= _DECODE_INLINE_BYTES:
            return decode_manifest(stored, snapshot_id, limit, verified=True, master=master)
        # In a thread that stops when this task is cancelled: Ctrl-C is not held up by a long parse.
        return await offload(partial(decode_manifest, stored, snapshot_id, limit, verified=True, master=master))

    async def fetch_named(self, key: str, what: str, limit: int) -> bytes:
        """The bytes of ``key``, an object named by the hex BLAKE3 of its bytes (a manifest, an index object),
        at most ``limit`` of them. Bytes that do not hash to the name are fetched again: the same wrong bytes
        twice are damage in storage (ObjectAltered), bytes that differ on every one of
        ``manifest_fetch_attempts`` fetches are a transport fault (CorruptedInTransit). Also raises
        ObjectNotFound, ObjectTooLarge and storage errors."""
        name = key.rsplit("/", 1)[-1]
        seen: set[str] = set()
        attempts = self.settings.manifest_fetch_attempts
        for _ in range(attempts):
            stored = await self.storage.get(key, max_bytes=limit)
            small = len(stored) <= _DECODE_INLINE_BYTES
            digest = snapshot_id_of(stored) if small else await offload(partial(_digest, stored))
            if digest == name:
                return stored
            if digest in seen:
                raise ObjectAltered(
                    f"{what} does not hash to its name (the same bytes came back twice): it was truncated or altered "
                    f"in {self.describe()}"
                )
            seen.add(digest)
        raise CorruptedInTransit(what, self.describe(), attempts)

    async def write_manifest(self, stored: bytes) -> str:
        """Store a manifest (after all its packs); returns the snapshot ID."""
        snapshot_id = snapshot_id_of(stored)
        await self.storage.put(snapshot_key(snapshot_id), stored)
        return snapshot_id

    async def write_pack(self, name: str, data: bytes) -> None:
        await self.storage.put(pack_key(name), data)

    async def read_pack_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            return await self.storage.get_range(pack_key(name), offset, length)
        except ObjectNotFound:
            raise self._pack_missing(name) from None

    async def read_pack_range_into(self, name: str, offset: int, buffer: memoryview) -> float:
        """Fill ``buffer`` with the pack's bytes from ``offset``; returns the store's time to first byte in
        seconds (0.0 where the storage cannot tell)."""
        try:
            return await self.storage.get_range_into(pack_key(name), offset, buffer)
        except ObjectNotFound:
            raise self._pack_missing(name) from None

    def _pack_missing(self, name: str) -> PackMissing:
        return PackMissing(
            f"pack {name} is missing from {self.describe()}: the repository is damaged; restore from another snapshot"
        )
