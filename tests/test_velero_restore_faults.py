"""Velero's restore flow when things go wrong: every supported Velero's CRD shape, cancel in each phase,
deletion, restore pods that can never run, the prepare timeout. Each ends in the right terminal phase
with nothing of the restore left behind (no restore pod, PVC or PV, no finalizer)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.agent_fixtures import agent_kubeconfig, make_cluster, snapshot
from tests.support.cluster import Cluster, credentials_ini, killable_agent, running_agent
from tests.support.faulty_proxy import FaultyProxy
from tests.support.kube import VELERO_VERSIONS, KubeServer, velero_crds
from tests.support.seaweed import SeaweedServer
from tests.support.velero import (
    FINALIZER,
    IMAGE,
    NS,
    assert_nothing_left,
    cleaned_up,
    handed_over,
    progress,
    start_restore,
    start_workload,
    wait_done,
    wait_released,
    wait_running,
    world,
)


def cancel(cluster: Cluster, name: str) -> None:
    """What Velero's ``Cancel(operationID)`` does: a merge patch of ``spec.cancel: true``."""
    cluster.kube.patch("datadownloads", name, {"spec": {"cancel": True}}, namespace=NS)


@pytest.mark.parametrize("version", [*VELERO_VERSIONS, "1.18+status"])
async def test_each_supported_velero_crd(version: str, tmp_path: Path, s3_server: SeaweedServer) -> None:
    """1.14 and 1.15 prune status.acceptedByNode/acceptedTimestamp: the claim must hold without them.
    ``+status``: a distribution's CRD with a /status subresource (status writes go there, the claim's
    annotations and finalizer through the main resource)."""
    version, _, flavour = version.partition("+")
    kube = await KubeServer(velero_crds(version, status_subresource=flavour == "status")).start()
    try:
        kube.create("namespaces", {"metadata": {"name": NS}})
        cluster = await make_cluster(kube, tmp_path, s3_server)
        cluster.add_credentials_secret(text=credentials_ini())
        cluster.add_bsl(credential={"name": "ferry-credentials", "key": "cloud"})
        source = tmp_path / "src"
        source.mkdir()
        (source / "note.txt").write_text(f"restored under Velero {version}\n")
        snapshot_id = await snapshot(s3_server, cluster.bucket, source)
        async with world(cluster, tmp_path) as w:
            restore = start_restore(
                kube,
                snapshot_id=snapshot_id,
                snapshot_size=26,
                storage_class="immediate",
                version=version,
            )
            pod = start_workload(kube, restore)
            done = await wait_done(cluster, restore)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
            if version in ("1.14", "1.15"):
                assert "acceptedByNode" not in done["status"]
            else:
                assert done["status"]["acceptedByNode"] == done["metadata"]["annotations"]["ferry.dev/accepted-by"]
            assert cluster.phases(restore.datadownload) == ["New", "Accepted", "Prepared", "InProgress", "Completed"]
            await w.sim.settled()
            assert (w.sim.pod_volume("app", pod, "data") / "note.txt").read_text() == source.joinpath(
                "note.txt"
            ).read_text()
            assert_nothing_left(cluster, restore)
    finally:
        await kube.stop()


async def test_cancel_while_new(cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path) -> None:
    snapshot_id, _ = tiny_snapshot
    restore = start_restore(cluster.kube, snapshot_id=snapshot_id, storage_class="immediate")
    cancel(cluster, restore.datadownload)
    async with world(cluster, tmp_path):
        done = await wait_done(cluster, restore)
    assert done["status"]["phase"] == "Canceled"
    assert progress(done)["err"] == "DataDownload is canceled"
    assert_nothing_left(cluster, restore)


