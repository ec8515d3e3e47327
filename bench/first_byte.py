"""First byte: how soon after a DataDownload appears does ``ferry agent`` put restored data on the volume?

The issue's target: the first restored byte lands at most 1 s after the DataDownload appears, with the
agent idle and the volume ready. This measures, per DataDownload, from its creation to

    InProgress   the agent's InProgress write is stored by the API server;
    first byte   restored data is visible on the target volume;
    Completed    the agent's Completed write is stored by the API server.

    .venv/bin/python -m bench.first_byte [--runs 7] [--image-mib 256] [--mode auto|block|filesystem]

Set-up (not timed): a SeaweedFS S3 server on 127.0.0.1 and a bucket; a mixed image (random, text, binary
and zero runs, ``bench.workloads.write_mixed_file``; its first 64 KiB are made data so that the first
range's first write shows) snapshotted into the repository of namespace ``app``; the tests' strict
Kubernetes API server with Velero's CRDs, hosted in this process's event loop; a BackupStorageLocation
with Secret credentials; ``ferry agent`` as a separate process (``python -m agent agent``, as the
DaemonSet runs it: JSON logs, defaults but ``--progress-interval``), ready once ``/readyz`` answers 200.
The agent then stays running and idle between runs; a run starts only once the previous DataDownload is
Completed and its Completed Event recorded (the agent's last act for it).

Per run: a fresh target volume that is ready before the DataDownload exists (PV, bound PVC, a running pod
on the node mounting it, the kubelet's layout in place: ``Cluster.add_volume``), then

* ``t0`` = just before the DataDownload is created (``Cluster.create_dd``, a write into the API server's
  store; the agent's watch sees it like any creation);
* phases: the API server's store is wrapped to note when each resourceVersion is committed; each phase
  (and the first ``status.progress``) is dated by the first stored version of the object showing it;
* first byte: a probe process (``--probe``, real-time priority when allowed, so that its polls keep time
  while the restore saturates the CPUs) maps the target read-only (``MAP_SHARED``: the page cache the
  agent's writes go to, or are invalidated in for direct I/O) and every ``POLL_S`` (1 ms) reads one byte
  per MiB of the source: the first non-zero byte of each MiB. The target starts as zeros, so the first
  poll that finds one of those bytes non-zero is the first restored byte. That poll's time is reported;
  the restored byte landed after the poll before it, whose lead is reported as the resolution
  (``last_poll_interval_before_first_byte_ms``: about 1-3 ms, more when the page being read is being
  written or read back through the loop device);
* afterwards (not timed) the target is compared with the source byte for byte.

Modes: ``block`` (the main one; needs root) restores a block snapshot onto a fresh loop device over a
sparse file, the agent finding it as a Block-mode CSI volume; ``filesystem`` restores a snapshot of a
directory holding one file of the image onto a Filesystem-mode volume, probing that file. ``auto``: block
when root and ``losetup`` are available.

Breakdown: the API server's request handler is wrapped to time every request the agent makes, and the
agent's JSON log lines about the DataDownload (millisecond timestamps) are kept, so each run splits into
(``SEGMENTS``): watch delivery until the agent's first request; the volume lookup and the Accepted
write; the Accepted Event and the Prepared write; the volume lookup again, the BackupStorageLocation and
its Secret and the InProgress write; the Started Event; opening storage, reading the manifest and
planning (until the first progress write, sent as soon as the total is known); opening the target,
zeroing holes and the first range's fetch, decode and write (until the first byte); the rest.

Writes bench/results/first-byte.json (every run with its API requests and agent log lines, the medians,
the machine, the commit) and prints a summary. Every wait is bounded (``RUN_TIMEOUT_S``, ``STEP_TIMEOUT_S``);
the agent, the probe, the API server, SeaweedFS and the loop devices are stopped and removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mmap
import os
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agent.backup.writer import create_snapshot
from agent.repo.repository import Repository
from agent.settings import MiB, SnapshotSettings
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix
from bench.measure import machine
from bench.workloads import write_mixed_file
from tests.support.cluster import NS, Cluster
from tests.support.kube import KubeError, KubeServer, velero_crds
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
NODE = "bench-node"
SOURCE_NS = "app"
"""The snapshot's namespace: its repository is s3://<bucket>/velero/ferry/app."""
TARGET_NS = "bench"
"""Where the target PVCs and their pods live."""
BSL_PREFIX = "velero"
POLL_S = 0.001
"""The first-byte probe's poll interval (measurement resolution)."""
WINDOW = MiB
"""The probe reads one byte per WINDOW of the source (its first non-zero byte)."""
PROGRESS_INTERVAL_S = 0.1
RUN_TIMEOUT_S = 300.0
"""Bound on one run (creation to Completed)."""
STEP_TIMEOUT_S = 60.0
"""Bound on every other wait (agent readiness, the Completed Event, losetup, stopping the agent)."""
TERMINAL = ("Completed", "Failed", "Canceled")


