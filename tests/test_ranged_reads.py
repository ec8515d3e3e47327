"""A restore's pack reads: presigned ranged GETs received in threads (``agent.storage.ranged``), against the
real S3 server through the fault-injecting proxy. Each answer maps to the same errors as through
aiobotocore, a cancelled read does not wait for the store, and a proxy or a redirect sends the reads back
through aiobotocore."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agent.errors import AccessDenied, FerryError, ObjectNotFound, ObjectTruncated
from agent.settings import S3Settings
from agent.storage.s3 import S3Storage
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import ACCESS_KEY, SeaweedServer, make_bucket, s3_settings_for

pytestmark = pytest.mark.timeout(60)

Retries = list[tuple[str, str, int, FerryError]]


@asynccontextmanager
async def _storage(settings: S3Settings, bucket: str, retries: Retries | None = None) -> AsyncIterator[S3Storage]:
    async with await S3Storage.open(settings, bucket, "p") as storage:
        if retries is not None:
            storage.on_retry = lambda *a: retries.append(a)
        yield storage


def _via(server: SeaweedServer, proxy: FaultyProxy, **overrides: object) -> S3Settings:
    return s3_settings_for(server, endpoint_url=proxy.endpoint, backoff_base_s=0.01, **overrides)


async def test_pack_reads_are_presigned_gets_received_into_the_buffer(
    s3_server: SeaweedServer, proxy: FaultyProxy
) -> None:
    data = os.urandom(900_000)  # the proxy takes request bodies up to 1 MiB
    async with _storage(_via(s3_server, proxy), await make_bucket(s3_server)) as storage:
        await storage.put("packs/p", data)
        before = proxy.presigned
        buffer = bytearray(500_007)
        first_byte = await storage.get_range_into("packs/p", 12345, memoryview(buffer))
        assert buffer == data[12345 : 12345 + len(buffer)]
        assert await storage.get_range("packs/p", len(data) - 3, 3) == data[-3:]
    assert proxy.presigned == before + 2
    assert first_byte > 0


async def test_a_proxy_from_the_environment_carries_the_pack_reads(
    s3_server: SeaweedServer, proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The storage is pointed at the server itself: only the proxy variable leads its requests through the
    # proxy. Reads received in threads would go around it.
    bucket = await make_bucket(s3_server)
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
    async with _storage(s3_settings_for(s3_server), bucket) as storage:
        await storage.put("k", b"0123456789")
        before = proxy.requests
        assert await storage.get_range("k", 2, 3) == b"234"
        assert proxy.requests == before + 1
    assert proxy.presigned == 0


async def test_a_cancelled_pack_read_does_not_wait_for_the_store(s3_server: SeaweedServer, proxy: FaultyProxy) -> None:
    async with _storage(_via(s3_server, proxy, request_timeout_s=300), await make_bucket(s3_server)) as storage:
        await storage.put("k", b"x" * 1000)
        proxy.stall_ranged = True
        read = asyncio.create_task(storage.get_range("k", 0, 10))
        async with asyncio.timeout(10):
            await proxy.holding.wait()
        read.cancel()
        # The thread's socket is shut down: the read returns now, not when the store answers (never, here).
        async with asyncio.timeout(10):
            with pytest.raises(asyncio.CancelledError):
                await read
        proxy.released.set()
        assert await storage.get_range("k", 1, 2) == b"xx"


async def test_a_kept_alive_connection_the_store_closed_is_replaced_without_a_retry(
    s3_server: SeaweedServer, proxy: FaultyProxy
) -> None:
    retries: Retries = []
    async with _storage(_via(s3_server, proxy), await make_bucket(s3_server), retries) as storage:
        await storage.put("k", b"0123456789")
        assert await storage.get_range("k", 0, 4) == b"0123"
        await proxy.close_idle()
        assert await storage.get_range("k", 4, 4) == b"4567"
    assert retries == []


@pytest.mark.parametrize("status", [301, 403])
async def test_a_presigned_read_the_store_redirects_or_refuses_is_made_again_through_aiobotocore(
    s3_server: SeaweedServer, proxy: FaultyProxy, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # 301: a bucket in another region; 403: a bucket policy that denies query-string authentication.
    async with _storage(_via(s3_server, proxy), await make_bucket(s3_server)) as storage:
        await storage.put("k", b"0123456789")
        proxy.refuse_presigned = status
        with caplog.at_level(logging.INFO, logger="agent.storage.s3"):
            assert await storage.get_range("k", 1, 3) == b"123"
            assert await storage.get_range("k", 5, 2) == b"56"
    assert proxy.presigned == 1  # the second read went straight through aiobotocore
    assert [r.getMessage() for r in caplog.records if "presigned" in r.getMessage()] == [
        f"{storage.describe()}: the store {'redirected' if status == 301 else 'refused'} a presigned ranged GET "
        "that a signed request got; reading that way from now on"
    ]


async def test_answers_to_pack_reads_map_to_the_storage_errors(s3_server: SeaweedServer, proxy: FaultyProxy) -> None:
    retries: Retries = []
    async with _storage(_via(s3_server, proxy, max_attempts=4), await make_bucket(s3_server), retries) as storage:
        await storage.put("k", b"0123456789")
        proxy.fail_next = 2  # 503 SlowDown: retried, and counted for the restore's pacing
        assert await storage.get_range("k", 1, 3) == b"123"
        assert [r[2] for r in retries] == [1, 2]
        assert storage.throttles() == 2
        before = proxy.requests
        with pytest.raises(ObjectNotFound):
            await storage.get_range("missing", 0, 1)
        with pytest.raises(ObjectTruncated, match="holds 10 bytes"):
            await storage.get_range("k", 8, 4)
        with pytest.raises(ObjectTruncated):
            await storage.get_range("k", 20, 4)  # 416: the range starts past the end
        assert proxy.requests == before + 3  # none of them retried


async def test_a_short_body_is_fetched_again(s3_server: SeaweedServer, proxy: FaultyProxy) -> None:
    retries: Retries = []
    data = os.urandom(100_000)
    async with _storage(_via(s3_server, proxy), await make_bucket(s3_server), retries) as storage:
        await storage.put("k", data)
        proxy.truncate_percent, proxy.damage_run_limit = 100, 1
        assert await storage.get_range("k", 10, 50_000) == data[10:50_010]
    assert len(retries) == 1
    assert "delivered" in str(retries[0][3])


async def test_a_refused_pack_read_says_so_without_its_signature(s3_server: SeaweedServer, bucket: str) -> None:
    async with _storage(s3_settings_for(s3_server), bucket) as storage:
        await storage.put("k", b"0123456789")
    wrong = s3_settings_for(s3_server, secret_access_key="the-wrong-secret")
    async with _storage(wrong, bucket) as storage:
        with pytest.raises(AccessDenied, match="SignatureDoesNotMatch") as caught:
            await storage.get_range("k", 0, 4)
    message = str(caught.value)
    for secret in ("the-wrong-secret", ACCESS_KEY, "X-Amz-", "Signature="):
        assert secret not in message


async def test_an_unreachable_store_fails_the_pack_read_with_its_address(bucket: str) -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id="a",
        secret_access_key="b",
        max_attempts=2,
        backoff_base_s=0.01,
    )
    async with _storage(settings, bucket) as storage:
        with pytest.raises(FerryError, match=r"127\.0\.0\.1:9.*ConnectionRefusedError") as caught:
            await storage.get_range("k", 0, 4)
    assert "X-Amz-" not in str(caught.value)
