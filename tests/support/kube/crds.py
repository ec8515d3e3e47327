"""Velero's DataDownload and BackupStorageLocation CustomResourceDefinitions, described in Python.

The schemas restate Velero's CRDs (v1.16 era, controller-gen v0.16) field by field: types, formats,
enums, required lists, nullability, map values and defaults. Descriptions are short or omitted.
``tests/test_crds_match_velero.py`` compares this description with Velero's own YAML when it is at hand.
"""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]

GROUP = "velero.io"


def _string(*, fmt: str | None = None, nullable: bool = False, enum: list[str] | None = None) -> Schema:
    node: Schema = {"type": "string"}
    if fmt:
        node["format"] = fmt
    if nullable:
        node["nullable"] = True
    if enum:
        node["enum"] = enum
    return node


def _timestamp() -> Schema:
    return _string(fmt="date-time", nullable=True)


def _int64() -> Schema:
    return {"type": "integer", "format": "int64"}


def _bool() -> Schema:
    return {"type": "boolean"}


def _string_map() -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _object(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    node: Schema = {"type": "object", "properties": properties}
    if required:
        node["required"] = required
    node.update(extra)
    return node


def _root(spec: Schema, status: Schema, description: str) -> Schema:
    return _object(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        description=description,
    )


def _secret_key_selector() -> Schema:
    return _object(
        {"key": {"type": "string"}, "name": {"type": "string", "default": ""}, "optional": _bool()},
        ["key"],
        **{"x-kubernetes-map-type": "atomic"},
    )


DATA_DOWNLOAD_PHASES = ["New", "Accepted", "Prepared", "InProgress", "Canceling", "Canceled", "Completed", "Failed"]


def data_download_schema() -> Schema:
    spec = _object(
        {
            "backupStorageLocation": {"type": "string"},
            "cancel": _bool(),
            "dataMoverConfig": _string_map(),
            "datamover": {"type": "string"},
            "nodeOS": _string(enum=["auto", "linux", "windows"]),
            "operationTimeout": {"type": "string"},
            "snapshotID": {"type": "string"},
            "snapshotSize": _int64(),
            "sourceNamespace": {"type": "string"},
            "targetVolume": _object(
                {"namespace": {"type": "string"}, "pv": {"type": "string"}, "pvc": {"type": "string"}},
                ["namespace", "pv", "pvc"],
            ),
        },
        ["backupStorageLocation", "operationTimeout", "snapshotID", "sourceNamespace", "targetVolume"],
    )
    status = _object(
        {
            "acceptedByNode": {"type": "string"},
            "acceptedTimestamp": _timestamp(),
            "completionTimestamp": _timestamp(),
            "message": {"type": "string"},
            "node": {"type": "string"},
            "phase": _string(enum=list(DATA_DOWNLOAD_PHASES)),
            "progress": _object({"bytesDone": _int64(), "totalBytes": _int64()}),
            "startTimestamp": _timestamp(),
        }
    )
    return _root(spec, status, "DataDownload: the data mover's restore request")


def backup_storage_location_schema() -> Schema:
    access_mode = _string(enum=["ReadOnly", "ReadWrite"])
    spec = _object(
        {
            "accessMode": access_mode,
            "backupSyncPeriod": _string(nullable=True),
            "config": _string_map(),
            "credential": _secret_key_selector(),
            "default": _bool(),
            "objectStorage": _object(
                {
                    "bucket": {"type": "string"},
                    "caCert": _string(fmt="byte"),
                    "caCertRef": _secret_key_selector(),
                    "prefix": {"type": "string"},
                },
                ["bucket"],
            ),
            "provider": {"type": "string"},
            "validationFrequency": _string(nullable=True),
        },
        ["objectStorage", "provider"],
    )
    status = _object(
        {
            "accessMode": copy.deepcopy(access_mode),
            "lastSyncedRevision": {"type": "string"},
            "lastSyncedTime": _timestamp(),
            "lastValidationTime": _timestamp(),
            "message": {"type": "string"},
            "phase": _string(enum=["Available", "Unavailable"]),
        }
    )
    return _root(spec, status, "BackupStorageLocation: where Velero keeps backups")


def _crd(
    kind: str, plural: str, version: str, schema: Schema, subresources: dict[str, Any], short_names: list[str]
) -> dict[str, Any]:
    names: dict[str, Any] = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
    }
    if short_names:
        names["shortNames"] = short_names
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                }
            ],
        },
    }


def velero_crds(status_subresource: bool = False) -> list[dict[str, Any]]:
    """DataDownload (velero.io/v2alpha1) and BackupStorageLocation (velero.io/v1).

    ``status_subresource=False`` is Velero's own flavour (``subresources: {}``: the status is written with
    the main resource and bumps ``generation``); ``True`` gives DataDownload a ``/status`` subresource.
    """
    dd_subresources: dict[str, Any] = {"status": {}} if status_subresource else {}
    return [
        _crd("DataDownload", "datadownloads", "v2alpha1", data_download_schema(), dd_subresources, []),
        _crd("BackupStorageLocation", "backupstoragelocations", "v1", backup_storage_location_schema(), {}, ["bsl"]),
    ]