# --- the workload ------------------------------------------------------------------------------------------


def make_image(path: Path, size: int, seed: int) -> None:
    """A mixed image whose first 64 KiB are random data (so chunk 0 is data, never a hole)."""
    write_mixed_file(path, size, seed)
    with path.open("r+b") as f:
        f.write(random.Random(seed).randbytes(min(size, 64 * 1024)))


def sample_offsets(path: Path, window: int = WINDOW) -> list[int]:
    """Per ``window`` bytes of the source, the offset of its first non-zero byte (all-zero windows: none)."""
    offsets: list[int] = []
    base = 0
    with path.open("rb") as f:
        while block := f.read(window):
            lead = len(block) - len(block.lstrip(b"\0"))
            if lead < len(block):
                offsets.append(base + lead)
            base += len(block)
    return offsets


def same_content(source: Path, target: Path | str, size: int) -> bool:
    """Whether the first ``size`` bytes of ``target`` equal ``source``."""
    with source.open("rb") as a, open(target, "rb") as b:
        left = size
        while left > 0:
            x = a.read(min(8 * MiB, left))
            if not x or b.read(len(x)) != x:
                return False
            left -= len(x)
    return True


async def snapshot(server: SeaweedServer, bucket: str, source: Path) -> dict[str, Any]:
    prefix = velero_repository_prefix(BSL_PREFIX, SOURCE_NS)
    storage = await S3Storage.open(s3_settings_for(server), bucket, prefix)
    async with storage:
        result = await create_snapshot(Repository(storage), str(source), SnapshotSettings())
    return {
        "snapshot_id": result.snapshot_id,
        "mode": result.mode,
        "size": result.size,
        "stored_bytes": result.new_stored_bytes,
        "hole_bytes": result.hole_bytes,
        "packs": result.packs,
    }


# --- the first-byte probe ----------------------------------------------------------------------------------


