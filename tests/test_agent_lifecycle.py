"""The node agent end to end: DataDownloads on the strict API server, volumes in a simulated kubelet root
(block volumes on loop devices), snapshots on the real S3 server, restores through the real pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.agent_fixtures import make_cluster, snapshot
from tests.support.cluster import NS, Cluster, agent_settings, metric, running_agent
from tests.support.data import tree_differences
from tests.support.kube import KubeServer
from tests.support.seaweed import SeaweedServer

LIFECYCLE = ["New", "Accepted", "Prepared", "InProgress", "Completed"]


def assert_progress_exact(cluster: Cluster, name: str, total: int) -> None:
    """bytesDone never goes down, never exceeds totalBytes, and equals it at Completed; totalBytes never
    changes once set, and is set from InProgress on."""
    done_seen, totals = [], set()
    for revision in cluster.kube.history("datadownloads", name, NS):
        status = revision.object.get("status") or {}
        progress = status.get("progress") or {}
        if "totalBytes" in progress:
            totals.add(progress["totalBytes"])
            done_seen.append(progress.get("bytesDone", 0))
            assert progress.get("bytesDone", 0) <= progress["totalBytes"]
            assert status["phase"] in ("InProgress", "Completed", "Canceling", "Canceled", "Failed")
    assert totals == {total}
    assert done_seen == sorted(done_seen), f"bytesDone went backwards: {done_seen}"
    final = cluster.dd(name)["status"]
    assert final["progress"] == {"totalBytes": total, "bytesDone": total}


async def test_filesystem_volume_lifecycle(cluster: Cluster, tree_snapshot: tuple[str, Path]) -> None:
    snapshot_id, source = tree_snapshot
    [mount] = cluster.add_volume("app", "data", ["node-a"])
    async with running_agent(agent_settings(cluster, "node-a")) as agent:
        cluster.create_dd("restore-fs", snapshot_id, "data")
        done = await cluster.wait_phase("restore-fs", "Completed", "Failed")
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        assert agent.server is not None
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{agent.server.port}"
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200

    assert tree_differences(source, mount) == []
    assert cluster.phases("restore-fs") == LIFECYCLE
    status = done["status"]
    assert status["acceptedByNode"] == "node-a"
    assert status["node"] == "node-a"
    for stamp in ("acceptedTimestamp", "startTimestamp", "completionTimestamp"):
        assert status[stamp].endswith("Z")
    assert status["startTimestamp"] <= status["completionTimestamp"]
    total = status["progress"]["totalBytes"]
    assert total > 0
    assert_progress_exact(cluster, "restore-fs", total)
    reasons = [e["reason"] for e in cluster.events_for("restore-fs")]
    assert reasons == ["Accepted", "Prepared", "Started", "Completed"]
    assert metric(metrics, "ferry_restores_finished_total", phase="Completed") == 1
    assert metric(metrics, "ferry_restores_finished_total", phase="Failed") == 0
    assert metric(metrics, "ferry_restored_bytes_total") == total
    assert metric(metrics, "ferry_fetch_seconds_count") >= 1
    assert metric(metrics, "ferry_chunk_verification_failures_total") == 0
    assert metric(metrics, "ferry_storage_retries_total") == 0
    assert metric(metrics, "ferry_inflight_bytes") == 0
    assert metric(metrics, "ferry_restores", phase="InProgress") == 0
    # Alone on its objects, the agent writes from the state it last wrote: no write is refused as stale
    # (each 409 costs a re-read and a second write; the Completed write used to cost one).
    assert [r.path for r in cluster.kube.requests if r.status == 409] == []


@pytest.mark.root
async def test_block_volume_lifecycle(
    cluster: Cluster, image_snapshot: tuple[str, Path], loop_device: tuple[str, Path]
) -> None:
    snapshot_id, image = image_snapshot
    device, backing = loop_device
    backing.write_bytes(b"\xee" * backing.stat().st_size)  # a dirty device: every byte must be rewritten
    cluster.add_volume("app", "disk", ["node-a"], mode="Block", device=device)
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd("restore-block", snapshot_id, "disk")
        done = await cluster.wait_phase("restore-block", "Completed", "Failed")
    assert done["status"]["phase"] == "Completed", done["status"].get("message")
    restored = backing.read_bytes()
    expected = image.read_bytes()
    assert restored[: len(expected)] == expected
    assert cluster.phases("restore-block") == LIFECYCLE
    assert_progress_exact(cluster, "restore-block", len(expected))


async def restore_one_file(
    kube: KubeServer, tmp_path: Path, s3_server: SeaweedServer, name: str, text: str
) -> tuple[Cluster, dict[str, Any], Path]:
    """On ``kube``: a BSL, a snapshot of one file ``hello.txt`` holding ``text``, a volume, and DataDownload
    ``name`` restored by an agent. Returns the cluster, the finished object and the volume's path."""
    cluster = await make_cluster(kube, tmp_path, s3_server)
    cluster.add_credentials_secret()
    cluster.add_bsl(credential={"name": "ferry-credentials", "key": "cloud"})
    source = tmp_path / "small"
    source.mkdir()
    (source / "hello.txt").write_text(text)
    snapshot_id = await snapshot(s3_server, cluster.bucket, source)
    [mount] = cluster.add_volume("app", "data", ["node-a"])
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd(name, snapshot_id, "data")
        done = await cluster.wait_phase(name, "Completed", "Failed")
    return cluster, done, mount


