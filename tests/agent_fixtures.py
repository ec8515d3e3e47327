"""Fixtures for the agent's tests (imported by tests/conftest.py): a cluster on the strict API server with
a BackupStorageLocation on the real S3 server, and snapshots of sample data in its repository."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.repo.config import open_or_init
from agent.repo.repository import PACKS
from agent.settings import MiB, SnapshotSettings
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix
from tests.support.cluster import REPOSITORY_PASSWORD, Cluster
from tests.support.data import make_sample_tree, write_mixed_image
from tests.support.faulty_proxy import FaultyProxy
from tests.support.kube import KubeServer, RbacUsage
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for

RBAC = Path(__file__).resolve().parents[1] / "daemonset" / "rbac.yaml"
AGENT_USER = "system:serviceaccount:velero:ferry"
RBAC_USAGE = RbacUsage()
"""Every request agents made in this test run, and the rule of daemonset/rbac.yaml that allowed it (a
request no rule allows is answered 403, as a real cluster would); conftest.py reports grants no request
used once the whole suite has run."""


def agent_kubeconfig(kube: KubeServer, path: Path) -> Path:
    """A kubeconfig for the agent's service account, authorized by daemonset/rbac.yaml."""
    return kube.write_kubeconfig(path, "velero", user=AGENT_USER, rbac=RBAC, usage=RBAC_USAGE)


async def make_cluster(kube: KubeServer, tmp_path: Path, s3_server: SeaweedServer) -> Cluster:
    root = tmp_path / "kubelet"
    root.mkdir()
    cluster = Cluster(kube, root, agent_kubeconfig(kube, tmp_path / "kubeconfig"))
    cluster.bucket = await make_bucket(s3_server)
    cluster.endpoint = s3_server.endpoint
    cluster.add_repository_secret()
    return cluster


@pytest.fixture
async def cluster(kube: KubeServer, tmp_path: Path, s3_server: SeaweedServer) -> Cluster:
    """Velero's CRD flavour (no /status), a credentials Secret and BSL ``default`` on SeaweedFS."""
    c = await make_cluster(kube, tmp_path, s3_server)
    c.add_credentials_secret()
    c.add_bsl(credential={"name": "ferry-credentials", "key": "cloud"})
    return c


async def snapshot(
    server: SeaweedServer, bucket: str, source: Path, namespace: str = "app", prefix: str = "backups"
) -> str:
    """Snapshot ``source`` into the repository Ferry uses for ``namespace`` under a BSL with ``prefix``."""
    storage = await S3Storage.open(s3_settings_for(server), bucket, velero_repository_prefix(prefix, namespace))
    try:
        repo = (await open_or_init(storage, None, REPOSITORY_PASSWORD)).repository
        result = await create_snapshot(repo, str(source), SnapshotSettings())
    finally:
        await storage.aclose()
    return result.snapshot_id


async def pack_bytes(server: SeaweedServer, bucket: str, namespace: str = "app", prefix: str = "backups") -> int:
    """Bytes of every pack in the repository Ferry uses for ``namespace`` (what restoring all of it fetches,
    at most)."""
    storage = await S3Storage.open(s3_settings_for(server), bucket, velero_repository_prefix(prefix, namespace))
    try:
        return sum((await storage.sizes(PACKS)).values())
    finally:
        await storage.aclose()


@pytest.fixture
async def tree_snapshot(cluster: Cluster, s3_server: SeaweedServer, tmp_path: Path) -> tuple[str, Path]:
    """A sample directory tree (about 18 MB) and its snapshot ID."""
    source = make_sample_tree(tmp_path / "source", big_file=6 * MiB)
    return await snapshot(s3_server, cluster.bucket, source), source


@pytest.fixture
async def image_snapshot(cluster: Cluster, s3_server: SeaweedServer, tmp_path: Path) -> tuple[str, Path]:
    """A 24 MiB mixed block image and its snapshot ID."""
    image = write_mixed_image(tmp_path / "source.img", 24 * MiB, run=1 * MiB)
    return await snapshot(s3_server, cluster.bucket, image), image


@pytest.fixture
async def proxy(s3_server: SeaweedServer) -> AsyncIterator[FaultyProxy]:
    """A proxy in front of the S3 server that can hold a restore's reads (``stall_ranged``)."""
    p = await FaultyProxy(s3_server.endpoint).start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
def slow_bsl(cluster: Cluster, proxy: FaultyProxy) -> str:
    """BSL ``slow``: the same bucket, reached through ``proxy``."""
    cluster.add_bsl("slow", endpoint=proxy.endpoint, credential={"name": "ferry-credentials", "key": "cloud"})
    return "slow"


@pytest.fixture
async def tiny_snapshot(cluster: Cluster, s3_server: SeaweedServer, tmp_path: Path) -> tuple[str, Path]:
    """One small file, for tests about the controller more than the data."""
    source = tmp_path / "tiny"
    source.mkdir()
    (source / "note.txt").write_text("restored by ferry\n")
    return await snapshot(s3_server, cluster.bucket, source), source
