"""A repository has an identity: `repo init` makes it, every other command refuses a location without one
(and names what is there instead), format 1 repositories stay readable and can be upgraded, and two writers
creating the same repository at once end up in one (issue 12: a typo'd S3 prefix, a missing path and /etc
all listed as an empty repository; a restic repository was called corrupt)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.backup.writer import create_snapshot
from agent.errors import NoRepository, RepositoryError, UnsupportedFormat, WrongPassword
from agent.pipeline.restore import restore
from agent.repo.config import CONFIG, init_repository, open_or_init, open_repository
from agent.repo.crypto import KdfParams
from agent.repo.repository import Repository
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage
from tests.support.cli import ferry, password_file
from tests.support.data import write_mixed_image
from tests.support.seaweed import SeaweedServer, make_bucket, s3_settings_for

CHEAP = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
READERS = [
    ["snapshot", "list"],
    ["snapshot", "show", "latest"],
    ["snapshot", "ls", "latest"],
    ["snapshot", "forget", "--keep-last", "1"],
    ["repo", "stats"],
    ["repo", "check"],
    ["repo", "key", "list"],
]


def _run(command: list[str], repo: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = ferry(*command, "--repo", repo, *extra, env=env)
    return out.returncode, out.stderr


def _s3_env(server: SeaweedServer) -> dict[str, str]:
    s = s3_settings_for(server)
    return {
        "AWS_ACCESS_KEY_ID": s.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s.secret_access_key or "",
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_REGION": "us-east-1",
    }


def _restic_layout(root: Path) -> None:
    """What `restic init` leaves: a binary config, a key, and empty data/index/snapshots/locks."""
    (root / "keys").mkdir(parents=True)
    (root / "config").write_bytes(bytes(range(256)))
    (root / "keys" / ("ab" * 32)).write_text('{"kdf":"scrypt","N":32768}')
    for part in ("data", "index", "snapshots", "locks"):
        (root / part).mkdir()


@pytest.mark.parametrize(
    "where",
    ["missing", "empty", "other files", "etc", "restic", "kopia", "encrypted without its config"],
)
def test_every_command_refuses_a_location_without_a_repository(tmp_path: Path, where: str) -> None:
    root = tmp_path / "repo"
    expected = "no Ferry repository at"
    if where == "empty":
        root.mkdir()
    elif where == "other files":
        (root / "photos").mkdir(parents=True)
        (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    elif where == "etc":
        root = Path("/etc")
    elif where == "restic":
        _restic_layout(root)
        expected = "holds a restic repository, not a Ferry one"
    elif where == "kopia":
        root.mkdir()
        (root / "kopia.repository.f").write_text("{}")
        expected = "holds a kopia repository, not a Ferry one"
    elif where == "encrypted without its config":
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "f").write_bytes(b"data")
        assert ferry("snapshot", "create", "--repo", str(root), str(tmp_path / "src")).returncode == 0
        (root / CONFIG).unlink()
        expected = "holds an encrypted Ferry repository whose config object (ferry-repository) is missing"
    for command in [*READERS, ["restore", "--snapshot", "latest", str(tmp_path / "out")]]:
        status, err = _run(command, str(root))
        assert status == 1, (command, err)
        assert expected in err, (command, err)
        assert err.count("\n") == 1, (command, err)
        if where in ("missing", "empty"):
            assert "`ferry repo init` creates one" in err
        if where in ("other files", "etc"):
            assert "it holds other objects" in err
    assert not (tmp_path / "out").exists()
    if where in ("restic", "kopia", "etc", "other files", "encrypted without its config"):
        for init in (["repo", "init"], ["repo", "init", "--no-encryption"]):
            status, err = _run(init, str(root))
            assert status == 1, err
            assert expected in err or "holds objects that are not a Ferry repository's" in err, err
            assert not (root / CONFIG).exists()
        if where != "encrypted without its config":
            assert where == "restic" or not (root / "keys").exists(), "a key was stored where no repository was made"


@pytest.mark.s3
async def test_a_mistyped_s3_prefix_is_not_an_empty_repository(s3_server: SeaweedServer, tmp_path: Path) -> None:
    bucket = await make_bucket(s3_server)
    env = _s3_env(s3_server)
    assert _run(["repo", "init"], f"s3://{bucket}/velero/ferry/app", env=env)[0] == 0
    status, err = _run(["snapshot", "list"], f"s3://{bucket}/velero/ferry/ap", env=env)
    assert status == 1, err
    assert "no Ferry repository at" in err, err
    status, err = _run(["snapshot", "list"], f"s3://{bucket}/velero/ferry/app", env=env)
    assert status == 0, err


def test_init_then_snapshot_then_a_second_init_is_refused(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x" * 1000)
    out = ferry("repo", "init", "--repo", root, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["format"] == 2
    assert info["encryption"] == "aes-256-gcm"
    assert len(info["id"]) == 64
    assert _run(["snapshot", "create", str(tmp_path / "src")], root)[0] == 0
    status, err = _run(["repo", "init"], root)
    assert status == 2, err
    assert f"already a Ferry repository at file://{root} (ID {info['id'][:16]})" in err, err
    status, err = _run(["repo", "init", "--no-encryption"], root, env={"FERRY_PASSWORD_FILE": ""})
    assert status == 2
    assert "already a Ferry repository" in err


def test_an_unencrypted_repository_only_when_asked(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"y" * 1000)
    nopw = {"FERRY_PASSWORD_FILE": ""}
    status, err = _run(["repo", "init"], root, env=nopw)
    assert status == 2, err
    assert "--no-encryption" in err, err
    status, err = _run(["snapshot", "create", str(tmp_path / "src")], root, env=nopw)
    assert status == 1, err
    assert "`ferry repo init` creates one" in err, err
    status, err = _run(["repo", "init", "--no-encryption", "--password-file", password_file()], root)
    assert status == 2, err
    assert "contradict" in err, err
    # FERRY_PASSWORD_FILE (set for these tests) does not overrule the explicit --no-encryption below.
    assert _run(["repo", "init", "--no-encryption"], root)[0] == 0
    assert _run(["snapshot", "create", str(tmp_path / "src")], root, env=nopw)[0] == 0
    # With a password, nothing is written in the clear (a config swapped for an unencrypted one must not
    # make an agent or a script that expects encryption write plain data); reading is fine.
    status, err = _run(["snapshot", "create", str(tmp_path / "src")], root)
    assert status == 2, err
    assert "is not encrypted, but a password was given" in err, err
    assert _run(["snapshot", "list"], root)[0] == 0


def test_the_first_snapshot_creates_an_encrypted_repository_and_says_so(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"z" * 1000)
    out = ferry("snapshot", "create", "--repo", root, str(tmp_path / "src"))
    assert out.returncode == 0, out.stderr
    assert "created a new encrypted repository at" in out.stderr
    out = ferry("snapshot", "create", "--repo", root, str(tmp_path / "src"))
    assert out.returncode == 0, out.stderr
    assert "created" not in out.stderr.split("\n")[0], out.stderr


async def test_a_format_1_repository_is_read_as_it_is_and_upgraded_in_place(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    image = write_mixed_image(tmp_path / "disk.img", 2 * MiB, seed=4)
    old = await create_snapshot(Repository(LocalStorage(str(root))), str(image), SnapshotSettings())
    out = ferry("snapshot", "list", "--repo", str(root))  # a password given is not needed, and not used
    assert out.returncode == 0, out.stderr
    assert old.snapshot_id in out.stdout, out.stderr
    assert _run(["restore", "--snapshot", old.snapshot_id[:8], str(tmp_path / "a.img")], str(root))[0] == 0
    assert (tmp_path / "a.img").read_bytes() == image.read_bytes()
    status, err = _run(["snapshot", "create", str(image)], str(root))
    assert status == 1, err
    assert "format 1 Ferry repository" in err, err
    assert "--no-encryption" in err, err
    status, err = _run(["repo", "init"], str(root))
    assert status == 2, err
    assert "cannot be encrypted in place" in err, err
    out = ferry("repo", "init", "--no-encryption", "--repo", str(root), env={"FERRY_PASSWORD_FILE": ""})
    assert out.returncode == 0, out.stderr
    assert "upgraded the format 1 repository" in out.stdout, out.stderr
    repo = await open_repository(LocalStorage(str(root)), None, None, write=True)
    new = await create_snapshot(repo, str(image), SnapshotSettings())
    assert new.new_chunks == 0, "the upgraded repository deduplicates against its format 1 snapshots"
    await restore(repo, old.snapshot_id, str(tmp_path / "b.img"), RestoreSettings())
    assert (tmp_path / "b.img").read_bytes() == image.read_bytes()


async def test_a_newer_format_asks_for_a_newer_ferry(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "repo"))
    await init_repository(storage, None, b"pw", kdf=CHEAP)
    config = json.loads((tmp_path / "repo" / CONFIG).read_text())
    config["ferryRepository"] = 3
    (tmp_path / "repo" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(UnsupportedFormat, match="upgrade Ferry"):
        await open_repository(storage, None, b"pw")


@pytest.fixture(params=["local", "s3"])
async def location(request: pytest.FixtureRequest, tmp_path: Path) -> LocalStorage | S3Storage:
    if request.param == "local":
        return LocalStorage(str(tmp_path / "repo"))
    server: SeaweedServer = request.getfixturevalue("s3_server")
    return await S3Storage.open(s3_settings_for(server), await make_bucket(server), "velero/ferry/app")


async def test_writers_creating_one_repository_at_once_share_it(location: LocalStorage | S3Storage) -> None:
    """Two agents backing up the first volumes of a namespace at the same time: one creates the repository,
    the other opens it; everything either writes is readable with the one master key."""
    async with location:
        for _ in range(3):
            made = await asyncio.gather(*(open_or_init(location, None, b"pw", kdf=CHEAP) for _ in range(6)))
            assert sum(m.created for m in made) <= 1
            masters = {m.repository.master for m in made}
            ids = {m.repository.config.id for m in made if m.repository.config}
            assert len(masters) == 1
            assert len(ids) == 1
            reopened = await open_repository(location, None, b"pw")
            assert reopened.master in masters
            keys = await location.list("keys/")
            assert len(keys) == 1, f"the losers' keys were left behind: {keys}"


async def test_a_repository_config_of_another_kind_is_not_taken_for_ours(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / CONFIG).write_text("hello")
    with pytest.raises(NoRepository, match="not a Ferry repository config"):
        await open_repository(LocalStorage(str(root)), None, b"pw")
    with pytest.raises(NoRepository, match="not a Ferry repository config"):
        await init_repository(LocalStorage(str(root)), None, b"pw", kdf=CHEAP)


def test_forget_says_which_mistake_was_made(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    assert _run(["repo", "init"], root)[0] == 0
    cases = {
        ("--keep-last", "0"): "a policy that keeps nothing would forget every snapshot",
        ("latest", "--keep-last", "1"): "not both",
        (): "name the snapshots to forget, or give a policy",
    }
    for extra, message in cases.items():
        status, err = _run(["snapshot", "forget", *extra], root)
        assert status == 2, (extra, err)
        assert message in err, (extra, err)


async def test_an_altered_config_is_named(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "repo"))
    await init_repository(storage, None, b"pw", kdf=CHEAP)
    config = json.loads((tmp_path / "repo" / CONFIG).read_text())
    config["chunker"]["avgSize"] = 3
    (tmp_path / "repo" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(RepositoryError, match=r"chunker sizes .* the config was altered"):
        await open_repository(storage, None, b"pw")
    config["chunker"]["avgSize"] = 1024 * 1024
    config["id"] = "0" * 64
    (tmp_path / "repo" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(WrongPassword, match="or the repository's config was altered"):
        await open_repository(storage, None, b"pw")
