"""``KubeServer``: the strict test apiserver's lifecycle, authentication and test controls."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from . import patches
from .errors import KubeError
from .handlers import Api, accepts_json
from .kubeconfig import write_kubeconfig
from .rbac import Accounts, Authorizer, RbacUsage
from .resources import BUILTINS, ResourceType, from_crd
from .store import Store
from .watches import Revision

Predicate = Callable[[dict[str, Any]], bool]


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    status: int = 0


@dataclass
class _Failure:
    method: str
    path: re.Pattern[str]
    status: int
    reason: str
    remaining: int


@dataclass
class Hold:
    """A request held after it took effect (see ``KubeServer.hold_after``)."""

    method: str
    path: re.Pattern[str]
    body: re.Pattern[str] | None = None
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self.released.set()


@dataclass
class _Lifecycle:
    runner: web.AppRunner | None = None
    port: int = 0
    failures: list[_Failure] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)


class KubeServer:
    """A strict, in-process Kubernetes API server on 127.0.0.1 for tests (see the package docstring)."""

    def __init__(
        self,
        crds: list[dict[str, Any]],
        *,
        token: str | None = None,
        bookmark_interval: float | None = 5.0,
        history_limit: int = 100_000,
    ) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.types: list[ResourceType] = list(BUILTINS) + [t for crd in crds for t in from_crd(crd)]
        seen = [(t.api_version, t.plural) for t in self.types]
        if len(seen) != len(set(seen)):
            raise ValueError(f"a resource is defined twice: {seen}")
        self.store = Store(self.types, history_limit=history_limit)
        self.api = Api(self.store, self.types, bookmark_interval)
        self.requests: list[RequestRecord] = []
        self.accounts = Accounts()
        self._state = _Lifecycle()
        self.create("namespaces", {"metadata": {"name": "default"}})

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> KubeServer:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self._not_reached)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=5.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._state.runner = runner
        self._state.port = self.api.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """End every watch cleanly, then close the listener and all connections."""
        self.release_holds()
        for watcher in list(self.store.watchers):
            watcher.end(clean=True)
        if self._state.runner is not None:
            await self._state.runner.cleanup()
            self._state.runner = None

    async def __aenter__(self) -> KubeServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._state.port}"

    def write_kubeconfig(
        self,
        path: Path | str,
        namespace: str = "default",
        *,
        user: str | None = None,
        rbac: Authorizer | Path | str | None = None,
        usage: RbacUsage | None = None,
    ) -> Path:
        """A kubeconfig with the unrestricted admin token; with ``user`` (``system:serviceaccount:<ns>:<name>``),
        a new token of that identity whose requests ``rbac`` (RBAC YAML's path, or an ``Authorizer``)
        authorizes, recorded in ``usage`` (default ``self.accounts.usage``). See :mod:`.rbac`."""
        token = self.token if user is None else self.accounts.issue(user, rbac, usage)
        return write_kubeconfig(path, self.url, token, namespace)

    # -- HTTP ----------------------------------------------------------------------------------
    async def _not_reached(self, request: web.Request) -> web.StreamResponse:  # pragma: no cover
        raise web.HTTPNotFound

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type")
        record = RequestRecord(request.method, request.path, dict(request.query), content_type)
        self.requests.append(record)

        def on_stream(status: int) -> None:
            record.status = status

        try:
            self.accounts.admit(
                request.method, request.path, request.query, request.headers.get("Authorization"), self.token
            )
            self._injected_failure(request)
            if not accepts_json(request.headers.get("Accept")):
                message = "only application/json (and application/json;stream=watch) is served by this test server"
                raise KubeError(406, message, "NotAcceptable")

            def authorize_create() -> None:
                self.accounts.admit_create_on_update(
                    request.method, request.path, request.query, request.headers.get("Authorization"), self.token
                )

            response = await self.api.serve(request, on_stream, authorize_create)
        except KubeError as error:
            response = web.json_response(error.status(), status=error.code)
        if not record.status:
            record.status = response.status
        hold = None
        for h in self._state.holds:
            if h.reached.is_set() or h.method != request.method or not h.path.search(request.path):
                continue
            if h.body is None or (request.body_exists and h.body.search(await request.text())):
                hold = h
                break
        if hold is not None and 200 <= response.status < 300:
            hold.reached.set()
            await hold.released.wait()  # the client never hears back: as if it died right after the write
        return response

    def _injected_failure(self, request: web.Request) -> None:
        for failure in self._state.failures:
            if failure.method in (request.method, "*") and failure.path.search(request.path):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._state.failures.remove(failure)
                raise KubeError(failure.status, f"injected by fail_next({failure.path.pattern!r})", failure.reason)

    # -- test controls: faults -----------------------------------------------------------------
    def fail_next(self, method: str, path_regex: str, status: int, reason: str = "", count: int = 1) -> None:
        """The next ``count`` requests whose method and path (``re.search``) match get this error,
        unprocessed. ``method`` may be ``"*"``."""
        error = KubeError(status, "", reason)
        self._state.failures.append(_Failure(method.upper(), re.compile(path_regex), status, error.reason, count))

    def hold_after(self, method: str, path_regex: str, body_regex: str | None = None) -> Hold:
        """The next successful request whose method, path and body (``re.search``; body: any when None) match
        takes effect, but its answer is held until ``release()``: ``reached`` is set once it has taken effect,
        so a test can kill the client at exactly that point (what SIGKILL right after the write leaves)."""
        hold = Hold(method.upper(), re.compile(path_regex), re.compile(body_regex) if body_regex else None)
        self._state.holds.append(hold)
        return hold

    def release_holds(self) -> None:
        for hold in self._state.holds:
            hold.release()

    def expire_history(self) -> None:
        """Forget the kept history: any watch or continue token from an older resourceVersion gets 410."""
        self.store.expire_history()

    def drop_watches(self) -> None:
        """Abruptly close every open watch connection (the client sees a disconnect, not a clean end)."""
        for watcher in list(self.store.watchers):
            watcher.end(clean=False)

    def send_bookmarks(self) -> None:
        """Queue a BOOKMARK (current resourceVersion) on every watch that allowed bookmarks."""
        for watcher in list(self.store.watchers):
            watcher.bookmark(self.store.resource_version)

    # -- test controls: observing --------------------------------------------------------------
    def watch_count(self, plural: str | None = None) -> int:
        rtype = self._resource(plural) if plural else None
        return sum(1 for w in self.store.watchers if rtype is None or w.rtype.qualified == rtype.qualified)

    async def wait_for_watches(self, count: int, plural: str | None = None, timeout: float = 10.0) -> None:
        """Return once at least ``count`` watches (of ``plural``, if given) are open."""
        await self._until(
            lambda: self.watch_count(plural) >= count, timeout, lambda: f"{self.watch_count(plural)} watches"
        )

    async def wait_for(
        self, plural: str, name: str, namespace: str | None, predicate: Predicate, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The object once ``predicate(object)`` holds; re-checked on every write, never by polling."""
        rtype = self._resource(plural)

        def ready() -> bool:
            obj = self.store.find(rtype, name, namespace)
            return obj is not None and predicate(copy.deepcopy(obj))

        def last_seen() -> str:
            return "last seen: " + json.dumps(self.store.find(rtype, name, namespace))

        await self._until(ready, timeout, last_seen)
        return copy.deepcopy(self.store.get(rtype, name, namespace))

    async def wait_gone(self, plural: str, name: str, namespace: str | None, timeout: float = 10.0) -> None:
        rtype = self._resource(plural)

        def current() -> dict[str, Any] | None:
            return self.store.find(rtype, name, namespace)

        await self._until(lambda: current() is None, timeout, lambda: "still there: " + json.dumps(current()))

    async def wait_until(self, ready: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
        """Return once ``ready()`` holds; re-checked on every write to the store, never by polling."""
        await self._until(ready, timeout, describe)

    async def _until(self, ready: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            changed = self.store.next_change()
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                if ready():
                    return
                raise TimeoutError(f"not reached within {timeout}s; {describe()}") from None

    def history(self, plural: str, name: str, namespace: str | None = None) -> list[Revision]:
        """Every stored version of the object, oldest first; a deletion is a final ``DELETED`` revision."""
        return self.store.revisions(self._resource(plural), name, namespace)

    # -- test controls: direct store access (same rules as the HTTP verbs) ---------------------
    def _resource(self, plural: str) -> ResourceType:
        for t in self.types:
            if plural in (t.plural, t.qualified):
                return t
        raise KeyError(f"no resource {plural!r}; known: {sorted({t.plural for t in self.types})}")

    def create(self, plural: str, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create like POST, but with full rights: a given ``.status`` is kept."""
        rtype = self._resource(plural)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") if rtype.namespaced else None
        return copy.deepcopy(self.store.create(rtype, obj, ns, mode="full"))

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return copy.deepcopy(self.store.find(self._resource(plural), name, namespace))

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        rtype = self._resource(plural)
        objects = sorted(
            self.store.objects(rtype), key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )
        return [copy.deepcopy(o) for o in objects if namespace is None or o["metadata"].get("namespace") == namespace]

    def update(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole object, status included; a given resourceVersion must be current (else 409)."""
        meta = obj.get("metadata") or {}
        rtype = self._resource(plural)
        updated = self.store.update(rtype, obj, meta["name"], meta.get("namespace"), mode="full", require_rv=False)
        return copy.deepcopy(updated)

    def patch(
        self, plural: str, name: str, merge_patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch over the whole object, status included."""
        rtype = self._resource(plural)
        apply = patches.keeping_resource_version(rtype, merge_patch, lambda old: patches.merge_patch(old, merge_patch))
        return copy.deepcopy(self.store.patch(rtype, name, namespace, apply, mode="full"))

    def delete(
        self, plural: str, name: str, namespace: str | None = None, *, grace_period_seconds: int | None = None
    ) -> dict[str, Any]:
        """Delete like DELETE: with finalizers this only sets ``deletionTimestamp``; a pod on a node is only
        marked terminating unless ``grace_period_seconds=0``."""
        rtype = self._resource(plural)
        return copy.deepcopy(self.store.delete(rtype, name, namespace, grace_period_seconds=grace_period_seconds))
