"""1.0 repositories stay readable: a repository written by Ferry before format 1.1 restores exactly."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

from agent.pipeline.restore import restore
from agent.repo.repository import Repository
from agent.settings import RestoreSettings
from agent.storage.local import LocalStorage
from tests.support.data import describe_tree

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


async def test_a_1_0_repository_restores_exactly(tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "repository-1.0.json").read_text())
    shutil.copytree(FIXTURES / "repository-1.0", tmp_path / "repo")
    async with LocalStorage(str(tmp_path / "repo")) as storage:
        repo = Repository(storage)
        block = expected["block"]
        m = await repo.read_manifest(block["snapshot"])
        assert m.version == (1, 0)
        await restore(repo, block["snapshot"], str(tmp_path / "disk.img"), RestoreSettings())
        data = (tmp_path / "disk.img").read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (block["size"], block["sha256"])

        tree = expected["filesystem"]
        await restore(repo, tree["snapshot"], str(tmp_path / "tree"), RestoreSettings())
    got = {}
    for path, e in describe_tree(tmp_path / "tree").items():
        kind, mode, _, _, mtime = e[:5]
        rec: dict[str, object] = {"type": KINDS[stat.S_IFMT(kind)], "mode": mode, "mtime": mtime}  # type: ignore[index]
        if rec["type"] == "file":
            content = e[7]
            assert isinstance(content, bytes)
            rec.update(size=e[6], sha256=hashlib.sha256(content).hexdigest(), group=e[8])
        elif rec["type"] == "symlink":
            rec["target"] = e[6]
        got[path] = rec
    assert got == tree["tree"]
