"""A repository's life: what encryption costs a restore, and what prune gives back once backups expire.

    python -m bench.lifecycle [--runs 3] [--size-mib 1024] [--days 10] [--keep 3] [--smoke]

1. **Encryption.** One ``block`` image of ``--size-mib`` (mixed data, ``bench.workloads``) is snapshotted
   into an encrypted repository and an unencrypted one (``repo init --no-encryption``) on the same SeaweedFS
   server. Each is restored ``--runs`` times, alternating, cold (page cache dropped as root), by
   ``bench.ferry_run restore``: the whole process (GB/s, CPU s/GB, peak RSS) and its timed part. The cost
   of encryption is the encrypted run's figures against the unencrypted one's.
2. **Prune.** ``--days`` daily backups of an image of ``--size-mib / 4`` whose every day rewrites about 10%
   (20 regions of new random bytes) go into a new encrypted repository; then all but the newest ``--keep``
   are forgotten (what expiring backups does) and ``repo prune --grace 0s`` runs twice (mark, sweep). The
   stored bytes (packs, from the bucket listing) before and after are reported, with what the kept
   snapshots' distinct chunks take (``repo stats``: the least a prune could leave); then ``repo check
   --read-data`` must pass and the newest snapshot must restore identical to its image.

Writes ``bench/results/lifecycle.json`` (``--smoke``: ``lifecycle-smoke.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.storage.s3 import S3Storage
from bench.measure import Measured, cold, machine, summary
from bench.suite import PYTHON, ROOT, FerryRepo
from bench.workloads import Workload, write_mixed_file
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket, s3_settings_for

RESULTS = Path(__file__).parent / "results"
MiB = 1024 * 1024


def _ferry(repo: FerryRepo, *args: str) -> str:
    argv = [PYTHON, "-m", "agent", *args, *repo._where()]
    done = subprocess.run(argv, env=repo.env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ferry {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def _stored(server: SeaweedServer, bucket: str, prefix: str) -> int:
    """Bytes of the repository's packs, from the bucket listing."""

    async def total() -> int:
        async with await S3Storage.open(s3_settings_for(server), bucket, prefix) as storage:
            return sum(max(0, s) for s in (await storage.sizes("packs/")).values())

    return asyncio.run(total())


def encryption(work: Path, server: SeaweedServer, env: dict[str, str], size: int, runs: int) -> dict[str, Any]:
    image = work / "data" / "block.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    if not image.exists() or image.stat().st_size != size:
        write_mixed_file(image, size, seed=1)
    w = Workload("block", image, size)
    bucket = asyncio.run(make_bucket(server))
    repos = {
        "encrypted": FerryRepo(server.endpoint, bucket, work, env, encrypted=True, prefix="encrypted"),
        "unencrypted": FerryRepo(server.endpoint, bucket, work, env, encrypted=False, prefix="plain"),
    }
    for repo in repos.values():
        repo.snapshot(w)
    process: dict[str, list[Measured]] = {k: [] for k in repos}
    inner: dict[str, list[Measured]] = {k: [] for k in repos}
    target = work / "out" / "block.img"
    order = list(repos)
    for i in range(runs):
        for name in order[i % 2 :] + order[: i % 2]:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            cold()
            whole, timed = repos[name].run("restore", w, target)
            process[name].append(whole)
            inner[name].append(timed)
    out: dict[str, Any] = {k: {"process": summary(process[k]), "inner": summary(inner[k])} for k in repos}
    enc, plain = out["encrypted"], out["unencrypted"]
    out["cost"] = {
        "throughput_ratio": enc["process"]["GBps"] / plain["process"]["GBps"],
        "inner_throughput_ratio": enc["inner"]["GBps"] / plain["inner"]["GBps"],
        "extra_cpu_s_per_GB": enc["process"]["cpu_s_per_GB"] - plain["process"]["cpu_s_per_GB"],
    }
    return out


