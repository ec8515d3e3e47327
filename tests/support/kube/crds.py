"""Velero's DataDownload, DataUpload, BackupStorageLocation and Backup CustomResourceDefinitions, described in
Python.

The schemas restate Velero's CRDs field by field: types, formats, enums, required lists, nullability,
map values and defaults. Descriptions are short or omitted. ``tests/test_crds_match_velero.py`` compares
this description with Velero's own YAML when it is at hand (``../shared``: the newest release; a Velero
git repository named by ``VELERO_REPO``: every release in :data:`VELERO_VERSIONS`).

Ferry supports Velero 1.14 to 1.18. Between those releases the four CRDs differ only by the fields below
(printer columns and descriptions aside, which the server does not act on; the group, versions, scope,
names and the ``subresources`` are the same in all of them: empty for the first three, and no
``subresources`` key at all for Backup, so a Backup's status is written with the object, bumping its
``generation``, in every release). A field a release lacks is pruned by the
API server on every write, spec and status alike, without an error: on a 1.14 or 1.15 cluster a status
write of ``acceptedByNode`` is accepted and silently dropped (those releases kept the accepting node and
time in annotations of the DataUpload/DataDownload instead).

DataDownload (velero.io/v2alpha1)
    1.16: ``spec.nodeOS`` (enum auto/linux/windows), ``status.acceptedByNode``, ``status.acceptedTimestamp``.
    1.18: ``spec.snapshotSize`` (int64).
DataUpload (velero.io/v2alpha1)
    1.16: ``status.acceptedByNode``, ``status.acceptedTimestamp``, ``status.nodeOS`` (enum as above).
    1.17: ``spec.csiSnapshot.driver``.
    1.18: ``status.incrementalBytes`` (int64).
BackupStorageLocation (velero.io/v1)
    1.16: ``spec.credential.name`` gains ``default: ""`` (the CRDs were regenerated with controller-gen
          v0.16, which writes the default of an optional reference's name): a credential given without a
          name is stored with ``name: ""`` from 1.16 on, and without ``name`` before.
    1.18: ``spec.objectStorage.caCertRef`` (a Secret key selector, its ``name`` defaulting to ``""``).
Backup (velero.io/v1)
    1.16: the label selectors' ``matchExpressions`` and their ``values`` gain ``x-kubernetes-list-type: atomic``
          (controller-gen v0.16 again; no effect on what the server accepts).
    1.17: ``spec.volumeGroupSnapshotLabelKey``.
    1.18: ``status.phase`` gains ``Queued`` and ``ReadyToStart`` (422 on older releases), ``status.queuePosition``.
"""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]

GROUP = "velero.io"

VELERO_VERSIONS = ("1.14", "1.15", "1.16", "1.17", "1.18")
"""The Velero minor releases whose CRDs :func:`velero_crds` describes, oldest first."""

LATEST = VELERO_VERSIONS[-1]


def _release(version: str) -> tuple[int, int]:
    if version not in VELERO_VERSIONS:
        raise ValueError(f"Velero {version!r} is not described; known releases: {', '.join(VELERO_VERSIONS)}")
    major, minor = version.split(".")
    return int(major), int(minor)


def since(version: str, first: str) -> bool:
    """Whether Velero ``version`` has what appeared in release ``first``."""
    return _release(version) >= _release(first)


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


def _nullable(node: Schema) -> Schema:
    return {**node, "nullable": True}


def _secret_key_selector(*, default_name: bool = True) -> Schema:
    name: Schema = {"type": "string", "default": ""} if default_name else {"type": "string"}
    return _object(
        {"key": {"type": "string"}, "name": name, "optional": _bool()}, ["key"], **{"x-kubernetes-map-type": "atomic"}
    )


NODE_OS = ["auto", "linux", "windows"]


DATA_DOWNLOAD_PHASES = ["New", "Accepted", "Prepared", "InProgress", "Canceling", "Canceled", "Completed", "Failed"]


