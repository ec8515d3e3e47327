"""Snapshot creation: ``ferry snapshot create`` against ``restic backup``, on the same data, the same
SeaweedFS server and in the same run, first into an empty repository and then again after about 5% of
the data changed.

    python -m bench.backup [--runs 3] [--size-mib 1024] [--tree-files 20000] [--workloads block,file,tree]
                           [--work DIR --keep] [--smoke]

1. Generates the workloads (``bench.workloads``): a ``block`` image and a ``file`` (one file in a directory)
   of ``--size-mib`` each, of mixed runs (random, text, binary-like, zeros), and a ``tree`` of
   ``--tree-files`` files of 0-16 KiB. Starts one SeaweedFS S3 server on 127.0.0.1.
2. Every run gives each tool a new, empty repository (its own bucket on that server). For every workload:
   - ``first``: a backup by each tool, the tools' order alternating from run to run;
   - ``change``: about 5% of the data is rewritten with new random bytes (the image and the file: 20
     regions spread over it, 5% of its size in all; the tree: every 20th file, same size);
   - ``incremental``: a second backup by each tool into the same repository. restic finds its parent
     snapshot (same host and path) and rereads only files whose size or mtime changed; Ferry rereads
     everything and stores only chunks the repository lacks;
   - the change is undone (the original bytes and mtimes), so every run backs up the same data.
   Before every backup, dirty pages are written out and (as root) the page cache is dropped: each tool
   reads its source from the disk.
3. Writes ``bench/results/backup.json`` (``--smoke``: ``backup-smoke.json``).

Each backup is a child process measured by ``bench.measure`` (wall time from start to exit, CPU seconds,
peak RSS). GB/s and CPU s/GB are per GB of source data (the image's size, the sum of file sizes), for the
incremental backup too. Stored bytes are what the backup added to its bucket (the sum of object sizes
after it, less before it). For Ferry the result's own ``seconds`` is reported too ("timed part"): the
library call ``create_snapshot`` without the interpreter's start, which is what the agent's DataUpload
path runs.

The DataUpload path itself (``bench.dataupload``: Velero's backup of a PVC holding the same data, through
one Ferry agent on the tests' simulated cluster, into a new bucket of the same server) runs once per run
and workload, for the first backup: its wall time is from the DataUpload's creation to Completed, its
timed part the transfer (InProgress until the snapshot is stored). It reads warm: the simulated CSI driver
has just copied the data into the backup volume (a real driver clones it), so its figures are not cold
reads like the two tools'. Its CPU and memory are the whole process's, simulated cluster included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiobotocore.session import AioSession

from agent.settings import MiB
from bench.measure import Measured, cold, machine, run_measured, summary
from bench.peers import Restic, versions
from bench.suite import ROOT, FerryRepo
from bench.workloads import Sizes, Workload, generate
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"
TOOLS = ("ferry", "restic")
PHASES = ("first", "incremental")
CHANGED = 0.05
"""Fraction of the data changed between the two backups."""
REGIONS = 20
"""Regions of an image or a file rewritten by a change."""


async def bucket_bytes(endpoint: str, bucket: str) -> int:
    """The sum of the sizes of every object in ``bucket``."""
    session = AioSession()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        total = 0
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            total += sum(obj["Size"] for obj in page.get("Contents", []))
        return total


def change(w: Workload, seed: int) -> Callable[[], None]:
    """Rewrite about ``CHANGED`` of the workload's data with new random bytes; return what undoes it."""
    rng = random.Random(seed)
    undo: list[tuple[Path, int, bytes, tuple[int, int]]] = []
    if w.name == "tree":
        files = sorted(Path(d) / n for d, _, names in os.walk(w.source) for n in names)
        edits = [(path, 0, path.stat().st_size) for path in files[:: round(1 / CHANGED)]]
    else:
        path = w.source if w.is_block else next(p for p in sorted(w.source.iterdir()) if p.is_file())
        size = path.stat().st_size
        length = max(1, int(size * CHANGED / REGIONS))
        stride = size // REGIONS
        edits = [(path, k * stride + rng.randrange(max(1, stride - length)), length) for k in range(REGIONS)]
    for path, offset, length in edits:
        st = path.stat()
        with path.open("r+b") as f:
            f.seek(offset)
            old = f.read(length)
            f.seek(offset)
            f.write(rng.randbytes(len(old)))
        undo.append((path, offset, old, (st.st_atime_ns, st.st_mtime_ns)))

    def restore() -> None:
        for path, offset, old, times in reversed(undo):
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(old)
            os.utime(path, ns=times)

    return restore


