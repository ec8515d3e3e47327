"""``ferry snapshot ls SNAPSHOT [PATH]``: the entries of a filesystem snapshot, all or under a path, as
``ls -l`` shows them (and every field in ``--json``, names that are not UTF-8 as base64)."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest

from tests.support.cli import ferry


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[str, str]:
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "dir" / "a.txt").write_text("hello\n")
    os.chmod(src / "dir" / "a.txt", 0o640)
    (src / "dir" / "sub" / "b").write_bytes(b"x" * 3000)
    (src / "dirt").write_text("not under dir\n")
    os.symlink("dir/a.txt", src / "link")
    os.link(src / "dir" / "a.txt", src / "hard")
    (src / os.fsdecode(b"caf\xe9")).write_text("latin-1 name\n")
    repo = str(tmp_path / "repo")
    made = ferry("snapshot", "create", "--repo", repo, str(src))
    assert made.returncode == 0, made.stderr
    return repo, made.stdout.strip()


def test_every_entry_with_type_mode_size_and_target(snapshot: tuple[str, str]) -> None:
    repo, sid = snapshot
    out = ferry("snapshot", "ls", "--repo", repo, sid[:8])
    assert out.returncode == 0, out.stderr
    lines = {re.split(r"\d\d:\d\d:\d\d  ", line, maxsplit=1)[1]: line for line in out.stdout.splitlines()}
    assert set(lines) >= {"dir", "dir/a.txt", "dir/sub", "dir/sub/b", "dirt", "link -> dir/a.txt", "'caf'$'\\351'"}
    assert lines["dir/a.txt"].startswith("-rw-r-----")
    assert lines["dir"].startswith("d")
    assert lines["link -> dir/a.txt"].startswith("l")
    assert any(line.startswith("h") and line.endswith("-> dir/a.txt") for line in lines.values())
    assert " 3000 " in lines["dir/sub/b"]


@pytest.mark.parametrize("path", ["dir", "/dir/", "dir/"])
def test_a_path_lists_it_and_what_is_beneath_it(snapshot: tuple[str, str], path: str) -> None:
    repo, sid = snapshot
    out = ferry("snapshot", "ls", "--repo", repo, sid, path, "--json")
    assert out.returncode == 0, out.stderr
    assert [e["path"] for e in json.loads(out.stdout)] == ["dir", "dir/a.txt", "dir/sub", "dir/sub/b"]


def test_json_gives_every_field_and_raw_names(snapshot: tuple[str, str]) -> None:
    repo, _ = snapshot
    entries = json.loads(ferry("snapshot", "ls", "--repo", repo, "latest", "--json").stdout)
    by_path = {e.get("path") or base64.b64decode(e["rawPath"]).decode("latin-1"): e for e in entries}
    a = by_path["dir/a.txt"]
    assert (a["type"], a["mode"], a["size"]) == ("file", "0640", 6)
    assert {"uid", "gid", "mtimeNs"} <= set(a)
    assert by_path["link"]["target"] == "dir/a.txt"
    assert "café" in by_path


def test_what_it_cannot_list_says_why(snapshot: tuple[str, str], tmp_path: Path) -> None:
    repo, sid = snapshot
    missing = ferry("snapshot", "ls", "--repo", repo, sid, "nowhere")
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"ferry: snapshot {sid} has no nowhere"
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(4096))
    block = ferry("snapshot", "create", "--repo", repo, str(image)).stdout.strip()
    refused = ferry("snapshot", "ls", "--repo", repo, block)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"ferry: snapshot {block} is of a block volume (4096 bytes): it holds no files"
