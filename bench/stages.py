"""CPU seconds per restored GB of each stage a restore runs on every chunk, each measured alone.

    python -m bench.stages [--size-mib 1024] [--runs 3]

Snapshots a mixed image into an encrypted repository on SeaweedFS (127.0.0.1), fetches every range of its
restore plan into memory, then times, on one thread and over all chunks, each stage alone:

- ``open``: AES-256-GCM authentication and decryption of the sealed frame (PyCA cryptography);
- ``decompress``: zstd into a reused buffer, as ``decode_chunk`` does;
- ``verify``: keyed BLAKE3 of the plain bytes;
- ``decode``: the three together, through ``ChunkCodec.decode`` (what the restore's threads call);

and, from the restore itself (``restore`` with the default settings, onto an image file, cold), the CPU
of its threads by kind (from ``/proc/self/task``): the threads receiving pack ranges (``ferry-get``), the
event loop's thread and the decoding threads (decode, verify, O_DIRECT write). Medians of ``--runs``.
Writes ``bench/results/stages.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import mmap
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from agent.pipeline.plan import plan_block
from agent.pipeline.restore import restore
from agent.repo.config import open_repository
from agent.settings import MiB, RestoreSettings, S3Settings, read_password_file
from agent.storage.s3 import S3Storage
from bench.measure import cold, machine
from bench.suite import FerryRepo
from bench.workloads import Workload, write_mixed_file
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's live threads, by name without its number."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = collections.defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        name = names.get(int(tid), "other")
        out[name.rstrip("0123456789_-") or name] += (int(fields[11]) + int(fields[12])) / ticks
    return out


async def _measure(endpoint: str, bucket: str, snapshot: str, work: Path, runs: int) -> dict[str, Any]:
    s3 = S3Settings(
        endpoint_url=endpoint,
        region="us-east-1",
        path_style=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
    )
    password = read_password_file(str(work / "ferry-password"), "password")
    settings = RestoreSettings()
    async with await S3Storage.open(s3, bucket, "ferry") as storage:
        repo = await open_repository(storage, None, password)
        assert repo.master is not None
        manifest = await repo.read_manifest(snapshot)
        plan = plan_block(manifest, settings)
        chunks: list[tuple[memoryview, Any]] = []
        for r in plan.ranges:
            data = memoryview(await repo.read_pack_range(r.pack, r.offset, r.length))
            chunks.extend((data[j.offset - r.offset : j.offset - r.offset + j.stored], j) for j in r.chunks)
        plain_gb = sum(j.plain for _, j in chunks) / 1e9
        codec, master = repo.codec, repo.master
        sealer = master.sealer()
        out = memoryview(mmap.mmap(-1, plan.max_plain + 4096))
        frames = [f for c, j in chunks if (f := sealer.open(c, j.id)) is not None]
        assert len(frames) == len(chunks)
        dctx = zstandard.ZstdDecompressor()

        def stage_open() -> None:
            for c, j in chunks:
                sealer.open(c, j.id)

        def stage_decompress() -> None:
            for f, (_, j) in zip(frames, chunks, strict=True):
                with dctx.stream_reader(f, read_across_frames=False, closefd=False) as reader:
                    filled = 0
                    while filled < j.plain and (n := reader.readinto(out[filled : j.plain])):
                        filled += n

        def stage_verify() -> None:
            for _, j in chunks:
                master.chunk_id(out[: j.plain])

        def stage_decode() -> None:
            for c, j in chunks:
                assert not isinstance(codec.decode(c, j.plain, j.id, out), str)

        stages: dict[str, Callable[[], None]] = {
            "open": stage_open,
            "decompress": stage_decompress,
            "verify": stage_verify,
            "decode": stage_decode,
        }
        alone: dict[str, list[float]] = {name: [] for name in stages}
        threads: dict[str, list[float]] = collections.defaultdict(list)
        whole: list[float] = []
        for _ in range(runs):
            for name, fn in stages.items():
                started = time.thread_time()
                fn()
                alone[name].append((time.thread_time() - started) / plain_gb)
            target = work / "restored.img"
            target.unlink(missing_ok=True)
            cold()
            before, usage = _thread_cpu(), resource.getrusage(resource.RUSAGE_SELF)
            decoding = _DecodingCpu()
            with decoding:
                result = await restore(repo, snapshot, str(target), settings)
            after, used = _thread_cpu(), resource.getrusage(resource.RUSAGE_SELF)
            gb = result.total_bytes / 1e9
            whole.append((used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime) / gb)
            for name in after:
                if name.startswith(("ferry-get", "MainThread")):
                    threads[name].append((after[name] - before.get(name, 0.0)) / gb)
            threads["decoding threads"].append(decoding.seconds / gb)
    return {
        "restored_GB": gb,
        "stages_alone_cpu_s_per_GB": {k: statistics.median(v) for k, v in alone.items()},
        "restore_threads_cpu_s_per_GB": {k: statistics.median(v) for k, v in threads.items()},
        "restore_cpu_s_per_GB": statistics.median(whole),
    }


class _DecodingCpu:
    """Adds up the thread CPU of every call to the transfer's decode-and-write function while in use (the
    decoding threads end with the restore, so ``/proc`` no longer has them afterwards)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._module = sys.modules["agent.pipeline.transfer"]
        self._original = getattr(self._module, "_decode_and_write")  # noqa: B009 - patched for the measurement

    def __enter__(self) -> _DecodingCpu:
        original = self._original

        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.thread_time() - started

        setattr(self._module, "_decode_and_write", counted)  # noqa: B010
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self._module, "_decode_and_write", self._original)  # noqa: B010


def run(work: Path, size: int, runs: int) -> dict[str, Any]:
    source = work / "block.img"
    write_mixed_file(source, size, seed=23)
    server = SeaweedServer(work / "seaweedfs").start()
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        ferry = FerryRepo(server.endpoint, asyncio.run(make_bucket(server)), work, env)
        ferry.snapshot(Workload("block", source, size))
        measured = asyncio.run(_measure(server.endpoint, ferry.bucket, ferry.snapshots["block"], work, runs))
    finally:
        server.stop()
    return {"machine": machine(), "runs": runs, **measured}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-stages-", dir="/var/tmp"))
    try:
        result = run(work, args.size_mib * MiB, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench.stages " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stages.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