async def test_status_subresource_flavour(kube_status: KubeServer, tmp_path: Path, s3_server: SeaweedServer) -> None:
    """With /status enabled (the reference page's CRD) status must go through /status: a main-resource
    write would be dropped by the server and the DataDownload would never leave New. The one main-resource
    write is the claim's metadata (who accepted it), which /status would drop."""
    cluster, done, mount = await restore_one_file(kube_status, tmp_path, s3_server, "restore-status", "hello\n")
    assert done["status"]["phase"] == "Completed", done["status"].get("message")
    assert (mount / "hello.txt").read_text() == "hello\n"
    status_writes = [r for r in kube_status.requests if r.method == "PATCH" and r.path.endswith("/status")]
    main_writes = [
        r
        for r in kube_status.requests
        if r.method == "PATCH" and "/datadownloads/" in r.path and not r.path.endswith("/status")
    ]
    assert status_writes
    assert len(main_writes) == 1
    assert done["metadata"]["annotations"]["ferry.dev/accepted-by"] == "node-a"
    assert cluster.phases("restore-status") == LIFECYCLE


async def test_prepared_by_someone_else_on_this_node(cluster: Cluster, tree_snapshot: tuple[str, Path]) -> None:
    """Case (a): another component exposed the volume here and wrote Prepared with status.node."""
    snapshot_id, source = tree_snapshot
    [mount] = cluster.add_volume("app", "data", ["node-a"])
    cluster.create_dd(
        "pre-prepared",
        snapshot_id,
        "data",
        status={"phase": "Prepared", "node": "node-a", "acceptedByNode": "exposer"},
    )
    async with running_agent(agent_settings(cluster, "node-a")):
        done = await cluster.wait_phase("pre-prepared", "Completed", "Failed")
    assert done["status"]["phase"] == "Completed", done["status"].get("message")
    assert cluster.phases("pre-prepared") == ["Prepared", "InProgress", "Completed"]
    assert tree_differences(source, mount) == []


async def test_other_datamovers_are_never_touched(cluster: Cluster, tree_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tree_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    cluster.add_volume("app", "other", ["node-a"])
    cluster.add_volume("app", "builtin", ["node-a"])
    async with running_agent(agent_settings(cluster, "node-a")):
        cluster.create_dd("for-velero", snapshot_id, "other", datamover="velero")
        cluster.create_dd("for-builtin", snapshot_id, "builtin", datamover="")
        cluster.create_dd("for-ferry", snapshot_id, "data")
        await cluster.wait_phase("for-ferry", "Completed")
    for name in ("for-velero", "for-builtin"):
        assert len(cluster.kube.history("datadownloads", name, NS)) == 1, f"{name} was written"
        assert cluster.events_for(name) == []
    writes = {r.path.rsplit("/", 1)[-1] for r in cluster.kube.requests if r.method in ("PATCH", "PUT")}
    assert "for-velero" not in writes
    assert "for-builtin" not in writes


async def test_already_finished_datadownloads_are_left_alone(cluster: Cluster, tree_snapshot: tuple[str, Path]) -> None:
    snapshot_id, _ = tree_snapshot
    cluster.add_volume("app", "data", ["node-a"])
    for phase in ("Completed", "Failed", "Canceled"):
        cluster.create_dd(f"done-{phase.lower()}", snapshot_id, "data", status={"phase": phase, "node": "node-a"})
    cluster.create_dd("fresh", snapshot_id, "data")
    async with running_agent(agent_settings(cluster, "node-a")):
        await cluster.wait_phase("fresh", "Completed")
    for phase in ("Completed", "Failed", "Canceled"):
        assert len(cluster.kube.history("datadownloads", f"done-{phase.lower()}", NS)) == 1


async def test_against_velero_own_crd_files(tmp_path: Path, s3_server: SeaweedServer) -> None:
    """The same lifecycle with the server built from the CRD files Velero ships, not our description."""
    crd_dir = Path(__file__).resolve().parents[2] / "shared/velero/crds"
    if not crd_dir.is_dir():
        pytest.skip(f"Velero's CRD files are not available at {crd_dir}")
    crds = [yaml.safe_load(p.read_text()) for p in sorted(crd_dir.glob("velero.io_*.yaml"))]
    async with KubeServer(crds) as kube:
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster, done, mount = await restore_one_file(
            kube, tmp_path, s3_server, "restore-velero-crd", "hello from velero's crds\n"
        )
        assert done["status"]["phase"] == "Completed", done["status"].get("message")
        assert cluster.phases("restore-velero-crd") == LIFECYCLE
    assert (mount / "hello.txt").read_text() == "hello from velero's crds\n"
