"""Contract tests of the simulated cluster (``tests/support/sim``) and the API server rules it relies on
(nodes, StorageClasses, PVC spec immutability, resourceVersion-clearing patches, protection finalizers,
graceful pod deletion). Each test names one rule of the package docstrings and asserts it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import KubeError, KubeServer
from tests.support.kube.clients import api_client, data_download, raw_session
from tests.support.sim import SimCluster
from tests.test_kube_contract import assert_status

NS, APP = "velero", "app"
NODES = ["node-a", "node-b", "node-c"]
Obj = dict[str, Any]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")


def claim(name: str, namespace: str = NS, *, cls: str | None = "fast", size: str = "64Mi", **spec: Any) -> Obj:
    body: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if cls is not None:
        body["storageClassName"] = cls
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def pod(name: str, *claims: str, namespace: str = NS, image: str = "busybox", **spec: Any) -> Obj:
    body: Obj = {
        "containers": [{"name": "main", "image": image}],
        "volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}} for i, c in enumerate(claims)],
    }
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": body}


def volume(name: str, *, size: str = "1Gi", cls: str = "fast", **spec: Any) -> Obj:
    body: Obj = {
        "capacity": {"storage": size},
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": cls,
        "persistentVolumeReclaimPolicy": "Retain",
        "csi": {"driver": SimCluster.PROVISIONER, "volumeHandle": name},
    }
    body.update(spec)
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": body}


def phase_is(*phases: str) -> Any:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def events_about(kube: KubeServer, name: str, reason: str) -> list[Obj]:
    return [e for e in kube.list("events") if e["involvedObject"]["name"] == name and e["reason"] == reason]


@pytest.fixture
async def core(kube: KubeServer, tmp_path: Path) -> AsyncIterator[client.CoreV1Api]:
    async with api_client(kube, tmp_path) as api:
        yield client.CoreV1Api(api)


@pytest.fixture
async def sim(kube: KubeServer, tmp_path: Path) -> AsyncIterator[SimCluster]:
    kube.create("namespaces", {"metadata": {"name": APP}})
    async with SimCluster(kube, tmp_path / "cluster", NODES) as cluster:
        cluster.add_storage_class("fast")
        cluster.add_storage_class("local", binding="WaitForFirstConsumer")
        cluster.add_storage_class("keep", reclaim="Retain")
        yield cluster


async def running(kube: KubeServer, name: str, namespace: str = NS) -> Obj:
    return await kube.wait_for("pods", name, namespace, phase_is("Running"))


# -- API server: nodes and StorageClasses -----------------------------------------------------------------


async def test_storage_classes_are_served_under_storage_k8s_io_with_defaults(kube: KubeServer, tmp_path: Path) -> None:
    async with api_client(kube, tmp_path) as api:
        storage = client.StorageV1Api(api)
        resources = {r.name: r for r in (await storage.get_api_resources()).resources}
        assert set(resources) == {"storageclasses"}
        assert not resources["storageclasses"].namespaced
        created = await storage.create_storage_class({"metadata": {"name": "sc"}, "provisioner": "csi.ferry.test"})
        assert created.reclaim_policy == "Delete"
        assert created.volume_binding_mode == "Immediate"
        read = await storage.read_storage_class("sc")
        assert read.provisioner == "csi.ferry.test"
        assert read.metadata.uid == created.metadata.uid
        assert "generation" not in kube.get("storageclasses", "sc")["metadata"]  # type: ignore[index]
        groups = [g.name for g in (await client.ApisApi(api).get_api_versions()).groups]
        assert "storage.k8s.io" in groups


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "provisioner"),
        ({"provisioner": "p", "reclaimPolicy": "Recycle"}, "reclaimPolicy"),
        ({"provisioner": "p", "volumeBindingMode": "Later"}, "volumeBindingMode"),
    ],
)
def test_storage_class_needs_a_provisioner_and_known_policies(kube: KubeServer, body: Obj, field: str) -> None:
    with pytest.raises(KubeError) as raised:
        kube.create("storageclasses", {"metadata": {"name": "sc"}, **body})
    assert raised.value.code == 422
    assert raised.value.details["causes"][0]["field"] == field


async def test_nodes_are_cluster_scoped_with_status(core: client.CoreV1Api) -> None:
    await core.create_node({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}})
    node = await core.read_node("n1")
    assert node.metadata.labels == {"kubernetes.io/hostname": "n1"}
    patched = await core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert patched.status.conditions[0].type == "Ready"


# -- API server: PVC spec immutability ---------------------------------------------------------------------


async def test_pvc_spec_is_immutable_except_volume_name_once_and_requests(core: client.CoreV1Api) -> None:
    await core.create_namespaced_persistent_volume_claim(NS, claim("c"))
    with pytest.raises(ApiException) as raised:
        await core.patch_namespaced_persistent_volume_claim("c", NS, {"spec": {"accessModes": ["ReadWriteMany"]}})
    body = assert_status(raised.value, 422, "Invalid")
    assert "spec is immutable after creation except resources.requests" in body["message"]
    assert body["details"]["causes"][0]["field"] == "spec"
    grown = await core.patch_namespaced_persistent_volume_claim(
        "c", NS, {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    )
    assert grown.spec.resources.requests == {"storage": "2Gi"}
    named = await core.patch_namespaced_persistent_volume_claim("c", NS, {"spec": {"volumeName": "pv-1"}})
    assert named.spec.volume_name == "pv-1"
    for change in ({"volumeName": "pv-2"}, {"volumeName": None}, {"storageClassName": "other"}):
        with pytest.raises(ApiException) as again:
            await core.patch_namespaced_persistent_volume_claim(
                "c", NS, {"spec": change}, _content_type="application/merge-patch+json"
            )
        assert_status(again.value, 422, "Invalid")


def test_pvc_spec_immutability_applies_to_put_and_the_python_controls(kube: KubeServer) -> None:
    created = kube.create("persistentvolumeclaims", claim("c"))
    created["spec"]["volumeMode"] = "Block"
    with pytest.raises(KubeError) as raised:
        kube.update("persistentvolumeclaims", created)
    assert raised.value.code == 422
    status_only = kube.patch("persistentvolumeclaims", "c", {"status": {"phase": "Bound"}}, NS)
    assert status_only["status"]["phase"] == "Bound"


# -- API server: patches may not clear the resourceVersion -------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/merge-patch+json", {"metadata": {"resourceVersion": None}}),
        ("application/merge-patch+json", {"metadata": {"resourceVersion": ""}}),
        ("application/strategic-merge-patch+json", {"metadata": {"resourceVersion": ""}}),
        ("application/json-patch+json", [{"op": "replace", "path": "/metadata/resourceVersion", "value": ""}]),
        ("application/json-patch+json", [{"op": "remove", "path": "/metadata/resourceVersion"}]),
    ],
)
async def test_a_patch_clearing_the_resource_version_is_422(kube: KubeServer, content_type: str, body: Any) -> None:
    kube.create("secrets", {"metadata": {"name": "s", "namespace": NS}})
    kube.create("datadownloads", data_download("dd"))
    paths = [f"/api/v1/namespaces/{NS}/secrets/s"]
    if content_type != "application/strategic-merge-patch+json":
        paths.append(f"/apis/velero.io/v2alpha1/namespaces/{NS}/datadownloads/dd")
    async with raw_session(kube) as http:
        for path in paths:
            async with http.patch(path, json=body, headers={"Content-Type": content_type}) as response:
                status = assert_status(await response.json(), 422, "Invalid")
                assert status["details"]["causes"][0]["field"] == "metadata.resourceVersion"
    with pytest.raises(KubeError) as raised:
        kube.patch("secrets", "s", {"metadata": {"resourceVersion": None}}, NS)
    assert raised.value.code == 422


# -- API server: protection finalizers and graceful pod deletion --------------------------------------------


async def test_admission_adds_protection_finalizers_to_new_claims_and_volumes(core: client.CoreV1Api) -> None:
    made = await core.create_namespaced_persistent_volume_claim(NS, claim("c"))
    assert made.metadata.finalizers == ["kubernetes.io/pvc-protection"]
    pv = await core.create_persistent_volume(volume("pv-1"))
    assert pv.metadata.finalizers == ["kubernetes.io/pv-protection"]
    await core.delete_namespaced_persistent_volume_claim("c", NS)
    kept = await core.read_namespaced_persistent_volume_claim("c", NS)
    assert kept.metadata.deletion_timestamp is not None


async def test_deleting_a_pod_on_a_node_is_graceful_until_grace_zero(kube: KubeServer, core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod(NS, pod("p", nodeName="node-a", terminationGracePeriodSeconds=45))
    await core.delete_namespaced_pod("p", NS)
    marked = kube.get("pods", "p", NS)
    assert marked is not None
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 45
    assert kube.history("pods", "p", NS)[-1].type == "MODIFIED"
    await core.delete_namespaced_pod("p", NS, grace_period_seconds=5)
    assert kube.get("pods", "p", NS)["metadata"]["deletionGracePeriodSeconds"] == 5  # type: ignore[index]
    await core.delete_namespaced_pod("p", NS, body=client.V1DeleteOptions(grace_period_seconds=0))
    assert kube.get("pods", "p", NS) is None
    kube.create("pods", pod("q", nodeName="node-a"))
    assert kube.delete("pods", "q", NS)["metadata"]["deletionGracePeriodSeconds"] == 30
    kube.delete("pods", "q", NS, grace_period_seconds=0)
    assert kube.get("pods", "q", NS) is None


def test_pods_on_no_node_or_terminated_are_deleted_at_once(kube: KubeServer) -> None:
    kube.create("pods", pod("unscheduled"))
    kube.delete("pods", "unscheduled", NS)
    assert kube.get("pods", "unscheduled", NS) is None
    done = pod("done", nodeName="node-a")
    done["status"] = {"phase": "Succeeded"}
    kube.create("pods", done)
    kube.delete("pods", "done", NS)
    assert kube.get("pods", "done", NS) is None


# -- the simulated cluster: nodes ------------------------------------------------------------------------------


async def test_sim_creates_labelled_nodes_and_a_kubelet_root_per_node(sim: SimCluster, tmp_path: Path) -> None:
    nodes = sim.kube.list("nodes")
    assert [n["metadata"]["name"] for n in nodes] == NODES
    assert all(n["metadata"]["labels"]["kubernetes.io/hostname"] == n["metadata"]["name"] for n in nodes)
    assert sim.kubelet_root("node-b") == tmp_path / "cluster" / "node-b" / "kubelet"
    assert len({sim.kubelet_root(n) for n in NODES}) == 3
    await sim.settled()


# -- the CSI provisioner ---------------------------------------------------------------------------------------


async def test_provisioner_provisions_immediate_claims_at_once(sim: SimCluster) -> None:
    kube = sim.kube
    made = kube.create("persistentvolumeclaims", claim("c", size="64Mi"))
    bound = await kube.wait_for("persistentvolumeclaims", "c", NS, phase_is("Bound"))
    name = f"pvc-{made['metadata']['uid']}"
    assert bound["spec"]["volumeName"] == name
    assert bound["status"]["capacity"] == {"storage": "64Mi"}
    assert bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes"
    assert bound["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] == sim.PROVISIONER
    pv = kube.get("persistentvolumes", name)
    assert pv is not None
    assert pv["status"]["phase"] == "Bound"
    assert pv["spec"]["csi"] == {"driver": sim.PROVISIONER, "volumeHandle": name, "fsType": "ext4"}
    assert pv["spec"]["capacity"] == {"storage": "64Mi"}
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert pv["spec"]["storageClassName"] == "fast"
    assert pv["spec"]["volumeMode"] == "Filesystem"
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "nodeAffinity" not in pv["spec"]
    ref = pv["spec"]["claimRef"]
    assert (ref["kind"], ref["namespace"], ref["name"], ref["uid"]) == (
        "PersistentVolumeClaim",
        NS,
        "c",
        made["metadata"]["uid"],
    )
    assert ref["resourceVersion"]
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == sim.PROVISIONER
    assert sim.backing(name).is_dir()
    assert events_about(kube, "c", "ProvisioningSucceeded")


async def test_provisioner_refuses_a_claim_with_a_selector(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c", selector={"matchLabels": {"app": "x"}}))
    await sim.settled()
    assert kube.get("persistentvolumeclaims", "c", NS)["status"]["phase"] == "Pending"  # type: ignore[index]
    assert kube.list("persistentvolumes") == []
    [refused] = events_about(kube, "c", "ProvisioningFailed")
    assert refused["type"] == "Warning"
    assert "claim Selector is not supported" in refused["message"]


async def test_wait_for_first_consumer_provisions_on_the_selected_node(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c", cls="local"))
    await sim.settled()
    assert kube.list("persistentvolumes") == []
    kube.create("pods", pod("p", "c", nodeSelector={"kubernetes.io/hostname": "node-b"}))
    placed = await running(kube, "p")
    assert placed["spec"]["nodeName"] == "node-b"
    bound = kube.get("persistentvolumeclaims", "c", NS)
    assert bound is not None
    assert bound["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node-b"
    pv = kube.get("persistentvolumes", bound["spec"]["volumeName"])
    assert pv is not None
    term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
    assert term == {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-b"]}]}
    # The scheduler sets nodeName only after binding: no revision has a node without a Bound claim.
    assert kube.history("pods", "p", NS)[0].object["spec"].get("nodeName") is None


async def test_block_claims_get_a_sparse_image_of_the_requested_size(sim: SimCluster) -> None:
    sim.kube.create("persistentvolumeclaims", claim("c", size="8Mi", volumeMode="Block"))
    bound = await sim.kube.wait_for("persistentvolumeclaims", "c", NS, phase_is("Bound"))
    image = sim.backing(bound["spec"]["volumeName"])
    assert image.is_file()
    assert image.stat().st_size == 8 * 1024 * 1024
    assert image.stat().st_blocks == 0


async def test_released_volumes_are_deleted_under_delete_and_kept_under_retain(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("gone"))
    kube.create("persistentvolumeclaims", claim("kept", cls="keep"))
    gone_pv = (await kube.wait_for("persistentvolumeclaims", "gone", NS, phase_is("Bound")))["spec"]["volumeName"]
    kept_pv = (await kube.wait_for("persistentvolumeclaims", "kept", NS, phase_is("Bound")))["spec"]["volumeName"]
    kube.delete("persistentvolumeclaims", "gone", NS)
    kube.delete("persistentvolumeclaims", "kept", NS)
    await kube.wait_gone("persistentvolumes", gone_pv, None)
    assert not sim.backing(gone_pv).exists()
    assert "Released" in [r.object["status"]["phase"] for r in kube.history("persistentvolumes", gone_pv)]
    released = await kube.wait_for("persistentvolumes", kept_pv, None, phase_is("Released"))
    await sim.settled()
    assert kube.get("persistentvolumes", kept_pv)["status"]["phase"] == "Released"  # type: ignore[index]
    assert released["spec"]["claimRef"]["name"] == "kept"
    assert sim.backing(kept_pv).is_dir()


# -- the PV binder --------------------------------------------------------------------------------------------


async def test_binder_binds_a_named_volume_only_if_its_labels_match_the_selector(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumes", volume("pv-1"))
    await kube.wait_for("persistentvolumes", "pv-1", None, phase_is("Available"))
    kube.create("persistentvolumeclaims", claim("c", volumeName="pv-1", selector={"matchLabels": {"app": "x"}}))
    await sim.settled()
    assert kube.get("persistentvolumeclaims", "c", NS)["status"]["phase"] == "Pending"  # type: ignore[index]
    kube.patch("persistentvolumes", "pv-1", {"metadata": {"labels": {"app": "x"}}})
    bound = await kube.wait_for("persistentvolumeclaims", "c", NS, phase_is("Bound"))
    assert "pv.kubernetes.io/bound-by-controller" not in bound["metadata"]["annotations"]
    pv = kube.get("persistentvolumes", "pv-1")
    assert pv is not None
    assert pv["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"]
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert pv["status"]["phase"] == "Bound"


async def test_binder_refuses_a_volume_whose_claim_ref_uid_names_another_claim(sim: SimCluster) -> None:
    kube = sim.kube
    ref = {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": NS, "name": "c", "uid": "0000-old"}
    kube.create("persistentvolumes", volume("pv-1", claimRef=ref))
    await kube.wait_for("persistentvolumes", "pv-1", None, phase_is("Released"))
    kube.create("persistentvolumeclaims", claim("c", volumeName="pv-1"))
    await sim.settled()
    assert kube.get("persistentvolumeclaims", "c", NS)["status"]["phase"] == "Pending"  # type: ignore[index]
    assert kube.get("persistentvolumes", "pv-1")["status"]["phase"] == "Released"  # type: ignore[index]


async def test_binder_binds_a_claim_to_a_volume_pre_bound_to_it_or_a_fitting_available_one(sim: SimCluster) -> None:
    kube = sim.kube
    ref = {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": NS, "name": "pre"}
    kube.create("persistentvolumes", volume("pv-pre", claimRef=ref))
    kube.create("persistentvolumes", volume("pv-small", size="32Mi"))
    kube.create("persistentvolumes", volume("pv-big", size="10Gi"))
    kube.create("persistentvolumes", volume("pv-fit", size="1Gi"))
    await sim.settled()
    assert kube.get("persistentvolumes", "pv-pre")["status"]["phase"] == "Available"  # type: ignore[index]
    kube.create("persistentvolumeclaims", claim("pre"))
    kube.create("persistentvolumeclaims", claim("any", size="512Mi"))
    pre = await kube.wait_for("persistentvolumeclaims", "pre", NS, phase_is("Bound"))
    any_ = await kube.wait_for("persistentvolumeclaims", "any", NS, phase_is("Bound"))
    assert pre["spec"]["volumeName"] == "pv-pre"
    assert any_["spec"]["volumeName"] == "pv-fit"
    assert any_["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert any_["status"]["capacity"] == {"storage": "1Gi"}


# -- protection controllers -------------------------------------------------------------------------------------


async def test_deleting_a_claim_used_by_a_pod_waits_for_the_pod(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c"))
    kube.create("pods", pod("p", "c"))
    await running(kube, "p")
    kube.delete("persistentvolumeclaims", "c", NS)
    await sim.settled()
    held = kube.get("persistentvolumeclaims", "c", NS)
    assert held is not None
    assert held["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    kube.delete("pods", "p", NS)
    await kube.wait_gone("persistentvolumeclaims", "c", NS)
    pv = held["spec"]["volumeName"]
    await kube.wait_gone("persistentvolumes", pv, None)


async def test_pv_protection_holds_a_bound_volume(sim: SimCluster) -> None:
    kube = sim.kube
    bound = kube.create("persistentvolumeclaims", claim("c", cls="keep"))
    pv = f"pvc-{bound['metadata']['uid']}"
    await kube.wait_for("persistentvolumes", pv, None, phase_is("Bound"))
    kube.delete("persistentvolumes", pv)
    await sim.settled()
    assert kube.get("persistentvolumes", pv)["metadata"]["finalizers"] == ["kubernetes.io/pv-protection"]  # type: ignore[index]
    kube.delete("persistentvolumeclaims", "c", NS)
    await kube.wait_gone("persistentvolumes", pv, None)


# -- the scheduler ----------------------------------------------------------------------------------------------


async def test_unschedulable_pods_get_the_scheduler_condition(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("pods", pod("p", nodeSelector={"disk": "ssd"}))
    waiting = await kube.wait_for("pods", "p", NS, lambda p: bool((p.get("status") or {}).get("conditions")))
    [condition] = waiting["status"]["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert condition["message"] == "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    assert "nodeName" not in waiting["spec"]
    sim.taint("node-a", "dedicated", "ferry")
    kube.patch("nodes", "node-b", {"metadata": {"labels": {"disk": "ssd"}}})
    kube.patch("nodes", "node-c", {"spec": {"unschedulable": True}})
    kube.create("pods", pod("q", nodeSelector={"disk": "hdd"}))
    message = (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {dedicated: ferry}, 1 node(s) were unschedulable."
    )
    await kube.wait_for(
        "pods",
        "q",
        NS,
        lambda p: any(c.get("message") == message for c in (p.get("status") or {}).get("conditions") or []),
    )
    placed = await running(kube, "p")
    assert placed["spec"]["nodeName"] == "node-b"


async def test_scheduler_honours_affinity_tolerations_and_picks_the_least_loaded_node(sim: SimCluster) -> None:
    kube = sim.kube
    for node in NODES:
        sim.taint(node, "dedicated", "ferry", "NoExecute")
    kube.create("pods", pod("plain"))
    toleration = [{"key": "dedicated", "operator": "Equal", "value": "ferry", "effect": "NoExecute"}]
    kube.create("pods", pod("first", tolerations=toleration))
    assert (await running(kube, "first"))["spec"]["nodeName"] == "node-a"
    kube.create("pods", pod("second", tolerations=[{"operator": "Exists"}]))
    assert (await running(kube, "second"))["spec"]["nodeName"] == "node-b"
    term = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a", "node-b"]}]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    kube.create("pods", pod("third", tolerations=toleration, affinity=affinity))
    assert (await running(kube, "third"))["spec"]["nodeName"] == "node-a"
    await sim.settled()
    assert "nodeName" not in kube.get("pods", "plain", NS)["spec"]  # type: ignore[index]
    assert kube.get("pods", "first", NS)["status"]["conditions"]  # type: ignore[index]


async def test_scheduler_follows_the_node_affinity_of_bound_volumes(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c", cls="local"))
    kube.create("pods", pod("first", "c", nodeSelector={"kubernetes.io/hostname": "node-c"}))
    await running(kube, "first")
    kube.delete("pods", "first", NS)
    await kube.wait_gone("pods", "first", NS)
    kube.create("pods", pod("again", "c"))
    assert (await running(kube, "again"))["spec"]["nodeName"] == "node-c"
    kube.create("pods", pod("stuck", "c", nodeSelector={"kubernetes.io/hostname": "node-a"}))
    await kube.wait_for(
        "pods",
        "stuck",
        NS,
        lambda p: any(
            "volume node affinity conflict" in c.get("message", "")
            for c in (p.get("status") or {}).get("conditions") or []
        ),
    )


async def test_pods_wait_for_unbound_immediate_claims_and_skip_the_scheduler_with_a_node(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c", cls=None))  # no class: nothing provisions it
    kube.create("pods", pod("p", "c"))
    message = "0/3 nodes are available: 3 pod has unbound immediate PersistentVolumeClaims."
    await kube.wait_for(
        "pods",
        "p",
        NS,
        lambda p: any(c.get("message") == message for c in (p.get("status") or {}).get("conditions") or []),
    )
    kube.create("pods", pod("pinned", nodeName="node-c", nodeSelector={"nowhere": "x"}))
    assert (await running(kube, "pinned"))["spec"]["nodeName"] == "node-c"
    revisions = kube.history("pods", "pinned", NS)
    assert all(r.object["spec"]["nodeName"] == "node-c" for r in revisions)


# -- the kubelet --------------------------------------------------------------------------------------------------


async def test_kubelet_mounts_filesystem_volumes_in_the_kubelet_layout(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c"))
    made = kube.create("pods", pod("p", "c"))
    placed = await running(kube, "p")
    pv = kube.get("persistentvolumeclaims", "c", NS)["spec"]["volumeName"]  # type: ignore[index]
    path = sim.pod_volume(NS, "p", "c")
    root = sim.kubelet_root(placed["spec"]["nodeName"])
    assert path == root / "pods" / made["metadata"]["uid"] / "volumes" / "kubernetes.io~csi" / pv / "mount"
    assert path.is_dir()
    assert (path.parent / "vol_data.json").is_file()
    assert not sim.backing(pv).exists()
    assert {c["type"]: c["status"] for c in placed["status"]["conditions"]}["Ready"] == "True"
    assert placed["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]


async def test_pod_deletion_is_graceful_unmounts_and_data_persists(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c"))
    first = kube.create("pods", pod("p", "c"))
    await running(kube, "p")
    (sim.pod_volume(NS, "p", "c") / "hello.txt").write_text("kept")
    pv = kube.get("persistentvolumeclaims", "c", NS)["spec"]["volumeName"]  # type: ignore[index]
    node = kube.get("pods", "p", NS)["spec"]["nodeName"]  # type: ignore[index]
    kube.delete("pods", "p", NS)
    await kube.wait_gone("pods", "p", NS)
    types = [r.type for r in kube.history("pods", "p", NS)]
    assert types[-2:] == ["MODIFIED", "DELETED"]
    terminating = [r.object for r in kube.history("pods", "p", NS) if r.object["metadata"].get("deletionTimestamp")]
    assert terminating[0]["metadata"]["deletionGracePeriodSeconds"] == 30
    assert (sim.backing(pv) / "hello.txt").read_text() == "kept"
    assert not (sim.kubelet_root(node) / "pods" / first["metadata"]["uid"]).exists()
    kube.create("pods", pod("again", "c"))
    await running(kube, "again")
    assert (sim.pod_volume(NS, "again", "c") / "hello.txt").read_text() == "kept"


async def test_a_volume_is_mounted_by_one_pod_at_a_time(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c", accessModes=["ReadWriteMany"]))
    kube.create("pods", pod("one", "c"))
    await running(kube, "one")
    kube.create("pods", pod("two", "c"))
    await sim.settled()
    assert kube.get("pods", "two", NS)["status"]["phase"] == "Pending"  # type: ignore[index]
    kube.delete("pods", "one", NS)
    await running(kube, "two")


async def test_image_pull_failures_leave_the_pod_pending(sim: SimCluster) -> None:
    kube = sim.kube
    sim.fail_image("ghcr.io/ferry/missing:1")
    kube.create("pods", pod("p", image="ghcr.io/ferry/missing:1"))
    stuck = await kube.wait_for("pods", "p", NS, lambda p: bool((p.get("status") or {}).get("containerStatuses")))
    assert stuck["status"]["phase"] == "Pending"
    assert stuck["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    await sim.settled()
    assert kube.get("pods", "p", NS)["status"]["phase"] == "Pending"  # type: ignore[index]


async def test_fail_pod_fails_it_and_unmounts(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("c"))
    kube.create("pods", pod("p", "c"))
    await running(kube, "p")
    pv = kube.get("persistentvolumeclaims", "c", NS)["spec"]["volumeName"]  # type: ignore[index]
    sim.fail_pod(NS, "p", "OOMKilled")
    failed = await kube.wait_for("pods", "p", NS, phase_is("Failed"))
    assert failed["status"]["message"] == "OOMKilled"
    assert sim.backing(pv).is_dir()
    with pytest.raises(LookupError):
        sim.pod_volume(NS, "p", "c")
    kube.delete("pods", "p", NS)
    assert kube.get("pods", "p", NS) is None  # terminated pods go at once


@needs_root
async def test_block_volumes_are_loop_devices_over_the_image(sim: SimCluster) -> None:
    kube = sim.kube
    made = kube.create("persistentvolumeclaims", claim("c", size="4Mi", volumeMode="Block"))
    pv = f"pvc-{made['metadata']['uid']}"
    await kube.wait_for("persistentvolumeclaims", "c", NS, phase_is("Bound"))
    payload = os.urandom(4096)
    with sim.backing(pv).open("r+b") as image:
        image.seek(8192)
        image.write(payload)
    created = kube.create("pods", pod("p", "c"))
    placed = await running(kube, "p")
    link = sim.pod_volume(NS, "p", "c")
    root = sim.kubelet_root(placed["spec"]["nodeName"])
    assert link == root / "pods" / created["metadata"]["uid"] / "volumeDevices" / "kubernetes.io~csi" / pv
    device = os.readlink(link)
    assert device.startswith("/dev/loop")
    with open(device, "rb") as f:
        f.seek(8192)
        assert f.read(4096) == payload
    kube.delete("pods", "p", NS)
    await kube.wait_gone("pods", "p", NS)
    assert not link.exists()
    assert sim.in_use == {}


# -- rebinding a restored volume to the application's claim --------------------------------------------------------


async def _restored_volume(sim: SimCluster) -> str:
    """A restore PVC in ``velero`` bound to a new PV, filled by an expose pod; returns the PV's name."""
    kube = sim.kube
    kube.create("persistentvolumeclaims", claim("restore"))
    kube.create("pods", pod("expose", "restore"))
    await running(kube, "expose")
    (sim.pod_volume(NS, "expose", "restore") / "data.txt").write_text("restored")
    return str(kube.get("persistentvolumeclaims", "restore", NS)["spec"]["volumeName"])  # type: ignore[index]


