"""Encrypted repositories (format 2): what is stored reveals nothing, and nothing that does not authenticate
is used. Round trips on both backends; a wrong password, a tampered chunk, a tampered, forged or foreign
manifest and a swapped pack are each refused in one line (issue 12)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.backup.writer import create_snapshot
from agent.errors import ChunkCorrupt, ConfigError, ManifestInvalid, RepositoryError, WrongPassword
from agent.pipeline.restore import restore
from agent.repo.check import check_repository
from agent.repo.chunks import ChunkCodec, chunk_id
from agent.repo.config import KEYS, add_key, init_repository, list_keys, open_repository, remove_key
from agent.repo.crypto import SEAL_OVERHEAD, KdfParams, MasterKey
from agent.repo.format import encode_manifest
from agent.repo.repository import Repository, pack_key, snapshot_key
from agent.settings import MiB, RestoreSettings, SnapshotSettings
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage
from tests.support.cli import ferry
from tests.support.data import describe_tree, make_sample_tree, write_mixed_image

CHEAP = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=1)
"""The least Argon2id Ferry accepts: tests open many repositories."""
PASSWORD = b"open sesame"
SETTINGS = SnapshotSettings(pack_bytes=1 * MiB, block_chunk_bytes=256 * 1024)


def _random_image(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


async def _encrypted(root: Path) -> Repository:
    return (await init_repository(LocalStorage(str(root)), None, PASSWORD, kdf=CHEAP)).repository


async def test_block_and_filesystem_snapshots_round_trip(storage: LocalStorage | S3Storage, tmp_path: Path) -> None:
    async with storage:
        await init_repository(storage, None, PASSWORD, kdf=CHEAP)
        repo = await open_repository(storage, None, PASSWORD)
        assert repo.master is not None
        image = write_mixed_image(tmp_path / "disk.img", 5 * MiB + 4097, seed=3, run=256 * 1024)
        tree = make_sample_tree(tmp_path / "tree", big_file=3 * MiB)
        block = await create_snapshot(repo, str(image), SETTINGS)
        files = await create_snapshot(repo, str(tree), SETTINGS)
        again = await create_snapshot(repo, str(image), SETTINGS)
        assert again.new_chunks == 0, "an encrypted repository still deduplicates"
        assert (await repo.read_manifest(block.snapshot_id)).version == (2, 0)
        await restore(repo, block.snapshot_id, str(tmp_path / "out.img"), RestoreSettings())
        await restore(repo, files.snapshot_id, str(tmp_path / "out"), RestoreSettings())
        assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
        assert describe_tree(tmp_path / "out") == describe_tree(tree)
        report = await check_repository(repo, read_data=True)
        assert not report.damage


async def test_stored_objects_reveal_neither_content_nor_plain_chunk_ids(tmp_path: Path) -> None:
    repo = await _encrypted(tmp_path / "repo")
    secret = os.urandom(3 * MiB)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "secret.bin").write_bytes(secret)
    (tmp_path / "tree" / "note.txt").write_bytes(b"the launch codes are 0000 " * 4000)
    made = await create_snapshot(repo, str(tmp_path / "tree"), SETTINGS)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "repo").rglob("*") if p.is_file())
    for at in range(0, len(secret), 256 * 1024):
        assert secret[at : at + 64] not in stored
    assert b"launch codes" not in stored
    assert b"secret.bin" not in stored
    assert b"note.txt" not in stored
    manifest = await repo.read_manifest(made.snapshot_id)
    plain_ids = {chunk_id(secret[i : i + n]) for i in range(0, len(secret), 1024) for n in (256 * 1024,)}
    assert all(record.id not in plain_ids for record in manifest.chunks)
    assert all(record.id not in stored for record in manifest.chunks), "a chunk ID is visible in storage"


async def test_a_wrong_password_and_no_password_are_refused_in_one_line(tmp_path: Path) -> None:
    await _encrypted(tmp_path / "repo")
    (tmp_path / "wrong").write_text("not it\n")
    out = ferry("snapshot", "list", "--repo", str(tmp_path / "repo"), "--password-file", str(tmp_path / "wrong"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert "wrong password" in out.stderr, out.stderr
    out = ferry("snapshot", "list", "--repo", str(tmp_path / "repo"), env={"FERRY_PASSWORD_FILE": ""})
    assert out.returncode == 2, out.stderr
    assert "is encrypted: give its password" in out.stderr, out.stderr
    with pytest.raises(WrongPassword):
        await open_repository(LocalStorage(str(tmp_path / "repo")), None, b"open sesame!")


async def _one_snapshot(tmp_path: Path) -> tuple[Repository, str, Path]:
    repo = await _encrypted(tmp_path / "repo")
    image = _random_image(tmp_path / "disk.img", 3 * MiB)
    return repo, (await create_snapshot(repo, str(image), SETTINGS)).snapshot_id, image


async def test_a_tampered_chunk_is_refused_and_never_written(tmp_path: Path) -> None:
    repo, snapshot_id, image = await _one_snapshot(tmp_path)
    manifest = await repo.read_manifest(snapshot_id)
    record = manifest.chunks[1]  # random data: chunk 1 is slot 1
    pack = tmp_path / "repo" / pack_key(manifest.packs[record.pack])
    data = bytearray(pack.read_bytes())
    data[record.offset + record.stored - 1] ^= 0x40  # the last byte of its tag
    pack.write_bytes(bytes(data))
    target = tmp_path / "out.img"
    with pytest.raises(ChunkCorrupt, match="does not authenticate") as e:
        await restore(repo, snapshot_id, str(target), RestoreSettings())
    assert "\n" not in str(e.value)
    slot = slice(SETTINGS.block_chunk_bytes, 2 * SETTINGS.block_chunk_bytes)
    assert not target.exists() or target.read_bytes()[slot] != image.read_bytes()[slot]
    report = await check_repository(repo, read_data=True)
    assert any(record.id.hex()[:16] in str(d) and "authenticate" in str(d) for d in report.damage), report.damage


async def test_a_swapped_pack_does_not_authenticate(tmp_path: Path) -> None:
    repo = await _encrypted(tmp_path / "repo")
    image = _random_image(tmp_path / "disk.img", 4 * MiB)
    made = await create_snapshot(repo, str(image), SETTINGS)
    manifest = await repo.read_manifest(made.snapshot_id)
    assert len(manifest.packs) >= 2
    first, second = (tmp_path / "repo" / pack_key(name) for name in manifest.packs[:2])
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b + bytes(max(0, len(a) - len(b))))  # long enough: only authentication can tell
    second.write_bytes(a + bytes(max(0, len(b) - len(a))))
    with pytest.raises(ChunkCorrupt, match="does not authenticate"):
        await restore(repo, made.snapshot_id, str(tmp_path / "out.img"), RestoreSettings())


def _rehash(root: Path, stored: bytes) -> str:
    """Store manifest bytes under the ID they hash to (so only authentication can refuse them)."""
    from agent.repo.format import snapshot_id_of  # noqa: PLC0415

    snapshot_id = snapshot_id_of(stored)
    path = root / snapshot_key(snapshot_id)
    path.write_bytes(stored)
    return snapshot_id


async def test_tampered_forged_and_foreign_manifests_are_refused(tmp_path: Path) -> None:
    repo, snapshot_id, image = await _one_snapshot(tmp_path)
    root = tmp_path / "repo"
    stored = (root / snapshot_key(snapshot_id)).read_bytes()
    tampered = bytearray(stored)
    tampered[len(stored) // 2] ^= 0x01
    refused = [_rehash(root, bytes(tampered))]
    # A manifest in the clear, naming the repository's own packs: what anyone who can write to the bucket
    # could make.
    manifest = await repo.read_manifest(snapshot_id)
    refused.append(_rehash(root, encode_manifest(dataclasses.replace(manifest, version=(1, 1)))))
    # A manifest sealed by another repository with its own key.
    other = await _encrypted(tmp_path / "other")
    refused.append(_rehash(root, other.encode_manifest(manifest)))
    for bad in refused:
        with pytest.raises(ManifestInvalid) as e:
            await repo.read_manifest(bad)
        assert "\n" not in str(e.value)
        assert "refused" in str(e.value)
    # Nothing refused is deduplicated against or listed as a snapshot.
    again = await create_snapshot(repo, str(image), SETTINGS)
    assert again.new_chunks == 0
    out = ferry("snapshot", "list", "--repo", str(root), "--password-file", str(_password_file(tmp_path)))
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.count("\n") == 3, out.stdout + out.stderr
    assert all(bad in out.stderr for bad in refused)


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_bytes(PASSWORD + b"\n")
    return path


async def test_passwords_are_added_and_removed_without_rewriting_data(tmp_path: Path) -> None:
    repo, snapshot_id, image = await _one_snapshot(tmp_path)
    root = tmp_path / "repo"
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not str(p).startswith(str(root / "keys"))}
    second = await add_key(repo, b"second password", CHEAP)
    with_second = await open_repository(LocalStorage(str(root)), None, b"second password")
    assert with_second.key_id == second
    assert with_second.master == repo.master
    with pytest.raises(ConfigError, match="give another password"):
        await remove_key(with_second, second[:8])
    removed = await remove_key(with_second, repo.key_id[:6])
    assert removed == repo.key_id
    with pytest.raises(WrongPassword):
        await open_repository(LocalStorage(str(root)), None, PASSWORD)
    await restore(with_second, snapshot_id, str(tmp_path / "out.img"), RestoreSettings())
    assert (tmp_path / "out.img").read_bytes() == image.read_bytes()
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not str(p).startswith(str(root / "keys"))}
    assert after == before, "adding or removing a password rewrote data"
    assert [k.id for k in await list_keys(with_second)] == [second]


async def test_the_command_line_adds_lists_and_removes_passwords(tmp_path: Path) -> None:
    root = str(tmp_path / "repo")
    first, second = _password_file(tmp_path), tmp_path / "second"
    second.write_text("another one\n")
    assert ferry("repo", "init", "--repo", root, "--password-file", str(first)).returncode == 0
    out = ferry("repo", "key", "add", "--repo", root, "--password-file", str(first), "--new-password-file", str(second))
    assert out.returncode == 0, out.stderr
    listed = ferry("repo", "key", "list", "--repo", root, "--password-file", str(second), "--json")
    keys = json.loads(listed.stdout)
    assert len(keys) == 2
    assert sum(k["current"] for k in keys) == 1
    old = next(k["id"] for k in keys if not k["current"])
    out = ferry("repo", "key", "remove", "--repo", root, "--password-file", str(second), old[:8])
    assert out.returncode == 0, out.stderr
    out = ferry("snapshot", "list", "--repo", root, "--password-file", str(first))
    assert out.returncode == 2
    assert "wrong password" in out.stderr


async def test_a_key_object_cannot_make_the_reader_spend_unbounded_memory(tmp_path: Path) -> None:
    await _encrypted(tmp_path / "repo")
    keys = tmp_path / "repo" / KEYS.rstrip("/")
    (path,) = keys.iterdir()
    body = json.loads(path.read_text())
    body["kdf"]["memoryKiB"] = 1024 * 1024 * 1024  # a terabyte
    path.write_text(json.dumps(body))
    with pytest.raises(RepositoryError, match="no key that can be read"):
        await open_repository(LocalStorage(str(tmp_path / "repo")), None, PASSWORD)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=4096), flip=st.integers(min_value=0))
def test_any_change_to_a_sealed_chunk_is_caught(data: bytes, flip: int) -> None:
    codec = ChunkCodec(MasterKey.new("0" * 64))
    cid = codec.id_of(data)
    stored = codec.encode(data, cid, 3)
    assert len(stored) >= SEAL_OVERHEAD + 1
    out = bytearray(len(data))
    decoded = codec.decode(memoryview(stored), len(data), cid, out)
    assert not isinstance(decoded, str)
    assert bytes(decoded) == data
    bad = bytearray(stored)
    bad[flip % len(bad)] ^= 1 << (flip % 8)
    assert isinstance(codec.decode(memoryview(bytes(bad)), len(data), cid, out), str)
    other = codec.id_of(data + b"x")
    assert isinstance(codec.decode(memoryview(stored), len(data), other, out), str), "moved under another ID"


def test_key_derivations_in_many_threads_at_once_all_finish() -> None:
    """Two multi-lane Argon2id derivations at once never returned (the agent opening repositories for two
    transfers at the same time hung)."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from agent.repo.crypto import derive  # noqa: PLC0415

    params = KdfParams(memory_kib=8 * 1024, iterations=1, lanes=4)
    with ThreadPoolExecutor(4) as pool:
        keys = list(pool.map(lambda i: derive(b"pw", bytes([i]) * 16, params), range(4), timeout=60))
    assert len(set(keys)) == 4


