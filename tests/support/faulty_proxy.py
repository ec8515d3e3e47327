"""An HTTP proxy on 127.0.0.1 in front of the real S3 server that can answer with errors or stall, so
retries and timeouts are tested over the wire (the client signs for the proxy's address; the proxy
forwards the request untouched, Host header included, so the server's signature check still passes)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}

PERMANENT_REDIRECT = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code>'
    "<Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message>"
    "</Error>"
)
WRONG_REGION = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AuthorizationQueryParametersError</Code>'
    "<Message>Error parsing the X-Amz-Credential parameter; the region 'us-east-1' is wrong; expecting "
    "'eu-west-1'</Message></Error>"
)
ACCESS_DENIED = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)
SLOW_DOWN = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    "<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class FaultyProxy:
    upstream: str
    fail_next: int = 0
    """Answer this many requests with 503 SlowDown."""
    fail_status: int = 503
    stall_next: int = 0
    """Hold this many requests until the client gives up."""
    stall_ranged: bool = False
    """Hold every ranged GET (a restore's pack reads) until ``released`` is set."""
    stall_ranged_after: int = 0
    """With ``stall_ranged``: let this many ranged GETs through first."""
    ranged_bytes: int = 0
    presigned: int = 0
    """Requests authenticated in their query string (presigned URLs, SigV4's X-Amz-Signature)."""
    refuse_presigned: int = 0
    """Answer presigned requests with this status: 301 PermanentRedirect (as S3 for a bucket in another
    region), 400 AuthorizationQueryParametersError (as S3 for a URL signed for another region) or 403
    AccessDenied (as a bucket policy that denies query-string authentication)."""
    """Body bytes of the ranged GETs answered (what restores fetched through the proxy)."""
    stall_puts: bool = False
    """Hold every PUT (a backup's pack and manifest uploads) until ``released`` is set."""
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a request is being held."""
    requests: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    flip_percent: int = 0
    """Flip one byte in this share of GET bodies (by a hash of the request and how often it was made, so
    the same requests meet the same faults in whatever order they arrive)."""
    truncate_percent: int = 0
    """Cut this share of GET bodies short (Content-Length says the short length: only a check of the
    bytes themselves can tell)."""
    ranges_only: bool = False
    """Damage only ranged GETs (pack reads), not whole objects (manifests)."""
    damage_run_limit: int = 0
    """If set, the same request is damaged at most this many times in a row: a reader that fetches again
    more often than that must succeed (0: no limit; with one, the faults a test meets do not depend on
    the luck of the bucket's random name)."""
    seed: int = 0
    faults: int = 0
    _seen: Counter[str] = field(default_factory=Counter)
    _in_a_row: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultyProxy:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        self.released.set()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def close_idle(self) -> None:
        """Close every client connection now, as a store closes kept-alive connections it finds idle; returns
        once they are closed."""
        assert self._runner is not None
        server = self._runner.server
        assert server is not None
        for handler in server.connections:
            handler.force_close()
        async with asyncio.timeout(5):
            while server.connections:
                await asyncio.sleep(0)  # a yield: each closed connection is forgotten by a callback

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if "X-Amz-Signature" in request.query:
            self.presigned += 1
            if self.refuse_presigned:
                text = {301: PERMANENT_REDIRECT, 400: WRONG_REGION}.get(self.refuse_presigned, ACCESS_DENIED)
                return web.Response(status=self.refuse_presigned, text=text, content_type="application/xml")
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=self.fail_status, text=SLOW_DOWN, content_type="application/xml")
        ranged = "Range" in request.headers
        if ranged and self.stall_ranged and self.stall_ranged_after > 0 and not self.released.is_set():
            self.stall_ranged_after -= 1
            ranged = False  # let through
        held = (self.stall_ranged and ranged) or (self.stall_puts and request.method == "PUT")
        if self.stall_next > 0 or held:
            self.stall_next = max(0, self.stall_next - 1)
            self.holding.set()
            await self.released.wait()
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        # The path and query as they came, byte for byte: a presigned URL's signature covers them.
        url = URL(self.upstream + request.rel_url.raw_path_qs, encoded=True)
        async with self._session.request(request.method, url, headers=headers, data=body) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            ranged = "Range" in request.headers
            if ranged and request.method == "GET":
                self.ranged_bytes += len(payload)
            if (
                request.method == "GET"
                and upstream.status in (200, 206)
                and payload
                and (ranged or not self.ranges_only)
            ):
                payload = self._damage(f"{request.rel_url.raw_path_qs} {request.headers.get('Range', '')}", payload)
            return web.Response(status=upstream.status, body=payload, headers=out_headers)

    def _damage(self, request: str, payload: bytes) -> bytes:
        self._seen[request] += 1
        roll = hashlib.blake2b(f"{self.seed} {request} {self._seen[request]}".encode(), digest_size=8).digest()
        pick, where = roll[0] % 100, int.from_bytes(roll[1:], "big")
        if self.damage_run_limit and self._in_a_row[request] >= self.damage_run_limit:
            pick = 100  # this time it comes through
        self._in_a_row[request] = self._in_a_row[request] + 1 if pick < self.flip_percent + self.truncate_percent else 0
        if pick < self.flip_percent:
            self.faults += 1
            damaged = bytearray(payload)
            damaged[where % len(payload)] ^= 1 << (where % 8)
            return bytes(damaged)
        if pick < self.flip_percent + self.truncate_percent:
            self.faults += 1
            return payload[: where % len(payload)]
        return payload
