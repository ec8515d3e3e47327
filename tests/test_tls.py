"""S3 over HTTPS: a private CA bundle, the system's trust store, and skipping verification."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import StorageError
from agent.settings import S3Settings
from agent.storage.s3 import S3Storage
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for, self_signed_certificate


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    work = tmp_path_factory.mktemp("seaweedfs-tls")
    server = SeaweedServer(work / "data", tls=self_signed_certificate(work)).start()
    try:
        yield server
    finally:
        server.stop()


def _https(server: SeaweedServer, **overrides: object) -> S3Settings:
    return s3_settings_for(server, endpoint_url=server.https_endpoint, max_attempts=1, **overrides)


async def test_private_ca_bundle_is_trusted(tls_server: SeaweedServer) -> None:
    assert tls_server.tls is not None
    bucket = await make_bucket(tls_server)
    async with await S3Storage.open(_https(tls_server, ca_bundle=str(tls_server.tls[0])), bucket, "p") as s:
        await s.put("k", b"over tls")
        assert await s.get("k") == b"over tls"
        assert await s.get_range("k", 5, 3) == b"tls"  # a pack read: received in a thread, same trust


async def test_unknown_certificate_is_refused_with_advice(tls_server: SeaweedServer) -> None:
    bucket = await make_bucket(tls_server)
    async with await S3Storage.open(_https(tls_server), bucket, "p") as s:
        with pytest.raises(StorageError, match="CA bundle"):
            await s.get("k")
        with pytest.raises(StorageError, match="CA bundle"):
            await s.get_range("k", 0, 1)


async def test_skipping_verification_connects(tls_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = await make_bucket(tls_server)
    async with await S3Storage.open(_https(tls_server, verify_tls=False), bucket, "p") as s:
        await s.put("k", b"unverified")
        assert await s.get("k") == b"unverified"
        assert await s.get_range("k", 2, 8) == b"verified"
