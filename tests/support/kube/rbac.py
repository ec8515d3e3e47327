"""Kubernetes RBAC for the test server: who may do what, decided as the apiserver's RBAC authorizer decides.

Load the Role/ClusterRole/RoleBinding/ClusterRoleBinding documents of a manifest (``Authorizer.load``),
issue a token bound to an identity (``KubeServer.write_kubeconfig(..., user=..., rbac=...)`` or
``KubeServer.accounts.issue``), and every request made with that token is authorized first:

* Request attributes come from the path, method and query exactly as the apiserver's RequestInfoFactory
  derives them: ``/api`` and ``/apis`` paths with fewer than three segments (``/apis/<group>/<version>``
  included) are non-resource requests with the lowercased HTTP method as verb; resource requests map
  GET object -> get, GET collection -> list (``watch`` when the ``watch`` parameter is true), POST ->
  create, PUT -> update, PATCH -> patch, DELETE object -> delete, DELETE collection -> deletecollection;
  ``/namespaces/<ns>`` sets the namespace (``/api/v1/namespaces/<ns>`` is the namespace object itself, in
  its own namespace); a ``fieldSelector`` requiring ``metadata.name=<n>`` names a list or watch.
* Subjects: ``system:serviceaccount:<ns>:<name>`` is in the groups ``system:serviceaccounts``,
  ``system:serviceaccounts:<ns>`` and ``system:authenticated``; a ServiceAccount subject without a
  namespace in a RoleBinding means the binding's namespace.
* ClusterRoleBindings grant their ClusterRole everywhere; RoleBindings grant their Role, or the
  ClusterRole they reference, in their own namespace only (never cluster-scoped requests). A binding
  whose role does not exist grants nothing and the denial says so (``RBAC: role... not found``).
* A rule matches when verb (or ``*``), API group (or ``*``), resource (``*``, the exact
  ``resource/subresource``, or ``*/subresource``) and resourceNames (empty: any) all match. A request
  without a name (create, deletecollection, a list or watch without a ``metadata.name`` field selector)
  never matches a rule with resourceNames. Non-resource rules match URLs exactly or by a trailing ``*``.
* The ``system:discovery`` and ``system:public-info-viewer`` grants every authenticated user has on real
  clusters are built in: GET of ``/api``, ``/api/*``, ``/apis``, ``/apis/*``, ``/openapi``,
  ``/openapi/*``, ``/version``, ``/version/``, ``/healthz``, ``/livez``, ``/readyz``.
* A denial is 403 ``Forbidden`` with the apiserver's message and ``details``.
* A PUT that creates its object (kinds whose strategy allows create-on-update: Leases) is authorized twice,
  as the update handler does: ``update`` first, then ``create`` once the object is known to be new (after the
  body decoded and validated), 403 ``<resource> "<name>" is forbidden: <reason>`` otherwise.

Refused at load time (``ValueError``): the object validation the apiserver would refuse (rules without
verbs, resource rules without apiGroups or resources, non-resource URLs in a Role or mixed with resources,
a ClusterRoleBinding to a Role, ServiceAccount subjects of a ClusterRoleBinding without a namespace, a
namespaced object without a namespace, duplicates), and ``aggregationRule`` (not modelled).

:class:`RbacUsage` keeps, across servers, which rule allowed each request and every denial;
:func:`excess_grants` reads it back as the rules, resources and verbs nothing used.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import KubeError

RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
RBAC_GROUP = "rbac.authorization.k8s.io"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
AUTHENTICATED = "system:authenticated"

_API_PREFIXES = ("api", "apis")
_GROUPLESS_PREFIXES = ("api",)
_SPECIAL_VERBS = ("proxy", "watch")
_SPECIAL_VERBS_WITHOUT_SUBRESOURCES = ("proxy",)
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
_RESOURCE_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


# -- identities and request attributes ----------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """An authenticated user as the authorizer sees it: its name and groups."""

    name: str
    groups: tuple[str, ...] = (AUTHENTICATED,)

    @classmethod
    def of(cls, user: str) -> Identity:
        """``system:serviceaccount:<ns>:<name>`` with a service account's groups; any other name is a User."""
        if user.startswith(SERVICE_ACCOUNT_PREFIX):
            namespace, _, name = user.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
            if not namespace or not name or ":" in name:
                raise ValueError(f"{user!r} is not system:serviceaccount:<namespace>:<name>")
            return cls(user, ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED))
        if not user:
            raise ValueError("a user needs a name")
        return cls(user)

    def is_service_account(self, namespace: str, name: str) -> bool:
        return self.name == f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


