"""``ferry restore`` killed (SIGKILL) partway and run again: it keeps what the killed run wrote, for an image
file it created and for a directory tree, and fetches only the rest. ``proxy`` (tests/agent_fixtures.py)
holds the reads after the first few, so the kill comes at a known point."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from agent.settings import KiB, MiB
from tests.support.cli import ferry, password_file
from tests.support.data import make_sample_tree, tree_differences, write_mixed_image
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

PASSED = 6
"""Ranged reads the killed run gets; with one read in flight, all but the last are written by the time the
next one is held."""
ARGS = ("--reads", "1", "--range-size", "1M")


def _env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }


def _source(kind: str, tmp_path: Path) -> Path:
    if kind == "image":
        return write_mixed_image(tmp_path / "disk.img", 24 * MiB + 777, seed=5, run=300 * KiB)
    tree = make_sample_tree(tmp_path / "tree", big_file=2 * MiB)
    for i in range(16):
        (tree / "data" / f"file-{i:02}.bin").write_bytes(random.Random(i).randbytes(700 * KiB))
    return tree


async def _killed_restore(repo: str, sid: str, target: Path, proxy: FaultyProxy) -> None:
    """Run ``ferry restore`` until the proxy holds a read, then SIGKILL it."""
    proxy.stall_ranged, proxy.stall_ranged_after = True, PASSED
    env = {**os.environ, "FERRY_PASSWORD_FILE": password_file(), **_env(proxy.endpoint)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "restore",
        "--repo",
        repo,
        "--snapshot",
        sid,
        *ARGS,
        str(target),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(60):
            held = asyncio.ensure_future(proxy.holding.wait())
            ended = asyncio.ensure_future(child.wait())
            await asyncio.wait([held, ended], return_when=asyncio.FIRST_COMPLETED)
            held.cancel()
            assert not ended.done(), "the restore finished before a read was held: give it more ranges"
    finally:
        child.kill()
        assert await child.wait() == -signal.SIGKILL
    proxy.stall_ranged = False
    proxy.released.set()


@pytest.mark.parametrize("kind", ["image", "tree"])
async def test_a_killed_restore_run_again_fetches_only_what_it_had_left(
    kind: str, s3_server: SeaweedServer, bucket: str, proxy: FaultyProxy, tmp_path: Path
) -> None:
    repo = f"s3://{bucket}/ferry/app"
    source = _source(kind, tmp_path)
    made = ferry(
        "snapshot", "create", "--repo", repo, "--chunk-size", "512KiB", str(source), env=_env(s3_server.endpoint)
    )
    assert made.returncode == 0, made.stderr
    sid = made.stdout.strip()
    whole = ferry(
        "restore",
        "--repo",
        repo,
        "--snapshot",
        sid,
        *ARGS,
        "--json",
        str(tmp_path / "whole"),
        env=_env(s3_server.endpoint),
    )
    assert whole.returncode == 0, whole.stderr
    whole_fetched = json.loads(whole.stdout)["fetched_bytes"]

    target = tmp_path / "target"
    await _killed_restore(repo, sid, target, proxy)
    assert target.exists(), "a killed restore leaves what it wrote (only a restore that fails removes it)"
    first = proxy.ranged_bytes
    proxy.ranged_bytes = 0
    again = await asyncio.to_thread(
        ferry, "restore", "--repo", repo, "--snapshot", sid, *ARGS, "--json", str(target), env=_env(proxy.endpoint)
    )
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    if kind == "image":
        assert target.read_bytes() == source.read_bytes()
    else:
        assert tree_differences(source, target) == []
    assert result["kept_bytes"] > 0
    assert result["fetched_bytes"] == proxy.ranged_bytes
    # The killed run had one range (1 MiB at most) fetched and not yet written; nothing else is fetched twice.
    assert first + result["fetched_bytes"] <= whole_fetched + MiB
    assert first > 3 * MiB