async def test_cancel_while_accepted_and_exposed(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """The restore pod runs on node-c, where no agent runs: the DataDownload stays Accepted, exposed."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, agents=["node-a", "node-b"]) as w:
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore, node="node-c")
        await cluster.kube.wait_for(
            "pods", restore.datadownload, NS, lambda p: p is not None and p["status"].get("phase") == "Running"
        )
        assert cluster.dd(restore.datadownload)["status"]["phase"] == "Accepted"
        cancel(cluster, restore.datadownload)
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Canceled"
        await cleaned_up(w, restore)


async def test_cancel_while_prepared(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str, tmp_path: Path
) -> None:
    """One agent, one restore at a time: the second DataDownload waits Prepared while the first is held."""
    snapshot_id, _ = tree_snapshot
    proxy.stall_ranged = True
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        first = start_restore(
            cluster.kube,
            snapshot_id=snapshot_id,
            pvc="first",
            storage_class="immediate",
            bsl=slow_bsl,
            restore_name="first",
        )
        await cluster.wait_phase(first.datadownload, "InProgress", timeout=30)
        second = start_restore(
            cluster.kube,
            snapshot_id=snapshot_id,
            pvc="second",
            storage_class="immediate",
            restore_name="second",
        )
        await cluster.wait_phase(second.datadownload, "Prepared", timeout=30)
        cancel(cluster, second.datadownload)
        done = await wait_done(cluster, second)
        assert done["status"]["phase"] == "Canceled"
        assert cluster.phases(second.datadownload) == ["New", "Accepted", "Prepared", "Canceled"]
        await wait_released(cluster, second)
        cancel(cluster, first.datadownload)
        proxy.stall_ranged = False
        proxy.released.set()
        assert (await wait_done(cluster, first))["status"]["phase"] == "Canceled"
        await wait_released(cluster, first)
        await w.sim.settled()
        assert_nothing_left(cluster, second)
        assert_nothing_left(cluster, first)


async def test_cancel_while_in_progress(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str, tmp_path: Path
) -> None:
    snapshot_id, _ = tree_snapshot
    proxy.stall_ranged = True
    async with world(cluster, tmp_path) as w:
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id, storage_class="immediate", bsl=slow_bsl)
        await cluster.wait_phase(restore.datadownload, "InProgress", timeout=30)
        cancel(cluster, restore.datadownload)
        done = await wait_done(cluster, restore)
        proxy.stall_ranged = False
        proxy.released.set()
        assert done["status"]["phase"] == "Canceled"
        assert cluster.phases(restore.datadownload)[-2:] == ["Canceling", "Canceled"]
        await cleaned_up(w, restore)
        target = cluster.kube.get("persistentvolumeclaims", "data", namespace="app")
        assert target is not None
        assert target["status"]["phase"] == "Pending", "a canceled restore handed a volume to the PVC"


async def test_deleted_while_in_progress(
    cluster: Cluster, tree_snapshot: tuple[str, Path], proxy: FaultyProxy, slow_bsl: str, tmp_path: Path
) -> None:
    """Velero deletes the DataDownload (its Restore was deleted): the finalizer keeps it until the restore
    stopped and everything it exposed is gone; then it goes."""
    snapshot_id, _ = tree_snapshot
    proxy.stall_ranged = True
    async with world(cluster, tmp_path) as w:
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id, storage_class="immediate", bsl=slow_bsl)
        await cluster.wait_phase(restore.datadownload, "InProgress", timeout=30)
        cluster.kube.delete("datadownloads", restore.datadownload, namespace=NS)
        assert cluster.kube.get("datadownloads", restore.datadownload, namespace=NS) is not None, "no finalizer"
        await cluster.kube.wait_gone("datadownloads", restore.datadownload, NS, timeout=30)
        proxy.stall_ranged = False
        proxy.released.set()
        await w.sim.settled()
        assert_nothing_left(cluster, restore)


async def test_image_that_cannot_be_pulled(cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path) -> None:
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path) as w:
        w.sim.fail_image(IMAGE)
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id, storage_class="immediate")
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Failed"
        assert "ImagePullBackOff" in done["status"]["message"]
        assert IMAGE in done["status"]["message"]
        await cleaned_up(w, restore)


async def test_restore_pod_that_can_never_be_scheduled(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """The application's claim names a node that is gone: the restore pod, pinned there, fits nowhere."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, unschedulable_grace_s=0.2) as w:
        restore = start_restore(
            cluster.kube,
            snapshot_id=snapshot_id,
            pvc_annotations={"volume.kubernetes.io/selected-node": "node-gone"},
        )
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Failed"
        assert "cannot be scheduled" in done["status"]["message"]
        assert "didn't match Pod's node affinity/selector" in done["status"]["message"]
        await cleaned_up(w, restore)


async def test_prepare_timeout(cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path) -> None:
    """No agent where the restore pod runs: the prepare timeout fails it and says what it waited for."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, agents=["node-a"], prepare_timeout_s=1.0) as w:
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore, node="node-b")
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Failed"
        assert "prepare timeout" in done["status"]["message"]
        assert "node-b" in done["status"]["message"]
        await cleaned_up(w, restore)


async def test_target_already_bound_is_refused(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """Velero never restores into a bound PVC; a DataDownload that asks to is refused, and nothing is made."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path) as w:
        cluster.ensure_namespace("app")
        cluster.kube.create(
            "persistentvolumeclaims",
            {
                "metadata": {"name": "data", "namespace": "app"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "immediate",
                    "resources": {"requests": {"storage": "64Mi"}},
                },
            },
            namespace="app",
        )
        await cluster.kube.wait_for(
            "persistentvolumeclaims", "data", "app", lambda c: c is not None and c["status"].get("phase") == "Bound"
        )
        dd = cluster.create_dd("into-bound", snapshot_id, "data", in_place=False)
        done = await cluster.wait_phase(dd["metadata"]["name"], "Failed", "Completed", timeout=30)
        assert done["status"]["phase"] == "Failed"
        assert "is already bound" in done["status"]["message"]
        await w.sim.settled()
        assert cluster.kube.get("persistentvolumeclaims", "into-bound", namespace=NS) is None
        assert cluster.kube.get("pods", "into-bound", namespace=NS) is None


async def test_agents_use_a_least_privilege_identity(kube: KubeServer, tmp_path: Path) -> None:
    """The agents of these tests are the service account daemonset/rbac.yaml binds (a 403 otherwise)."""
    path = agent_kubeconfig(kube, tmp_path / "kubeconfig")
    assert "token" in path.read_text()


@pytest.mark.parametrize(
    ("held", "outcome"),
    [
        (("PATCH", r"/persistentvolumes/[^/]+$", r'"Retain"'), "Canceled"),
        (("PATCH", r"/namespaces/app/persistentvolumeclaims/data$", None), "Completed"),
    ],
    ids=["before-hand-over", "after-hand-over"],
)
async def test_cancel_during_the_rebind(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, held: tuple[str, str, str | None], outcome: str
) -> None:
    """Until the target PVC names the restored PV a cancel is honoured (the PV is deleted); after that the
    volume is the application's and the restore completes, saying the cancel came too late."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        hold = cluster.kube.hold_after(*held)
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore)
        async with asyncio.timeout(30):
            await hold.reached.wait()
        cancel(cluster, restore.datadownload)
        hold.release()
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == outcome, done["status"].get("message")
        await cleaned_up(w, restore)
        target = cluster.kube.get("persistentvolumeclaims", "data", namespace="app")
        assert target is not None
        if outcome == "Canceled":
            assert target["status"]["phase"] == "Pending"
            assert cluster.kube.list("persistentvolumes") == []
        else:
            assert "the cancel came after the volume was handed to the PVC" in done["status"]["message"]
            assert target["status"]["phase"] == "Bound"


@pytest.mark.parametrize("end", ["restore-pod-failed", "deleted"])
async def test_accepted_and_exposed_then_pod_fails_or_object_deleted(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, end: str
) -> None:
    """Exposed on node-c, where no agent runs (so it stays Accepted): the restore pod fails — the
    DataDownload fails naming it — or the DataDownload is deleted — it goes once everything is removed."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, agents=["node-a", "node-b"]) as w:
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore, node="node-c")
        await cluster.kube.wait_for(
            "pods", restore.datadownload, NS, lambda p: p is not None and p["status"].get("phase") == "Running"
        )
        if end == "deleted":
            cluster.kube.delete("datadownloads", restore.datadownload, namespace=NS)
            await cluster.kube.wait_gone("datadownloads", restore.datadownload, NS, timeout=30)
        else:
            w.sim.fail_pod(NS, restore.datadownload, "the container exited with code 137")
            done = await wait_done(cluster, restore)
            assert done["status"]["phase"] == "Failed"
            assert "is Failed on node node-c" in done["status"]["message"]
            assert "exited with code 137" in done["status"]["message"]
            await wait_released(cluster, restore)
        await w.sim.settled()
        assert_nothing_left(cluster, restore)


