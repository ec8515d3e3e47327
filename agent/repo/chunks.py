"""Chunks: the one place that turns plain bytes into stored frames and back, verifying on the way.

A stored chunk is a single zstd frame whose header carries the plain length; its identity is the
BLAKE3-256 of the plain bytes. In an encrypted repository (``ChunkCodec`` with a master key) the ID is
keyed BLAKE3 and the frame is sealed with AES-256-GCM, the chunk ID as associated data.
``decode_chunk`` checks the frame header, that the frame decompresses
to exactly that length, and the hash, into a caller-owned buffer (so worker threads reuse memory
instead of allocating per chunk). All functions here are blocking and thread-safe: each thread keeps its
own zstd contexts.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable

import blake3
import zstandard

from agent.repo.crypto import SEAL_OVERHEAD, MasterKey

_local = threading.local()


def chunk_id(data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE3-256 of the plain bytes."""
    return blake3.blake3(data, max_threads=1).digest()


_ZERO_STEP = 64 * 1024
_ZEROS = bytes(_ZERO_STEP)


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True if every byte is zero: the first and last bytes first (data fails there), then memcmp
    against one constant block, a step at a time (no zero block is made per length: chunks have any
    length, and keeping one of each grew without bound)."""
    n = len(data)
    if not n:
        return True
    if data[0] or data[-1]:
        return False
    if isinstance(data, memoryview):  # rare: a chunk that starts and ends with a zero byte
        data = data.tobytes()
    full = n - n % _ZERO_STEP
    for at in range(0, full, _ZERO_STEP):
        if not data.startswith(_ZEROS, at):
            return False
    return data.endswith(_ZEROS[: n - full]) if n > full else True


def encode_chunk(data: bytes | bytearray | memoryview, level: int) -> bytes:
    """One zstd frame with the content size in its header."""
    cctx: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if cctx is None or getattr(_local, "level", None) != level:
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
        _local.cctx, _local.level = cctx, level
    return cctx.compress(data)


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def decode_buffer(min_bytes: int) -> memoryview:
    """This thread's reusable output buffer, page-aligned (anonymous memory, for O_DIRECT writes) and
    grown to at least ``min_bytes`` (the largest chunk plus any alignment padding)."""
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < min_bytes:
        size = -(-max(min_bytes, 64 * 1024) // mmap.PAGESIZE) * mmap.PAGESIZE
        buf = _local.buf = memoryview(mmap.mmap(-1, size))
    return buf


def decode_chunk(
    frame: memoryview,
    plain_len: int,
    expected_id: bytes,
    out: bytearray | memoryview,
    id_of: Callable[[memoryview], bytes] = chunk_id,
) -> memoryview | str:
    """Decompress and verify one stored chunk into ``out``.

    Returns a view of the plain bytes in ``out``, or a short reason why the chunk is bad. Never raises
    for bad data: the caller decides whether to fetch again.
    """
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        return "not a zstd frame"
    if declared != plain_len:
        return f"frame declares {declared} bytes, the manifest {plain_len}"
    view = memoryview(out)[:plain_len]
    filled = 0
    try:
        with _decompressor().stream_reader(frame, read_across_frames=False, closefd=False) as reader:
            while filled < plain_len:
                n = reader.readinto(view[filled:])
                if n == 0:
                    break
                filled += n
            trailing = reader.read(1)
    except zstandard.ZstdError as e:
        return f"decompression failed: {e}"
    if filled != plain_len or trailing:
        return f"frame holds {'more' if trailing else filled} bytes, not {plain_len}"
    if id_of(view) != expected_id:
        return "BLAKE3 mismatch"
    return view


class ChunkCodec:
    """How a repository names and stores chunks: plain (format 1, and format 2 without encryption), or
    with a master key: keyed IDs and sealed frames. Thread-safe; methods are blocking."""

    def __init__(self, master: MasterKey | None = None) -> None:
        self.master = master
        self._sealer = master.sealer() if master else None
        self.overhead = SEAL_OVERHEAD if master else 0
        """Stored bytes a chunk has beyond its zstd frame."""

    def id_of(self, data: bytes | bytearray | memoryview) -> bytes:
        return self.master.chunk_id(data) if self.master else chunk_id(data)

    def encode(self, data: bytes | bytearray | memoryview, cid: bytes, level: int) -> bytes:
        """The stored form of the chunk ``data`` whose ID is ``cid``."""
        frame = encode_chunk(data, level)
        return self._sealer.seal(frame, cid) if self._sealer else frame

    def decode(
        self, stored: memoryview, plain_len: int, expected_id: bytes, out: bytearray | memoryview
    ) -> memoryview | str:
        """As ``decode_chunk``, after opening the seal (a seal that does not authenticate is a reason)."""
        if self._sealer is None:
            return decode_chunk(stored, plain_len, expected_id, out)
        frame = self._sealer.open(stored, expected_id)
        if frame is None:
            return "does not authenticate (altered, or not this chunk)"
        return decode_chunk(memoryview(frame), plain_len, expected_id, out, self.id_of)


PLAIN = ChunkCodec()
