"""A restore's pack reads: presigned ranged GETs received in threads (``agent.storage.ranged``), against the
real S3 server through the fault-injecting proxy. Each answer maps to the same errors as through
aiobotocore, a cancelled read does not wait for the store, and a proxy or a redirect sends the reads back
through aiobotocore."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import botocore.session
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from agent.errors import AccessDenied, FerryError, ObjectNotFound, ObjectTruncated, StorageError
from agent.logs import Redactor
from agent.settings import S3Settings
from agent.storage.ranged import RangedReader
from agent.storage.s3 import S3Storage
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import ACCESS_KEY, SeaweedServer, make_bucket, s3_settings_for, self_signed_certificate

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


@pytest.mark.parametrize("status", [301, 400, 403])
async def test_a_presigned_read_the_store_redirects_or_refuses_is_made_again_through_aiobotocore(
    s3_server: SeaweedServer, proxy: FaultyProxy, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # 301: a bucket in another region; 400: a URL signed for another region; 403: a bucket policy that
    # denies query-string authentication.
    async with _storage(_via(s3_server, proxy), await make_bucket(s3_server)) as storage:
        await storage.put("k", b"0123456789")
        proxy.refuse_presigned = status
        with caplog.at_level(logging.INFO, logger="agent.storage.s3"):
            assert await storage.get_range("k", 1, 3) == b"123"
            assert await storage.get_range("k", 5, 2) == b"56"
    assert proxy.presigned == 1  # the second read went straight through aiobotocore
    why = {
        301: f"GET 'k' on {storage.describe()} was redirected (301)",
        400: "the store refused a presigned GET (400): An error occurred (AuthorizationQueryParametersError) when "
        "calling the GetObject operation: Error parsing the X-Amz-Credential parameter; the region 'us-east-1' is "
        "wrong; expecting 'eu-west-1'",
        403: f"a presigned ranged GET on {storage.describe()} was refused where a signed request was not",
    }[status]
    assert [r.getMessage() for r in caplog.records if "from now on" in r.getMessage()] == [
        f"{why}; reading pack ranges with signed requests from now on"
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


async def test_a_read_cancelled_while_it_connects_sends_nothing(
    s3_server: SeaweedServer, proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _storage(_via(s3_server, proxy, request_timeout_s=300), await make_bucket(s3_server)) as storage:
        await storage.put("k", b"x" * 1000)  # through aiobotocore: the reader has no connection yet
        connecting, connected = threading.Event(), threading.Event()
        real = socket.create_connection

        def slow_connect(*args: object, **kwargs: object) -> socket.socket:  # a SYN answered late
            connecting.set()
            connected.wait(10)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "create_connection", slow_connect)
        proxy.stall_ranged = True
        before = proxy.requests
        read = asyncio.create_task(storage.get_range("k", 0, 10))
        assert await asyncio.to_thread(connecting.wait, 10)
        read.cancel()
        connected.set()
        async with asyncio.timeout(10):
            with pytest.raises(asyncio.CancelledError):
                await read
        assert proxy.requests == before  # the GET was never sent on the connection made after the cancel


async def test_reads_cancelled_at_random_points_never_corrupt_the_others(tmp_path: Path) -> None:
    # Over TLS a shutdown that reached another read's connection would hand it ciphertext as its body.
    server = SeaweedServer(tmp_path / "data", tls=self_signed_certificate(tmp_path)).start()
    try:
        assert server.tls is not None
        settings = s3_settings_for(server, endpoint_url=server.https_endpoint, ca_bundle=str(server.tls[0]))
        data = os.urandom(300_000)
        rng = random.Random(7)
        async with _storage(settings, await make_bucket(server)) as storage:
            await storage.put("k", data)
            for _ in range(25):
                ranges = [(rng.randrange(0, 200_000), rng.randrange(1, 100_000)) for _ in range(4)]
                buffers = [bytearray(n) for _, n in ranges]
                reads = [
                    asyncio.create_task(storage.get_range_into("k", o, memoryview(b)))
                    for (o, _), b in zip(ranges, buffers, strict=True)
                ]
                await asyncio.sleep(rng.uniform(0, 0.004))  # cancel wherever the reads happen to be
                for read in rng.sample(reads, 2):
                    read.cancel()
                outcomes = await asyncio.gather(*reads, return_exceptions=True)
                for outcome, (offset, n), buffer in zip(outcomes, ranges, buffers, strict=True):
                    if not isinstance(outcome, BaseException):
                        assert buffer == data[offset : offset + n]
                    else:
                        assert isinstance(outcome, asyncio.CancelledError), outcome
            assert await storage.get_range("k", 1000, 5000) == data[1000:6000]
    finally:
        server.stop()


async def test_a_kept_alive_tls_connection_the_store_reset_is_replaced(tmp_path: Path) -> None:
    # A TLS server that resets (RST) its first connection once the client has its answer and the connection
    # is idle; it answers later connections and closes them when the client does.
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    answered, reset = threading.Event(), threading.Event()
    answer = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes 0-3/10\r\n\r\n0123"

    def serve() -> None:
        first = True
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            with context.wrap_socket(raw, server_side=True) as conn, conn.makefile("rb") as requests:
                while requests.readline() not in (b"\r\n", b""):
                    pass
                conn.sendall(answer)
                if first:
                    answered.wait(10)  # an RST drops what the client has not read yet
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    requests.read()  # until the client closes
            if first:
                first = False
                reset.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    operation = botocore.session.get_session().get_service_model("s3").operation_model("GetObject")
    reader = RangedReader(2, 5.0, 5.0, str(cert), operation)
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/b/k?X-Amz-Signature=0"
    try:
        first, second = bytearray(4), bytearray(4)
        await reader.get_into(url, 0, memoryview(first), "k", "here")
        answered.set()
        assert await asyncio.to_thread(reset.wait, 10)
        await reader.get_into(url, 0, memoryview(second), "k", "here")  # no error: asked again once
        assert first == second == b"0123"
    finally:
        reader.close()
        listener.close()
        thread.join(10)


async def test_an_https_endpoint_that_is_not_tls_says_to_check_it(s3_server: SeaweedServer, bucket: str) -> None:
    settings = s3_settings_for(s3_server, endpoint_url=s3_server.endpoint.replace("http://", "https://"))
    async with _storage(settings, bucket) as storage:
        with pytest.raises(StorageError, match=r"TLS to .* failed: .*check that the endpoint's scheme") as caught:
            await storage.get_range("k", 0, 1)
    assert not caught.value.transient


async def test_library_debug_logs_never_show_a_presigned_urls_signature() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(Redactor())
    botocore_log = logging.getLogger("botocore")
    botocore_log.addHandler(handler)
    level = botocore_log.level
    botocore_log.setLevel(logging.DEBUG)
    try:
        async with AioSession().create_client(
            "s3",
            endpoint_url="http://127.0.0.1:9",
            region_name="us-east-1",
            aws_access_key_id="AKIAEXAMPLE",
            aws_secret_access_key="example-secret",
            config=AioConfig(signature_version="s3v4"),
        ) as client:
            url = await client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
    finally:
        botocore_log.removeHandler(handler)
        botocore_log.setLevel(level)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    assert "Signature" in stream.getvalue()  # botocore did log its signing
    assert signature not in stream.getvalue()
