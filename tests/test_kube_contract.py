"""Contract tests of the strict test apiserver: authentication, discovery, the verbs and their status codes,
resourceVersions and generation, the status split, patches, schemas, finalizers, built-in rules, refusals.

Each test names one rule (the rules are listed in ``tests/support/kube/__init__.py``) and asserts it,
through kubernetes_asyncio where the client can express the request and raw HTTP where it cannot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kube import KubeServer, velero_crds
from tests.support.kube.clients import (
    STORAGE_LOCATION_LABEL,
    api_client,
    backup,
    backup_storage_location,
    data_download,
    raw_session,
)

G, V, NS, DD = "velero.io", "v2alpha1", "velero", "datadownloads"
VELERO_CRDS = Path(__file__).resolve().parents[2] / "shared/velero/crds"


def assert_status(body: Any, code: int, reason: str) -> dict[str, Any]:
    """``body`` (an ApiException, a JSON text or a dict) is a Failure ``Status`` with this code and reason."""
    if isinstance(body, ApiException):
        assert body.status == code, body
        body = body.body
    if isinstance(body, str | bytes):
        body = json.loads(body)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


@pytest.fixture
async def api(kube: KubeServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    async with api_client(kube, tmp_path) as c:
        yield c


@pytest.fixture
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


async def create_dd(custom: client.CustomObjectsApi, name: str = "dd", **spec: Any) -> dict[str, Any]:
    result: dict[str, Any] = await custom.create_namespaced_custom_object(G, V, NS, DD, data_download(name, **spec))
    return result


async def merge_patch(custom: client.CustomObjectsApi, name: str, patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await custom.patch_namespaced_custom_object(
        G, V, NS, DD, name, patch, _content_type="application/merge-patch+json"
    )
    return result


# -- authentication and discovery ------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "wrong-token"])
async def test_requests_without_the_right_bearer_token_get_401_status(kube: KubeServer, token: str) -> None:
    async with raw_session(kube, token=token) as http, http.get("/api/v1/namespaces") as response:
        assert response.status == 401
        assert_status(await response.json(), 401, "Unauthorized")


async def test_kubeconfig_reaches_the_server_with_the_token(kube: KubeServer, core: client.CoreV1Api) -> None:
    namespaces = await core.list_namespace()
    assert {n.metadata.name for n in namespaces.items} == {"default", NS}
    assert kube.requests[-1].path == "/api/v1/namespaces"
    assert kube.requests[-1].status == 200


async def test_core_discovery_lists_builtins_and_their_status_subresources(api: client.ApiClient) -> None:
    resources = {r.name: r for r in (await client.CoreV1Api(api).get_api_resources()).resources}
    assert set(resources) == {
        "namespaces",
        "namespaces/status",
        "secrets",
        "pods",
        "pods/status",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "persistentvolumes",
        "persistentvolumes/status",
        "nodes",
        "nodes/status",
        "events",
    }
    assert not resources["namespaces"].namespaced
    assert not resources["persistentvolumes"].namespaced
    assert not resources["nodes"].namespaced
    assert resources["pods"].namespaced
    assert resources["pods"].kind == "Pod"
    assert "watch" in resources["secrets"].verbs
    assert sorted(resources["pods/status"].verbs) == ["get", "patch", "update"]
    versions = await client.CoreApi(api).get_api_versions()
    assert versions.versions == ["v1"]


async def test_apis_lists_the_crd_groups(api: client.ApiClient) -> None:
    groups = (await client.ApisApi(api).get_api_versions()).groups
    assert [g.name for g in groups] == ["coordination.k8s.io", "snapshot.storage.k8s.io", "storage.k8s.io", "velero.io"]
    assert {v.version for v in groups[0].versions} == {"v1"}
    assert {v.version for v in groups[2].versions} == {"v1"}
    assert {v.version for v in groups[3].versions} == {"v1", "v2alpha1"}
    assert groups[3].preferred_version.version == "v1"


async def test_velero_discovery_without_status_subresource(custom: client.CustomObjectsApi) -> None:
    found = await custom.get_api_resources(G, V)
    assert [r.name for r in found.resources] == ["datadownloads", "datauploads"]
    dd = found.resources[0]
    assert dd.namespaced
    assert dd.kind == "DataDownload"
    assert sorted(dd.verbs) == ["create", "delete", "get", "list", "patch", "update", "watch"]
    v1 = (await custom.get_api_resources(G, "v1")).resources
    assert [(r.name, r.kind, r.short_names) for r in v1] == [
        ("backupstoragelocations", "BackupStorageLocation", ["bsl"]),
        ("backups", "Backup", None),
    ]


async def test_velero_discovery_lists_status_subresources_only_when_declared(
    kube_status: KubeServer, tmp_path: Path
) -> None:
    async with api_client(kube_status, tmp_path) as api:
        found = await client.CustomObjectsApi(api).get_api_resources(G, V)
    assert [r.name for r in found.resources] == [
        "datadownloads",
        "datadownloads/status",
        "datauploads",
        "datauploads/status",
    ]
    assert sorted(found.resources[1].verbs) == ["get", "patch", "update"]


# -- verbs, status codes and server-set fields -----------------------------------------------------


async def test_create_answers_201_with_server_set_fields(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    created = await create_dd(custom)  # create_* decodes only a 201 response
    meta = created["metadata"]
    assert kube.requests[-1].status == 201
    assert meta["generation"] == 1
    assert isinstance(meta["resourceVersion"], str)
    assert meta["resourceVersion"].isdigit()
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert len(meta["creationTimestamp"]) == len("2025-01-01T00:00:00Z")


async def test_create_takes_the_name_from_generate_name(custom: client.CustomObjectsApi) -> None:
    body = data_download("")
    body["metadata"] = {"generateName": "restore-"}
    created = await custom.create_namespaced_custom_object(G, V, NS, DD, body)
    assert created["metadata"]["name"].startswith("restore-")
    assert len(created["metadata"]["name"]) == len("restore-") + 5


async def test_get_put_patch_answer_200_and_delete_answers_200_with_the_object(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    created = await create_dd(custom)
    got = await custom.get_namespaced_custom_object(G, V, NS, DD, "dd")
    got["spec"]["snapshotID"] = "changed"
    put = await custom.replace_namespaced_custom_object(G, V, NS, DD, "dd", got)
    patched = await merge_patch(custom, "dd", {"spec": {"cancel": True}})
    deleted = await custom.delete_namespaced_custom_object(G, V, NS, DD, "dd")
    assert [r.status for r in kube.requests[-4:]] == [200, 200, 200, 200]
    assert put["spec"]["snapshotID"] == "changed"
    assert patched["spec"]["cancel"] is True
    assert deleted["metadata"]["uid"] == created["metadata"]["uid"]
    assert deleted["spec"]["cancel"] is True
    assert kube.get(DD, "dd", NS) is None


async def test_create_of_an_existing_name_is_409_already_exists(custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    with pytest.raises(ApiException) as raised:
        await create_dd(custom)
    body = assert_status(raised.value, 409, "AlreadyExists")
    assert body["message"] == 'datadownloads.velero.io "dd" already exists'
    assert body["details"] == {"name": "dd", "group": "velero.io", "kind": "datadownloads"}


async def test_missing_objects_are_404_not_found(custom: client.CustomObjectsApi) -> None:
    calls = [
        custom.get_namespaced_custom_object(G, V, NS, DD, "nope"),
        custom.replace_namespaced_custom_object(G, V, NS, DD, "nope", data_download("nope")),
        merge_patch(custom, "nope", {"spec": {"cancel": True}}),
        custom.delete_namespaced_custom_object(G, V, NS, DD, "nope"),
    ]
    for call in calls:
        with pytest.raises(ApiException) as raised:
            await call
        body = assert_status(raised.value, 404, "NotFound")
        assert body["message"] == 'datadownloads.velero.io "nope" not found'


async def test_create_in_a_missing_namespace_is_404(custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as raised:
        await custom.create_namespaced_custom_object(G, V, "elsewhere", DD, data_download("dd", "elsewhere"))
    assert assert_status(raised.value, 404, "NotFound")["message"] == 'namespaces "elsewhere" not found'


async def test_resource_versions_are_opaque_strings_that_change_on_every_write(
    custom: client.CustomObjectsApi,
) -> None:
    first = (await create_dd(custom))["metadata"]["resourceVersion"]
    second = (await merge_patch(custom, "dd", {"spec": {"cancel": True}}))["metadata"]["resourceVersion"]
    assert isinstance(first, str)
    assert isinstance(second, str)
    assert first != second


# -- optimistic concurrency -------------------------------------------------------------------------


async def test_put_with_a_stale_resource_version_is_409_conflict(custom: client.CustomObjectsApi) -> None:
    stale = await create_dd(custom)
    await merge_patch(custom, "dd", {"spec": {"cancel": True}})
    with pytest.raises(ApiException) as raised:
        await custom.replace_namespaced_custom_object(G, V, NS, DD, "dd", stale)
    body = assert_status(raised.value, 409, "Conflict")
    assert "the object has been modified" in body["message"]


async def test_put_of_a_custom_resource_without_resource_version_is_422(custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    with pytest.raises(ApiException) as raised:
        await custom.replace_namespaced_custom_object(G, V, NS, DD, "dd", data_download("dd"))
    body = assert_status(raised.value, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.resourceVersion"


async def test_put_of_a_builtin_without_resource_version_is_unconditional(core: client.CoreV1Api) -> None:
    await core.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "data": {"a": "YQ=="}})
    replaced = await core.replace_namespaced_secret("s", NS, {"metadata": {"name": "s"}, "data": {"b": "Yg=="}})
    assert replaced.data == {"b": "Yg=="}


async def test_merge_patch_carrying_resource_version_is_a_precondition(custom: client.CustomObjectsApi) -> None:
    created = await create_dd(custom)
    rv = created["metadata"]["resourceVersion"]
    patched = await merge_patch(custom, "dd", {"metadata": {"resourceVersion": rv}, "spec": {"cancel": True}})
    assert patched["spec"]["cancel"] is True
    with pytest.raises(ApiException) as raised:
        await merge_patch(custom, "dd", {"metadata": {"resourceVersion": rv}, "spec": {"cancel": False}})
    assert_status(raised.value, 409, "Conflict")


async def test_delete_preconditions_are_checked(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as raised:
        await custom.delete_namespaced_custom_object(G, V, NS, DD, "dd", body=options)
    assert_status(raised.value, 409, "Conflict")
    assert kube.get(DD, "dd", NS) is not None


# -- no-op updates and generation --------------------------------------------------------------------


async def test_an_update_that_changes_nothing_writes_nothing(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    created = await create_dd(custom)
    same = await custom.replace_namespaced_custom_object(G, V, NS, DD, "dd", created)
    patched = await merge_patch(custom, "dd", {"spec": {"snapshotID": created["spec"]["snapshotID"]}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert [r.type for r in kube.history(DD, "dd", NS)] == ["ADDED"]


async def test_generation_bumps_on_changes_outside_metadata_including_status_without_subresource(
    custom: client.CustomObjectsApi,
) -> None:
    await create_dd(custom)
    labelled = await merge_patch(custom, "dd", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    spec_changed = await merge_patch(custom, "dd", {"spec": {"cancel": True}})
    assert spec_changed["metadata"]["generation"] == 2
    status_changed = await merge_patch(custom, "dd", {"status": {"phase": "Accepted"}})
    assert status_changed["status"]["phase"] == "Accepted"
    assert status_changed["metadata"]["generation"] == 3


async def test_status_subresource_splits_main_and_status_writes(kube_status: KubeServer, tmp_path: Path) -> None:
    async with api_client(kube_status, tmp_path) as api:
        custom = client.CustomObjectsApi(api)
        body = data_download("dd")
        body["status"] = {"phase": "Completed"}
        created = await custom.create_namespaced_custom_object(G, V, NS, DD, body)
        assert "status" not in created  # a create drops the status when /status exists
        main = await merge_patch(custom, "dd", {"spec": {"cancel": True}, "status": {"phase": "Failed"}})
        assert "status" not in main
        assert main["metadata"]["generation"] == 2
        status = await custom.patch_namespaced_custom_object_status(
            G,
            V,
            NS,
            DD,
            "dd",
            {"spec": {"snapshotID": "ignored"}, "status": {"phase": "Accepted"}},
            _content_type="application/merge-patch+json",
        )
        assert status["status"] == {"phase": "Accepted"}
        assert status["spec"]["snapshotID"] == "0123abcd"
        assert status["metadata"]["generation"] == 2  # status writes do not bump generation
        status["status"]["phase"] = "InProgress"
        put = await custom.replace_namespaced_custom_object_status(G, V, NS, DD, "dd", status)
        assert put["status"]["phase"] == "InProgress"
        got = await custom.get_namespaced_custom_object_status(G, V, NS, DD, "dd")
        assert got["status"]["phase"] == "InProgress"
        put_main = await custom.replace_namespaced_custom_object(G, V, NS, DD, "dd", {**got, "status": {}})
        assert put_main["status"]["phase"] == "InProgress"


async def test_status_path_is_404_where_the_crd_declares_no_subresource(custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    with pytest.raises(ApiException) as raised:
        await custom.get_namespaced_custom_object_status(G, V, NS, DD, "dd")
    assert_status(raised.value, 404, "NotFound")


async def test_builtin_main_writes_keep_status_and_create_sets_the_initial_phase(core: client.CoreV1Api) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    created = await core.create_namespaced_pod(NS, {**pod, "status": {"phase": "Running"}})
    assert created.status.phase == "Pending"
    patched = await core.patch_namespaced_pod("p", NS, {"status": {"phase": "Running"}})
    assert patched.status.phase == "Pending"
    status = await core.patch_namespaced_pod_status("p", NS, {"status": {"phase": "Running"}})
    assert status.status.phase == "Running"


# -- patches ----------------------------------------------------------------------------------------


async def test_custom_object_patch_without_content_type_is_rejected(custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    with pytest.raises(ApiException) as raised:
        await custom.patch_namespaced_custom_object(G, V, NS, DD, "dd", {"spec": {"cancel": True}})
    assert_status(raised.value, 400, "BadRequest")  # the client sent a JSON-patch content type with a dict


async def test_custom_resources_refuse_strategic_merge_with_415(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    await create_dd(custom)
    headers = {"Content-Type": "application/strategic-merge-patch+json"}
    path = f"/apis/{G}/{V}/namespaces/{NS}/{DD}/dd"
    async with raw_session(kube) as http, http.patch(path, data=b"{}", headers=headers) as response:
        body = assert_status(await response.json(), 415, "UnsupportedMediaType")
    assert "application/merge-patch+json" in body["message"]


async def test_server_side_apply_is_refused_loudly_with_415(custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    with pytest.raises(ApiException) as raised:
        await custom.patch_namespaced_custom_object(
            G, V, NS, DD, "dd", data_download("dd"), field_manager="t", _content_type="application/apply-patch+yaml"
        )
    body = assert_status(raised.value, 415, "UnsupportedMediaType")
    assert body["message"] == "server-side apply is not modelled by this test server"


async def test_json_patch_applies_and_a_body_that_is_not_a_list_is_400(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    await create_dd(custom)
    ops = [
        {"op": "replace", "path": "/spec/snapshotID", "value": "new"},
        {"op": "add", "path": "/spec/cancel", "value": True},
    ]
    patched = await custom.patch_namespaced_custom_object(G, V, NS, DD, "dd", ops)
    assert patched["spec"]["snapshotID"] == "new"
    assert patched["spec"]["cancel"] is True
    headers = {"Content-Type": "application/json-patch+json"}
    async with (
        raw_session(kube) as http,
        http.patch(f"/apis/{G}/{V}/namespaces/{NS}/{DD}/dd", data=b'{"op": "add"}', headers=headers) as response,
    ):
        assert_status(await response.json(), 400, "BadRequest")


async def test_json_patch_with_a_failing_test_op_is_422(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    await create_dd(custom)
    ops = [
        {"op": "test", "path": "/spec/snapshotID", "value": "other"},
        {"op": "replace", "path": "/spec/snapshotID", "value": "x"},
    ]
    with pytest.raises(ApiException) as raised:
        await custom.patch_namespaced_custom_object(G, V, NS, DD, "dd", ops)
    assert_status(raised.value, 422, "Invalid")
    assert kube.get(DD, "dd", NS)["spec"]["snapshotID"] == "0123abcd"  # type: ignore[index]


async def test_builtin_strategic_merge_merges_finalizers_while_merge_patch_replaces_them(
    core: client.CoreV1Api,
) -> None:
    claim = {"metadata": {"name": "c", "finalizers": ["a/one"]}, "spec": {"accessModes": ["ReadWriteOnce"]}}
    await core.create_namespaced_persistent_volume_claim(NS, claim)
    strategic = await core.patch_namespaced_persistent_volume_claim("c", NS, {"metadata": {"finalizers": ["b/two"]}})
    assert strategic.metadata.finalizers == ["a/one", "kubernetes.io/pvc-protection", "b/two"]
    merged = await core.patch_namespaced_persistent_volume_claim(
        "c", NS, {"metadata": {"finalizers": ["c/three"]}}, _content_type="application/merge-patch+json"
    )
    assert merged.metadata.finalizers == ["c/three"]


# -- schema ------------------------------------------------------------------------------------------


async def test_unknown_fields_are_pruned_silently(custom: client.CustomObjectsApi) -> None:
    body = data_download("dd", surprise=1)
    body["extra"] = {"a": 1}
    body["metadata"]["bogus"] = "x"
    created = await custom.create_namespaced_custom_object(G, V, NS, DD, body)
    assert "surprise" not in created["spec"]
    assert "extra" not in created
    assert "bogus" not in created["metadata"]


async def test_strict_field_validation_rejects_unknown_fields(custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as raised:
        await custom.create_namespaced_custom_object(
            G, V, NS, DD, data_download("dd", surprise=1), field_validation="Strict"
        )
    assert 'unknown field "spec.surprise"' in assert_status(raised.value, 400, "BadRequest")["message"]


@pytest.mark.parametrize(
    ("spec", "field", "cause"),
    [
        ({"cancel": "yes"}, "spec.cancel", "FieldValueTypeInvalid"),
        ({"snapshotSize": "big"}, "spec.snapshotSize", "FieldValueTypeInvalid"),
        ({"snapshotSize": 2**63}, "spec.snapshotSize", "FieldValueInvalid"),
        ({"nodeOS": "plan9"}, "spec.nodeOS", "FieldValueNotSupported"),
        ({"targetVolume": {"namespace": "app", "pvc": "data"}}, "spec.targetVolume.pv", "FieldValueRequired"),
        ({"dataMoverConfig": {"k": 1}}, "spec.dataMoverConfig[k]", "FieldValueTypeInvalid"),
        ({"operationTimeout": None}, "spec.operationTimeout", "FieldValueTypeInvalid"),
    ],
)
async def test_schema_violations_are_422_invalid_with_causes(
    custom: client.CustomObjectsApi, spec: dict[str, Any], field: str, cause: str
) -> None:
    with pytest.raises(ApiException) as raised:
        await create_dd(custom, **spec)
    body = assert_status(raised.value, 422, "Invalid")
    assert body["message"].startswith('DataDownload.velero.io "dd" is invalid: ')
    assert body["details"]["kind"] == "DataDownload"
    assert [(c["field"], c["reason"]) for c in body["details"]["causes"]] == [(field, cause)]


async def test_missing_required_spec_fields_are_each_named(custom: client.CustomObjectsApi) -> None:
    body = data_download("dd")
    body["spec"] = {}
    with pytest.raises(ApiException) as raised:
        await custom.create_namespaced_custom_object(G, V, NS, DD, body)
    causes = assert_status(raised.value, 422, "Invalid")["details"]["causes"]
    assert {c["field"] for c in causes} == {
        "spec.backupStorageLocation",
        "spec.operationTimeout",
        "spec.snapshotID",
        "spec.sourceNamespace",
        "spec.targetVolume",
    }


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        ({"phase": "InProgress"}, True),
        ({"phase": "Running"}, False),
        ({"startTimestamp": "2025-01-02T03:04:05Z"}, True),
        ({"startTimestamp": "2025-01-02T03:04:05.123456+01:00"}, True),
        ({"startTimestamp": "yesterday"}, False),
        ({"startTimestamp": "2025-01-02 03:04:05"}, False),
        ({"startTimestamp": None}, True),
        ({"progress": {"bytesDone": 5, "totalBytes": 10}}, True),
        ({"progress": {"bytesDone": 1.5}}, False),
    ],
)
async def test_status_enum_format_and_nullable_rules(
    custom: client.CustomObjectsApi, status: dict[str, Any], ok: bool
) -> None:
    await create_dd(custom)
    if ok:
        updated = await merge_patch(custom, "dd", {"status": status})
        assert updated["status"] == {k: v for k, v in status.items() if v is not None}
        return
    with pytest.raises(ApiException) as raised:
        await merge_patch(custom, "dd", {"status": status})
    assert_status(raised.value, 422, "Invalid")


async def test_nullable_fields_keep_an_explicit_null_on_put(custom: client.CustomObjectsApi) -> None:
    created = await create_dd(custom)
    created["status"] = {"phase": "New", "completionTimestamp": None}
    put = await custom.replace_namespaced_custom_object(G, V, NS, DD, "dd", created)
    assert put["status"] == {"phase": "New", "completionTimestamp": None}


async def test_schema_defaults_are_applied(kube: KubeServer, custom: client.CustomObjectsApi) -> None:
    body = backup_storage_location()
    body["spec"]["credential"] = {"key": "cloud"}
    created = await custom.create_namespaced_custom_object(G, "v1", NS, "backupstoragelocations", body)
    assert created["spec"]["credential"] == {"key": "cloud", "name": ""}


# -- finalizers ---------------------------------------------------------------------------------------


async def test_delete_with_finalizers_marks_and_removing_the_last_finalizer_deletes(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    body = data_download("dd")
    body["metadata"]["finalizers"] = ["ferry.dev/cleanup"]
    await custom.create_namespaced_custom_object(G, V, NS, DD, body)
    marked = await custom.delete_namespaced_custom_object(G, V, NS, DD, "dd")
    assert marked["metadata"]["deletionTimestamp"].endswith("Z")
    assert marked["metadata"]["generation"] == 2
    assert kube.get(DD, "dd", NS) is not None
    with pytest.raises(ApiException) as raised:
        await merge_patch(custom, "dd", {"metadata": {"finalizers": ["ferry.dev/cleanup", "new/one"]}})
    assert_status(raised.value, 422, "Invalid")
    await merge_patch(custom, "dd", {"metadata": {"finalizers": None}})
    assert kube.get(DD, "dd", NS) is None
    assert [r.type for r in kube.history(DD, "dd", NS)] == ["ADDED", "MODIFIED", "DELETED"]


# -- built-in kinds -----------------------------------------------------------------------------------


async def test_builtins_need_a_name_or_generate_name(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as raised:
        await core.create_namespaced_secret(NS, {"metadata": {}})
    body = assert_status(raised.value, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"


async def test_secret_data_is_base64_and_string_data_merges_into_it(kube: KubeServer, core: client.CoreV1Api) -> None:
    body = {"metadata": {"name": "s"}, "data": {"a": "YQ=="}, "stringData": {"b": "bee"}}
    created = await core.create_namespaced_secret(NS, body)
    assert created.data == {"a": "YQ==", "b": "YmVl"}
    assert created.type == "Opaque"
    stored = kube.get("secrets", "s", NS)
    assert stored is not None
    assert "stringData" not in stored
    with pytest.raises(ApiException) as raised:
        await core.create_namespaced_secret(NS, {"metadata": {"name": "t"}, "data": {"a": "not base64!"}})
    assert assert_status(raised.value, 422, "Invalid")["details"]["causes"][0]["field"] == "data[a]"


async def test_events_must_name_their_own_namespace_in_involved_object(core: client.CoreV1Api) -> None:
    involved = {"kind": "DataDownload", "namespace": NS, "name": "dd"}
    created = await core.create_namespaced_event(NS, {"metadata": {"generateName": "dd."}, "involvedObject": involved})
    assert created.involved_object.name == "dd"
    elsewhere = {**involved, "namespace": "app"}
    with pytest.raises(ApiException) as raised:
        await core.create_namespaced_event(NS, {"metadata": {"generateName": "dd."}, "involvedObject": elsewhere})
    body = assert_status(raised.value, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "involvedObject.namespace"


async def test_cluster_scoped_builtins_live_outside_namespaces(core: client.CoreV1Api) -> None:
    pv = await core.create_persistent_volume({"metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"}}})
    assert pv.metadata.namespace is None
    assert pv.status.phase == "Pending"
    assert [p.metadata.name for p in (await core.list_persistent_volume()).items] == ["pv1"]


# -- Velero Backups (velero.io/v1, no subresources) -----------------------------------------------------


async def test_backups_are_listed_and_watched_by_storage_location_label_and_deleted(
    kube: KubeServer, custom: client.CustomObjectsApi
) -> None:
    created = await custom.create_namespaced_custom_object(G, "v1", NS, "backups", backup("b1"))
    assert kube.requests[-1].status == 201
    assert created["metadata"]["generation"] == 1
    assert created["spec"]["storageLocation"] == "default"
    await custom.create_namespaced_custom_object(G, "v1", NS, "backups", backup("b2", storage_location="other"))
    selector = f"{STORAGE_LOCATION_LABEL}=default"
    listed = await custom.list_namespaced_custom_object(G, "v1", NS, "backups", label_selector=selector)
    assert listed["kind"] == "BackupList"
    assert [b["metadata"]["name"] for b in listed["items"]] == ["b1"]
    async with watch.Watch() as w:
        stream = w.stream(
            custom.list_namespaced_custom_object,
            G,
            "v1",
            NS,
            "backups",
            label_selector=selector,
            resource_version=listed["metadata"]["resourceVersion"],
        )
        await custom.delete_namespaced_custom_object(G, "v1", NS, "backups", "b2")  # another location: not seen
        deleted = await custom.delete_namespaced_custom_object(G, "v1", NS, "backups", "b1")
        assert deleted["metadata"]["uid"] == created["metadata"]["uid"]
        async with asyncio.timeout(5):
            event = await anext(aiter(stream))
    assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "b1")
    with pytest.raises(ApiException) as raised:
        await custom.get_namespaced_custom_object(G, "v1", NS, "backups", "b1")
    assert assert_status(raised.value, 404, "NotFound")["message"] == 'backups.velero.io "b1" not found'


async def test_backup_status_is_written_with_the_object_and_validated(custom: client.CustomObjectsApi) -> None:
    await custom.create_namespaced_custom_object(G, "v1", NS, "backups", backup("b"))
    status = {
        "phase": "Completed",
        "startTimestamp": "2025-01-02T03:04:05Z",
        "completionTimestamp": "2025-01-02T03:05:05Z",
        "expiration": "2025-02-01T03:04:05Z",
        "progress": {"itemsBackedUp": 3, "totalItems": 3},
    }
    written = await custom.patch_namespaced_custom_object(
        G, "v1", NS, "backups", "b", {"status": status}, _content_type="application/merge-patch+json"
    )
    assert written["status"] == status
    assert written["metadata"]["generation"] == 2  # no /status subresource: the status is part of the object
    with pytest.raises(ApiException) as raised:
        await custom.get_namespaced_custom_object_status(G, "v1", NS, "backups", "b")
    assert_status(raised.value, 404, "NotFound")
    with pytest.raises(ApiException) as raised:
        await custom.patch_namespaced_custom_object(
            G, "v1", NS, "backups", "b", {"status": {"phase": "Running"}}, _content_type="application/merge-patch+json"
        )
    causes = assert_status(raised.value, 422, "Invalid")["details"]["causes"]
    assert [(c["field"], c["reason"]) for c in causes] == [("status.phase", "FieldValueNotSupported")]


async def test_backup_hook_commands_need_at_least_one_item(custom: client.CustomObjectsApi) -> None:
    hook = {"name": "freeze", "pre": [{"exec": {"command": []}}]}
    with pytest.raises(ApiException) as raised:
        await custom.create_namespaced_custom_object(G, "v1", NS, "backups", backup("b", hooks={"resources": [hook]}))
    [cause] = assert_status(raised.value, 422, "Invalid")["details"]["causes"]
    assert cause["field"] == "spec.hooks.resources[0].pre[0].exec.command"
    assert cause["message"].endswith("should have at least 1 items")
    hook["pre"] = [{"exec": {"command": ["/sbin/fsfreeze", "--freeze", "/data"]}}]
    created = await custom.create_namespaced_custom_object(
        G, "v1", NS, "backups", backup("b", hooks={"resources": [hook]})
    )
    assert created["spec"]["hooks"]["resources"][0]["pre"][0]["exec"]["command"][0] == "/sbin/fsfreeze"


# -- refusals -----------------------------------------------------------------------------------------


async def test_protobuf_only_accept_is_406(kube: KubeServer) -> None:
    headers = {"Accept": "application/vnd.kubernetes.protobuf"}
    async with raw_session(kube) as http, http.get("/api/v1/namespaces", headers=headers) as response:
        assert_status(await response.json(), 406, "NotAcceptable")


async def test_dry_run_is_refused_as_not_modelled(custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as raised:
        await custom.create_namespaced_custom_object(G, V, NS, DD, data_download("dd"), dry_run="All")
    assert "dryRun is not modelled" in assert_status(raised.value, 400, "BadRequest")["message"]


@pytest.mark.parametrize("path", ["/", "/apis/apps/v1/deployments", "/api/v1/services", "/apis/velero.io/v1/restores"])
async def test_unknown_paths_are_404_status(kube: KubeServer, path: str) -> None:
    async with raw_session(kube) as http, http.get(path) as response:
        assert_status(await response.json(), 404, "NotFound")


# -- CRDs from any source -----------------------------------------------------------------------------


async def test_the_server_serves_velero_own_crd_files(tmp_path: Path) -> None:
    if not VELERO_CRDS.is_dir():
        pytest.skip(f"Velero's CRD files are not at {VELERO_CRDS}")
    crds = [yaml.safe_load(p.read_text()) for p in sorted(VELERO_CRDS.glob("*.yaml"))]
    async with KubeServer(crds) as kube, api_client(kube, tmp_path) as api:
        kube.create("namespaces", {"metadata": {"name": NS}})
        custom = client.CustomObjectsApi(api)
        created = await create_dd(custom)
        assert created["metadata"]["generation"] == 1
        with pytest.raises(ApiException) as raised:
            await create_dd(custom, "bad", nodeOS="plan9")
        assert_status(raised.value, 422, "Invalid")
        resources = {r.name for r in (await custom.get_api_resources(G, V)).resources}
    assert resources == {"datadownloads", "datauploads"}


def test_velero_crds_flavours_differ_only_in_the_status_subresource() -> None:
    plain, status = velero_crds(), velero_crds(status_subresource=True)
    for index in (0, 1):  # DataDownload, DataUpload
        assert plain[index]["spec"]["versions"][0]["subresources"] == {}
        assert status[index]["spec"]["versions"][0]["subresources"] == {"status": {}}
        status[index]["spec"]["versions"][0]["subresources"] = {}
    assert plain == status


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", f"/apis/{G}/{V}/namespaces/{NS}/{DD}", b"{not json", 400),
        ("POST", f"/apis/{G}/{V}/namespaces/{NS}/{DD}", b'{"apiVersion": "velero.io/v1", "kind": "DataDownload"}', 400),
        ("POST", f"/apis/{G}/{V}/namespaces/{NS}/{DD}", b'{"metadata": {"name": "x"}}', 400),
        ("POST", f"/apis/{G}/{V}/{DD}", b"{}", 405),
        ("DELETE", f"/apis/{G}/{V}/namespaces/{NS}/{DD}", None, 405),
        ("GET", f"/apis/{G}/{V}/namespaces/{NS}/{DD}?watch=1&resourceVersion=abc", None, 400),
        ("GET", f"/apis/{G}/{V}/namespaces/{NS}/{DD}?limit=many", None, 400),
        ("GET", f"/apis/{G}/{V}/namespaces/{NS}/{DD}?labelSelector=a%3E%3D1", None, 400),
        ("GET", f"/apis/{G}/{V}/namespaces/{NS}/{DD}?continue=garbage", None, 400),
        ("GET", f"/api/v1/namespaces/{NS}/secrets/s/status", None, 404),
    ],
)
async def test_malformed_requests_get_status_errors(
    kube: KubeServer, method: str, path: str, body: bytes | None, code: int
) -> None:
    headers = {"Content-Type": "application/json"}
    async with raw_session(kube) as http, http.request(method, path, data=body, headers=headers) as response:
        assert response.status == code
        assert (await response.json())["kind"] == "Status"
