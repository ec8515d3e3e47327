"""What a killed restore fetches again when it is run again: ``ferry restore`` killed with SIGKILL at
random points, then run again onto the same target.

    python -m bench.resume [--kills 7] [--size-mib 1024] [--tree-files 20000] [--targets image,device,tree]

One SeaweedFS server on 127.0.0.1 behind the link proxy (tests/support/link_proxy.py, no delay: it only
counts the bytes it delivers). For each target kind (``image``: an image file the first run creates;
``device``: a loop device, as root; ``tree``: a directory of small files and two large ones) an
uninterrupted restore is measured first (``whole``: bytes delivered), then ``--kills`` times: a restore
is started on a fresh target, killed (SIGKILL) once it has received a uniformly random share (5–95%) of
what the uninterrupted restore received, and run again to completion; the result is checked byte for
byte. For each kill:

- ``first``: bytes the killed run received; ``again``: bytes the second run received;
- ``refetched``: ``first + again - whole``, what was fetched twice: as a share of ``whole``, and of what
  the first run had left (``whole - first``, the target's measure: at most 5%).

The agent's resume (a killed agent process, the next one keeping what it wrote) is tested, not timed
here: tests/test_agent_process.py. Writes ``bench/results/resume.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.settings import MiB
from bench.measure import cold, machine
from bench.peers import same_content
from bench.suite import ROOT, FerryRepo
from bench.workloads import Sizes, Workload, generate
from tests.support.link_proxy import LinkProxy
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket

RESULTS = Path(__file__).parent / "results"


class _Devices:
    """A fresh loop device of ``size`` bytes (over a new sparse file, so it reads as zeros) each time one
    is asked for; root only."""

    def __init__(self, size: int, work: Path) -> None:
        self.size, self.backing = size, work / "device.backing"
        self.device: Path | None = None

    def fresh(self) -> Path:
        self.close()
        self.backing.unlink(missing_ok=True)
        with self.backing.open("wb") as f:
            f.truncate(self.size)
        name = subprocess.run(
            ["losetup", "--find", "--show", str(self.backing)], check=True, capture_output=True, text=True
        )
        self.device = Path(name.stdout.strip())
        return self.device

    def close(self) -> None:
        if self.device is not None:
            subprocess.run(["losetup", "--detach", str(self.device)], check=False)
            self.device = None


def _same_device(w: Workload, device: Path) -> None:
    with w.source.open("rb") as a, device.open("rb") as b:
        left = w.size
        while left:
            n = min(left, 16 * MiB)
            if a.read(n) != b.read(n):
                raise AssertionError(
                    f"{device} differs from {w.source} within bytes {w.size - left}-{w.size - left + n}"
                )
            left -= n


class _Runner:
    def __init__(self, ferry: FerryRepo, proxy: LinkProxy, snapshot: str, log: Path) -> None:
        self.ferry, self.proxy, self.snapshot, self.log = ferry, proxy, snapshot, log

    def argv(self, target: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "agent", "--log-level", "warning", "restore", "--json"),
            *("--repo", f"s3://{self.ferry.bucket}/{self.ferry.prefix}"),
            *("--s3-endpoint", self.proxy.endpoint, "--s3-path-style", "--snapshot", self.snapshot, str(target)),
        ]

    def whole(self, target: Path) -> tuple[int, float]:
        """Bytes an uninterrupted restore receives, and its seconds."""
        before, started = self.proxy.delivered, time.monotonic()
        subprocess.run(self.argv(target), env=self.ferry.env, cwd=ROOT, check=True, capture_output=True)
        return self.proxy.delivered - before, time.monotonic() - started

    def killed(self, target: Path, after_bytes: int) -> int:
        """Bytes a restore received before it was killed, once it had received ``after_bytes``."""
        before = self.proxy.delivered
        with self.log.open("ab") as out:
            child = subprocess.Popen(self.argv(target), env=self.ferry.env, cwd=ROOT, stdout=out, stderr=out)
            deadline = time.monotonic() + 600
            while child.poll() is None and self.proxy.delivered - before < after_bytes:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)  # a benchmark's poll of a counter in another thread, not a test's sync
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.wait()
        self._settled()
        return self.proxy.delivered - before

    def _settled(self) -> None:
        """Wait until the proxy has stopped sending to the killed client's sockets (it goes on until it
        finds them closed), so those bytes are the killed run's and not counted in the next one's."""
        last, stable_since, deadline = self.proxy.delivered, time.monotonic(), time.monotonic() + 10
        while time.monotonic() - stable_since < 0.3 and time.monotonic() < deadline:
            time.sleep(0.01)  # a benchmark's poll of a counter in another thread, not a test's sync
            if self.proxy.delivered != last:
                last, stable_since = self.proxy.delivered, time.monotonic()

    def again(self, target: Path) -> tuple[int, dict[str, Any]]:
        before = self.proxy.delivered
        done = subprocess.run(self.argv(target), env=self.ferry.env, cwd=ROOT, check=True, capture_output=True)
        return self.proxy.delivered - before, json.loads(done.stdout)


def _measure(
    runner: _Runner, w: Workload, fresh: Callable[[], Path], kills: int, rng: random.Random, log: Callable[[str], None]
) -> dict[str, Any]:
    cold()
    whole, seconds = runner.whole(fresh())
    rows = []
    for _ in range(kills):
        target = fresh()
        cold()
        share = rng.uniform(0.05, 0.95)
        first = runner.killed(target, int(share * whole))
        again, result = runner.again(target)
        if target.is_block_device():
            _same_device(w, target)
        else:
            same_content(w, target)
        refetched = max(0, first + again - whole)
        left = max(1, whole - first)
        rows.append(
            {
                "kill_at_share_of_bytes": share,
                "first_bytes": first,
                "again_bytes": again,
                "kept_bytes": result["kept_bytes"],
                "checked_bytes": result["checked_bytes"],
                "refetched_share_of_whole": refetched / whole,
                "refetched_share_of_left": refetched / left,
            }
        )
        log(
            f"  {w.name:6} killed after {share:4.0%}: first {first / MiB:7.1f} MiB, again {again / MiB:7.1f} MiB, "
            f"kept {result['kept_bytes'] / MiB:7.1f} MiB, refetched {refetched / whole:6.2%} of whole, "
            f"{refetched / left:6.2%} of what was left"
        )
    return {
        "whole_bytes": whole,
        "whole_seconds": seconds,
        "kills": rows,
        "median_refetched_share_of_whole": statistics.median(r["refetched_share_of_whole"] for r in rows),
    }


def run(
    work: Path, sizes: Sizes, kills: int, targets: tuple[str, ...], log: Callable[[str], None] = print
) -> dict[str, Any]:
    started = time.time()
    names = tuple(dict.fromkeys("tree" if t == "tree" else "block" for t in targets))
    workloads = {w.name: w for w in generate(work, sizes, names)}
    server = SeaweedServer(work / "seaweedfs").start()
    proxy = LinkProxy(int(server.endpoint.rsplit(":", 1)[1])).start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    rng = random.Random(13)
    result: dict[str, Any] = {"machine": machine(), "kills": kills, "targets": {}}
    out = work / "out"
    try:
        ferry = FerryRepo(server.endpoint, asyncio.run(make_bucket(server)), work, env)
        for w in workloads.values():
            ferry.snapshot(w)
        for kind in targets:
            w = workloads["tree" if kind == "tree" else "block"]
            runner = _Runner(ferry, proxy, ferry.snapshots[w.name], work / "ferry-resume.log")
            log(f"{kind}: {w.size / 1e9:.2f} GB, {kills} kills")

            def fresh(kind: str = kind, w: Workload = w) -> Path:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                return out / ("restored.img" if kind == "image" else "tree")

            if kind == "device":
                if os.geteuid() != 0 or shutil.which("losetup") is None:
                    log("  skipped: a loop device needs root and losetup")
                    continue
                devices = _Devices(w.size, work)
                try:
                    result["targets"][kind] = _measure(runner, w, devices.fresh, kills, rng, log)
                finally:
                    devices.close()
            else:
                result["targets"][kind] = _measure(runner, w, fresh, kills, rng, log)
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(out, ignore_errors=True)
    result["seconds"] = time.time() - started
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=7)
    p.add_argument("--size-mib", type=int, default=1024, help="the block image (default 1024)")
    p.add_argument("--tree-files", type=int, default=20_000)
    p.add_argument("--targets", default="image,device,tree")
    p.add_argument("--smoke", action="store_true", help="tiny data, for checking the benchmark works")
    args = p.parse_args()
    sizes = Sizes.volume(args.smoke, args.size_mib, args.tree_files)
    work = Path(tempfile.mkdtemp(prefix="ferry-resume-", dir="/var/tmp"))
    try:
        result = run(work, sizes, args.kills, tuple(t for t in args.targets.split(",") if t))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["command"] = "python -m bench.resume " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    name = "resume-smoke.json" if args.smoke else "resume.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
