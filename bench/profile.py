"""Where a restore's threads spend their time, by pipeline stage, from py-spy samples.

    python -m bench.profile [--size-mib 1024] [--workload block|file]

Snapshots a mixed image (block) or a directory holding one mixed file (file) into SeaweedFS on
127.0.0.1, then restores it under ``py-spy record``: 250 samples a second of every thread that is not
idle (threads waiting on a lock, a queue or the event loop's poll are not sampled). Each sample is
charged to a stage by its innermost frames:

- decompress, verify (BLAKE3), write (``pwrite``): the worker threads' calls into zstandard, blake3 and
  the kernel (py-spy names the Python line that made the call, which is where the time goes: these
  calls release the GIL and run in C). A thread waiting for the disk inside an O_DIRECT ``pwrite`` is
  not idle to py-spy, so "write" is time, not only CPU;
- receive: the threads receiving pack ranges (``agent/storage/ranged.py``, http.client, the socket
  module) and aiohttp's response stream and protocol (the other reads);
- event loop: uvloop's own C code (socket reads, callbacks), which py-spy shows as ``Runner.run``;
- thread hand-off: the executors' worker loop between calls. py-spy samples threads there that are not
  asleep (woken, or taking the GIL back), and a restore has many (the threads receiving pack ranges,
  one per read in flight, wait there between GETs): time, not CPU (``bench.stages`` measures CPU by
  kind of thread);
- S3 requests: building, signing and parsing requests (botocore, aiobotocore) and the connection pool;
- start-up: imports and the interpreter before the restore begins;
- other: everything else (planning, asyncio scheduling, the memory budget).

Writes ``bench/results/profile-<workload>.json`` with the share of samples per stage and the top lines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.settings import MiB
from bench.measure import machine
from bench.suite import ROOT, FerryRepo
from bench.workloads import Workload, write_mixed_file
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def _decompress_frames() -> list[tuple[str, str]]:
    """py-spy names a frame "function (file:line)": the lines of ``decode_chunk`` that call zstandard."""
    path = ROOT / "agent" / "repo" / "chunks.py"
    return [
        ("decompress", f"decode_chunk (agent/repo/chunks.py:{n})")
        for n, text in enumerate(path.read_text().splitlines(), start=1)
        if "reader" in text or "frame_content_size" in text
    ]


# (stage, substring of a frame), tried innermost frame first.
RULES: list[tuple[str, str]] = [
    *_decompress_frames(),
    ("verify", "chunk_id ("),
    ("write", "pwrite_all ("),
    ("receive", "agent/storage/ranged.py"),
    ("receive", "http/client.py"),
    ("receive", "socket.py"),
    ("receive", "ssl.py"),
    ("receive", "aiohttp/streams.py"),
    ("receive", "aiohttp/client_proto.py"),
    ("receive", "aiobotocore/response.py"),
    ("receive", "get_range_into"),
    ("S3 requests", "botocore/"),
    ("S3 requests", "aiohttp/"),
    ("event loop", "Runner.run ("),
    ("thread hand-off", "_worker (concurrent/futures/thread.py"),
]


def stage_of(frames: list[str]) -> str:
    if any("<frozen importlib" in f for f in frames):
        return "start-up"
    for frame in reversed(frames):
        for stage, needle in RULES:
            if needle in frame:
                return stage
    return "other"


def aggregate(raw: Path) -> dict[str, Any]:
    stages: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith(("thread ", "process "))]
        n = int(count)
        total += n
        stages[stage_of(frames)] += n
        if frames:
            lines[frames[-1]] += n
    return {
        "samples": total,
        "stages": {k: v / total for k, v in stages.most_common()},
        "top_lines": {k: v / total for k, v in lines.most_common(15)},
    }


def run(work: Path, workload: str, size: int) -> dict[str, Any]:
    if workload == "block":
        source = work / "block.img"
        write_mixed_file(source, size, seed=21)
    else:
        source = work / "file"
        source.mkdir()
        write_mixed_file(source / "large.bin", size, seed=22)
    w = Workload(workload, source, size)
    server = SeaweedServer(work / "seaweedfs").start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    try:
        ferry = FerryRepo(server.endpoint, asyncio.run(make_bucket(server)), work, env)
        ferry.snapshot(w)
        raw = work / "profile.txt"
        target = work / ("restored.img" if workload == "block" else "restored")
        argv = [
            *(PY_SPY, "record", "--threads", "--rate", "250", "--format", "raw", "--output", str(raw), "--"),
            *(sys.executable, "-m", "bench.ferry_run", "restore", "--endpoint", server.endpoint),
            *("--bucket", ferry.bucket, "--snapshot", ferry.snapshots[workload], "--target", str(target)),
        ]
        from bench.measure import run_measured  # noqa: PLC0415

        m = run_measured(argv, size, env=ferry.env, cwd=ROOT, log=work / "py-spy.log")
        output = (work / "py-spy.log").read_text(errors="replace")
        if '"output_bytes"' not in output:  # py-spy exits 0 whatever its child did
            raise SystemExit(f"the profiled restore failed:\n{output[-2000:]}")
    finally:
        server.stop()
    return {"machine": machine(), "workload": workload, "bytes": size, "wall_s": m.wall_s, **aggregate(raw)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--workload", choices=("block", "file"), default="block")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-profile-", dir="/var/tmp"))
    try:
        result = run(work, args.workload, args.size_mib * MiB)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench.profile " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile-{args.workload}.json").write_text(json.dumps(result, indent=2) + "\n")
    for stage, share in result["stages"].items():
        print(f"{stage:12} {share:6.1%}")


if __name__ == "__main__":
    main()
