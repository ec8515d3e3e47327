"""The restore's pacing: reads in flight and range size follow the link, within the caps and the memory."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.backup.writer import create_snapshot
from agent.pipeline.pacing import Pacer
from agent.pipeline.plan import ChunkJob, FetchRange
from agent.pipeline.restore import restore
from agent.pipeline.transfer import TransferStats, split
from agent.repo.repository import Repository
from agent.settings import KiB, MiB, RestoreSettings, SnapshotSettings
from agent.storage.s3 import S3Storage
from tests.support.data import write_mixed_image
from tests.support.link_proxy import LinkProxy
from tests.support.seaweed import SeaweedServer, s3_settings_for

BUDGET = 80 * MiB


def test_before_any_answer_ranges_are_the_cap_and_reads_start_small() -> None:
    pacer = Pacer(max_reads=32, max_range=8 * MiB, budget=BUDGET, threads=2)
    assert pacer.range_bytes() == 8 * MiB
    assert pacer.reads() == 4, "one per decoding thread and two more, until the link is measured"
    assert Pacer(max_reads=32, max_range=8 * MiB, budget=16 * MiB, threads=2).reads() == 2, "within the memory"


def test_a_slow_link_gets_smaller_ranges_and_more_reads_than_loopback() -> None:
    loopback = Pacer(max_reads=32, max_range=8 * MiB, budget=BUDGET, threads=2)
    far = Pacer(max_reads=32, max_range=8 * MiB, budget=BUDGET, threads=2)
    for _ in range(20):
        loopback.fetched(8 * MiB, 0.001, 0.001 + 8 * MiB / 1e9)
        loopback.decoded(8 * MiB, 8 * MiB / 300e6)
        far.fetched(8 * MiB, 0.050, 0.050 + 8 * MiB / 50e6)
        far.decoded(8 * MiB, 8 * MiB / 300e6)
    assert loopback.range_bytes() == 8 * MiB
    assert far.range_bytes() < 4 * MiB
    assert far.reads() > 2 * loopback.reads()
    assert far.reads() * far.range_bytes() <= BUDGET


def test_near_storage_gets_only_the_reads_that_keep_the_decoders_busy() -> None:
    """Little's law: at 1 ms and 1 GB/s per connection, a few 8 MiB reads feed two decoders at 300 MB/s
    each; more would only wait for a decoder, holding memory (and lost if the restore is killed)."""
    pacer = Pacer(max_reads=32, max_range=8 * MiB, budget=BUDGET, threads=2)
    for _ in range(20):
        pacer.fetched(8 * MiB, 0.001, 0.001 + 8 * MiB / 1e9)
        pacer.decoded(8 * MiB, 8 * MiB / 300e6)
    assert pacer.reads() == 4  # ceil(1.5 * 600 MB/s * 9.4 ms / 8 MiB) = 2, and one per decoding thread
    assert pacer.reads() < BUDGET // pacer.range_bytes()


@given(
    latency=st.floats(1e-4, 2.0),
    rate=st.floats(1e5, 1e10),
    decode=st.floats(1e6, 1e10),
    cap=st.integers(1, 64),
    max_range=st.integers(64 * KiB, 64 * MiB),
    budget=st.integers(64 * KiB, 1024 * MiB),
)
def test_the_pacer_stays_within_its_caps_and_the_memory(
    latency: float, rate: float, decode: float, cap: int, max_range: int, budget: int
) -> None:
    pacer = Pacer(max_reads=cap, max_range=max_range, budget=budget, threads=2)
    pacer.fetched(max_range, latency, latency + max_range / rate)
    pacer.decoded(max_range, max_range / decode)
    size, reads = pacer.range_bytes(), pacer.reads()
    assert min(pacer.min_range, max_range) <= size <= max_range
    assert 1 <= reads <= cap
    assert reads == 1 or reads * size <= budget


@given(
    chunks=st.lists(st.tuples(st.integers(0, 3 * MiB), st.integers(1, 3 * MiB)), min_size=1, max_size=40),
    size=st.integers(64 * KiB, 8 * MiB),
)
def test_a_split_range_covers_every_chunk_in_order_within_the_size(chunks: list[tuple[int, int]], size: int) -> None:
    jobs, offset = [], 0
    for i, (gap, stored) in enumerate(chunks):
        offset += gap if i else 0
        jobs.append(ChunkJob(i, b"", offset, stored, stored, [(0, 0)]))
        offset += stored
    whole = FetchRange("p", jobs[0].offset, offset - jobs[0].offset, jobs)
    pieces = split(whole, size)
    assert [j.index for p in pieces for j in p.chunks] == list(range(len(jobs)))
    for p in pieces:
        assert p.pack == "p"
        assert p.offset == p.chunks[0].offset
        assert all(p.offset <= j.offset and j.offset + j.stored <= p.offset + p.length for j in p.chunks)
        assert p.length <= size or len(p.chunks) == 1


def test_slow_down_halves_the_reads_once_per_round_and_they_come_back() -> None:
    pacer = Pacer(max_reads=16, max_range=1 * MiB, budget=64 * MiB, threads=2)
    pacer.fetched(MiB, 0.010, 0.020)
    assert pacer.reads() == 16
    pacer.in_flight = 16
    pacer.throttles(1)
    assert pacer.reads() == 8
    pacer.throttles(2)  # the same burst: no second cut within a round
    assert pacer.reads() == 8
    for _ in range(200):
        pacer.fetched(MiB, 0.010, 0.020)
    assert pacer.reads() == 16
    assert pacer.throttled_reads is None


@pytest.fixture
async def linked(s3_server: SeaweedServer, bucket: str) -> AsyncIterator[tuple[S3Storage, LinkProxy]]:
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    proxy = LinkProxy(port, delay_s=0.030, rate=20e6).start()
    settings = dataclasses.replace(s3_settings_for(s3_server), endpoint_url=proxy.endpoint)
    storage = await S3Storage.open(settings, bucket, "paced")
    try:
        yield storage, proxy
    finally:
        await storage.aclose()
        proxy.stop()


async def test_over_a_slow_link_the_restore_fetches_more_smaller_ranges_at_once(
    linked: tuple[S3Storage, LinkProxy], tmp_path: Path
) -> None:
    storage, _ = linked
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(4).randbytes(48 * MiB))
    repo = Repository(storage)
    snap = await create_snapshot(repo, str(image), SnapshotSettings(block_chunk_bytes=256 * KiB, threads=2))
    stats = TransferStats()
    settings = RestoreSettings(memory_bytes=32 * MiB, max_range_bytes=2 * MiB)
    await restore(repo, snap.snapshot_id, str(tmp_path / "out.img"), settings, stats=stats)
    assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
    assert stats.range_bytes < settings.max_range_bytes, "30 ms before each answer: smaller ranges"
    assert stats.most_reads_in_flight > 32 * MiB // settings.max_range_bytes, "and more of them at once"


async def test_slow_down_answers_are_retried_and_the_restore_completes(
    linked: tuple[S3Storage, LinkProxy], tmp_path: Path
) -> None:
    storage, proxy = linked
    image = write_mixed_image(tmp_path / "disk.img", 8 * MiB, seed=5, run=MiB)
    repo = Repository(storage)
    snap = await create_snapshot(repo, str(image), SnapshotSettings(block_chunk_bytes=256 * KiB, threads=2))
    proxy.slow_down = 6
    await restore(repo, snap.snapshot_id, str(tmp_path / "out.img"), RestoreSettings(max_range_bytes=MiB))
    assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
    assert proxy.slowed == 6
    assert storage.throttles() == 6