def _change(image: Path, rng: random.Random) -> None:
    size = image.stat().st_size
    region = max(4096, size // 200)
    with image.open("r+b") as f:
        for _ in range(20):
            f.seek(rng.randrange(0, size - region))
            f.write(rng.randbytes(region))


def pruning(work: Path, server: SeaweedServer, env: dict[str, str], size: int, days: int, keep: int) -> dict[str, Any]:
    image = work / "data" / "daily.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    write_mixed_file(image, size, seed=3)
    bucket = asyncio.run(make_bucket(server))
    repo = FerryRepo(server.endpoint, bucket, work, env, encrypted=True, prefix="daily")
    rng = random.Random(4)
    ids: list[str] = []
    for day in range(days):
        if day:
            _change(image, rng)
        repo.snapshot(Workload("block", image, size), f"day-{day}")
        ids.append(repo.snapshots[f"day-{day}"])
    before = _stored(server, bucket, repo.prefix)
    _ferry(repo, "snapshot", "forget", *ids[: days - keep])
    started = time.perf_counter()
    mark = json.loads(_ferry(repo, "repo", "prune", "--grace", "0s", "--json"))
    sweep = json.loads(_ferry(repo, "repo", "prune", "--grace", "0s", "--json"))
    seconds = time.perf_counter() - started
    after = _stored(server, bucket, repo.prefix)
    needed = json.loads(_ferry(repo, "repo", "stats", "--json"))["referenced_stored_bytes"]
    _ferry(repo, "repo", "check", "--read-data")
    target = work / "out" / "daily.img"
    target.unlink(missing_ok=True)
    _ferry(repo, "restore", "--snapshot", ids[-1], str(target))
    if target.read_bytes() != image.read_bytes():
        raise RuntimeError("the newest snapshot did not restore its image after prune")
    target.unlink()
    return {
        "image_bytes": size,
        "days": days,
        "kept": keep,
        "stored_bytes_before": before,
        "stored_bytes_after": after,
        "kept_snapshots_need_bytes": needed,
        "freed_fraction": 1 - after / before,
        "marked_packs": mark["marked_packs"],
        "repacked_packs": mark["repacked_packs"],
        "repacked_bytes": mark["repacked_bytes"],
        "deleted_packs": sweep["deleted_packs"],
        "prune_seconds": seconds,
    }


def run(
    work: Path, size: int, runs: int, days: int, keep: int, log: Any = print, prune_only: bool = False
) -> dict[str, Any]:
    server = SeaweedServer(work / "seaweedfs").start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    enc: dict[str, Any] = {}
    try:
        if not prune_only:
            log(f"encryption: restoring a {size // MiB} MiB image, {runs} runs each")
            enc = encryption(work, server, env, size, runs)
        log(f"prune: {days} daily backups of {size // 4 // MiB} MiB, keeping {keep}")
        prune = pruning(work, server, env, max(size // 4, 4 * MiB), days, keep)
    finally:
        server.stop()
    return {"machine": machine(), "encryption": enc, "prune": prune}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one run: the benchmark still works")
    p.add_argument("--prune-only", action="store_true", help="only the prune part (sizes, not times)")
    args = p.parse_args()
    if args.smoke:
        args.runs, args.size_mib, args.days, args.keep = 1, 16, 3, 1
    with tempfile.TemporaryDirectory(prefix="ferry-lifecycle-", dir="/var/tmp") as tmp:
        result = run(Path(tmp), args.size_mib * MiB, args.runs, args.days, args.keep, prune_only=args.prune_only)
    RESULTS.mkdir(exist_ok=True)
    name = "lifecycle-smoke" if args.smoke else "lifecycle-prune" if args.prune_only else "lifecycle"
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    e, pr = result["encryption"], result["prune"]
    if e:
        sys.stdout.write(
            f"restore, encrypted: {e['encrypted']['process']['GBps']:.3f} GB/s, "
            f"{e['encrypted']['process']['cpu_s_per_GB']:.2f} CPU s/GB; unencrypted: "
            f"{e['unencrypted']['process']['GBps']:.3f} GB/s, {e['unencrypted']['process']['cpu_s_per_GB']:.2f} "
            "CPU s/GB\n"
        )
    sys.stdout.write(
        f"prune (repacking {pr['repacked_packs']} packs): {pr['stored_bytes_before'] / MiB:.1f} MiB stored before, "
        f"{pr['stored_bytes_after'] / MiB:.1f} MiB after ({100 * pr['freed_fraction']:.0f}% freed; the kept "
        f"snapshots need {pr['kept_snapshots_need_bytes'] / MiB:.1f} MiB)\n{out}\n"
    )


if __name__ == "__main__":
    main()
