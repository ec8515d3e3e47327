"""The three patch formats the server accepts: JSON merge patch, JSON patch, and (built-ins only) a
strategic merge patch limited to the list-merge rules of the fields the agent's kinds carry.

Strategic merge is modelled as a JSON merge patch, except that the lists Kubernetes merges by key
(``metadata.finalizers``, ``metadata.ownerReferences`` by ``uid``, containers and volumes by ``name``,
conditions by ``type``, ...) are merged, and ``$deleteFromPrimitiveList``, ``$setElementOrder`` and
``$patch: delete`` list items are honoured. Any other ``$`` directive is refused with 400.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import Cause, KubeError, bad_request, invalid

if TYPE_CHECKING:
    from .resources import ResourceType

# Paths (list indices elided) whose lists a strategic merge patch merges; None = a list of scalars.
STRATEGIC_MERGE_KEYS: dict[tuple[str, ...], str | None] = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "ephemeralContainers"): "name",
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "containers", "env"): "name",
    ("spec", "containers", "ports"): "containerPort",
    ("spec", "containers", "volumeMounts"): "mountPath",
    ("spec", "containers", "volumeDevices"): "devicePath",
    ("spec", "initContainers", "env"): "name",
    ("spec", "initContainers", "volumeMounts"): "mountPath",
    ("status", "conditions"): "type",
    ("status", "containerStatuses"): "name",
}


_RV_PATH = "/metadata/resourceVersion"
_RV_CLEARED = Cause(
    "metadata.resourceVersion", "FieldValueInvalid", "Invalid value: 0x0: must be specified for an update"
)


def clears_resource_version(body: Any) -> bool:
    """Whether a patch body sets ``metadata.resourceVersion`` to ``""`` or ``null`` (a JSON patch: replaces or
    adds it with one of those, or removes it)."""
    if isinstance(body, dict):
        meta = body.get("metadata")
        return isinstance(meta, dict) and "resourceVersion" in meta and meta["resourceVersion"] in ("", None)
    if isinstance(body, list):
        for op in body:
            if not isinstance(op, dict) or op.get("path") != _RV_PATH:
                continue
            if op.get("op") == "remove" or (op.get("op") in ("add", "replace") and op.get("value") in ("", None)):
                return True
    return False


def keeping_resource_version(
    rtype: ResourceType, body: Any, apply: Callable[[Any], Any]
) -> Callable[[dict[str, Any]], Any]:
    """``apply``, refused with 422 (once the object is known to exist) if the patch clears the resourceVersion."""

    def checked(old: dict[str, Any]) -> Any:
        if clears_resource_version(body):
            raise invalid(rtype.kind_group, old["metadata"]["name"], [_RV_CLEARED])
        return apply(old)

    return checked


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [_unescape(t) for t in path.split("/")[1:]] if path else []


def _unprocessable(message: str) -> KubeError:
    return KubeError(422, message, "Invalid")


def _parent(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise _unprocessable(f"jsonpatch: path {path} does not exist")
    return node, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _unprocessable(f"jsonpatch: path {path} does not exist")


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path) or [""], path)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _unprocessable(f"jsonpatch: unable to remove nonexistent key {path}")


def _add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _unprocessable(f"jsonpatch: replace operation does not apply: doc is missing key: {path}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise _unprocessable(f"jsonpatch: index out of range in {path}")
    else:
        raise _unprocessable(f"jsonpatch: path {path} does not exist")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902. A body that is not a list of operations: 400; an operation that fails: 422."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in operations:
        kind, path = op.get("op"), op.get("path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise bad_request(f"jsonpatch: missing value for {kind} at {path}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            value = _remove(doc, op.get("from")) if kind == "move" else copy.deepcopy(_get(doc, op.get("from")))
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise _unprocessable(f"jsonpatch: testing value {path} failed: test operation failed")
        else:
            raise bad_request(f"jsonpatch: unexpected operation {kind!r}")
    return doc


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.partition("/")[2]
            result[field] = [v for v in result.get(field) or [] if v not in (value or [])]
            continue
        if key.startswith("$"):
            raise bad_request(f"strategic merge patch directive {key!r} is not modelled by this test server")
        here = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and here in STRATEGIC_MERGE_KEYS:
            result[key] = _merge_list(result.get(key) or [], value, STRATEGIC_MERGE_KEYS[here], here)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, here)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str | None, path: tuple[str, ...]) -> list[Any]:
    merged = copy.deepcopy(current)
    if merge_key is None:
        return merged + [v for v in patch if v not in merged]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise bad_request(f"strategic merge patch: list item at {'.'.join(path)} lacks merge key {merge_key!r}")
        positions = [
            i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
        ]
        if item.get("$patch") == "delete":
            merged = [old for i, old in enumerate(merged) if i not in positions]
        elif positions:
            merged[positions[0]] = strategic_merge_patch(merged[positions[0]], item, path)
        else:
            merged.append(strategic_merge_patch({}, item, path))
    return merged
