"""Label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and field selectors
(``=``, ``==``, ``!=`` on the fields each kind supports)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUALITY = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


def _split_requirements(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def _requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if m := _SET.match(text):
        key, operator = m.group(1), m.group(3)
        values = {v.strip() for v in m.group(4).split(",")}
        if not all(_VALUE_ONLY.match(v) for v in values):
            raise bad_request(f"unable to parse requirement: invalid label value in {text!r}")
        if operator == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: labels.get(key) not in values
    if m := _EQUALITY.match(text):
        key, operator, value = m.group(1), m.group(3), m.group(4)
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(text):
        negated, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negated
    raise bad_request(f"unable to parse requirement: {text.strip()!r} is not a supported label selector")


def label_matcher(selector: str | None) -> Matcher:
    if not selector:
        return lambda _obj: True
    requirements = [_requirement(r) for r in _split_requirements(selector)]

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r(labels) for r in requirements)

    return matches


def field_value(obj: dict[str, Any], field: str) -> str:
    node: Any = obj
    for part in field.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def field_matcher(selector: str | None, supported: frozenset[str], resource: str) -> Matcher:
    if not selector:
        return lambda _obj: True
    terms: list[tuple[str, bool, str]] = []
    for part in selector.split(","):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise bad_request(f"invalid selector: {selector!r}; can't understand {part!r}")
        field, operator, value = m.groups()
        if field not in supported:
            raise bad_request(f'field label not supported: {field} (for "{resource}")')
        terms.append((field, operator == "!=", value))

    def matches(obj: dict[str, Any]) -> bool:
        return all((field_value(obj, f) == v) != negated for f, negated, v in terms)

    return matches


def object_matcher(
    label_selector: str | None, field_selector: str | None, supported: frozenset[str], resource: str
) -> Matcher:
    labels = label_matcher(label_selector)
    fields = field_matcher(field_selector, supported, resource)
    return lambda obj: labels(obj) and fields(obj)
