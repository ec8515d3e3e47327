"""The ``ferry`` command line, run as a user runs it: a separate process, S3 configured only through
the standard AWS variables."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import ProgressBar
from tests.support.cli import ferry
from tests.support.data import make_sample_tree, tree_differences, write_mixed_image
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def repo_and_env(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    if request.param == "local":
        return str(tmp_path / "repo"), {}
    server: SeaweedServer = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("bucket")
    env = {
        "AWS_ENDPOINT_URL_S3": server.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }
    return f"s3://{bucket}/cluster/ferry/app", env


def test_snapshot_list_show_and_restore(repo_and_env: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    repo, env = repo_and_env
    image = write_mixed_image(tmp_path / "disk.img", 6 * MiB + 100, seed=3, run=512 * 1024)
    tree = make_sample_tree(tmp_path / "tree", big_file=2 * MiB)

    made = ferry("snapshot", "create", "--repo", repo, str(image), env=env)
    assert made.returncode == 0, made.stderr
    block_id = made.stdout.strip()
    assert len(block_id) == 64
    made = ferry("snapshot", "create", "--repo", repo, "--json", str(tree), env=env)
    assert made.returncode == 0, made.stderr
    tree_result = json.loads(made.stdout)
    assert tree_result["mode"] == "filesystem"

    listed = ferry("snapshot", "list", "--repo", repo, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {r["id"] for r in json.loads(listed.stdout)} == {block_id, tree_result["snapshot_id"]}
    shown = ferry("snapshot", "show", "--repo", repo, block_id, env=env)
    assert "mode:         block" in shown.stdout
    assert f"size:         {image.stat().st_size}" in shown.stdout

    out = ferry("restore", "--repo", repo, "--snapshot", block_id, str(tmp_path / "out.img"), env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
    assert "every chunk verified" in out.stderr
    out = ferry(
        "restore", "--repo", repo, "--snapshot", tree_result["snapshot_id"], "--json", str(tmp_path / "t"), env=env
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total_bytes"] == tree_result["size"]
    assert tree_differences(tree, tmp_path / "t") == []


def test_errors_are_one_line_with_a_status(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    missing = ferry("restore", "--repo", repo, "--snapshot", "a" * 64, str(tmp_path / "x"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"ferry: no Ferry repository at file://{repo}: the directory does not exist; " + (
        "`ferry repo init` creates one"
    )
    bad = ferry("restore", "--repo", repo, "--snapshot", "nope", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert "not a snapshot ID" in bad.stderr
    usage = ferry("restore", "--repo", repo)
    assert usage.returncode == 2
    unreadable = ferry("snapshot", "create", "--repo", repo, str(tmp_path / "missing"))
    assert unreadable.returncode == 1
    assert "cannot open" in unreadable.stderr
    assert not (tmp_path / "repo").exists(), "a repository was created for a snapshot that could not be taken"
    assert "Traceback" not in missing.stderr + bad.stderr + unreadable.stderr


def test_missing_credentials_are_reported_without_a_traceback(s3_server: SeaweedServer, bucket: str) -> None:
    result = ferry("snapshot", "list", "--repo", f"s3://{bucket}/x", env={"AWS_ENDPOINT_URL_S3": s3_server.endpoint})
    assert result.returncode == 1
    assert "no S3 credentials" in result.stderr
    assert "Traceback" not in result.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_throughput_and_eta_on_a_terminal_only() -> None:
    term = _Terminal()
    bar = ProgressBar("restore", term, interval_s=0.0)
    bar(0, 4 * MiB)
    bar(MiB, 4 * MiB)
    bar(4 * MiB, 4 * MiB)
    lines = term.getvalue().split("\r")
    assert "1.00 MiB / 4.00 MiB  25.0%" in lines[2]
    assert "/s  ETA " in lines[2]
    assert term.getvalue().endswith("\n")
    pipe = io.StringIO()
    ProgressBar("restore", pipe, interval_s=0.0)(MiB, 4 * MiB)
    assert pipe.getvalue() == ""


def test_hold_keeps_running_until_sigterm_and_exits_zero() -> None:
    """What a restore pod runs: it must not exit by itself, and must end at once on SIGTERM (as PID 1 an
    unhandled SIGTERM would be ignored)."""
    code = "import sys; from agent.entry import main; sys.exit(main())"
    with subprocess.Popen([sys.executable, "-c", code, "hold"], stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            assert proc.stderr.readline() == "ferry: holding this pod's volumes until SIGTERM\n"
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
