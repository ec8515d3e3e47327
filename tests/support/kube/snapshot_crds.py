"""The CSI snapshot CustomResourceDefinitions (``snapshot.storage.k8s.io/v1``), described in Python.

VolumeSnapshot (namespaced), VolumeSnapshotContent and VolumeSnapshotClass (cluster-scoped), restating the
structural schemas external-snapshotter v8 ships (``client/config/crd``) field by field: types, formats,
enums, required lists, patterns, and the CEL rules (``x-kubernetes-validations``) that make a source
"exactly one of" and immutable. Descriptions, printer columns and the deprecated v1beta1 versions are left
out (the server does not act on the first two; v8 no longer serves v1beta1). VolumeSnapshot and
VolumeSnapshotContent have a ``/status`` subresource, VolumeSnapshotClass none.
"""

from __future__ import annotations

from typing import Any

from .crds import Schema, _bool, _int64, _object, _string, _string_map

GROUP = "snapshot.storage.k8s.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

DELETION_POLICIES = ["Delete", "Retain"]
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _rules(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"message": message, "rule": rule} for rule, message in pairs]


def _checked(node: Schema, *pairs: tuple[str, str]) -> Schema:
    """``node`` with CEL rules (``x-kubernetes-validations``), each a (rule, message) pair."""
    return {**node, "x-kubernetes-validations": _rules(*pairs)}


def _immutable(node: Schema, message: str) -> Schema:
    return _checked(node, ("self == oldSelf", message))


def _kept_once_set(field: str) -> tuple[str, str]:
    return f"!has(oldSelf.{field}) || has(self.{field})", f"{field} is required once set"


def _exactly_one(a: str, b: str, message: str) -> tuple[str, str]:
    return f"(has(self.{a}) && !has(self.{b})) || (!has(self.{a}) && has(self.{b}))", message


def _root(spec: Schema | None, status: Schema | None, *, top: dict[str, Schema] | None = None) -> Schema:
    properties: dict[str, Schema] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    if spec is not None:
        properties["spec"] = spec
    if status is not None:
        properties["status"] = status
    properties.update(top or {})
    return _object(dict(sorted(properties.items())), ["spec"] if spec is not None else None)


def _error() -> Schema:
    return _object({"message": {"type": "string"}, "time": _string(fmt="date-time")})


def volume_snapshot_schema() -> Schema:
    source = _checked(
        _object(
            {
                "persistentVolumeClaimName": _immutable({"type": "string"}, "persistentVolumeClaimName is immutable"),
                "volumeSnapshotContentName": _immutable({"type": "string"}, "volumeSnapshotContentName is immutable"),
            }
        ),
        _kept_once_set("persistentVolumeClaimName"),
        _kept_once_set("volumeSnapshotContentName"),
        _exactly_one(
            "volumeSnapshotContentName",
            "persistentVolumeClaimName",
            "exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set",
        ),
    )
    class_name = {
        "type": "string",
        "x-kubernetes-validations": _rules(
            ("size(self) > 0", "volumeSnapshotClassName must not be the empty string when set")
        ),
    }
    spec = _object({"source": source, "volumeSnapshotClassName": class_name}, ["source"])
    status = _object(
        {
            "boundVolumeSnapshotContentName": {"type": "string"},
            "creationTime": _string(fmt="date-time"),
            "error": _error(),
            "readyToUse": _bool(),
            "restoreSize": {"type": "string", "pattern": QUANTITY, "x-kubernetes-int-or-string": True},
            "volumeGroupSnapshotName": {"type": "string"},
        }
    )
    return _root(spec, status)


def volume_snapshot_content_schema() -> Schema:
    source = _checked(
        _object(
            {
                "snapshotHandle": _immutable({"type": "string"}, "snapshotHandle is immutable"),
                "volumeHandle": _immutable({"type": "string"}, "volumeHandle is immutable"),
            }
        ),
        _kept_once_set("volumeHandle"),
        _kept_once_set("snapshotHandle"),
        _exactly_one("volumeHandle", "snapshotHandle", "exactly one of volumeHandle and snapshotHandle must be set"),
    )
    ref_fields = ("apiVersion", "fieldPath", "kind", "name", "namespace", "resourceVersion", "uid")
    snapshot_ref = _checked(
        {**_object({name: {"type": "string"} for name in ref_fields}), "x-kubernetes-map-type": "atomic"},
        (
            "has(self.name) && has(self.__namespace__)",
            "both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set",
        ),
    )
    spec = _checked(
        _object(
            {
                "deletionPolicy": _string(enum=list(DELETION_POLICIES)),
                "driver": {"type": "string"},
                "source": source,
                "sourceVolumeMode": _immutable({"type": "string"}, "sourceVolumeMode is immutable"),
                "volumeSnapshotClassName": {"type": "string"},
                "volumeSnapshotRef": snapshot_ref,
            },
            ["deletionPolicy", "driver", "source", "volumeSnapshotRef"],
        ),
        _kept_once_set("sourceVolumeMode"),
    )
    status = _object(
        {
            "creationTime": _int64(),
            "error": _error(),
            "readyToUse": _bool(),
            "restoreSize": {**_int64(), "minimum": 0},
            "snapshotHandle": {"type": "string"},
            "volumeGroupSnapshotHandle": {"type": "string"},
        }
    )
    return _root(spec, status)


def volume_snapshot_class_schema() -> Schema:
    top = {
        "deletionPolicy": _string(enum=list(DELETION_POLICIES)),
        "driver": {"type": "string"},
        "parameters": _string_map(),
    }
    root = _root(None, None, top=top)
    root["required"] = ["deletionPolicy", "driver"]
    return root


def _crd(kind: str, plural: str, schema: Schema, *, namespaced: bool, status: bool, short: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
            },
            "scope": "Namespaced" if namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}} if status else {},
                }
            ],
        },
    }


def snapshot_crds() -> list[dict[str, Any]]:
    """VolumeSnapshot, VolumeSnapshotContent and VolumeSnapshotClass as external-snapshotter v8 ships them."""
    return [
        _crd("VolumeSnapshot", "volumesnapshots", volume_snapshot_schema(), namespaced=True, status=True, short=["vs"]),
        _crd(
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            volume_snapshot_content_schema(),
            namespaced=False,
            status=True,
            short=["vsc", "vscs"],
        ),
        _crd(
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            volume_snapshot_class_schema(),
            namespaced=False,
            status=False,
            short=["vsclass", "vsclasses"],
        ),
    ]
