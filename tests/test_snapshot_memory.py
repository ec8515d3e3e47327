"""The snapshot writer's memory bounds, checked by counting, not by timing: the window never holds more
items or bytes than its limits, at most ``uploads_in_flight`` sealed packs exist at once (each is copied
out of the open pack only once it may upload), and a large file is read in windows, never whole."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.backup import sources, writer
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, SnapshotSettings

SETTINGS = SnapshotSettings(
    block_chunk_bytes=64 * KiB,
    cdc_min_bytes=64 * KiB,
    cdc_avg_bytes=128 * KiB,
    cdc_max_bytes=256 * KiB,
    pack_bytes=1 * MiB,
    uploads_in_flight=2,
    threads=2,
)


class _Watch:
    def __init__(self) -> None:
        self.items = 0
        self.pending = 0
        self.sealed = 0
        self.most_sealed = 0
        self.uploading = 0
        self.most_uploading = 0
        self.largest_read = 0


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> _Watch:
    w = _Watch()
    take, upload = writer._Stream._take, writer._Packer._upload

    async def watched_take(self: writer._Stream) -> None:
        w.items = max(w.items, len(self._items))
        w.pending = max(w.pending, self._pending)
        await take(self)

    def copied(data: bytearray) -> bytes:  # the writer's one bytes(): a sealed pack copied out of the open one
        w.sealed += 1
        w.most_sealed = max(w.most_sealed, w.sealed)
        return bytes(data)

    async def watched_upload(self: writer._Packer, ref: writer._PackRef, data: bytes) -> None:
        w.uploading += 1
        w.most_uploading = max(w.most_uploading, w.uploading)
        try:
            await asyncio.sleep(0.01)  # a slow store: packs queue up behind the uploads
            await upload(self, ref, data)
        finally:
            w.uploading -= 1
            w.sealed -= 1

    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        w.largest_read = max(w.largest_read, n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(writer._Stream, "_take", watched_take)
    monkeypatch.setattr(writer, "bytes", copied, raising=False)
    monkeypatch.setattr(writer._Packer, "_upload", watched_upload)
    monkeypatch.setattr(sources.os, "pread", pread)
    return w


def _check(w: _Watch, chunk: int) -> None:
    threads = SETTINGS.worker_threads
    assert w.items <= writer.WINDOW_ITEMS
    assert w.pending <= max(2 * threads * chunk, writer.WINDOW_BYTES)
    assert w.most_uploading <= SETTINGS.uploads_in_flight
    assert 1 <= w.most_sealed <= SETTINGS.uploads_in_flight


@pytest.mark.parametrize("repo", ["local"], indirect=True)
async def test_a_block_image_is_held_within_the_window_and_the_uploads(
    repo: Repository, tmp_path: Path, watch: _Watch
) -> None:
    image = tmp_path / "image"
    image.write_bytes(os.urandom(12 * MiB))
    made = await writer.create_snapshot(repo, str(image), SETTINGS)
    assert made.size == 12 * MiB
    assert made.packs >= 8
    _check(watch, SETTINGS.block_chunk_bytes)


@pytest.mark.parametrize("repo", ["local"], indirect=True)
async def test_a_large_file_is_read_in_windows_within_the_bounds(
    repo: Repository, tmp_path: Path, watch: _Watch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(20 * MiB))
    for i in range(300):  # small files too, in batches
        (tree / f"small-{i:03}").write_bytes(os.urandom(i * 50))
    made = await writer.create_snapshot(repo, str(tree), SETTINGS)
    assert made.size == 20 * MiB + sum(i * 50 for i in range(300))
    assert watch.largest_read <= sources.WINDOW_BYTES < 20 * MiB
    _check(watch, SETTINGS.cdc_max_bytes)


@pytest.mark.parametrize("repo", ["local"], indirect=True)
async def test_an_empty_directory_and_an_empty_image_make_empty_snapshots(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.img").write_bytes(b"")
    for source, mode in ((tmp_path / "empty", "filesystem"), (tmp_path / "empty.img", "block")):
        made = await writer.create_snapshot(repo, str(source), SETTINGS)
        assert (made.mode, made.size, made.chunks, made.packs) == (mode, 0, 0, 0)
