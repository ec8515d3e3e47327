"""The HTTP face of the server: path routing, query parameters, content types, verbs and watch streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from . import patches, resources
from .errors import KubeError, bad_request, not_modelled
from .resources import ResourceType
from .selectors import object_matcher
from .store import Mode, Store, check_kind
from .watches import Watcher

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = ("application/apply-patch+yaml", "application/apply-patch+cbor")
NOT_FOUND = KubeError(404, "the server could not find the requested resource", "NotFound")


def not_allowed() -> KubeError:
    return KubeError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")


def flag(query: Any, name: str) -> bool:
    """The apiserver's bool parameters: absent, ``0`` and ``false`` (any case) are false; anything else true."""
    if name not in query:
        return False
    value = str(query.get(name))
    return not (value == "0" or value.lower() == "false")


def integer(query: Any, name: str) -> int | None:
    if name not in query:
        return None
    try:
        return int(query[name])
    except ValueError:
        raise bad_request(f"{name}: invalid value {query[name]!r}: must be an integer") from None


def accepts_json(accept: str | None) -> bool:
    if not accept:
        return True
    for media_range in accept.split(","):
        kind, *params = [p.strip() for p in media_range.split(";")]
        names = {p.partition("=")[0].strip() for p in params}
        if kind in (JSON, "application/*", "*/*") and "as" not in names:
            return True
    return False


