"""The peer tools, run on the benchmark's workloads as measured child processes, beside Ferry.

restic (Debian package, 0.14)
    Content-defined ~1 MiB chunks, zstd-compressed (repository v2, ``--compression auto``, the default),
    encrypted, packed into ~16 MiB pack files in an S3 repository ``s3:<endpoint>/<bucket>/restic`` on the
    benchmark's SeaweedFS server. ``restic restore`` downloads whole packs with ranged GETs over
    ``s3.connections`` connections (default 5; the ``connections`` keyword sets ``-o s3.connections=N``),
    checks every blob's SHA-256 and writes files out of order into place. Choices:

    - defaults everywhere else: compression auto, default pack size, no ``--verify`` (restic 0.14 reads the
      restored files back only with ``--verify``), no ``--sparse`` (0.14 has none: zero runs are written);
    - a block image is backed up as a file (restic has no block mode): ``restic backup <image name>`` run
      in the image's directory, so ``restore --target DEST`` writes ``DEST/<image name>``; a tree or file
      workload is backed up the same way, as its directory's name;
    - ``--cache-dir`` inside ``work``; every restore starts from an empty cache, as on a fresh node (the
      cache holds metadata only: index, snapshots, trees);
    - the S3 bucket is created by ``restic init`` (checked against SeaweedFS: it works), so no S3 client here;
    - a minimal environment: no proxy variables, ``HOME`` in ``work`` (no ``~/.aws``, ``~/.cache``).

casync (Debian package, version 2)
    Content-defined chunks (16/64/256 KiB min/avg/max, the default), one file per chunk in a chunk store,
    SHA-512/256 IDs, an index listing them: a blob index (``.caibx``) for a block image, a directory index
    (``.caidx``, a catar stream: files and metadata) for a tree. ``casync extract`` from an ``http://``
    index and store spawns the ``casync-http`` helper (libcurl), which fetches one chunk at a time over
    one keep-alive connection and passes it on; casync waits for the helper (``waitid``), so the helper's
    CPU is in the measured figures. Every chunk is hashed; zero runs of a blob become holes. Choices:

    - ``--compression=zstd``: this build links libzstd and zstd is also its default (chunk files start
      with the zstd magic); the level is casync's own;
    - ``--seed-output=no`` on extract: a no-op for the fresh destinations the benchmark uses, and keeps a
      leftover file from being read back as a seed;
    - ``TMPDIR`` on tmpfs (a fresh ``/dev/shm/peers-casync-*``; ``tmpfs_scratch=False`` keeps casync's own
      ``/var/tmp``): casync and casync-http talk through a directory of symlinks (``*.carem``), several
      symlink/unlink calls per chunk. On this VM's ext4 each costs 0.1-0.8 ms of system CPU, which made a
      24 MiB extraction take 2.6 s instead of 0.13 s. It is scratch for the protocol, not data: we measure
      casync's restore, not this disk's metadata latency (the one setting that favours casync);
    - otherwise defaults: on make the default feature set (ownership, permissions, times, xattrs, ACLs,
      chattr flags), on extract restoring all of it. As root this works on ext4 and on overlayfs here
      (both checked), and the content is identical;
    - the store is served by a small threaded HTTP/1.1 server in this module (``python -m bench.peers
      serve``): keep-alive, TCP_NODELAY, a response in one send; 512 MiB extracts in 1.7-2.5 s. Python's
      ``http.server`` closes every connection (HTTP/1.0: 6.9 s), and in HTTP/1.1 mode sends headers and
      body apart, which with delayed ACKs costs 40 ms a chunk (4 min 40 s).

    desync (the parallel Go reimplementation) is not packaged here.

    with Casync(work / "casync") as casync:
        casync.make(w)
        m, restored = casync.extract(w, dest)
        same_content(w, restored)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import selectors
import shutil
import socketserver
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType

from agent.settings import MiB
from bench.measure import Measured, ToolFailed, run_measured
from bench.workloads import Sizes, Workload, generate, write_mixed_file
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedServer

RESTIC = "restic"
CASYNC = "casync"
PASSWORD = "ferry-bench-password"
"""The restic repository password: benchmark data only."""
TOOL_TIMEOUT_S = 3600.0
"""Bound on one measured backup, restore, make or extract."""
QUICK_TIMEOUT_S = 120.0
"""Bound on one unmeasured step (restic init, a version query)."""
SERVER_START_S = 15.0
SERVER_STOP_S = 10.0
BLOCK = 16 * MiB
"""Read size of the content comparison."""
SHM = Path("/dev/shm")
"""tmpfs for casync's scratch directory (see the module docstring)."""
_PROJECT = Path(__file__).resolve().parents[1]


