"""Storage backends over the wire: the interface on both, and S3's configuration, errors and retries."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    ObjectNotFound,
    ObjectTooLarge,
    ObjectTruncated,
    StorageError,
    TransientStorageError,
)
from agent.repo.repository import Repository
from agent.settings import s3_settings_from_env
from agent.storage import open_storage, parse_repo_url
from agent.storage.s3 import S3Storage
from agent.storage.url import velero_repository_prefix
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer, make_bucket, s3_settings_for


async def test_objects_round_trip_with_ranges_and_listing(repo: Repository) -> None:
    s = repo.storage
    await s.put("packs/aa/one", b"0123456789")
    await s.put("packs/bb/two", b"x" * 5)
    await s.put("snapshots/three", b"")
    assert await s.get("packs/aa/one") == b"0123456789"
    assert await s.get_range("packs/aa/one", 3, 4) == b"3456"
    assert await s.get("snapshots/three") == b""
    assert await s.list("packs/") == ["packs/aa/one", "packs/bb/two"]
    assert await s.list("snapshots/") == ["snapshots/three"]
    assert await s.list("nothing/") == []
    assert await s.sizes("packs/") == {"packs/aa/one": 10, "packs/bb/two": 5}
    assert await s.sizes("snapshots/") == {"snapshots/three": 0}
    assert await s.sizes("nothing/") == {}
    await s.delete("packs/bb/two")
    await s.delete("packs/bb/two")
    assert await s.list("packs/") == ["packs/aa/one"]
    assert await s.sizes("packs/") == {"packs/aa/one": 10}


async def test_missing_object_and_short_range_are_distinct_errors(repo: Repository) -> None:
    s = repo.storage
    await s.put("packs/aa/short", b"abc")
    with pytest.raises(ObjectNotFound):
        await s.get("packs/aa/missing")
    with pytest.raises(ObjectNotFound):
        await s.get_range("packs/aa/missing", 0, 1)
    with pytest.raises(ObjectTruncated):
        await s.get_range("packs/aa/short", 1, 10)
    with pytest.raises(ObjectTruncated):
        await s.get_range("packs/aa/short", 50, 10)


async def test_reads_far_beyond_an_object_are_truncations_not_crashes(repo: Repository) -> None:
    s = repo.storage
    await s.put("packs/aa/small", b"abc")
    for offset in (2**63 - 2, 2**63 + 5, 2**64 - 1):
        with pytest.raises(ObjectTruncated):
            await s.get_range("packs/aa/small", offset, 4)


async def test_an_object_larger_than_a_read_takes_is_refused_before_it_is_read(repo: Repository) -> None:
    await repo.storage.put("snapshots/big", b"x" * 5000)
    with pytest.raises(ObjectTooLarge, match="5000 bytes, more than the 4096"):
        await repo.storage.get("snapshots/big", max_bytes=4096)
    assert await repo.storage.get("snapshots/big", max_bytes=5000) == b"x" * 5000


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
async def test_keys_cannot_escape_the_root(repo: Repository, key: str) -> None:
    with pytest.raises(ConfigError):
        await repo.storage.put(key, b"x")


def test_repository_urls() -> None:
    s3 = parse_repo_url("s3://velero-backups/cluster-a/ferry/app")
    assert (s3.scheme, s3.bucket, s3.path) == ("s3", "velero-backups", "cluster-a/ferry/app")
    assert parse_repo_url("s3://bucket").path == ""
    assert parse_repo_url("file:///var/repo").path == "/var/repo"
    assert parse_repo_url("./repo").path == "./repo"
    for bad in ("s3://Bad_Bucket/x", "gs://bucket/x", "s3://bucket/x?endpoint=y", ""):
        with pytest.raises(ConfigError):
            parse_repo_url(bad)
    assert velero_repository_prefix("cluster-a/", "app") == "cluster-a/ferry/app"
    assert velero_repository_prefix("", "app") == "ferry/app"


def test_settings_follow_the_aws_cli_variables() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "https://s3-specific:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-central-1",
        "AWS_PROFILE": "backup",
    }
    s = s3_settings_from_env(env)
    assert (s.endpoint_url, s.region, s.profile) == ("https://s3-specific:2", "eu-central-1", "backup")
    assert s3_settings_from_env({"AWS_ENDPOINT_URL": "http://generic:1"}).endpoint_url == "http://generic:1"
    assert s3_settings_from_env(env, region="us-west-2", endpoint_url=None).region == "us-west-2"
    with pytest.raises(ConfigError):
        s3_settings_from_env({"AWS_ENDPOINT_URL_S3": "ftp://x"})


def test_credentials_never_appear_in_repr() -> None:
    s = s3_settings_from_env({}, access_key_id="AKIDSECRETID", secret_access_key="very-secret")
    assert "very-secret" not in repr(s)
    assert "AKIDSECRETID" not in repr(s)


async def test_environment_alone_reaches_s3(
    s3_server: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    storage = await open_storage(f"s3://{bucket}/env", s3_settings_from_env(os.environ))
    async with storage:
        await storage.put("k", b"v")
        assert await storage.get("k") == b"v"


async def test_shared_credentials_file_and_profile(
    s3_server: SeaweedServer, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n"
        f"[backup]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    settings = s3_settings_from_env(os.environ, endpoint_url=s3_server.endpoint, region="us-east-1")
    async with await open_storage(f"s3://{bucket}/profile", settings) as storage:
        await storage.put("k", b"v")
    monkeypatch.delenv("AWS_PROFILE")
    settings = s3_settings_from_env(os.environ, endpoint_url=s3_server.endpoint, region="us-east-1")
    async with await open_storage(f"s3://{bucket}/profile", settings) as storage:
        with pytest.raises(AccessDenied):
            await storage.get("k")


async def test_missing_bucket(s3_server: SeaweedServer) -> None:
    async with await S3Storage.open(s3_settings_for(s3_server), "no-such-bucket-here", "p") as storage:
        with pytest.raises(BucketNotFound, match="no-such-bucket-here"):
            await storage.get("k")


async def test_wrong_secret_is_access_denied_and_never_printed(s3_server: SeaweedServer, bucket: str) -> None:
    settings = s3_settings_for(s3_server, secret_access_key="the-wrong-secret")
    async with await S3Storage.open(settings, bucket, "p") as storage:
        with pytest.raises(AccessDenied) as caught:
            await storage.put("k", b"v")
    assert "the-wrong-secret" not in str(caught.value)
    assert ACCESS_KEY not in str(caught.value)


async def test_no_credentials_says_how_to_provide_them(s3_server: SeaweedServer, bucket: str) -> None:
    settings = s3_settings_for(s3_server, access_key_id=None, secret_access_key=None)
    async with await S3Storage.open(settings, bucket, "p") as storage:
        with pytest.raises(AccessDenied, match="AWS_ACCESS_KEY_ID"):
            await storage.get("k")


@asynccontextmanager
async def through_proxy(server: SeaweedServer, proxy: FaultyProxy, **settings: object) -> AsyncIterator[S3Storage]:
    """S3 storage on a fresh bucket, reached through the fault-injecting proxy."""
    values: dict[str, object] = {"backoff_base_s": 0.01, **settings}
    storage = await S3Storage.open(
        s3_settings_for(server, endpoint_url=proxy.endpoint, **values), await make_bucket(server), "p"
    )
    async with storage:
        yield storage


async def test_transient_errors_are_retried(s3_server: SeaweedServer, proxy: FaultyProxy) -> None:
    retries: list[int] = []
    async with through_proxy(s3_server, proxy, max_attempts=4) as storage:
        storage.on_retry = lambda op, key, attempt, err: retries.append(attempt)
        await storage.put("k", b"value")
        proxy.fail_next = 2
        assert await storage.get_range("k", 1, 3) == b"alu"
    assert retries == [1, 2]


async def test_persistent_transient_errors_give_up_after_max_attempts(
    s3_server: SeaweedServer, proxy: FaultyProxy
) -> None:
    async with through_proxy(s3_server, proxy, max_attempts=3) as storage:
        proxy.fail_next = 100
        before = proxy.requests
        with pytest.raises(TransientStorageError):
            await storage.get("k")
        assert proxy.requests - before == 3


async def test_permanent_errors_are_not_retried(s3_server: SeaweedServer, proxy: FaultyProxy) -> None:
    async with through_proxy(s3_server, proxy, max_attempts=5) as storage:
        before = proxy.requests
        with pytest.raises(ObjectNotFound):
            await storage.get("missing")
        assert proxy.requests - before == 1


async def test_a_stalled_request_times_out(s3_server: SeaweedServer, proxy: FaultyProxy) -> None:
    async with through_proxy(s3_server, proxy, max_attempts=1, request_timeout_s=0.5) as storage:
        proxy.stall_next = 1
        with pytest.raises(TransientStorageError, match=r"took longer than 0\.5 s"):
            await storage.get("k")


async def test_unreachable_endpoint_is_a_storage_error(bucket: str) -> None:
    settings = s3_settings_from_env(
        {}, endpoint_url="http://127.0.0.1:9", region="us-east-1", access_key_id="a", secret_access_key="b"
    )
    settings = dataclasses.replace(settings, max_attempts=2, backoff_base_s=0.01)
    async with await S3Storage.open(settings, bucket, "p") as storage:
        with pytest.raises(StorageError, match=r"127\.0\.0\.1:9"):
            await storage.get("k")


async def test_storages_share_botocore_s3_data(s3_server: SeaweedServer, bucket: str) -> None:
    # Each restore opens its own storage: parsing botocore's S3 model again each time cost 50-150 ms of CPU
    # before the first request (bench.first_byte). One loader per process keeps it parsed.
    settings = s3_settings_for(s3_server)
    async with (
        await S3Storage.open(settings, bucket, "a") as first,
        await S3Storage.open(settings, bucket, "b") as second,
    ):
        assert first.client._loader is second.client._loader  # type: ignore[attr-defined]
        await first.put("k", b"first")
        await second.put("k", b"second")
        assert (await first.get("k"), await second.get("k")) == (b"first", b"second")
