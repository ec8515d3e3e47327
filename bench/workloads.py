"""The benchmark's data, generated (nothing large is committed) and deterministic for a seed.

Three workloads, the shapes a volume restore meets:
- ``block``: a block image of mixed content: random, text, binary and zero runs in equal parts, each run a
  few MiB (what a VM or database disk looks like to a block-level snapshot);
- ``tree``: a directory tree of many small files (text and binary, 0-16 KiB, a few hundred per directory)
  plus some large mixed files;
- ``file``: one large file of mixed content in an otherwise empty directory.

Generation is fast enough for GiBs (it stays in C: ``randbytes``, ``bytes.translate``, ``random.choices``)
and every random, text or binary run is unique, so no tool gets to deduplicate what a real volume would not
repeat.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.settings import GiB, MiB

_WORDS = (
    b"ferry restore volume chunk verify snapshot kubernetes velero pack zstd blake3 block device filesystem "
    b"node agent progress status cancel manifest repository object storage bucket prefix range fetch write "
    b"the of and to in is for on with as by at from this that be are or an it not error info debug warning"
).split()
# "Binary" (like executables and database pages): bytes from a skewed 24-symbol alphabet, about 4.6 bits each.
_BINARY = bytes((i * 7) % 24 if i % 5 else 0 for i in range(256))


# 256 words with their separators, so one random byte picks one (a line ends about every 13 words).
_VOCABULARY = [_WORDS[i % len(_WORDS)] + (b"\n" if i % 13 == 0 else b" ") for i in range(256)]


def _text(rng: random.Random, n: int) -> bytes:
    return b"".join(map(_VOCABULARY.__getitem__, rng.randbytes(n // 4 + 16)))[:n]


def _binary(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n).translate(_BINARY)


def mixed(rng: random.Random, n: int, run: int = 3 * MiB) -> Iterator[bytes]:
    """``n`` bytes of random, text, binary and zero runs of about ``run`` bytes (0.5-1.5x), in equal parts."""
    left = n
    while left > 0:
        length = min(left, max(1, int(run * rng.uniform(0.5, 1.5))))
        kind = rng.randrange(4)
        if kind == 0:
            yield rng.randbytes(length)
        elif kind == 1:
            yield _text(rng, length)
        elif kind == 2:
            yield _binary(rng, length)
        else:
            yield bytes(length)
        left -= length


def write_mixed_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("wb") as f:
        for piece in mixed(rng, size):
            f.write(piece)


def write_tree(root: Path, small_files: int, large_files: int, large_bytes: int, seed: int) -> int:
    """``small_files`` files of 0-16 KiB in directories of 250, and ``large_files`` mixed files of
    ``large_bytes`` each. Returns the total of file sizes."""
    rng = random.Random(seed)
    total = 0
    for i in range(small_files):
        d = root / f"d{i // 5000:03}" / f"s{(i // 250) % 20:02}"
        if i % 250 == 0:
            d.mkdir(parents=True, exist_ok=True)
        n = rng.randrange(0, 16 * 1024)
        data = _text(rng, n) if rng.random() < 0.6 else _binary(rng, n)
        fd = os.open(d / f"f{i:06}.dat", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        total += n
    (root / "large").mkdir(parents=True, exist_ok=True)
    for j in range(large_files):
        write_mixed_file(root / "large" / f"big-{j}.bin", large_bytes, seed * 1000 + j)
        total += large_bytes
    return total


@dataclass(frozen=True)
class Workload:
    name: str
    """block, tree or file."""
    source: Path
    """An image file (block) or a directory (tree, file)."""
    size: int
    """Bytes a restore produces: the image's size, or the sum of file sizes."""

    @property
    def is_block(self) -> bool:
        return self.name == "block"


@dataclass(frozen=True)
class Sizes:
    block: int = 4 * GiB
    tree_small_files: int = 100_000
    tree_large_files: int = 6
    tree_large_bytes: int = 256 * MiB
    file: int = 4 * GiB

    @classmethod
    def volume(cls, smoke: bool, block_mib: int, tree_files: int) -> Sizes:
        """A block image of ``block_mib`` and a tree of ``tree_files`` small files and two large ones (the
        link and resume benchmarks' data), or the smoke sizes."""
        if smoke:
            return cls.smoke()
        return cls(block=block_mib * MiB, tree_small_files=tree_files, tree_large_files=2)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(block=24 * MiB, tree_small_files=300, tree_large_files=1, tree_large_bytes=8 * MiB, file=20 * MiB)


def generate(workdir: Path, sizes: Sizes, only: tuple[str, ...] = ("block", "tree", "file")) -> list[Workload]:
    """Write the workloads under ``workdir/data`` (reusing what a previous run with the same sizes left)."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    out: list[Workload] = []
    if "block" in only:
        image = data / "block.img"
        if not image.exists() or image.stat().st_size != sizes.block:
            write_mixed_file(image, sizes.block, seed=1)
        out.append(Workload("block", image, sizes.block))
    if "tree" in only:
        tree = data / "tree"
        stamp = data / f"tree.done-{sizes.tree_small_files}-{sizes.tree_large_files}-{sizes.tree_large_bytes}"
        if not stamp.exists():
            if tree.exists():
                raise SystemExit(f"{tree} exists from another size: remove it")
            total = write_tree(tree, sizes.tree_small_files, sizes.tree_large_files, sizes.tree_large_bytes, seed=2)
            stamp.write_text(str(total))
        out.append(Workload("tree", tree, int(stamp.read_text())))
    if "file" in only:
        d = data / "file"
        d.mkdir(exist_ok=True)
        f = d / "large.bin"
        if not f.exists() or f.stat().st_size != sizes.file:
            write_mixed_file(f, sizes.file, seed=3)
        out.append(Workload("file", d, sizes.file))
    return out