@dataclass(frozen=True)
class Attributes:
    """What a request asks, as the RBAC authorizer sees it (the apiserver's RequestInfo and user)."""

    user: Identity
    verb: str
    path: str
    resource_request: bool = False
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        """The apiserver's wording of the request, as in a Forbidden message."""
        who = f"User {_quoted(self.user.name)}"
        if not self.resource_request:
            return f"{who} cannot {self.verb} path {_quoted(self.path)}"
        resource, group = _quoted(self.combined_resource), _quoted(self.api_group)
        what = f"{who} cannot {self.verb} resource {resource} in API group {group}"
        return (
            f"{what} in the namespace {_quoted(self.namespace)}" if self.namespace else f"{what} at the cluster scope"
        )


def _quoted(text: str) -> str:
    """Go's ``%q`` for the printable text of names and paths."""
    return json.dumps(text, ensure_ascii=False)


def _flag(query: Mapping[str, str], name: str) -> bool:
    """The apiserver's bool parameters: absent, ``0`` and ``false`` (any case) are false; anything else true."""
    if name not in query:
        return False
    value = str(query[name])
    return not (value == "0" or value.lower() == "false")


def _valid_path_segment(name: str) -> bool:
    return name not in (".", "..") and "/" not in name and "%" not in name


def name_from_field_selector(selector: str | None) -> str:
    """The name a field selector requires exactly (``metadata.name=<n>`` or ``==``, among other terms)."""
    if not selector:
        return ""
    for term in selector.split(","):
        for operator in ("!=", "==", "="):
            field_name, found, value = term.partition(operator)
            if found:
                if field_name == "metadata.name" and operator != "!=":
                    return value if _valid_path_segment(value) else ""
                break
    return ""


def request_attributes(user: Identity, method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """The authorizer's view of an HTTP request (the apiserver's RequestInfoFactory)."""
    trimmed = path.strip("/")
    parts = trimmed.split("/") if trimmed else []
    non_resource = Attributes(user, method.lower(), path)
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    prefix, current = parts[0], parts[1:]
    group = ""
    if prefix not in _GROUPLESS_PREFIXES:
        if len(current) < 3:
            return non_resource
        group, current = current[0], current[1:]
    version, current = current[0], current[1:]
    if current[0] in _SPECIAL_VERBS:
        if len(current) < 2:
            raise KubeError(500, f"unable to determine kind and namespace from url, {path}", "InternalError")
        verb, current = current[0], current[1:]
    else:
        verb = _RESOURCE_VERBS.get(method.upper(), "")
    namespace = ""
    if current[0] == "namespaces" and len(current) > 1:
        namespace = current[1]
        if len(current) > 2 and current[2] not in _NAMESPACE_SUBRESOURCES:
            current = current[2:]
    resource = current[0]
    name = current[1] if len(current) >= 2 else ""
    subresource = current[2] if len(current) >= 3 and verb not in _SPECIAL_VERBS_WITHOUT_SUBRESOURCES else ""
    if not name and verb == "get":
        verb = "watch" if _flag(query, "watch") else "list"
        name = name_from_field_selector(query.get("fieldSelector"))
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, path, True, group, version, resource, subresource, namespace, name)


