"""``ferry agent`` as the DaemonSet runs it: a separate process, killed or terminated mid-restore, and the
next agent on the node finishing the restore instead of abandoning it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.settings import KiB, MiB
from tests.agent_fixtures import pack_bytes, snapshot
from tests.support.cluster import NS, Cluster, agent_settings, running_agent, start_held_restore
from tests.support.data import make_sample_tree, tree_differences
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer
from tests.test_agent_lifecycle import LIFECYCLE, assert_progress_exact

ROOT = Path(__file__).resolve().parents[1]


@asynccontextmanager
async def agent_process(cluster: Cluster, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = dict(os.environ, FERRY_VOLUME_POLL_INTERVAL="0.05", FERRY_LOG_LEVEL="info", PYTHONPATH=str(ROOT))
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "agent",
            "--node-name=node-a",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--kubelet-root={cluster.kubelet_root}",
            "--http-address=127.0.0.1",
            "--http-port=0",
            "--progress-interval=0.05",
            "--shutdown-grace=5",
            f"--credentials-file={cluster.kubelet_root.parent / 'absent'}",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def finish_in_a_new_agent(cluster: Cluster, proxy: FaultyProxy, source: Path, mount: Path) -> dict[str, object]:
    proxy.stall_ranged = False
    proxy.released.set()
    async with running_agent(agent_settings(cluster, "node-a")):
        done = await cluster.wait_phase("survivor", "Completed", "Failed", "Canceled")
    status = done["status"]
    assert status["phase"] == "Completed", status.get("message")
    assert tree_differences(source, mount) == []
    assert_progress_exact(cluster, "survivor", status["progress"]["totalBytes"])
    return status


async def test_killed_agent_restore_is_finished_by_the_next_keeping_what_it_wrote(
    cluster: Cluster,
    s3_server: SeaweedServer,
    proxy: FaultyProxy,
    slow_bsl: str,
    tmp_path: Path,
) -> None:
    source = make_sample_tree(tmp_path / "source", big_file=2 * MiB)
    for i in range(12):  # a range each (1 MiB at most, one file of 700 KiB)
        (source / "data" / f"file-{i:02}.bin").write_bytes(random.Random(i).randbytes(700 * KiB))
    snapshot_id = await snapshot(s3_server, cluster.bucket, source)
    [mount] = cluster.add_volume("app", "data", ["node-a"])
    # One read at a time: the fifth read is held only once the first four ranges are written.
    proxy.stall_ranged_after = 4
    config = {"ferry.readsInFlight": "1", "ferry.maxRangeBytes": "1Mi"}
    async with agent_process(cluster, tmp_path / "agent.log") as proc:
        await start_held_restore(cluster, proxy, "survivor", snapshot_id, slow_bsl, config=config)
        first_start = cluster.dd("survivor")["status"]["startTimestamp"]
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
    first = proxy.ranged_bytes
    proxy.ranged_bytes = 0
    status = await finish_in_a_new_agent(cluster, proxy, source, mount)
    assert status["startTimestamp"] == first_start
    assert cluster.phases("survivor") == LIFECYCLE
    messages = [
        (r.object.get("status") or {}).get("message") for r in cluster.kube.history("datadownloads", "survivor", NS)
    ]
    assert "restarted on node node-a after an interruption" in messages
    events = cluster.events_for("survivor")
    assert [e["reason"] for e in events] == ["Accepted", "Prepared", "Started", "Restarted", "Resumed", "Completed"]
    resumed = next(e["message"] for e in events if e["reason"] == "Resumed")
    assert resumed.startswith("kept ")
    assert "already on the volume" in resumed
    # The four ranges the killed agent wrote are not fetched again.
    assert first > 2 * MiB
    assert first + proxy.ranged_bytes <= await pack_bytes(s3_server, cluster.bucket)


async def test_sigterm_records_the_interrupted_restore(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str, tmp_path: Path
) -> None:
    snapshot_id, source = tree_snapshot
    [mount] = cluster.add_volume("app", "data", ["node-a"])
    log = tmp_path / "agent.log"
    async with agent_process(cluster, log) as proc:
        await start_held_restore(cluster, proxy, "survivor", snapshot_id, slow_bsl)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    interrupted = cluster.dd("survivor")["status"]
    assert interrupted["phase"] == "InProgress"
    assert interrupted["message"].startswith("interrupted after ")
    assert "the Ferry agent on node node-a is shutting down" in interrupted["message"]
    assert [e["reason"] for e in cluster.events_for("survivor")][-1] == "Interrupted"

    text = log.read_text()
    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    about = [line for line in lines if line.get("datadownload") == f"{NS}/survivor"]
    assert [line["msg"] for line in about][:2] == ["accepted", "starting"]
    assert any(line["msg"] == "interrupted by shutdown" for line in about)
    assert lines[-1]["msg"] == "agent stopped"

    await finish_in_a_new_agent(cluster, proxy, source, mount)
    assert cluster.phases("survivor") == LIFECYCLE
