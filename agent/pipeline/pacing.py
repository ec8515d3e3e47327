"""How many ranged GETs a restore keeps in flight, and how large each is, from what the link shows.

A GET of ``S`` bytes holds its receive buffer for about ``L + S / R`` (``L``: the time the store takes to
start answering, ``R``: the rate one connection delivers) and then while it is decoded. With ``M`` bytes of
receive buffers and at most ``N`` GETs at once, the fetch rate is at most ``min(N * S, M) / (L + S / R)``:
it grows with ``S`` up to ``M / N`` (where the cap on reads and the memory bind together) and falls
beyond it. On loopback (``L`` near 0) every ``S`` fetches faster than the decoders take bytes, and large
ranges cost less CPU (fewer requests); on a link with a long ``L``, ``M / N`` fetches fastest. The decoders
take ``C`` stored bytes a second (measured: bytes decoded per second of a decoding thread's time, times the
threads). So the range size is the larger of ``M / N`` and the largest size that still fetches
``HEADROOM * C``:

    S = max(M / N, R * (M / (HEADROOM * C) - L)), within [min_range, max_range]
    reads in flight = min(M / S, HEADROOM * C * (L + S / R) / S + threads), within [1, N]

The second bound on the reads is Little's law: that many GETs in flight deliver ``HEADROOM * C``, plus one
range per decoding thread being decoded. More would only wait for a decoder, holding memory (and be
fetched again if the restore is killed: ``resume``).

The settings ``max_range_bytes`` and ``reads_in_flight`` are the caps ``max_range`` and ``N``, never
exceeded. ``L``, ``R`` and the decode rate are moving averages over the last GETs (weight ``ALPHA``
each); until the first GET answers, ranges are ``max_range`` and reads at most ``threads + 2`` (a slow
start: a restore killed in its first moments loses little, and a near store never needs more).

Throttling: an answer asking to slow down (503 SlowDown, 429, counted by the storage) halves the reads in
flight (at most once per round of GETs in flight); each GET that succeeds without one gives back 1/n of a
read (so a whole read per round, as TCP's congestion avoidance does), up to what the formula allows.

Every number here is in bytes and seconds. The pacer is used from the event loop only.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from agent.settings import MiB

ALPHA = 0.2
"""Weight of the newest sample in the moving averages."""
MIN_RANGE = 1 * MiB
"""The smallest range size the pacer picks (a single larger chunk is still fetched whole)."""
ASSUMED_DECODE_RATE = 400e6
"""Stored bytes a second one decoding thread takes, until measured."""
HEADROOM = 1.5
"""The fetch rate aimed at, as a multiple of what the decoders take (the measured rates are averages; the
machine's cores also serve the event loop)."""


def _average(old: float | None, sample: float) -> float:
    return sample if old is None else old + ALPHA * (sample - old)


@dataclass
class Pacer:
    """Reads in flight and range size for one restore (see the module's docstring)."""

    max_reads: int
    """``reads_in_flight``: never more GETs at once."""
    max_range: int
    """``max_range_bytes``: never larger ranges (but a larger chunk is fetched whole)."""
    budget: int
    """Bytes of receive buffers the restore may hold."""
    threads: int
    """Decoding threads."""
    min_range: int = MIN_RANGE
    latency: float | None = None
    """Seconds until the store starts answering (moving average)."""
    rate: float | None = None
    """Bytes a second one connection delivers once it answers (moving average)."""
    decode_rate: float | None = None
    """Stored bytes a second one decoding thread takes (moving average)."""
    throttled_reads: float | None = None
    """Reads in flight allowed since the store last asked to slow down (None: it has not)."""
    in_flight: int = 0
    _throttles: int = 0
    _last_cut: float = field(default=-1.0)
    _changed: asyncio.Condition | None = None

    def __post_init__(self) -> None:
        self.min_range = min(self.min_range, self.max_range)

    def range_bytes(self) -> int:
        """The size of the next range to fetch."""
        if self.latency is None or self.rate is None:
            return self.max_range
        decode = self.threads * (self.decode_rate or ASSUMED_DECODE_RATE)
        enough = self.rate * (self.budget / (HEADROOM * decode) - self.latency)
        shared = self.budget / self.max_reads
        return int(min(self.max_range, max(self.min_range, enough, shared)))

    def reads(self) -> int:
        """How many GETs may be in flight now."""
        size = self.range_bytes()
        reads = max(1, min(self.max_reads, self.budget // size))
        if self.latency is None or self.rate is None:  # nothing measured yet: start as TCP does, small
            reads = max(1, min(reads, self.threads + 2))
        else:
            decode = self.threads * (self.decode_rate or ASSUMED_DECODE_RATE)
            busy = math.ceil(HEADROOM * decode * (self.latency + size / self.rate) / size) + self.threads
            reads = max(1, min(reads, busy))
        if self.throttled_reads is not None:
            reads = max(1, min(reads, int(self.throttled_reads)))
        return reads

    def fetched(self, nbytes: int, first_byte_s: float, total_s: float) -> None:
        """A GET of ``nbytes`` that began answering after ``first_byte_s`` and ended after ``total_s``."""
        if first_byte_s > 0:
            self.latency = _average(self.latency, first_byte_s)
            body_s = total_s - first_byte_s
            if body_s > 0 and nbytes >= 64 * 1024:  # tiny bodies say nothing about the rate
                self.rate = _average(self.rate, nbytes / body_s)
        if self.throttled_reads is not None:
            self.throttled_reads += 1 / max(1.0, self.throttled_reads)
            if self.throttled_reads >= self.max_reads:
                self.throttled_reads = None

    def decoded(self, nbytes: int, seconds: float) -> None:
        """A decoding thread took ``seconds`` of its time for ``nbytes`` stored bytes."""
        if seconds > 0 and nbytes >= 64 * 1024:
            self.decode_rate = _average(self.decode_rate, nbytes / seconds)

    def throttles(self, count: int) -> None:
        """The storage's count of answers asking to slow down; halves the reads on a new one, at most once
        per round of GETs in flight (so one burst of 503s is one cut)."""
        if count <= self._throttles:
            return
        self._throttles = count
        now = time.monotonic()
        round_s = (self.latency or 0.0) + self.max_range / (self.rate or 1e9)
        if now - self._last_cut < round_s:
            return
        self._last_cut = now
        self.throttled_reads = max(1.0, min(self.in_flight, self.reads()) / 2)

    async def acquire(self) -> None:
        """Wait until one more GET may be in flight, and count it."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < self.reads())
            self.in_flight += 1

    async def release(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()