async def _release(sim: SimCluster, pv: str) -> None:
    sim.kube.delete("pods", "expose", NS)
    sim.kube.delete("persistentvolumeclaims", "restore", NS)
    await sim.kube.wait_gone("persistentvolumeclaims", "restore", NS)


def _target_claim() -> Obj:
    return claim("data", APP, selector={"matchLabels": {"velero.io/dynamic-pv-restore": "app.data.x1"}})


async def test_rebind_retained_volume_to_the_target_claim_keeps_the_data(sim: SimCluster) -> None:
    kube = sim.kube
    pv = await _restored_volume(sim)
    kube.patch("persistentvolumes", pv, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
    await _release(sim, pv)
    await kube.wait_for("persistentvolumes", pv, None, phase_is("Released"))
    target = _target_claim()
    target["spec"]["volumeName"] = pv
    kube.create("persistentvolumeclaims", target)
    ref = {"namespace": APP, "name": "data", "uid": None, "resourceVersion": None}
    labels = {"velero.io/dynamic-pv-restore": "app.data.x1"}
    kube.patch("persistentvolumes", pv, {"metadata": {"labels": labels}, "spec": {"claimRef": ref}})
    bound = await kube.wait_for("persistentvolumeclaims", "data", APP, phase_is("Bound"))
    assert bound["spec"]["volumeName"] == pv
    assert kube.get("persistentvolumes", pv)["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"]  # type: ignore[index]
    kube.create("pods", pod("app", "data", namespace=APP))
    await running(kube, "app", APP)
    assert (sim.pod_volume(APP, "app", "data") / "data.txt").read_text() == "restored"


async def test_rebind_without_retain_loses_the_volume(sim: SimCluster) -> None:
    kube = sim.kube
    pv = await _restored_volume(sim)
    await _release(sim, pv)
    await kube.wait_gone("persistentvolumes", pv, None)
    assert not sim.backing(pv).exists()
    target = _target_claim()
    target["spec"]["volumeName"] = pv
    kube.create("persistentvolumeclaims", target)
    await sim.settled()
    assert kube.get("persistentvolumeclaims", "data", APP)["status"]["phase"] == "Pending"  # type: ignore[index]


async def test_rebind_with_the_old_claim_uid_left_in_place_stays_pending(sim: SimCluster) -> None:
    kube = sim.kube
    pv = await _restored_volume(sim)
    kube.patch("persistentvolumes", pv, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
    await _release(sim, pv)
    target = _target_claim()
    target["spec"]["volumeName"] = pv
    kube.create("persistentvolumeclaims", target)
    labels = {"velero.io/dynamic-pv-restore": "app.data.x1"}
    kube.patch(
        "persistentvolumes",
        pv,
        {"metadata": {"labels": labels}, "spec": {"claimRef": {"namespace": APP, "name": "data"}}},
    )
    await sim.settled()
    assert kube.get("persistentvolumeclaims", "data", APP)["status"]["phase"] == "Pending"  # type: ignore[index]
    assert kube.get("persistentvolumes", pv)["status"]["phase"] == "Released"  # type: ignore[index]
