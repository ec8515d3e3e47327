"""O_DIRECT writes: whole aligned blocks bypass the page cache, the rest is written plainly, and the bytes
on disk are the same either way; a device that refuses a direct write gets a plain one instead."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.pipeline import direct
from agent.pipeline.block_target import BlockTarget
from agent.pipeline.direct import ALIGN, address, open_direct, pad_for, write_split
from agent.pipeline.restore import restore
from agent.repo.repository import Repository
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from tests.support.loop import attached_loop

O_DIRECT_FLAG = os.O_DIRECT


def _flags(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError("no flags in fdinfo")


def _aligned(data: bytes, offset: int) -> memoryview:
    """``data`` in a page-aligned buffer, placed the way the decoder places a chunk bound for ``offset``."""
    buf = memoryview(mmap.mmap(-1, len(data) + 2 * ALIGN))
    pad = pad_for(offset)
    buf[pad : pad + len(data)] = data
    return buf[pad : pad + len(data)]


def test_open_direct_gives_an_o_direct_descriptor_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    dfd = open_direct(fd, os.O_WRONLY)
    try:
        assert dfd >= 0
        assert _flags(dfd) & O_DIRECT_FLAG
        assert not _flags(fd) & O_DIRECT_FLAG
        assert os.fstat(dfd).st_ino == os.fstat(fd).st_ino
    finally:
        os.close(dfd)
        os.close(fd)


def test_the_decoder_placement_lines_buffer_and_file_offsets_up() -> None:
    for offset in (0, 1, 4095, 4096, 123_457, 4 * 1024 * 1024):
        view = _aligned(b"x" * 10_000, offset)
        assert (address(view) - offset) % ALIGN == 0


@pytest.mark.parametrize("use_direct", [True, False])
def test_write_split_writes_exactly_the_bytes_at_any_offset_and_length(tmp_path: Path, use_direct: bool) -> None:
    rng = random.Random(7)
    path = tmp_path / "target"
    size = 3 * 1024 * 1024
    expected = bytearray(size)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    dfd = open_direct(fd, os.O_WRONLY) if use_direct else -1
    try:
        cases = [(0, 4096), (0, 1), (4095, 2), (4096, 8192), (100, 20_000), (size - 5000, 5000)]
        cases += [(rng.randrange(size - 70_000), rng.randrange(1, 70_000)) for _ in range(60)]
        for offset, length in cases:
            data = rng.randbytes(length)
            assert write_split(fd, dfd, _aligned(data, offset), offset)
            expected[offset : offset + length] = data
        # Also: a read-only buffer, and a misplaced (not congruent) one: both written plainly.
        write_split(fd, dfd, memoryview(b"r" * 9000), 8192)
        expected[8192 : 8192 + 9000] = b"r" * 9000
        misplaced = _aligned(b"m" * 9000, 1)
        write_split(fd, dfd, misplaced, 40_000)
        expected[40_000:49_000] = b"m" * 9000
        os.fsync(fd)
    finally:
        if dfd >= 0:
            os.close(dfd)
        os.close(fd)
    assert path.read_bytes() == bytes(expected)


@pytest.fixture
def loop_4k(tmp_path: Path) -> Iterator[str]:
    """A loop device with 4 KiB logical sectors: it refuses direct I/O aligned only to 512 bytes."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    with attached_loop(tmp_path / "backing.img", 8 * 1024 * 1024, "--sector-size", "4096") as device:
        yield device


def test_a_refused_direct_write_falls_back_to_a_plain_one(loop_4k: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Align to 512 only: the 4 KiB-sector device answers EINVAL to a direct write at offset 512.
    monkeypatch.setattr(direct, "ALIGN", 512)
    target = BlockTarget.open(loop_4k, 8 * 1024 * 1024, sparse=False, direct=True)
    data = random.Random(3).randbytes(64 * 1024)
    try:
        assert target.direct_fd >= 0
        buf = memoryview(mmap.mmap(-1, len(data) + 8192))
        view = buf[512 : 512 + len(data)]  # congruent with offset 512 modulo 512, not modulo 4096
        view[:] = data
        target.write(0, 512, view)
        assert not target._direct_ok  # the refusal turned direct writes off for this target
        target.write(0, 512 + len(data), view)  # and later writes go plainly
        target.flush()
    finally:
        target.close()
    with open(loop_4k, "rb") as f:
        f.seek(512)
        assert f.read(2 * len(data)) == data + data


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages in all), from mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(addr, size, vec) == 0
            return sum(v & 1 for v in vec), pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct_io", [True, False])
async def test_a_restore_with_direct_io_leaves_its_data_out_of_the_page_cache(
    repo: Repository, tmp_path: Path, direct_io: bool
) -> None:
    image = tmp_path / "random.img"
    image.write_bytes(random.Random(5).randbytes(8 * MiB))
    snap = await create_snapshot(repo, str(image), SnapshotSettings(block_chunk_bytes=1 * MiB, pack_bytes=4 * MiB))
    out = tmp_path / "restored.img"
    await restore(repo, snap.snapshot_id, str(out), RestoreSettings(direct_io=direct_io))
    resident, pages = _resident_pages(out)
    if direct_io:
        assert resident == 0, f"{resident} of {pages} pages went through the page cache"
    else:
        assert resident == pages
    assert out.read_bytes() == image.read_bytes()


async def test_a_tree_restore_writes_unaligned_chunks_directly_except_their_edges(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(random.Random(6).randbytes(12 * MiB + 777))
    snap = await create_snapshot(repo, str(src), SnapshotSettings())
    manifest = await repo.read_manifest(snap.snapshot_id)
    chunks = len(manifest.entries[-1].content)
    assert chunks > 3, "content-defined chunks start at unaligned offsets"
    out = tmp_path / "out"
    await restore(repo, snap.snapshot_id, str(out), RestoreSettings())
    resident, pages = _resident_pages(out / "big.bin")
    assert resident <= 2 * chunks, f"{resident} of {pages} pages went through the page cache"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
