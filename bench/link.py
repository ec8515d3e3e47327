"""Restores over an S3-like link: loopback, and a proxy that gives every request a delay and every
connection a rate cap, as the link to a real object store does.

    python -m bench.link [--runs 3] [--size-mib 2048] [--tree-files 20000] [--conditions ...] [--smoke]

One SeaweedFS server on 127.0.0.1 holds a mixed block image and a tree of small files (plus two large
ones), snapshotted by Ferry and restic. For each condition (``loopback``; ``20ms-100MBps``: 20 ms before
each request reaches the server and 100 MB/s per connection; ``50ms-50MBps``) the same data is restored,
every tool a child process measured by the kernel (``bench.measure``), in rotating order, each cold:

- ``ferry``: ``bench.ferry_run restore`` at the defaults (what ``ferry restore`` and the agent run);
- ``restic``: ``restic restore`` (its defaults: 5 connections);
- ``one-get``: one 4 MiB ranged GET at a time, received and discarded (how Velero's built-in mover reads
  one large file, sequentially; a bound on any tool that reads that way);
- ``fetch``: the fetch ceiling, every range of Ferry's plan with 32 GETs in flight, received and
  discarded: what the server, the proxy and this client deliver;
- ``tar`` (trees only, the same under every condition): ``tar -xf`` of the tree from a local archive
  (made untimed): what creating the files and their metadata costs on this kernel, with no network.

The proxy (tests/support/link_proxy.py) runs in this process, on the same two cores as the tool measured:
its CPU is not counted in the tool's, but it competes with it, as the S3 server does. Writes
``bench/results/link.json``; docs/PERFORMANCE.md has the table and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings import MiB
from bench.measure import Measured, cold, machine, run_measured, summary
from bench.peers import Restic, same_content, versions
from bench.suite import FerryRepo
from bench.workloads import Sizes, Workload, generate
from tests.support.link_proxy import LinkProxy
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"
TOOLS = ("ferry", "restic", "one-get", "fetch")
TREE_TOOLS = (*TOOLS, "tar")


@dataclass(frozen=True)
class Condition:
    name: str
    delay_s: float
    rate: float
    """Bytes a second per connection; 0: none."""


CONDITIONS = {
    "loopback": Condition("loopback", 0.0, 0.0),
    "20ms-100MBps": Condition("20ms-100MBps", 0.020, 100e6),
    "50ms-50MBps": Condition("50ms-50MBps", 0.050, 50e6),
}


def _ferry_tool(ferry: FerryRepo, tool: str, w: Workload, target: Path) -> tuple[Measured, Measured]:
    if tool == "ferry":
        return ferry.run("restore", w, target)
    if tool == "one-get":
        return ferry.run("fetch", w, target, flags=("--reads", "1", "--range-mib", "4"))
    return ferry.run("fetch", w, target, flags=("--reads", "32", "--memory-mib", "512"))


def run(
    work: Path,
    sizes: Sizes,
    runs: int,
    conditions: list[Condition],
    names: tuple[str, ...] = ("block", "tree"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.time()
    workloads = generate(work, sizes, names)
    server = SeaweedServer(work / "seaweedfs").start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    port = int(server.endpoint.rsplit(":", 1)[1])
    result: dict[str, Any] = {"machine": {**machine(), **versions()}, "runs": runs, "conditions": {}}
    try:
        bucket, restic_bucket = asyncio.run(make_bucket(server)), asyncio.run(make_bucket(server))
        ferry = FerryRepo(server.endpoint, bucket, work, env)
        restic = Restic(work / "restic", server.endpoint, ACCESS_KEY, SECRET_KEY, restic_bucket)
        restic.init()
        restic_ids: dict[str, str] = {}
        archives: dict[str, Path] = {}
        for w in workloads:
            log(f"backing up {w.name} ({w.size / 1e9:.2f} GB)")
            ferry.snapshot(w)
            restic_ids[w.name] = restic.backup(w)[1]
            if not w.is_block:
                archives[w.name] = work / f"{w.name}.tar"
                subprocess.run(
                    ["tar", "-cf", str(archives[w.name]), "-C", str(w.source.parent), w.source.name], check=True
                )
        out = work / "out"
        for c in conditions:
            proxy = LinkProxy(port, c.delay_s, c.rate).start() if c.delay_s or c.rate else None
            endpoint = proxy.endpoint if proxy is not None else server.endpoint
            linked = FerryRepo(endpoint, bucket, work, env, snapshots=ferry.snapshots)
            restic_linked = Restic(work / f"restic-{c.name}", endpoint, ACCESS_KEY, SECRET_KEY, restic_bucket)
            samples: dict[str, dict[str, list[tuple[Measured, Measured | None]]]] = {
                w.name: {t: [] for t in (TOOLS if w.is_block else TREE_TOOLS)} for w in workloads
            }
            try:
                for i in range(runs):
                    for w in workloads:
                        tools = list(samples[w.name])
                        for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
                            shutil.rmtree(out, ignore_errors=True)
                            out.mkdir(parents=True)
                            cold()
                            target = out / ("block.img" if w.is_block else w.name)
                            inner: Measured | None = None
                            if tool == "restic":
                                (out / "restic").mkdir()
                                m, where = restic_linked.restore(w, restic_ids[w.name], out / "restic")
                            elif tool == "tar":
                                (out / "tar").mkdir()
                                argv = ["tar", "-xf", str(archives[w.name]), "-C", str(out / "tar")]
                                m, where = run_measured(argv, w.size), out / "tar" / w.source.name
                            else:
                                m, inner = _ferry_tool(linked, tool, w, target)
                                where = target
                            if i == 0 and tool in ("ferry", "restic", "tar"):
                                same_content(w, where)
                            samples[w.name][tool].append((m, inner))
                            log(f"  {c.name:13} run {i + 1} {w.name:5} {tool:7} {m.wall_s:7.2f} s {m.gbps:6.3f} GB/s")
            finally:
                if proxy is not None:
                    proxy.stop()
            result["conditions"][c.name] = {
                "delay_s": c.delay_s,
                "rate_Bps_per_connection": c.rate,
                "workloads": {w.name: _summarise(w, samples[w.name]) for w in workloads},
            }
        shutil.rmtree(out, ignore_errors=True)
    finally:
        server.stop()
    result["seconds"] = time.time() - started
    return result


def _summarise(w: Workload, samples: dict[str, list[tuple[Measured, Measured | None]]]) -> dict[str, Any]:
    tools: dict[str, Any] = {}
    for tool, runs in samples.items():
        tools[tool] = {"process": summary([m for m, _ in runs])}
        inner = [x for _, x in runs if x is not None]
        if inner:
            tools[tool]["inner"] = summary(inner)
    ferry, restic = tools["ferry"], tools["restic"]
    ratios = {
        "ferry_vs_restic": ferry["process"]["GBps"] / restic["process"]["GBps"],
        "ferry_vs_one_get": ferry["inner"]["GBps"] / tools["one-get"]["inner"]["GBps"],
        "ferry_vs_fetch_ceiling": ferry["inner"]["GBps"] / tools["fetch"]["inner"]["GBps"],
        "cpu_per_GB_vs_restic": ferry["process"]["cpu_s_per_GB"] / restic["process"]["cpu_s_per_GB"],
        "ferry_peak_rss_MiB": statistics.median(m.peak_rss_bytes for m, _ in samples["ferry"]) / MiB,
    }
    return {"bytes": w.size, "tools": tools, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=2048, help="the block image (default 2048)")
    p.add_argument("--tree-files", type=int, default=20_000, help="small files in the tree (default 20000)")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"of {', '.join(CONDITIONS)}")
    p.add_argument("--workloads", default="block,tree")
    p.add_argument("--work", type=Path, help="where data, the server and restores go (default: a new temp dir)")
    p.add_argument("--smoke", action="store_true", help="tiny workloads, for checking the benchmark works")
    args = p.parse_args()
    sizes = Sizes.volume(args.smoke, args.size_mib, args.tree_files)
    conditions = [CONDITIONS[name] for name in args.conditions.split(",") if name]
    work = args.work or Path(tempfile.mkdtemp(prefix="ferry-link-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    names = tuple(n for n in args.workloads.split(",") if n)
    try:
        result = run(work, sizes, args.runs, conditions, names)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench.link " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    name = "link-smoke.json" if args.smoke else "link.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    for cname, data in result["conditions"].items():
        for wname, w in data["workloads"].items():
            print(cname, wname, json.dumps({k: round(v, 3) for k, v in w["ratios"].items()}))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
