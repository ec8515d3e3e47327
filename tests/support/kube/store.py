"""The object store: every write rule of the apiserver (resourceVersions, generation, the status
split, finalizers, no-op updates), the kept watch history, list snapshots, and per-object revisions.

All methods are synchronous and run on the event loop, so each write is atomic. Stored objects are
never mutated in place: every write stores a new dict, which makes snapshots cheap.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Literal

from .errors import (
    CONTINUE_EXPIRED,
    STALE,
    Cause,
    KubeError,
    already_exists,
    bad_request,
    conflict,
    expired,
    forbidden,
    invalid,
    not_found,
)
from .meta import SERVER_SET, generated_name, new_uid, now_rfc3339, outside_metadata, without_resource_version
from .resources import INITIAL_STATUS, DecodeError, ResourceType, admit, admit_change, admit_new
from .selectors import Matcher
from .watches import Change, Revision, Watcher

Key = tuple[str, str]  # (namespace or "", name)
Mode = Literal["main", "status", "finalize", "full"]  # which part of the object a write may change
_MAX_SNAPSHOTS = 64


class Store:
    def __init__(self, types: list[ResourceType], *, history_limit: int = 100_000) -> None:
        self.types = types
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {t.qualified: {} for t in types}
        self._rv = 1
        self._floor = 1  # watch history is complete for every resourceVersion >= this
        self._log: deque[Change] = deque()
        self._history_limit = history_limit
        self._revisions: dict[tuple[str, str, str], list[Revision]] = {}
        self._snapshots: OrderedDict[tuple[str, int], dict[Key, dict[str, Any]]] = OrderedDict()
        self.watchers: set[Watcher] = set()
        self._changed = asyncio.Event()

    # -- notifications -------------------------------------------------------------------------
    def signal(self) -> None:
        """Wake everything waiting for a change (a write, or a watch opening or closing)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        return self._changed

    @property
    def resource_version(self) -> int:
        return self._rv

    def _commit(self, rtype: ResourceType, kind: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        meta = new["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if kind == "DELETED":
            self._objects[rtype.qualified].pop(key, None)
        else:
            self._objects[rtype.qualified][key] = new
        change = Change(self._rv, kind, rtype, old, new)
        self._log.append(change)
        while len(self._log) > self._history_limit:
            self._floor = self._log.popleft().rv
        self._revisions.setdefault((rtype.qualified, *key), []).append(Revision(kind, new))
        for watcher in list(self.watchers):
            watcher.offer(change)
        self.signal()

    def expire_history(self) -> None:
        """Forget the kept history: watches and continue tokens from any older RV now get 410."""
        self._floor = self._rv
        self._log.clear()
        self._snapshots.clear()

    def revisions(self, rtype: ResourceType, name: str, namespace: str | None) -> list[Revision]:
        found = self._revisions.get((rtype.qualified, namespace or "", name), [])
        return [Revision(r.type, copy.deepcopy(r.object)) for r in found]

    # -- reads ---------------------------------------------------------------------------------
    def find(self, rtype: ResourceType, name: str, namespace: str | None) -> dict[str, Any] | None:
        return self._objects[rtype.qualified].get((namespace or "", name))

    def objects(self, rtype: ResourceType) -> list[dict[str, Any]]:
        return list(self._objects[rtype.qualified].values())

    def get(self, rtype: ResourceType, name: str, namespace: str | None) -> dict[str, Any]:
        obj = self.find(rtype, name, namespace)
        if obj is None:
            raise not_found(rtype.qualified, name)
        return obj

    def _matching(
        self, objects: dict[Key, dict[str, Any]], namespace: str | None, matcher: Matcher
    ) -> list[tuple[Key, dict[str, Any]]]:
        keys = sorted(k for k in objects if namespace is None or k[0] == namespace)
        return [(k, objects[k]) for k in keys if matcher(objects[k])]

    def list(
        self, rtype: ResourceType, namespace: str | None, matcher: Matcher, limit: int, token: str | None
    ) -> dict[str, Any]:
        """A list body; with ``limit``, a ``continue`` token that serves later pages from the same snapshot."""
        rv, after = self._rv, None
        objects = self._objects[rtype.qualified]
        if token:
            rv, after = _decode_token(token)
            snapshot = self._snapshots.get((rtype.qualified, rv))
            if rv < self._floor or snapshot is None:
                raise expired(CONTINUE_EXPIRED)
            objects = snapshot
        matching = [(k, o) for k, o in self._matching(objects, namespace, matcher) if after is None or list(k) > after]
        page = matching[:limit] if limit > 0 else matching
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if len(page) < len(matching):
            self._snapshots[(rtype.qualified, rv)] = dict(objects)
            while len(self._snapshots) > _MAX_SNAPSHOTS:
                self._snapshots.popitem(last=False)
            metadata["continue"] = _encode_token(rv, page[-1][0])
        items = [
            o if rtype.custom else {k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for _, o in page
        ]
        return {"apiVersion": rtype.api_version, "kind": f"{rtype.kind}List", "metadata": metadata, "items": items}

    # -- watches -------------------------------------------------------------------------------
    def subscribe(
        self, rtype: ResourceType, namespace: str | None, matcher: Matcher, rv: str | None, *, bookmarks: bool
    ) -> Watcher:
        """Register a watcher, its queue preloaded with what it must see first (raises 410 if expired)."""
        watcher = Watcher(rtype, namespace, matcher, bookmarks)
        if rv in (None, "", "0"):
            for _, obj in self._matching(self._objects[rtype.qualified], namespace, matcher):
                watcher.queue.put_nowait(("EVENT", "ADDED", obj))
        else:
            start = _parse_rv(rv)
            if start < self._floor:
                raise expired(f"too old resource version: {start} ({self._floor})")
            for change in self._log:
                if change.rv > start:
                    watcher.offer(change)
        self.watchers.add(watcher)
        self.signal()
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        if watcher in self.watchers:
            self.watchers.discard(watcher)
            self.signal()

    # -- writes --------------------------------------------------------------------------------
    def _check_namespace(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        if not rtype.namespaced:
            return
        found = self._objects["namespaces"].get(("", namespace or ""))
        if found is None:
            raise not_found("namespaces", namespace or "")
        if found["metadata"].get("deletionTimestamp"):
            why = f"unable to create new content in namespace {namespace} because it is being terminated"
            cause = {"reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated"}
            raise forbidden(rtype.qualified, name, why, [{**cause, "field": "metadata.namespace"}])

    def create(
        self,
        rtype: ResourceType,
        body: dict[str, Any],
        namespace: str | None,
        *,
        mode: Mode = "main",
        strict: bool = False,
        authorize: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """``authorize`` (a create-on-update's second authorization) runs once the object has passed admission."""
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta = obj.setdefault("metadata", {})
        for name in (*SERVER_SET, "resourceVersion", "namespace"):
            meta.pop(name, None)
        if rtype.namespaced:
            meta["namespace"] = namespace
        if rtype.has_status and mode != "full":
            obj.pop("status", None)
        if rtype.plural in INITIAL_STATUS and rtype.group == "" and "status" not in obj:
            obj["status"] = copy.deepcopy(INITIAL_STATUS[rtype.plural])
        self._check_namespace(rtype, namespace, meta.get("name") or "")
        obj = admit(rtype, obj, strict_fields=strict)
        admit_new(rtype, obj)
        if authorize is not None:
            authorize()
        meta = obj["metadata"]
        if not meta.get("name"):
            meta["name"] = generated_name(meta["generateName"])
        if self.find(rtype, meta["name"], namespace) is not None:
            raise already_exists(rtype.qualified, meta["name"])
        meta["uid"], meta["creationTimestamp"] = new_uid(), now_rfc3339()
        if rtype.custom:
            meta["generation"] = 1
        self._commit(rtype, "ADDED", None, obj)
        return obj

    def update(
        self,
        rtype: ResourceType,
        body: dict[str, Any],
        name: str,
        namespace: str | None,
        *,
        mode: Mode,
        require_rv: bool,
        strict: bool = False,
        authorize_create: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """PUT semantics: ``metadata.resourceVersion`` (when given) must be the stored one. A missing object is
        404, unless its kind allows create-on-update (Leases): then the PUT creates it, whatever resourceVersion
        it carries, once ``authorize_create`` allows it (the caller tells a creation by the object's absence
        beforehand: 201 rather than 200)."""
        old = self.find(rtype, name, namespace)
        if old is None:
            if not rtype.create_on_update or mode not in ("main", "full"):
                raise not_found(rtype.qualified, name)
            created = copy.deepcopy(body)
            created.setdefault("metadata", {})["name"] = name
            return self.create(rtype, created, namespace, mode=mode, strict=strict, authorize=authorize_create)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not rv and require_rv:
            cause = Cause(
                "metadata.resourceVersion", "FieldValueInvalid", "Invalid value: 0x0: must be specified for an update"
            )
            # The registry names the resource here, not the kind: ``leases.coordination.k8s.io "x" is invalid``.
            raise invalid(rtype.qualified, name, [cause])
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(rtype.qualified, name, STALE)
        return self._replace(rtype, old, body, mode, strict)

    def _replace(
        self, rtype: ResourceType, old: dict[str, Any], body: dict[str, Any], mode: Mode, strict: bool
    ) -> dict[str, Any]:
        if mode == "status":
            new = {k: copy.deepcopy(v) for k, v in old.items() if k != "status"}
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
        elif mode == "finalize":  # a namespace's /finalize: only spec.finalizers
            new = copy.deepcopy(old)
            finalizers = (body.get("spec") or {}).get("finalizers") or []
            new["spec"] = {**(new.get("spec") or {}), "finalizers": finalizers}
        else:
            new = copy.deepcopy(body)
            if mode == "main" and rtype.has_status:  # main writes keep the stored status
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        namespace_kind = rtype.builtin and rtype.plural == "namespaces"
        if namespace_kind and mode in ("main", "status"):  # spec.finalizers change only through /finalize
            new["spec"] = {**(new.get("spec") or {}), "finalizers": (old.get("spec") or {}).get("finalizers") or []}
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        meta["name"] = old_meta["name"]
        meta.pop("namespace", None)
        if rtype.namespaced:
            meta["namespace"] = old_meta["namespace"]
        for name in SERVER_SET:
            meta.pop(name, None)
            if name in old_meta:
                meta[name] = old_meta[name]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        new = admit(rtype, new, strict_fields=strict, old=old)
        admit_change(rtype, old, new)
        meta = new["metadata"]
        finalizers = meta.get("finalizers") or []
        if old_meta.get("deletionTimestamp") and set(finalizers) - set(old_meta.get("finalizers") or []):
            cause = Cause(
                "metadata.finalizers",
                "FieldValueForbidden",
                "Forbidden: no new finalizers can be added if the object is being deleted",
            )
            raise invalid(rtype.kind_group, meta["name"], [cause])
        if without_resource_version(new) == without_resource_version(old):
            return old  # a no-op update writes nothing: same resourceVersion, no event
        drop_status = rtype.has_status
        if rtype.custom and outside_metadata(new, drop_status=drop_status) != outside_metadata(
            old, drop_status=drop_status
        ):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        spec_finalizers = (new.get("spec") or {}).get("finalizers") if namespace_kind else None
        if meta.get("deletionTimestamp") and not finalizers and not spec_finalizers:
            meta.pop("finalizers", None)
            self._commit(rtype, "DELETED", old, new)
        else:
            self._commit(rtype, "MODIFIED", old, new)
        return new

    def patch(
        self,
        rtype: ResourceType,
        name: str,
        namespace: str | None,
        apply: Any,
        *,
        mode: Mode,
        strict: bool = False,
    ) -> dict[str, Any]:
        """``apply(old) -> patched``; a patched ``metadata.resourceVersion`` acts as a precondition."""
        old = self.get(rtype, name, namespace)
        patched = apply(old)
        if not isinstance(patched, dict):
            raise bad_request("the patch does not produce an object")
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        if rv is not None and rv != old["metadata"]["resourceVersion"]:
            raise conflict(rtype.qualified, name, STALE)
        for key in ("name", "namespace"):
            if (patched.get("metadata") or {}).get(key, old["metadata"].get(key)) != old["metadata"].get(key):
                raise bad_request(f"metadata.{key} cannot be changed by a patch")
        try:
            return self._replace(rtype, old, patched, mode, strict)
        except DecodeError as error:  # the patched object does not decode: the patch is invalid, not the request
            shown = json.dumps(json.dumps(patched, separators=(",", ":")))
            raise invalid(
                "", "", [Cause("patch", "FieldValueInvalid", f"Invalid value: {shown}: {error.why}")]
            ) from None

    def delete(
        self,
        rtype: ResourceType,
        name: str,
        namespace: str | None,
        preconditions: dict[str, Any] | None = None,
        grace_period_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Finalizers: mark with ``deletionTimestamp`` (MODIFIED); otherwise remove (DELETED). A pod bound to a
        node is deleted gracefully: marked with ``deletionTimestamp`` and ``deletionGracePeriodSeconds`` and kept,
        until a delete with grace period 0 (the kubelet's, once it has stopped the pod) removes it."""
        old = self.get(rtype, name, namespace)
        meta = old["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            why = f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}"
            raise conflict(rtype.qualified, name, why)
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            why = (
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}"
            )
            raise conflict(rtype.qualified, name, why)
        if rtype.builtin and rtype.plural == "namespaces" and (old.get("spec") or {}).get("finalizers"):
            if meta.get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {**(new.get("status") or {}), "phase": "Terminating"}
            self._commit(rtype, "MODIFIED", old, new)
            return new
        grace = _pod_grace_period(old, grace_period_seconds) if rtype.builtin and rtype.plural == "pods" else 0
        if grace > 0:
            current = meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionTimestamp") and current is not None and current <= grace:
                return old
            new = copy.deepcopy(old)
            new["metadata"].setdefault("deletionTimestamp", now_rfc3339())
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            self._commit(rtype, "MODIFIED", old, new)
            return new
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                if meta.get("deletionGracePeriodSeconds", 0) == 0:
                    return old
                new = copy.deepcopy(old)
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                self._commit(rtype, "MODIFIED", old, new)
                return new
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if rtype.custom:
                new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            self._commit(rtype, "MODIFIED", old, new)
            return new
        gone = copy.deepcopy(old)
        self._commit(rtype, "DELETED", old, gone)
        return gone


def _pod_grace_period(pod: dict[str, Any], requested: int | None) -> int:
    """The grace period of a pod's deletion: 0 (at once) for a pod on no node or one that has terminated,
    else the requested one (negative counts as 1), else ``spec.terminationGracePeriodSeconds``, else 30."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    if requested is None:
        requested = spec.get("terminationGracePeriodSeconds")
        requested = 30 if requested is None else int(requested)
    return 1 if requested < 0 else requested


def _parse_rv(rv: str) -> int:
    try:
        value = int(rv)
    except ValueError:
        raise bad_request(
            f'invalid resource version "{rv}": resourceVersion is opaque here but this one is not ours'
        ) from None
    if value < 0:
        raise bad_request(f'invalid resource version "{rv}"')
    return value


def _encode_token(rv: int, key: Key) -> str:
    raw = json.dumps({"v": "ferry-test/1", "rv": rv, "start": list(key)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[int, list[str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), [str(p) for p in data["start"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise bad_request(f"continue key is not valid: {token!r}") from None


def check_kind(rtype: ResourceType, body: Any) -> None:
    """Custom resources must name their apiVersion and kind; built-ins may leave them out."""
    if not isinstance(body, dict):
        raise bad_request("the request body is not a JSON object")
    for field, expected in (("apiVersion", rtype.api_version), ("kind", rtype.kind)):
        given = body.get(field)
        if given is None and not rtype.custom:
            continue
        if given is None:
            raise bad_request(f"Object '{field[0].upper() + field[1:]}' is missing in the request body")
        if given != expected:
            raise bad_request(f"the {field} in the data ({given}) does not match the expected {field} ({expected})")


__all__ = ["KubeError", "Mode", "Store", "check_kind"]