def _realtime() -> bool:
    """Give this process a real-time (SCHED_FIFO) priority if allowed, so its polls run on time even
    when the restore keeps every CPU busy."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        return False
    return True


class _Lines:
    """Lines from a file descriptor, with a timed wait for the next one (select: also the poll's sleep)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def ready(self, timeout_s: float) -> bool:
        return b"\n" in self.buffer or bool(select.select([self.fd], [], [], timeout_s)[0])

    def read(self) -> str | None:
        """The next line, or None at end of input."""
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _map_target(path: str, size: int) -> mmap.mmap | None:
    """A read-only shared mapping of the target, or None while it is missing or not yet sized."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if os.lseek(fd, 0, os.SEEK_END) < size:  # lseek: a block device's fstat size is 0
            return None
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)


def _watch_target(command: dict[str, Any], lines: _Lines) -> dict[str, Any]:
    """Poll one target until restored data shows at one of its offsets, ``stop`` arrives or the time is up."""
    path, size, offsets = str(command["path"]), int(command["size"]), [int(x) for x in command["offsets"]]
    deadline = time.perf_counter() + float(command["timeout_s"])
    view: mmap.mmap | None = None
    last: float | None = None
    polls, gap_max = 0, 0.0
    try:
        while True:
            if view is None:
                view = _map_target(path, size)
            hit = next((x for x in offsets if view[x]), None) if view is not None else None
            now = time.perf_counter()
            polls += 1
            if last is not None:
                gap_max = max(gap_max, now - last)
            if hit is not None:
                if last is None:
                    return {"error": f"{path} is not fresh: it holds data at {hit} before the restore"}
                return {"seen": now, "clear": last, "offset": hit, "polls": polls, "gap_max_s": gap_max}
            if last is None:
                print(json.dumps({"armed": True}), flush=True)  # the first poll found a fresh target
            if now > deadline:
                return {"error": f"no restored byte seen on {path} within {command['timeout_s']} s"}
            last = now
            # The poll interval (measurement resolution), cut short by a command.
            if lines.ready(POLL_S) and lines.read() in (None, "stop"):
                return {"stopped": True, "polls": polls}
    finally:
        if view is not None:
            view.close()


def probe_main() -> int:
    """The probe process (``--probe``): one JSON command per line on stdin (a target to watch; ``stop``
    while watching ends the watch; ``stop`` while idle is ignored), one JSON answer per line on stdout."""
    lines = _Lines(sys.stdin.fileno())
    print(json.dumps({"realtime": _realtime()}), flush=True)
    while (line := lines.read()) is not None:
        if line.strip() in ("", "stop"):
            continue
        try:
            answer = _watch_target(json.loads(line), lines)
        except Exception as e:
            answer = {"error": f"probe failed: {type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)
    return 0


class Probe:
    """The first-byte probe, a separate process shared by every run (see the module docstring)."""

    def __init__(self, process: asyncio.subprocess.Process, realtime: bool) -> None:
        self.process = process
        self.realtime = realtime

    @classmethod
    async def start(cls) -> Probe:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.first_byte",
            "--probe",
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        probe = cls(process, False)
        try:
            probe.realtime = bool((await probe.answer(STEP_TIMEOUT_S))["realtime"])
        except BaseException:
            await probe.close()
            raise
        return probe

    async def answer(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"the probe process exited ({await self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, command: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((command if isinstance(command, str) else json.dumps(command)).encode() + b"\n")

    async def arm(self, path: str, size: int, offsets: list[int], timeout_s: float) -> None:
        """Start watching ``path``; returns once the probe polls it."""
        self.send({"path": path, "size": size, "offsets": offsets, "timeout_s": timeout_s})
        answer = await self.answer(STEP_TIMEOUT_S)
        if "armed" not in answer:
            raise RuntimeError(f"the probe did not start: {answer}")

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT_S)
        except TimeoutError:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT_S)


# --- the API server: request timing and waiting ------------------------------------------------------------


@dataclass
class ApiCall:
    start: float
    end: float
    method: str
    path: str
    query: dict[str, str]
    status: int

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")

    def label(self) -> str:
        parts = self.path.strip("/").split("/")
        kind = next((p for p in reversed(parts) if p in _KINDS), parts[-1])
        name = parts[-1] if parts[-1] != kind else ""
        if kind == "status":
            kind, name = parts[-3], parts[-2] + "/status"
        verb = {"GET": "get" if name else "list", "POST": "create", "PATCH": "patch", "PUT": "update"}
        return f"{verb.get(self.method, self.method.lower())} {kind}" + (f" {name}" if name else "")


_KINDS = {
    "datadownloads",
    "backupstoragelocations",
    "secrets",
    "pods",
    "persistentvolumeclaims",
    "persistentvolumes",
    "events",
    "status",
}


def time_requests(kube: KubeServer) -> list[ApiCall]:
    """Wrap the server's request handler (this process's instance only) to time every request."""
    calls: list[ApiCall] = []
    serve = kube.api.serve

    async def timed(request: web.Request, on_stream: Callable[[int], None]) -> web.StreamResponse:
        started = time.perf_counter()
        status = 0
        try:
            response = await serve(request, on_stream)
            status = response.status
            return response
        except KubeError as e:  # the server's middleware turns it into the answer
            status = e.code
            raise
        finally:
            calls.append(
                ApiCall(started, time.perf_counter(), request.method, request.path, dict(request.query), status)
            )

    kube.api.serve = timed  # type: ignore[method-assign]
    return calls


async def until(kube: KubeServer, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Return once ``ready()`` holds, re-checked on every write to the store."""
    try:
        async with asyncio.timeout(timeout_s):
            while not ready():
                await kube.store.next_change().wait()
    except TimeoutError:
        raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}") from None