def _base_env(home: Path) -> dict[str, str]:
    """Only what the tools need: no proxies, no AWS or restic variables from the caller's environment."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C.UTF-8"}


class _Logs:
    """Numbered log files under ``work/logs``, one per tool run, so a failure shows the tool's output."""

    def __init__(self, work: Path) -> None:
        self.directory = work / "logs"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)

    def new(self, tool: str, step: str, workload: str = "") -> Path:
        suffix = f"-{workload}" if workload else ""
        return self.directory / f"{next(self._numbers):03}-{tool}-{step}{suffix}.log"


class Restic:
    """restic with an S3 repository on the given SeaweedFS server (one bucket/prefix per instance)."""

    def __init__(
        self,
        work: Path,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        connections: int | None = None,
    ) -> None:
        self.work = work
        self.repository = f"s3:{endpoint.rstrip('/')}/{bucket}/restic"
        self.connections = connections
        self.cache = work / "cache"
        self._logs = _Logs(work)
        self._restores = itertools.count(1)
        home = work / "home"
        home.mkdir(parents=True, exist_ok=True)
        self._env = {
            **_base_env(home),
            "RESTIC_PASSWORD": PASSWORD,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
        }

    def _argv(self, command: str, *args: str, cache: Path | None = None) -> list[str]:
        options = ["-o", f"s3.connections={self.connections}"] if self.connections is not None else []
        cache_dir = cache if cache is not None else self.cache
        return [RESTIC, command, "--repo", self.repository, "--cache-dir", str(cache_dir), *options, *args]

    def init(self) -> None:
        """Create the repository (format v2, so compression ``auto`` = zstd) and, on SeaweedFS, its bucket."""
        log = self._logs.new("restic", "init")
        run_measured(
            self._argv("init", "--repository-version", "2"),
            output_bytes=0,
            env=self._env,
            log=log,
            timeout_s=QUICK_TIMEOUT_S,
        )

    def backup(self, w: Workload) -> tuple[Measured, str]:
        """Measured ``restic backup`` of the image file or directory; returns the snapshot's ID."""
        log = self._logs.new("restic", "backup", w.name)
        argv = self._argv("backup", "--json", "--quiet", w.source.name)
        m = run_measured(argv, w.size, env=self._env, cwd=w.source.parent, log=log, timeout_s=TOOL_TIMEOUT_S)
        return m, _snapshot_id(log)

    def restore(self, w: Workload, snapshot: str, dest: Path) -> tuple[Measured, Path]:
        """Measured ``restic restore`` into the empty directory ``dest``, from an empty cache. Returns the
        restored image file (block) or the restored directory (tree, file)."""
        cache = self.work / f"cache-restore-{next(self._restores)}"
        log = self._logs.new("restic", "restore", w.name)
        argv = self._argv("restore", snapshot, "--target", str(dest), cache=cache)
        try:
            m = run_measured(argv, w.size, env=self._env, log=log, timeout_s=TOOL_TIMEOUT_S)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return m, dest / w.source.name


def _snapshot_id(log: Path) -> str:
    """The snapshot ID from the summary line of ``restic backup --json`` (0.14 reports the short ID)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            message = json.loads(line)
            if message.get("message_type") == "summary":
                return str(message["snapshot_id"])
    raise ToolFailed(f"restic backup printed no summary; see {log}")


class _StoreHandler(socketserver.StreamRequestHandler):
    """GET and HEAD of files under the server's root, HTTP/1.1 with keep-alive, each response in one send."""

    server: _StoreServer
    disable_nagle_algorithm = True

    def handle(self) -> None:
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        line = self.rfile.readline(8192)
        if not line:
            return False
        headers = []
        while (header := self.rfile.readline(8192)) not in (b"\r\n", b"\n", b""):
            headers.append(header.lower())
        parts = line.decode("latin-1").split()
        if len(parts) != 3:
            return False
        method, target, version = parts
        keep_alive = version == "HTTP/1.1" and not any(h.startswith(b"connection: close") for h in headers)
        path = self.server.file_for(target) if method in ("GET", "HEAD") else None
        body = path.read_bytes() if path is not None else b""
        status = "200 OK" if path is not None else "404 Not Found"
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
        head += "Content-Type: application/octet-stream\r\n" + ("" if keep_alive else "Connection: close\r\n")
        self.wfile.write(head.encode() + b"\r\n" + (body if method == "GET" else b""))
        return keep_alive


class _StoreServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        super().__init__(("127.0.0.1", 0), _StoreHandler)

    def file_for(self, target: str) -> Path | None:
        relative = urllib.parse.unquote(urllib.parse.urlsplit(target).path).lstrip("/")
        path = (self.root / relative).resolve()
        return path if path.is_relative_to(self.root) and path.is_file() else None


