"""The benchmark's smoke run: every part of ``make bench`` on tiny data, so the benchmark cannot rot.
It checks that each tool restores every workload correctly (the suite compares each first restore with
its source) and that the report renders; it asserts nothing about speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench import backup, lifecycle, link, report, resume, stages, suite
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


def test_the_backup_benchmark_measures_ferry_and_restic_first_and_incremental(tmp_path: Path) -> None:
    """bench.backup on tiny data: both tools back up every workload twice, each backup stores something
    (the change touches every chunk of tiny data), the DataUpload path backs each workload up once through
    the agent, the change is undone, and the report renders."""
    data = tmp_path / "work" / "data"
    lines: list[str] = []
    result = backup.run(
        tmp_path / "work", backup.smoke_sizes(), runs=1, names=("block", "file", "tree"), log=lines.append
    )
    assert set(result["workloads"]) == {"block", "file", "tree"}
    for name, w in result["workloads"].items():
        for tool in backup.TOOLS:
            first, incremental = (w["tools"][tool][phase] for phase in backup.PHASES)
            for d in (first, incremental):
                assert d["GBps"] > 0, (name, tool)
                assert d["cpu_s_per_GB"] > 0, (name, tool)
                assert d["peak_rss_MiB"] > 1, (name, tool)
                assert d["stored_bytes"] > 0, (name, tool)
        assert "timed_s" in w["tools"]["ferry"]["first"]
        upload = w["dataupload"]
        assert 0 < upload["transfer_s"] < upload["seconds"], name
        assert upload["marks"]["InProgress"] < upload["marks"]["uploaded"] <= upload["marks"]["Completed"], name
        assert upload["stored_bytes"] > 0, name
    # the change was undone: generating again finds the same data and leaves it
    image = data / "block.img"
    before = image.read_bytes()
    backup.generate(tmp_path / "work", backup.smoke_sizes(), ("block",))
    assert image.read_bytes() == before

    results = tmp_path / "results"
    results.mkdir()
    (results / "backup.json").write_text(json.dumps(result))
    rendered = "\n".join(report.render(results))
    assert "### Snapshot creation" in rendered
    assert "| block image, 0.02 GB | incremental | restic |" in rendered
    assert "| block image, 0.02 GB | first | Ferry DataUpload (agent, warm) |" in rendered


def test_the_lifecycle_benchmark_measures_encryption_and_prune(tmp_path: Path) -> None:
    lines: list[str] = []
    result = lifecycle.run(tmp_path / "work", 16 * 1024 * 1024, runs=1, days=3, keep=1, log=lines.append)
    enc = result["encryption"]
    for name in ("encrypted", "unencrypted"):
        assert enc[name]["process"]["GBps"] > 0, name
        assert enc[name]["inner"]["cpu_s_per_GB"] > 0, name
    assert math.isfinite(enc["cost"]["extra_cpu_s_per_GB"])
    prune = result["prune"]
    assert 0 < prune["stored_bytes_after"] < prune["stored_bytes_before"]
    assert prune["deleted_packs"] == prune["marked_packs"] > 0


def test_the_link_benchmark_runs_every_tool_over_loopback_and_a_slow_link(tmp_path: Path) -> None:
    """bench.link on tiny data: every tool restores (Ferry and restic checked byte for byte) over loopback
    and through the link proxy, and the report renders the table."""
    conditions = [link.CONDITIONS["loopback"], link.Condition("5ms-50MBps", 0.005, 50e6)]
    result = link.run(tmp_path / "work", Sizes.smoke(), runs=1, conditions=conditions, names=("block",), log=print)
    assert set(result["conditions"]) == {"loopback", "5ms-50MBps"}
    for c in result["conditions"].values():
        w = c["workloads"]["block"]
        assert set(w["tools"]) == set(link.TOOLS)
        assert all(math.isfinite(v) and v > 0 for v in w["ratios"].values()), w["ratios"]
    results = tmp_path / "results"
    results.mkdir()
    (results / "link.json").write_text(json.dumps(result))
    rendered = "\n".join(report.render(results))
    assert "| 5ms-50MBps |" in rendered
    assert "Ferry ÷ one GET" in rendered


def test_the_resume_benchmark_kills_restores_and_runs_them_again(tmp_path: Path) -> None:
    """bench.resume on tiny data: each killed restore is run again and checked byte for byte (on data this
    small, everything is often in flight when the kill comes: what is fetched twice says nothing here)."""
    result = resume.run(tmp_path / "work", Sizes.smoke(), kills=2, targets=("image", "tree"), log=print)
    assert set(result["targets"]) == {"image", "tree"}
    for t in result["targets"].values():
        assert len(t["kills"]) == 2
        assert all(k["again_bytes"] > 0 for k in t["kills"]), "every second run read the repository"
    results = tmp_path / "results"
    results.mkdir()
    (results / "resume.json").write_text(json.dumps(result))
    assert "| image | 2 |" in "\n".join(report.render(results))


def test_the_stages_benchmark_measures_each_stage_and_the_restore_threads(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = stages.run(work, 16 * 1024 * 1024, runs=1)
    assert set(result["stages_alone_cpu_s_per_GB"]) == {"open", "decompress", "verify", "decode"}
    assert all(v > 0 for v in result["stages_alone_cpu_s_per_GB"].values())
    threads = result["restore_threads_cpu_s_per_GB"]
    assert threads["decoding threads"] > 0
    assert "ferry-get" in threads, "pack ranges are received in the reader's threads"
    results = tmp_path / "results"
    results.mkdir()
    (results / "stages.json").write_text(json.dumps(result))
    assert "| decompress |" in "\n".join(report.render(results))