# -- roles, bindings and rules --------------------------------------------------------------------------


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings, not {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Rule:
    """One PolicyRule."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any, where: str, *, namespaced: bool) -> Rule:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a rule must be a mapping")
        unknown = set(raw) - {"verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"}
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
        rule = cls(
            _strings(raw.get("verbs"), f"{where}.verbs"),
            _strings(raw.get("apiGroups"), f"{where}.apiGroups"),
            _strings(raw.get("resources"), f"{where}.resources"),
            _strings(raw.get("resourceNames"), f"{where}.resourceNames"),
            _strings(raw.get("nonResourceURLs"), f"{where}.nonResourceURLs"),
        )
        if not rule.verbs:
            raise ValueError(f"{where}.verbs: Required value: verbs must contain at least one value")
        if rule.non_resource_urls:
            if namespaced:
                raise ValueError(f"{where}.nonResourceURLs: namespaced rules cannot apply to non-resource URLs")
            if rule.api_groups or rule.resources:
                raise ValueError(f"{where}.nonResourceURLs: rules cannot apply to both regular resources and URLs")
            return rule
        if not rule.api_groups:
            raise ValueError(f"{where}.apiGroups: Required value: resource rules must supply at least one api group")
        if not rule.resources:
            raise ValueError(f"{where}.resources: Required value: resource rules must supply at least one resource")
        return rule

    def match(self, attributes: Attributes) -> tuple[str, str, str] | None:
        """The (verb, apiGroup, resource or URL) entries of this rule that allow the request, or None."""
        verb = next((v for v in self.verbs if v in ("*", attributes.verb)), None)
        if verb is None:
            return None
        if not attributes.resource_request:
            url = next((u for u in self.non_resource_urls if _url_matches(u, attributes.path)), None)
            return None if url is None else (verb, "", url)
        group = next((g for g in self.api_groups if g in ("*", attributes.api_group)), None)
        resource = next((r for r in self.resources if _resource_matches(r, attributes)), None)
        if group is None or resource is None:
            return None
        if self.resource_names and attributes.name not in self.resource_names:
            return None
        return verb, group, resource

    def entries(self) -> list[tuple[str, str, str]]:
        """Every (verb, apiGroup, resource or URL) combination this rule grants."""
        if self.non_resource_urls:
            return [(v, "", u) for v, u in itertools.product(self.verbs, self.non_resource_urls)]
        return list(itertools.product(self.verbs, self.api_groups, self.resources))

    def summary(self) -> str:
        verbs = ", ".join(self.verbs)
        if self.non_resource_urls:
            return f"{verbs} on {', '.join(self.non_resource_urls)}"
        groups = ", ".join(g or '""' for g in self.api_groups)
        names = f" named {', '.join(self.resource_names)}" if self.resource_names else ""
        return f"{verbs} on {', '.join(self.resources)}{names} in API group {groups}"


def _url_matches(rule_url: str, path: str) -> bool:
    if rule_url in ("*", path):
        return True
    return rule_url.endswith("*") and path.startswith(rule_url.rstrip("*"))


def _resource_matches(rule_resource: str, attributes: Attributes) -> bool:
    if rule_resource in ("*", attributes.combined_resource):
        return True
    sub = attributes.subresource
    return bool(sub) and rule_resource == f"*/{sub}"


@dataclass(frozen=True)
class Role:
    """A Role (``namespace`` set) or ClusterRole (``namespace`` empty), and where it was read."""

    kind: str
    name: str
    namespace: str
    rules: tuple[Rule, ...]
    source: str = "<yaml>"
    document: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Subject:
    kind: str
    name: str
    namespace: str = ""

    def applies_to(self, user: Identity, binding_namespace: str) -> bool:
        if self.kind == "User":
            return user.name == self.name
        if self.kind == "Group":
            return self.name in user.groups
        if self.kind == "ServiceAccount":
            namespace = self.namespace or binding_namespace
            return bool(namespace) and user.is_service_account(namespace, self.name)
        return False


@dataclass(frozen=True)
class Binding:
    """A RoleBinding (``namespace`` set) or ClusterRoleBinding (``namespace`` empty)."""

    kind: str
    name: str
    namespace: str
    role_kind: str
    role_name: str
    subjects: tuple[Subject, ...]

    def applies_to(self, user: Identity) -> bool:
        return any(s.applies_to(user, self.namespace) for s in self.subjects)


def _built_in_roles() -> tuple[list[Role], list[Binding]]:
    """What every authenticated user may do on a real cluster: discovery and the public information."""
    discovery = ("/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/")
    public = ("/healthz", "/livez", "/readyz", "/version", "/version/")
    roles = [
        Role("ClusterRole", "system:discovery", "", (Rule(("get",), non_resource_urls=discovery),), "<built-in>"),
        Role("ClusterRole", "system:public-info-viewer", "", (Rule(("get",), non_resource_urls=public),), "<built-in>"),
    ]
    everyone = (Subject("Group", AUTHENTICATED),)
    bindings = [Binding("ClusterRoleBinding", r.name, "", "ClusterRole", r.name, everyone) for r in roles]
    return roles, bindings


# -- loading ------------------------------------------------------------------------------------------


def _meta(document: dict[str, Any], where: str, *, namespaced: bool) -> tuple[str, str]:
    meta = document.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: metadata.name is required")
    namespace = meta.get("namespace") or ""
    if namespaced and not namespace:
        raise ValueError(f"{where}: a {document['kind']} needs metadata.namespace")
    return name, namespace if namespaced else ""


def _parse_role(document: dict[str, Any], where: str, source: str, index: int) -> Role:
    namespaced = document["kind"] == "Role"
    name, namespace = _meta(document, where, namespaced=namespaced)
    if "aggregationRule" in document:
        raise ValueError(f"{where}: aggregationRule is not modelled by this test server")
    raw_rules = document.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ValueError(f"{where}.rules: must be a list")
    rules = tuple(Rule.parse(r, f"{where}.rules[{i}]", namespaced=namespaced) for i, r in enumerate(raw_rules))
    return Role(document["kind"], name, namespace, rules, source, index)


def _parse_subject(raw: Any, where: str, *, namespaced: bool) -> Subject:
    if not isinstance(raw, dict) or not raw.get("kind") or not raw.get("name"):
        raise ValueError(f"{where}: a subject needs kind and name")
    kind, api_group = raw["kind"], raw.get("apiGroup", "")
    if kind == "ServiceAccount":
        if api_group:
            raise ValueError(f'{where}.apiGroup: Unsupported value: {api_group!r}: supported values: ""')
        if not namespaced and not raw.get("namespace"):
            raise ValueError(f"{where}.namespace: Required value")
    elif kind in ("User", "Group"):
        if api_group != RBAC_GROUP:
            raise ValueError(f"{where}.apiGroup: Unsupported value: {api_group!r}: supported values: {RBAC_GROUP!r}")
    else:
        raise ValueError(f'{where}.kind: Unsupported value: {kind!r}: "ServiceAccount", "User", "Group"')
    return Subject(kind, raw["name"], raw.get("namespace") or "")


def _parse_binding(document: dict[str, Any], where: str) -> Binding:
    namespaced = document["kind"] == "RoleBinding"
    name, namespace = _meta(document, where, namespaced=namespaced)
    ref = document.get("roleRef") or {}
    if ref.get("apiGroup") != RBAC_GROUP:
        raise ValueError(f"{where}.roleRef.apiGroup: Unsupported value: {ref.get('apiGroup')!r}")
    allowed = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in allowed or not ref.get("name"):
        raise ValueError(f"{where}.roleRef: kind must be one of {allowed} and name set, not {ref!r}")
    subjects = tuple(
        _parse_subject(s, f"{where}.subjects[{i}]", namespaced=namespaced)
        for i, s in enumerate(document.get("subjects") or [])
    )
    return Binding(document["kind"], name, namespace, ref["kind"], ref["name"], subjects)


# -- deciding -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """The rule that allowed a request, and which of its entries matched."""

    role: Role
    rule: int
    verb: str
    api_group: str
    resource: str

    @property
    def key(self) -> tuple[str, str, int]:
        return self.role.source, self.role.label, self.rule


@dataclass(frozen=True)
class Decision:
    allowed: bool
    grant: Grant | None = None
    reason: str = ""


@dataclass(eq=False)
class Forbidden(KubeError):
    """403 with the apiserver's message; its ``details`` are always present (possibly empty), as upstream."""

    def status(self) -> dict[str, Any]:
        body = super().status()
        body["details"] = dict(self.details)
        return body


def forbidden(attributes: Attributes, reason: str = "") -> Forbidden:
    """The apiserver's Forbidden error for a denied request."""
    message = attributes.describe() + (f": {reason}" if reason else "")
    group, resource, name = attributes.api_group, attributes.resource, attributes.name
    if not attributes.resource_request:
        return Forbidden(403, f"forbidden: {message}", "Forbidden")
    qualified = f"{resource}.{group}" if group else resource
    prefix = f"{qualified} {_quoted(name)}" if name else qualified
    details = {k: v for k, v in (("name", name), ("group", group), ("kind", resource)) if v}
    return Forbidden(403, f"{prefix} is forbidden: {message}", "Forbidden", details)


class Authorizer:
    """The RBAC authorizer over a fixed set of roles and bindings (plus the built-in discovery grants)."""

    def __init__(self, roles: Iterable[Role], bindings: Iterable[Binding], source: str = "<yaml>") -> None:
        self.source = source
        self.roles = list(roles)
        self.bindings = list(bindings)
        built_in_roles, built_in_bindings = _built_in_roles()
        self._roles = {(r.kind, r.namespace, r.name): r for r in built_in_roles}
        for role in self.roles:
            key = (role.kind, role.namespace, role.name)
            if key in self._roles:
                raise ValueError(f"{role.label} is defined twice")
            self._roles[key] = role
        self._cluster_bindings = built_in_bindings + [b for b in self.bindings if not b.namespace]
        self._namespaced_bindings = [b for b in self.bindings if b.namespace]
        names = [(b.kind, b.namespace, b.name) for b in self.bindings]
        if len(names) != len(set(names)):
            raise ValueError(f"a binding is defined twice in {source}")

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> Authorizer:
        """The RBAC objects of a multi-document YAML text; documents of other kinds are ignored."""
        roles: list[Role] = []
        bindings: list[Binding] = []
        for index, document in enumerate(yaml.safe_load_all(text)):
            if not isinstance(document, dict):
                continue
            kind = document.get("kind")
            if kind not in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
                continue
            where = f"{source} document {index} ({kind})"
            if document.get("apiVersion") != RBAC_API_VERSION:
                raise ValueError(f"{where}: apiVersion must be {RBAC_API_VERSION}")
            if kind in ("Role", "ClusterRole"):
                roles.append(_parse_role(document, where, source, index))
            else:
                bindings.append(_parse_binding(document, where))
        return cls(roles, bindings, source)

    @classmethod
    def load(cls, path: Path | str) -> Authorizer:
        return cls.from_yaml(Path(path).read_text(), str(path))

    def _role_for(self, binding: Binding) -> Role | None:
        namespace = binding.namespace if binding.role_kind == "Role" else ""
        return self._roles.get((binding.role_kind, namespace, binding.role_name))

    def _applicable(self, user: Identity, namespace: str) -> list[Binding]:
        """Bindings in the authorizer's visiting order: cluster-wide first, then the request's namespace."""
        bindings = [b for b in self._cluster_bindings if b.applies_to(user)]
        if namespace:
            bindings += [b for b in self._namespaced_bindings if b.namespace == namespace and b.applies_to(user)]
        return bindings

    def authorize(self, attributes: Attributes) -> Decision:
        errors: list[str] = []
        for binding in self._applicable(attributes.user, attributes.namespace):
            role = self._role_for(binding)
            if role is None:
                kind = binding.role_kind.lower()
                errors.append(f'{kind}.{RBAC_GROUP} "{binding.role_name}" not found')
                continue
            for index, rule in enumerate(role.rules):
                matched = rule.match(attributes)
                if matched is not None:
                    return Decision(True, Grant(role, index, *matched))
        if not errors:
            return Decision(False)
        aggregated = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        return Decision(False, reason=f"RBAC: {aggregated}")

    def granted_rules(self, user: Identity) -> list[tuple[Role, int]]:
        """Every (role, rule index) some binding grants ``user``, in any namespace (built-ins excluded)."""
        found: dict[tuple[str, str, int], tuple[Role, int]] = {}
        for binding in self.bindings:
            role = self._role_for(binding)
            if role is not None and binding.applies_to(user):
                for index in range(len(role.rules)):
                    found[(role.source, role.label, index)] = (role, index)
        return sorted(found.values(), key=lambda item: (item[0].source, item[0].document, item[1]))


# -- usage across a test run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    method: str
    path: str
    attributes: Attributes
    grant: Grant


@dataclass(frozen=True)
class Denial:
    method: str
    path: str
    attributes: Attributes
    message: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}: {self.message}"


