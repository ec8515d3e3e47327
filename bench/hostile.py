"""Hostile manifests: what each costs Ferry's manifest reader in time and memory.

    python -m bench.hostile [--scale 1.0] [--out bench/results/hostile.json]

Each case is a small stored manifest (a few KB to a few MB) made to cost a naive reader a lot: a body of
whitespace that expands to gigabytes, 10^8 hole slots (legal in format 1.0), 10^8 alternating data slots,
a 100 MB string, 50,000 nested arrays, integers of thousands of digits, a chunk table that claims
4 GiB chunks. Each is decoded in a fresh process (``python -m bench.hostile decode FILE``) whose peak RSS
and wall time are measured, under the command line's default manifest memory limit (1 GiB) and, for
the largest, the DaemonSet's (256 MiB). The builders
are also what ``tests/test_manifest_hostile.py`` decodes, at a smaller scale.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

from agent.repo.format import CHUNK_RECORD, MAGIC, snapshot_id_of

PACK = "ab" * 32
PIECE = 16 * 1024 * 1024


def stored_of(pieces: Callable[[], Iterator[bytes]], version: bytes = b"1.1") -> bytes:
    """A stored manifest whose body is the concatenation of ``pieces()`` (called twice: once to size it,
    once to compress it, so no piece list is held)."""
    size = sum(len(p) for p in pieces())
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=True).compressobj(size=size)
    out = [MAGIC + version + b"\n"]
    out.extend(cobj.compress(p) for p in pieces())
    out.append(cobj.flush())
    return b"".join(out)


def _repeat(unit: bytes, count: int) -> Iterator[bytes]:
    per = max(1, PIECE // len(unit))
    while count > 0:
        n = min(per, count)
        yield unit * n
        count -= n


def _block_head(size: int, chunks: bytes = b"") -> bytes:
    table = base64.b64encode(chunks).decode()
    return (
        f'{{"mode":"block","size":{size},"created":"2026-11-29T00:00:00Z","source":{{}},'
        f'"packs":["{PACK}"],"chunks":"{table}","block":{{"chunkSize":4096,"slots":['
    ).encode()


def _record(n: int, stored: int = 100, plain: int = 4096) -> bytes:
    return b"".join(CHUNK_RECORD.pack(bytes([i % 256]) * 32, 0, i * stored, stored, plain) for i in range(n))


def whitespace(n: int) -> bytes:
    """A valid empty block manifest after ``n`` bytes of spaces."""

    def pieces() -> Iterator[bytes]:
        yield from _repeat(b" ", n)
        yield _block_head(0) + b"]}}"

    return stored_of(pieces)


def hole_slots(n: int) -> bytes:
    """A legal format 1.0 block manifest of ``n`` slots, all holes, each written ``-1``."""

    def pieces() -> Iterator[bytes]:
        yield _block_head(n * 4096)
        yield from _repeat(b"-1,", n - 1)
        yield b"-1]}}"

    return stored_of(pieces, b"1.0")


def alternating_slots(n: int) -> bytes:
    """``n`` data slots alternating between two chunks: legal, and nothing in it compresses away."""

    def pieces() -> Iterator[bytes]:
        yield _block_head(n * 4096, _record(2))
        yield from _repeat(b"0,1,", n // 2 - 1)
        yield b"0,1]}}"

    return stored_of(pieces)


def long_string(n: int) -> bytes:
    """A ``created`` string of ``n`` characters."""

    def pieces() -> Iterator[bytes]:
        yield b'{"created":"'
        yield from _repeat(b"a", n)
        yield b'"}'

    return stored_of(pieces)


def nesting(n: int) -> bytes:
    """``n`` nested arrays in a field the reader does not know."""

    def pieces() -> Iterator[bytes]:
        yield b'{"future":'
        yield from _repeat(b"[", n)
        yield from _repeat(b"]", n)
        yield b"}"

    return stored_of(pieces)


def long_integer(n: int) -> bytes:
    """An entry whose mtime has ``n`` digits."""
    body = (
        '{"mode":"filesystem","size":0,"created":"x","source":{},"packs":[],"chunks":"",'
        '"root":{"mode":0,"uid":0,"gid":0,"mtime":0},"entries":[{"path":"a","type":"dir","mode":0,'
        f'"uid":0,"gid":0,"mtime":{"9" * n}}}]}}'
    ).encode()
    return stored_of(lambda: iter([body]))


def huge_chunks(n: int) -> bytes:
    """``n`` chunks each claiming to be stored in 4 GiB - 1 bytes."""

    def pieces() -> Iterator[bytes]:
        yield _block_head(n * 4096, _record(n, stored=2**32 - 1))
        yield b",".join(str(i).encode() for i in range(n)) + b"]}}"

    return stored_of(pieces)


MiB = 1024 * 1024
CASES: dict[str, tuple[Callable[[int], bytes], int, int]] = {
    "whitespace 4 GiB": (whitespace, 4 * 1024**3 - 1024, 1024 * MiB),
    "hole slots 10^8 (1.0)": (hole_slots, 10**8, 1024 * MiB),
    "alternating slots 10^8": (alternating_slots, 10**8, 1024 * MiB),
    "alternating slots 10^8, agent": (alternating_slots, 10**8, 256 * MiB),
    "string 100 MB": (long_string, 100 * 1000**2, 1024 * MiB),
    "nesting 50,000": (nesting, 50_000, 1024 * MiB),
    "integer of 100,000 digits": (long_integer, 100_000, 1024 * MiB),
    "chunks of 4 GiB": (huge_chunks, 1000, 1024 * MiB),
}
"""name: (builder, its size argument, the manifest memory limit: the CLI's default, or the DaemonSet's)."""


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM: ``ru_maxrss`` would start at the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0  # pragma: no cover - Linux always reports it


def decode_file(path: str, limit: int) -> dict[str, object]:
    """Decode one stored manifest in this process under a manifest memory limit: outcome, seconds, peak
    RSS."""
    from agent.errors import FerryError  # noqa: PLC0415 - measured from a fresh process
    from agent.repo.decoder import decode_manifest  # noqa: PLC0415

    stored = Path(path).read_bytes()
    started = time.monotonic()
    try:
        m = decode_manifest(stored, snapshot_id_of(stored), limit)
        outcome = f"read: {m.mode}, {m.size} bytes, {len(m.slots)} slot values, {len(m.entries)} entries"
    except FerryError as e:
        outcome = f"refused: {str(e).split(' is malformed: ', 1)[-1]}"
    return {
        "outcome": outcome,
        "seconds": round(time.monotonic() - started, 3),
        "peak_rss_MiB": round(peak_rss_kib() / 1024, 1),
        "stored_bytes": len(stored),
    }


def run(scale: float = 1.0) -> dict[str, dict[str, object]]:
    import subprocess  # noqa: PLC0415

    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="ferry-hostile-") as tmp:
        for name, (build, n, limit) in CASES.items():
            path = Path(tmp) / "manifest"
            path.write_bytes(build(max(2, int(n * scale))))
            out = subprocess.run(
                [sys.executable, "-m", "bench.hostile", "decode", str(path), "--limit", str(limit)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            results[name] = json.loads(out.stdout)
            print(f"{name:28} {results[name]}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("decode")
    d.add_argument("file")
    d.add_argument("--limit", type=int, default=1024 * MiB, help="manifest memory limit, bytes")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", default="bench/results/hostile.json")
    args = p.parse_args()
    if args.command == "decode":
        print(json.dumps(decode_file(args.file, args.limit)))
        return
    results = run(args.scale)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
