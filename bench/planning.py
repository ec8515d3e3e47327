"""Planning time and memory for synthetic manifests of 1 TiB and 10 TiB.

    .venv/bin/python -m bench.planning [--sizes-tib 1 10] [--runs 3] [--tree-files 1000000] [--smoke] [--out F]

A stored manifest (the bytes ``encode_manifest`` makes) is generated for each size and written to a
temporary file; then, for each run, a fresh child process imports Ferry, notes its resident set (the
baseline), reads the stored bytes, decodes them (``decode_manifest``, hash check included), plans the
restore (``plan_block``/``plan_tree`` with default ``RestoreSettings()``) and walks the plan the way the
transfer does (every range, every chunk, every place), so nothing a lazy plan defers escapes the
measurement. Peak RSS is the child's own high-water mark (VmHWM: ``ru_maxrss`` would include the
parent's resident set, carried over through fork and exec). Prints a table and writes
bench/results/planning.json (``--smoke``: tiny sizes, writes only with ``--out``).

Block volumes: 4 MiB chunks, 32 MiB packs (sealed once they hold at least that much, as the writer does),
about 25% of slots holes (in runs of a few hundred MiB), 5% reusing an earlier chunk, the rest unique
chunks storing 5-75% of their plain size (40% on average), random IDs.

Filesystems (``--tree-files``, for the 1 TiB size only): that many files in directories of 250, 90% small
(0-64 KiB, one chunk each, 1% empty) and the rest sharing the remaining bytes in content-defined chunks of
256 KiB-4 MiB (1 MiB on average), some with a hole; 3% of chunks reused.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from agent.pipeline.plan import Plan, plan_block, plan_tree
from agent.repo.decoder import decode_manifest
from agent.repo.format import (
    CHUNK_RECORD,
    HOLE,
    ChunkTable,
    Entry,
    Manifest,
    Meta,
    encode_manifest,
    snapshot_id_of,
)
from agent.settings import GiB, KiB, MiB, RestoreSettings
from bench.measure import machine

TiB = 1024 * GiB
RESULTS = Path(__file__).parent / "results"

BLOCK_CHUNK = 4 * MiB
PACK_BYTES = 32 * MiB
HOLE_FRACTION = 0.25
HOLE_RUN_SLOTS = 64
"""Mean hole run: 256 MiB."""
DEDUP_FRACTION = 0.05
STORED_RATIO = (0.05, 0.75)
CREATED = "2026-01-01T00:00:00Z"


class _Packs:
    """Assigns stored chunks to packs the way the writer does: appended, sealed at ``PACK_BYTES`` or more."""

    def __init__(self) -> None:
        self.index = 0
        self.offset = 0

    def add(self, stored: int) -> tuple[int, int]:
        where = (self.index, self.offset)
        self.offset += stored
        if self.offset >= PACK_BYTES:
            self.index += 1
            self.offset = 0
        return where

    @property
    def count(self) -> int:
        return self.index + (1 if self.offset else 0)


def _table(rng: random.Random, plains: list[int], stored: list[int]) -> tuple[bytes, int]:
    """The packed chunk table for chunks in writer order, and the number of packs it uses."""
    packs = _Packs()
    ids = rng.randbytes(32 * len(plains))
    raw = bytearray(CHUNK_RECORD.size * len(plains))
    pack_into = CHUNK_RECORD.pack_into
    size = CHUNK_RECORD.size
    for i, (p, s) in enumerate(zip(plains, stored, strict=True)):
        pack, offset = packs.add(s)
        pack_into(raw, i * size, ids[32 * i : 32 * i + 32], pack, offset, s, p)
    return bytes(raw), packs.count


def _pack_names(rng: random.Random, n: int) -> tuple[str, ...]:
    return tuple(rng.randbytes(32).hex() for _ in range(n))


def _stored_size(rng: random.Random, plain: int) -> int:
    return max(16, int(plain * rng.uniform(*STORED_RATIO)))


def block_manifest(size: int, seed: int = 1) -> Manifest:
    """A block manifest of ``size`` bytes (a multiple of 4 MiB is not required)."""
    rng = random.Random(seed)
    n = -(-size // BLOCK_CHUNK)
    slots = array("q", [HOLE]) * n
    plains: list[int] = []
    # Data and hole runs alternate; data runs are three times as long on average.
    data_run = HOLE_RUN_SLOTS * (1 - HOLE_FRACTION) / HOLE_FRACTION
    reuse = DEDUP_FRACTION / (1 - HOLE_FRACTION)
    i = 0
    in_hole = rng.random() < HOLE_FRACTION
    while i < n:
        run = 1 + int(rng.expovariate(1 / (HOLE_RUN_SLOTS if in_hole else data_run)))
        end = min(n, i + run)
        if not in_hole:
            for slot in range(i, end):
                plain = min(BLOCK_CHUNK, size - slot * BLOCK_CHUNK)
                if plains and rng.random() < reuse:
                    # An earlier chunk of the same plain length (the last slot may be shorter).
                    c = rng.randrange(len(plains))
                    if plains[c] == plain:
                        slots[slot] = c
                        continue
                slots[slot] = len(plains)
                plains.append(plain)
        i = end
        in_hole = not in_hole
    stored = [_stored_size(rng, p) for p in plains]
    raw, npacks = _table(rng, plains, stored)
    return Manifest(
        mode="block",
        size=size,
        created=CREATED,
        packs=_pack_names(rng, npacks),
        chunks=ChunkTable(raw),
        chunk_size=BLOCK_CHUNK,
        slots=slots,
        source={"path": "/dev/synthetic", "host": "bench"},
    )


def _cdc_cuts(rng: random.Random, size: int) -> list[int]:
    """Chunk lengths of a file cut by content-defined chunking: 256 KiB-4 MiB, 1 MiB on average."""
    out: list[int] = []
    left = size
    while left > 0:
        n = min(left, 4 * MiB, 256 * KiB + int(rng.expovariate(1 / (768 * KiB))))
        out.append(n)
        left -= n
    return out


def tree_manifest(size: int, files: int, seed: int = 2) -> Manifest:
    """A filesystem manifest of ``files`` files adding up to about ``size`` bytes."""
    rng = random.Random(seed)
    meta = Meta(mode=0o644, uid=1000, gid=1000, mtime_ns=1_767_225_600_123_456_789)
    dmeta = Meta(mode=0o755, uid=1000, gid=1000, mtime_ns=1_767_225_600_000_000_000)
    small = files * 9 // 10
    small_sizes = [0 if rng.random() < 0.01 else rng.randrange(1, 64 * KiB) for _ in range(small)]
    large = files - small
    large_total = max(0, size - sum(small_sizes))
    # Large files: sizes from an exponential spread, scaled to share the remaining bytes.
    weights = [rng.expovariate(1.0) for _ in range(large)]
    scale = large_total / sum(weights) if weights else 0.0
    large_sizes = [max(256 * KiB + 1, int(w * scale)) for w in weights]
    sizes = small_sizes + large_sizes
    rng.shuffle(sizes)

    plains: list[int] = []
    entries: list[Entry] = []
    total = 0
    for f, fsize in enumerate(sizes):
        if f % 250 == 0:
            entries.append(Entry(f"d{f // 250:05}", "dir", dmeta))
        content: list[int] = []
        cuts = [] if fsize == 0 else [fsize] if fsize <= 256 * KiB else _cdc_cuts(rng, fsize)
        if fsize > 64 * MiB and rng.random() < 0.1:  # a sparse file: one of its chunks is a hole
            k = rng.randrange(len(cuts))
            cuts[k] = -cuts[k]
        for n in cuts:
            if n < 0:
                content.append(n)
                continue
            if plains and rng.random() < 0.03:
                c = rng.randrange(len(plains))
                if plains[c] == n:
                    content.append(c)
                    continue
            content.append(len(plains))
            plains.append(n)
        entries.append(Entry(f"d{f // 250:05}/f{f:07}.dat", "file", meta, size=fsize, content=tuple(content)))
        total += fsize
    stored = [_stored_size(rng, p) for p in plains]
    raw, npacks = _table(rng, plains, stored)
    return Manifest(
        mode="filesystem",
        size=total,
        created=CREATED,
        packs=_pack_names(rng, npacks),
        chunks=ChunkTable(raw),
        root=dmeta,
        entries=tuple(entries),
        source={"path": "/mnt/synthetic", "host": "bench"},
    )


# ----------------------------------------------------------------------------------------------------------
# The measured child


def _proc_status(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status, in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    """The current resident set."""
    rss = _proc_status("VmRSS")
    return rss if rss is not None else _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    """The process's resident high-water mark. Linux's VmHWM is this process image's own; ``ru_maxrss``
    is not used where VmHWM exists because it carries over the parent's resident set from fork through
    exec (so a child of a large parent would report the parent's size)."""
    hwm = _proc_status("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _walk(plan: Plan) -> tuple[int, int, int]:
    """What the transfer touches: every range, and every chunk's fields and places."""
    ranges = chunks = places = 0
    for rng in plan.ranges:
        ranges += 1
        _ = (rng.pack, rng.offset, rng.length)
        for job in rng.chunks:
            chunks += 1
            _ = (job.id, job.offset, job.stored, job.plain)
            for _slot, _offset in job.places:
                places += 1
    return ranges, chunks, places


def child(path: str, snapshot_id: str) -> dict[str, Any]:
    """Runs in a fresh process: decode, plan and walk the stored manifest at ``path``."""
    baseline = _rss_bytes()
    stored = Path(path).read_bytes()
    t0 = time.perf_counter()
    manifest = decode_manifest(stored, snapshot_id)
    t1 = time.perf_counter()
    stored_bytes = len(stored)
    del stored  # a restore drops the stored bytes once they are decoded
    plan = (plan_block if manifest.mode == "block" else plan_tree)(manifest, RestoreSettings())
    t2 = time.perf_counter()
    ranges, chunks, places = _walk(plan)
    t3 = time.perf_counter()
    if ranges != len(plan.ranges):
        raise SystemExit(f"len(plan.ranges) is {len(plan.ranges)} but iterating it gives {ranges}")
    return {
        "baseline_rss_bytes": baseline,
        "stored_bytes": stored_bytes,
        "decode_s": t1 - t0,
        "plan_s": t2 - t1,
        "walk_s": t3 - t2,
        "peak_rss_bytes": _peak_rss_bytes(),
        "ranges": ranges,
        "chunks": chunks,
        "places": places,
        "holes": len(plan.holes),
        "fetch_bytes": plan.fetch_bytes,
        "total_bytes": plan.total_bytes,
    }


def _run_child(path: Path, snapshot_id: str) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "bench.planning", "--child", str(path), snapshot_id],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"planning child failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# ----------------------------------------------------------------------------------------------------------
# The parent


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    first = runs[0]
    return {
        "runs": runs,
        "decode_s": med("decode_s"),
        "plan_s": med("plan_s"),
        "walk_s": med("walk_s"),
        "decode_plan_s": statistics.median(r["decode_s"] + r["plan_s"] for r in runs),
        "baseline_rss_MiB": med("baseline_rss_bytes") / MiB,
        "peak_rss_MiB": med("peak_rss_bytes") / MiB,
        "increase_MiB": statistics.median(r["peak_rss_bytes"] - r["baseline_rss_bytes"] for r in runs) / MiB,
        "stored_manifest_MiB": first["stored_bytes"] / MiB,
        "chunks": first["chunks"],
        "ranges": first["ranges"],
        "holes": first["holes"],
    }


def _measure(manifest: Manifest, runs: int, workdir: Path, name: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    stored = encode_manifest(manifest)
    encode_s = time.perf_counter() - t0
    sid = snapshot_id_of(stored)
    path = workdir / f"{name}.manifest"
    path.write_bytes(stored)
    del stored
    try:
        results = [_run_child(path, sid) for _ in range(runs)]
    finally:
        path.unlink()
    return {"encode_s": encode_s, **_summary(results)}


def _label(size: int) -> str:
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB")):
        if size >= unit:
            return f"{size / unit:g} {name}"
    return f"{size} bytes"


def run(sizes_tib: list[float], runs: int, tree_files: int = 0, tree_tib: float = 1.0) -> dict[str, Any]:
    """Measure each block size (and one filesystem of ``tree_files`` files and ``tree_tib`` TiB if
    ``tree_files``), ``runs`` fresh child processes each; returns the results as written to JSON."""
    out: dict[str, Any] = {
        "machine": machine(),
        "settings": "RestoreSettings() defaults",
        "block": {},
        "filesystem": {},
    }
    with tempfile.TemporaryDirectory(prefix="ferry-bench-planning-") as tmp:
        work = Path(tmp)
        for tib in sizes_tib:
            t0 = time.perf_counter()
            manifest = block_manifest(int(tib * TiB))
            gen_s = time.perf_counter() - t0
            result = _measure(manifest, runs, work, f"block-{tib}")
            del manifest
            out["block"][_label(int(tib * TiB))] = {"generate_s": gen_s, **result}
        if tree_files:
            t0 = time.perf_counter()
            manifest = tree_manifest(int(tree_tib * TiB), tree_files)
            gen_s = time.perf_counter() - t0
            result = _measure(manifest, runs, work, "tree")
            del manifest
            out["filesystem"][f"{_label(int(tree_tib * TiB))}, {tree_files} files"] = {"generate_s": gen_s, **result}
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'workload':<32} {'decode s':>9} {'plan s':>7} {'walk s':>7} {'peak MiB':>9} {'base MiB':>9} "
        f"{'+MiB':>7} {'chunks':>9} {'ranges':>8}"
    ]
    for mode in ("block", "filesystem"):
        for name, r in result[mode].items():
            lines.append(
                f"{mode + ' ' + name:<32} {r['decode_s']:>9.2f} {r['plan_s']:>7.2f} {r['walk_s']:>7.2f} "
                f"{r['peak_rss_MiB']:>9.1f} {r['baseline_rss_MiB']:>9.1f} {r['increase_MiB']:>7.1f} "
                f"{r['chunks']:>9} {r['ranges']:>8}"
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-tib", type=float, nargs="*", default=[1.0, 10.0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree-files", type=int, default=1_000_000, help="0: no filesystem manifest")
    parser.add_argument("--smoke", action="store_true", help="1 GiB, 1 run, 1000 files; writes only with --out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        result = run([1 / 1024], runs=1, tree_files=1000, tree_tib=1 / 1024)
    else:
        result = run(args.sizes_tib, args.runs, args.tree_files)
    result["command"] = "python -m bench.planning " + " ".join(sys.argv[1:])
    print(table(result))
    out = args.out if args.out is not None or args.smoke else RESULTS / "planning.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
