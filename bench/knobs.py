"""How the restore's tuning knobs move throughput, CPU and memory: the measurements behind the defaults.

    python -m bench.knobs [--size-mib 1024] [--runs 3]

Snapshots one mixed block image (``bench.workloads``) into SeaweedFS on 127.0.0.1, then restores it with
the defaults and with one knob changed at a time (threads, reads in flight, range size, O_DIRECT), each
configuration ``--runs`` times in rotation, every restore a child process (``bench.ferry_run``). Writes
``bench/results/knobs.json``; docs/PERFORMANCE.md cites it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.settings import MiB, cpu_count
from bench.measure import Measured, machine, summary
from bench.suite import FerryRepo
from bench.workloads import Workload, write_mixed_file
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"

CONFIGS: dict[str, list[str]] = {
    "defaults": [],
    "threads 1/CPU": ["--threads", str(cpu_count())],
    "threads 2/CPU": ["--threads", str(2 * cpu_count())],
    "threads 3/CPU": ["--threads", str(3 * cpu_count())],
    "reads 4": ["--reads", "4"],
    "reads 16": ["--reads", "16"],
    "range 4 MiB": ["--range-mib", "4"],
    "range 16 MiB": ["--range-mib", "16", "--memory-mib", "160"],
    "range 32 MiB": ["--range-mib", "32", "--memory-mib", "288"],
    "no O_DIRECT": ["--direct-io", "off"],
}


def run(work: Path, size: int, runs: int, configs: dict[str, list[str]]) -> dict[str, Any]:
    image = work / "block.img"
    write_mixed_file(image, size, seed=11)
    w = Workload("block", image, size)
    server = SeaweedServer(work / "seaweedfs").start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    samples: dict[str, list[Measured]] = {name: [] for name in configs}
    try:
        ferry = FerryRepo(server.endpoint, asyncio.run(make_bucket(server)), work, env)
        ferry.snapshot(w)
        names = list(configs)
        for i in range(runs):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                target = work / "restored.img"
                target.unlink(missing_ok=True)
                os.sync()
                samples[name].append(ferry.run("restore", w, target, flags=configs[name])[1])
                print(f"run {i + 1} {name:14} {samples[name][-1].gbps:.3f} GB/s", flush=True)
    finally:
        server.stop()
    table = {name: {"args": configs[name], **summary(rows)} for name, rows in samples.items()}
    return {"machine": machine(), "image_bytes": size, "runs": runs, "configs": table}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-knobs-", dir="/var/tmp"))
    try:
        result = run(work, args.size_mib * MiB, args.runs, CONFIGS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench.knobs " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "knobs.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, row in result["configs"].items():
        print(f"{name:14} {row['GBps']:.3f} GB/s  {row['cpu_s_per_GB']:.2f} CPU s/GB  {row['peak_rss_MiB']:.0f} MiB")


if __name__ == "__main__":
    main()
