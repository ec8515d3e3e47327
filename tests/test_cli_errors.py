"""The command line never shows a traceback and never leaks a secret: every kind of error, through the
real ``ferry`` process, ends in one line on stderr and its exit status; credentials given in any way
appear in no output at any log level."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from agent.repo.format import MAGIC, snapshot_id_of
from tests.support.faulty_proxy import FaultyProxy
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

MiB = 1024 * 1024
SESSION_TOKEN = "FQoGZXIvYXdzEXAMPLE-session-token-0123456789"


def ferry(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
        cwd=cwd,
        check=False,
        preexec_fn=preexec,
    )


def one_line(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> str:
    err = result.stderr
    assert result.returncode == status, (result.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ferry: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def s3_env(server: SeaweedServer, **extra: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": server.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
        **extra,
    }


@pytest.fixture(autouse=True)
def _unencrypted(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write manifests by hand: their repositories are unencrypted (no password given)."""
    monkeypatch.setenv("FERRY_PASSWORD_FILE", "")


@pytest.fixture
def local_snapshot(tmp_path: Path) -> tuple[Path, str]:
    """A local (unencrypted) repository holding one block snapshot of two packs."""
    (tmp_path / "disk.img").write_bytes(os.urandom(3 * MiB))
    repo = tmp_path / "repo"
    assert ferry("repo", "init", "--no-encryption", "--repo", str(repo)).returncode == 0
    made = ferry(
        "snapshot",
        "create",
        "--repo",
        str(repo),
        "--pack-size",
        "1MiB",
        "--chunk-size",
        "256KiB",
        str(tmp_path / "disk.img"),
    )
    assert made.returncode == 0, made.stderr
    return repo, made.stdout.strip()


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("s3:/bucket/prefix", "needs two slashes: write s3://bucket/prefix"),
        ("s3:bucket", "needs two slashes"),
        ("s3:http://127.0.0.1:9000/bucket", "is restic's form: write s3://BUCKET/PREFIX"),
        ("http://127.0.0.1:9000/bucket", "has the scheme 'http'"),
        ("sftp:host:/srv/repo", "has the scheme 'sftp'"),
        ("file:relative/dir", "is not a file URL: write file:///ABSOLUTE/PATH"),
        ("backup:2026", "written ./backup:2026"),
        ("s3://Bad_Bucket/x", "is not a valid bucket name"),
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/x", "carries credentials"),
        ("file://AKIAEXAMPLE:wJalrXUtnFEMI@host/p", "carries credentials"),
        ("file://AKIAEXAMPLE:wJalrXUtnFEMI@/tmp", "carries credentials"),
        ("s3://[bucket/p", "is not a URL"),
        ("s3://bucket]/p", "is not a URL"),
        ("file://[x/p", "is not a URL"),
        ("file:///tmp/%00x", "holds a NUL byte"),
    ],
)
def test_anything_that_looks_like_a_url_but_is_not_one_is_a_usage_error(tmp_path: Path, url: str, hint: str) -> None:
    (tmp_path / "src").write_bytes(b"x" * 4096)
    result = ferry("snapshot", "create", "--repo", url, str(tmp_path / "src"), cwd=tmp_path)
    err = one_line(result, 2, hint)
    assert "wJalrXUtnFEMI" not in err + result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"], "nothing was written anywhere"


def test_an_endpoint_with_credentials_is_refused_without_repeating_them(tmp_path: Path) -> None:
    result = ferry(
        "snapshot", "list", "--repo", "s3://bucket/x", "--s3-endpoint", f"http://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:1"
    )
    err = one_line(result, 2, "carries credentials", "http://***@127.0.0.1:1")
    assert SECRET_KEY not in err
    assert ACCESS_KEY not in err
    result = ferry(
        "snapshot",
        "list",
        "--repo",
        "s3://bucket/x",
        env={"AWS_ENDPOINT_URL": f"https://{ACCESS_KEY}:{SECRET_KEY}@example.invalid"},
    )
    one_line(result, 2, "carries credentials")
    for bad, why in (("http://[::1", "is not a URL"), ("http://host:99999", "Port out of range")):
        one_line(ferry("snapshot", "list", "--repo", "s3://bucket/x", "--s3-endpoint", bad), 2, why)