async def test_restore_pods_run_the_agents_own_image(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """No FERRY_POD_IMAGE: the agent reads its own pod (FERRY_POD_NAME) and restore pods run its image."""
    snapshot_id, _ = tiny_snapshot
    own = "registry.example/ferry:1.2.3"
    cluster.kube.create(
        "pods",
        {
            "metadata": {"name": "ferry-x1", "namespace": NS},
            "spec": {"nodeName": "node-a", "containers": [{"name": "ferry", "image": own}]},
        },
        namespace=NS,
    )
    async with world(cluster, tmp_path, nodes=["node-a"], pod_image="", pod_name="ferry-x1"):
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore)
        await cluster.kube.wait_for("pods", restore.datadownload, NS, lambda p: p is not None)
        pod = cluster.kube.get("pods", restore.datadownload, namespace=NS)
        assert pod is not None
        [container] = pod["spec"]["containers"]
        assert container["image"] == own
        assert container["command"] == ["ferry", "hold"]
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] == "node-a"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "DataDownload"
        assert (await wait_done(cluster, restore))["status"]["phase"] == "Completed"


async def test_a_claim_abandoned_between_its_two_writes_is_taken_over(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """With a /status subresource a claim is two writes; an agent that died between them left its name on a
    New object. After the prepare timeout another agent claims it."""
    snapshot_id, _ = tiny_snapshot
    restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
    stale = {"ferry.dev/accepted-by": "node-gone", "ferry.dev/accepted-at": "2020-01-01T00:00:00Z"}
    cluster.kube.patch("datadownloads", restore.datadownload, {"metadata": {"annotations": stale}}, namespace=NS)
    start_workload(cluster.kube, restore)
    async with world(cluster, tmp_path, nodes=["node-a"]):
        done = await wait_done(cluster, restore)
    assert done["status"]["phase"] == "Completed", done["status"].get("message")
    assert done["metadata"]["annotations"]["ferry.dev/accepted-by"] == "node-a"


@pytest.mark.parametrize("phase", ["Failed", "Canceled"])
@pytest.mark.parametrize("agents", ["killed-owner", "three-agents"])
async def test_ended_by_velero_after_the_target_names_the_pv(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, phase: str, agents: str
) -> None:
    """Velero writes a terminal phase itself once the target PVC names the restored PV but before the PV's
    claimRef moved. The volume is the application's now: cleanup must finish the hand-over (a PV left
    with the restore PVC's claim would be released and deleted with the data)."""
    snapshot_id, source = tiny_snapshot
    nodes = ["node-a"] if agents == "killed-owner" else ["node-a", "node-b", "node-c"]
    async with world(cluster, tmp_path, nodes=nodes, agents=[]) as w:
        hold = cluster.kube.hold_after("PATCH", r"/namespaces/app/persistentvolumeclaims/data$")
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        pod = start_workload(cluster.kube, restore)
        async with AsyncExitStack() as stack:
            grace = 0.5 if agents == "three-agents" else 60.0  # the others take the cleanup over while it is held
            owners = [
                await stack.enter_async_context(killable_agent(w.settings(node, orphan_grace_s=grace)))
                for node in nodes
            ]
            async with asyncio.timeout(30):
                await hold.reached.wait()
            if agents == "killed-owner":
                await owners[0].kill()
                hold.release()
            ended = {"status": {"phase": phase, "message": "ended by Velero"}}
            cluster.kube.patch("datadownloads", restore.datadownload, ended, namespace=NS)
            if agents == "killed-owner":
                await stack.enter_async_context(killable_agent(w.settings("node-a")))
            await wait_released(cluster, restore)  # with three agents, the others cleaned up meanwhile
            hold.release()
            restored = await handed_over(w, restore, pod)
            assert (restored / "note.txt").read_bytes() == (source / "note.txt").read_bytes()


@pytest.mark.parametrize("after", ['"Accepted"', '"Prepared"', '"InProgress"', "ferry.dev/restored-pv"])
async def test_a_cancel_that_overtakes_the_agents_own_write(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, after: str
) -> None:
    """The watch delivers a cancel while the answer to the agent's own write is still on its way: that
    answer is older than the cancel and must not replace it (the cancel was lost, and the agent looped on
    refused writes or handed the volume over anyway)."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        controller = w.agents["node-a"].controller
        assert controller is not None
        delivered = asyncio.Event()
        deliver = controller.watcher._deliver

        def noting(name: str, obj: dict[str, Any] | None) -> None:
            deliver(name, obj)
            if obj is not None and obj["spec"].get("cancel"):
                delivered.set()

        controller.watcher._deliver = noting
        hold = cluster.kube.hold_after("PATCH", r"/datadownloads/[^/]+$", after)
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore)
        async with asyncio.timeout(30):
            await hold.reached.wait()
        cancel(cluster, restore.datadownload)
        async with asyncio.timeout(30):
            await delivered.wait()
        hold.release()
        before = len(cluster.kube.requests)
        done = await wait_done(cluster, restore, timeout=30)
        assert done["status"]["phase"] == "Canceled", done["status"]
        await cleaned_up(w, restore)
        assert len(cluster.kube.requests) - before < 100, "the agent looped on refused writes"


async def test_a_pod_and_pvc_of_the_same_name_that_are_not_ours(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """Restore pods and PVCs are named after the DataDownload. Objects of that name that someone else made
    are neither used (restoring over someone's volume and handing it away) nor deleted by the cleanup."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path) as w:
        claim = {
            "metadata": {"name": "clash", "namespace": NS},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "immediate",
                "resources": {"requests": {"storage": "64Mi"}},
            },
        }
        cluster.kube.create("persistentvolumeclaims", claim, namespace=NS)
        bound = await cluster.kube.wait_for(
            "persistentvolumeclaims", "clash", NS, lambda c: c is not None and c["status"].get("phase") == "Bound"
        )
        foreign_pv = bound["spec"]["volumeName"]
        (w.sim.backing(foreign_pv) / "precious.db").write_text("someone else's data")
        pod = {"metadata": {"name": "clash", "namespace": NS}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        cluster.kube.create("pods", pod, namespace=NS)
        cluster.ensure_namespace("app")
        target = {
            "metadata": {"name": "data", "namespace": "app"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "immediate",
                "resources": {"requests": {"storage": "64Mi"}},
                "selector": {"matchLabels": {"velero.io/dynamic-pv-restore": "app.data.x"}},
            },
        }
        cluster.kube.create("persistentvolumeclaims", target, namespace="app")
        cluster.create_dd("clash", snapshot_id, "data", in_place=False)
        done = await cluster.wait_phase("clash", "Failed", "Completed", "Canceled", timeout=30)
        assert done["status"]["phase"] == "Failed"
        assert (
            "PersistentVolumeClaim velero/clash already exists and was not made for this restore"
            in (done["status"]["message"])
        )
        await cluster.kube.wait_for(
            "datadownloads", "clash", NS, lambda d: FINALIZER not in (d or {}).get("metadata", {}).get("finalizers", [])
        )
        await w.sim.settled()
        assert cluster.kube.get("pods", "clash", namespace=NS) is not None
        kept = cluster.kube.get("persistentvolumeclaims", "clash", namespace=NS)
        assert kept is not None
        assert kept["spec"]["volumeName"] == foreign_pv
        assert (w.sim.backing(foreign_pv) / "precious.db").read_text() == "someone else's data"
        left = cluster.kube.get("persistentvolumeclaims", "data", namespace="app")
        assert left is not None
        assert left["status"]["phase"] == "Pending"


REFUSED = {
    "create-restore-pvc": ("POST", r"/namespaces/velero/persistentvolumeclaims$"),
    "create-restore-pod": ("POST", r"/namespaces/velero/pods$"),
    "name-the-pv-on-the-target": ("PATCH", r"/namespaces/app/persistentvolumeclaims/data$"),
    "retain-the-pv": ("PATCH", r"/persistentvolumes/[^/]+$"),
}


@pytest.mark.parametrize("step", list(REFUSED))
async def test_a_request_the_api_server_keeps_refusing(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, step: str
) -> None:
    """A missing grant or an admission policy refuses one of the flow's requests (403) every time: the
    DataDownload fails after a few attempts quoting the refusal, rather than waiting out a timeout with
    only log lines; once the refusals stop, the cleanup leaves nothing behind."""
    snapshot_id, _ = tiny_snapshot
    method, path = REFUSED[step]
    async with world(cluster, tmp_path, nodes=["node-a"]) as w:
        cluster.kube.fail_next(method, path, 403, reason="Forbidden", count=3)
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore)
        done = await wait_done(cluster, restore, timeout=60)
        assert done["status"]["phase"] == "Failed", done["status"]
        assert "the Kubernetes API refused a request 3 times" in done["status"]["message"]
        assert "HTTP 403" in done["status"]["message"]
        assert "daemonset/rbac.yaml" in done["status"]["message"]
        await wait_released(cluster, restore, timeout=60)
        await w.sim.settled()
        assert_nothing_left(cluster, restore)


@pytest.mark.parametrize(("held", "end"), [('"Prepared"', "cancel"), ('"InProgress"', "delete")])
async def test_the_owning_node_is_gone(
    cluster: Cluster,
    tree_snapshot: tuple[str, Path],
    proxy: FaultyProxy,
    slow_bsl: str,
    tmp_path: Path,
    held: str,
    end: str,
) -> None:
    """The agent of the node holding the DataDownload (status.node) dies for good; Velero then cancels or
    deletes it. Prepared: another agent ends it at once; InProgress: after FERRY_ORPHAN_GRACE."""
    snapshot_id, _ = tree_snapshot
    proxy.stall_ranged = True
    async with world(cluster, tmp_path, agents=["node-a", "node-b"], orphan_grace_s=0.5) as w:
        hold = cluster.kube.hold_after("PATCH", r"/datadownloads/[^/]+$", held)
        async with killable_agent(w.settings("node-c", orphan_grace_s=0.5)) as owner:
            restore = start_restore(cluster.kube, snapshot_id=snapshot_id, bsl=slow_bsl)
            start_workload(cluster.kube, restore, node="node-c")
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await owner.kill()
        hold.release()
        proxy.stall_ranged = False
        proxy.released.set()
        if end == "delete":
            cluster.kube.delete("datadownloads", restore.datadownload, namespace=NS)
            await cluster.kube.wait_gone("datadownloads", restore.datadownload, NS, timeout=30)
        else:
            cancel(cluster, restore.datadownload)
            done = await wait_done(cluster, restore, timeout=30)
            assert done["status"]["phase"] == "Canceled"
            await wait_released(cluster, restore)
        await w.sim.settled()
        assert_nothing_left(cluster, restore)


async def test_the_acceptor_is_gone_before_it_exposed_anything(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """The agent that accepted dies for good before exposing anything. As with Velero's own mover, no other
    agent takes the exposing over (each would have to poll every Accepted object); the prepare timeout ends
    it, naming the agent it waited for, and nothing is left behind."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, agents=[]) as w:
        hold = cluster.kube.hold_after("PATCH", r"/datadownloads/[^/]+$", r'"Accepted"')
        async with killable_agent(w.settings("node-a")) as acceptor:
            restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await acceptor.kill()
        hold.release()
        start_workload(cluster.kube, restore)
        async with AsyncExitStack() as others:
            for node in ("node-b", "node-c"):
                await others.enter_async_context(
                    running_agent(w.settings(node, prepare_timeout_s=1.0, orphan_grace_s=0.5))
                )
            done = await wait_done(cluster, restore, timeout=30)
            assert done["status"]["phase"] == "Failed"
            assert "the prepare timeout" in done["status"]["message"]
            assert "the Ferry agent on node node-a to expose the volume" in done["status"]["message"]
            await cleaned_up(w, restore)


async def test_the_restore_pod_dies_after_prepared(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """The restore pod fails while its agent is away: on its return the agent fails the DataDownload naming
    the pod's failure, instead of waiting out operationTimeout for a volume that will not come back."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        hold = cluster.kube.hold_after("PATCH", r"/datadownloads/[^/]+$", r'"Prepared"')
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore)
        async with killable_agent(w.settings("node-a")) as first:
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await first.kill()
        hold.release()
        w.sim.fail_pod(NS, restore.datadownload, "OOMKilled")
        async with killable_agent(w.settings("node-a")):
            done = await wait_done(cluster, restore, timeout=30)
            assert done["status"]["phase"] == "Failed"
            assert "is Failed on node node-a: OOMKilled" in done["status"]["message"]
            await cleaned_up(w, restore)


@pytest.mark.parametrize(
    "held",
    [
        None,
        ("PATCH", r"/persistentvolumes/[^/]+$", r'"Retain"'),
        ("PATCH", r"/namespaces/app/persistentvolumeclaims/data$", None),
        ("PATCH", r"/persistentvolumes/[^/]+$", r'"claimRef"'),
    ],
    ids=["mid-transfer", "pv-retained", "target-named", "pv-claimed"],
)
async def test_the_target_pvc_is_deleted(
    cluster: Cluster,
    tree_snapshot: tuple[str, Path],
    proxy: FaultyProxy,
    slow_bsl: str,
    tmp_path: Path,
    held: tuple[str, str, str | None] | None,
) -> None:
    """The application's PVC is deleted while its volume is restored or handed over: Failed, and the
    restored PV goes with everything else (no one will ever claim it)."""
    snapshot_id, _ = tree_snapshot
    async with world(cluster, tmp_path) as w:
        hold = cluster.kube.hold_after(*held) if held else None
        proxy.stall_ranged = hold is None
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id, storage_class="immediate", bsl=slow_bsl)
        if hold is None:
            await cluster.wait_phase(restore.datadownload, "InProgress", timeout=30)
        else:
            async with asyncio.timeout(30):
                await hold.reached.wait()
        cluster.kube.delete("persistentvolumeclaims", "data", namespace="app")
        await cluster.kube.wait_gone("persistentvolumeclaims", "data", "app")
        if hold is not None:
            hold.release()
        proxy.stall_ranged = False
        proxy.released.set()
        done = await wait_done(cluster, restore)
        assert done["status"]["phase"] == "Failed", done["status"]
        await cleaned_up(w, restore)


