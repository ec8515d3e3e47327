"""Which snapshots a retention policy keeps, as restic's ``forget --keep-*`` decides it.

Snapshots are grouped by what they are of (``group_of``: the Velero namespace and PVC, else the host and
path they were read from), and each group is walked from the newest snapshot to the oldest. A rule keeps a
snapshot when it is the newest of a time bucket the rule has not filled yet, until the rule has kept its
count: ``last`` (every snapshot is its own bucket: the n newest), ``daily`` (a calendar day, UTC),
``weekly`` (an ISO week), ``monthly`` (a calendar month). A snapshot any rule keeps is kept, with every rule
that keeps it; the rest of the group may be forgotten. Ties in time are broken by the ID, so the result
does not depend on the order snapshots are listed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from agent.errors import ConfigError


@dataclass(frozen=True)
class Policy:
    """How many snapshots each rule keeps per group (0: the rule keeps none)."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        if min(self.last, self.daily, self.weekly, self.monthly) < 0:
            raise ConfigError("--keep-* counts must be 0 or more")

    @property
    def empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


@dataclass(frozen=True)
class Candidate:
    snapshot_id: str
    created: dt.datetime
    group: str


def group_of(source: Mapping[str, str]) -> str:
    """What a snapshot is of, from its manifest's ``source`` fields: ``velero <namespace>/<pvc>`` for a
    backup made for Velero, else ``<host>:<path>``."""
    if source.get("velero.io/backup-name"):
        return f"velero {source.get('namespace', '?')}/{source.get('pvc', '?')}"
    return f"{source.get('host', '?')}:{source.get('path', '?')}"


def _buckets() -> tuple[tuple[str, Callable[[Candidate], Hashable]], ...]:
    return (
        ("last", lambda c: c.snapshot_id),
        ("daily", lambda c: c.created.date()),
        ("weekly", lambda c: c.created.isocalendar()[:2]),
        ("monthly", lambda c: (c.created.year, c.created.month)),
    )


def kept(candidates: Sequence[Candidate], policy: Policy) -> dict[str, list[str]]:
    """The snapshots ``policy`` keeps, each with the rules that keep it (in the order last, daily, weekly,
    monthly). Raises ConfigError for an empty policy: it would forget everything."""
    if policy.empty:
        raise ConfigError("a policy needs at least one --keep-last, --keep-daily, --keep-weekly or --keep-monthly")
    counts = {"last": policy.last, "daily": policy.daily, "weekly": policy.weekly, "monthly": policy.monthly}
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.group, []).append(c)
    out: dict[str, list[str]] = {}
    for members in groups.values():
        members.sort(key=lambda c: (c.created, c.snapshot_id), reverse=True)
        for rule, bucket in _buckets():
            left = counts[rule]
            previous: Hashable = object()
            for c in members:
                if left <= 0:
                    break
                b = bucket(c)
                if b != previous:
                    previous = b
                    out.setdefault(c.snapshot_id, []).append(rule)
                    left -= 1
    return out