def test_profiles_and_credentials_files_that_do_not_work(s3_server: SeaweedServer, bucket: str, tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\n\n[other]\naws_access_key_id = x\n")
    env = {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    repo = f"s3://{bucket}/p"
    one_line(ferry("snapshot", "list", "--repo", repo, env={**env, "AWS_PROFILE": "nope"}), 1, "the AWS profile 'nope'")
    one_line(
        ferry("snapshot", "list", "--repo", repo, "--s3-profile", "missing", env=env), 1, "the AWS profile 'missing'"
    )
    err = one_line(
        ferry("snapshot", "list", "--repo", repo, env=env), 1, "incomplete S3 credentials", "aws_secret_access_key"
    )
    assert ACCESS_KEY not in err
    creds.write_text("this is [not an ini file\n")
    one_line(ferry("snapshot", "list", "--repo", repo, env=env), 2, "cannot be read")


@dataclass
class World:
    """What an error case needs: a local repository with a block snapshot, and S3."""

    tmp: Path
    repo: str
    block: str
    s3: dict[str, str]
    bucket: str


@pytest.fixture
def world(local_snapshot: tuple[Path, str], s3_server: SeaweedServer, bucket: str, tmp_path: Path) -> World:
    repo, block = local_snapshot
    return World(tmp_path, str(repo), block, s3_env(s3_server), bucket)


def _many_files(w: World) -> list[str]:
    tree = w.tmp / "many"
    tree.mkdir()
    for n in range(3000):
        (tree / f"f{n}").write_bytes(b"")
    made = ferry("snapshot", "create", "--repo", w.repo, str(tree))
    assert made.returncode == 0, made.stderr
    return ["snapshot", "show", "--repo", w.repo, made.stdout.strip(), "--manifest-memory", "1MiB"]


def _escaping(w: World) -> list[str]:
    """A hand-made manifest whose entry would land outside the target."""
    body = (
        '{"mode":"filesystem","size":0,"created":"2026-11-29T00:00:00Z","source":{},"packs":[],"chunks":"",'
        '"root":{"mode":493,"uid":0,"gid":0,"mtime":0},"entries":[{"path":"../escaped","type":"dir","mode":493,'
        '"uid":0,"gid":0,"mtime":0}]}'
    )
    stored = MAGIC + b"1.1\n" + zstandard.ZstdCompressor(write_content_size=True).compress(body.encode())
    (Path(w.repo) / "snapshots" / snapshot_id_of(stored)).write_bytes(stored)
    return ["restore", "--repo", w.repo, "--snapshot", snapshot_id_of(stored), str(w.tmp / "target")]


def _pack_missing(w: World) -> list[str]:
    next(p for p in (Path(w.repo) / "packs").rglob("*") if p.is_file()).unlink()
    return ["restore", "--repo", w.repo, "--snapshot", w.block, str(w.tmp / "o.img")]


def _small_target(w: World) -> list[str]:
    (w.tmp / "small.img").write_bytes(b"x")
    return ["restore", "--repo", w.repo, "--snapshot", w.block, str(w.tmp / "small.img")]


def _fifo_source(w: World) -> list[str]:
    os.mkfifo(w.tmp / "fifo")
    return ["snapshot", "create", "--repo", w.repo, str(w.tmp / "fifo")]


def _future_format(w: World) -> list[str]:
    stored = MAGIC + b"3.0\n" + b"later"
    (Path(w.repo) / "snapshots" / snapshot_id_of(stored)).write_bytes(stored)
    return ["snapshot", "show", "--repo", w.repo, snapshot_id_of(stored)]


Case = tuple[str, Callable[[World], list[str]], Callable[[World], dict[str, str]] | None, int, str]
CASES: list[Case] = [
    (
        "SnapshotNotFound",
        lambda w: ["restore", "--repo", w.repo, "--snapshot", "0" * 64, "o"],
        None,
        1,
        "does not exist",
    ),
    (
        "ConfigError: snapshot ID",
        lambda w: ["restore", "--repo", w.repo, "--snapshot", "xyz", "o"],
        None,
        2,
        "not a snapshot ID",
    ),
    (
        "ConfigError: size",
        lambda w: ["snapshot", "create", "--repo", w.repo, "--chunk-size", "lots", "o"],
        None,
        2,
        "is not a size",
    ),
    (
        "ConfigError: restore memory",
        lambda w: [
            "restore",
            "--repo",
            w.repo,
            "--snapshot",
            w.block,
            "--memory",
            "70KiB",
            "--range-size",
            "64KiB",
            str(w.tmp / "o.img"),
        ],
        None,
        2,
        "cannot hold this snapshot's buffers",
    ),
    (
        "ConfigError: manifest memory",
        lambda w: ["snapshot", "list", "--repo", w.repo, "--manifest-memory", "tiny"],
        None,
        2,
        "--manifest-memory",
    ),
    ("ManifestTooLarge", _many_files, None, 1, "more than the 1 MiB a manifest may take here"),
    ("UnsupportedFormat", _future_format, None, 1, "upgrade Ferry"),
    (
        "SourceError: missing",
        lambda w: ["snapshot", "create", "--repo", w.repo, str(w.tmp / "missing")],
        None,
        1,
        "cannot open",
    ),
    ("SourceError: FIFO", _fifo_source, None, 1, "neither a block device"),
    ("TargetTooSmall", _small_target, None, 1, "holds 1 bytes"),
    (
        "ConfigError: memory below a range",
        lambda w: ["restore", "--repo", w.repo, "--snapshot", w.block, "--memory", "0", str(w.tmp / "o.img")],
        None,
        2,
        "must hold at least one range",
    ),
    (
        "StorageError: no repository",
        lambda w: ["snapshot", "list", "--repo", str(w.tmp / "nowhere")],
        None,
        1,
        "no Ferry repository at",
    ),
    (
        "StorageError: a file, not a repository",
        lambda w: ["snapshot", "list", "--repo", str(Path(w.repo) / "..") + "/disk.img"],
        None,
        1,
        "not a directory",
    ),
    (
        "TargetError",
        lambda w: ["restore", "--repo", w.repo, "--snapshot", w.block, str(w.tmp)],
        None,
        1,
        "is a directory",
    ),
    ("ManifestInvalid", _escaping, None, 1, "'.', '..' or empty component"),
    ("PackMissing", _pack_missing, None, 1, "is missing from"),
    (
        "BucketNotFound",
        lambda w: ["snapshot", "list", "--repo", "s3://no-such-bucket-at-all/x"],
        lambda w: w.s3,
        1,
        "does not exist",
    ),
    (
        "AccessDenied",
        lambda w: ["snapshot", "list", "--repo", f"s3://{w.bucket}/x"],
        lambda w: {**w.s3, "AWS_SECRET_ACCESS_KEY": "wrong"},
        1,
        "was refused",
    ),
    (
        "TransientStorageError",
        lambda w: ["snapshot", "list", "--repo", f"s3://{w.bucket}/x"],
        lambda w: {**w.s3, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1"},
        1,
        "127.0.0.1:1",
    ),
]


@pytest.mark.parametrize(("name", "args", "env", "status", "needle"), CASES, ids=[c[0] for c in CASES])
def test_every_kind_of_error_is_one_line(
    world: World,
    name: str,
    args: Callable[[World], list[str]],
    env: Callable[[World], dict[str, str]] | None,
    status: int,
    needle: str,
) -> None:
    result = ferry(*args(world), env=env(world) if env else None, cwd=world.tmp)
    if status == 3:  # a listing that could not read every manifest: the rest listed, each failure one line
        assert result.returncode == 3, result.stderr
        assert needle in result.stderr
        assert "Traceback" not in result.stderr
    else:
        one_line(result, status, needle)


def test_usage_errors_are_argparse_s(local_snapshot: tuple[Path, str]) -> None:
    usage = ferry("--log-level", "loud", "snapshot", "list", "--repo", str(local_snapshot[0]))
    assert (usage.returncode, usage.stderr.splitlines()[-1]) == (
        2,
        "ferry: error: --log-level 'loud' must be debug, info, warning or error",
    )


def test_damaged_repositories_are_one_line_and_the_listing_shows_the_rest(
    local_snapshot: tuple[Path, str], tmp_path: Path
) -> None:
    repo, snap = local_snapshot
    r = str(repo)
    future = repo / "snapshots" / ("f" * 64)
    manifests = sorted((repo / "snapshots").iterdir())
    # A manifest of a future format, one cut short, and one that is a directory.
    stored = MAGIC + b"3.0\n" + b"later"
    (repo / "snapshots" / snapshot_id_of(stored)).write_bytes(stored)
    future.write_bytes(manifests[0].read_bytes()[:-5])
    (repo / "snapshots" / ("e" * 64)).mkdir()
    listed = ferry("snapshot", "list", "--repo", r)
    assert listed.returncode == 3
    assert snap in listed.stdout, "the readable snapshot is listed"
    assert "upgrade Ferry" in listed.stderr
    assert "does not hash" in listed.stderr
    assert f"snapshot {'e' * 64} cannot be read" in listed.stderr, "a directory where a manifest belongs is named"
    assert "is a directory" in listed.stderr
    assert "Traceback" not in listed.stderr
    one_line(ferry("restore", "--repo", r, "--snapshot", "f" * 64, str(tmp_path / "o")), 1, "the same bytes came back")
    packs = sorted((repo / "packs").rglob("*"))
    created = ferry("snapshot", "create", "--repo", r, "--chunk-size", "256KiB", str(tmp_path / "disk.img"))
    assert created.returncode == 0, created.stderr
    assert "not deduplicating against snapshot" in created.stderr
    assert sorted((repo / "packs").rglob("*")) == packs, "it deduplicated against the readable snapshot"
    pack = next((repo / "packs").rglob("*"))
    while pack.is_dir():
        pack = next(pack.iterdir())
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x10
    pack.write_bytes(bytes(data))
    one_line(ferry("restore", "--repo", r, "--snapshot", snap, str(tmp_path / "o.img")), 1, "repository is damaged")
    pack.unlink()
    pack.mkdir()  # a pack path that is a directory
    one_line(ferry("restore", "--repo", r, "--snapshot", snap, str(tmp_path / "o.img")), 1, "is a directory")
    pack.rmdir()
    os.mkfifo(pack)  # a pack path that is a FIFO: refused at once, never waited on
    started = time.monotonic()
    one_line(ferry("restore", "--repo", r, "--snapshot", snap, str(tmp_path / "o.img")), 1, "is a FIFO")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "o.img").exists(), "a new image file is removed when the restore fails"


def test_a_volume_larger_than_the_target_filesystem_allows_leaves_nothing(tmp_path: Path) -> None:
    image = tmp_path / "big.img"
    with image.open("wb") as f:
        f.truncate(64 * MiB)  # all holes: snapshotted in a moment
    repo = str(tmp_path / "repo")
    assert ferry("repo", "init", "--no-encryption", "--repo", repo).returncode == 0
    snap = ferry("snapshot", "create", "--repo", repo, str(image)).stdout.strip()

    def small_files() -> None:  # the filesystem's largest file, as RLIMIT_FSIZE imposes it on this process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * MiB, 8 * MiB))

    result = ferry("restore", "--repo", repo, "--snapshot", snap, str(tmp_path / "out.img"), preexec=small_files)
    one_line(result, 1, "more than the filesystem holding", "allows in one file")
    assert not (tmp_path / "out.img").exists(), "no 0-byte image is left behind"


async def interrupted(child: asyncio.subprocess.Process, ready: Callable[[], Awaitable[object]]) -> str:
    """Ctrl-C to ``child`` once ``ready`` has returned; it must exit 130 within a second, saying only that
    it was interrupted. Returns its stderr."""
    try:
        async with asyncio.timeout(60):
            await ready()
        child.send_signal(signal.SIGINT)
        started = time.monotonic()
        async with asyncio.timeout(10):
            _, err = await child.communicate()
        assert time.monotonic() - started < 1.0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    text = err.decode()
    assert child.returncode == 130, text
    assert text.strip().splitlines() == ["ferry: interrupted"]
    return text


async def test_ctrl_c_stops_within_a_second(
    s3_server: SeaweedServer, proxy: FaultyProxy, bucket: str, tmp_path: Path
) -> None:
    (tmp_path / "disk.img").write_bytes(os.urandom(2 * MiB))
    env = {**os.environ, **s3_env(s3_server)}
    repo = f"s3://{bucket}/ctrl-c"
    assert ferry("repo", "init", "--no-encryption", "--repo", repo, env=s3_env(s3_server)).returncode == 0
    made = ferry("snapshot", "create", "--repo", repo, str(tmp_path / "disk.img"), env=s3_env(s3_server))
    proxy.stall_ranged = True  # every pack read hangs: the restore is busy when Ctrl-C comes
    child = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "agent", "restore", "--repo", repo, "--snapshot", made.stdout.strip()],
        str(tmp_path / "out.img"),
        env={**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint},
        stderr=subprocess.PIPE,
    )
    await interrupted(child, proxy.holding.wait)
    assert not (tmp_path / "out.img").exists()


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.7])
def test_ctrl_c_while_ferry_starts_is_one_line(tmp_path: Path, delay: float) -> None:
    """Ctrl-C before the event loop runs (Python importing aiohttp and botocore, parsing flags) ends as any
    other Ctrl-C does: the moments are samples, each must end the same way."""
    assert ferry("repo", "init", "--no-encryption", "--repo", str(tmp_path)).returncode == 0
    child = subprocess.Popen(
        [sys.executable, "-m", "agent", "snapshot", "list", "--repo", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert "Traceback" not in err
    assert child.returncode in (130, 0), err  # 0: it had finished before the signal
    if child.returncode == 130:
        assert err.strip().splitlines()[-1] == "ferry: interrupted"


async def test_ctrl_c_during_a_long_manifest_read_stops_within_a_second(tmp_path: Path) -> None:
    from bench import hostile  # noqa: PLC0415

    stored = hostile.whitespace(3 * 1024 * MiB)  # 3 GiB of text to parse, from 100 KB
    (tmp_path / "repo" / "snapshots").mkdir(parents=True)
    (tmp_path / "repo" / "snapshots" / snapshot_id_of(stored)).write_bytes(stored)
    child = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "agent", "snapshot", "show", "--repo", str(tmp_path / "repo")],
        snapshot_id_of(stored),
        stderr=subprocess.PIPE,
    )
    # The moment of the interrupt, not a wait for anything: imports done, the parse (seconds) under way.
    await interrupted(child, lambda: asyncio.sleep(2.0))


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_no_output_at_any_log_level_holds_a_credential(
    s3_server: SeaweedServer, bucket: str, tmp_path: Path, level: str
) -> None:
    (tmp_path / "disk.img").write_bytes(os.urandom(300_000))
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[backup]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        f"aws_session_token = {SESSION_TOKEN}\n"
    )
    env = s3_env(s3_server, AWS_SESSION_TOKEN=SESSION_TOKEN)
    file_env = {
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
        "AWS_SHARED_CREDENTIALS_FILE": str(creds),
        "AWS_PROFILE": "backup",
        "AWS_REGION": "us-east-1",
    }
    repo = f"s3://{bucket}/leak"
    bad_endpoint = f"http://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:1"
    commands: list[tuple[list[str], dict[str, str]]] = [
        (["snapshot", "create", "--repo", repo, str(tmp_path / "disk.img")], env),
        (["snapshot", "list", "--repo", repo], env),
        (["snapshot", "list", "--repo", repo], file_env),
        (["snapshot", "list", "--repo", repo], {**env, "AWS_SECRET_ACCESS_KEY": SECRET_KEY + "-wrong"}),
        (["snapshot", "list", "--repo", "s3://no-such-bucket-x/p"], env),
        (["restore", "--repo", repo, "--snapshot", "1" * 64, str(tmp_path / "o")], env),
        (["snapshot", "list", "--repo", repo, "--s3-endpoint", bad_endpoint], env),
    ]
    runs = [ferry("--log-level", level, *args, env=run_env) for args, run_env in commands]
    if level == "debug":
        assert "Authorization" in runs[1].stderr, "botocore's debug lines are there, scrubbed"
    for run in runs:
        output = run.stdout + run.stderr
        assert "Traceback" not in output
        for secret in (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN):
            assert secret not in output, (secret, run.args, output[-2000:])
