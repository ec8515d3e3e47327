"""Structural-schema handling for custom resources: prune unknown fields, apply defaults, validate.

Follows the apiserver's order (prune, then default, then validate) and its ``details.causes`` wording.
Validated: ``type``, ``enum``, ``required``, ``nullable``, ``additionalProperties``, ``items``, ``pattern``,
``minimum``, ``minItems``, the formats ``date-time``, ``int32``, ``int64`` and ``byte``, and
``x-kubernetes-validations`` of the few CEL rule shapes the CRDs here use (:data:`CEL_SHAPES`; any other rule
is refused when the CRD is loaded): transition rules (those naming ``oldSelf``) run on updates only, where the
old value exists.
Deliberately stricter than the apiserver in one place: ``date-time`` must be RFC 3339 (Velero's Go types
parse nothing else), while the apiserver also takes a few ISO 8601 variants. The root ``metadata`` is left
to :mod:`.meta`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from datetime import datetime
from typing import Any

from .errors import Cause

Schema = dict[str, Any]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_INT_OR_STRING = "x-kubernetes-int-or-string"
_VALIDATIONS = "x-kubernetes-validations"


class _Absent:
    """No old value (a create, or a field the old object lacked): transition rules are skipped."""


ABSENT: Any = _Absent()

# The CEL rule shapes modelled (``F``, ``A``, ``B``: field names; CEL's ``__namespace__`` escapes ``namespace``).
_FIELD = r"([A-Za-z_][A-Za-z0-9_]*)"
CEL_SHAPES: dict[str, re.Pattern[str]] = {
    "immutable": re.compile(r"^self == oldSelf$"),
    "kept once set": re.compile(rf"^!has\(oldSelf\.{_FIELD}\) \|\| has\(self\.\1\)$"),
    "exactly one": re.compile(
        rf"^\(has\(self\.{_FIELD}\) && !has\(self\.{_FIELD}\)\) \|\| \(!has\(self\.\1\) && has\(self\.\2\)\)$"
    ),
    "both": re.compile(rf"^has\(self\.{_FIELD}\) && has\(self\.{_FIELD}\)$"),
    "not empty": re.compile(r"^size\(self\) > 0$"),
}


def _cel_field(name: str) -> str:
    return "namespace" if name == "__namespace__" else name


def _has(value: Any, name: str) -> bool:
    return isinstance(value, dict) and _cel_field(name) in value


def _cel_holds(rule: str, value: Any, old: Any) -> bool | None:
    """Whether ``rule`` holds; None when it is a transition rule and there is no old value."""
    for shape, pattern in CEL_SHAPES.items():
        match = pattern.match(rule)
        if match is None:
            continue
        if "oldSelf" in rule and isinstance(old, _Absent):
            return None
        if shape == "immutable":
            return bool(value == old)
        if shape == "kept once set":
            return not _has(old, match[1]) or _has(value, match[1])
        if shape == "exactly one":
            return _has(value, match[1]) != _has(value, match[2])
        if shape == "both":
            return _has(value, match[1]) and _has(value, match[2])
        return len(value) != 0 if isinstance(value, str | list | dict) else True
    raise ValueError(f"CEL rule not modelled by this test server: {rule!r}")


def check_rules(node: Any, path: str = "") -> None:
    """Refuse (ValueError) a schema with an ``x-kubernetes-validations`` rule of a shape not modelled."""
    if isinstance(node, dict):
        for entry in node.get(_VALIDATIONS) or []:
            rule = str(entry.get("rule", ""))
            if not any(p.match(rule) for p in CEL_SHAPES.values()):
                raise ValueError(f"{path or '<root>'}: CEL rule not modelled by this test server: {rule!r}")
        for key, child in node.items():
            if key != _VALIDATIONS:
                check_rules(child, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for child in node:
            check_rules(child, path)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(value: Any, node: Schema, path: str, dropped: list[str]) -> None:
    """Drop, in place, fields the schema does not declare (recording their paths in ``dropped``)."""
    if node.get(_PRESERVE) and "properties" not in node and "additionalProperties" not in node:
        return
    if isinstance(value, dict):
        properties: dict[str, Schema] = node.get("properties") or {}
        extra = node.get("additionalProperties")
        for key in list(value):
            child = f"{path}[{key}]" if extra is not None and key not in properties else _join(path, key)
            if key in properties:
                prune(value[key], properties[key], child, dropped)
            elif isinstance(extra, dict):
                prune(value[key], extra, child, dropped)
            elif extra is True or node.get(_PRESERVE):
                continue
            else:
                del value[key]
                dropped.append(child)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            prune(item, node["items"], f"{path}[{index}]", dropped)


def apply_defaults(value: Any, node: Schema) -> None:
    """Fill absent (or null but non-nullable) properties that declare a ``default``, in place."""
    if isinstance(value, dict):
        properties: dict[str, Schema] = node.get("properties") or {}
        for key, child in properties.items():
            missing = key not in value or (value[key] is None and not child.get("nullable"))
            if "default" in child and missing:
                value[key] = copy.deepcopy(child["default"])
            if key in value:
                apply_defaults(value[key], child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - properties.keys():
                apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            apply_defaults(item, node["items"])


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_matches(expected: str, actual: str) -> bool:
    return actual == expected or (expected == "number" and actual == "integer")


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(json.dumps(value))


def _format_ok(fmt: str, value: Any) -> bool:
    if fmt == "date-time" and isinstance(value, str):
        if not _RFC3339.match(value):
            return False
        try:
            datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            return False
        return True
    if fmt in _INT_RANGES and isinstance(value, int | float):
        low, high = _INT_RANGES[fmt]
        return low <= value <= high
    if fmt == "byte" and isinstance(value, str):
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
    return True


def validate(value: Any, node: Schema, path: str, causes: list[Cause], old: Any = ABSENT) -> None:
    """Append a :class:`Cause` for every violation under ``value`` (``old``: the stored value, on updates)."""
    expected = node.get("type")
    actual = json_type(value)
    if value is None:
        if not node.get("nullable") and expected:
            message = f'Invalid value: "null": {path} in body must be of type {expected}: "null"'
            causes.append(Cause(path, "FieldValueTypeInvalid", message))
        return
    if node.get(_INT_OR_STRING):
        if actual not in ("integer", "string"):
            message = f"Invalid value: {_show(value)}: {path} in body must be of type int-or-string: {actual!r}"
            causes.append(Cause(path, "FieldValueTypeInvalid", message))
        elif actual == "string":
            _check_pattern(value, node, path, causes)
        return
    if expected and not _type_matches(expected, actual):
        message = f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'
        causes.append(Cause(path, "FieldValueTypeInvalid", message))
        return
    if "enum" in node and value not in node["enum"]:
        supported = ", ".join(json.dumps(v) for v in node["enum"])
        message = f"Unsupported value: {json.dumps(value)}: supported values: {supported}"
        causes.append(Cause(path, "FieldValueNotSupported", message))
    fmt = node.get("format")
    if fmt and not _format_ok(fmt, value):
        message = f"Invalid value: {_show(value)}: {path} in body must be of type {fmt}: {json.dumps(value)}"
        causes.append(Cause(path, "FieldValueInvalid", message))
    if isinstance(value, str):
        _check_pattern(value, node, path, causes)
    if "minimum" in node and isinstance(value, int | float) and value < node["minimum"]:
        message = (
            f"Invalid value: {json.dumps(value)}: {path} in body should be greater than or equal to {node['minimum']}"
        )
        causes.append(Cause(path, "FieldValueInvalid", message))
    if "minItems" in node and isinstance(value, list) and len(value) < node["minItems"]:
        message = f"Invalid value: {len(value)}: {path} in body should have at least {node['minItems']} items"
        causes.append(Cause(path, "FieldValueInvalid", message))
    if isinstance(value, dict):
        _validate_object(value, node, path, causes, old)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            validate(item, node["items"], f"{path}[{index}]", causes)
    for entry in node.get(_VALIDATIONS) or []:
        if _cel_holds(str(entry["rule"]), value, old) is False:
            shown = "object" if isinstance(value, dict) else actual
            message = f"Invalid value: {json.dumps(shown)}: {entry.get('message') or 'failed rule: ' + entry['rule']}"
            causes.append(Cause(path, "FieldValueInvalid", message))


def _check_pattern(value: str, node: Schema, path: str, causes: list[Cause]) -> None:
    pattern = node.get("pattern")
    if pattern and re.search(pattern, value) is None:
        message = f"Invalid value: {json.dumps(value)}: {path} in body should match '{pattern}'"
        causes.append(Cause(path, "FieldValueInvalid", message))


def _validate_object(value: dict[str, Any], node: Schema, path: str, causes: list[Cause], old: Any) -> None:
    properties: dict[str, Schema] = node.get("properties") or {}
    missing = [key for key in node.get("required") or [] if key not in value]
    causes.extend(Cause(_join(path, key), "FieldValueRequired", "Required value") for key in missing)
    extra = node.get("additionalProperties")
    for key, item in value.items():
        before = old.get(key, ABSENT) if isinstance(old, dict) else ABSENT
        if key in properties:
            validate(item, properties[key], _join(path, key), causes, before)
        elif isinstance(extra, dict):
            validate(item, extra, f"{path}[{key}]", causes, before)


def normalise_numbers(value: Any) -> Any:
    """JSON ``5.0`` where an integer is expected is stored as ``5``, as the apiserver's decoder does."""
    if isinstance(value, dict):
        return {k: normalise_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def admit_custom(
    obj: dict[str, Any], root: Schema, old: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str], list[Cause]]:
    """Prune, default and validate everything but ``metadata`` (``old``: the stored object, on updates, for
    the transition rules); returns (object, dropped paths, causes)."""
    result = copy.deepcopy(obj)
    metadata = result.pop("metadata", None)
    dropped: list[str] = []
    prune(result, root, "", dropped)
    result = normalise_numbers(result)
    apply_defaults(result, root)
    causes: list[Cause] = []
    before = {k: v for k, v in old.items() if k != "metadata"} if old is not None else ABSENT
    validate(result, root, "", causes, before)
    if metadata is not None:
        result["metadata"] = metadata
    return result, dropped, causes