@dataclass
class RbacUsage:
    """Which rule allowed each request, and every denial; may outlive servers (e.g. a session fixture).

    Every identity issued a token with this registry registers the rules its bindings grant it, so that
    :func:`excess_grants` can name what was granted and never used."""

    allowed: list[Allowed] = field(default_factory=list)
    denied: list[Denial] = field(default_factory=list)
    _granted: dict[tuple[str, str, int], tuple[Role, int]] = field(default_factory=dict)
    _used: dict[tuple[str, str, int], set[tuple[str, str, str]]] = field(default_factory=dict)

    def register(self, authorizer: Authorizer, user: Identity) -> None:
        for role, index in authorizer.granted_rules(user):
            self._granted.setdefault((role.source, role.label, index), (role, index))

    def record(self, method: str, attributes: Attributes, decision: Decision) -> None:
        if decision.allowed:
            if decision.grant is not None:
                self.allowed.append(Allowed(method, attributes.path, attributes, decision.grant))
                used = self._used.setdefault(decision.grant.key, set())
                used.add((decision.grant.verb, decision.grant.api_group, decision.grant.resource))
        else:
            message = forbidden(attributes, decision.reason).message
            self.denied.append(Denial(method, attributes.path, attributes, message))

    def used(self, role: Role, rule: int) -> set[tuple[str, str, str]]:
        """The (verb, apiGroup, resource or URL) entries of a rule that allowed some request."""
        return set(self._used.get((role.source, role.label, rule), set()))

    def verbs_requested(self, role: Role, rule: int, api_group: str, resource: str) -> list[str]:
        """The request verbs a rule's (apiGroup, resource) entries allowed, e.g. what a ``*`` verb served."""
        key = (role.source, role.label, rule)
        found = {
            a.attributes.verb
            for a in self.allowed
            if a.grant.key == key and (a.grant.api_group, a.grant.resource) == (api_group, resource)
        }
        return sorted(found)

    def granted(self) -> list[tuple[Role, int]]:
        return sorted(self._granted.values(), key=lambda item: (item[0].source, item[0].document, item[1]))


