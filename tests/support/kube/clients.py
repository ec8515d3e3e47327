"""Clients of the test server for tests: kubernetes_asyncio through a kubeconfig (as the agent connects),
raw aiohttp for what that client cannot express, and sample objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from .server import KubeServer


@asynccontextmanager
async def api_client(
    server: KubeServer, directory: Path, namespace: str = "default"
) -> AsyncIterator[client.ApiClient]:
    """A kubernetes_asyncio ApiClient configured from a kubeconfig written for ``server``."""
    path = server.write_kubeconfig(directory / "kubeconfig", namespace)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api


@asynccontextmanager
async def raw_session(server: KubeServer, token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """Plain HTTP against the server, authenticated unless ``token=""``."""
    token = server.token if token is None else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(base_url=server.url, headers=headers) as session:
        yield session


async def read_events(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every line of a watch stream until the server ends it."""
    return [json.loads(line) async for line in response.content if line.strip()]


def data_download(name: str, namespace: str = "velero", **spec: Any) -> dict[str, Any]:
    """A valid DataDownload (every required field set); keyword arguments override spec fields."""
    body: dict[str, Any] = {
        "backupStorageLocation": "default",
        "operationTimeout": "10m0s",
        "snapshotID": "0123abcd",
        "sourceNamespace": "app",
        "targetVolume": {"namespace": "app", "pv": "", "pvc": "data"},
    }
    body.update(spec)
    return {
        "apiVersion": "velero.io/v2alpha1",
        "kind": "DataDownload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def backup_storage_location(name: str = "default", namespace: str = "velero") -> dict[str, Any]:
    return {
        "apiVersion": "velero.io/v1",
        "kind": "BackupStorageLocation",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": "aws", "objectStorage": {"bucket": "backups", "prefix": "velero"}},
    }


STORAGE_LOCATION_LABEL = "velero.io/storage-location"
"""The label Velero's server puts on each Backup: the name of its BackupStorageLocation."""


def backup(name: str, namespace: str = "velero", storage_location: str = "default", **spec: Any) -> dict[str, Any]:
    """A Backup as Velero's server keeps one: ``spec.storageLocation`` and the matching label; keyword arguments
    set further spec fields."""
    body: dict[str, Any] = {"storageLocation": storage_location, "ttl": "720h0m0s", **spec}
    return {
        "apiVersion": "velero.io/v1",
        "kind": "Backup",
        "metadata": {"name": name, "namespace": namespace, "labels": {STORAGE_LOCATION_LABEL: storage_location}},
        "spec": body,
    }