def data_download_schema(version: str = LATEST) -> Schema:
    spec_fields: dict[str, Schema] = {
        "backupStorageLocation": {"type": "string"},
        "cancel": _bool(),
        "dataMoverConfig": _string_map(),
        "datamover": {"type": "string"},
        "operationTimeout": {"type": "string"},
        "snapshotID": {"type": "string"},
        "sourceNamespace": {"type": "string"},
        "targetVolume": _object(
            {"namespace": {"type": "string"}, "pv": {"type": "string"}, "pvc": {"type": "string"}},
            ["namespace", "pv", "pvc"],
        ),
    }
    status_fields: dict[str, Schema] = {
        "completionTimestamp": _timestamp(),
        "message": {"type": "string"},
        "node": {"type": "string"},
        "phase": _string(enum=list(DATA_DOWNLOAD_PHASES)),
        "progress": _object({"bytesDone": _int64(), "totalBytes": _int64()}),
        "startTimestamp": _timestamp(),
    }
    if since(version, "1.16"):
        spec_fields["nodeOS"] = _string(enum=list(NODE_OS))
        status_fields["acceptedByNode"] = {"type": "string"}
        status_fields["acceptedTimestamp"] = _timestamp()
    if since(version, "1.18"):
        spec_fields["snapshotSize"] = _int64()
    spec = _object(
        dict(sorted(spec_fields.items())),
        ["backupStorageLocation", "operationTimeout", "snapshotID", "sourceNamespace", "targetVolume"],
    )
    status = _object(dict(sorted(status_fields.items())))
    return _root(spec, status, "DataDownload: the data mover's restore request")


def data_upload_schema(version: str = LATEST) -> Schema:
    csi_fields: dict[str, Schema] = {
        "snapshotClass": {"type": "string"},
        "storageClass": {"type": "string"},
        "volumeSnapshot": {"type": "string"},
    }
    status_fields: dict[str, Schema] = {
        "completionTimestamp": _timestamp(),
        "dataMoverResult": _nullable(_string_map()),
        "message": {"type": "string"},
        "node": {"type": "string"},
        "path": {"type": "string"},
        "phase": _string(enum=list(DATA_DOWNLOAD_PHASES)),
        "progress": _object({"bytesDone": _int64(), "totalBytes": _int64()}),
        "snapshotID": {"type": "string"},
        "startTimestamp": _timestamp(),
    }
    if since(version, "1.16"):
        status_fields["acceptedByNode"] = {"type": "string"}
        status_fields["acceptedTimestamp"] = _timestamp()
        status_fields["nodeOS"] = _string(enum=list(NODE_OS))
    if since(version, "1.17"):
        csi_fields["driver"] = {"type": "string"}
    if since(version, "1.18"):
        status_fields["incrementalBytes"] = _int64()
    spec = _object(
        {
            "backupStorageLocation": {"type": "string"},
            "cancel": _bool(),
            "csiSnapshot": _object(dict(sorted(csi_fields.items())), ["storageClass", "volumeSnapshot"], nullable=True),
            "dataMoverConfig": _nullable(_string_map()),
            "datamover": {"type": "string"},
            "operationTimeout": {"type": "string"},
            "snapshotType": {"type": "string"},
            "sourceNamespace": {"type": "string"},
            "sourcePVC": {"type": "string"},
        },
        ["backupStorageLocation", "operationTimeout", "snapshotType", "sourceNamespace", "sourcePVC"],
    )
    status = _object(dict(sorted(status_fields.items())))
    return _root(spec, status, "DataUpload: the data mover's backup request")