def _resource_label(rule: Rule, group: str, resource: str) -> str:
    if rule.non_resource_urls or len(rule.api_groups) == 1:
        return resource
    return f"{resource}.{group}" if group else f"{resource} (core)"


def excess_grants(usage: RbacUsage) -> list[str]:
    """What the registered identities were granted and no request used, one readable line each:
    whole rules, then resources of a used rule, then verbs on a used resource (and what a ``*`` verb served)."""
    sources = {role.source for role, _ in usage.granted()}
    findings: list[str] = []
    for role, index in usage.granted():
        rule = role.rules[index]
        where = f"{role.source}: " if len(sources) > 1 else ""
        prefix = f"{where}{role.label} rule {index}"
        used = usage.used(role, index)
        if not used:
            findings.append(f"{prefix} ({rule.summary()}) was never used")
            continue
        targets = sorted({(g, r) for _, g, r in rule.entries()}, key=lambda t: (t[0], t[1]))
        used_targets = {(g, r) for _, g, r in used}
        for group, resource in targets:
            label = _resource_label(rule, group, resource)
            if (group, resource) not in used_targets:
                findings.append(f'{prefix}: resource "{label}" was never used')
                continue
            unused = [verb for verb in rule.verbs if (verb, group, resource) not in used]
            findings.extend(f'{prefix}: verb "{verb}" on {label} was never used' for verb in unused)
            if "*" in rule.verbs and ("*", group, resource) in used:
                served = ", ".join(usage.verbs_requested(role, index, group, resource))
                findings.append(f'{prefix}: verb "*" on {label} was used only for {served}')
    return findings


