"""A TCP proxy on 127.0.0.1 that makes loopback look like the link to a real object store: each request
waits ``delay_s`` before it reaches the server (a round trip's worth of latency, before the first byte of
every answer), and each connection delivers at most ``rate`` bytes a second towards the client (stores
cap the rate of one connection; only more connections fetch faster). Optionally the first answers of
ranged GETs can be 503 SlowDown (``slow_down``), as a throttling store answers.

It forwards bytes untouched (no HTTP parsing beyond spotting a request's start), so any S3 client (Ferry,
restic) can use it as its endpoint. Runs in its own thread with its own event loop, so the client under
test does not pay for it on its event loop (it does on the machine's cores: the benchmark says so).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

_SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.'
    b"</Message></Error>"
)
_SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n" % len(_SLOW_DOWN_BODY)
    + _SLOW_DOWN_BODY
)


class _Upstream(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.link.upstream_ready(cast(asyncio.Transport, transport))  # uvloop's are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.link.to_client(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()


class _Link(asyncio.Protocol):
    """One client connection and its connection to the server."""

    def __init__(self, proxy: LinkProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.waiting: deque[tuple[float, bytes]] = deque()
        self.sender: asyncio.Task[None] | None = None
        self.next_free = 0.0
        self.paused = False
        self.closed = False
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)
        self.sender = asyncio.get_running_loop().create_task(self._send())

    def upstream_ready(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        self.changed.set()

    def data_received(self, data: bytes) -> None:
        if self.proxy.slow_down > 0 and data.startswith(b"GET ") and b"\r\nrange:" in data.lower():
            self.proxy.slow_down -= 1
            self.proxy.slowed += 1
            assert self.client is not None
            self.client.write(_SLOW_DOWN)
            return
        self.waiting.append((time.monotonic() + self.proxy.delay_s, data))
        self.changed.set()

    async def _send(self) -> None:
        """Connect to the server, then forward the client's bytes in order, each after its delay."""
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Upstream(self), "127.0.0.1", self.proxy.upstream_port)
        except OSError:
            self.close()
            return
        while not self.closed:
            if not self.waiting or self.upstream is None:
                self.changed.clear()
                await self.changed.wait()
                continue
            due, data = self.waiting[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.waiting.popleft()
            self.upstream.write(data)

    def to_client(self, data: bytes) -> None:
        """Send the server's bytes on at no more than ``rate`` a second (pausing the server's side)."""
        assert self.client is not None
        self.client.write(data)
        self.proxy.delivered += len(data)
        rate = self.proxy.rate
        if not rate or self.upstream is None:
            return
        now = time.monotonic()
        self.next_free = max(self.next_free, now) + len(data) / rate
        ahead = self.next_free - now
        if ahead > 0.002 and not self.paused:
            self.paused = True
            self.upstream.pause_reading()
            asyncio.get_running_loop().call_later(ahead, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if self.upstream is not None and not self.closed:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in (self.client, self.upstream):
            if t is not None:
                t.close()
        if self.sender is not None:
            self.sender.cancel()


@dataclass
class LinkProxy:
    """Start with ``start()`` (returns once it listens), stop with ``stop()``; ``endpoint`` is its URL."""

    upstream_port: int
    delay_s: float = 0.0
    """Added before every request reaches the server."""
    rate: float = 0.0
    """Bytes a second one connection delivers to the client; 0: no cap."""
    slow_down: int = 0
    """Answer this many ranged GETs with 503 SlowDown (counted down)."""
    slowed: int = 0
    delivered: int = 0
    """Bytes sent to clients (answers, headers included)."""
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LinkProxy:
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.get_running_loop().create_server(lambda: _Link(self), "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            async with self._server:
                await self._server.serve_forever()

        def run() -> None:
            try:
                import uvloop  # noqa: PLC0415 - the faster loop where installed

                self._loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover
                self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="link-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the link proxy did not start")
        return self

    def stop(self) -> None:
        def cancel_all() -> None:
            for task in asyncio.all_tasks():
                task.cancel()

        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(cancel_all)
        if self._thread is not None:
            self._thread.join(10)