def time_commits(kube: KubeServer) -> dict[int, float]:
    """Wrap the store's change signal (this process's instance only), which every write calls as it
    commits, to record when each resourceVersion was committed."""
    commits: dict[int, float] = {}
    store = kube.store
    signal = store.signal

    def timed() -> None:
        commits.setdefault(store.resource_version, time.perf_counter())
        signal()

    store.signal = timed  # type: ignore[method-assign]
    return commits


def phase_marks(kube: KubeServer, name: str, commits: dict[int, float]) -> dict[str, float]:
    """When each phase, and the first progress figures, of DataDownload ``name`` were first committed
    (perf_counter), from every stored version of it."""
    marks: dict[str, float] = {}
    for revision in kube.history("datadownloads", name, NS):
        if revision.deleted:
            continue
        at = commits[int(revision.object["metadata"]["resourceVersion"])]
        status = revision.object.get("status") or {}
        marks.setdefault(status.get("phase") or "New", at)
        progress = status.get("progress") or {}
        if "totalBytes" in progress:
            marks.setdefault("progress:total", at)
        if progress.get("bytesDone"):
            marks.setdefault("progress:bytes", at)
    return marks


# --- the agent process ------------------------------------------------------------------------------------


async def start_agent(cluster: Cluster, log: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "AWS_")) and k != "KUBECONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    args = ["--node-name", NODE, "--kubeconfig", str(cluster.kubeconfig), "--kubelet-root", str(cluster.kubelet_root)]
    args += ["--http-address", "127.0.0.1", "--http-port", "0", "--log-format", "json"]
    args += ["--progress-interval", str(PROGRESS_INTERVAL_S), "--credentials-file", str(log.parent / "none")]
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "agent", *args, cwd=ROOT, env=env, stdout=out, stderr=out
        )


def log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for text in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(text)
            if isinstance(line, dict):
                lines.append(line)
    return lines


