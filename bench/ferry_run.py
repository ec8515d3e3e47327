"""One Ferry measurement in a child process, so its CPU and peak RSS are its own.

    python -m bench.ferry_run restore|fetch|memory --endpoint URL --bucket B --snapshot ID --target PATH
        [--reads N] [--range-mib N] [--memory-mib N] [--threads N] [--direct-io on|off]

- ``restore``: ``agent.pipeline.restore.restore`` from S3 onto the target, exactly what ``ferry restore``
  and the agent run.
- ``fetch`` (the transport ceiling): every ranged GET of the same plan at the same concurrency, received into
  reused buffers as the restore receives, then discarded: what the server and loopback deliver to this client.
- ``memory`` (the CPU ceiling): the same ranges fetched into memory first (untimed), then the same restore
  (decompress, verify, write onto the same kind of target, flush) from memory on all cores.

Prints one JSON object: ``seconds`` and ``cpu_s`` of the timed part only (from ``getrusage``, all threads),
and the plan's output bytes. The parent measures the whole process (startup included) with ``wait4``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

from agent.errors import ObjectNotFound, ObjectTruncated, StorageError
from agent.pipeline.plan import plan_block, plan_tree
from agent.pipeline.restore import restore
from agent.repo.config import open_repository
from agent.repo.repository import Repository, pack_key
from agent.settings import MiB, RestoreSettings, S3Settings, read_password_file
from agent.storage.base import ObjectInfo, Storage
from agent.storage.s3 import S3Storage


class MemoryStorage(Storage):
    """Read-only objects (or parts of them) held in memory; ranges are served from what was loaded."""

    def __init__(self, objects: dict[str, dict[int, bytes]], manifests: dict[str, bytes]) -> None:
        self._ranges = objects
        self._whole = manifests

    def describe(self) -> str:
        return "memory"

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        try:
            return self._whole[key]
        except KeyError:
            raise ObjectNotFound(key) from None

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = self._ranges[key].get(offset)
        if data is None or len(data) < length:
            raise ObjectTruncated(key)
        return data[:length] if len(data) > length else data

    async def put(self, key: str, data: bytes) -> None:
        raise StorageError("memory storage is read-only")  # a restore's reader lock: it goes on without

    async def put_new(self, key: str, data: bytes) -> bool:
        raise NotImplementedError

    async def info(self, prefix: str) -> dict[str, ObjectInfo]:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self._whole if k.startswith(prefix))

    async def sizes(self, prefix: str) -> dict[str, int]:
        """The extent of what was loaded of each object: a restore checks its packs reach its chunks."""
        return {
            key: max((offset + len(data) for offset, data in ranges.items()), default=0)
            for key, ranges in self._ranges.items()
            if key.startswith(prefix)
        }

    async def aclose(self) -> None:
        return None


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _plan(repo: Repository, snapshot: str, settings: RestoreSettings) -> Any:
    manifest = await repo.read_manifest(snapshot)
    return (plan_block if manifest.mode == "block" else plan_tree)(manifest, settings)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = RestoreSettings(
        reads_in_flight=args.reads,
        max_range_bytes=args.range_mib * MiB,
        memory_bytes=max(args.memory_mib, args.range_mib) * MiB,
        threads=args.threads,
        **({"direct_io": args.direct_io == "on"} if args.direct_io else {}),
    )
    s3 = S3Settings(
        endpoint_url=args.endpoint,
        region="us-east-1",
        path_style=True,
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    password_file = os.environ.get("FERRY_PASSWORD_FILE", "")
    password = read_password_file(password_file, "FERRY_PASSWORD_FILE") if password_file else None
    async with await S3Storage.open(s3, args.bucket, args.prefix) as storage:
        repo = await open_repository(storage, None, password)
        if args.mode == "restore":
            t0, c0 = time.perf_counter(), _cpu()
            result = await restore(repo, args.snapshot, args.target, settings)
            return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "output_bytes": result.total_bytes}
        plan = await _plan(repo, args.snapshot, settings)
        ranges = iter(plan.ranges)
        if args.mode == "fetch":

            async def discard() -> None:
                buffer = bytearray(settings.max_range_bytes)  # received as the restore receives: reused
                for r in ranges:
                    if len(buffer) < r.length:
                        buffer = bytearray(r.length)
                    with memoryview(buffer)[: r.length] as into:
                        await repo.read_pack_range_into(r.pack, r.offset, into)

            t0, c0 = time.perf_counter(), _cpu()
            async with asyncio.TaskGroup() as tg:
                for _ in range(settings.reads_in_flight):
                    tg.create_task(discard())
            return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "output_bytes": plan.total_bytes}
        loaded: dict[str, dict[int, bytes]] = {}

        async def load() -> None:
            for r in ranges:
                loaded.setdefault(pack_key(r.pack), {})[r.offset] = await repo.read_pack_range(
                    r.pack, r.offset, r.length
                )

        async with asyncio.TaskGroup() as tg:
            for _ in range(settings.reads_in_flight):
                tg.create_task(load())
        manifest_key = f"snapshots/{args.snapshot}"
        manifests = {manifest_key: await storage.get(manifest_key)}
    memory_repo = Repository(MemoryStorage(loaded, manifests), config=repo.config, master=repo.master)
    t0, c0 = time.perf_counter(), _cpu()
    result = await restore(memory_repo, args.snapshot, args.target, settings)
    return {"seconds": time.perf_counter() - t0, "cpu_s": _cpu() - c0, "output_bytes": result.total_bytes}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("restore", "fetch", "memory"))
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="ferry")
    p.add_argument("--snapshot", required=True)
    p.add_argument("--target", default="")
    p.add_argument("--reads", type=int, default=RestoreSettings.reads_in_flight)
    p.add_argument("--range-mib", type=int, default=RestoreSettings.max_range_bytes // MiB)
    p.add_argument("--memory-mib", type=int, default=RestoreSettings.memory_bytes // MiB)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--direct-io", choices=("on", "off"))
    args = p.parse_args()
    if args.mode != "fetch" and not args.target:
        p.error("--target is required")
    try:
        import uvloop  # noqa: PLC0415

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    out = run(main_async(args))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
