"""The objects that let ``repo prune`` run while snapshots are written and restored (docs/FORMAT.md,
section 10):

    locks/writer-<id>    a snapshot being written: made before it reads the index
    locks/reader-<id>    a restore or a check being run: made before it reads marks and the index
    locks/prune          the one prune running (made with a conditional write)
    garbage/<id>         a mark: packs a prune will delete once nothing can still need them

Every lock is rewritten every ``REFRESH_S`` while its holder runs and deleted when it ends; one not
rewritten for ``STALE_S`` belongs to a process that is gone, and holds nothing back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from agent.aio.taskgroups import task_group
from agent.errors import ObjectNotFound, RepositoryError, StorageError
from agent.repo.repository import Repository

log = logging.getLogger(__name__)

LOCKS = "locks/"
PRUNE_LOCK = LOCKS + "prune"
WRITER = "writer-"
READER = "reader-"
GARBAGE = "garbage/"
REFRESH_S = 300.0
STALE_S = 1800.0
"""A lock not rewritten for this long belongs to a writer, reader or prune that is gone."""
MAX_MARK_BYTES = 256 * 1024 * 1024


def lock_body(started: float) -> bytes:
    """What a lock holds: who made it and when (seconds since the epoch)."""
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode()


@asynccontextmanager
async def writer_lock(repo: Repository) -> AsyncIterator[None]:
    """Hold a writer lock while the block runs (format 2 repositories; nothing for others): prune then
    neither marks this writer's new packs nor sweeps marks it may have missed."""
    async with _lock(repo, WRITER):
        yield


@asynccontextmanager
async def reader_lock(repo: Repository) -> AsyncIterator[None]:
    """Hold a reader lock while the block runs (format 2 repositories; nothing for others): prune deletes
    no pack while it exists, so a restore planned from the packs that existed when it started can read
    all of them to the end. A lock that cannot be written (read-only credentials) is logged and done
    without."""
    async with _lock(repo, READER):
        yield


@asynccontextmanager
async def _lock(repo: Repository, kind: str) -> AsyncIterator[None]:
    if repo.config is None:
        yield
        return
    key = f"{LOCKS}{kind}{secrets.token_hex(8)}"
    body = lock_body(time.time())
    try:
        await repo.storage.put(key, body)
    except StorageError as e:
        if kind != READER:
            raise
        # Read-only credentials can restore; only a prune running meanwhile could remove a pack being read.
        log.warning(
            "could not write a reader lock in %s (%s): a prune running meanwhile could remove packs this reads",
            repo.describe(),
            e,
        )
        yield
        return
    async with held(repo, key, body):
        yield


@asynccontextmanager
async def held(repo: Repository, key: str, body: bytes) -> AsyncIterator[None]:
    """While the block runs, rewrite the lock ``key`` every ``REFRESH_S`` (so it never looks stale); delete
    it when the block ends, however it ends."""

    async def refresh() -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await repo.storage.put(key, body)
            except StorageError as e:  # the next one may succeed; a stale lock is covered (FORMAT.md)
                log.warning("could not refresh the lock %s in %s: %s", key, repo.describe(), e)

    try:
        async with task_group() as tg:
            refresher = tg.create_task(refresh(), name=f"refresh {key}")
            try:
                yield
            finally:
                refresher.cancel()
    finally:
        with suppress(StorageError):
            await asyncio.shield(repo.storage.delete(key))


async def live_locks(repo: Repository, kind: str, now: float, *, delete_stale: bool) -> list[float]:
    """The start times (seconds since the epoch) of the holders of ``kind`` locks (``WRITER``, ``READER``)
    running now. Stale locks are left out, and deleted if ``delete_stale``; an unreadable lock counts as
    started at its last write."""
    starts: list[float] = []
    for key, info in (await repo.storage.info(LOCKS)).items():
        if not key.startswith(LOCKS + kind):
            continue
        if info.modified < now - STALE_S:
            if delete_stale:
                await repo.storage.delete(key)
            continue
        try:
            starts.append(float(json.loads(await repo.storage.get(key, max_bytes=64 * 1024))["started"]))
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError, StorageError):
            starts.append(info.modified)
    return starts


def read_mark(stored: bytes) -> list[str]:
    """The pack names a mark lists. Raises RepositoryError if it is malformed."""
    try:
        packs = json.loads(stored)["packs"]
        return [str(p) for p in packs]
    except (ValueError, KeyError, TypeError):
        raise RepositoryError("a prune mark is malformed") from None


async def marked_packs(repo: Repository) -> set[str]:
    """The packs the marks of a prune list: writers reuse nothing in them, and readers read a chunk from
    one only if the index knows no other place for it."""
    if repo.config is None:
        return set()
    found: set[str] = set()
    for key in await repo.storage.list(GARBAGE):
        try:
            found.update(read_mark(await repo.storage.get(key, max_bytes=MAX_MARK_BYTES)))
        except (ObjectNotFound, RepositoryError):
            continue
    return found
