"""The benchmark's smoke run: every part of ``make bench`` on tiny data, so the benchmark cannot rot.
It checks that each tool restores every workload correctly (the suite compares each first restore with
its source) and that the report renders; it asserts nothing about speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import report, suite
from bench.workloads import Sizes


def test_the_restore_benchmark_runs_every_tool_on_every_workload_and_reports(tmp_path: Path) -> None:
    lines: list[str] = []
    result = suite.run(tmp_path / "work", Sizes.smoke(), runs=1, names=("block", "tree", "file"), log=lines.append)
    assert set(result["workloads"]) == {"block", "tree", "file"}
    for name, w in result["workloads"].items():
        assert set(w["tools"]) == set(suite.TOOLS), name
        for tool, d in w["tools"].items():
            p = d["process"]
            assert p["GBps"] > 0
            assert p["cpu_s_per_GB"] > 0
            assert p["peak_rss_MiB"] > 1, (name, tool)
            assert p["output_bytes"] == w["bytes"]
        assert all(math.isfinite(v) and v > 0 for v in w["ratios"].values()), w["ratios"]
        assert set(result["backup"][name]) == {"ferry", "restic", "casync"}
    assert result["rss_by_volume_size"]["large_bytes"] == 4 * result["rss_by_volume_size"]["small_bytes"]

    results = tmp_path / "results"
    results.mkdir()
    (results / "restore.json").write_text(json.dumps(result))
    rendered = "\n".join(report.render(results))
    assert "| Ferry |" in rendered
    assert "| restic |" in rendered
    assert "| casync |" in rendered
    assert "Ferry ÷ restic" in rendered
    assert (results / "throughput.png").read_bytes().startswith(b"\x89PNG")


async def test_the_velero_flow_benchmark_runs_both_ways() -> None:
    """bench.velero_flow on tiny data: both ways restore, and every phase is dated in order."""
    from bench import velero_flow  # noqa: PLC0415 - imports the tests' simulated cluster

    result = await velero_flow.run(runs=1, size_mib=1, poll=0.05)
    for way in ("velero", "in place"):
        [marks] = result["runs"][way]
        order = [m for m in velero_flow.MARKS if m in marks]
        assert [marks[m] for m in order] == sorted(marks[m] for m in order), (way, marks)
    assert "data restored" in result["runs"]["velero"][0]
    assert "velero" in velero_flow.table(result)
