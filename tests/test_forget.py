"""``ferry snapshot forget``: by name, and by a retention policy as restic's ``forget --keep-*`` decides it
(``agent.repo.retention``): properties of the policy over generated histories, then the command."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.repo.retention import Candidate, Policy, group_of, kept
from tests.support.cli import ferry

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

histories = st.lists(
    st.tuples(st.integers(0, 400 * 24), st.sampled_from(["a", "b"])),  # hours after T0, group
    max_size=40,
).map(lambda rows: [Candidate(f"{i:064x}", T0 + dt.timedelta(hours=h), g) for i, (h, g) in enumerate(rows)])
counts = st.integers(0, 6)


@given(histories, counts, counts, counts, counts)
def test_a_policy_keeps_what_its_rules_say_and_nothing_else(
    history: list[Candidate], last: int, daily: int, weekly: int, monthly: int
) -> None:
    policy = Policy(last, daily, weekly, monthly)
    if policy.empty:
        with pytest.raises(ConfigError):
            kept(history, policy)
        return
    keep = kept(history, policy)
    assert set(keep) <= {c.snapshot_id for c in history}
    assert kept(list(reversed(history)), policy) == keep, "the order snapshots are listed in matters"
    for group in ("a", "b"):
        members = sorted((c for c in history if c.group == group), key=lambda c: (c.created, c.snapshot_id))
        newest_first = list(reversed(members))
        # last: exactly the n newest
        assert {c.snapshot_id for c in newest_first[:last]} == {
            c.snapshot_id for c in members if "last" in keep.get(c.snapshot_id, [])
        }
        for rule, n, bucket in (
            ("daily", daily, lambda c: c.created.date()),
            ("weekly", weekly, lambda c: c.created.isocalendar()[:2]),
            ("monthly", monthly, lambda c: (c.created.year, c.created.month)),
        ):
            by_rule = [c for c in members if rule in keep.get(c.snapshot_id, [])]
            buckets = [bucket(c) for c in by_rule]
            assert len(buckets) == len(set(buckets)) <= n  # one per bucket, at most n
            for c in by_rule:  # each is the newest of its bucket
                assert c == max(
                    (m for m in members if bucket(m) == bucket(c)), key=lambda m: (m.created, m.snapshot_id)
                )
            newest_buckets = list(dict.fromkeys(bucket(c) for c in newest_first))[:n]
            assert buckets[::-1] == newest_buckets[: len(buckets)]  # the most recent buckets
            assert len(buckets) == min(n, len(newest_buckets))
        if members:  # any rule keeps the newest of a group
            assert newest_first[0].snapshot_id in keep


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="0 or more"):
        Policy(last=-1)


def test_groups_are_velero_pvcs_or_host_and_path() -> None:
    assert group_of({"velero.io/backup-name": "b", "namespace": "app", "pvc": "data", "path": "/x"}) == (
        "velero app/data"
    )
    assert group_of({"host": "h", "path": "/srv"}) == "h:/srv"


def _ids(repo: str) -> list[str]:
    listed = ferry("snapshot", "list", "--repo", repo, "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(r["id"] for r in json.loads(listed.stdout))


def test_forget_by_name_and_by_policy(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    source = tmp_path / "src"
    source.mkdir()
    made = []
    for n in range(4):
        (source / "v.txt").write_text(f"version {n}\n")
        made.append(ferry("snapshot", "create", "--repo", repo, str(source)).stdout.strip())
    assert _ids(repo) == sorted(made)

    usage = ferry("snapshot", "forget", "--repo", repo)
    assert usage.returncode == 2
    assert "name the snapshots to forget, or give a policy" in usage.stderr

    shown = ferry("snapshot", "forget", "--repo", repo, "--keep-last", "2", "--json")
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    assert plan["applied"] is False
    assert sorted(plan["forget"]) == sorted(made[:2])
    assert sorted(plan["keep"]) == sorted(made[2:])
    assert _ids(repo) == sorted(made), "a policy without --apply changed the repository"

    dry = ferry("snapshot", "forget", "--repo", repo, made[0][:8], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1] == "would forget 1 snapshot(s); nothing was changed"
    assert _ids(repo) == sorted(made)

    one = ferry("snapshot", "forget", "--repo", repo, made[0][:8])
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip().splitlines() == [
        f"forget {made[0]}",
        "forgot 1 snapshot(s); their data stays in the repository's packs",
    ]
    assert _ids(repo) == sorted(made[1:])

    applied = ferry("snapshot", "forget", "--repo", repo, "--keep-last", "1", "--apply")
    assert applied.returncode == 0, applied.stderr
    assert _ids(repo) == [made[3]]
    restored = ferry("restore", "--repo", repo, "--snapshot", "latest", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "out" / "v.txt").read_text() == "version 3\n"

    gone = ferry("snapshot", "forget", "--repo", repo, made[0])
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"ferry: snapshot {made[0]} does not exist in file://{repo}"
