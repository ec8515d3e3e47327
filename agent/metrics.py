"""Prometheus metrics of one agent, in a registry of its own (several agents may share a process in tests).

ferry_restores{phase}                          DataDownloads this agent holds now: Queued, InProgress, Canceling
ferry_restores_finished_total{phase}           restores this agent ended: Completed, Failed, Canceled, Interrupted
ferry_restored_bytes_total                     bytes written to targets (holes included)
ferry_backups{phase}                           DataUploads this agent holds now: Queued, InProgress, Canceling
ferry_backups_finished_total{phase}            backups this agent ended: Completed, Failed, Canceled, Interrupted
ferry_backed_up_bytes_total                    bytes read from backed-up volumes
ferry_fetch_seconds                            latency of one ranged GET of a pack, retries included
ferry_storage_retries_total                    object-storage requests retried after a transient failure
ferry_chunk_verification_failures_total        chunks that failed decompression or their BLAKE3 check
ferry_inflight_bytes                           fetched bytes not yet written, over all running restores
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
HELD_PHASES = ("Queued", "InProgress", "Canceling")
FINISHED_PHASES = ("Completed", "Failed", "Canceled", "Interrupted")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.restores = Gauge("ferry_restores", "DataDownloads this agent holds, by phase", ["phase"], registry=r)
        self.finished = Counter(
            "ferry_restores_finished", "Restores this agent ended, by final phase", ["phase"], registry=r
        )
        self.backups = Gauge("ferry_backups", "DataUploads this agent holds, by phase", ["phase"], registry=r)
        self.backups_finished = Counter(
            "ferry_backups_finished", "Backups this agent ended, by final phase", ["phase"], registry=r
        )
        for phase in HELD_PHASES:
            self.restores.labels(phase)
            self.backups.labels(phase)
        for phase in FINISHED_PHASES:
            self.finished.labels(phase)
            self.backups_finished.labels(phase)
        self.backed_up_bytes = Counter("ferry_backed_up_bytes", "Bytes read from backed-up volumes", registry=r)
        self.restored_bytes = Counter("ferry_restored_bytes", "Bytes written to restore targets", registry=r)
        self.fetch_seconds = Histogram(
            "ferry_fetch_seconds",
            "Latency of one ranged GET of a pack (retries included)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.storage_retries = Counter(
            "ferry_storage_retries", "Object-storage requests retried after a transient failure", registry=r
        )
        self.verification_failures = Counter(
            "ferry_chunk_verification_failures",
            "Chunks that failed decompression or their BLAKE3 check (each fetch counts)",
            registry=r,
        )
        self.maintenance_passes = Counter(
            "ferry_maintenance_passes", "Repository maintenance passes this agent ran (as the leader)", registry=r
        )
        self.maintenance_failures = Counter(
            "ferry_maintenance_failures",
            "Storage locations a maintenance pass could not maintain, or found damaged",
            registry=r,
        )
        self.snapshots_forgotten = Counter(
            "ferry_snapshots_forgotten", "Snapshots forgotten because their Velero backup no longer exists", registry=r
        )
        self.pruned_bytes = Counter("ferry_pruned_bytes", "Bytes of packs deleted by maintenance prunes", registry=r)
        self.inflight_bytes = Gauge(
            "ferry_inflight_bytes", "Fetched bytes not yet written, over all running restores", registry=r
        )

    def track_inflight(self, read: Callable[[], float]) -> None:
        """Report ``read()`` as the in-flight bytes whenever the metrics are scraped."""
        self.inflight_bytes.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
