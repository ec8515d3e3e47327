"""The Kubernetes API as the controllers use it: a few dozen calls, plain dicts in and out, our errors out.

Every call goes through kubernetes_asyncio with ``_preload_content=False`` so that bodies stay JSON dicts
(no model classes leak out) and every non-2xx answer becomes a ``KubeError`` subclass here, at the
boundary. Custom-object patches are always JSON merge patches: kubernetes_asyncio's default for a dict
body is a JSON patch, which a real API server rejects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from agent.errors import KubeConflict, KubeError, KubeExpired, KubeNotFound

log = logging.getLogger(__name__)

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
SNAPSHOT_GROUP, SNAPSHOT_VERSION = "snapshot.storage.k8s.io", "v1"
"""CSI snapshots (the external-snapshotter's CRDs)."""
REQUEST_TIMEOUT_S = 30.0
"""Bound on every non-watch request."""


@dataclass(frozen=True)
class CustomResource:
    """A namespaced custom resource the agent reads or writes (``group``/``version``/``plural``)."""

    group: str
    version: str
    plural: str
    singular: str

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}/{self.version}"


def _error(status: int, body: bytes, what: str) -> KubeError:
    message = ""
    try:
        decoded = json.loads(body)
        if isinstance(decoded, dict):
            message = str(decoded.get("message", ""))
    except ValueError:
        message = body[:200].decode("utf-8", "replace")
    text = f"{what}: HTTP {status}" + (f": {message}" if message else "")
    if status == 409:
        return KubeConflict(text, status)
    if status == 404:
        return KubeNotFound(text, status)
    if status == 410:
        return KubeExpired(text, status)
    return KubeError(text, status)