def _serve(root: Path) -> None:
    """The store server's process: print the port once listening, then serve until terminated."""
    with _StoreServer(root) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


class Casync:
    """casync with a chunk store in `work`, served over HTTP on 127.0.0.1 for extraction. A context manager:
    __enter__ starts the HTTP server (any free port), __exit__ stops it. Chunks are zstd-compressed."""

    def __init__(self, work: Path, *, tmpfs_scratch: bool = True) -> None:
        self.work = work
        self.served = work / "served"
        self.store = self.served / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self._logs = _Logs(work)
        home = work / "home"
        home.mkdir(parents=True, exist_ok=True)
        self._env = _base_env(home)
        self._tmpfs_scratch = tmpfs_scratch and SHM.is_dir()
        self._scratch = work / "tmp"
        """TMPDIR of casync: where its helper protocol's ``*.carem`` directories go."""
        self._scratch.mkdir(exist_ok=True)
        self._server: subprocess.Popen[bytes] | None = None
        self._url = ""

    def __enter__(self) -> Casync:
        if self._tmpfs_scratch:
            self._scratch = Path(tempfile.mkdtemp(prefix="peers-casync-", dir=SHM))
        try:
            self._start_server()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        try:
            self._stop_server()
        finally:
            if self._scratch.is_relative_to(SHM):
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = self.work / "tmp"

    def _start_server(self) -> None:
        log = (self._logs.directory / "http-server.log").open("wb")
        try:
            self._server = subprocess.Popen(
                [sys.executable, "-m", "bench.peers", "serve", str(self.served)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=_PROJECT,
                start_new_session=True,
            )
        finally:
            log.close()
        port = _read_port(self._server, SERVER_START_S)
        self._url = f"http://127.0.0.1:{port}"
        _wait_answering(self._url, SERVER_START_S)

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.terminate()
        try:
            server.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(SERVER_STOP_S)
        if server.stdout is not None:
            server.stdout.close()

    def _run_env(self) -> dict[str, str]:
        return {**self._env, "TMPDIR": str(self._scratch)}

    @staticmethod
    def index_name(w: Workload) -> str:
        return f"{w.name}.caibx" if w.is_block else f"{w.name}.caidx"

    def make(self, w: Workload) -> Measured:
        """Measured ``casync make``: the workload's chunks into the store and its index beside it."""
        log = self._logs.new("casync", "make", w.name)
        index = self.served / self.index_name(w)
        argv = [CASYNC, "make", f"--store={self.store}", "--compression=zstd", str(index), str(w.source)]
        return run_measured(argv, w.size, env=self._run_env(), log=log, timeout_s=TOOL_TIMEOUT_S)

    def extract(self, w: Workload, dest: Path) -> tuple[Measured, Path]:
        """Measured ``casync extract`` over HTTP into the empty directory ``dest``. Returns the restored
        image file (block) or the restored directory (tree, file)."""
        if self._server is None:
            raise RuntimeError("Casync.extract needs the HTTP server: use 'with Casync(work) as casync'")
        log = self._logs.new("casync", "extract", w.name)
        target = dest / w.source.name
        argv = [
            CASYNC,
            "extract",
            "--seed-output=no",
            f"--store={self._url}/store",
            f"{self._url}/{self.index_name(w)}",
            str(target),
        ]
        m = run_measured(argv, w.size, env=self._run_env(), log=log, timeout_s=TOOL_TIMEOUT_S)
        return m, target


def _read_port(server: subprocess.Popen[bytes], timeout_s: float) -> int:
    """The port the server prints once it listens, waited for up to ``timeout_s``."""
    assert server.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(server.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise RuntimeError(f"the chunk store's HTTP server printed no port within {timeout_s} s")
    line = server.stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"the chunk store's HTTP server did not start (exit code {server.poll()})")
    return int(line)


def _wait_answering(url: str, timeout_s: float) -> None:
    """Poll ``url`` until any HTTP answer, for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # 404 for the root: the server answers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s} s") from None
            time.sleep(0.05)


def versions() -> dict[str, str]:
    """``restic version``'s first line and ``casync --version``."""

    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S, check=True)
        return done.stdout.strip().splitlines()[0]

    return {"restic": first_line([RESTIC, "version"]), "casync": first_line([CASYNC, "--version"])}


def same_content(w: Workload, restored: Path) -> None:
    """Raise AssertionError naming the first difference between the workload's source and ``restored``:
    file bytes for a block image; for a directory, the set of relative file paths, their sizes and
    contents (not metadata)."""
    if w.is_block:
        _same_file(w.source, restored)
    else:
        _same_tree(w.source, restored)


