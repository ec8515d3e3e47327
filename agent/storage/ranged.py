"""Ranged GETs received in threads, straight into the caller's buffer.

A restore's pack reads are most of its bytes. Through aiobotocore each one is received on the event loop
(aiohttp feeds the body in network-read-sized pieces, each a Python callback and a copy) after botocore's
per-request machinery (request building, event hooks, response parsing). Over loopback on a 2-core VM,
receiving cost 0.41-0.49 CPU-s per restored GB that way and costs 0.21-0.25 through this module
(``python -m bench.link``: the fetch ceiling and one GET at a time), and the event loop's thread, which a
restore kept busy from start to end, is free for the rest (docs/PERFORMANCE.md).

What is ours here is only the glue; the parts that are easy to get wrong come from libraries:

- botocore signs each request (a presigned URL: SigV4 query authentication, which covers the host and
  leaves the ``Range`` header out of the signature as S3 allows) and parses error answers into the same
  ``ClientError`` its client raises, so ``S3Storage`` maps them as for every other request;
- ``http.client`` (the standard library) speaks HTTP/1.1 and TLS; ``HTTPResponse.readinto`` receives a
  non-chunked body straight into the buffer given, without an intermediate copy;
- botocore also says which CA bundle to trust (as for its own connections) and whether a proxy applies:
  where one does, ``S3Storage`` reads through aiobotocore instead, which speaks to proxies.

Threads block in ``recv``, which releases the GIL. A cancelled read is aborted by shutting its socket down
from the event loop's thread; the thread then returns, and the cancellation is re-raised only after that
(``WorkerPool.run_abortable``). A presigned URL is a credential for one object while it is valid: no
message, log line or exception built here contains one.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

import botocore.awsrequest
import botocore.exceptions
import botocore.httpsession
import botocore.model
import botocore.parsers

from agent.aio.threads import WorkerPool
from agent.errors import ObjectTruncated, StorageError, TransientStorageError

_ERROR_BODY_LIMIT = 64 * 1024
"""An error answer's body is read up to this many bytes (S3's are well under 1 KiB)."""

Origin = tuple[str, str, int]
"""scheme, host, port"""


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)
"""How sending on a kept-alive connection the store has closed fails (over TLS, a reset is an SSLEOFError)."""


class PresignedRefused(StorageError):
    """The store will not serve this read as a presigned GET: it redirected it (a bucket in another region,
    another endpoint) or found its query-string authentication malformed (S3's 400
    AuthorizationQueryParametersError, for one signed for the wrong region). The caller should read through
    aiobotocore, which follows S3's redirects and learns a bucket's region."""


@dataclass
class _Job:
    """One GET in a thread: what the event loop's thread needs to abort it."""

    lock: threading.Lock
    aborted: bool = False
    connection: http.client.HTTPConnection | None = None

    def abort(self) -> None:
        """Make the thread's GET return soon: its socket is shut down, so a blocked receive returns. Done
        under the lock the thread takes to let go of the connection, so the shutdown can never reach a
        connection that is back in the idle pool (and another GET's); the thread closes an aborted
        connection instead of keeping it. A connect in progress is not interrupted (it ends within the
        connect timeout), but no GET is sent on it."""
        with self.lock:
            self.aborted = True
            sock = self.connection.sock if self.connection is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed: the thread has its answer
                    sock.shutdown(socket.SHUT_RDWR)


