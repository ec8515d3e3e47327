"""Reading Kubernetes objects as the simulated controllers need: quantities, label and node selectors,
taints and tolerations, conditions, Events."""

from __future__ import annotations

import uuid
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from tests.support.kube.meta import now_rfc3339

Obj = dict[str, Any]

HOSTNAME = "kubernetes.io/hostname"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
TERMINATED = ("Succeeded", "Failed")

_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}


def meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def spec(obj: Obj) -> Obj:
    return obj.get("spec") or {}


def status(obj: Obj) -> Obj:
    return obj.get("status") or {}


def annotations_of(obj: Obj) -> dict[str, str]:
    return meta(obj).get("annotations") or {}


def labels(obj: Obj) -> dict[str, str]:
    return meta(obj).get("labels") or {}


def terminating(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def phase(obj: Obj) -> str:
    return str(status(obj).get("phase") or "Pending")


def key(obj: Obj) -> tuple[str, str]:
    return meta(obj).get("namespace", ""), meta(obj)["name"]


def quantity(value: Any) -> int:
    """A resource quantity (``1Gi``, ``500M``, ``1.5Ki``, ``1024``) in whole units, rounded up; 0 if absent."""
    if value is None or value == "":
        return 0
    text = str(value)
    factor = 1
    for suffix, multiplier in _SUFFIXES.items():
        if text.endswith(suffix):
            text, factor = text[: -len(suffix)], multiplier
            break
    if text.endswith("m"):
        text, scale = text[:-1], Decimal("0.001")
    else:
        scale = Decimal(1)
    try:
        amount = Decimal(text) * scale * factor
    except InvalidOperation:
        raise ValueError(f"not a quantity: {value!r}") from None
    return int(amount.to_integral_value(rounding=ROUND_CEILING))


def requested_storage(claim: Obj) -> Any:
    return ((spec(claim).get("resources") or {}).get("requests") or {}).get("storage")


def volume_mode(obj: Obj) -> str:
    return str(spec(obj).get("volumeMode") or "Filesystem")


def claim_names(pod: Obj) -> list[str]:
    """The PVCs a pod's volumes name, in order."""
    found = []
    for volume in spec(pod).get("volumes") or []:
        claim = volume.get("persistentVolumeClaim")
        if claim and claim.get("claimName"):
            found.append(str(claim["claimName"]))
    return found


def label_selector_matches(selector: Obj | None, values: dict[str, str]) -> bool:
    """A LabelSelector (``matchLabels``, ``matchExpressions`` In/NotIn/Exists/DoesNotExist); None matches all."""
    if selector is None:
        return True
    for k, v in (selector.get("matchLabels") or {}).items():
        if values.get(k) != v:
            return False
    return all(_requirement(expr, values) for expr in selector.get("matchExpressions") or [])


def _requirement(expr: Obj, values: dict[str, str]) -> bool:
    op, k, allowed = expr.get("operator"), expr.get("key", ""), expr.get("values") or []
    if op == "In":
        return k in values and values[k] in allowed
    if op == "NotIn":
        return k not in values or values[k] not in allowed
    if op == "Exists":
        return k in values
    if op == "DoesNotExist":
        return k not in values
    if op in ("Gt", "Lt") and k in values and len(allowed) == 1:
        try:
            have, limit = int(values[k]), int(allowed[0])
        except ValueError:
            return False
        return have > limit if op == "Gt" else have < limit
    return False


def node_selector_matches(required: Obj | None, node: Obj) -> bool:
    """A NodeSelector (``nodeSelectorTerms``, ORed; within a term ``matchExpressions`` on labels and
    ``matchFields`` on ``metadata.name``, ANDed); None allows every node, no terms allow none."""
    if required is None:
        return True
    name = {"metadata.name": meta(node)["name"]}
    for term in required.get("nodeSelectorTerms") or []:
        expressions, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
        if not expressions and not fields:
            continue
        if all(_requirement(e, labels(node)) for e in expressions) and all(_requirement(f, name) for f in fields):
            return True
    return False


def pv_allows_node(pv: Obj, node: Obj) -> bool:
    return node_selector_matches((spec(pv).get("nodeAffinity") or {}).get("required"), node)


def tolerated(taint: Obj, tolerations: list[Obj]) -> bool:
    for toleration in tolerations:
        effect_ok = not toleration.get("effect") or toleration["effect"] == taint.get("effect")
        operator = toleration.get("operator") or "Equal"
        if operator == "Exists":
            key_ok, value_ok = not toleration.get("key") or toleration["key"] == taint.get("key"), True
        else:
            key_ok = toleration.get("key") == taint.get("key")
            value_ok = (toleration.get("value") or "") == (taint.get("value") or "")
        if effect_ok and key_ok and value_ok:
            return True
    return False


def with_condition(conditions: list[Obj], condition: Obj) -> list[Obj] | None:
    """``conditions`` with ``condition`` (by type) in place, or None when it is already there (status, reason
    and message equal): so that re-writing an unchanged condition never makes a write."""
    for existing in conditions:
        if existing.get("type") == condition["type"]:
            same = all(existing.get(k) == condition.get(k) for k in ("status", "reason", "message"))
            if same:
                return None
    stamped = {**condition, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
    return [c for c in conditions if c.get("type") != condition["type"]] + [stamped]


def event(involved: Obj, reason: str, message: str, *, kind: str, component: str, warning: bool) -> Obj:
    """An Event (core/v1) about ``involved`` (an object of ``kind``), as a controller records it."""
    m = meta(involved)
    now = now_rfc3339()
    namespace = m.get("namespace") or "default"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{m['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
        "involvedObject": {
            "kind": kind,
            "apiVersion": "v1",
            "namespace": m.get("namespace", ""),
            "name": m["name"],
            "uid": m.get("uid", ""),
            "resourceVersion": m.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message,
        "type": "Warning" if warning else "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
