"""What a snapshot keeps, measured through the command line: which kinds of metadata come back from a
restore exactly, and how much space a sparse file takes after a restore.

    python -m bench.fidelity [--out bench/results/fidelity.json]     # as root, for owners and devices

It builds a tree with every kind of entry and metadata Linux keeps (``tests.support.fidelity``), runs
``ferry snapshot create`` and ``ferry restore`` as separate processes on a local repository, and compares
source and restore field by field (``tests.support.data.describe_tree``). Then it snapshots a 256 MiB
file holding 4 KiB of data in every 4 MiB, restores it into a directory and as an image file, and
prints the allocated bytes (``st_blocks`` × 512) of the source and both restores.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.cli import password_file
from tests.support.data import describe_tree
from tests.support.fidelity import allocated, make_deep, make_metadata_tree, make_sparse

MiB = 1024 * 1024


def ferry(*args: str) -> str:
    env = {**os.environ, "FERRY_PASSWORD_FILE": password_file()}
    out = subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise SystemExit(f"ferry {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out.stdout.strip()


def _kind(entry: tuple[object, ...]) -> int:
    kind = entry[0]
    assert isinstance(kind, int)
    return kind


def properties(tree: dict[str, tuple[object, ...]]) -> dict[str, list[str]]:
    """Which entries show each property (so a property is judged only where the source has it)."""
    out: dict[str, list[str]] = {k: [] for k in PROPERTIES}
    for path, e in tree.items():
        kind, mode, xattrs = _kind(e), e[1], dict(e[5])  # type: ignore[call-overload]
        out["mode (set-uid, set-gid, sticky)"] += [path] if isinstance(mode, int) and mode & 0o7000 else []
        out["owner and group"].append(path)
        out["modification time, ns"].append(path)
        out["extended attributes"] += [path] if any(n.startswith(("user.", "trusted.")) for n in xattrs) else []
        out["POSIX ACLs"] += [path] if any(n.startswith("system.posix_acl") for n in xattrs) else []
        out["file capabilities"] += [path] if "security.capability" in xattrs else []
        out["device nodes"] += [path] if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else []
        out["FIFOs"] += [path] if stat.S_ISFIFO(kind) else []
        out["names that are not UTF-8"] += [path] if _not_utf8(path) else []
        out["paths longer than PATH_MAX"] += [path] if len(os.fsencode(path)) > 4096 else []
    return out


def _not_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


PROPERTIES = (
    "mode (set-uid, set-gid, sticky)",
    "owner and group",
    "modification time, ns",
    "extended attributes",
    "POSIX ACLs",
    "file capabilities",
    "device nodes",
    "FIFOs",
    "names that are not UTF-8",
    "paths longer than PATH_MAX",
)


def run() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ferry-fidelity-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        tree = base / "tree"
        make_metadata_tree(tree)
        (tree / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
        make_deep(tree, 45, b"d" * 200)
        repo = str(base / "repo")
        snap = ferry("snapshot", "create", "--repo", repo, str(tree))
        ferry("restore", "--repo", repo, "--snapshot", snap, str(base / "out"))
        source, restored = describe_tree(tree), describe_tree(base / "out")
        kept = {}
        for prop, paths in properties(source).items():
            same = [p for p in paths if restored.get(p) == source[p]]
            kept[prop] = {"entries": len(paths), "identical after restore": len(same)}

        sparse = base / "sparse" / "data.bin"
        sparse.parent.mkdir()
        make_sparse(sparse)
        snap = ferry("snapshot", "create", "--repo", repo, str(sparse.parent))
        ferry("restore", "--repo", repo, "--snapshot", snap, str(base / "sparse-out"))
        image = ferry("snapshot", "create", "--repo", repo, str(sparse))
        ferry("restore", "--repo", repo, "--snapshot", image, str(base / "image.out"))
        allocation = {
            "size": sparse.stat().st_size,
            "source allocated": allocated(sparse),
            "restored into a directory, allocated": allocated(base / "sparse-out" / "data.bin"),
            "restored as an image file, allocated": allocated(base / "image.out"),
        }
        return {"as root": os.geteuid() == 0, "metadata": kept, "sparse file": allocation}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__)
    p.add_argument("--out", default="bench/results/fidelity.json")
    args = p.parse_args()
    result = run()
    for prop, counts in result["metadata"].items():  # type: ignore[attr-defined]
        print(f"{prop:34} {counts['identical after restore']} of {counts['entries']} entries identical")
    for what, n in result["sparse file"].items():  # type: ignore[attr-defined]
        print(f"{what:40} {n:>12,} bytes")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