def backup_storage_location_schema(version: str = LATEST) -> Schema:
    access_mode = _string(enum=["ReadOnly", "ReadWrite"])
    object_storage: dict[str, Schema] = {
        "bucket": {"type": "string"},
        "caCert": _string(fmt="byte"),
        "prefix": {"type": "string"},
    }
    if since(version, "1.18"):
        object_storage["caCertRef"] = _secret_key_selector()
    spec = _object(
        {
            "accessMode": access_mode,
            "backupSyncPeriod": _string(nullable=True),
            "config": _string_map(),
            "credential": _secret_key_selector(default_name=since(version, "1.16")),
            "default": _bool(),
            "objectStorage": _object(dict(sorted(object_storage.items())), ["bucket"]),
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


def _integer() -> Schema:
    """A Go ``int`` field: ``type: integer`` without a format."""
    return {"type": "integer"}


def _strings(*, nullable: bool = True) -> Schema:
    node: Schema = {"type": "array", "items": {"type": "string"}}
    if nullable:
        node["nullable"] = True
    return node


def _atomic_list(node: Schema, version: str) -> Schema:
    """A list controller-gen v0.16 (Velero 1.16 on) marks ``x-kubernetes-list-type: atomic``."""
    return {**node, "x-kubernetes-list-type": "atomic"} if since(version, "1.16") else node


def _label_selector(version: str, *, nullable: bool) -> Schema:
    """A ``metav1.LabelSelector`` as controller-gen writes it."""
    requirement = _object(
        {
            "key": {"type": "string"},
            "operator": {"type": "string"},
            "values": _atomic_list(_strings(nullable=False), version),
        },
        ["key", "operator"],
    )
    node = _object(
        {
            "matchExpressions": _atomic_list({"type": "array", "items": requirement}, version),
            "matchLabels": _string_map(),
        },
        None,
        **{"x-kubernetes-map-type": "atomic"},
    )
    return _nullable(node) if nullable else node


HOOK_ERROR_MODES = ["Continue", "Fail"]


def _exec_hooks() -> Schema:
    command = {**_strings(nullable=False), "minItems": 1}
    exec_hook = _object(
        {
            "command": command,
            "container": {"type": "string"},
            "onError": _string(enum=list(HOOK_ERROR_MODES)),
            "timeout": {"type": "string"},
        },
        ["command"],
    )
    return {"type": "array", "items": _object({"exec": exec_hook}, ["exec"])}


BACKUP_PHASES = [
    "New",
    "FailedValidation",
    "InProgress",
    "WaitingForPluginOperations",
    "WaitingForPluginOperationsPartiallyFailed",
    "Finalizing",
    "FinalizingPartiallyFailed",
    "Completed",
    "PartiallyFailed",
    "Failed",
    "Deleting",
]
"""A Backup's phases up to Velero 1.17 (1.18 inserts ``Queued`` and ``ReadyToStart`` after ``New``)."""
QUEUED_BACKUP_PHASES = ["Queued", "ReadyToStart"]


def backup_phases(version: str = LATEST) -> list[str]:
    """The ``status.phase`` enum of Velero ``version``'s Backup, in the CRD's order."""
    if since(version, "1.18"):
        return [BACKUP_PHASES[0], *QUEUED_BACKUP_PHASES, *BACKUP_PHASES[1:]]
    return list(BACKUP_PHASES)


def backup_schema(version: str = LATEST) -> Schema:
    resource_hook = _object(
        {
            "excludedNamespaces": _strings(),
            "excludedResources": _strings(),
            "includedNamespaces": _strings(),
            "includedResources": _strings(),
            "labelSelector": _label_selector(version, nullable=True),
            "name": {"type": "string"},
            "post": _exec_hooks(),
            "pre": _exec_hooks(),
        },
        ["name"],
    )
    spec_fields: dict[str, Schema] = {
        "csiSnapshotTimeout": {"type": "string"},
        "datamover": {"type": "string"},
        "defaultVolumesToFsBackup": _nullable(_bool()),
        "defaultVolumesToRestic": _nullable(_bool()),
        "excludedClusterScopedResources": _strings(),
        "excludedNamespaceScopedResources": _strings(),
        "excludedNamespaces": _strings(),
        "excludedResources": _strings(),
        "hooks": _object({"resources": _nullable({"type": "array", "items": resource_hook})}),
        "includeClusterResources": _nullable(_bool()),
        "includedClusterScopedResources": _strings(),
        "includedNamespaceScopedResources": _strings(),
        "includedNamespaces": _strings(),
        "includedResources": _strings(),
        "itemOperationTimeout": {"type": "string"},
        "labelSelector": _label_selector(version, nullable=True),
        "metadata": _object({"labels": _string_map()}),
        "orLabelSelectors": _nullable({"type": "array", "items": _label_selector(version, nullable=False)}),
        "orderedResources": _nullable(_string_map()),
        "resourcePolicy": _object(
            {"apiGroup": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}},
            ["kind", "name"],
            **{"x-kubernetes-map-type": "atomic"},
        ),
        "snapshotMoveData": _nullable(_bool()),
        "snapshotVolumes": _nullable(_bool()),
        "storageLocation": {"type": "string"},
        "ttl": {"type": "string"},
        "uploaderConfig": _nullable(_object({"parallelFilesUpload": _integer()})),
        "volumeSnapshotLocations": _strings(nullable=False),
    }
    status_fields: dict[str, Schema] = {
        "backupItemOperationsAttempted": _integer(),
        "backupItemOperationsCompleted": _integer(),
        "backupItemOperationsFailed": _integer(),
        "completionTimestamp": _timestamp(),
        "csiVolumeSnapshotsAttempted": _integer(),
        "csiVolumeSnapshotsCompleted": _integer(),
        "errors": _integer(),
        "expiration": _timestamp(),
        "failureReason": {"type": "string"},
        "formatVersion": {"type": "string"},
        "hookStatus": _nullable(_object({"hooksAttempted": _integer(), "hooksFailed": _integer()})),
        "phase": _string(enum=backup_phases(version)),
        "progress": _nullable(_object({"itemsBackedUp": _integer(), "totalItems": _integer()})),
        "startTimestamp": _timestamp(),
        "validationErrors": _strings(),
        "version": _integer(),
        "volumeSnapshotsAttempted": _integer(),
        "volumeSnapshotsCompleted": _integer(),
        "warnings": _integer(),
    }
    if since(version, "1.17"):
        spec_fields["volumeGroupSnapshotLabelKey"] = {"type": "string"}
    if since(version, "1.18"):
        status_fields["queuePosition"] = _integer()
    spec = _object(dict(sorted(spec_fields.items())))
    status = _object(dict(sorted(status_fields.items())))
    return _root(spec, status, "Backup: a capture of cluster state and volumes at a point in time")


def _crd(
    kind: str, plural: str, version: str, schema: Schema, subresources: dict[str, Any] | None, short_names: list[str]
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
                    **({} if subresources is None else {"subresources": subresources}),
                }
            ],
        },
    }