class Kube:
    """The calls the controller makes, scoped to Velero's namespace where the object lives there. Custom
    resources are named by a ``CustomResource`` (``agent.velero.objects`` defines Velero's)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._api = api
        self.namespace = namespace
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._storage = client.StorageV1Api(api)

    @classmethod
    async def connect(cls, kubeconfig: str | None, namespace: str) -> Kube:
        """From a kubeconfig file, or the pod's service account when ``kubeconfig`` is None."""
        configuration = client.Configuration()
        try:
            if kubeconfig:
                await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError, ValueError) as e:
            where = kubeconfig or "the in-cluster service account"
            raise KubeError(f"cannot load Kubernetes credentials from {where}: {e}") from e
        return cls(client.ApiClient(configuration), namespace)

    @property
    def api_client(self) -> client.ApiClient:
        """The kubernetes_asyncio client, for its own helpers (leader election's ``LeaseLock``)."""
        return self._api

    async def aclose(self) -> None:
        await self._api.close()

    async def _call(self, what: str, request: Awaitable[Any]) -> Obj:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                resp: aiohttp.ClientResponse = await request
                try:
                    body = await resp.read()
                finally:
                    resp.release()
        except TimeoutError as e:
            raise KubeError(f"{what}: no answer within {REQUEST_TIMEOUT_S:g} s") from e
        except aiohttp.ClientError as e:
            raise KubeError(f"{what}: {type(e).__name__}: {e}") from e
        if not 200 <= resp.status <= 299:
            raise _error(resp.status, body, what)
        try:
            decoded = json.loads(body) if body else {}
        except ValueError as e:
            raise KubeError(f"{what}: the API server's answer is not JSON") from e
        if not isinstance(decoded, dict):
            raise KubeError(f"{what}: the API server answered {type(decoded).__name__}, not an object")
        return decoded

    # --- custom resources of Velero's namespace ------------------------------------------------------

    async def has_status_subresource(self, resource: CustomResource) -> bool:
        """Whether ``resource`` has a ``/status`` endpoint (discovery lists ``<plural>/status``). Raises
        KubeError when the API server does not serve the resource at all."""
        found = await self._call(
            f"discovery of {resource.group_version}",
            self._api.call_api(
                f"/apis/{resource.group_version}",
                "GET",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            ),
        )
        names = {r.get("name") for r in found.get("resources", []) if isinstance(r, dict)}
        if resource.plural not in names:
            raise KubeError(f"the API server does not serve {resource}: install its CRD first")
        return f"{resource.plural}/status" in names

    async def list_objects(self, resource: CustomResource) -> tuple[list[Obj], str]:
        """Every object of ``resource`` in the namespace (all pages), and the list's resourceVersion."""
        items: list[Obj] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": 500}
            if token:
                kwargs["_continue"] = token
            page = await self._call(
                f"list {resource.plural}",
                self._custom.list_namespaced_custom_object(
                    resource.group,
                    resource.version,
                    self.namespace,
                    resource.plural,
                    _preload_content=False,
                    **kwargs,
                ),
            )
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    async def watch_objects(
        self, resource: CustomResource, resource_version: str, timeout_s: float
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Events of ``resource`` after ``resource_version`` until the server ends the watch. The first item
        is ``("OPEN", {})`` once the server has accepted the watch; bookmarks come through as ``("BOOKMARK",
        obj)`` so the caller can advance its resourceVersion. Raises KubeExpired on 410."""
        what = f"watch {resource.plural}"
        try:
            resp: aiohttp.ClientResponse = await self._custom.list_namespaced_custom_object(
                resource.group,
                resource.version,
                self.namespace,
                resource.plural,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=int(timeout_s),
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(connect=REQUEST_TIMEOUT_S, sock_read=timeout_s + 30),
            )
        except aiohttp.ClientError as e:
            raise KubeError(f"{what}: {type(e).__name__}: {e}") from e
        try:
            if resp.status != 200:
                raise _error(resp.status, await resp.read(), what)
            yield "OPEN", {}
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise KubeError(f"{what} was cut: {type(e).__name__}: {e}") from e
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                    kind, obj = str(event.get("type", "")), event.get("object") or {}
                except (ValueError, AttributeError) as e:
                    raise KubeError(f"{what} sent something that is not an event: {line[:200]!r}") from e
                if kind == "ERROR":
                    code = int(obj.get("code", 0) or 0)
                    raise _error(code, json.dumps(obj).encode(), what)
                yield kind, obj
        finally:
            resp.release()

    async def get_object(self, resource: CustomResource, name: str) -> Obj:
        return await self._call(
            f"get {resource.singular} {self.namespace}/{name}",
            self._custom.get_namespaced_custom_object(
                resource.group, resource.version, self.namespace, resource.plural, name, _preload_content=False
            ),
        )

    async def patch_object(self, resource: CustomResource, name: str, patch: Obj, *, status: bool) -> Obj:
        """A JSON merge patch, through ``/status`` when ``status`` is true."""
        method = (
            self._custom.patch_namespaced_custom_object_status
            if status
            else self._custom.patch_namespaced_custom_object
        )
        return await self._call(
            f"update {resource.singular} {self.namespace}/{name}",
            method(
                resource.group,
                resource.version,
                self.namespace,
                resource.plural,
                name,
                patch,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                _preload_content=False,
            ),
        )

    # --- built-ins -------------------------------------------------------------------------------------

    async def get_secret(self, name: str) -> Obj:
        """A Secret of Velero's namespace (the agent may read no other)."""
        return await self._call(
            f"get secret {self.namespace}/{name}",
            self._core.read_namespaced_secret(name, self.namespace, _preload_content=False),
        )

    async def get_pvc(self, namespace: str, name: str) -> Obj:
        return await self._call(
            f"get persistentvolumeclaim {namespace}/{name}",
            self._core.read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False),
        )

    async def get_pv(self, name: str) -> Obj:
        return await self._call(
            f"get persistentvolume {name}",
            self._core.read_persistent_volume(name, _preload_content=False),
        )

    # --- what exposing and rebinding a volume needs ----------------------------------------------------

    async def get_pod(self, namespace: str, name: str) -> Obj:
        return await self._call(
            f"get pod {namespace}/{name}",
            self._core.read_namespaced_pod(name, namespace, _preload_content=False),
        )

    async def create_pod(self, namespace: str, pod: Obj) -> Obj:
        return await self._call(
            f"create pod {namespace}/{pod['metadata']['name']}",
            self._core.create_namespaced_pod(namespace, pod, _preload_content=False),  # type: ignore[arg-type]
        )

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete (gracefully, as the kubelet stops it); already gone is not an error."""
        with contextlib.suppress(KubeNotFound):
            await self._call(
                f"delete pod {namespace}/{name}",
                self._core.delete_namespaced_pod(name, namespace, _preload_content=False),
            )

    async def create_pvc(self, namespace: str, pvc: Obj) -> Obj:
        return await self._call(
            f"create persistentvolumeclaim {namespace}/{pvc['metadata']['name']}",
            self._core.create_namespaced_persistent_volume_claim(
                namespace,
                pvc,  # type: ignore[arg-type]
                _preload_content=False,
            ),
        )

    async def delete_pvc(self, namespace: str, name: str) -> None:
        """Delete; already gone is not an error."""
        with contextlib.suppress(KubeNotFound):
            await self._call(
                f"delete persistentvolumeclaim {namespace}/{name}",
                self._core.delete_namespaced_persistent_volume_claim(name, namespace, _preload_content=False),
            )

    async def patch_pvc(self, namespace: str, name: str, patch: Obj) -> Obj:
        """A JSON merge patch (a built-in's default would be a strategic merge patch)."""
        return await self._call(
            f"patch persistentvolumeclaim {namespace}/{name}",
            self._core.patch_namespaced_persistent_volume_claim(
                name,
                namespace,
                patch,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                _preload_content=False,
            ),
        )

    async def patch_pv(self, name: str, patch: Obj) -> Obj:
        """A JSON merge patch (a built-in's default would be a strategic merge patch)."""
        return await self._call(
            f"patch persistentvolume {name}",
            self._core.patch_persistent_volume(
                name,
                patch,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                _preload_content=False,
            ),
        )

    async def delete_pv(self, name: str) -> None:
        """Delete; already gone is not an error."""
        with contextlib.suppress(KubeNotFound):
            await self._call(
                f"delete persistentvolume {name}",
                self._core.delete_persistent_volume(name, _preload_content=False),
            )

    async def get_storage_class(self, name: str) -> Obj:
        return await self._call(
            f"get storageclass {name}",
            self._storage.read_storage_class(name, _preload_content=False),
        )

    async def list_pods_on_node(self, namespace: str, node: str) -> list[Obj]:
        found = await self._call(
            f"list pods of {namespace} on node {node}",
            self._core.list_namespaced_pod(namespace, field_selector=f"spec.nodeName={node}", _preload_content=False),
        )
        return list(found.get("items") or [])

    # --- CSI snapshots (snapshot.storage.k8s.io/v1): what exposing a VolumeSnapshot needs -----------

    async def get_snapshot(self, namespace: str, name: str) -> Obj:
        return await self._call(
            f"get volumesnapshot {namespace}/{name}",
            self._custom.get_namespaced_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, "volumesnapshots", name, _preload_content=False
            ),
        )

    async def create_snapshot(self, namespace: str, body: Obj) -> Obj:
        return await self._call(
            f"create volumesnapshot {namespace}/{body['metadata']['name']}",
            self._custom.create_namespaced_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, "volumesnapshots", body, _preload_content=False
            ),
        )

    async def delete_snapshot(self, namespace: str, name: str) -> None:
        """Delete; already gone is not an error."""
        with contextlib.suppress(KubeNotFound):
            await self._call(
                f"delete volumesnapshot {namespace}/{name}",
                self._custom.delete_namespaced_custom_object(
                    SNAPSHOT_GROUP, SNAPSHOT_VERSION, namespace, "volumesnapshots", name, _preload_content=False
                ),
            )

    async def get_snapshot_content(self, name: str) -> Obj:
        return await self._call(
            f"get volumesnapshotcontent {name}",
            self._custom.get_cluster_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", name, _preload_content=False
            ),
        )

    async def list_snapshot_contents(self) -> list[Obj]:
        found = await self._call(
            "list volumesnapshotcontents",
            self._custom.list_cluster_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", _preload_content=False
            ),
        )
        return list(found.get("items") or [])

    async def create_snapshot_content(self, body: Obj) -> Obj:
        return await self._call(
            f"create volumesnapshotcontent {body['metadata']['name']}",
            self._custom.create_cluster_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", body, _preload_content=False
            ),
        )

    async def patch_snapshot_content(self, name: str, patch: Obj) -> Obj:
        return await self._call(
            f"patch volumesnapshotcontent {name}",
            self._custom.patch_cluster_custom_object(
                SNAPSHOT_GROUP,
                SNAPSHOT_VERSION,
                "volumesnapshotcontents",
                name,
                patch,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                _preload_content=False,
            ),
        )

    async def delete_snapshot_content(self, name: str) -> None:
        """Delete; already gone is not an error."""
        with contextlib.suppress(KubeNotFound):
            await self._call(
                f"delete volumesnapshotcontent {name}",
                self._custom.delete_cluster_custom_object(
                    SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", name, _preload_content=False
                ),
            )

    async def create_event(self, namespace: str, event: Obj) -> None:
        await self._call(
            f"create event in {namespace}",
            self._core.create_namespaced_event(
                namespace,
                event,  # type: ignore[arg-type]
                _preload_content=False,
            ),
        )
