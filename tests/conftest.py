"""Shared fixtures: a real SeaweedFS S3 server for the session, fresh buckets, repositories on both
backends, a hermetic AWS environment, and checks that no test leaks a Ferry thread or an asyncio task."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.repo.repository import Repository
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage
from tests.support.cli import password_file
from tests.support.kube import KubeServer, velero_crds
from tests.support.kube.rbac import denials, excess_grants
from tests.support.kube.snapshot_crds import snapshot_crds
from tests.support.loop import attached_loop
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _hermetic_aws(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No developer credentials, profiles, proxies or instance metadata leak into a test."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _repository_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``ferry`` a test runs has a repository password (FERRY_PASSWORD_FILE), as a user's would: the
    repositories the command line makes are encrypted. Tests of no password unset it."""
    monkeypatch.setenv("FERRY_PASSWORD_FILE", password_file())


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in threading.enumerate() if t not in before and t.name.startswith("ferry-")]
    assert not leaked, f"threads still running after the test: {leaked}"


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leftover, f"tasks still running after the test: {leftover}"


@pytest.fixture
async def bucket(s3_server: SeaweedServer) -> str:
    return await make_bucket(s3_server)


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStorage | S3Storage:
    """An empty location on each backend, not opened as a repository: a local directory, and a prefix in a
    fresh S3 bucket (the test closes it)."""
    if request.param == "local":
        return LocalStorage(str(tmp_path / "repo"))
    server: SeaweedServer = request.getfixturevalue("s3_server")
    return await S3Storage.open(s3_settings_for(server), await make_bucket(server), "velero/ferry/app")


@pytest.fixture(params=["local", "s3"])
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Repository]:
    """An empty repository on each backend: a local directory, and a prefix in a fresh S3 bucket."""
    if request.param == "local":
        storage: LocalStorage | S3Storage = LocalStorage(str(tmp_path / "repo"))
    else:
        server: SeaweedServer = request.getfixturevalue("s3_server")
        storage = await S3Storage.open(s3_settings_for(server), await make_bucket(server), "velero/ferry/app")
    try:
        yield Repository(storage)
    finally:
        await storage.aclose()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real block device: a 48 MiB loop device over a file, torn down after the test."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = tmp_path / "loop-backing.img"
    with attached_loop(backing, 48 * 1024 * 1024) as device:
        yield device, backing


pytest_plugins = ["tests.agent_fixtures"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After a whole, green run of the suite (no paths, -k, -m, --lf or --deselect): fail it if
    daemonset/rbac.yaml grants something no agent request used, or if any agent request was denied. A
    grant that is missing already failed the test that needed it (the API server answered 403)."""
    from tests.agent_fixtures import RBAC_USAGE  # noqa: PLC0415 - the plugin module, loaded by now

    config = session.config
    whole = not config.args or [str(Path(a).resolve()) for a in config.args] == [str(Path(config.rootpath, "tests"))]
    selected = any(config.getoption(name, None) for name in ("keyword", "markexpr", "lf", "deselect"))
    if exitstatus != 0 or not whole or selected or session.testscollected == 0:
        return
    findings = excess_grants(RBAC_USAGE) + [f"denied: {d}" for d in denials(RBAC_USAGE)]
    if findings:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        lines = ["daemonset/rbac.yaml does not match what the agent does:", *findings]
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


async def _started_kube(status_subresource: bool) -> KubeServer:
    server = await KubeServer(velero_crds(status_subresource=status_subresource) + snapshot_crds()).start()
    server.create("namespaces", {"metadata": {"name": "velero"}})
    return server


@pytest.fixture
async def kube() -> AsyncIterator[KubeServer]:
    """A started strict test apiserver with Velero's CRDs as Velero ships them, the CSI snapshot CRDs
    (``snapshot.storage.k8s.io/v1``), and namespace ``velero``."""
    server = await _started_kube(status_subresource=False)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def kube_status() -> AsyncIterator[KubeServer]:
    """Like ``kube``, but DataDownload has a ``/status`` subresource."""
    server = await _started_kube(status_subresource=True)
    try:
        yield server
    finally:
        await server.stop()