class RangedReader:
    """Ranged GETs of presigned URLs, each in a thread of its own pool, over kept-alive connections.

    ``threads`` bounds the GETs at once and the connections kept (one per thread at most). Timeouts, in
    seconds: ``connect_timeout_s`` to connect, ``read_timeout_s`` for each wait for data. ``verify`` is
    botocore's: True (its default CA bundle), False (no verification) or a CA bundle's path.
    """

    def __init__(
        self,
        threads: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        verify: bool | str,
        operation: botocore.model.OperationModel,
    ) -> None:
        self._pool = WorkerPool(threads, "ferry-get")
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._verify = verify
        self._operation = operation
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    async def get_into(self, url: str, offset: int, buffer: memoryview, key: str, where: str) -> float:
        """GET ``len(buffer)`` bytes of ``url`` from ``offset`` into ``buffer``. Returns the seconds to the
        answer's status line (time to first byte). ``key`` and ``where`` (the storage's description) name
        the read in messages. Raises ``botocore.exceptions.ClientError`` for an error answer (4xx/5xx, parsed by
        botocore), ObjectTruncated when the object ends before the range does (RFC 9110 section 14.4:
        Content-Range gives its size), TransientStorageError for a connection that failed or delivered
        fewer bytes, PresignedRefused for a redirect or a query authentication the store did not take, and
        StorageError for an answer that is not the range asked or for TLS that fails (a certificate not
        trusted, an endpoint that does not speak TLS)."""
        job = _Job(threading.Lock())
        return await self._pool.run_abortable(job.abort, self._get, job, url, offset, buffer, key, where)

    def close(self) -> None:
        """Wait for the threads (every ``get_into`` has returned by then) and close the idle connections."""
        self._pool.close()
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    # In the threads.

    def _get(self, job: _Job, url: str, offset: int, buffer: memoryview, key: str, where: str) -> float:
        what = f"GET {key!r} on {where}"
        parts = urllib.parse.urlsplit(url)
        origin: Origin = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        headers = {"Range": f"bytes={offset}-{offset + len(buffer) - 1}"}
        connection, reused = self._take(origin)
        keep = False
        try:
            started = time.monotonic()
            try:
                response = self._ask(job, connection, target, headers)
            except _STALE:
                if not reused or job.aborted:
                    raise
                # The store closed a kept-alive connection while it was idle: no failure of this GET. Ask
                # again once, on a new connection (as urllib3 does).
                connection.close()
                connection = self._new(origin)
                started = time.monotonic()
                response = self._ask(job, connection, target, headers)
            first_byte = time.monotonic() - started
            self._receive(response, offset, buffer, what)
            keep = not response.will_close and response.isclosed()
        except ssl.SSLCertVerificationError as e:
            raise StorageError(
                f"TLS to {where} failed: {e.verify_message or e.reason}; "
                "set a CA bundle or, for testing only, skip verification"
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:  # the connection ended: worth asking again
            raise TransientStorageError(f"{what}: {type(e).__name__}, will retry") from None
        except ssl.SSLError as e:
            raise StorageError(
                f"TLS to {where} failed: {e.reason or type(e).__name__}; check that the endpoint's scheme "
                "(https://) and port are those of a TLS server"
            ) from None
        except TimeoutError:
            raise TransientStorageError(
                f"{what} timed out (waiting {self._connect_timeout_s:g} s to connect or "
                f"{self._read_timeout_s:g} s for data), will retry"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            if job.aborted:
                raise TransientStorageError(f"{what}: abandoned") from None
            raise TransientStorageError(f"{what}: {type(e).__name__}: {_scrub(str(e), parts.query)}") from None
        finally:
            with job.lock:
                job.connection = None
                keep = keep and not job.aborted
            if keep:
                self._give(origin, connection)
            else:
                connection.close()
        return first_byte

    def _ask(
        self, job: _Job, connection: http.client.HTTPConnection, target: str, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        """Send the GET on ``connection`` (connecting it first if it is new) and read the answer's head."""
        with job.lock:
            if job.aborted:
                raise ConnectionAbortedError("the read was abandoned")
            job.connection = connection
        if connection.sock is None:
            connection.connect()
            sock: socket.socket = connection.sock  # type: ignore[assignment] # set by connect()
            sock.settimeout(self._read_timeout_s)
            with job.lock:  # aborted while connecting: the shutdown found no socket yet
                if job.aborted:
                    raise ConnectionAbortedError("the read was abandoned")
        connection.request("GET", target, headers=headers)
        return connection.getresponse()

    def _receive(self, response: http.client.HTTPResponse, offset: int, buffer: memoryview, what: str) -> None:
        length = len(buffer)
        status = response.status
        if status in (301, 302, 307, 308):
            raise PresignedRefused(f"{what} was redirected ({status})")
        if status not in (200, 206):
            self._raise_error(response)
        size = response.getheader("Content-Length")
        body = int(size) if size is not None and size.isdigit() else None
        if status == 200 and not (offset == 0 and body == length):
            raise StorageError(f"{what}: the store answered a ranged GET with the whole object")
        if body is not None and body != length:
            total = object_size(response.getheader("Content-Range", ""))
            if total is not None and total < offset + length:
                raise ObjectTruncated(
                    f"{what}: the object holds {total} bytes; a read of {length} bytes at {offset} goes past its end"
                )
            if body > length:
                raise StorageError(f"{what}: the store answered a ranged GET with more than the {length} bytes asked")
        filled = 0
        while filled < length:
            n = response.readinto(buffer[filled:])
            if not n:
                raise TransientStorageError(
                    f"{what} delivered {filled} of the {length} bytes asked at {offset}, will retry"
                )
            filled += n
        if not response.isclosed() and response.read(1):  # a chunked body (no Content-Length) ends here
            raise StorageError(f"{what}: the store answered a ranged GET with more than the {length} bytes asked")

    def _raise_error(self, response: http.client.HTTPResponse) -> None:
        body = response.read(_ERROR_BODY_LIMIT)
        shape = self._operation.output_shape
        assert shape is not None  # GetObject has an output shape
        parsed = botocore.parsers.create_parser("rest-xml").parse(
            {
                "status_code": response.status,
                "headers": botocore.awsrequest.HeadersDict(response.getheaders()),
                "body": body,
            },
            shape,
        )
        error = botocore.exceptions.ClientError(parsed, self._operation.name)
        if error.response.get("Error", {}).get("Code") == "AuthorizationQueryParametersError":
            raise PresignedRefused(f"the store refused a presigned GET ({response.status}): {error}") from None
        raise error

    def _take(self, origin: Origin) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        return self._new(origin), False

    def _give(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self._pool.threads:
                idle.append(connection)
                return
        connection.close()

    def _new(self, origin: Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self._connect_timeout_s, context=self._context())
        return http.client.HTTPConnection(host, port, timeout=self._connect_timeout_s)

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                # As botocore's own connections: its context, its CA bundle (certifi's unless one is set).
                context = botocore.httpsession.create_urllib3_context()
                if self._verify:
                    context.check_hostname = True
                    context.verify_mode = ssl.CERT_REQUIRED
                    context.load_verify_locations(botocore.httpsession.get_cert_path(self._verify))  # type: ignore[arg-type]
                else:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._tls = context
            return self._tls


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def object_size(content_range: str) -> int | None:
    """The object's whole size from a Content-Range header (RFC 9110 section 14.4), if it says."""
    m = _CONTENT_RANGE.match(content_range.strip())
    return int(m.group(3)) if m and m.group(3) != "*" else None


def _scrub(message: str, query: str) -> str:
    """``message`` without the presigned URL's query (its credential and signature), should it hold it."""
    return message.replace(query, "…") if query else message
