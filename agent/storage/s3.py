"""S3 (and S3-compatible) storage through aiobotocore.

botocore's own retries are off: every request goes through ``_call``, which bounds it with
``request_timeout_s``, translates botocore/aiohttp exceptions into ``agent.errors`` and retries only
transient ones with capped, fully jittered exponential backoff. Credentials come from the explicit
settings or botocore's chain and never appear in a message.

A restore's pack reads (``get_range_into``) are presigned by botocore and received in threads straight
into the caller's buffer (``agent.storage.ranged``), through the same ``_call`` and ``_translate``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import botocore.exceptions
import botocore.loaders
import botocore.parsers
import botocore.utils
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession

from agent.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    FerryError,
    ObjectNotFound,
    ObjectTooLarge,
    ObjectTruncated,
    StorageError,
    TransientStorageError,
)
from agent.logs import add_secret
from agent.settings import S3Settings
from agent.storage.base import ObjectInfo, Storage, check_key
from agent.storage.ranged import PresignedRefused, RangedReader, object_size

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")
log = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
_TRANSIENT = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeTooSkewed",
    "ConditionalRequestConflict",  # 409 to a conditional PUT racing another: try again
}
_THROTTLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "BandwidthLimitExceeded"}
"""Answers that ask the client to slow down (with HTTP 503 and 429): counted for the restore's pacing."""
_TRANSIENT_BOTOCORE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.HTTPClientError,
)

_PRESIGNED_VALID_S = 900
"""How long a presigned URL for a ranged GET is valid."""
_PRESIGNED_REUSE_S = 300
"""How long one is used: well within its validity and within botocore's refresh margin for expiring
credentials (10-15 minutes before they expire), so a URL is never used after its credentials."""
_PRESIGNED_KEPT = 4096
"""Presigned URLs kept at most (one per pack read lately; a restore reads a pack's ranges in a row)."""

# What a retry loop reports: operation, key, attempt number (1-based) and the error.
RetryHook = Callable[[str, str, int, FerryError], None]


_loader: botocore.loaders.Loader | None = None


class _SharedBytes(io.BytesIO):
    """A request body that reads ``data`` without copying it. botocore would wrap bytes in a BytesIO, and
    aiohttp asks that BytesIO for ``getbuffer()`` (to learn its size), which copies the whole buffer: every
    pack upload in flight held its pack twice (96 MiB more for a snapshot's three 32 MiB uploads)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


def _shared_loader() -> botocore.loaders.Loader:
    """botocore's data files (the S3 model, endpoint rules), parsed once per process. Each new session
    would parse them again: 50-150 ms of CPU before every restore's first request."""
    global _loader  # noqa: PLW0603 - one cache per process, by design
    if _loader is None:
        _loader = botocore.loaders.create_loader()
    return _loader


