"""Contract tests of ``velero_crds(version)``: each supported Velero release's CRDs, as the server applies them.

The expected shapes are restated here from Velero's releases (not derived from ``crds.py``), so a slip in
either place fails: which DataDownload fields each release keeps, and which it prunes without an error
(``acceptedByNode`` on 1.14 and 1.15 above all: the status write succeeds and the field is gone), and which
Backup fields and phases each release has."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import KubeServer, velero_crds
from tests.support.kube.clients import api_client, backup, backup_storage_location, data_download
from tests.support.kube.crds import VELERO_VERSIONS

G, V, NS, DD = "velero.io", "v2alpha1", "velero", "datadownloads"
MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}

SPEC_ALWAYS = {"backupStorageLocation", "cancel", "dataMoverConfig", "datamover", "operationTimeout", "snapshotID"}
SPEC_ALWAYS |= {"sourceNamespace", "targetVolume"}
STATUS_ALWAYS = {"completionTimestamp", "message", "node", "phase", "progress", "startTimestamp"}
# release -> (spec fields added to SPEC_ALWAYS, status fields added to STATUS_ALWAYS)
DATA_DOWNLOAD_ADDITIONS: dict[str, tuple[set[str], set[str]]] = {
    "1.14": (set(), set()),
    "1.15": (set(), set()),
    "1.16": ({"nodeOS"}, {"acceptedByNode", "acceptedTimestamp"}),
    "1.17": ({"nodeOS"}, {"acceptedByNode", "acceptedTimestamp"}),
    "1.18": ({"nodeOS", "snapshotSize"}, {"acceptedByNode", "acceptedTimestamp"}),
}
FULL_SPEC: dict[str, Any] = {"dataMoverConfig": {"a": "b"}, "datamover": "ferry", "cancel": False, "nodeOS": "linux"}
FULL_SPEC |= {"snapshotSize": 4096}
FULL_STATUS = {
    "phase": "Accepted",
    "node": "n1",
    "message": "m",
    "progress": {"bytesDone": 1, "totalBytes": 2},
    "startTimestamp": "2025-01-02T03:04:05Z",
    "completionTimestamp": "2025-01-02T03:04:06Z",
    "acceptedByNode": "n1",
    "acceptedTimestamp": "2025-01-02T03:04:05Z",
}


@pytest.fixture(params=VELERO_VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


async def started(version: str, *, status_subresource: bool = False) -> KubeServer:
    server = await KubeServer(velero_crds(version, status_subresource=status_subresource)).start()
    server.create("namespaces", {"metadata": {"name": NS}})
    return server


@pytest.fixture
async def kube_at(version: str) -> AsyncIterator[KubeServer]:
    server = await started(version)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def custom_at(kube_at: KubeServer, tmp_path: Path) -> AsyncIterator[client.CustomObjectsApi]:
    async with api_client(kube_at, tmp_path) as api:
        yield client.CustomObjectsApi(api)


def test_versions_are_the_supported_releases_and_the_default_is_the_newest() -> None:
    assert VELERO_VERSIONS == ("1.14", "1.15", "1.16", "1.17", "1.18")
    assert velero_crds() == velero_crds("1.18")
    assert velero_crds(status_subresource=True) == velero_crds("1.18", status_subresource=True)
    assert [c["spec"]["names"]["plural"] for c in velero_crds()] == [
        "datadownloads",
        "datauploads",
        "backupstoragelocations",
        "backups",
    ]
    without = [c["spec"]["names"]["plural"] for c in velero_crds(data_uploads=False)]
    assert without == ["datadownloads", "backupstoragelocations", "backups"]


@pytest.mark.parametrize("unknown", ["1.13", "1.19", "v1.18", "1.18.0", ""])
def test_an_undescribed_release_is_refused(unknown: str) -> None:
    with pytest.raises(ValueError, match="not described"):
        velero_crds(unknown)


async def test_data_download_keeps_exactly_the_release_fields(version: str, custom_at: client.CustomObjectsApi) -> None:
    body = data_download("dd", **FULL_SPEC)
    body["status"] = dict(FULL_STATUS)
    created = await custom_at.create_namespaced_custom_object(G, V, NS, DD, body)
    spec_added, status_added = DATA_DOWNLOAD_ADDITIONS[version]
    assert set(created["spec"]) == SPEC_ALWAYS | spec_added
    assert set(created["status"]) == STATUS_ALWAYS | status_added
    stored = await custom_at.get_namespaced_custom_object(G, V, NS, DD, "dd")
    assert set(stored["spec"]) == SPEC_ALWAYS | spec_added
    assert set(stored["status"]) == STATUS_ALWAYS | status_added


async def test_accepted_by_node_is_silently_pruned_before_1_16(
    version: str, custom_at: client.CustomObjectsApi
) -> None:
    await custom_at.create_namespaced_custom_object(G, V, NS, DD, data_download("dd"))
    patch = {"status": {"phase": "Accepted", "acceptedByNode": "n1", "acceptedTimestamp": "2025-01-02T03:04:05Z"}}
    written = await custom_at.patch_namespaced_custom_object(G, V, NS, DD, "dd", patch, **MERGE)
    assert written["status"]["phase"] == "Accepted"
    if version in ("1.14", "1.15"):
        assert "acceptedByNode" not in written["status"]
        assert "acceptedTimestamp" not in written["status"]
    else:
        assert written["status"]["acceptedByNode"] == "n1"
        assert written["status"]["acceptedTimestamp"] == "2025-01-02T03:04:05Z"


@pytest.mark.parametrize("version", ["1.14", "1.15"])
async def test_accepted_by_node_is_pruned_through_the_status_subresource_too(version: str, tmp_path: Path) -> None:
    server = await started(version, status_subresource=True)
    try:
        async with api_client(server, tmp_path) as api:
            custom = client.CustomObjectsApi(api)
            await custom.create_namespaced_custom_object(G, V, NS, DD, data_download("dd"))
            patch = {"status": {"phase": "Accepted", "acceptedByNode": "n1"}}
            written = await custom.patch_namespaced_custom_object_status(G, V, NS, DD, "dd", patch, **MERGE)
            assert written["status"] == {"phase": "Accepted"}
            assert server.get(DD, "dd", NS)["status"] == {"phase": "Accepted"}  # type: ignore[index]
    finally:
        await server.stop()


async def test_strict_field_validation_names_a_field_the_release_lacks(
    version: str, custom_at: client.CustomObjectsApi
) -> None:
    body = data_download("dd", nodeOS="linux")
    if version in ("1.14", "1.15"):
        with pytest.raises(ApiException) as raised:
            await custom_at.create_namespaced_custom_object(G, V, NS, DD, body, field_validation="Strict")
        assert raised.value.status == 400
        assert "nodeOS" in str(raised.value.body)
    else:
        created = await custom_at.create_namespaced_custom_object(G, V, NS, DD, body, field_validation="Strict")
        assert created["spec"]["nodeOS"] == "linux"


async def test_node_os_is_validated_where_it_exists(version: str, custom_at: client.CustomObjectsApi) -> None:
    body = data_download("dd", nodeOS="plan9")
    if version in ("1.14", "1.15"):
        created = await custom_at.create_namespaced_custom_object(G, V, NS, DD, body)
        assert "nodeOS" not in created["spec"]
    else:
        with pytest.raises(ApiException) as raised:
            await custom_at.create_namespaced_custom_object(G, V, NS, DD, body)
        assert raised.value.status == 422


def _storage_location(credential: dict[str, Any], ca_cert_ref: dict[str, Any]) -> dict[str, Any]:
    body = backup_storage_location()
    body["spec"]["credential"] = credential
    body["spec"]["objectStorage"]["caCertRef"] = ca_cert_ref
    return body


async def test_backup_storage_location_shape_per_release(version: str, custom_at: client.CustomObjectsApi) -> None:
    body = _storage_location({"key": "cloud"}, {"name": "ca", "key": "ca.crt"})
    created = await custom_at.create_namespaced_custom_object(G, "v1", NS, "backupstoragelocations", body)
    # controller-gen v0.16 (Velero 1.16 on) writes the default of a reference's name.
    expected_credential = {"key": "cloud"} if version in ("1.14", "1.15") else {"key": "cloud", "name": ""}
    assert created["spec"]["credential"] == expected_credential
    if version == "1.18":
        assert created["spec"]["objectStorage"]["caCertRef"] == {"name": "ca", "key": "ca.crt"}
    else:
        assert "caCertRef" not in created["spec"]["objectStorage"]


async def test_backup_fields_per_release(version: str, custom_at: client.CustomObjectsApi) -> None:
    body = backup("b", volumeGroupSnapshotLabelKey="velero.io/volume-group")
    body["status"] = {"phase": "InProgress", "queuePosition": 2}
    created = await custom_at.create_namespaced_custom_object(G, "v1", NS, "backups", body)
    assert created["metadata"]["generation"] == 1
    newer = version not in ("1.14", "1.15", "1.16")
    assert ("volumeGroupSnapshotLabelKey" in created["spec"]) is newer  # 1.17 on
    expected_status = {"phase": "InProgress", "queuePosition": 2} if version == "1.18" else {"phase": "InProgress"}
    assert created["status"] == expected_status


@pytest.mark.parametrize("phase", ["Queued", "ReadyToStart"])
async def test_backup_queue_phases_exist_from_1_18(
    version: str, custom_at: client.CustomObjectsApi, phase: str
) -> None:
    await custom_at.create_namespaced_custom_object(G, "v1", NS, "backups", backup("b"))
    patch = {"status": {"phase": phase}}
    if version == "1.18":
        written = await custom_at.patch_namespaced_custom_object(G, "v1", NS, "backups", "b", patch, **MERGE)
        assert written["status"]["phase"] == phase
        return
    with pytest.raises(ApiException) as raised:
        await custom_at.patch_namespaced_custom_object(G, "v1", NS, "backups", "b", patch, **MERGE)
    assert raised.value.status == 422
    assert "status.phase" in str(raised.value.body)


@pytest.mark.parametrize(
    ("version", "spec_fields", "status_fields"),
    [
        ("1.15", set(), set()),
        ("1.16", set(), {"acceptedByNode", "acceptedTimestamp", "nodeOS"}),
        ("1.17", {"driver"}, {"acceptedByNode", "acceptedTimestamp", "nodeOS"}),
        ("1.18", {"driver"}, {"acceptedByNode", "acceptedTimestamp", "nodeOS", "incrementalBytes"}),
    ],
)
def test_data_upload_fields_per_release(version: str, spec_fields: set[str], status_fields: set[str]) -> None:
    crd = next(c for c in velero_crds(version, data_uploads=True) if c["spec"]["names"]["plural"] == "datauploads")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    csi = set(schema["spec"]["properties"]["csiSnapshot"]["properties"])
    assert csi == {"snapshotClass", "storageClass", "volumeSnapshot"} | spec_fields
    base = {"completionTimestamp", "dataMoverResult", "message", "node", "path", "phase", "progress", "snapshotID"}
    assert set(schema["status"]["properties"]) == base | {"startTimestamp"} | status_fields