def velero_crds(
    version: str = LATEST, status_subresource: bool = False, *, data_uploads: bool = True
) -> list[dict[str, Any]]:
    """DataDownload, DataUpload (velero.io/v2alpha1), BackupStorageLocation and Backup (velero.io/v1) as Velero
    ``version`` (one of :data:`VELERO_VERSIONS`, default the newest) ships them; DataUpload left out when
    ``data_uploads`` is false.

    ``status_subresource=False`` is Velero's own flavour (``subresources: {}``: the status is written with
    the main resource and bumps ``generation``); ``True`` gives DataDownload and DataUpload a ``/status``
    subresource. Backup never has one (Velero ships it without ``subresources``).
    """
    _release(version)
    dd_subresources: dict[str, Any] = {"status": {}} if status_subresource else {}
    bsl = backup_storage_location_schema(version)
    crds = [
        _crd("DataDownload", "datadownloads", "v2alpha1", data_download_schema(version), dd_subresources, []),
        _crd("BackupStorageLocation", "backupstoragelocations", "v1", bsl, {}, ["bsl"]),
        _crd("Backup", "backups", "v1", backup_schema(version), None, []),
    ]
    if data_uploads:
        du_schema = data_upload_schema(version)
        crds.insert(1, _crd("DataUpload", "datauploads", "v2alpha1", du_schema, dict(dd_subresources), []))
    return crds
