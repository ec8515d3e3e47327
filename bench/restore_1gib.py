"""Restore throughput of a 1 GiB mixed block image from a local SeaweedFS S3 server.

    .venv/bin/python -m bench.restore_1gib [--size-mib 1024] [--runs 3]

Generates the image (random, text, binary and zero runs of a few MiB, in equal parts), snapshots it into
a fresh bucket, then restores it ``--runs`` times into a new image file, and also fetches every range of
the plan without decoding (what the server and loopback deliver to this client) for the ratio. Prints
medians and writes bench/results/restore-1gib.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from agent.pipeline.plan import plan_block
from agent.pipeline.restore import restore
from agent.repo.repository import Repository
from agent.repo.writer import create_snapshot
from agent.settings import MiB, RestoreSettings, SnapshotSettings, cpu_count
from agent.storage.s3 import S3Storage
from tests.support.data import write_mixed_image
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for

RESULTS = Path(__file__).parent / "results"


async def fetch_only(repo: Repository, sid: str, settings: RestoreSettings) -> float:
    """Every GET of the plan at the same concurrency, bytes discarded: the transport ceiling."""
    plan = plan_block(await repo.read_manifest(sid), settings)
    ranges = iter(plan.ranges)

    async def worker() -> None:
        for r in ranges:
            await repo.read_pack_range(r.pack, r.offset, r.length)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(settings.reads_in_flight):
            tg.create_task(worker())
    return time.perf_counter() - t0


async def run(size_mib: int, runs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        work = Path(tmp)
        server = SeaweedServer(work / "seaweedfs").start()
        try:
            image = write_mixed_image(work / "mixed.img", size_mib * MiB, seed=2026)
            storage = await S3Storage.open(s3_settings_for(server), await make_bucket(server), "bench")
            async with storage:
                repo = Repository(storage)
                snap = await create_snapshot(repo, str(image), SnapshotSettings())
                settings = RestoreSettings()
                restores, cpus, fetches = [], [], []
                for i in range(runs):
                    fetches.append(await fetch_only(repo, snap.snapshot_id, settings))
                    out = work / f"restored-{i}.img"
                    cpu0 = time.process_time()
                    result = await restore(repo, snap.snapshot_id, str(out), settings)
                    cpus.append(time.process_time() - cpu0)
                    restores.append(result.seconds)
                    if i == 0 and out.read_bytes() != image.read_bytes():
                        raise SystemExit("restored image differs")
                    out.unlink()
        finally:
            server.stop()
    size = size_mib * MiB
    median = statistics.median(restores)
    return {
        "workload": f"{size_mib} MiB mixed block image (random/text/binary/zeros), S3 (SeaweedFS, 127.0.0.1)",
        "machine": f"{platform.machine()}, {cpu_count()} CPUs, Python {platform.python_version()}",
        "stored_bytes": snap.new_stored_bytes,
        "hole_bytes": snap.hole_bytes,
        "restore_seconds": restores,
        "restore_GBps_median": size / median / 1e9,
        "restore_GBps_spread": [size / max(restores) / 1e9, size / min(restores) / 1e9],
        "client_cpu_s_per_GB": statistics.median(cpus) / (size / 1e9),
        "fetch_only_GBps_median_of_output": size / statistics.median(fetches) / 1e9,
        "ratio_to_fetch_only": statistics.median(fetches) / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.size_mib, args.runs))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "restore-1gib.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
