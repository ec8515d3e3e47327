"""Running a tool as a child process and measuring it: wall time, CPU seconds (user + system, the child
and every descendant it waited for, from the kernel's accounting: ``wait4``) and peak RSS.

Peak RSS is not taken from ``wait4``: Linux starts a child's ``ru_maxrss`` at the RSS of the process that
forked it (the benchmark itself), so small tools would look as large as the harness. It is sampled from
``/proc`` while the tool runs: the tool's own high-water mark (``VmHWM``, every 10 ms), or the largest sum
of the resident sets of it and its descendants (casync's HTTP helper, every 100 ms), whichever is larger.
The exit is seen at once (a pidfd), so wall time does not depend on the sampling.

    m = run_measured(["restic", "restore", ...], env=..., output_bytes=size)
    m.wall_s, m.cpu_s, m.peak_rss_bytes, m.gbps, m.cpu_s_per_gb
"""

from __future__ import annotations

import os
import platform
import select
import signal
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SAMPLE_S = 0.01
"""How often a running tool's memory is sampled (its children every tenth time)."""


class ToolFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Measured:
    wall_s: float
    cpu_s: float
    """User + system CPU seconds of the process and its reaped descendants."""
    peak_rss_bytes: int
    """Largest resident set of the process (or of any reaped descendant: the kernel reports the max)."""
    output_bytes: int
    """Bytes of restored (or, for a backup, read) data the run accounts for."""

    @property
    def gbps(self) -> float:
        return self.output_bytes / self.wall_s / 1e9

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_s / (self.output_bytes / 1e9)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "GBps": self.gbps, "cpu_s_per_GB": self.cpu_s_per_gb}


def run_measured(
    argv: Sequence[str],
    output_bytes: int,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdin: str | Path | None = None,
    log: Path | None = None,
    timeout_s: float = 3600.0,
) -> Measured:
    """Run ``argv`` to completion and measure it; raise ToolFailed (with the tail of its output) if it
    exits non-zero or runs longer than ``timeout_s``. Output goes to ``log`` (or is discarded)."""
    out = log.open("wb") if log is not None else open(os.devnull, "wb")  # noqa: SIM115
    inp = open(stdin, "rb") if stdin is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=inp,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        deadline = t0 + timeout_s
        rss = _PeakRss(proc.pid)
        pidfd = os.pidfd_open(proc.pid)
        try:
            # Wake when the child exits (its pidfd turns readable) or every SAMPLE_S to sample its memory.
            while not select.select([pidfd], [], [], SAMPLE_S)[0]:
                rss.sample()
                if time.perf_counter() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)  # the tool and any helper it started
                    os.wait4(proc.pid, 0)
                    raise ToolFailed(f"{argv[0]} ran longer than {timeout_s} s")
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            os.close(pidfd)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        out.close()
        if inp is not subprocess.DEVNULL:
            inp.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
        raise ToolFailed(f"{' '.join(argv[:3])} exited with {proc.returncode}: {tail}")
    return Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=rss.peak,
        output_bytes=output_bytes,
    )


class _PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._samples = 0
        self._own_cmdline = Path("/proc/self/cmdline").read_bytes()
        self._exec_seen = False

    def sample(self) -> None:
        if not self._exec_seen:  # until exec, the child's /proc shows the harness's own memory
            try:
                self._exec_seen = Path(f"/proc/{self.pid}/cmdline").read_bytes() != self._own_cmdline
            except OSError:
                return
            if not self._exec_seen:
                return
        own = _status_kib(self.pid, "VmHWM")
        self._samples += 1
        total = sum(_status_kib(p, "VmRSS") for p in _descendants(self.pid)) if self._samples % 10 == 1 else 0
        self.peak = max(self.peak, 1024 * max(total, own))


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cold() -> None:
    """Write out dirty pages and (as root) drop the page cache, so the next tool starts cold."""
    os.sync()
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def machine() -> dict[str, Any]:
    """The machine a result was measured on, for every result file."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_GiB": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def summary(runs: Sequence[Measured]) -> dict[str, Any]:
    """Medians over runs, with the spread (min, max) of throughput."""
    rates = [m.gbps for m in runs]
    return {
        "runs": [m.as_dict() for m in runs],
        "wall_s": statistics.median(m.wall_s for m in runs),
        "GBps": statistics.median(rates),
        "GBps_spread": [min(rates), max(rates)],
        "cpu_s_per_GB": statistics.median(m.cpu_s_per_gb for m in runs),
        "peak_rss_MiB": statistics.median(m.peak_rss_bytes for m in runs) / 2**20,
        "output_bytes": runs[0].output_bytes,
    }
