"""Kubernetes ``Status`` errors, shaped and worded like the apiserver's own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Cause:
    field: str
    reason: str
    message: str

    def describe(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass(eq=False)
class KubeError(Exception):
    """An error the server answers with a ``Status`` body; also raised by the Python test controls."""

    code: int
    message: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.code} {self.reason or REASONS.get(self.code, '')}: {self.message}")
        if not self.reason:
            self.reason = REASONS.get(self.code, "Unknown")

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(qualified: str, name: str) -> dict[str, Any]:
    plural, _, group = qualified.partition(".")
    return {"name": name, "group": group, "kind": plural}


def not_found(qualified: str, name: str) -> KubeError:
    return KubeError(404, f'{qualified} "{name}" not found', "NotFound", _details(qualified, name))


def already_exists(qualified: str, name: str) -> KubeError:
    return KubeError(409, f'{qualified} "{name}" already exists', "AlreadyExists", _details(qualified, name))


def forbidden(qualified: str, name: str, why: str, causes: list[dict[str, str]] | None = None) -> KubeError:
    """403 as admission answers it: ``<resource> "<name>" is forbidden: <why>``."""
    details: dict[str, Any] = _details(qualified, name)
    if causes:
        details["causes"] = causes
    return KubeError(403, f'{qualified} "{name}" is forbidden: {why}', "Forbidden", details)


def conflict(qualified: str, name: str, why: str) -> KubeError:
    message = f'Operation cannot be fulfilled on {qualified} "{name}": {why}'
    return KubeError(409, message, "Conflict", _details(qualified, name))


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(kind_group: str, name: str, causes: list[Cause]) -> KubeError:
    """422 with ``details.causes``; ``kind_group`` is e.g. ``DataDownload.velero.io`` or ``Secret``."""
    described = [c.describe() for c in causes]
    summary = described[0] if len(described) == 1 else "[" + ", ".join(described) + "]"
    kind, _, group = kind_group.partition(".")
    details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
    }
    return KubeError(422, f'{kind_group} "{name}" is invalid: {summary}', "Invalid", details)


def bad_request(message: str) -> KubeError:
    return KubeError(400, message, "BadRequest")


def not_modelled(what: str) -> KubeError:
    return KubeError(400, f"{what} is not modelled by this test server", "BadRequest")


def expired(message: str) -> KubeError:
    return KubeError(410, message, "Expired")


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter."
)
