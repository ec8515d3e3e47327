"""The kinds this server serves: built-ins (core/v1, ``storage.k8s.io/v1`` StorageClasses,
``coordination.k8s.io/v1`` Leases) and the custom resources of the CRDs it is given, with their discovery
documents and their admission rules (what a write must satisfy to be stored)."""

from __future__ import annotations

import base64
import binascii
import copy
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from . import schema
from .errors import Cause, KubeError, bad_request, invalid
from .meta import prune_metadata, validate_metadata

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]
_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    short_names: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    extra_field_selectors: frozenset[str] = frozenset()
    builtin: bool = False
    create_on_update: bool = False
    """The registry strategy's AllowCreateOnUpdate: a PUT of a missing object creates it (201)."""
    unconditional_update: bool = True
    """The registry strategy's AllowUnconditionalUpdate (built-ins only: custom resources never allow it): a PUT
    without ``metadata.resourceVersion`` overwrites whatever is stored."""

    @property
    def custom(self) -> bool:
        """A custom resource (from a CRD): schema-validated, with ``generation``; built-ins of any group are not."""
        return not self.builtin

    @property
    def requires_resource_version(self) -> bool:
        """Whether a PUT must carry ``metadata.resourceVersion`` (422 without it)."""
        return self.custom or not self.unconditional_update

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the apiserver names the resource in messages: ``datadownloads.velero.io``, ``secrets``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_group(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def field_selectors(self) -> frozenset[str]:
        return _META_FIELDS | self.extra_field_selectors

    def discovery(self) -> list[dict[str, Any]]:
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        entries = [main]
        if self.has_status:
            status = {"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced}
            entries.append({**status, "kind": self.kind, "verbs": list(STATUS_VERBS)})
        return entries


def _core(
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    status: bool = False,
    short: tuple[str, ...] = (),
    fields: str = "",
) -> ResourceType:
    return ResourceType("", "v1", plural, kind, namespaced, status, short, None, frozenset(fields.split()), True)


STORAGE_CLASSES = ResourceType(
    "storage.k8s.io", "v1", "storageclasses", "StorageClass", False, False, ("sc",), None, frozenset(), True
)
# The lease strategy (pkg/registry/coordination/lease): AllowCreateOnUpdate true, AllowUnconditionalUpdate false.
LEASES = ResourceType(
    "coordination.k8s.io",
    "v1",
    "leases",
    "Lease",
    True,
    False,
    builtin=True,
    create_on_update=True,
    unconditional_update=False,
)


BUILTINS = [
    _core("namespaces", "Namespace", namespaced=False, status=True, short=("ns",), fields="status.phase"),
    _core("secrets", "Secret", fields="type"),
    _core(
        "pods",
        "Pod",
        status=True,
        short=("po",),
        fields="spec.nodeName spec.restartPolicy spec.schedulerName spec.serviceAccountName spec.hostNetwork "
        "status.phase status.podIP status.nominatedNodeName",
    ),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", status=True, short=("pvc",)),
    _core("persistentvolumes", "PersistentVolume", namespaced=False, status=True, short=("pv",)),
    _core("nodes", "Node", namespaced=False, status=True, short=("no",)),
    _core(
        "events",
        "Event",
        short=("ev",),
        fields="involvedObject.kind involvedObject.namespace involvedObject.name involvedObject.uid "
        "involvedObject.apiVersion involvedObject.resourceVersion involvedObject.fieldPath reason "
        "reportingComponent type",
    ),
    STORAGE_CLASSES,
    LEASES,
]
# What the apiserver's create strategies put in .status of these kinds (a client cannot set it).
INITIAL_STATUS: dict[str, dict[str, Any]] = {
    "namespaces": {"phase": "Active"},
    "pods": {"phase": "Pending"},
    "persistentvolumeclaims": {"phase": "Pending"},
    "persistentvolumes": {"phase": "Pending"},
}


def from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One :class:`ResourceType` per served version of an apiextensions.k8s.io/v1 CRD (from any source)."""
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not an apiextensions.k8s.io/v1 CustomResourceDefinition: {crd.get('metadata')}")
    spec = crd["spec"]
    names = spec["names"]
    types = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        types.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                has_status="status" in (version.get("subresources") or {}),
                short_names=tuple(names.get("shortNames") or ()),
                schema=copy.deepcopy(version["schema"]["openAPIV3Schema"]),
            )
        )
        schema.check_rules(version["schema"]["openAPIV3Schema"], f"{names['plural']}.{spec['group']}")
    return types


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA above beta above alpha, then the higher number first."""
    for rank, marker in ((1, "beta"), (0, "alpha")):
        major, found, minor = version[1:].partition(marker)
        if found and major.isdigit() and minor.isdigit():
            return rank, int(major), int(minor)
    return (2, int(version[1:]), 0) if version[1:].isdigit() else (-1, 0, 0)


def group_versions(types: list[ResourceType]) -> dict[str, list[str]]:
    """group -> versions, preferred first."""
    groups: dict[str, set[str]] = {}
    for t in types:
        if t.group:
            groups.setdefault(t.group, set()).add(t.version)
    return {g: sorted(vs, key=_version_priority, reverse=True) for g, vs in groups.items()}


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def resource_list(group_version: str, types: list[ResourceType]) -> dict[str, Any]:
    resources = [entry for t in types if t.api_version == group_version for entry in t.discovery()]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _admit_secret(obj: dict[str, Any], causes: list[Cause]) -> None:
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        causes.append(Cause("data", "FieldValueTypeInvalid", "Invalid value: must be a map"))
        return
    for key, value in data.items():
        try:
            if not isinstance(value, str):
                raise ValueError("not a string")
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            message = f'Invalid value: "<secret contents redacted>": illegal base64 data: {exc}'
            causes.append(Cause(f"data[{key}]", "FieldValueInvalid", message))
    string_data = obj.pop("stringData", None) or {}
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _admit_event(obj: dict[str, Any], causes: list[Cause]) -> None:
    namespace = obj["metadata"].get("namespace", "")
    involved = (obj.get("involvedObject") or {}).get("namespace", "")
    if (involved and involved != namespace) or (not involved and namespace not in ("", "default")):
        message = f'Invalid value: "{involved}": does not match event.namespace'
        causes.append(Cause("involvedObject.namespace", "FieldValueInvalid", message))


_RECLAIM_POLICIES = ("Delete", "Retain")
_BINDING_MODES = ("Immediate", "WaitForFirstConsumer")


def _admit_storage_class(obj: dict[str, Any], causes: list[Cause]) -> None:
    """Defaults ``reclaimPolicy: Delete`` and ``volumeBindingMode: Immediate``; a provisioner is required."""
    if not obj.get("provisioner"):
        causes.append(Cause("provisioner", "FieldValueRequired", "Required value"))
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")
    for field, allowed in (("reclaimPolicy", _RECLAIM_POLICIES), ("volumeBindingMode", _BINDING_MODES)):
        if obj[field] not in allowed:
            supported = ", ".join(f'"{a}"' for a in allowed)
            message = f'Unsupported value: "{obj[field]}": supported values: {supported}'
            causes.append(Cause(field, "FieldValueNotSupported", message))


# -- coordination.k8s.io/v1 Lease ----------------------------------------------------------------------------

LEASE_FIELDS = {
    "holderIdentity": "string",
    "leaseDurationSeconds": "int32",
    "acquireTime": "MicroTime",
    "renewTime": "MicroTime",
    "leaseTransitions": "int32",
    "strategy": "string",
    "preferredHolder": "string",
}
"""LeaseSpec's fields and their Go types (every one optional: a pointer, ``omitempty``)."""
LEASE_GATED_FIELDS = ("strategy", "preferredHolder")
"""Dropped on every write while the CoordinatedLeaderElection feature gate is off (its default up to 1.33)."""
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
_MICRO_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(?:(Z)|([+-])(\d{2}):(\d{2}))$")
_INT32 = (-(2**31), 2**31 - 1)


class DecodeError(KubeError):
    """A typed built-in's body that does not decode: 400 as the body of a create or update (the apiserver's
    transformDecodeError); a patch whose result does not decode is 422 instead (see ``Store.patch``)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(400, f'{kind} in version "v1" cannot be handled as a {kind}: {why}', "BadRequest")
        self.why = why


def _cannot_decode(why: str) -> KubeError:
    return DecodeError("Lease", why)


def parse_micro_time(value: str) -> datetime:
    """A ``metav1.MicroTime`` as the apiserver decodes it: Go's ``time.Parse(RFC3339Micro, value)``, which wants
    exactly six fractional digits and ``Z`` or a ``±hh:mm`` offset (ValueError otherwise)."""
    match = _MICRO_TIME.match(value)
    if match is None:
        raise ValueError(f'parsing time "{value}" as "{RFC3339_MICRO}": not RFC 3339 with six fractional digits')
    year, month, day, hour, minute, second, micro = (int(match[i]) for i in range(1, 8))
    offset = timedelta(0)
    if match[8] is None:
        offset = timedelta(hours=int(match[10]), minutes=int(match[11])) * (-1 if match[9] == "-" else 1)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
    except ValueError as exc:
        raise ValueError(f'parsing time "{value}": {exc}') from None


def format_micro_time(moment: datetime) -> str:
    """How the apiserver writes a ``MicroTime``: in UTC, six fractional digits, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_kind(value: Any) -> str:
    """How Go's encoding/json names a JSON value it cannot put into a field."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _decode_lease_field(name: str, kind: str, value: Any) -> Any:
    where = f"Go struct field LeaseSpec.spec.{name} of type {'int32' if kind == 'int32' else 'string'}"
    if kind == "int32":
        if isinstance(value, bool) or not isinstance(value, int) or not _INT32[0] <= value <= _INT32[1]:
            raise _cannot_decode(f"json: cannot unmarshal {_json_kind(value)} into {where}")
        return value
    if not isinstance(value, str):
        raise _cannot_decode(f"json: cannot unmarshal {_json_kind(value)} into {where}")
    if kind == "MicroTime":
        try:
            return format_micro_time(parse_micro_time(value))
        except ValueError as exc:
            raise _cannot_decode(str(exc)) from None
    return value


def _admit_lease(obj: dict[str, Any], causes: list[Cause], *, strict: bool) -> None:
    """Decode as the typed Lease (400 on a value of the wrong type: holderIdentity a string, leaseDurationSeconds
    and leaseTransitions int32, acquireTime/renewTime MicroTimes), drop unknown fields (400 under
    fieldValidation=Strict) and the gated ones, normalise the times, then validate (422)."""
    dropped = [key for key in obj if key not in ("apiVersion", "kind", "metadata", "spec")]
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise _cannot_decode(
            f"json: cannot unmarshal {_json_kind(spec)} into Go struct field Lease.spec of type v1.LeaseSpec"
        )
    dropped += [f"spec.{key}" for key in spec if key not in LEASE_FIELDS]
    if strict and dropped:
        raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in dropped))
    decoded = {
        name: _decode_lease_field(name, LEASE_FIELDS[name], value)
        for name, value in spec.items()
        if name in LEASE_FIELDS and value is not None
    }
    for name in LEASE_GATED_FIELDS:
        decoded.pop(name, None)
    for key in [k for k in obj if k not in ("apiVersion", "kind", "metadata")]:
        del obj[key]
    obj["spec"] = decoded  # a struct, not a pointer: always written, {} when empty
    duration = decoded.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        message = f"Invalid value: {duration}: must be greater than 0"
        causes.append(Cause("spec.leaseDurationSeconds", "FieldValueInvalid", message))
    transitions = decoded.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        message = f"Invalid value: {transitions}: must be greater than or equal to 0"
        causes.append(Cause("spec.leaseTransitions", "FieldValueInvalid", message))


# What the PVC/PV protection admission plugins add to every new claim and volume.
ADMISSION_FINALIZERS = {
    "persistentvolumeclaims": "kubernetes.io/pvc-protection",
    "persistentvolumes": "kubernetes.io/pv-protection",
}
PVC_SPEC_IMMUTABLE = (
    "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName "
    "for bound claims"
)


NAMESPACE_FINALIZER = "kubernetes"


def admit_new(rtype: ResourceType, obj: dict[str, Any]) -> None:
    """Admission on create only (after :func:`admit`): the protection finalizers of PVCs and PVs, a PVC's
    ``dataSource``/``dataSourceRef`` each filled from the other (the apiserver's NormalizeDataSources), and a
    namespace's ``spec.finalizers`` gaining ``kubernetes`` (what the namespace controller removes once the
    namespace is empty)."""
    core = rtype.builtin and not rtype.group
    finalizer = ADMISSION_FINALIZERS.get(rtype.plural) if core else None
    if finalizer is not None:
        finalizers = obj["metadata"].setdefault("finalizers", [])
        if finalizer not in finalizers:
            finalizers.append(finalizer)
    if core and rtype.plural == "persistentvolumeclaims":
        _normalise_data_sources(obj)
    if core and rtype.plural == "namespaces":
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise invalid("Namespace", obj["metadata"].get("name", ""), [Cause("spec", "FieldValueTypeInvalid", "")])
        if NAMESPACE_FINALIZER not in (spec.get("finalizers") or []):
            spec["finalizers"] = [*(spec.get("finalizers") or []), NAMESPACE_FINALIZER]


def _normalise_data_sources(claim: dict[str, Any]) -> None:
    spec = claim.get("spec")
    if not isinstance(spec, dict):
        return
    source, ref = spec.get("dataSource"), spec.get("dataSourceRef")
    if isinstance(source, dict) and ref is None:
        spec["dataSourceRef"] = {k: source[k] for k in ("apiGroup", "kind", "name") if k in source}
    elif isinstance(ref, dict) and source is None and not ref.get("namespace"):
        spec["dataSource"] = {k: ref[k] for k in ("apiGroup", "kind", "name") if k in ref}
    elif isinstance(source, dict) and isinstance(ref, dict):
        same = all(source.get(k) == ref.get(k) for k in ("apiGroup", "kind", "name")) and not ref.get("namespace")
        if not same:
            cause = Cause("spec.dataSource", "FieldValueInvalid", "Invalid value: must match dataSourceRef")
            raise invalid("PersistentVolumeClaim", claim["metadata"].get("name", ""), [cause])


def _mutable_part_removed(spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec
    rest = copy.deepcopy(spec)
    rest.pop("volumeName", None)
    resources = rest.get("resources")
    if isinstance(resources, dict):
        resources.pop("requests", None)
        if not resources:
            rest.pop("resources")
    return rest


def admit_change(rtype: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Rules on updates and patches of a stored object: a PVC's spec is immutable, except that
    ``spec.volumeName`` may be set once (from empty) and ``spec.resources.requests`` may change."""
    if not (rtype.builtin and rtype.plural == "persistentvolumeclaims"):
        return
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    old_volume = old_spec.get("volumeName") if isinstance(old_spec, dict) else None
    new_volume = new_spec.get("volumeName") if isinstance(new_spec, dict) else None
    volume_ok = not old_volume or new_volume == old_volume
    if not volume_ok or _mutable_part_removed(old_spec) != _mutable_part_removed(new_spec):
        raise invalid(
            rtype.kind_group, new["metadata"]["name"], [Cause("spec", "FieldValueForbidden", PVC_SPEC_IMMUTABLE)]
        )


def admit(
    rtype: ResourceType, obj: dict[str, Any], *, strict_fields: bool = False, old: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The object as it would be stored, or a 422 (400 for unknown fields under fieldValidation=Strict);
    ``old`` is the stored object on updates (for the transition rules of custom resources)."""
    obj = copy.deepcopy(obj)
    obj["metadata"] = prune_metadata(obj.get("metadata") or {})
    causes = validate_metadata(obj["metadata"], dns_label=rtype.plural == "namespaces")
    if rtype.schema is not None:
        obj, dropped, schema_causes = schema.admit_custom(obj, rtype.schema, old)
        if strict_fields and dropped:
            raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in dropped))
        causes += schema_causes
    elif rtype.plural == "secrets":
        _admit_secret(obj, causes)
    elif rtype.plural == "events":
        _admit_event(obj, causes)
    elif rtype.builtin and rtype.plural == "storageclasses":
        _admit_storage_class(obj, causes)
    elif rtype.builtin and rtype.qualified == LEASES.qualified:
        _admit_lease(obj, causes, strict=strict_fields)
    if causes:
        name = obj["metadata"].get("name") or obj["metadata"].get("generateName", "")
        raise invalid(rtype.kind_group, name, causes)
    return obj
