"""Naming a snapshot as restic users do: a whole ID, a unique prefix of at least 4 hex digits, or
``latest`` (``agent.repo.repository``: ``check_reference``, ``match_snapshot``, ``created_at``,
``Repository.resolve``), and what the command line makes of it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError, SnapshotNotFound
from agent.repo.repository import MIN_PREFIX, check_reference, created_at, match_snapshot
from tests.support.cli import ferry

ID = st.text("0123456789abcdef", min_size=64, max_size=64)


@given(ids=st.lists(ID, max_size=12, unique=True), probe=ID, length=st.integers(MIN_PREFIX, 63))
def test_a_prefix_names_the_one_id_it_starts_or_is_refused(ids: list[str], probe: str, length: int) -> None:
    prefix = probe[:length]
    starting = [i for i in ids if i.startswith(prefix)]
    if len(starting) == 1:
        assert match_snapshot(prefix, ids) == starting[0]
    elif not starting:
        with pytest.raises(SnapshotNotFound, match=f"no snapshot ID starts with {prefix}"):
            match_snapshot(prefix, ids)
    else:
        with pytest.raises(ConfigError, match="give more digits"):
            match_snapshot(prefix, ids)


def test_two_ids_sharing_a_prefix_are_ambiguous_until_it_tells_them_apart() -> None:
    a, b = "abcd" + "0" * 60, "abcd" + "1" + "0" * 59
    with pytest.raises(ConfigError, match="abcd is the prefix of 2 snapshot IDs"):
        match_snapshot("abcd", [a, b])
    assert match_snapshot("abcd1", [a, b]) == b


@pytest.mark.parametrize("reference", ["", "abc", "latests", "xyz1", "ABCD" + "g", "a" * 65, "../abcd"])
def test_what_cannot_name_a_snapshot_is_refused_before_anything_is_read(reference: str) -> None:
    with pytest.raises(ConfigError, match="is not a snapshot ID"):
        check_reference(reference)


@pytest.mark.parametrize("reference", ["latest", " LATEST ", "abcd", "ABCDEF12", "f" * 64])
def test_ids_prefixes_and_latest_are_taken_in_any_case(reference: str) -> None:
    assert check_reference(reference) == reference.strip().lower()


def test_created_orders_old_and_new_formats_and_puts_nonsense_first() -> None:
    old = created_at("2026-11-30T04:00:00Z")
    new = created_at("2026-11-30T04:00:00.500000Z")
    later = created_at("2026-11-30T04:00:01Z")
    assert created_at("x") < old < new < later
    assert new.tzinfo == dt.UTC


def test_show_and_restore_by_short_id_and_latest(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert ferry("repo", "init", "--repo", repo).returncode == 0
    empty = ferry("restore", "--repo", repo, "--snapshot", "latest", str(tmp_path / "none"))
    assert empty.returncode == 1
    assert empty.stderr.strip() == f"ferry: there is no readable snapshot in file://{repo}, so no latest one"
    first_src = tmp_path / "first"
    first_src.mkdir()
    (first_src / "a.txt").write_text("first\n")
    second_src = tmp_path / "second"
    second_src.mkdir()
    (second_src / "a.txt").write_text("second\n")
    first = ferry("snapshot", "create", "--repo", repo, str(first_src)).stdout.strip()
    second = ferry("snapshot", "create", "--repo", repo, str(second_src)).stdout.strip()
    assert len({first, second}) == 2

    shown = ferry("snapshot", "show", "--repo", repo, "--json", first[:8].upper())
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == first
    restored = ferry("restore", "--repo", repo, "--snapshot", "latest", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "out" / "a.txt").read_text() == "second\n"
    assert restored.stdout.strip() == f"restored {second} to {tmp_path / 'out'}"

    absent = next(p * 4 for p in "0123456789abcdef" if not first.startswith(p * 4) and not second.startswith(p * 4))
    missing = ferry("snapshot", "show", "--repo", repo, absent)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"ferry: no snapshot ID starts with {absent} in file://{repo}"
    short = ferry("snapshot", "show", "--repo", repo, first[:3])
    assert short.returncode == 2
    assert "is not a snapshot ID" in short.stderr