def denials(usage: RbacUsage) -> list[str]:
    """Every denied request, as ``METHOD path: message``."""
    return [str(d) for d in usage.denied]


# -- tokens -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    identity: Identity
    authorizer: Authorizer
    usage: RbacUsage


class Accounts:
    """The tokens of a server beyond its unrestricted admin token: each bound to an identity whose requests
    an :class:`Authorizer` decides and an :class:`RbacUsage` records."""

    def __init__(self) -> None:
        self.usage = RbacUsage()
        self._tokens: dict[str, Account] = {}

    def issue(self, user: str, rbac: Authorizer | Path | str | None, usage: RbacUsage | None = None) -> str:
        """A new bearer token for ``user`` (e.g. ``system:serviceaccount:velero:ferry``), authorized by
        ``rbac`` (an Authorizer, or the path of RBAC YAML); decisions go to ``usage`` (default ``self.usage``)."""
        if rbac is None:
            raise ValueError(f"a token for {user!r} needs the RBAC that authorizes it (rbac=...)")
        authorizer = rbac if isinstance(rbac, Authorizer) else Authorizer.load(rbac)
        identity = Identity.of(user)
        registry = self.usage if usage is None else usage
        registry.register(authorizer, identity)
        token = secrets.token_urlsafe(24)
        self._tokens[token] = Account(identity, authorizer, registry)
        return token

    def admit(self, method: str, path: str, query: Mapping[str, str], authorization: str | None, admin: str) -> None:
        """Authenticate (401 unless the admin token or an issued one) and, for an issued token, authorize
        (403 unless its RBAC allows the request)."""
        if authorization == f"Bearer {admin}":
            return
        token = authorization.removeprefix("Bearer ") if authorization and authorization.startswith("Bearer ") else ""
        account = self._tokens.get(token)
        if account is None:
            raise KubeError(401, "Unauthorized", "Unauthorized")
        attributes = request_attributes(account.identity, method, path, query)
        decision = account.authorizer.authorize(attributes)
        account.usage.record(method, attributes, decision)
        if not decision.allowed:
            raise forbidden(attributes, decision.reason)

    def admit_create_on_update(
        self, method: str, path: str, query: Mapping[str, str], authorization: str | None, admin: str
    ) -> None:
        """A PUT that creates its object (create-on-update) must also be allowed to ``create`` it: the update
        handler's second authorization (``withAuthorization``), with the update's attributes but verb
        ``create``. Its 403 names only the authorizer's reason (usually none), not the user."""
        token = authorization.removeprefix("Bearer ") if authorization and authorization.startswith("Bearer ") else ""
        account = self._tokens.get(token)
        if authorization == f"Bearer {admin}" or account is None:
            return  # the admin token, or one admit() already refused
        attributes = replace(request_attributes(account.identity, method, path, query), verb="create")
        decision = account.authorizer.authorize(attributes)
        account.usage.record(method, attributes, decision)
        if not decision.allowed:
            group, resource, name = attributes.api_group, attributes.resource, attributes.name
            qualified = f"{resource}.{group}" if group else resource
            details = {k: v for k, v in (("name", name), ("group", group), ("kind", resource)) if v}
            raise Forbidden(403, f"{qualified} {_quoted(name)} is forbidden: {decision.reason}", "Forbidden", details)