async def warm_up() -> None:
    """Parse botocore's S3 data now (a client is made and closed; nothing is sent), so that the first
    restore starts as fast as the others."""
    session = AioSession()
    session.register_component("data_loader", _shared_loader())
    async with session.create_client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="warm-up",
        aws_secret_access_key="warm-up",  # noqa: S106 - a placeholder; the client never sends a request
    ):
        pass


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix/``. Create with ``await S3Storage.open(...)``."""

    def __init__(self, settings: S3Settings, bucket: str, prefix: str) -> None:
        self._settings = settings
        self._bucket = bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None
        self.on_retry: RetryHook | None = None
        self._throttles = 0
        self._reader: RangedReader | None = None
        self._retired: RangedReader | None = None
        self._presigned: dict[str, tuple[str, float]] = {}

    @classmethod
    async def open(cls, settings: S3Settings, bucket: str, prefix: str) -> S3Storage:
        storage = cls(settings, bucket, prefix)
        await storage._connect()
        return storage

    async def _connect(self) -> None:
        try:
            await self._create_client()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, aiohttp.ClientError) as e:
            await self._stack.aclose()
            raise self._translate("connecting to", "", e) from None

    async def _create_client(self) -> None:
        s = self._settings
        session = AioSession(profile=s.profile) if s.profile else AioSession()
        session.register_component("data_loader", _shared_loader())
        if s.credentials_file:
            session.set_config_variable("credentials_file", s.credentials_file)
        config = AioConfig(
            connect_timeout=s.connect_timeout_s,
            read_timeout=s.request_timeout_s,
            retries={"total_max_attempts": 1},
            max_pool_connections=s.max_connections,
            s3={"addressing_style": "path" if s.path_style else "auto"},
            # SigV4 for presigned URLs too (botocore's "auto" presigns with SigV2 for some endpoints).
            signature_version="s3v4",
            # Our BLAKE3 check covers every chunk; botocore's whole-object CRCs cost a core per GB/s and
            # older S3 servers reject the newer default checksum headers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        verify: bool | str = s.ca_bundle if (s.verify_tls and s.ca_bundle) else s.verify_tls
        use_ssl = not (s.endpoint_url or "").startswith("http://")
        for value in (s.access_key_id, s.secret_access_key, s.session_token):
            add_secret(value)
        if s.access_key_id is None:  # the chain's: scrub them from every log line too
            found = await session.get_credentials()
            if found is not None:
                frozen = await found.get_frozen_credentials()
                for value in (frozen.access_key, frozen.secret_key, frozen.token):
                    add_secret(value)
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=s.endpoint_url,
                region_name=s.region or "us-east-1",
                use_ssl=use_ssl,
                verify=verify,
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                aws_session_token=s.session_token,
                config=config,
            )
        )
        endpoint = self._client.meta.endpoint_url
        if not botocore.utils.get_environ_proxies(endpoint):  # a proxy applies: aiobotocore speaks to it
            self._reader = RangedReader(
                threads=s.max_connections,
                connect_timeout_s=s.connect_timeout_s,
                read_timeout_s=s.request_timeout_s,
                verify=verify,
                operation=self._client.meta.service_model.operation_model("GetObject"),
            )

    def describe(self) -> str:
        where = f"s3://{self._bucket}/{self._prefix}"
        if self._settings.endpoint_url:
            where += f" at {self._settings.endpoint_url}"
        return where

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise StorageError("S3 storage used after it was closed")
        return self._client

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        async def op() -> bytes:
            response = await self.client.get_object(Bucket=self._bucket, Key=self._key(key))
            async with response["Body"] as body:
                size = response.get("ContentLength", 0)
                if max_bytes is not None and size > max_bytes:
                    raise ObjectTooLarge(
                        f"{key!r} in {self.describe()} holds {size} bytes, more than the {max_bytes} this read takes"
                    )
                return await body.read()

        return await self._call("GET", key, op)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        await self.get_range_into(key, offset, memoryview(buffer))
        return bytes(buffer)

    async def get_range_into(self, key: str, offset: int, buffer: memoryview) -> float:
        """As ``Storage.get_range_into``. Received in a thread straight into ``buffer`` (``RangedReader``),
        unless a proxy applies to the endpoint: then through aiobotocore, on the event loop. A presigned
        read the store redirects or does not take (``PresignedRefused``: a bucket in another region) or
        refuses (403: a bucket policy may deny query-string authentication) is asked again through
        aiobotocore; if that succeeds, every later read goes that way."""
        reader = self._reader
        if reader is None:
            return await self._get_range_on_loop(key, offset, buffer)
        where = self.describe()

        async def op() -> float:
            url = await self._presign(key)
            return await reader.get_into(url, offset, buffer, key, where)

        try:
            return await self._call("GET", key, op)
        except (PresignedRefused, AccessDenied) as e:
            first_byte = await self._get_range_on_loop(key, offset, buffer)
            if self._reader is reader:
                self._reader = None  # closed with the storage: other reads may be using it
                self._retired = reader
                why = (
                    f"a presigned ranged GET on {self.describe()} was refused where a signed request was not"
                    if isinstance(e, AccessDenied)
                    else str(e)
                )
                log.info("%s; reading pack ranges with signed requests from now on", why)
            return first_byte

    async def _presign(self, key: str) -> str:
        """A presigned URL for GETs of ``key``, made by botocore (SigV4 query authentication), reused for
        ``_PRESIGNED_REUSE_S``."""
        now = time.monotonic()
        kept = self._presigned.get(key)
        if kept is not None and now - kept[1] < _PRESIGNED_REUSE_S:
            return kept[0]
        url = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": self._key(key)}, ExpiresIn=_PRESIGNED_VALID_S
        )
        if len(self._presigned) >= _PRESIGNED_KEPT:
            self._presigned.clear()
        self._presigned[key] = (url, now)
        return url

    async def _get_range_on_loop(self, key: str, offset: int, buffer: memoryview) -> float:
        length = len(buffer)
        first_byte = 0.0

        async def op() -> None:
            nonlocal first_byte
            started = time.monotonic()
            response = await self.client.get_object(
                Bucket=self._bucket, Key=self._key(key), Range=f"bytes={offset}-{offset + length - 1}"
            )
            first_byte = time.monotonic() - started
            filled = 0
            extra = False
            async with response["Body"] as body:
                # aiohttp's stream hands over the body as it arrived, one network read at a time: each is
                # copied once, into memory we reuse. (The body's readinto joins buffered reads first, and
                # then copies: it cost more CPU than one new bytes object per GET.)
                stream = body.raw_stream.content
                while True:
                    piece, end_of_http_chunk = await stream.readchunk()
                    if not piece:
                        if end_of_http_chunk:  # a chunked body's chunk boundary, not its end
                            continue
                        break
                    n = min(len(piece), length - filled)
                    buffer[filled : filled + n] = piece[:n] if n < len(piece) else piece
                    filled += n
                    if n < len(piece):
                        extra = True
                        break
            if filled != length:
                total = object_size(response.get("ContentRange", ""))
                if total is not None and total < offset + length:
                    raise ObjectTruncated(
                        f"{key!r} in {self.describe()} holds {total} bytes; a read of {length} bytes at {offset} "
                        "goes past its end"
                    )
                raise TransientStorageError(
                    f"GET {key!r} on {self.describe()} delivered {filled} of the {length} bytes asked at {offset}, "
                    "will retry"
                )
            if extra:
                raise StorageError(
                    f"{self.describe()} answered a ranged GET of {key!r} with more than the {length} bytes asked"
                )

        await self._call("GET", key, op)
        return first_byte

    def throttles(self) -> int:
        return self._throttles

    async def put(self, key: str, data: bytes) -> None:
        async def op() -> None:
            body = _SharedBytes(data)
            await self.client.put_object(Bucket=self._bucket, Key=self._key(key), Body=body, ContentLength=len(data))

        await self._call("PUT", key, op)

    async def put_new(self, key: str, data: bytes) -> bool:
        async def op() -> bool:
            try:
                await self.client.put_object(
                    Bucket=self._bucket,
                    Key=self._key(key),
                    Body=_SharedBytes(data),
                    ContentLength=len(data),
                    IfNoneMatch="*",
                )
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                    return False
                raise
            return True

        return await self._call("PUT", key, op)

    async def delete(self, key: str) -> None:
        async def op() -> None:
            await self.client.delete_object(Bucket=self._bucket, Key=self._key(key))

        await self._call("DELETE", key, op)

    async def subdirectories(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (which ends with "/") that hold objects: S3's common
        prefixes with the delimiter "/", so the objects below them are not listed."""

        async def op() -> list[str]:
            base = self._prefix + prefix
            paginator = self.client.get_paginator("list_objects_v2")
            pages = [page async for page in paginator.paginate(Bucket=self._bucket, Prefix=base, Delimiter="/")]
            names = {p["Prefix"][len(base) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])}
            return sorted(n for n in names if n)

        return await self._call("LIST", prefix, op)

    async def list(self, prefix: str) -> list[str]:
        async def op() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                keys.extend(obj["Key"][len(self._prefix) :] for obj in page.get("Contents", []))
            return sorted(keys)

        return await self._call("LIST", prefix, op)

    async def info(self, prefix: str) -> dict[str, ObjectInfo]:
        async def op() -> dict[str, ObjectInfo]:
            found: dict[str, ObjectInfo] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                for obj in page.get("Contents", []):
                    found[obj["Key"][len(self._prefix) :]] = ObjectInfo(
                        int(obj["Size"]), obj["LastModified"].timestamp()
                    )
            return found

        return await self._call("LIST", prefix, op)

    async def is_empty(self) -> bool:
        async def op() -> bool:
            page = await self.client.list_objects_v2(Bucket=self._bucket, Prefix=self._prefix, MaxKeys=1)
            return not page.get("Contents")

        return await self._call("LIST", "", op)

    async def sizes(self, prefix: str) -> dict[str, int]:
        async def op() -> dict[str, int]:
            found: dict[str, int] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                found.update((obj["Key"][len(self._prefix) :], int(obj["Size"])) for obj in page.get("Contents", []))
            return found

        return await self._call("LIST", prefix, op)

    async def aclose(self) -> None:
        self._client = None
        for reader in (self._reader, self._retired):
            if reader is not None:
                reader.close()
        self._reader = self._retired = None
        await self._stack.aclose()

    async def _call(self, op_name: str, key: str, op: Callable[[], Awaitable[T]]) -> T:
        s = self._settings
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(s.request_timeout_s):
                    return await op()
            except StorageError as e:
                error: FerryError = e
            except TimeoutError as e:
                error = TransientStorageError(
                    f"{op_name} {key!r} on {self.describe()} took longer than {s.request_timeout_s:g} s"
                )
                error.__cause__ = e
            except (botocore.parsers.ResponseParserError, ValueError) as e:
                # An answer that does not parse (an XML listing with a flipped byte; botocore's parsers raise
                # ValueError for a damaged number) was damaged on the way: ask again.
                error = TransientStorageError(
                    f"{op_name} {key!r} on {self.describe()}: the answer could not be parsed ({type(e).__name__}), "
                    "will retry"
                )
                error.__cause__ = e
            except (
                botocore.exceptions.BotoCoreError,
                botocore.exceptions.ClientError,
                aiohttp.ClientError,
            ) as e:
                error = self._translate(op_name, key, e)
            if not error.transient or attempt >= s.max_attempts:
                raise error
            if self.on_retry is not None:
                self.on_retry(op_name, key, attempt, error)
            delay = random.uniform(0, min(s.backoff_max_s, s.backoff_base_s * 2 ** (attempt - 1)))  # noqa: S311
            await asyncio.sleep(delay)

    def _translate(self, op_name: str, key: str, e: Exception) -> FerryError:
        where = self.describe()
        what = f"{op_name} {key!r} on {where}" if key else f"{op_name} {where}"
        out: FerryError
        if isinstance(e, botocore.exceptions.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code == "NoSuchBucket":
                out = BucketNotFound(f"bucket {self._bucket!r} does not exist at {where}")
            elif code in _NOT_FOUND:
                out = ObjectNotFound(key, where)
            elif code in _DENIED:
                out = AccessDenied(f"{what} was refused ({code}): check the credentials and their permissions")
            elif code == "InvalidRange" or status == 416:
                out = ObjectTruncated(f"{what}: the object is shorter than the range asked for")
            elif code in _TRANSIENT or status >= 500 or status == 429:
                if code in _THROTTLE or status in (429, 503):
                    self._throttles += 1
                out = TransientStorageError(f"{what} failed with {code or status}, will retry")
            else:
                out = StorageError(f"{what} failed: {code or status} {err.get('Message', '')}".rstrip())
        elif isinstance(e, botocore.exceptions.PartialCredentialsError):
            out = AccessDenied(f"incomplete S3 credentials for {where}: {_first_line(e)}")
        elif isinstance(e, botocore.exceptions.NoCredentialsError):
            out = AccessDenied(
                f"no S3 credentials for {where}: "
                + (
                    self._settings.credentials_hint
                    or "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE or AWS_PROFILE"
                )
            )
        elif isinstance(e, botocore.exceptions.ProfileNotFound):
            out = AccessDenied(
                f"the AWS profile {e.kwargs.get('profile', '')!r} (AWS_PROFILE or --s3-profile) is in neither the "
                f"credentials file nor the config file (needed for {where})"
            )
        elif isinstance(e, botocore.exceptions.ConfigParseError | botocore.exceptions.ConfigNotFound):
            out = ConfigError(f"the AWS credentials or config file cannot be read: {_first_line(e)} ({where})")
        elif isinstance(e, botocore.exceptions.SSLError):
            out = StorageError(f"TLS to {where} failed: {e}; set a CA bundle or, for testing only, skip verification")
        elif isinstance(e, (*_TRANSIENT_BOTOCORE, aiohttp.ClientError)):
            out = TransientStorageError(f"{what}: {type(e).__name__}: {e}")
        else:
            out = StorageError(f"{what}: {type(e).__name__}: {_first_line(e)}")
        out.__cause__ = e
        return out


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
