"""Contract tests of the test server's RBAC (tests/support/kube/rbac.py): request attributes, the
authorizer's rules as Kubernetes applies them, the 403 a denied client sees, and the usage registry that
names excess grants."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from tests.support.kube import KubeServer
from tests.support.kube.clients import STORAGE_LOCATION_LABEL, api_client, backup, data_download, raw_session
from tests.support.kube.rbac import (
    Attributes,
    Authorizer,
    Identity,
    RbacUsage,
    denials,
    excess_grants,
    request_attributes,
)

RBAC_YAML = Path(__file__).resolve().parent / "fixtures" / "rbac-sample.yaml"
"""A fixed manifest (not daemonset/rbac.yaml, which the whole suite checks against what the agent does)."""
FERRY = "system:serviceaccount:velero:ferry"
G, V, NS, DD = "velero.io", "v2alpha1", "velero", "datadownloads"
DD_PATH = f"/apis/{G}/{V}/namespaces/{NS}/{DD}"
COORDINATION = "coordination.k8s.io"
LEASES_PATH = f"/apis/{COORDINATION}/v1/namespaces/{NS}/leases"
BACKUPS_PATH = f"/apis/{G}/v1/namespaces/{NS}/backups"


def attrs(method: str, path: str, user: str = FERRY, **query: str) -> Attributes:
    return request_attributes(Identity.of(user), method, path, query)


def allowed(authorizer: Authorizer, method: str, path: str, user: str = FERRY, **query: str) -> bool:
    return authorizer.authorize(attrs(method, path, user, **query)).allowed


def rbac(*documents: dict[str, Any]) -> Authorizer:
    return Authorizer.from_yaml("\n---\n".join(json.dumps(d) for d in documents), "test.yaml")


def role(name: str, rules: list[dict[str, Any]], namespace: str | None = None) -> dict[str, Any]:
    kind = "Role" if namespace else "ClusterRole"
    meta = {"name": name, "namespace": namespace} if namespace else {"name": name}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}


def binding(
    role_kind: str, role_name: str, namespace: str | None = None, subjects: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    meta = {"name": f"b-{role_name}", "namespace": namespace} if namespace else {"name": f"b-{role_name}"}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": subjects or [{"kind": "ServiceAccount", "name": "ferry", "namespace": "velero"}],
    }


def dd_rule(verbs: list[str], resources: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"apiGroups": [G], "resources": resources or [DD], "verbs": verbs, **extra}


# -- request attributes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", f"{DD_PATH}/dd", {}, ("get", G, DD, "", NS, "dd")),
        ("HEAD", f"{DD_PATH}/dd", {}, ("get", G, DD, "", NS, "dd")),
        ("GET", DD_PATH, {}, ("list", G, DD, "", NS, "")),
        ("GET", DD_PATH, {"watch": "true"}, ("watch", G, DD, "", NS, "")),
        ("GET", DD_PATH, {"watch": "1"}, ("watch", G, DD, "", NS, "")),
        ("GET", DD_PATH, {"watch": "False"}, ("list", G, DD, "", NS, "")),
        ("GET", DD_PATH, {"watch": "0"}, ("list", G, DD, "", NS, "")),
        ("GET", DD_PATH, {"fieldSelector": "metadata.name=dd"}, ("list", G, DD, "", NS, "dd")),
        ("GET", DD_PATH, {"fieldSelector": "a=b,metadata.name==dd", "watch": "1"}, ("watch", G, DD, "", NS, "dd")),
        ("GET", DD_PATH, {"fieldSelector": "metadata.name!=dd"}, ("list", G, DD, "", NS, "")),
        ("GET", f"{DD_PATH}/dd", {"watch": "1"}, ("get", G, DD, "", NS, "dd")),
        ("POST", DD_PATH, {}, ("create", G, DD, "", NS, "")),
        ("PUT", f"{DD_PATH}/dd", {}, ("update", G, DD, "", NS, "dd")),
        ("PATCH", f"{DD_PATH}/dd", {}, ("patch", G, DD, "", NS, "dd")),
        ("PATCH", f"{DD_PATH}/dd/status", {}, ("patch", G, DD, "status", NS, "dd")),
        ("DELETE", f"{DD_PATH}/dd", {}, ("delete", G, DD, "", NS, "dd")),
        ("DELETE", DD_PATH, {}, ("deletecollection", G, DD, "", NS, "")),
        ("GET", f"/apis/{G}/{V}/{DD}", {}, ("list", G, DD, "", "", "")),
        ("GET", "/api/v1/persistentvolumes/pv", {}, ("get", "", "persistentvolumes", "", "", "pv")),
        ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
        ("GET", "/api/v1/namespaces/velero", {}, ("get", "", "namespaces", "", "velero", "velero")),
        ("PUT", "/api/v1/namespaces/velero/status", {}, ("update", "", "namespaces", "status", "velero", "velero")),
        ("GET", "/api/v1/namespaces/app/pods", {}, ("list", "", "pods", "", "app", "")),
        ("GET", f"/apis/{G}/{V}/watch/namespaces/{NS}/{DD}", {}, ("watch", G, DD, "", NS, "")),
        ("GET", f"{LEASES_PATH}/ferry", {}, ("get", COORDINATION, "leases", "", NS, "ferry")),
        ("POST", LEASES_PATH, {"pretty": "True"}, ("create", COORDINATION, "leases", "", NS, "")),
        ("PUT", f"{LEASES_PATH}/ferry", {}, ("update", COORDINATION, "leases", "", NS, "ferry")),
        ("GET", LEASES_PATH, {}, ("list", COORDINATION, "leases", "", NS, "")),
        ("GET", f"/apis/{COORDINATION}/v1/leases", {}, ("list", COORDINATION, "leases", "", "", "")),
        (
            "GET",
            BACKUPS_PATH,
            {"labelSelector": f"{STORAGE_LOCATION_LABEL}=default"},
            ("list", G, "backups", "", NS, ""),
        ),
        ("GET", BACKUPS_PATH, {"watch": "true"}, ("watch", G, "backups", "", NS, "")),
        ("DELETE", f"{BACKUPS_PATH}/b", {}, ("delete", G, "backups", "", NS, "b")),
    ],
)
def test_request_attributes_follow_the_apiserver(
    method: str, path: str, query: dict[str, str], expected: tuple[str, ...]
) -> None:
    seen = attrs(method, path, **query)
    assert seen.resource_request
    assert (seen.verb, seen.api_group, seen.resource, seen.subresource, seen.namespace, seen.name) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api"),
        ("GET", "/api/v1"),
        ("GET", "/apis"),
        ("GET", f"/apis/{G}"),
        ("GET", f"/apis/{G}/{V}"),
        ("GET", "/version"),
        ("POST", "/apis"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ],
)
def test_short_and_non_api_paths_are_non_resource_requests(method: str, path: str) -> None:
    seen = attrs(method, path)
    assert not seen.resource_request
    assert seen.verb == method.lower()
    assert seen.path == path


def test_service_account_identity_and_groups() -> None:
    identity = Identity.of(FERRY)
    assert identity.groups == ("system:serviceaccounts", "system:serviceaccounts:velero", "system:authenticated")
    assert Identity.of("alice").groups == ("system:authenticated",)
    for bad in ("system:serviceaccount:velero", "system:serviceaccount::x", ""):
        with pytest.raises(ValueError):
            Identity.of(bad)


# -- the authorizer's rules -----------------------------------------------------------------------------


def test_sample_rbac_allows_what_it_lists_and_nothing_else() -> None:
    ferry = Authorizer.load(RBAC_YAML)
    assert allowed(ferry, "GET", DD_PATH, watch="true")
    assert allowed(ferry, "PATCH", f"{DD_PATH}/dd")
    assert allowed(ferry, "PUT", f"{DD_PATH}/dd/status")
    assert allowed(ferry, "GET", "/api/v1/namespaces/velero/secrets/creds")
    assert allowed(ferry, "POST", "/api/v1/namespaces/velero/events")
    assert allowed(ferry, "GET", "/api/v1/namespaces/app/persistentvolumeclaims/data")  # ClusterRole: any namespace
    assert allowed(ferry, "GET", "/api/v1/pods")
    assert allowed(ferry, "GET", "/api/v1/persistentvolumes/pv-1")
    assert not allowed(ferry, "DELETE", f"{DD_PATH}/dd")
    assert not allowed(ferry, "POST", DD_PATH)
    assert not allowed(ferry, "GET", "/api/v1/namespaces/velero/secrets")  # get only, not list
    assert not allowed(ferry, "GET", "/api/v1/pods", watch="1")
    assert not allowed(ferry, "GET", "/api/v1/namespaces/velero/pods/p")
    assert not allowed(ferry, "GET", DD_PATH, user="system:serviceaccount:velero:other")
    assert not allowed(ferry, "GET", DD_PATH, user="system:serviceaccount:other:ferry")


def test_a_namespaced_role_grants_nothing_in_other_namespaces_or_cluster_wide() -> None:
    ferry = Authorizer.load(RBAC_YAML)
    assert allowed(ferry, "GET", f"{DD_PATH}/dd")
    assert not allowed(ferry, "GET", f"/apis/{G}/{V}/namespaces/other/{DD}/dd")
    assert not allowed(ferry, "GET", "/api/v1/namespaces/other/secrets/creds")
    assert not allowed(ferry, "GET", f"/apis/{G}/{V}/{DD}")  # list across namespaces is cluster scope


def test_a_cluster_role_through_a_role_binding_is_namespaced() -> None:
    authorizer = rbac(role("reader", [dd_rule(["get", "list"])]), binding("ClusterRole", "reader", "team-a"))
    assert allowed(authorizer, "GET", f"/apis/{G}/{V}/namespaces/team-a/{DD}/dd")
    assert allowed(authorizer, "GET", f"/apis/{G}/{V}/namespaces/team-a/{DD}")
    assert not allowed(authorizer, "GET", f"/apis/{G}/{V}/namespaces/team-b/{DD}/dd")
    assert not allowed(authorizer, "GET", f"/apis/{G}/{V}/{DD}")
    cluster_wide = rbac(role("reader", [dd_rule(["get", "list"])]), binding("ClusterRole", "reader"))
    assert allowed(cluster_wide, "GET", f"/apis/{G}/{V}/namespaces/team-b/{DD}/dd")
    assert allowed(cluster_wide, "GET", f"/apis/{G}/{V}/{DD}")


def test_a_role_binding_never_grants_cluster_scoped_resources() -> None:
    authorizer = rbac(
        role("pv", [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]}]),
        binding("ClusterRole", "pv", "velero"),
    )
    assert not allowed(authorizer, "GET", "/api/v1/persistentvolumes/pv-1")


@pytest.mark.parametrize(
    ("resources", "main", "status"),
    [
        ([DD], True, False),
        ([f"{DD}/status"], False, True),
        ([DD, f"{DD}/status"], True, True),
        (["*/status"], False, True),
        (["*"], True, True),
        (["*/scale"], False, False),
    ],
)
def test_subresources_need_their_own_entry(resources: list[str], main: bool, status: bool) -> None:
    authorizer = rbac(role("r", [dd_rule(["patch"], resources)], NS), binding("Role", "r", NS))
    assert allowed(authorizer, "PATCH", f"{DD_PATH}/dd") is main
    assert allowed(authorizer, "PATCH", f"{DD_PATH}/dd/status") is status


def test_resource_names_restrict_named_requests_only() -> None:
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
    authorizer = rbac(role("r", [dd_rule(verbs, resourceNames=["mine"])], NS), binding("Role", "r", NS))
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        assert allowed(authorizer, method, f"{DD_PATH}/mine"), method
        assert not allowed(authorizer, method, f"{DD_PATH}/theirs"), method
    assert allowed(authorizer, "PATCH", f"{DD_PATH}/mine/status") is False  # no status entry
    # No name at authorization time: never matches a rule with resourceNames.
    assert not allowed(authorizer, "GET", DD_PATH)
    assert not allowed(authorizer, "GET", DD_PATH, watch="true")
    assert not allowed(authorizer, "POST", DD_PATH)
    assert not allowed(authorizer, "DELETE", DD_PATH)
    # ... unless a list or watch names it by a metadata.name field selector, as upstream.
    assert allowed(authorizer, "GET", DD_PATH, fieldSelector="metadata.name=mine")
    assert allowed(authorizer, "GET", DD_PATH, fieldSelector="metadata.name=mine", watch="true")
    assert not allowed(authorizer, "GET", DD_PATH, fieldSelector="metadata.name=theirs")


def test_watch_and_list_are_separate_verbs() -> None:
    lists = rbac(role("r", [dd_rule(["list"])], NS), binding("Role", "r", NS))
    assert allowed(lists, "GET", DD_PATH)
    assert not allowed(lists, "GET", DD_PATH, watch="true")
    assert not allowed(lists, "GET", f"{DD_PATH}/dd")  # list does not grant get either
    watches = rbac(role("r", [dd_rule(["watch"])], NS), binding("Role", "r", NS))
    assert allowed(watches, "GET", DD_PATH, watch="true")
    assert not allowed(watches, "GET", DD_PATH)


def test_wildcards_of_verbs_groups_and_resources() -> None:
    everything = rbac(
        role("r", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], NS), binding("Role", "r", NS)
    )
    assert allowed(everything, "DELETE", DD_PATH)
    assert allowed(everything, "PUT", "/api/v1/namespaces/velero/secrets/s")
    core_only = rbac(
        role("r", [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}], NS), binding("Role", "r", NS)
    )
    assert allowed(core_only, "GET", "/api/v1/namespaces/velero/secrets/s")
    assert not allowed(core_only, "GET", f"{DD_PATH}/dd")


def test_group_user_and_defaulted_service_account_subjects() -> None:
    rules = [dd_rule(["get"])]
    by_group = rbac(
        role("r", rules, NS),
        binding(
            "Role",
            "r",
            NS,
            [{"kind": "Group", "name": "system:serviceaccounts:velero", "apiGroup": "rbac.authorization.k8s.io"}],
        ),
    )
    assert allowed(by_group, "GET", f"{DD_PATH}/dd")
    assert allowed(by_group, "GET", f"{DD_PATH}/dd", user="system:serviceaccount:velero:other")
    assert not allowed(by_group, "GET", f"{DD_PATH}/dd", user="system:serviceaccount:app:ferry")
    by_user = rbac(
        role("r", rules, NS),
        binding("Role", "r", NS, [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]),
    )
    assert allowed(by_user, "GET", f"{DD_PATH}/dd", user="alice")
    assert not allowed(by_user, "GET", f"{DD_PATH}/dd")
    local = rbac(role("r", rules, NS), binding("Role", "r", NS, [{"kind": "ServiceAccount", "name": "ferry"}]))
    assert allowed(local, "GET", f"{DD_PATH}/dd")  # the subject's namespace defaults to the binding's


def test_discovery_is_always_allowed_and_other_paths_are_not() -> None:
    nothing = rbac()
    for path in ("/api", "/api/v1", "/apis", f"/apis/{G}", f"/apis/{G}/{V}", "/version", "/healthz"):
        assert allowed(nothing, "GET", path), path
    assert not allowed(nothing, "POST", "/apis")
    assert not allowed(nothing, "GET", "/metrics")
    assert not allowed(nothing, "GET", "/api/v1/namespaces")


def test_non_resource_urls_of_a_cluster_role() -> None:
    authorizer = rbac(
        role("m", [{"nonResourceURLs": ["/metrics", "/logs/*"], "verbs": ["get"]}]), binding("ClusterRole", "m")
    )
    assert allowed(authorizer, "GET", "/metrics")
    assert allowed(authorizer, "GET", "/logs/kubelet")
    assert not allowed(authorizer, "GET", "/metrics/cadvisor")
    assert not allowed(authorizer, "POST", "/metrics")


def test_a_binding_to_a_missing_role_denies_with_the_reason() -> None:
    authorizer = rbac(binding("Role", "gone", NS))
    decision = authorizer.authorize(attrs("GET", f"{DD_PATH}/dd"))
    assert not decision.allowed
    assert decision.reason == 'RBAC: role.rbac.authorization.k8s.io "gone" not found'


def test_leases_and_backups_are_plain_resources_of_their_groups() -> None:
    lease_rule = {"apiGroups": [COORDINATION], "resources": ["leases"], "verbs": ["get", "list", "create", "update"]}
    backup_rule = {"apiGroups": [G], "resources": ["backups"], "verbs": ["get", "list"]}
    authorizer = rbac(role("r", [lease_rule, backup_rule], NS), binding("Role", "r", NS))
    for method, path in [
        ("GET", f"{LEASES_PATH}/l"),
        ("GET", LEASES_PATH),
        ("POST", LEASES_PATH),
        ("PUT", f"{LEASES_PATH}/l"),
    ]:
        assert allowed(authorizer, method, path), (method, path)
    for method, path in [("PATCH", f"{LEASES_PATH}/l"), ("DELETE", f"{LEASES_PATH}/l")]:
        assert not allowed(authorizer, method, path), (method, path)
    assert not allowed(authorizer, "GET", LEASES_PATH, watch="1")
    assert not allowed(authorizer, "GET", f"/apis/{COORDINATION}/v1/namespaces/kube-system/leases/l")
    assert not allowed(authorizer, "GET", f"/apis/{G}/v1/namespaces/{NS}/leases/l")  # leases of another group
    assert allowed(authorizer, "GET", BACKUPS_PATH, labelSelector=f"{STORAGE_LOCATION_LABEL}=default")
    assert allowed(authorizer, "GET", f"{BACKUPS_PATH}/b")
    assert not allowed(authorizer, "GET", BACKUPS_PATH, watch="1")
    assert not allowed(authorizer, "POST", BACKUPS_PATH)
    assert not allowed(authorizer, "GET", f"/apis/{COORDINATION}/v1/namespaces/{NS}/backups")  # wrong group


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([role("r", [{"apiGroups": [G], "resources": [DD]}], NS)], "verbs"),
        ([role("r", [{"resources": [DD], "verbs": ["get"]}], NS)], "api group"),
        ([role("r", [{"apiGroups": [G], "verbs": ["get"]}], NS)], "resource"),
        ([role("r", [{"nonResourceURLs": ["/x"], "verbs": ["get"]}], NS)], "namespaced rules"),
        ([role("r", [{"nonResourceURLs": ["/x"], "apiGroups": [""], "resources": ["x"], "verbs": ["get"]}])], "both"),
        ([binding("Role", "r")], "roleRef"),
        ([binding("ClusterRole", "r", subjects=[{"kind": "ServiceAccount", "name": "ferry"}])], "namespace"),
        ([{**role("r", []), "aggregationRule": {}}], "aggregationRule"),
        ([role("r", [], NS), role("r", [], NS)], "twice"),
        ([{**role("r", [], NS), "metadata": {"name": "r"}}], "namespace"),
        ([{**role("r", [], NS), "apiVersion": "rbac.authorization.k8s.io/v1beta1"}], "apiVersion"),
    ],
)
def test_invalid_rbac_is_refused_at_load(documents: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rbac(*documents)


def test_other_kinds_in_the_yaml_are_ignored() -> None:
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ferry", "namespace": NS}}
    authorizer = rbac(service_account, role("r", [dd_rule(["get"])], NS), binding("Role", "r", NS))
    assert [r.label for r in authorizer.roles] == ["Role velero/r"]


# -- through the server ---------------------------------------------------------------------------------


async def test_a_forbidden_call_is_a_403_status_through_kubernetes_asyncio(kube: KubeServer, tmp_path: Path) -> None:
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", NS, user=FERRY, rbac=RBAC_YAML)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        custom = client.CustomObjectsApi(api)
        with pytest.raises(ApiException) as raised:
            await custom.create_namespaced_custom_object(G, V, NS, DD, data_download("dd"))
        assert raised.value.status == 403
        body = json.loads(raised.value.body or b"")
        assert body == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": (
                'datadownloads.velero.io is forbidden: User "system:serviceaccount:velero:ferry" cannot create '
                'resource "datadownloads" in API group "velero.io" in the namespace "velero"'
            ),
            "reason": "Forbidden",
            "details": {"group": "velero.io", "kind": "datadownloads"},
            "code": 403,
        }
        kube.create(DD, data_download("dd"))
        got = await custom.get_namespaced_custom_object(G, V, NS, DD, "dd")  # allowed
        assert got["metadata"]["name"] == "dd"
        with pytest.raises(ApiException) as raised:
            await custom.delete_namespaced_custom_object(G, V, NS, DD, "dd")
        body = json.loads(raised.value.body or b"")
        assert body["message"].startswith('datadownloads.velero.io "dd" is forbidden: User ')
        assert body["details"] == {"name": "dd", "group": "velero.io", "kind": "datadownloads"}
        with pytest.raises(ApiException) as raised:
            await custom.patch_namespaced_custom_object_status(G, V, NS, DD, "dd", {"status": {}})
        assert raised.value.status == 404  # allowed (datadownloads/status), then not found: no subresource
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as raised:
            await core.list_persistent_volume()
        body = json.loads(raised.value.body or b"")
        assert body["message"] == (
            'persistentvolumes is forbidden: User "system:serviceaccount:velero:ferry" cannot list resource '
            '"persistentvolumes" in API group "" at the cluster scope'
        )
        assert body["details"] == {"kind": "persistentvolumes"}
        resources = await custom.get_api_resources(G, V)  # discovery: always allowed
        assert {r.name for r in resources.resources} == {DD, "datauploads"}
    assert kube.get(DD, "dd", NS) is not None
    assert [r.status for r in kube.requests][-1] == 200


async def test_admin_token_stays_unrestricted_and_unknown_tokens_get_401(kube: KubeServer, tmp_path: Path) -> None:
    kube.write_kubeconfig(tmp_path / "ferry", NS, user=FERRY, rbac=RBAC_YAML)
    async with api_client(kube, tmp_path) as api:
        custom = client.CustomObjectsApi(api)
        await custom.create_namespaced_custom_object(G, V, NS, DD, data_download("dd"))
        await custom.delete_namespaced_custom_object(G, V, NS, DD, "dd")
    async with raw_session(kube, token="not-issued") as http, http.get("/api") as response:
        assert response.status == 401
    assert kube.accounts.usage.denied == []


async def test_a_forbidden_watch_and_an_allowed_one(kube: KubeServer) -> None:
    token = kube.accounts.issue(FERRY, RBAC_YAML)
    async with raw_session(kube, token=token) as http:
        async with http.get("/api/v1/pods", params={"watch": "1"}) as response:
            assert response.status == 403
            body = await response.json()
            assert body["reason"] == "Forbidden"
            assert "cannot watch resource" in body["message"]
        params = {"watch": "1", "timeoutSeconds": "1"}
        async with http.get(DD_PATH, params=params) as response:
            assert response.status == 200
            await response.read()
    assert [d.attributes.verb for d in kube.accounts.usage.denied] == ["watch"]
    assert denials(kube.accounts.usage) == [
        'GET /api/v1/pods: pods is forbidden: User "system:serviceaccount:velero:ferry" cannot watch resource '
        '"pods" in API group "" at the cluster scope'
    ]


async def test_usage_outlives_servers_and_reports_unused_verbs_and_rules(tmp_path: Path) -> None:
    usage = RbacUsage()
    for run in range(2):
        async with KubeServer([]) as kube:
            kube.create("namespaces", {"metadata": {"name": NS}})
            kube.create("secrets", {"metadata": {"name": "creds", "namespace": NS}})
            async with api_client(kube, tmp_path) as admin:
                await client.CoreV1Api(admin).list_namespace()  # the admin token: not recorded
            token = kube.accounts.issue(FERRY, RBAC_YAML, usage)
            async with raw_session(kube, token=token) as http:
                async with http.get(f"/api/v1/namespaces/{NS}/secrets/creds") as response:
                    assert response.status == 200
                if run == 1:
                    async with http.get("/api/v1/pods") as response:
                        assert response.status == 200
                    async with http.delete(f"/api/v1/namespaces/{NS}/secrets/creds") as response:
                        assert response.status == 403
    assert len(usage.allowed) == 3
    grant = usage.allowed[0].grant
    assert (grant.role.label, grant.rule, grant.verb, grant.api_group, grant.resource) == (
        "Role velero/ferry",
        3,
        "get",
        "",
        "secrets",
    )
    assert [str(d) for d in usage.denied] == [
        'DELETE /api/v1/namespaces/velero/secrets/creds: secrets "creds" is forbidden: User '
        '"system:serviceaccount:velero:ferry" cannot delete resource "secrets" in API group "" '
        'in the namespace "velero"'
    ]
    assert excess_grants(usage) == [
        "Role velero/ferry rule 0 (get, list, watch, update, patch on datadownloads in API group velero.io) "
        "was never used",
        "Role velero/ferry rule 1 (get, update, patch on datadownloads/status in API group velero.io) was never used",
        "Role velero/ferry rule 2 (get on backupstoragelocations in API group velero.io) was never used",
        'Role velero/ferry rule 4 (create, patch on events in API group "") was never used',
        'ClusterRole ferry rule 0 (get on persistentvolumeclaims in API group "") was never used',
        'ClusterRole ferry rule 2 (get on persistentvolumes in API group "") was never used',
    ]


def test_excess_grants_names_unused_verbs_and_resources_of_used_rules() -> None:
    authorizer = rbac(
        role("r", [dd_rule(["get", "update", "patch"], [DD, f"{DD}/status"]), dd_rule(["*"], ["*"])], NS),
        binding("Role", "r", NS),
    )
    usage = RbacUsage()
    ferry = Identity.of(FERRY)
    usage.register(authorizer, ferry)
    usage.register(authorizer, ferry)  # idempotent
    for method, path in [("GET", f"{DD_PATH}/a"), ("PATCH", f"{DD_PATH}/a"), ("DELETE", f"{DD_PATH}/a")]:
        seen = attrs(method, path)
        usage.record(method, seen, authorizer.authorize(seen))
    assert excess_grants(usage) == [
        'Role velero/r rule 0: verb "update" on datadownloads was never used',
        'Role velero/r rule 0: resource "datadownloads/status" was never used',
        'Role velero/r rule 1: verb "*" on * was used only for delete',
    ]
    assert usage.denied == []


async def test_leader_election_needs_get_create_and_update_on_leases_only(kube: KubeServer, tmp_path: Path) -> None:
    """kubernetes_asyncio's LeaseLock reads (get), creates (create) and replaces (update) its Lease: nothing else.
    Listing Backups by storage location needs list on backups."""
    authorizer = rbac(
        role(
            "ferry-leader",
            [
                {"apiGroups": [COORDINATION], "resources": ["leases"], "verbs": ["get", "create", "update"]},
                {"apiGroups": [G], "resources": ["backups"], "verbs": ["list"]},
            ],
            NS,
        ),
        binding("Role", "ferry-leader", NS),
    )
    usage = RbacUsage()
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", NS, user=FERRY, rbac=authorizer, usage=usage)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    elected = asyncio.Event()

    async def started_leading() -> None:
        elected.set()

    async def stopped_leading() -> None:
        pass

    async with client.ApiClient(configuration) as api:
        lock = LeaseLock("ferry-leader", NS, "node-a", api)
        election = LeaderElection(Config(lock, 3, 1.5, 1, started_leading, stopped_leading))
        task = asyncio.create_task(election.run())
        try:
            async with asyncio.timeout(10):
                await elected.wait()
            # The leader renews at once after creating the Lease: a get, then an update.
            await kube.wait_for(
                "leases", "ferry-leader", NS, lambda o: len(kube.history("leases", "ferry-leader", NS)) > 1
            )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        kube.create("backups", backup("b1"))
        kube.create("backups", backup("b2", storage_location="other"))
        listed = await client.CustomObjectsApi(api).list_namespaced_custom_object(
            G, "v1", NS, "backups", label_selector=f"{STORAGE_LOCATION_LABEL}=default"
        )
        assert [b["metadata"]["name"] for b in listed["items"]] == ["b1"]
    assert denials(usage) == []
    assert excess_grants(usage) == []
    verbs = {(a.attributes.resource, a.attributes.verb) for a in usage.allowed}
    assert verbs == {("leases", "get"), ("leases", "create"), ("leases", "update"), ("backups", "list")}


async def test_a_put_that_creates_a_lease_must_also_be_allowed_to_create_it(kube: KubeServer) -> None:
    updates_only = rbac(
        role("r", [{"apiGroups": [COORDINATION], "resources": ["leases"], "verbs": ["get", "update"]}], NS),
        binding("Role", "r", NS),
    )
    usage = RbacUsage()
    token = kube.accounts.issue(FERRY, updates_only, usage)
    lease = {"apiVersion": f"{COORDINATION}/v1", "kind": "Lease", "metadata": {"name": "ferry"}, "spec": {}}
    async with raw_session(kube, token=token) as http:
        async with http.put(f"{LEASES_PATH}/ferry", json=lease) as response:
            assert response.status == 403
            body = await response.json()
        assert body["message"] == 'leases.coordination.k8s.io "ferry" is forbidden: '  # RBAC gives no reason
        assert body["details"] == {"name": "ferry", "group": COORDINATION, "kind": "leases"}
        assert kube.get("leases", "ferry", NS) is None
        invalid = {**lease, "spec": {"leaseDurationSeconds": 0}}
        async with http.put(f"{LEASES_PATH}/ferry", json=invalid) as response:
            assert response.status == 422  # validated before the second authorization
        kube.create("leases", lease, NS)
        stored = kube.get("leases", "ferry", NS)
        async with http.put(f"{LEASES_PATH}/ferry", json=stored) as response:
            assert response.status == 200  # an update of an existing Lease needs no create
    assert [(d.attributes.verb, d.attributes.name) for d in usage.denied] == [("create", "ferry")]
    creating = rbac(
        role("r", [{"apiGroups": [COORDINATION], "resources": ["leases"], "verbs": ["update", "create"]}], NS),
        binding("Role", "r", NS),
    )
    token = kube.accounts.issue(FERRY, creating, usage)
    other = {**lease, "metadata": {"name": "other"}}
    async with raw_session(kube, token=token) as http, http.put(f"{LEASES_PATH}/other", json=other) as response:
        assert response.status == 201
    assert usage.allowed[-1].attributes.verb == "create"
