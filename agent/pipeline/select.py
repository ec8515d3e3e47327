"""Restoring part of a filesystem snapshot (``restore --include PATTERN``): the manifest cut down to the
entries the patterns select, which the restore then plans and writes as a whole snapshot.

A pattern is matched against each entry's path in the snapshot (``fnmatch``, case-sensitive: ``*``
and ``?`` also match ``/``, as in restic's ``--include``); a leading or trailing ``/`` is ignored. An
entry is selected when a pattern matches its path or the path of a directory above it (so a directory
brings everything beneath it). The directories above a selected entry are kept too, with their metadata,
so the selection lands at the same place in the target. A selected hardlink whose file is not selected
becomes that file (its data, its metadata) under the link's path. Only chunks the selection uses are
fetched: planning places only the chunks the entries refer to.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Sequence
from fnmatch import fnmatchcase

from agent.errors import ConfigError
from agent.repo.format import Entry, Manifest


def _selected(path: str, patterns: Sequence[str]) -> bool:
    while path:
        if any(fnmatchcase(path, p) for p in patterns):
            return True
        path = posixpath.dirname(path)
    return False


def select_entries(manifest: Manifest, patterns: Sequence[str], snapshot_id: str = "") -> Manifest:
    """``manifest`` with only the entries ``patterns`` select (see the module docstring), and its size the
    sum of theirs. Raises ConfigError for a block snapshot, an empty pattern, or a selection of nothing."""
    what = f"snapshot {snapshot_id}" if snapshot_id else "the snapshot"
    if manifest.mode != "filesystem":
        raise ConfigError(f"--include selects files: {what} is of a block volume")
    cleaned = [p.strip("/") for p in patterns]
    if not all(cleaned):
        raise ConfigError("--include needs a pattern (a path in the snapshot, or a glob such as 'logs/*.txt')")
    chosen = {e.path for e in manifest.entries if _selected(e.path, cleaned)}
    if not chosen:
        raise ConfigError(f"--include {' '.join(patterns)} matches nothing in {what}")
    keep = set(chosen)
    for path in chosen:
        parent = posixpath.dirname(path)
        while parent and parent not in keep:
            keep.add(parent)
            parent = posixpath.dirname(parent)
    files = {e.path: e for e in manifest.entries if e.type == "file"}
    entries: list[Entry] = []
    for e in manifest.entries:
        if e.path not in keep:
            continue
        if e.type == "hardlink" and e.target not in keep:
            leader = files[e.target]
            e = Entry(e.path, "file", leader.meta, leader.size, leader.content)  # noqa: PLW2901 - the file it links
        entries.append(e)
    size = sum(e.size for e in entries if e.type == "file")
    return dataclasses.replace(manifest, entries=tuple(entries), size=size)
