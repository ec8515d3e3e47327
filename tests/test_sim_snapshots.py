"""Contract tests of CSI snapshots in the simulated cluster (``tests/support/sim/snapshots.py``) and the API
server rules they rely on (the ``snapshot.storage.k8s.io`` CRDs with their CEL rules, cluster-scoped custom
resources, PVC data sources, namespace termination). Each test names one rule of the package docstrings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from tests.support.kube import KubeError, KubeServer
from tests.support.kube.clients import api_client, data_download
from tests.support.sim import SimCluster
from tests.test_sim_contract import APP, NODES, NS, claim, events_about, phase_is, pod, running

Obj = dict[str, Any]
G, V = "snapshot.storage.k8s.io", "v1"
VS, VSC = "volumesnapshots", "volumesnapshotcontents"
PVC, PV = "persistentvolumeclaims", "persistentvolumes"
AS_SOURCE = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
BOUND = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
CONTENT_BOUND = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"
PVC_AS_SOURCE = "snapshot.storage.kubernetes.io/pvc-as-source-protection"
MI64 = 64 * 2**20


def snapshot(
    name: str, namespace: str = APP, *, pvc: str | None = None, content: str | None = None, **spec: Any
) -> Obj:
    source = {"persistentVolumeClaimName": pvc} if pvc else {"volumeSnapshotContentName": content}
    if pvc and "volumeSnapshotClassName" not in spec:
        spec["volumeSnapshotClassName"] = "snaps"
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": source, **spec},
    }


def static_content(name: str, handle: str, vs: str, namespace: str = NS, *, policy: str = "Delete") -> Obj:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": name},
        "spec": {
            "deletionPolicy": policy,
            "driver": SimCluster.PROVISIONER,
            "source": {"snapshotHandle": handle},
            "volumeSnapshotRef": {"name": vs, "namespace": namespace},
            "volumeSnapshotClassName": "snaps",
        },
    }


def with_spec(body: Obj, **fields: Any) -> Obj:
    return {**body, "spec": {**body["spec"], **fields}}


def from_snapshot(name: str, vs: str, namespace: str = NS, **spec: Any) -> Obj:
    source = {"apiGroup": G, "kind": "VolumeSnapshot", "name": vs}
    return claim(name, namespace, dataSource=source, **spec)


def ready(obj: Obj) -> bool:
    return (obj.get("status") or {}).get("readyToUse") is True


def errored(obj: Obj) -> bool:
    return bool(((obj.get("status") or {}).get("error") or {}).get("message"))


@pytest.fixture
async def sim(kube: KubeServer, tmp_path: Path) -> AsyncIterator[SimCluster]:
    kube.create("namespaces", {"metadata": {"name": APP}})
    async with SimCluster(kube, tmp_path / "cluster", NODES) as cluster:
        cluster.add_storage_class("fast")
        cluster.add_storage_class("local", binding="WaitForFirstConsumer")
        cluster.add_snapshot_class("snaps")
        cluster.add_snapshot_class("keep", deletion="Retain")
        yield cluster


async def app_volume(sim: SimCluster, *, files: dict[str, str], mounted: bool = True, size: str = "64Mi") -> Path:
    """PVC app/data with ``files``, mounted by pod app/app when ``mounted``; returns where its data is now."""
    kube = sim.kube
    kube.create(PVC, claim("data", APP, size=size))
    if mounted:
        kube.create("pods", pod("app", "data", namespace=APP))
        await running(kube, "app", APP)
        where = sim.pod_volume(APP, "app", "data")
    else:
        bound = await kube.wait_for(PVC, "data", APP, phase_is("Bound"))
        where = sim.backing(bound["spec"]["volumeName"])
    for name, text in files.items():
        (where / name).write_text(text)
    return where


async def cut(sim: SimCluster, name: str = "snap", namespace: str = APP, **spec: Any) -> tuple[Obj, Obj]:
    """A dynamic VolumeSnapshot of app/data, once ready, and its content."""
    sim.kube.create(VS, snapshot(name, namespace, pvc="data", **spec))
    done = await sim.kube.wait_for(VS, name, namespace, ready)
    content = sim.kube.get(VSC, done["status"]["boundVolumeSnapshotContentName"])
    assert content is not None
    return done, content


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# -- API server: the snapshot CRDs -----------------------------------------------------------------------------------


async def test_snapshot_kinds_are_served_with_their_scopes_and_status(kube: KubeServer, tmp_path: Path) -> None:
    async with api_client(kube, tmp_path) as api:
        custom = client.CustomObjectsApi(api)
        found = {r.name: r for r in (await custom.get_api_resources(G, V)).resources}
        assert set(found) == {
            "volumesnapshots",
            "volumesnapshots/status",
            "volumesnapshotcontents",
            "volumesnapshotcontents/status",
            "volumesnapshotclasses",
        }
        assert found["volumesnapshots"].namespaced
        assert not found["volumesnapshotcontents"].namespaced
        assert not found["volumesnapshotclasses"].namespaced
        made = await custom.create_cluster_custom_object(G, V, VSC, static_content("c1", "h1", "vs"))
        assert "namespace" not in made["metadata"]
        listed = await custom.list_cluster_custom_object(G, V, VSC)
        assert [i["metadata"]["name"] for i in listed["items"]] == ["c1"]
        status = {"status": {"readyToUse": True, "restoreSize": 5}}
        patched = await custom.patch_cluster_custom_object_status(
            G, V, VSC, "c1", status, _content_type="application/merge-patch+json"
        )
        assert patched["status"]["restoreSize"] == 5
        assert patched["metadata"]["generation"] == 1


@pytest.mark.parametrize(
    ("plural", "body", "field", "words"),
    [
        (VS, snapshot("s", NS, pvc="d"), "", ""),
        (VS, with_spec(snapshot("s", NS, pvc="d"), source={}), "spec.source", "exactly one of"),
        (
            VS,
            with_spec(
                snapshot("s", NS, pvc="d"), source={"persistentVolumeClaimName": "d", "volumeSnapshotContentName": "c"}
            ),
            "spec.source",
            "exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set",
        ),
        (
            VS,
            snapshot("s", NS, pvc="d", volumeSnapshotClassName=""),
            "spec.volumeSnapshotClassName",
            "must not be the empty",
        ),
        (VS, {**snapshot("s", NS, pvc="d"), "spec": {}}, "spec.source", "Required value"),
        (
            VSC,
            {**static_content("c", "h", "vs"), "spec": {"source": {"snapshotHandle": "h"}}},
            "spec.deletionPolicy",
            "Required value",
        ),
        (
            VSC,
            with_spec(static_content("c", "h", "vs"), source={"volumeHandle": "v", "snapshotHandle": "h"}),
            "spec.source",
            "exactly one of volumeHandle and snapshotHandle must be set",
        ),
        (
            VSC,
            with_spec(static_content("c", "h", "vs"), volumeSnapshotRef={"name": "vs"}),
            "spec.volumeSnapshotRef",
            "both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set",
        ),
        (VSC, static_content("c", "h", "vs", policy="Keep"), "spec.deletionPolicy", "Unsupported value"),
    ],
)
def test_snapshot_schemas_refuse_what_external_snapshotter_refuses(
    kube: KubeServer, plural: str, body: Obj, field: str, words: str
) -> None:
    if not field:  # the control: a valid one is accepted
        kube.create(plural, body)
        return
    with pytest.raises(KubeError) as raised:
        kube.create(plural, body)
    assert raised.value.code == 422
    causes = raised.value.details["causes"]
    assert any(c["field"] == field and words in c["message"] for c in causes), causes


def test_snapshot_sources_are_immutable(kube: KubeServer) -> None:
    kube.create(VS, snapshot("s", NS, pvc="data"))
    with pytest.raises(KubeError) as raised:
        kube.patch(VS, "s", {"spec": {"source": {"persistentVolumeClaimName": "other"}}}, NS)
    assert "persistentVolumeClaimName is immutable" in raised.value.message
    switch = {"spec": {"source": {"persistentVolumeClaimName": None, "volumeSnapshotContentName": "c"}}}
    with pytest.raises(KubeError) as switched:
        kube.patch(VS, "s", switch, NS)
    assert "persistentVolumeClaimName is required once set" in switched.value.message
    kube.patch(VS, "s", {"spec": {"volumeSnapshotClassName": "other"}}, NS)  # the class may change
    kube.create(VSC, static_content("c", "h", "s"))
    with pytest.raises(KubeError) as handle:
        kube.patch(VSC, "c", {"spec": {"source": {"snapshotHandle": "h2"}}})
    assert "snapshotHandle is immutable" in handle.value.message
    assert kube.patch(VSC, "c", {"spec": {"deletionPolicy": "Retain"}})["spec"]["deletionPolicy"] == "Retain"


def test_a_data_source_is_mirrored_into_data_source_ref(kube: KubeServer) -> None:
    made = kube.create(PVC, from_snapshot("c", "snap"))
    assert made["spec"]["dataSourceRef"] == {"apiGroup": G, "kind": "VolumeSnapshot", "name": "snap"}
    ref = claim("d", dataSourceRef={"apiGroup": G, "kind": "VolumeSnapshot", "name": "snap"})
    assert kube.create(PVC, ref)["spec"]["dataSource"] == {"apiGroup": G, "kind": "VolumeSnapshot", "name": "snap"}


# -- dynamic snapshots -----------------------------------------------------------------------------------------------


async def test_a_dynamic_snapshot_copies_the_data_of_that_moment(sim: SimCluster) -> None:
    kube = sim.kube
    mounted = await app_volume(sim, files={"a.txt": "one"})
    (mounted / "sub").mkdir()
    (mounted / "sub" / "b.txt").write_text("two")
    made = kube.create(VS, snapshot("snap", pvc="data"))
    done = await kube.wait_for(VS, "snap", APP, ready)
    (mounted / "a.txt").write_text("changed after the snapshot")
    (mounted / "late.txt").write_text("late")
    name = f"snapcontent-{made['metadata']['uid']}"
    assert done["status"]["boundVolumeSnapshotContentName"] == name
    assert done["status"]["restoreSize"] == "64Mi"
    assert done["status"]["creationTime"]
    assert "error" not in done["status"]
    content = kube.get(VSC, name)
    assert content is not None
    pv_name = kube.get(PVC, "data", APP)["spec"]["volumeName"]  # type: ignore[index]
    assert content["spec"]["source"] == {"volumeHandle": pv_name}
    assert content["spec"]["deletionPolicy"] == "Delete"
    assert content["spec"]["driver"] == sim.PROVISIONER
    assert content["spec"]["volumeSnapshotClassName"] == "snaps"
    assert content["spec"]["sourceVolumeMode"] == "Filesystem"
    ref = content["spec"]["volumeSnapshotRef"]
    assert (ref["kind"], ref["namespace"], ref["name"], ref["uid"]) == (
        "VolumeSnapshot",
        APP,
        "snap",
        made["metadata"]["uid"],
    )
    handle = content["status"]["snapshotHandle"]
    assert content["status"]["readyToUse"] is True
    assert content["status"]["restoreSize"] == MI64
    assert isinstance(content["status"]["creationTime"], int)
    assert sim.storage_snapshots() == {handle}
    assert tree(sim.snapshot_data(handle)) == {"a.txt": "one", "sub/b.txt": "two"}
    await sim.settled()
    final = kube.get(VS, "snap", APP)
    assert final is not None
    assert final["metadata"]["finalizers"] == [AS_SOURCE, BOUND]
    assert kube.get(VSC, name)["metadata"]["finalizers"] == [CONTENT_BOUND]  # type: ignore[index]
    assert PVC_AS_SOURCE not in (kube.get(PVC, "data", APP)["metadata"]["finalizers"])  # type: ignore[index]
    about = [e for e in kube.list("events", APP) if e["involvedObject"]["name"] == "snap"]
    assert sorted(e["reason"] for e in about) == ["CreatingSnapshot", "SnapshotCreated", "SnapshotReady"]
    assert {e["involvedObject"]["apiVersion"] for e in about} == {f"{G}/{V}"}


async def test_a_snapshot_of_an_unmounted_volume_reads_its_backing_storage(sim: SimCluster) -> None:
    await app_volume(sim, files={"x": "y"}, mounted=False)
    _, content = await cut(sim)
    assert tree(sim.snapshot_data(content["status"]["snapshotHandle"])) == {"x": "y"}


async def test_without_a_class_the_default_class_of_the_driver_is_used_or_the_snapshot_errs(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={}, mounted=False)
    body = snapshot("snap", pvc="data")
    del body["spec"]["volumeSnapshotClassName"]
    kube.create(VS, body)
    failed = await kube.wait_for(VS, "snap", APP, errored)
    assert (
        failed["status"]["error"]["message"]
        == "Failed to set default snapshot class with error cannot find default snapshot class"
    )
    assert failed["status"]["readyToUse"] is False
    sim.add_snapshot_class("default", default=True)
    done = await kube.wait_for(VS, "snap", APP, ready)
    assert done["spec"]["volumeSnapshotClassName"] == "default"
    assert "error" not in done["status"]


async def test_a_snapshot_of_an_unbound_claim_waits_for_it_to_be_bound(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create(PVC, claim("data", APP, cls="local"))
    kube.create(VS, snapshot("snap", pvc="data"))
    failed = await kube.wait_for(VS, "snap", APP, errored)
    assert "the PVC data is not yet bound to a PV" in failed["status"]["error"]["message"]
    assert kube.list(VSC) == []
    kube.create("pods", pod("app", "data", namespace=APP))
    await kube.wait_for(VS, "snap", APP, ready)


async def test_a_block_snapshot_is_an_image_copy_and_restores_grown_to_the_request(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create(PVC, claim("data", APP, size="4Mi", volumeMode="Block"))
    bound = await kube.wait_for(PVC, "data", APP, phase_is("Bound"))
    with sim.backing(bound["spec"]["volumeName"]).open("r+b") as image:
        image.seek(8192)
        image.write(b"block data")
    _, content = await cut(sim)
    assert content["spec"]["sourceVolumeMode"] == "Block"
    assert content["status"]["restoreSize"] == 4 * 2**20
    kube.create(PVC, from_snapshot("copy", "snap", APP, size="8Mi", volumeMode="Block"))
    restored = await kube.wait_for(PVC, "copy", APP, phase_is("Bound"))
    image_path = sim.backing(restored["spec"]["volumeName"])
    assert image_path.stat().st_size == 8 * 2**20
    with image_path.open("rb") as image:
        image.seek(8192)
        assert image.read(10) == b"block data"
    kube.create(PVC, from_snapshot("as-fs", "snap", APP, size="8Mi"))
    await sim.settled()
    [refused] = events_about(kube, "as-fs", "ProvisioningFailed")
    assert "modifies the mode of the source volume" in refused["message"]


# -- static binding --------------------------------------------------------------------------------------------------


async def test_a_pre_provisioned_content_binds_the_snapshot_it_names(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "data"}, mounted=False)
    _, original = await cut(sim)
    handle = original["status"]["snapshotHandle"]
    kube.create(VSC, static_content("backup-content", handle, "backup"))
    loose = await kube.wait_for(VSC, "backup-content", None, ready)
    assert "uid" not in loose["spec"]["volumeSnapshotRef"]
    assert "finalizers" not in loose["metadata"]
    made = kube.create(VS, snapshot("backup", NS, content="backup-content"))
    done = await kube.wait_for(VS, "backup", NS, ready)
    assert done["status"]["boundVolumeSnapshotContentName"] == "backup-content"
    assert done["status"]["restoreSize"] == "64Mi"
    await sim.settled()
    bound = kube.get(VSC, "backup-content")
    assert bound is not None
    assert bound["spec"]["volumeSnapshotRef"]["uid"] == made["metadata"]["uid"]
    assert bound["status"]["snapshotHandle"] == handle
    assert bound["metadata"]["finalizers"] == [CONTENT_BOUND]
    assert kube.get(VS, "backup", NS)["metadata"]["finalizers"] == [AS_SOURCE, BOUND]  # type: ignore[index]
    kube.create(VS, snapshot("intruder", NS, content="backup-content"))
    refused = await kube.wait_for(VS, "intruder", NS, errored)
    assert (
        refused["status"]["error"]["message"]
        == "VolumeSnapshotContent [backup-content] is bound to a different snapshot"
    )
    assert refused["status"]["readyToUse"] is False
    assert "boundVolumeSnapshotContentName" not in refused["status"]


async def test_a_snapshot_created_before_its_content_binds_once_the_content_names_its_uid(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "data"}, mounted=False)
    _, original = await cut(sim)
    made = kube.create(VS, snapshot("backup", NS, content="backup-content"))  # Velero's order: the VS first
    missing = await kube.wait_for(VS, "backup", NS, errored)
    assert missing["status"]["error"]["message"] == "VolumeSnapshotContent is missing"
    body = static_content("backup-content", original["status"]["snapshotHandle"], "backup")
    body["spec"]["volumeSnapshotRef"]["uid"] = made["metadata"]["uid"]
    kube.create(VSC, body)
    done = await kube.wait_for(VS, "backup", NS, ready)
    assert "error" not in done["status"]
    assert done["status"]["boundVolumeSnapshotContentName"] == "backup-content"


async def test_a_pre_provisioned_content_of_a_missing_handle_is_not_ready(sim: SimCluster) -> None:
    kube = sim.kube
    kube.create(VSC, static_content("ghost", "snapshot-does-not-exist", "ghost"))
    kube.create(VS, snapshot("ghost", NS, content="ghost"))
    failed = await kube.wait_for(VSC, "ghost", None, errored)
    assert "can not find snapshot for snapshotID snapshot-does-not-exist" in failed["status"]["error"]["message"]
    assert failed["status"]["readyToUse"] is False
    await sim.settled()
    vs = kube.get(VS, "ghost", NS)
    assert vs is not None
    assert vs["status"]["readyToUse"] is False
    assert vs["status"]["error"]["message"] == failed["status"]["error"]["message"]


# -- deletion --------------------------------------------------------------------------------------------------------


async def test_deleting_a_snapshot_under_delete_deletes_its_content_and_the_storage_snapshot(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    _, content = await cut(sim)
    kube.delete(VS, "snap", APP)
    await kube.wait_gone(VS, "snap", APP)
    await kube.wait_gone(VSC, content["metadata"]["name"], None)
    assert sim.storage_snapshots() == set()
    revisions = kube.history(VSC, content["metadata"]["name"])
    last = revisions[-1].object
    assert last["metadata"]["annotations"]["snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"] == "yes"


async def test_under_retain_the_content_and_storage_stay_until_the_content_is_deleted(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    done, content = await cut(sim, volumeSnapshotClassName="keep")
    name, handle = content["metadata"]["name"], content["status"]["snapshotHandle"]
    assert content["spec"]["deletionPolicy"] == "Retain"
    assert done["metadata"]["finalizers"] == [AS_SOURCE]  # no bound-protection under Retain
    kube.delete(VS, "snap", APP)
    await kube.wait_gone(VS, "snap", APP)
    await sim.settled()
    kept = kube.get(VSC, name)
    assert kept is not None
    assert kept["spec"]["volumeSnapshotRef"]["name"] == "snap"
    assert sim.storage_snapshots() == {handle}
    kube.delete(VSC, name)
    await kube.wait_gone(VSC, name, None)
    assert sim.storage_snapshots() == {handle}


async def test_a_bound_content_deleted_directly_waits_for_its_snapshot(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    _, content = await cut(sim)
    name = content["metadata"]["name"]
    kube.delete(VSC, name)
    await sim.settled()
    held = kube.get(VSC, name)
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]
    assert len(sim.storage_snapshots()) == 1
    kube.delete(VS, "snap", APP)
    await kube.wait_gone(VSC, name, None)
    await kube.wait_gone(VS, "snap", APP)
    assert sim.storage_snapshots() == set()


async def test_an_unbound_pre_provisioned_content_is_deleted_at_once_leaving_the_storage(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    _, original = await cut(sim, volumeSnapshotClassName="keep")
    handle = original["status"]["snapshotHandle"]
    kube.create(VSC, static_content("loose", handle, "nobody"))
    await kube.wait_for(VSC, "loose", None, ready)
    kube.delete(VSC, "loose")
    assert kube.get(VSC, "loose") is None
    await sim.settled()
    assert sim.storage_snapshots() == {handle}


# -- provisioning from a snapshot ------------------------------------------------------------------------------------


async def test_a_claim_is_provisioned_with_a_copy_of_the_snapshot(sim: SimCluster) -> None:
    kube = sim.kube
    mounted = await app_volume(sim, files={"f": "at snapshot"})
    await cut(sim)
    (mounted / "f").write_text("later")
    kube.create(PVC, from_snapshot("copy", "snap", APP))
    kube.create("pods", pod("reader", "copy", namespace=APP))
    await running(kube, "reader", APP)
    copy = sim.pod_volume(APP, "reader", "copy")
    assert tree(copy) == {"f": "at snapshot"}
    (copy / "f").write_text("changed in the copy")
    [content] = kube.list(VSC)
    assert tree(sim.snapshot_data(content["status"]["snapshotHandle"])) == {"f": "at snapshot"}
    pv = kube.get(PV, kube.get(PVC, "copy", APP)["spec"]["volumeName"])  # type: ignore[index]
    assert pv is not None
    assert set(pv["spec"]) == {
        "capacity",
        "accessModes",
        "volumeMode",
        "storageClassName",
        "persistentVolumeReclaimPolicy",
        "claimRef",
        "csi",
    }


async def test_a_snapshot_of_another_namespace_is_not_found(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={}, mounted=False)
    await cut(sim)
    kube.create(PVC, from_snapshot("copy", "snap", NS))
    await sim.settled()
    assert kube.get(PVC, "copy", NS)["status"]["phase"] == "Pending"  # type: ignore[index]
    [refused] = events_about(kube, "copy", "ProvisioningFailed")
    assert refused["type"] == "Warning"
    assert 'volumesnapshots.snapshot.storage.k8s.io "snap" not found' in refused["message"]


async def test_a_claim_smaller_than_the_restore_size_is_refused(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={}, mounted=False)
    await cut(sim)
    kube.create(PVC, from_snapshot("small", "snap", APP, size="32Mi"))
    await sim.settled()
    assert kube.get(PVC, "small", APP)["status"]["phase"] == "Pending"  # type: ignore[index]
    [refused] = events_about(kube, "small", "ProvisioningFailed")
    assert (
        f"requested volume size {32 * 2**20} is less than the size {MI64} for the source snapshot snap"
        in refused["message"]
    )
    kube.create(PVC, from_snapshot("bigger", "snap", APP, size="128Mi"))
    await kube.wait_for(PVC, "bigger", APP, phase_is("Bound"))


async def test_a_claim_waits_for_its_snapshot_to_exist_and_be_ready(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    kube.create(PVC, from_snapshot("copy", "snap", APP))
    await sim.settled()
    [missing] = events_about(kube, "copy", "ProvisioningFailed")
    assert "not found" in missing["message"]
    sim.pause_snapshots()
    kube.create(VS, snapshot("snap", pvc="data"))
    await sim.settled()
    waiting = kube.get(VS, "snap", APP)
    assert waiting is not None
    assert waiting["status"]["readyToUse"] is False
    assert waiting["status"]["boundVolumeSnapshotContentName"]
    assert kube.get(PVC, "copy", APP)["status"]["phase"] == "Pending"  # type: ignore[index]
    assert any("snapshot snap is not Ready" in e["message"] for e in events_about(kube, "copy", "ProvisioningFailed"))
    sim.resume_snapshots()
    bound = await kube.wait_for(PVC, "copy", APP, phase_is("Bound"))
    assert tree(sim.backing(bound["spec"]["volumeName"])) == {"f": "x"}


async def test_wait_for_first_consumer_applies_to_claims_from_snapshots(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    await cut(sim)
    kube.create(PVC, from_snapshot("copy", "snap", APP, storageClassName="local"))
    await sim.settled()
    assert kube.get(PVC, "copy", APP)["status"]["phase"] == "Pending"  # type: ignore[index]
    kube.create("pods", pod("reader", "copy", namespace=APP, nodeSelector={"kubernetes.io/hostname": "node-c"}))
    placed = await running(kube, "reader", APP)
    assert placed["spec"]["nodeName"] == "node-c"
    assert tree(sim.pod_volume(APP, "reader", "copy")) == {"f": "x"}


async def test_a_snapshot_restoring_a_pending_claim_is_kept_until_the_claim_is_bound(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    _, content = await cut(sim)
    kube.create(PVC, from_snapshot("copy", "snap", APP, storageClassName="local"))
    kube.delete(VS, "snap", APP)
    await sim.settled()
    held = kube.get(VS, "snap", APP)
    assert held is not None
    assert held["metadata"]["finalizers"] == [AS_SOURCE, BOUND]
    assert events_about(kube, "snap", "SnapshotDeletePending")
    assert kube.get(VSC, content["metadata"]["name"]) is not None
    kube.create("pods", pod("reader", "copy", namespace=APP))
    # Provisioning refuses a snapshot being deleted: the claim stays Pending, so both wait until it goes.
    await sim.settled()
    assert kube.get(PVC, "copy", APP)["status"]["phase"] == "Pending"  # type: ignore[index]
    assert any("is currently being deleted" in e["message"] for e in events_about(kube, "copy", "ProvisioningFailed"))
    kube.delete("pods", "reader", APP)
    kube.delete(PVC, "copy", APP)
    await kube.wait_gone(VS, "snap", APP)
    assert sim.storage_snapshots() == set()


async def test_a_bound_claim_no_longer_holds_its_snapshot(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    await cut(sim)
    kube.create(PVC, from_snapshot("copy", "snap", APP))
    await kube.wait_for(PVC, "copy", APP, phase_is("Bound"))
    kube.delete(VS, "snap", APP)
    await kube.wait_gone(VS, "snap", APP)
    assert sim.storage_snapshots() == set()
    assert kube.get(PVC, "copy", APP)["status"]["phase"] == "Bound"  # type: ignore[index]


# -- pause and resume ------------------------------------------------------------------------------------------------


async def test_while_paused_no_snapshot_is_cut_and_a_deleted_one_is_cleaned_up_on_resume(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"}, mounted=False)
    sim.pause_snapshots()
    kube.create(VS, snapshot("snap", pvc="data"))
    await sim.settled()
    waiting = kube.get(VS, "snap", APP)
    assert waiting is not None
    assert waiting["status"]["readyToUse"] is False
    content = kube.get(VSC, waiting["status"]["boundVolumeSnapshotContentName"])
    assert content is not None
    assert "status" not in content
    assert content["metadata"]["annotations"]["snapshot.storage.kubernetes.io/volumesnapshot-being-created"] == "yes"
    assert PVC_AS_SOURCE in kube.get(PVC, "data", APP)["metadata"]["finalizers"]  # type: ignore[index]
    assert sim.storage_snapshots() == set()
    kube.delete(VS, "snap", APP)  # cancelled while being cut
    await sim.settled()
    assert kube.get(VS, "snap", APP) is not None  # bound-protection holds it until the content is gone
    assert kube.get(VSC, content["metadata"]["name"])["metadata"]["deletionTimestamp"]  # type: ignore[index]
    sim.resume_snapshots()
    await kube.wait_gone(VS, "snap", APP)
    await kube.wait_gone(VSC, content["metadata"]["name"], None)
    await sim.settled()
    assert sim.storage_snapshots() == set()
    assert PVC_AS_SOURCE not in kube.get(PVC, "data", APP)["metadata"]["finalizers"]  # type: ignore[index]


# -- Velero's backup exposer, end to end -----------------------------------------------------------------------------


async def test_velero_csi_snapshot_exposer_flow_leaves_nothing_behind(sim: SimCluster) -> None:
    kube = sim.kube
    mounted = await app_volume(sim, files={"app.db": "records"})
    _, original = await cut(sim, "velero-data-x1")
    handle = original["status"]["snapshotHandle"]
    (mounted / "app.db").write_text("written after the backup started")
    # The exposer: a static content + snapshot in velero, then the original content Retain and both deleted.
    kube.create(VSC, static_content("backup-content-x1", handle, "backup-x1"))
    kube.create(VS, snapshot("backup-x1", NS, content="backup-content-x1"))
    await kube.wait_for(VS, "backup-x1", NS, ready)
    kube.patch(VSC, original["metadata"]["name"], {"spec": {"deletionPolicy": "Retain"}})
    kube.delete(VS, "velero-data-x1", APP)
    await kube.wait_gone(VS, "velero-data-x1", APP)
    kube.delete(VSC, original["metadata"]["name"])
    await kube.wait_gone(VSC, original["metadata"]["name"], None)
    assert sim.storage_snapshots() == {handle}
    kube.create(PVC, from_snapshot("backup-x1", "backup-x1", NS))
    kube.create("pods", pod("backup-x1", "backup-x1"))
    await running(kube, "backup-x1")
    assert tree(sim.pod_volume(NS, "backup-x1", "backup-x1")) == {"app.db": "records"}
    pv = kube.get(PVC, "backup-x1", NS)["spec"]["volumeName"]  # type: ignore[index]
    kube.delete("pods", "backup-x1", NS)
    kube.delete(PVC, "backup-x1", NS)
    kube.delete(VS, "backup-x1", NS)
    await kube.wait_gone(PV, pv, None)
    await kube.wait_gone(VSC, "backup-content-x1", None)
    await kube.wait_gone(VS, "backup-x1", NS)
    await sim.settled()
    assert sim.storage_snapshots() == set()
    assert kube.list(VSC) == []
    assert tree(mounted) == {"app.db": "written after the backup started"}


# -- namespace deletion ----------------------------------------------------------------------------------------------


async def test_deleting_a_namespace_empties_it_then_removes_it(sim: SimCluster) -> None:
    kube = sim.kube
    await app_volume(sim, files={"f": "x"})
    _, content = await cut(sim)
    kube.create("secrets", {"metadata": {"name": "s", "namespace": APP}})
    kube.create("datadownloads", data_download("dd", APP))
    pv = kube.get(PVC, "data", APP)["spec"]["volumeName"]  # type: ignore[index]
    marked = kube.delete("namespaces", APP)
    assert marked["status"]["phase"] == "Terminating"
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["spec"]["finalizers"] == ["kubernetes"]
    with pytest.raises(KubeError) as refused:
        kube.create("secrets", {"metadata": {"name": "late", "namespace": APP}})
    assert refused.value.code == 403
    assert refused.value.message == (
        f'secrets "late" is forbidden: unable to create new content in namespace {APP} because it is being terminated'
    )
    await kube.wait_gone("namespaces", APP, None, timeout=20)
    for plural in ("pods", PVC, VS, "secrets", "datadownloads", "events"):
        assert kube.list(plural, APP) == [], plural
    await kube.wait_gone(PV, pv, None)
    await kube.wait_gone(VSC, content["metadata"]["name"], None)
    assert sim.storage_snapshots() == set()
    assert [r.object["status"]["phase"] for r in kube.history("namespaces", APP)][-1] == "Terminating"


async def test_an_empty_namespace_goes_at_once_and_finalize_is_served(kube: KubeServer, tmp_path: Path) -> None:
    kube.create("namespaces", {"metadata": {"name": "empty"}})
    kube.delete("namespaces", "empty")
    assert kube.get("namespaces", "empty")["status"]["phase"] == "Terminating"  # type: ignore[index]
    async with api_client(kube, tmp_path) as api:
        core = client.CoreV1Api(api)
        body = {"metadata": {"name": "empty"}, "spec": {"finalizers": []}}
        await core.replace_namespace_finalize("empty", body)
    assert kube.get("namespaces", "empty") is None
