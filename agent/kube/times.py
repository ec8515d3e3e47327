"""Times as Kubernetes objects carry them: RFC 3339 in UTC, whole seconds, a trailing 'Z'."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    """The current time in UTC, truncated to whole seconds (what a ``metav1.Time`` keeps)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def timestamp(when: dt.datetime) -> str:
    """RFC 3339 in UTC with a 'Z', as Kubernetes writes times."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_since(when: dt.datetime | None) -> float:
    """Seconds from ``when`` to now (0 when unknown: a wait that has not visibly started)."""
    return (now() - when).total_seconds() if when is not None else 0.0


def parse_time(text: object) -> dt.datetime | None:
    """A timestamp written by :func:`timestamp` (or any RFC 3339 time); None when absent or malformed."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