def log_time(line: dict[str, Any]) -> float:
    """A JSON log line's time (UTC, millisecond resolution) as a Unix time."""
    return datetime.strptime(str(line["time"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


async def wait_ready(agent: asyncio.subprocess.Process, kube: KubeServer, log: Path, timeout_s: float) -> int:
    """The agent's HTTP port once /readyz answers 200 (its DataDownload watch is open)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    port: int | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            if agent.returncode is not None:
                raise RuntimeError(f"the agent exited ({agent.returncode}): {log.read_text()[-2000:]}")
            if port is None:
                port = next((int(x["port"]) for x in log_lines(log) if "port" in x and "healthz" in x["msg"]), None)
            if port is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200 and kube.watch_count("datadownloads") >= 1:
                            return port
            if loop.time() > deadline:
                raise RuntimeError(f"the agent was not ready within {timeout_s} s: {log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)  # polling another process's readiness, bounded by the deadline


async def stop_agent(agent: asyncio.subprocess.Process) -> None:
    if agent.returncode is not None:
        return
    agent.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(agent.wait(), STEP_TIMEOUT_S)
    except TimeoutError:
        agent.kill()
        await asyncio.wait_for(agent.wait(), STEP_TIMEOUT_S)


# --- target volumes ---------------------------------------------------------------------------------------


def losetup(*args: str) -> str:
    done = subprocess.run(["losetup", *args], check=True, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    return done.stdout.strip()


@dataclass
class Target:
    pvc: str
    probe_path: str
    """The device, or the restored file inside the mounted volume."""
    device: str | None = None
    backing: Path | None = None
    pod_dir: Path | None = None


@dataclass
class Bench:
    kube: KubeServer
    cluster: Cluster
    work: Path
    mode: str
    image: Path
    size: int
    snapshot_id: str
    offsets: list[int]
    calls: list[ApiCall]
    commits: dict[int, float]
    probe: Probe
    log: Path
    targets: list[Target] = field(default_factory=list)

    async def new_target(self, i: int) -> Target:
        pvc = f"disk-{i}"
        if self.mode == "block":
            backing = self.work / f"volume-{i}.img"
            with backing.open("wb") as f:
                f.truncate(self.size)
            device = await asyncio.to_thread(losetup, "--find", "--show", str(backing))
            target = Target(pvc, device, device, backing)
            self.targets.append(target)
            [link] = self.cluster.add_volume(TARGET_NS, pvc, [NODE], mode="Block", device=device)
        else:
            target = Target(pvc, "")
            self.targets.append(target)
            [link] = self.cluster.add_volume(TARGET_NS, pvc, [NODE])
            target.probe_path = str(link / self.image.name)
        pod = self.kube.get("pods", f"{pvc}-{NODE}", TARGET_NS)
        assert pod is not None
        target.pod_dir = self.cluster.kubelet_root / "pods" / pod["metadata"]["uid"]
        return target

    async def remove_target(self, target: Target) -> None:
        claim = self.kube.get("persistentvolumeclaims", target.pvc, TARGET_NS)
        if claim is not None:
            self.kube.delete("pods", f"{target.pvc}-{NODE}", TARGET_NS)
            self.kube.delete("persistentvolumeclaims", target.pvc, TARGET_NS)
            self.kube.delete("persistentvolumes", claim["spec"]["volumeName"])
        if target.device is not None:
            await asyncio.to_thread(losetup, "--detach", target.device)
            target.device = None
        if target.backing is not None:
            target.backing.unlink(missing_ok=True)
        if target.pod_dir is not None:
            shutil.rmtree(target.pod_dir, ignore_errors=True)
        self.targets.remove(target)


# --- one run -----------------------------------------------------------------------------------------------


async def one_run(b: Bench, i: int) -> dict[str, Any]:
    name = f"first-byte-{i}"
    target = await b.new_target(i)
    await b.probe.arm(target.probe_path, b.size, b.offsets, RUN_TIMEOUT_S)
    seen = asyncio.create_task(b.probe.answer(RUN_TIMEOUT_S + STEP_TIMEOUT_S))
    try:
        first_call = len(b.calls)
        log_from = len(log_lines(b.log))
        wall0 = time.time()
        t0 = time.perf_counter()
        b.cluster.create_dd(
            name, b.snapshot_id, target.pvc, target_namespace=TARGET_NS, source_namespace=SOURCE_NS, timeout="10m0s"
        )
        await until(
            b.kube,
            lambda: ((b.kube.get("datadownloads", name, NS) or {}).get("status") or {}).get("phase") in TERMINAL,
            RUN_TIMEOUT_S,
            f"DataDownload {name} to end",
        )
        status = (b.kube.get("datadownloads", name, NS) or {}).get("status") or {}
        if status.get("phase") != "Completed":
            raise RuntimeError(f"{name} ended {status.get('phase')}: {status.get('message')}")
        if not seen.done():
            b.probe.send("stop")
        probe = await asyncio.wait_for(seen, STEP_TIMEOUT_S)
    finally:
        if not seen.done():
            b.probe.send("stop")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(seen, STEP_TIMEOUT_S)
    if "seen" not in probe:
        raise RuntimeError(f"{name} Completed but the probe saw no restored byte: {probe}")
    # The agent's last act for a DataDownload is its Completed Event; after it the agent is idle again.
    await until(
        b.kube,
        lambda: any(e["reason"] == "Completed" for e in b.cluster.events_for(name)),
        STEP_TIMEOUT_S,
        f"the Completed Event of {name}",
    )
    idle_at = time.perf_counter()
    if not await asyncio.to_thread(same_content, b.image, target.probe_path, b.size):
        raise RuntimeError(f"{name}: the restored volume differs from the source")
    await b.remove_target(target)
    marks = phase_marks(b.kube, name, b.commits)

    def ms(t: float) -> float:
        return round((t - t0) * 1000, 2)

    calls = [c for c in b.calls[first_call:] if not c.watch and t0 <= c.start <= idle_at]
    where = [f"{NS}/{name}", target.probe_path] + ([str(target.pod_dir)] if target.pod_dir else [])
    logs = [
        {"ms": round((log_time(x) - wall0) * 1000, 1), "msg": x["msg"]}
        for x in log_lines(b.log)[log_from:]
        if x.get("datadownload") == where[0] or any(w in str(x.get("msg", "")) for w in where[1:])
    ]
    result: dict[str, Any] = {
        "name": name,
        "first_byte_ms": ms(probe["seen"]),
        "first_byte_previous_poll_ms": ms(probe["clear"]),
        "first_byte_offset": probe["offset"],
        "in_progress_ms": ms(marks["InProgress"]),
        "completed_ms": ms(marks["Completed"]),
        "phases_ms": {k: ms(v) for k, v in marks.items() if k != "New"},
        "probe_polls": probe["polls"],
        "probe_gap_max_ms": round(probe["gap_max_s"] * 1000, 2),
        "api_calls": [
            {"ms": ms(c.start), "took_ms": round((c.end - c.start) * 1000, 2), "call": c.label(), "status": c.status}
            for c in calls
        ],
        "agent_log": logs,
    }
    result["breakdown_ms"] = breakdown(result, calls, t0)
    return result


SEGMENTS = (
    ("watch delivery, until the agent's first request", "created", "first_request"),
    ("volume lookup and the Accepted write", "first_request", "Accepted"),
    ("Accepted Event and the Prepared write", "Accepted", "Prepared"),
    ("volume lookup again, BSL, Secret, the InProgress write", "Prepared", "InProgress"),
    ("the Started Event", "InProgress", "started_event"),
    ("storage client, manifest, plan (until the first progress write)", "started_event", "planned"),
    ("target open, holes, first range fetch/decode/write", "planned", "first_byte"),
    ("rest of the transfer, flush, the Completed write", "first_byte", "Completed"),
)


def breakdown(run: dict[str, Any], calls: list[ApiCall], t0: float) -> dict[str, float]:
    """The run's time split at the marks of SEGMENTS (ms), and the time spent in API requests before
    InProgress."""
    phases = run["phases_ms"]
    in_progress = phases["InProgress"]
    after = [c for c in calls if (c.start - t0) * 1000 >= in_progress]
    started = next((c for c in after if c.method == "POST" and c.path.endswith("/events")), None)
    planned = next((c for c in after if c.method == "PATCH" and "/datadownloads/" in c.path), None)
    marks: dict[str, float | None] = {
        "created": 0.0,
        "first_request": (calls[0].start - t0) * 1000 if calls else None,
        "Accepted": phases.get("Accepted"),
        "Prepared": phases.get("Prepared"),
        "InProgress": in_progress,
        "started_event": (started.end - t0) * 1000 if started else None,
        "planned": (planned.start - t0) * 1000 if planned else None,
        "first_byte": run["first_byte_ms"],
        "Completed": phases.get("Completed"),
    }
    out: dict[str, float] = {}
    for label, a, b in SEGMENTS:
        start, end = marks[a], marks[b]
        if start is not None and end is not None:
            out[label] = round(end - start, 2)
    before = [c for c in calls if (c.start - t0) * 1000 < in_progress]
    out["API requests before InProgress (count)"] = len(before)
    out["API requests before InProgress (ms, summed)"] = round(sum(c.end - c.start for c in before) * 1000, 2)
    return out


# --- the whole benchmark -----------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the agent's code differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        return done.stdout.strip()

    try:
        head, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "agent")
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"commit": head, "agent_modified": bool(changes)}


def pick_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "block" if os.geteuid() == 0 and shutil.which("losetup") else "filesystem"


@dataclass(frozen=True)
class Workload:
    image: Path
    size: int
    offsets: list[int]
    snapshot: dict[str, Any]


async def _bench(server: SeaweedServer, work: Path, runs: int, size: int, mode: str) -> dict[str, Any]:
    setup_started = time.perf_counter()
    bucket = await make_bucket(server)
    image = work / "source" / "volume.img"
    image.parent.mkdir()
    await asyncio.to_thread(make_image, image, size, 2026)
    offsets = await asyncio.to_thread(sample_offsets, image)
    snap = await snapshot(server, bucket, image if mode == "block" else image.parent)
    workload = Workload(image, size, offsets, snap)
    probe = await Probe.start()
    try:
        async with KubeServer(velero_crds()) as kube:
            calls = time_requests(kube)
            commits = time_commits(kube)
            kube.create("namespaces", {"metadata": {"name": NS}})
            kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
            cluster = Cluster(kube, work / "kubelet", kubeconfig, bucket, server.endpoint)
            cluster.kubelet_root.mkdir()
            cluster.add_credentials_secret()
            cluster.add_bsl(prefix=BSL_PREFIX, credential={"name": "ferry-credentials", "key": "cloud"})
            cluster.ensure_namespace(TARGET_NS)
            log = work / "agent.log"
            b = Bench(kube, cluster, work, mode, image, size, snap["snapshot_id"], offsets, calls, commits, probe, log)
            agent = await start_agent(cluster, log)
            try:
                await wait_ready(agent, kube, log, STEP_TIMEOUT_S)
                setup_s = time.perf_counter() - setup_started
                runs_started = time.perf_counter()
                results = []
                for i in range(runs):
                    results.append(await one_run(b, i))
                    print(
                        f"  run {i + 1}/{runs}: first byte {results[-1]['first_byte_ms']:.1f} ms, InProgress "
                        f"{results[-1]['in_progress_ms']:.1f} ms, Completed {results[-1]['completed_ms']:.1f} ms",
                        flush=True,
                    )
                runs_s = time.perf_counter() - runs_started
            finally:
                await stop_agent(agent)
                for target in list(b.targets):
                    with contextlib.suppress(Exception):
                        await b.remove_target(target)
            agent_problems = [x for x in log_lines(log) if x.get("level") in ("warning", "error")]
    finally:
        await probe.close()
    return report(mode, workload, results, probe.realtime, agent_problems, setup_s, runs_s)


def report(
    mode: str,
    workload: Workload,
    results: list[dict[str, Any]],
    realtime: bool,
    agent_problems: list[dict[str, Any]],
    setup_s: float,
    runs_s: float,
) -> dict[str, Any]:
    size, snap = workload.size, workload.snapshot
    labels = [label for label, _, _ in SEGMENTS] + [
        "API requests before InProgress (count)",
        "API requests before InProgress (ms, summed)",
    ]
    return {
        "target": "first restored byte <= 1000 ms after the DataDownload appears (agent idle, volume ready)",
        "mode": mode,
        "workload": f"{size // MiB} MiB mixed image (random/text/binary/zero runs)"
        + (" as a block volume (loop device)" if mode == "block" else " as one file of a filesystem volume"),
        "snapshot": snap,
        "runs": len(results),
        "first_byte_ms": _spread([r["first_byte_ms"] for r in results]),
        "in_progress_ms": _spread([r["in_progress_ms"] for r in results]),
        "completed_ms": _spread([r["completed_ms"] for r in results]),
        "breakdown_median_ms": {
            label: round(statistics.median(r["breakdown_ms"][label] for r in results), 2)
            for label in labels
            if all(label in r["breakdown_ms"] for r in results)
        },
        "resolution": {
            "poll_interval_ms": POLL_S * 1000,
            "probe_realtime": realtime,
            "probe_bytes_per_poll": len(workload.offsets),
            "last_poll_interval_before_first_byte_ms": _spread(
                [r["first_byte_ms"] - r["first_byte_previous_poll_ms"] for r in results]
            ),
            "probe_gap_max_ms": max(r["probe_gap_max_ms"] for r in results),
            "phases": "commit instants in the API server's store",
            "agent_log": "1 ms (JSON log timestamps, wall clock)",
        },
        "agent": {
            "command": "python -m agent agent (JSON logs, defaults but --progress-interval)",
            "progress_interval_s": PROGRESS_INTERVAL_S,
            "warnings_and_errors_logged": agent_problems,
        },
        "git": git_state(),
        "machine": {**machine(), "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()]},
        "seconds": {"setup": round(setup_s, 1), "runs": round(runs_s, 1)},
        "per_run": results,
    }


def run(runs: int, image_mib: int, mode: str = "auto") -> dict[str, Any]:
    """Measure ``runs`` DataDownloads of an ``image_mib`` MiB image (see the module docstring)."""
    if runs < 1 or image_mib < 1:
        raise ValueError("runs and image_mib must be at least 1")
    chosen = pick_mode(mode)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ferry-first-byte-") as tmp:
        work = Path(tmp)
        server = SeaweedServer(work / "seaweedfs").start()
        try:
            result = asyncio.run(_bench(server, work, runs, image_mib * MiB, chosen))
        finally:
            server.stop()
    result["seconds"]["total"] = round(time.perf_counter() - started, 1)
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['workload']}, {result['runs']} runs, {result['machine']['cpus']} CPUs",
        f"{'':24}{'median':>10}{'min':>10}{'max':>10}   (ms after the DataDownload is created)",
    ]
    for key, label in (
        ("first_byte_ms", "first restored byte"),
        ("in_progress_ms", "InProgress"),
        ("completed_ms", "Completed"),
    ):
        s = result[key]
        lines.append(f"{label:24}{s['median']:>10.1f}{s['min']:>10.1f}{s['max']:>10.1f}")
    late = sum(1 for r in result["per_run"] if r["first_byte_ms"] > 1000)
    verdict = f"met in all {result['runs']} runs" if not late else f"NOT met in {late} of {result['runs']} runs"
    lines.append(f"target (first byte <= 1000 ms): {verdict}")
    lines.append("where the time goes (medians, ms):")
    lines += [f"  {v:>9.1f}  {k}" for k, v in result["breakdown_median_ms"].items()]
    res = result["resolution"]
    last = res["last_poll_interval_before_first_byte_ms"]
    lines.append(
        f"probe: every {res['poll_interval_ms']:g} ms{' (real-time priority)' if res['probe_realtime'] else ''}; "
        f"the poll before the first byte was {last['median']:.2f} ms earlier (max {last['max']:.2f} ms)"
    )
    took = result["seconds"]
    lines.append(f"took {took['total']} s (setup {took['setup']} s, runs {took['runs']} s)")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:] == ["--probe"]:
        sys.exit(probe_main())
    parser = argparse.ArgumentParser(description="Latency from a DataDownload's creation to its first restored byte.")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--image-mib", type=int, default=256)
    parser.add_argument("--mode", choices=("auto", "block", "filesystem"), default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS / "first-byte.json")
    args = parser.parse_args()
    result = run(args.runs, args.image_mib, args.mode)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
