"""ObjectMeta: the fields the server keeps, sets and checks on every kind of object."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from .errors import Cause

OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
SERVER_SET = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def generated_name(prefix: str) -> str:
    return prefix + "".join(random.choices(_SUFFIX_ALPHABET, k=5))


def prune_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metadata.items() if k in OBJECT_META_FIELDS and v is not None}


def _string_map_causes(value: Any, path: str) -> list[Cause]:
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return [Cause(path, "FieldValueTypeInvalid", "Invalid value: must be a map of strings")]
    return []


def validate_metadata(metadata: dict[str, Any], *, dns_label: bool = False) -> list[Cause]:
    """Checks shared by all kinds; ``dns_label`` for kinds whose names are DNS labels (namespaces)."""
    causes: list[Cause] = []
    name = metadata.get("name")
    if not name:
        if not metadata.get("generateName"):
            causes.append(
                Cause("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
            )
    else:
        pattern, limit = (_LABEL, 63) if dns_label else (_SUBDOMAIN, 253)
        if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
            kind = "RFC 1123 label" if dns_label else "RFC 1123 subdomain"
            message = f'Invalid value: "{name}": a lowercase {kind} must consist of lower case alphanumeric characters'
            causes.append(Cause("metadata.name", "FieldValueInvalid", message))
    causes += _string_map_causes(metadata.get("labels"), "metadata.labels")
    causes += _string_map_causes(metadata.get("annotations"), "metadata.annotations")
    finalizers = metadata.get("finalizers", [])
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        causes.append(Cause("metadata.finalizers", "FieldValueTypeInvalid", "Invalid value: must be a list of strings"))
    owners = metadata.get("ownerReferences", [])
    if not isinstance(owners, list) or not all(isinstance(o, dict) for o in owners):
        causes.append(Cause("metadata.ownerReferences", "FieldValueTypeInvalid", "Invalid value: must be a list"))
    else:
        for index, owner in enumerate(owners):
            for key in ("apiVersion", "kind", "name", "uid"):
                if not owner.get(key):
                    causes.append(
                        Cause(f"metadata.ownerReferences[{index}].{key}", "FieldValueRequired", "Required value")
                    )
    return causes


def without_resource_version(obj: dict[str, Any]) -> dict[str, Any]:
    """A shallow view of ``obj`` for "did anything change" comparisons."""
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": metadata}


def outside_metadata(obj: dict[str, Any], *, drop_status: bool = False) -> dict[str, Any]:
    skipped = {"metadata", "status"} if drop_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skipped}