@dataclass
class Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_target(parts: list[str], types: list[ResourceType]) -> Target:
    if parts[:2] == ["api", "v1"]:
        group_version, rest = "v1", parts[2:]
        namespaced_path = len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize")
    elif parts[0] == "apis" and len(parts) >= 4:
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        namespaced_path = len(rest) >= 3 and rest[0] == "namespaces"
    else:
        raise NOT_FOUND
    namespace = None
    if namespaced_path:
        namespace, rest = rest[1], rest[2:]
    found = [t for t in types if t.api_version == group_version and t.plural == rest[0]]
    if not found or len(rest) > 3 or (namespace is not None and not found[0].namespaced):
        raise NOT_FOUND
    return Target(found[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", JSON).split(";")[0].strip().lower()


def patcher(rtype: ResourceType, media_type: str, body: Any) -> Callable[[dict[str, Any]], Any]:
    if media_type in APPLY_PATCH:
        raise KubeError(415, "server-side apply is not modelled by this test server", "UnsupportedMediaType")
    if body is None:
        raise bad_request("the patch body is empty")
    if media_type == JSON_PATCH:
        if not isinstance(body, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        return patches.keeping_resource_version(rtype, body, lambda old: patches.json_patch(old, body))
    if media_type in (MERGE_PATCH, STRATEGIC_PATCH) and not isinstance(body, dict):
        raise bad_request("the patch body is not a JSON object")
    if media_type == MERGE_PATCH:
        return patches.keeping_resource_version(rtype, body, lambda old: patches.merge_patch(old, body))
    if media_type == STRATEGIC_PATCH and not rtype.custom:
        return patches.keeping_resource_version(rtype, body, lambda old: patches.strategic_merge_patch(old, body))
    accepted = f"{JSON_PATCH}, {MERGE_PATCH}" + ("" if rtype.custom else f", {STRATEGIC_PATCH}")
    message = f"the body of the request was in an unknown format - accepted media types include: {accepted}"
    raise KubeError(415, message, "UnsupportedMediaType")


def _check_identity(target: Target, body: dict[str, Any], *, with_name: bool) -> None:
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if with_name and meta.get("name") and meta["name"] != target.name:
        raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({target.name})")
    if target.rtype.namespaced and meta.get("namespace") and meta["namespace"] != target.namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")


class Api:
    """Serves the Kubernetes REST API over a :class:`Store`."""

    def __init__(self, store: Store, types: list[ResourceType], bookmark_interval: float | None) -> None:
        self.store = store
        self.types = types
        self.bookmark_interval = bookmark_interval
        self.port = 0

    def discovery(self, parts: list[str]) -> dict[str, Any] | None:
        groups = resources.group_versions(self.types)
        if parts == ["api"]:
            cidr = {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [cidr]}
        if parts == ["api", "v1"]:
            return resources.resource_list("v1", self.types)
        if parts == ["apis"]:
            listed = [resources.api_group(g, vs) for g, vs in sorted(groups.items())]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": listed}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **resources.api_group(parts[1], groups[parts[1]])}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], []):
            return resources.resource_list(f"{parts[1]}/{parts[2]}", self.types)
        if parts == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-ferry-test", "platform": "linux/amd64"}
        return None

    async def serve(
        self,
        request: web.Request,
        on_stream: Callable[[int], None],
        authorize_create: Callable[[], None] | None = None,
    ) -> web.StreamResponse:
        """``authorize_create``: the second authorization of a PUT that creates its object (see :mod:`.rbac`)."""
        query = request.query
        if "dryRun" in query:
            raise not_modelled("dryRun")
        if "sendInitialEvents" in query:
            raise not_modelled("sendInitialEvents (watch-list)")
        parts = [p for p in request.path.split("/") if p]
        if not parts:
            raise NOT_FOUND
        document = self.discovery(parts)
        if document is not None:
            if request.method != "GET":
                raise not_allowed()
            return web.json_response(document)
        target = parse_target(parts, self.types)
        finalize = target.subresource == "finalize" and target.rtype.builtin and target.rtype.plural == "namespaces"
        if (
            target.subresource is not None
            and not finalize
            and (target.subresource != "status" or not target.rtype.has_status)
        ):
            raise NOT_FOUND
        if finalize and request.method != "PUT":
            raise not_allowed()
        if target.name is None:
            return await self._collection(request, target, on_stream)
        return await self._object(request, target, authorize_create)

    async def _collection(
        self, request: web.Request, target: Target, on_stream: Callable[[int], None]
    ) -> web.StreamResponse:
        rtype, query = target.rtype, request.query
        if request.method == "GET":
            matcher = object_matcher(
                query.get("labelSelector"), query.get("fieldSelector"), rtype.field_selectors, rtype.qualified
            )
            if flag(query, "watch"):
                return await self._watch(request, target, matcher, on_stream)
            self._check_list_version(query)
            limit = integer(query, "limit") or 0
            body = self.store.list(rtype, target.namespace, matcher, limit, query.get("continue"))
            return web.json_response(body)
        if request.method == "POST" and (target.namespace is not None or not rtype.namespaced):
            if _media_type(request) != JSON:
                raise KubeError(
                    415, f"the body of the request was in an unknown format - accepted media types include: {JSON}"
                )
            body = await json_body(request)
            check_kind(rtype, body)
            _check_identity(target, body, with_name=False)
            strict = query.get("fieldValidation") == "Strict"
            created = self.store.create(rtype, body, target.namespace, strict=strict)
            return web.json_response(created, status=201)
        if request.method == "DELETE":
            raise KubeError(405, "deletecollection is not modelled by this test server", "MethodNotAllowed")
        raise not_allowed()

    def _check_list_version(self, query: Any) -> None:
        match = query.get("resourceVersionMatch")
        if match not in (None, "", "NotOlderThan"):
            raise not_modelled(f"resourceVersionMatch={match}")
        rv = query.get("resourceVersion")
        if rv and rv.isdigit() and int(rv) > self.store.resource_version:
            raise KubeError(504, f"Too large resource version: {rv}, current: {self.store.resource_version}", "Timeout")

    async def _object(
        self, request: web.Request, target: Target, authorize_create: Callable[[], None] | None
    ) -> web.StreamResponse:
        rtype, name, query = target.rtype, target.name or "", request.query
        mode: Mode = "main"
        if target.subresource:
            mode = "finalize" if target.subresource == "finalize" else "status"
        strict = query.get("fieldValidation") == "Strict"
        if request.method == "GET":
            if flag(query, "watch"):
                raise not_modelled("watching a single object by its path (use a fieldSelector)")
            return web.json_response(self.store.get(rtype, name, target.namespace))
        if request.method == "PUT":
            body = await json_body(request)
            check_kind(rtype, body)
            _check_identity(target, body, with_name=True)
            existed = self.store.find(rtype, name, target.namespace) is not None
            updated = self.store.update(
                rtype,
                body,
                name,
                target.namespace,
                mode=mode,
                require_rv=rtype.requires_resource_version,
                strict=strict,
                authorize_create=authorize_create,
            )
            return web.json_response(updated, status=200 if existed else 201)
        if request.method == "PATCH":
            apply = patcher(rtype, _media_type(request), await json_body(request))
            patched = self.store.patch(rtype, name, target.namespace, apply, mode=mode, strict=strict)
            return web.json_response(patched)
        if request.method == "DELETE" and target.subresource is None:
            options = await json_body(request) or {}
            if isinstance(options, dict) and options.get("dryRun"):
                raise not_modelled("dryRun")
            if not isinstance(options, dict):
                raise bad_request("the body of a DELETE must be a DeleteOptions object")
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = integer(query, "gracePeriodSeconds")
            elif not isinstance(grace, int):
                raise bad_request("gracePeriodSeconds must be an integer")
            deleted = self.store.delete(rtype, name, target.namespace, options.get("preconditions"), grace)
            return web.json_response(deleted)
        raise not_allowed()

    async def _watch(
        self, request: web.Request, target: Target, matcher: Any, on_stream: Callable[[int], None]
    ) -> web.StreamResponse:
        query = request.query
        timeout = integer(query, "timeoutSeconds")
        bookmarks = flag(query, "allowWatchBookmarks")
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.subscribe(
                target.rtype, target.namespace, matcher, query.get("resourceVersion"), bookmarks=bookmarks
            )
        except KubeError as error:
            if error.code != 410:
                raise
            await response.prepare(request)
            on_stream(200)
            await response.write(json.dumps({"type": "ERROR", "object": error.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        try:
            await response.prepare(request)
            on_stream(200)
            if await self._pump(watcher, response, timeout):
                await response.write_eof()
            elif request.transport is not None:
                request.transport.abort()
        except (ConnectionResetError, ClientConnectionResetError):
            pass
        finally:
            self.store.unsubscribe(watcher)
        return response

    async def _pump(self, watcher: Watcher, response: web.StreamResponse, timeout: int | None) -> bool:
        """Write events until the stream ends; True for a clean end, False to drop the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        while True:
            if deadline is not None and loop.time() >= deadline:
                return True
            waits = [w for w in (self.bookmark_interval if watcher.bookmarks else None,) if w]
            if deadline is not None:
                waits.append(deadline - loop.time())
            try:
                async with asyncio.timeout(min(waits) if waits else None):
                    item = await watcher.queue.get()
            except TimeoutError:
                if not watcher.bookmarks or not watcher.queue.empty():
                    continue
                # Idle, with every change up to now already sent: a bookmark at the current version is exact.
                item = ("BOOKMARK", self.store.resource_version)
            if item[0] == "END":
                return bool(item[1])
            if item[0] == "BOOKMARK":
                event = {"type": "BOOKMARK", "object": watcher.bookmark_object(item[1])}
            else:
                event = {"type": item[1], "object": item[2]}
            await response.write(json.dumps(event).encode() + b"\n")