def _same_file(expected: Path, actual: Path) -> None:
    if not actual.is_file():
        raise AssertionError(f"{actual}: not a file")
    if (a := expected.stat().st_size) != (b := actual.stat().st_size):
        raise AssertionError(f"{actual}: {b} bytes, expected {a}")
    with expected.open("rb", buffering=0) as fe, actual.open("rb", buffering=0) as fa:
        offset = 0
        while block := fe.read(BLOCK):
            other = fa.read(len(block))
            if block != other:
                at = offset + next(i for i, (x, y) in enumerate(zip(block, other, strict=False)) if x != y)
                raise AssertionError(f"{actual}: differs from {expected} at byte {at}")
            offset += len(block)


def _files(root: Path) -> dict[str, int]:
    """Relative path → size of every non-directory entry under ``root``."""
    found: dict[str, int] = {}
    for directory, _, names in os.walk(root):
        base = os.path.relpath(directory, root)
        for name in names:
            relative = name if base == "." else os.path.join(base, name)
            found[relative] = os.lstat(os.path.join(directory, name)).st_size
    return found


def _same_tree(expected: Path, actual: Path) -> None:
    if not actual.is_dir():
        raise AssertionError(f"{actual}: not a directory")
    want, got = _files(expected), _files(actual)
    if missing := sorted(want.keys() - got.keys()):
        raise AssertionError(f"{actual}: {len(missing)} files missing, first {missing[0]}")
    if extra := sorted(got.keys() - want.keys()):
        raise AssertionError(f"{actual}: {len(extra)} unexpected files, first {extra[0]}")
    for relative in sorted(want):
        if want[relative] != got[relative]:
            raise AssertionError(f"{actual / relative}: {got[relative]} bytes, expected {want[relative]}")
    for relative in sorted(want):
        _same_file(expected / relative, actual / relative)


# The trial: every smoke workload through both tools, then one larger block image.


def _show(label: str, m: Measured) -> None:
    print(
        f"{label:<28} {m.wall_s:7.2f} s  {m.gbps:6.3f} GB/s  {m.cpu_s:7.2f} cpu s  "
        f"{m.cpu_s_per_gb:6.2f} cpu s/GB  {m.peak_rss_bytes / MiB:7.1f} MiB peak RSS",
        flush=True,
    )


def _round_trip(restic: Restic, casync: Casync, w: Workload, work: Path) -> None:
    m, snapshot = restic.backup(w)
    _show(f"restic backup {w.name}", m)
    dest = work / f"restore-restic-{w.name}"
    dest.mkdir()
    m, restored = restic.restore(w, snapshot, dest)
    _show(f"restic restore {w.name}", m)
    same_content(w, restored)
    shutil.rmtree(dest)
    _show(f"casync make {w.name}", casync.make(w))
    dest = work / f"extract-casync-{w.name}"
    dest.mkdir()
    m, restored = casync.extract(w, dest)
    _show(f"casync extract {w.name}", m)
    same_content(w, restored)
    shutil.rmtree(dest)


def trial(big_mib: int, keep: bool) -> None:
    """Smoke workloads, then a ``big_mib`` MiB block image, through restic and casync, in /tmp/peers-*."""
    print(json.dumps(versions()), flush=True)
    work = Path(tempfile.mkdtemp(prefix="peers-", dir="/tmp"))
    server = SeaweedServer(work / "seaweedfs")
    try:
        server.start()
        restic = Restic(work / "restic", server.endpoint, ACCESS_KEY, SECRET_KEY, "peers-restic")
        restic.init()
        with Casync(work / "casync") as casync:
            for w in generate(work, Sizes.smoke()):
                _round_trip(restic, casync, w, work)
            if big_mib:
                image = work / "data" / "big" / "big.img"
                image.parent.mkdir()
                write_mixed_file(image, big_mib * MiB, seed=7)
                _round_trip(restic, casync, Workload("block", image, big_mib * MiB), work)
        print("all restored content identical", flush=True)
    finally:
        server.stop()
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("trial", help="run restic and casync on the smoke workloads and one larger image")
    run.add_argument("--big-mib", type=int, default=512, help="size of the larger block image (0: none)")
    run.add_argument("--keep", action="store_true", help="keep the /tmp/peers-* directory")
    serve = commands.add_parser("serve", help="(internal) serve a directory over HTTP/1.1 on 127.0.0.1")
    serve.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            _serve(args.root)
    else:
        trial(args.big_mib, args.keep)


if __name__ == "__main__":
    main()