async def test_keys_are_tried_cheapest_first_and_at_most_64_exist(tmp_path: Path) -> None:
    repo = await _encrypted(tmp_path / "repo")
    # A key someone who can write to the bucket put there, as costly as Ferry accepts (1 GiB, 16 passes):
    # it would take minutes; the right password must not wait for it.
    (real,) = (tmp_path / "repo" / "keys").iterdir()
    costly = json.loads(real.read_text())
    costly["kdf"].update(memoryKiB=1024 * 1024, iterations=16, lanes=1)
    for n in range(1000):  # named (by its hash) to sort before the real key: tried first in name order
        costly["host"] = f"planted {n}"
        stored = json.dumps(costly).encode()
        name = blake3.blake3(stored).hexdigest()
        if name < real.name:
            break
    (tmp_path / "repo" / "keys" / name).write_bytes(stored)
    opened = await asyncio.wait_for(open_repository(LocalStorage(str(tmp_path / "repo")), None, PASSWORD), 30)
    assert opened.master == repo.master
    for n in range(62):
        await add_key(opened, f"password {n}".encode(), CHEAP)
    with pytest.raises(ConfigError, match="at most 64 are tried"):
        await add_key(opened, b"one too many", CHEAP)


async def test_a_key_whose_name_is_not_its_hash_is_not_used(tmp_path: Path) -> None:
    repo = await _encrypted(tmp_path / "repo")
    (original,) = (tmp_path / "repo" / "keys").iterdir()
    (tmp_path / "repo" / "keys" / ("ab" * 32)).write_bytes(original.read_bytes())
    assert [k.id for k in await list_keys(repo)] == [original.name]


async def test_key_prefixes_are_checked_before_anything_is_removed(tmp_path: Path) -> None:
    repo = await _encrypted(tmp_path / "repo")
    other = await add_key(repo, b"second", CHEAP)
    with pytest.raises(ConfigError, match="at least 4 hexadecimal digits"):
        await remove_key(repo, other[:3])
    with pytest.raises(ConfigError, match="no key of the repository"):
        await remove_key(repo, "0000" if not other.startswith("0000") else "ffff")
    assert len(await list_keys(repo)) == 2


async def test_two_writers_creating_a_repository_with_different_passwords(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "repo"))
    results = await asyncio.gather(
        init_repository(storage, None, b"first", kdf=CHEAP),
        init_repository(storage, None, b"second", kdf=CHEAP),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(created) == 1
    assert len(refused) == 1
    assert isinstance(refused[0], ConfigError)
    assert "wrong password" not in str(refused[0])
    assert len(list((tmp_path / "repo" / "keys").iterdir())) == 1
