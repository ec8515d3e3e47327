"""What a repository holds, in the figures restic's ``stats`` and kopia's ``content stats`` give: how much
its snapshots restore, how much distinct data they share, and what that takes in storage."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import RepositoryError
from agent.repo.locate import Locator
from agent.repo.repository import Repository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepoStats:
    snapshots: int
    """Snapshots whose manifest could be read (``unreadable`` lists the others)."""
    unreadable: tuple[str, ...]
    restore_bytes: int
    """What restoring every snapshot would write: the sum of their sizes (holes included)."""
    unique_chunks: int
    """Distinct chunks the snapshots refer to."""
    unique_bytes: int
    """Their bytes before compression: the data there is once duplicates are counted once."""
    referenced_stored_bytes: int
    """Their bytes as stored (compressed)."""
    packs: int
    pack_bytes: int
    """Everything in the packs, referenced or not (what the repository takes in storage, manifests aside)."""
    unreferenced_bytes: int = 0
    """Bytes of the packs no readable snapshot refers to: left by interrupted snapshots or forgotten ones
    (what ``repo prune`` removes)."""

    @property
    def dedup_ratio(self) -> float:
        """Restore bytes per distinct byte (1.0: nothing shared)."""
        return self.restore_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        """Distinct bytes per stored byte."""
        return self.unique_bytes / self.referenced_stored_bytes if self.referenced_stored_bytes else 1.0


async def repository_stats(repo: Repository) -> RepoStats:
    """Read every manifest (one at a time) and list the packs once. Unreadable manifests are counted apart,
    not fatal. Raises storage errors."""
    locator = await Locator.open(repo)
    sizes = locator.sizes
    seen: dict[bytes, tuple[int, int]] = {}
    restore = 0
    readable = 0
    unreadable: list[str] = []
    referenced: set[str] = set()
    for snapshot_id in await repo.snapshot_ids():
        try:
            manifest = await repo.read_manifest(snapshot_id)
        except RepositoryError as e:
            log.warning("snapshot %s cannot be read: %s", snapshot_id, e)
            unreadable.append(snapshot_id)
            continue
        readable += 1
        restore += manifest.size
        manifest = await locator.relocate(manifest)  # where a prune moved chunks to
        referenced.update(manifest.packs[i] for i in set(manifest.chunks.columns().pack))
        for rec in manifest.chunks:
            seen.setdefault(rec.id, (rec.plain, rec.stored))
    return RepoStats(
        snapshots=readable,
        unreadable=tuple(unreadable),
        restore_bytes=restore,
        unique_chunks=len(seen),
        unique_bytes=sum(plain for plain, _ in seen.values()),
        referenced_stored_bytes=sum(stored for _, stored in seen.values()),
        packs=len(sizes),
        pack_bytes=sum(max(0, s) for s in sizes.values()),
        unreferenced_bytes=sum(max(0, s) for name, s in sizes.items() if name not in referenced),
    )
