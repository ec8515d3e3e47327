"""spec.cancel in every phase, deletion mid-restore, and operationTimeout on a stalled transfer. A restore
is held in InProgress by a proxy in front of the real S3 server that stalls its ranged reads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.cluster import NS, Cluster, agent_settings, running_agent, start_held_restore
from tests.support.faulty_proxy import FaultyProxy


def cancel(cluster: Cluster, name: str) -> None:
    """What Velero's Cancel(operationID) does: a merge patch of spec.cancel."""
    cluster.kube.patch("datadownloads", name, {"spec": {"cancel": True}}, namespace=NS)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, ["New", "Canceled"]),
        ({"phase": "Accepted", "acceptedByNode": "node-a"}, ["Accepted", "Canceled"]),
        ({"phase": "Prepared", "acceptedByNode": "node-a", "node": "node-a"}, ["Prepared", "Canceled"]),
    ],
    ids=["New", "Accepted", "Prepared"],
)
async def test_cancel_before_the_restore_starts(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], status: dict[str, str] | None, expected: list[str]
) -> None:
    """The volume is not there yet, so the DataDownload waits in its phase; a cancel ends it at once,
    without passing through any other phase."""
    snapshot_id, _ = tiny_snapshot
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd("waiting", snapshot_id, "not-yet", status=status)
        cancel(cluster, "waiting")
        done = await cluster.wait_phase("waiting", "Canceled", "Failed", "Completed", timeout=5)
    status_now = done["status"]
    assert status_now["phase"] == "Canceled"
    assert "canceled" in status_now["message"]
    assert status_now["completionTimestamp"].endswith("Z")
    assert cluster.phases("waiting") == expected
    assert [e["reason"] for e in cluster.events_for("waiting")] == ["Canceled"]


async def test_cancel_in_progress_stops_the_pipeline_within_two_seconds(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str
) -> None:
    snapshot_id, _ = tree_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    async with running_agent(agent_settings(cluster, "node-a")) as agent:
        await start_held_restore(cluster, proxy, "busy", snapshot_id, slow_bsl)
        asked = time.monotonic()
        cancel(cluster, "busy")
        done = await cluster.wait_phase("busy", "Canceled", "Failed", "Completed", timeout=5)
        took = time.monotonic() - asked
        assert agent.controller is not None
        worker = agent.controller.worker("busy")
        if worker is not None:
            await asyncio.wait([worker], timeout=5)
    assert done["status"]["phase"] == "Canceled", done["status"].get("message")
    assert took < 2.0, f"cancel took {took:.2f} s"
    assert cluster.phases("busy") == ["New", "Accepted", "Prepared", "InProgress", "Canceling", "Canceled"]
    assert "canceled (spec.cancel)" in done["status"]["message"]
    assert [e["reason"] for e in cluster.events_for("busy")] == ["Accepted", "Prepared", "Started", "Canceled"]


async def test_deleting_mid_restore_stops_it(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str
) -> None:
    snapshot_id, _ = tree_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    async with running_agent(agent_settings(cluster, "node-a")) as agent:
        await start_held_restore(cluster, proxy, "doomed", snapshot_id, slow_bsl)
        assert agent.controller is not None
        worker = agent.controller.worker("doomed")
        assert worker is not None
        deleted_at = len(cluster.kube.requests)
        cluster.kube.delete("datadownloads", "doomed", namespace=NS)
        async with asyncio.timeout(3):
            await asyncio.wait([worker])
        assert agent.controller.load.running == 0
    later = cluster.kube.requests[deleted_at:]
    assert not [r for r in later if r.method in ("PUT", "PATCH") and r.status < 300], "wrote to a deleted object"


async def test_stalled_transfer_fails_after_operation_timeout(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str
) -> None:
    snapshot_id, _ = tree_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    proxy.stall_ranged = True
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd("stalled", snapshot_id, "data", bsl=slow_bsl, timeout="1s")
        done = await cluster.wait_phase("stalled", "Failed", "Completed", "Canceled", timeout=10)
    status = done["status"]
    assert status["phase"] == "Failed"
    assert status["message"].startswith("no progress for 1s (spec.operationTimeout)")
    assert status["completionTimestamp"].endswith("Z")
    assert [e["reason"] for e in cluster.events_for("stalled")][-1] == "Failed"


async def test_volume_that_never_appears_fails_after_operation_timeout(
    cluster: Cluster, tiny_snapshot: tuple[str, Path]
) -> None:
    snapshot_id, _ = tiny_snapshot
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd("orphan", snapshot_id, "missing-claim", timeout="1s")
        done = await cluster.wait_phase("orphan", "Failed", "Completed", "Canceled", timeout=10)
    status = done["status"]
    assert status["phase"] == "Failed"
    assert "timed out after 1s (spec.operationTimeout) waiting for PVC app/missing-claim" in status["message"]
    assert cluster.phases("orphan") == ["New", "Failed"]