def _stored(server: SeaweedServer, bucket: str) -> int:
    return asyncio.run(bucket_bytes(server.endpoint, bucket))


def run(
    work: Path, sizes: Sizes, runs: int, names: tuple[str, ...], log: Callable[[str], None] = print
) -> dict[str, Any]:
    started = time.time()
    log(f"generating workloads in {work / 'data'}")
    workloads = generate(work, sizes, names)
    server = SeaweedServer(work / "seaweedfs").start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    samples: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        w.name: {t: {p: [] for p in PHASES} for t in TOOLS} for w in workloads
    }
    uploads: dict[str, list[dict[str, Any]]] = {w.name: [] for w in workloads}
    try:
        for i in range(runs):
            ferry = FerryRepo(server.endpoint, asyncio.run(make_bucket(server)), work, env)
            restic_bucket = asyncio.run(make_bucket(server))
            restic = Restic(work / f"restic-{i}", server.endpoint, ACCESS_KEY, SECRET_KEY, restic_bucket)
            restic.init()
            buckets = {"ferry": ferry.bucket, "restic": restic_bucket}
            order = TOOLS[i % 2 :] + TOOLS[: i % 2]
            for w in workloads:
                undo: Callable[[], None] | None = None
                try:
                    for phase in PHASES:
                        if phase == "incremental":
                            undo = change(w, seed=100 + i)
                        for tool in order:
                            before = _stored(server, buckets[tool])
                            cold()
                            timed: float | None = None
                            if tool == "ferry":
                                name = f"{w.name}-{phase}-{i}"
                                m = ferry.snapshot(w, name)
                                timed = float(ferry.created[name]["seconds"])
                            else:
                                m, _ = restic.backup(w)
                            added = _stored(server, buckets[tool]) - before
                            samples[w.name][tool][phase].append({"m": m, "stored_bytes": added, "timed_s": timed})
                            log(
                                f"  run {i + 1} {w.name:5} {phase:11} {tool:6} {m.wall_s:7.2f} s {m.gbps:6.3f} GB/s "
                                f"{m.cpu_s_per_gb:5.2f} cpu-s/GB {m.peak_rss_bytes / MiB:6.0f} MiB "
                                f"{added / MiB:8.1f} MiB stored"
                            )
                finally:
                    if undo is not None:
                        undo()
                uploads[w.name].append(dataupload(server, w, work / f"dataupload-{w.name}-{i}", env))
                du = uploads[w.name][-1]
                log(
                    f"  run {i + 1} {w.name:5} first       agent  {du['seconds']:7.2f} s "
                    f"(transfer {du['transfer']:.2f} s) {du['m'].peak_rss_bytes / MiB:6.0f} MiB "
                    f"{du['new_stored_bytes'] / MiB:8.1f} MiB stored"
                )
    finally:
        server.stop()

    result: dict[str, Any] = {
        "machine": {**machine(), **versions()},
        "runs": runs,
        "changed_fraction": CHANGED,
        "workloads": {},
    }
    for w in workloads:
        tools: dict[str, Any] = {}
        for tool in TOOLS:
            tools[tool] = {}
            for phase in PHASES:
                rows = samples[w.name][tool][phase]
                measured: list[Measured] = [r["m"] for r in rows]
                d = summary(measured)
                d["stored_bytes"] = statistics.median(r["stored_bytes"] for r in rows)
                timed = [r["timed_s"] for r in rows if r["timed_s"] is not None]
                if timed:
                    d["timed_s"] = statistics.median(timed)
                    d["timed_GBps"] = w.size / d["timed_s"] / 1e9
                tools[tool][phase] = d
        ratios = {phase: tools["ferry"][phase]["GBps"] / tools["restic"][phase]["GBps"] for phase in PHASES}
        rows = uploads[w.name]
        upload = {
            "seconds": statistics.median(r["seconds"] for r in rows),
            "transfer_s": statistics.median(r["transfer"] for r in rows),
            "marks": rows[len(rows) // 2]["marks"],
            "peak_rss_MiB": statistics.median(r["m"].peak_rss_bytes for r in rows) / MiB,
            "stored_bytes": statistics.median(r["new_stored_bytes"] for r in rows),
        }
        upload["GBps"] = w.size / upload["seconds"] / 1e9
        upload["transfer_GBps"] = w.size / upload["transfer_s"] / 1e9
        result["workloads"][w.name] = {
            "bytes": w.size,
            "files": sizes.tree_small_files if w.name == "tree" else 1,
            "tools": tools,
            "dataupload": upload,
            "ferry_vs_restic": ratios,
        }
    result["seconds"] = time.time() - started
    return result


def dataupload(server: SeaweedServer, w: Workload, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``bench.dataupload`` on the workload's data, into a new bucket: its result and the whole process's
    measurement."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "result.json"
    argv = [
        *(sys.executable, "-m", "bench.dataupload", "--endpoint", server.endpoint),
        *("--bucket", asyncio.run(make_bucket(server)), "--source", str(w.source), "--work", str(work)),
        *("--out", str(out)),
    ]
    m = run_measured(argv, w.size, env=env, cwd=ROOT, log=work / "dataupload.log")
    result: dict[str, Any] = json.loads(out.read_text())
    shutil.rmtree(work / "sim", ignore_errors=True)  # the volume's copies
    return {**result, "m": m}


def table(r: dict[str, Any]) -> list[str]:
    """The Markdown the report shows for ``backup.json``."""
    m = r["machine"]
    lines = [
        f"Command: `{r.get('command', 'python -m bench.backup')}` ({r['runs']} runs; medians, spread min–max of "
        f"GB/s). Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_GiB']} GiB, Python {m['python']}, "
        f"{m.get('restic', 'restic ?')}. Each backup reads its source cold (page cache dropped) and writes to "
        f'the same SeaweedFS server on 127.0.0.1; "incremental" is the second backup into the same '
        f"repository after {r['changed_fraction']:.0%} of the data changed. GB/s and CPU s/GB are per GB of "
        "source data; stored MiB is what the backup added to the bucket; timed part: Ferry's library call "
        "alone (what the agent's DataUpload path runs), without the interpreter's start.",
        "",
        "| workload | backup | tool | wall s | GB/s (spread) | CPU s/GB | peak RSS MiB | stored MiB | timed part s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"block": "block image", "file": "one large file", "tree": "small files"}
    for name, w in r["workloads"].items():
        what = f"{labels.get(name, name)}, {w['bytes'] / 1e9:.2f} GB" + (
            f" in {w['files']:,} files" if name == "tree" else ""
        )
        for phase in PHASES:
            for tool in TOOLS:
                d = w["tools"][tool][phase]
                lo, hi = d["GBps_spread"]
                timed = f"{d['timed_s']:.2f}" if "timed_s" in d else "–"
                lines.append(
                    f"| {what} | {phase} | {'Ferry' if tool == 'ferry' else tool} | {d['wall_s']:.2f} | "
                    f"**{d['GBps']:.3f}** ({lo:.3f}–{hi:.3f}) | {d['cpu_s_per_GB']:.2f} | {d['peak_rss_MiB']:.0f} | "
                    f"{d['stored_bytes'] / MiB:.1f} | {timed} |"
                )
            if phase == "first" and "dataupload" in w:
                du = w["dataupload"]
                lines.append(
                    f"| {what} | first | Ferry DataUpload (agent, warm) | {du['seconds']:.2f} | **{du['GBps']:.3f}** | "
                    f"– | {du['peak_rss_MiB']:.0f} | {du['stored_bytes'] / MiB:.1f} | {du['transfer_s']:.2f} |"
                )
    lines += ["", "Ferry ÷ restic (GB/s, whole processes):"]
    for name, w in r["workloads"].items():
        ra = w["ferry_vs_restic"]
        lines.append(
            f"- {labels.get(name, name)}: first **{ra['first']:.2f}×**, incremental **{ra['incremental']:.2f}×**"
        )
    return [*lines, ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the block image and of the large file")
    p.add_argument("--tree-files", type=int, default=20_000, help="files of 0-16 KiB in the tree")
    p.add_argument("--workloads", default="block,file,tree")
    p.add_argument("--work", type=Path, help="where data and the server go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (reuse it with --work)")
    p.add_argument("--smoke", action="store_true", help="tiny workloads, for checking the benchmark works")
    args = p.parse_args()
    names = tuple(n for n in args.workloads.split(",") if n)
    sizes = smoke_sizes() if args.smoke else sizes_for(args.size_mib, args.tree_files)
    work = args.work or Path(tempfile.mkdtemp(prefix="ferry-backup-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(work, sizes, args.runs, names)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench.backup " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    name = "backup-smoke.json" if args.smoke else "backup.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(table(result)))
    print(f"wrote {RESULTS / name}")


def sizes_for(size_mib: int, tree_files: int) -> Sizes:
    return Sizes(
        block=size_mib * MiB, file=size_mib * MiB, tree_small_files=tree_files, tree_large_files=0, tree_large_bytes=0
    )


def smoke_sizes() -> Sizes:
    return sizes_for(16, 200)


if __name__ == "__main__":
    main()