async def test_ended_elsewhere_right_before_the_target_is_named(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path
) -> None:
    """Someone else (Velero, or another agent taking over a cancel) ends the DataDownload while its holder is
    about to name the PV on the target PVC. The holder must not hand over a volume that is being cleaned
    up, and no other agent may pull the volume from under a hand-over: the PVC stays unbound (it can be
    restored again), never pointing at a deleted PV."""
    snapshot_id, _ = tiny_snapshot
    async with world(cluster, tmp_path) as w:
        retained = cluster.kube.hold_after("PATCH", r"/persistentvolumes/[^/]+$", r'"Retain"')
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id)
        start_workload(cluster.kube, restore)
        async with asyncio.timeout(30):
            await retained.reached.wait()
        about_to_name = cluster.kube.hold_after("GET", r"/namespaces/app/persistentvolumeclaims/data$")
        retained.release()
        async with asyncio.timeout(30):
            await about_to_name.reached.wait()
        ended = {"status": {"phase": "Canceled", "message": "ended by Velero"}}
        cluster.kube.patch("datadownloads", restore.datadownload, ended, namespace=NS)
        about_to_name.release()
        await wait_released(cluster, restore)
        await w.sim.settled()
        target = cluster.kube.get("persistentvolumeclaims", "data", namespace="app")
        assert target is not None
        assert not target["spec"].get("volumeName"), "the PVC was given a volume that is being cleaned up"
        assert target["status"]["phase"] == "Pending"
        assert_nothing_left(cluster, restore)
        assert cluster.kube.list("persistentvolumes") == []


