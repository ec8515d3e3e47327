"""``spec.dataMoverConfig``: Velero's keys and Ferry's own, turned into the restore's settings.

    WriteSparseFiles        true/false   block targets: skip holes instead of zeroing them (``sparse``)
    ParallelFilesDownload   integer ≥ 1  decompress/verify/write threads (``threads``)
    ferry.threads           integer ≥ 1  the same, Ferry's name (wins over ParallelFilesDownload)
    ferry.readsInFlight     integer ≥ 1  ranged GETs in flight (``reads_in_flight``)
    ferry.memory            size         every buffer a restore holds (``memory_bytes``)
    ferry.maxRangeBytes     size         largest coalesced GET (``max_range_bytes``)
    ferry.directIO          true/false   write with O_DIRECT where it lines up (``direct_io``)
    ferry.inPlace           true/false   restore into the target PVC where a running pod mounts it, instead
                                         of into a new volume handed to the PVC (hand-written objects only)

Sizes take binary units (``256MiB``). Unknown keys are returned so the caller can report them; an
invalid value raises ConfigError, which fails the DataDownload before any byte is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from agent.errors import ConfigError
from agent.settings import RestoreSettings, parse_bool, parse_positive_int, parse_size
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
KNOWN_KEYS = frozenset(_KEYS) | {IN_PLACE_KEY}


def restore_settings_for(config: Mapping[str, str], defaults: RestoreSettings) -> tuple[RestoreSettings, list[str]]:
    """The settings for one restore, and the keys of ``config`` that mean nothing to Ferry."""
    changes: dict[str, object] = {}
    if IN_PLACE_KEY in config:
        parse_bool(config[IN_PLACE_KEY], f"spec.dataMoverConfig.{IN_PLACE_KEY}")
    # Ferry's own names are applied after Velero's so that they win.
    for key in sorted(config, key=lambda k: k.startswith("ferry.")):
        if key not in _KEYS:
            continue
        name, parse = _KEYS[key]
        changes[name] = parse(config[key], f"spec.dataMoverConfig.{key}")
    try:
        settings = dataclasses.replace(defaults, **changes)  # type: ignore[arg-type]
    except ConfigError as e:
        raise ConfigError(f"spec.dataMoverConfig: {e}") from None
    return settings, sorted(k for k in config if k not in KNOWN_KEYS)
