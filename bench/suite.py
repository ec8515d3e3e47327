"""The restore benchmark: Ferry, restic and casync side by side on the same data, with the ceilings.

    python -m bench [--runs 3] [--workloads block,tree,file] [--work DIR] [--smoke] [--profile]

1. Generates the workloads (``bench.workloads``) and starts one SeaweedFS S3 server on 127.0.0.1.
2. Backs every workload up with ``ferry snapshot create`` and ``restic backup`` (each into a repository on
   that server) and ``casync make`` (into a chunk store that an HTTP server on 127.0.0.1 serves): snapshot
   creation, measured.
3. ``--runs`` times, rotating the order of the tools every run, restores every workload with each tool
   into a new directory on the same filesystem, and measures the ceilings:
   - ``ferry``: ``bench.ferry_run restore`` (the library call ``ferry restore`` and the agent make);
   - ``restic``: ``restic restore``; ``casync``: ``casync extract`` over HTTP;
   - ``fetch`` ceiling: every ranged GET of Ferry's plan at the same concurrency, received as Ferry
     receives (into reused buffers) and discarded;
   - ``memory`` ceiling: the same ranges decompressed, verified and written from memory on all cores.
   The first run of every tool is checked byte for byte against the source. ``sync`` runs (untimed)
   after every measurement so no tool pays for the previous one's dirty pages.
4. Restores a 1 GiB cut of the block image too, for Ferry's peak RSS against volume size.
5. Writes ``bench/results/restore.json`` (``--smoke``: ``restore-smoke.json``).

Every tool runs as a child process measured by the kernel (``bench.measure``): wall time including
startup, CPU seconds of the process and its children, peak RSS. For Ferry and the ceilings the child also
reports the timed part alone (``inner``): the restore without the interpreter's start (about 0.5 s of
imports), which is what the node agent, a long-running process, pays per restore.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.settings import MiB
from bench.measure import Measured, cold, machine, run_measured, summary
from bench.peers import Casync, Restic, same_content, versions
from bench.workloads import Sizes, Workload, generate
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TOOLS = ("ferry", "restic", "casync", "fetch", "memory")


@dataclass(frozen=True)
class Sample:
    m: Measured
    """The whole process."""
    inner: Measured | None
    """Ferry and the ceilings: the timed part, as the child reported it (peak RSS: the whole process's)."""
    sync_s: float
    """``sync`` right after the tool: writing out what it left in the page cache."""


@dataclass
class FerryRepo:
    endpoint: str
    bucket: str
    work: Path
    env: dict[str, str]
    snapshots: dict[str, str] = field(default_factory=dict)
    created: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The JSON ``ferry snapshot create`` printed, by name: the result's fields (``new_stored_bytes``,
    ``seconds``: the library call alone, what the agent's DataUpload path runs)."""
    encrypted: bool = True
    """An encrypted repository (what users get by default, and what restic always is), else one made with
    ``repo init --no-encryption``."""
    prefix: str = "ferry"

    def __post_init__(self) -> None:
        self.env = dict(self.env)
        if self.encrypted:
            password = self.work / "ferry-password"
            password.write_text("bench password\n")
            self.env["FERRY_PASSWORD_FILE"] = str(password)
        else:
            self.env["FERRY_PASSWORD_FILE"] = ""
            argv = [PYTHON, "-m", "agent", "repo", "init", "--no-encryption", *self._where()]
            subprocess.run(argv, env=self.env, cwd=ROOT, check=True, capture_output=True)

    def _where(self) -> list[str]:
        return ["--repo", f"s3://{self.bucket}/{self.prefix}", "--s3-endpoint", self.endpoint, "--s3-path-style"]

    def snapshot(self, w: Workload, name: str | None = None) -> Measured:
        log = self.work / f"ferry-snapshot-{name or w.name}.log"
        argv = [
            *(PYTHON, "-m", "agent", "--log-level", "warning", "snapshot", "create"),
            *self._where(),
            "--json",
            str(w.source),
        ]
        m = run_measured(argv, w.size, env=self.env, cwd=ROOT, log=log)
        text = log.read_text()
        self.created[name or w.name] = json.loads(text[text.index("{\n") :])
        self.snapshots[name or w.name] = self.created[name or w.name]["snapshot_id"]
        return m

    def run(
        self, mode: str, w: Workload, target: Path, name: str | None = None, flags: Sequence[str] = ()
    ) -> tuple[Measured, Measured]:
        """``bench.ferry_run MODE`` (with tuning ``flags``): the whole process, and the timed part."""
        log = self.work / f"ferry-{mode}.log"
        argv = [
            *(PYTHON, "-m", "bench.ferry_run", mode, "--endpoint", self.endpoint, "--bucket", self.bucket),
            *("--prefix", self.prefix),
            *("--snapshot", self.snapshots[name or w.name], "--target", str(target), *flags),
        ]
        m = run_measured(argv, w.size, env=self.env, cwd=ROOT, log=log)
        inner = json.loads(log.read_text().strip().splitlines()[-1])
        if inner["output_bytes"] != w.size:
            raise RuntimeError(f"ferry {mode} of {w.name} accounted for {inner['output_bytes']} of {w.size} bytes")
        return m, Measured(inner["seconds"], inner["cpu_s"], m.peak_rss_bytes, w.size)


def _target(out: Path, w: Workload) -> Path:
    return out / ("block.img" if w.is_block else w.name)


def _clean(out: Path) -> None:
    """Remove the last restore and start the next one cold: written out, and (as root) with the page cache
    dropped, so the server reads packs from its disk and no tool inherits another's cached pages. On
    these VMs creating files also slows down severalfold while gigabytes sit in the page cache."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cold()


def ratios(tools: dict[str, Any]) -> dict[str, float]:
    """Ferry against the peers (whole processes, startup included) and the ceilings (timed parts)."""
    ferry = tools["ferry"]
    out: dict[str, float] = {}
    for peer in ("restic", "casync"):
        if peer in tools:
            out[f"ferry_vs_{peer}"] = ferry["process"]["GBps"] / tools[peer]["process"]["GBps"]
            out[f"ferry_vs_{peer}_durable"] = ferry["durable"]["GBps"] / tools[peer]["durable"]["GBps"]
    lower = min(tools["fetch"]["inner"]["GBps"], tools["memory"]["inner"]["GBps"])
    out["ferry_vs_lower_ceiling"] = ferry["inner"]["GBps"] / lower
    out["ferry_vs_fetch_ceiling"] = ferry["inner"]["GBps"] / tools["fetch"]["inner"]["GBps"]
    out["ferry_vs_memory_ceiling"] = ferry["inner"]["GBps"] / tools["memory"]["inner"]["GBps"]
    out["cpu_per_GB_vs_memory"] = ferry["inner"]["cpu_s_per_GB"] / tools["memory"]["inner"]["cpu_s_per_GB"]
    return out


def run(
    work: Path, sizes: Sizes, runs: int, names: tuple[str, ...], peers: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    started = time.time()
    log(f"generating workloads in {work / 'data'}")
    workloads = generate(work, sizes, names)
    server = SeaweedServer(work / "seaweedfs").start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    result: dict[str, Any] = {"machine": {**machine(), **versions()}, "runs": runs, "workloads": {}, "backup": {}}
    try:
        ferry = FerryRepo(server.endpoint, asyncio.run(make_bucket(server)), work, env)
        restic = Restic(work / "restic", server.endpoint, ACCESS_KEY, SECRET_KEY, asyncio.run(make_bucket(server)))
        with Casync(work / "casync") as casync:
            if peers:
                restic.init()
            restic_ids: dict[str, str] = {}
            for w in workloads:
                log(f"backing up {w.name} ({w.size / 1e9:.2f} GB)")
                backup: dict[str, Any] = {"ferry": ferry.snapshot(w).as_dict()}
                if peers:
                    m, restic_ids[w.name] = restic.backup(w)
                    backup["restic"] = m.as_dict()
                    backup["casync"] = casync.make(w).as_dict()
                result["backup"][w.name] = backup
                log("  " + _line(backup))
            block = next((w for w in workloads if w.is_block), None)
            cut = _cut_block(work, block, sizes) if block is not None else None
            if cut is not None:
                ferry.snapshot(cut, "block-cut")

            out = work / "out"
            measured: dict[str, dict[str, list[Sample]]] = {w.name: {t: [] for t in TOOLS} for w in workloads}
            order = [t for t in TOOLS if peers or t not in ("restic", "casync")]
            for i in range(runs):
                rotation = order[i % len(order) :] + order[: i % len(order)]
                for w in workloads:
                    for tool in rotation:
                        _clean(out)
                        target = _target(out, w)
                        if tool in ("restic", "casync"):
                            (out / tool).mkdir()
                        inner: Measured | None = None
                        if tool == "restic":
                            m, where = restic.restore(w, restic_ids[w.name], out / "restic")
                        elif tool == "casync":
                            m, where = casync.extract(w, out / "casync")
                        else:
                            m, inner = ferry.run({"ferry": "restore"}.get(tool, tool), w, target)
                            where = target
                        synced = time.perf_counter()
                        os.sync()  # what the tool left unwritten (Ferry flushes before it returns)
                        sync_s = time.perf_counter() - synced
                        if i == 0 and tool != "fetch":
                            same_content(w, where)
                        measured[w.name][tool].append(Sample(m, inner, sync_s))
                        log(
                            f"  run {i + 1} {w.name:5} {tool:6} {m.wall_s:7.2f} s + sync {sync_s:5.2f} s "
                            f"{m.gbps:6.3f} GB/s (process)"
                        )
            rss_cut: list[int] = []
            rss_full: list[int] = []
            if cut is not None and block is not None:
                for _ in range(runs):
                    _clean(out)
                    rss_cut.append(ferry.run("restore", cut, out / "cut.img", "block-cut")[0].peak_rss_bytes)
                rss_full = [sample.m.peak_rss_bytes for sample in measured["block"]["ferry"]]
            _clean(out)
    finally:
        server.stop()

    for w in workloads:
        tools: dict[str, Any] = {}
        for tool, samples in measured[w.name].items():
            if not samples:
                continue
            durable = [dataclasses.replace(x.m, wall_s=x.m.wall_s + x.sync_s) for x in samples]
            tools[tool] = {"process": summary([x.m for x in samples]), "durable": summary(durable)}
            if samples[0].inner is not None:
                tools[tool]["inner"] = summary([x.inner for x in samples if x.inner is not None])
        result["workloads"][w.name] = {"bytes": w.size, "tools": tools, "ratios": ratios(tools)}
    if rss_cut:
        small, big = statistics.median(rss_cut), statistics.median(rss_full)
        result["rss_by_volume_size"] = {
            "small_bytes": sizes.block // 4,
            "large_bytes": sizes.block,
            "small_peak_rss_MiB": small / MiB,
            "large_peak_rss_MiB": big / MiB,
            "growth": big / small - 1,
        }
    result["seconds"] = time.time() - started
    return result


def _cut_block(work: Path, block: Workload, sizes: Sizes) -> Workload:
    """The first quarter of the block image (1 GiB of the 4 GiB one), as its own volume."""
    size = sizes.block // 4
    path = work / "data" / "block-cut.img"
    if not path.exists() or path.stat().st_size != size:
        with block.source.open("rb") as src, path.open("wb") as dst:
            left = size
            while left:
                piece = src.read(min(left, 64 * MiB))
                dst.write(piece)
                left -= len(piece)
    return Workload("block", path, size)


def _line(tools: dict[str, Any]) -> str:
    return "  ".join(f"{t} {d['GBps']:.3f} GB/s {d['cpu_s_per_GB']:.2f} cpu-s/GB" for t, d in tools.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workloads", default="block,tree,file")
    p.add_argument("--work", type=Path, help="where data, servers and restores go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (reuse it with --work)")
    p.add_argument("--smoke", action="store_true", help="tiny workloads, for checking the benchmark works")
    p.add_argument("--no-peers", action="store_true", help="Ferry and the ceilings only")
    args = p.parse_args()
    names = tuple(n for n in args.workloads.split(",") if n)
    sizes = Sizes.smoke() if args.smoke else Sizes()
    work = args.work or Path(tempfile.mkdtemp(prefix="ferry-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(work, sizes, args.runs, names, peers=not args.no_peers)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    name = "restore-smoke.json" if args.smoke else "restore.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    for wname, data in result["workloads"].items():
        print(wname, json.dumps(data["ratios"]))
    print(f"wrote {RESULTS / name}")