@pytest.mark.parametrize(
    "held",
    [
        ("PATCH", r"/persistentvolumes/[^/]+$", r'"Retain"'),
        ("PATCH", r"/namespaces/app/persistentvolumeclaims/data$", None),
    ],
    ids=["before-hand-over", "after-hand-over"],
)
async def test_back_after_an_absence_longer_than_the_operation_timeout(
    cluster: Cluster, tiny_snapshot: tuple[str, Path], tmp_path: Path, held: tuple[str, str, str | None]
) -> None:
    """The agent is down in the middle of the hand-over for longer than operationTimeout (its start, as
    recorded on the object, is long past). Back, it finishes the hand-over: the time it was away is not
    time the cluster kept it waiting, and once the PVC names the PV the volume is the application's."""
    snapshot_id, source = tiny_snapshot
    async with world(cluster, tmp_path, nodes=["node-a"], agents=[]) as w:
        hold = cluster.kube.hold_after(*held)
        restore = start_restore(cluster.kube, snapshot_id=snapshot_id, operation_timeout="1m")
        pod = start_workload(cluster.kube, restore)
        async with killable_agent(w.settings("node-a")) as first:
            async with asyncio.timeout(30):
                await hold.reached.wait()
            await first.kill()
        hold.release()
        long_ago = {"metadata": {"annotations": {"ferry.dev/rebind-started": "2020-01-01T00:00:00Z"}}}
        cluster.kube.patch("datadownloads", restore.datadownload, long_ago, namespace=NS)
        async with killable_agent(w.settings("node-a")):
            done = await wait_done(cluster, restore)
            assert done["status"]["phase"] == "Completed", done["status"].get("message")
            await wait_running(cluster, "app", pod)
            restored = w.sim.pod_volume("app", pod, "data")
            assert (restored / "note.txt").read_bytes() == (source / "note.txt").read_bytes()
            await w.sim.settled()
            assert_nothing_left(cluster, restore)
