"""``spec.dataMoverConfig``: Velero's keys and Ferry's own, turned into a restore's or a backup's settings.

A DataDownload's (restore):

    WriteSparseFiles        true/false   block targets: skip holes instead of zeroing them (``sparse``)
    ParallelFilesDownload   integer ≥ 1  decompress/verify/write threads (``threads``)
    ferry.threads           integer ≥ 1  the same, Ferry's name (wins over ParallelFilesDownload)
    ferry.readsInFlight     integer ≥ 1  ranged GETs in flight (``reads_in_flight``)
    ferry.memory            size         every buffer a restore holds (``memory_bytes``)
    ferry.maxRangeBytes     size         largest coalesced GET (``max_range_bytes``)
    ferry.directIO          true/false   write with O_DIRECT where it lines up (``direct_io``)
    ferry.inPlace           true/false   restore into the target PVC where a running pod mounts it, instead
                                         of into a new volume handed to the PVC (hand-written objects only)

A DataUpload's (backup):

    ParallelFilesUpload     integer ≥ 1  read/hash/compress threads (``SnapshotSettings.threads``)
    ferry.threads           integer ≥ 1  the same, Ferry's name (wins over ParallelFilesUpload)

Sizes take binary units (``256MiB``). Unknown keys are returned so the caller can report them; an
invalid value raises ConfigError, which fails the DataDownload before any byte is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TypeVar

from agent.errors import ConfigError
from agent.settings import RestoreSettings, SnapshotSettings, parse_bool, parse_positive_int, parse_size
from agent.velero.objects import IN_PLACE_KEY

_KEYS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "WriteSparseFiles": ("sparse", parse_bool),
    "ParallelFilesDownload": ("threads", parse_positive_int),
    "ferry.threads": ("threads", parse_positive_int),
    "ferry.readsInFlight": ("reads_in_flight", parse_positive_int),
    "ferry.memory": ("memory_bytes", parse_size),
    "ferry.maxRangeBytes": ("max_range_bytes", parse_size),
    "ferry.directIO": ("direct_io", parse_bool),
}
_BACKUP_KEYS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "ParallelFilesUpload": ("threads", parse_positive_int),
    "ferry.threads": ("threads", parse_positive_int),
}
KNOWN_KEYS = frozenset(_KEYS) | frozenset(_BACKUP_KEYS) | {IN_PLACE_KEY}


S = TypeVar("S", RestoreSettings, SnapshotSettings)


def _apply(config: Mapping[str, str], keys: dict[str, tuple[str, Callable[[str, str], object]]], defaults: S) -> S:
    changes: dict[str, object] = {}
    # Ferry's own names are applied after Velero's so that they win.
    for key in sorted(config, key=lambda k: k.startswith("ferry.")):
        if key not in keys:
            continue
        name, parse = keys[key]
        changes[name] = parse(config[key], f"spec.dataMoverConfig.{key}")
    try:
        return dataclasses.replace(defaults, **changes)  # type: ignore[arg-type]
    except ConfigError as e:
        raise ConfigError(f"spec.dataMoverConfig: {e}") from None


def restore_settings_for(config: Mapping[str, str], defaults: RestoreSettings) -> tuple[RestoreSettings, list[str]]:
    """The settings for one restore, and the keys of ``config`` that mean nothing to Ferry. Raises
    ConfigError for an invalid value."""
    if IN_PLACE_KEY in config:
        parse_bool(config[IN_PLACE_KEY], f"spec.dataMoverConfig.{IN_PLACE_KEY}")
    return _apply(config, _KEYS, defaults), sorted(k for k in config if k not in KNOWN_KEYS)


def backup_settings_for(config: Mapping[str, str], defaults: SnapshotSettings) -> tuple[SnapshotSettings, list[str]]:
    """The settings for one backup, and the keys of ``config`` that mean nothing to Ferry (restore keys
    are not reported: one configuration may serve both). Raises ConfigError for an invalid value."""
    return _apply(config, _BACKUP_KEYS, defaults), sorted(k for k in config if k not in KNOWN_KEYS)
