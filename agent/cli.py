"""The ``ferry`` command line: flags → settings (``agent.settings``) → run → output.

Exit status: 0 success, 1 a Ferry error (the message says why), 2 bad usage, 3 done but incomplete
(entries a snapshot could not read, snapshots a listing could not read, metadata a restore could not
apply: each listed on stderr and in ``--json``; restic uses 3 the same way), 130 interrupted.
Results go to stdout (``--json`` for machines); progress, summaries and problems to stderr. No command
prints a traceback (``--log-level debug`` logs one for an unexpected error) or a credential.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict
from typing import Any, NoReturn, TextIO

import uvloop

from agent import logs
from agent.backup.writer import create_snapshot
from agent.errors import ConfigError, FerryError, SnapshotNotFound, SourceError
from agent.fs.names import Problem, is_utf8, shown
from agent.pipeline.restore import restore
from agent.repo.check import check_repository
from agent.repo.config import add_key, init_repository, list_keys, open_or_init, open_repository, remove_key, summary
from agent.repo.format import Entry, Manifest
from agent.repo.index import read_index
from agent.repo.prune import prune, repair_index
from agent.repo.repository import Repository, check_reference, created_at, summary_of
from agent.repo.retention import Candidate, Policy, group_of, kept
from agent.repo.stats import repository_stats
from agent.settings import (
    MiB,
    RepositorySettings,
    RestoreSettings,
    S3Settings,
    SnapshotSettings,
    agent_settings_from_env,
    parse_duration,
    parse_max_unused,
    parse_size,
    read_password_file,
    repository_settings_from_env,
    s3_settings_from_env,
)
from agent.storage import open_storage

log = logging.getLogger("ferry")

EXIT_INCOMPLETE = 3
"""Done, but not everything: the problems are listed (as restic's exit status 3)."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


class ProgressBar:
    """One self-rewriting line on a terminal: done/total, percent, throughput, ETA. Silent elsewhere."""

    def __init__(self, label: str, stream: TextIO, interval_s: float = 0.2) -> None:
        self._label = label
        self._stream = stream
        self._enabled = stream.isatty()
        self._interval = interval_s
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self._enabled or (now - self._last < self._interval and done < total):
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        rate = done / elapsed
        pct = 100.0 * done / total if total else 100.0
        eta = f"{(total - done) / rate:.0f} s" if rate > 0 and done < total else "-"
        self._stream.write(
            f"\r{self._label}: {human_bytes(done)} / {human_bytes(total)} {pct:5.1f}%  "
            f"{human_bytes(rate)}/s  ETA {eta}   "
        )
        if done >= total:
            self._stream.write("\n")
        self._stream.flush()


def _add_repo_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repository (S3 options default to the AWS_* environment, as for the AWS CLI)")
    g.add_argument("--repo", required=True, help="s3://bucket/prefix, file:///path or a local directory")
    g.add_argument("--s3-endpoint", help="endpoint URL (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    g.add_argument("--s3-region", help="region (AWS_REGION)")
    g.add_argument("--s3-path-style", action="store_true", default=None, help="path-style bucket addressing")
    g.add_argument("--s3-ca-bundle", help="PEM file of CAs to trust (AWS_CA_BUNDLE)")
    g.add_argument(
        "--s3-insecure-skip-tls-verify",
        action="store_true",
        default=None,
        help="do not verify TLS (testing only)",
    )
    g.add_argument("--s3-profile", help="profile in the shared credentials file (AWS_PROFILE)")
    g.add_argument(
        "--password-file",
        help="file holding the repository's password (FERRY_PASSWORD_FILE; one trailing newline is ignored)",
    )
    g.add_argument(
        "--manifest-memory",
        help=f"most memory one snapshot's manifest may take (FERRY_MANIFEST_MEMORY; "
        f"default {RepositorySettings.manifest_memory_bytes // MiB}MiB)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Verified, parallel volume snapshots and restores.")
    parser.add_argument(
        "--log-level", help="debug, info, warning or error (FERRY_LOG_LEVEL; default: warning, agent: info)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    agent = sub.add_parser(
        "agent",
        help="run the node agent (what the DaemonSet runs)",
        description="Claim Velero's DataUploads and DataDownloads of this data mover, back up and restore them. "
        "Every flag has a FERRY_* variable (e.g. --node-name / FERRY_NODE_NAME); flags win. SIGTERM stops intake "
        "and records in-flight backups and restores.",
    )
    agent.add_argument("--node-name", help="this node's name (FERRY_NODE_NAME, from the downward API); required")
    agent.add_argument("--namespace", help="Velero's namespace (FERRY_NAMESPACE; default velero)")
    agent.add_argument("--datamover", help="spec.datamover handled (FERRY_DATAMOVER; default ferry)")
    agent.add_argument("--kubelet-root", help="kubelet root directory (FERRY_KUBELET_ROOT; default /var/lib/kubelet)")
    agent.add_argument(
        "--concurrency", type=int, help="backups and restores at once on this node (FERRY_CONCURRENCY; default 1)"
    )
    agent.add_argument(
        "--progress-interval", type=float, help="seconds between progress writes (FERRY_PROGRESS_INTERVAL; default 5)"
    )
    agent.add_argument("--http-address", help="address of /healthz, /readyz, /metrics (FERRY_HTTP_ADDRESS)")
    agent.add_argument("--http-port", type=int, help="port of /healthz, /readyz, /metrics (FERRY_HTTP_PORT; 8080)")
    agent.add_argument("--log-format", choices=("json", "text"), help="FERRY_LOG_FORMAT; default json")
    agent.add_argument(
        "--credentials-file", help="AWS credentials file if a BSL has no spec.credential (default /credentials/cloud)"
    )
    agent.add_argument(
        "--shutdown-grace",
        type=float,
        help="seconds in-flight backups and restores get after SIGTERM (FERRY_SHUTDOWN_GRACE; 20)",
    )
    agent.add_argument("--kubeconfig", help="kubeconfig file (KUBECONFIG; default: the in-cluster service account)")

    sub.add_parser(
        "hold",
        help="keep this pod, and the volume it mounts, in place until SIGTERM (what backup and restore pods run)",
        description="Block until SIGTERM or SIGINT. Backup and restore pods run it: the pod only holds a volume on "
        "a node while the node's agent reads or writes it.",
    )

    snap = sub.add_parser("snapshot", help="create, list, show and forget snapshots").add_subparsers(
        dest="action", required=True
    )
    create = snap.add_parser("create", help="snapshot a block device, image file or directory")
    _add_repo_flags(create)
    create.add_argument("source", help="block device, image file (block mode) or directory (filesystem mode)")
    create.add_argument("--chunk-size", default="4MiB", help="block mode chunk size (default 4MiB)")
    create.add_argument("--pack-size", default="32MiB", help="target pack size (default 32MiB)")
    create.add_argument("--compression-level", type=int, default=3, help="zstd level 1-19 (default 3)")
    create.add_argument("--threads", type=int, default=0, help="hash/compress threads (default: one per CPU)")
    create.add_argument("--uploads", type=int, default=3, help="packs uploading at once (default 3)")

    lst = snap.add_parser("list", help="list the repository's snapshots")
    _add_repo_flags(lst)
    show = snap.add_parser("show", help="describe one snapshot")
    _add_repo_flags(show)
    show.add_argument("snapshot_id", help="snapshot ID, a unique prefix of it (4 hex digits or more), or latest")

    ls = snap.add_parser("ls", help="list the files of a filesystem snapshot (under PATH)")
    _add_repo_flags(ls)
    ls.add_argument("snapshot_id", help="snapshot ID, a unique prefix of it (4 hex digits or more), or latest")
    ls.add_argument("path", nargs="?", default="", help="a path in the snapshot: it and what is beneath it")

    forget = snap.add_parser(
        "forget",
        help="forget snapshots: by ID, or by a retention policy (a dry run unless --apply)",
        description="Delete snapshots' manifests: the ones named, or those a retention policy does not keep "
        "(per group: the Velero namespace and PVC, else the host and path; as restic's forget --keep-*). Named "
        "snapshots are forgotten at once; a policy only shows what it would forget until --apply is given. "
        "--dry-run shows and changes nothing. The data stays in the repository's packs.",
    )
    _add_repo_flags(forget)
    forget.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot ID, unique prefix, or latest")
    for rule in ("last", "daily", "weekly", "monthly"):
        forget.add_argument(f"--keep-{rule}", type=int, metavar="N", help=f"keep {rule} snapshots")
    forget.add_argument("--apply", action="store_true", help="carry a policy out (default: show what it would do)")
    forget.add_argument("--dry-run", action="store_true", help="show what would be forgotten; change nothing")

    repo_cmd = sub.add_parser("repo", help="the repository as a whole").add_subparsers(dest="action", required=True)
    init = repo_cmd.add_parser(
        "init",
        help="create a repository (encrypted with the password given), or upgrade a format 1 one",
        description="Create a Ferry repository: its config and, encrypted (the default), a random master key sealed "
        "with the password of --password-file / FERRY_PASSWORD_FILE. --no-encryption creates an unencrypted one, and "
        "upgrades a format 1 repository (no config) in place.",
    )
    _add_repo_flags(init)
    init.add_argument("--no-encryption", action="store_true", help="store data unencrypted (no password)")
    prn = repo_cmd.add_parser(
        "prune",
        help="delete packs no snapshot needs (marked by one run, deleted by a later one after --grace)",
        description="Copy the live chunks of mostly unused packs into new packs (until the unused data left is at "
        "most --max-unused of the used), mark packs no snapshot needs, and delete those an earlier run marked at "
        "least the grace period ago (unless a snapshot written meanwhile needs them). Safe while snapshots are "
        "written and restored (docs/FORMAT.md, section 10).",
    )
    _add_repo_flags(prn)
    prn.add_argument("--grace", default="1h", help="how old a mark (and a pack) must be to act on (default 1h)")
    prn.add_argument(
        "--max-unused",
        default="5%",
        help="unused data to tolerate in packs kept, as a percentage of the used data, or 'unlimited' to never "
        "repack (default 5%%)",
    )
    prn.add_argument("--dry-run", action="store_true", help="show what would be done; change nothing")
    rep = repo_cmd.add_parser("repair-index", help="rebuild the index from the manifests and the packs")
    _add_repo_flags(rep)
    key = repo_cmd.add_parser(
        "key", help="list, add and remove the passwords of an encrypted repository"
    ).add_subparsers(dest="key_action", required=True)
    key_list = key.add_parser("list", help="the repository's keys, one per password")
    _add_repo_flags(key_list)
    key_add = key.add_parser("add", help="add a password (no data is re-encrypted)")
    _add_repo_flags(key_add)
    key_add.add_argument("--new-password-file", required=True, help="file holding the password to add")
    key_remove = key.add_parser("remove", help="remove a password (not the one given to open the repository)")
    _add_repo_flags(key_remove)
    key_remove.add_argument("key_id", help="the key's ID or a unique prefix of it (4 hex digits or more)")
    stats = repo_cmd.add_parser("stats", help="what the snapshots restore, share and take in storage")
    _add_repo_flags(stats)
    chk = repo_cmd.add_parser(
        "check",
        help="check every manifest and that every chunk lies in a pack (--read-data: read and verify every chunk)",
    )
    _add_repo_flags(chk)
    chk.add_argument("--read-data", action="store_true", help="read every chunk and verify it, as a restore does")

    rst = sub.add_parser(
        "restore",
        help="restore a snapshot onto a block device, image file or directory",
        description="Restore a snapshot. A target that already exists is checked first, chunk by chunk: what it "
        "already holds (what a killed or interrupted restore wrote) is kept and not fetched again, so running the "
        "same command again resumes. A target this command created is removed if the restore fails.",
    )
    _add_repo_flags(rst)
    rst.add_argument(
        "--snapshot", required=True, help="snapshot ID, a unique prefix of it (4 hex digits or more), or latest"
    )
    rst.add_argument("target", help="block device or image file (block snapshots), directory (filesystem)")
    rst.add_argument("--sparse", action="store_true", help="the block device reads as zeros: skip its holes")
    rst.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="restore only the paths (and what is beneath them) this glob matches; repeatable",
    )
    d = RestoreSettings()
    rst.add_argument(
        "--reads",
        type=int,
        default=d.reads_in_flight,
        help=f"the most ranged GETs in flight; the link sets how many ({d.reads_in_flight})",
    )
    rst.add_argument(
        "--range-size",
        default=f"{d.max_range_bytes // MiB}MiB",
        help="largest coalesced GET; smaller on a distant store (%(default)s)",
    )
    rst.add_argument("--memory", default=f"{d.memory_bytes // MiB}MiB", help="fetched bytes held at once (%(default)s)")
    rst.add_argument("--threads", type=int, default=0, help="decode/verify/write threads (default: one per CPU)")
    rst.add_argument(
        "--direct-io",
        action=argparse.BooleanOptionalAction,
        default=RestoreSettings.direct_io,
        help="write with O_DIRECT where it lines up, bypassing the page cache (default on)",
    )
    return parser


def s3_settings(args: argparse.Namespace) -> S3Settings:
    return s3_settings_from_env(
        os.environ,
        endpoint_url=args.s3_endpoint,
        region=args.s3_region,
        path_style=args.s3_path_style,
        ca_bundle=args.s3_ca_bundle,
        verify_tls=False if args.s3_insecure_skip_tls_verify else None,
        profile=args.s3_profile,
    )


def repository_settings(args: argparse.Namespace) -> RepositorySettings:
    memory = parse_size(args.manifest_memory, "--manifest-memory") if args.manifest_memory else None
    return repository_settings_from_env(os.environ, manifest_memory_bytes=memory)


def _password(args: argparse.Namespace, settings: RepositorySettings) -> bytes | None:
    """The password of ``--password-file`` (else FERRY_PASSWORD_FILE), or None if neither is given."""
    if args.password_file:
        return read_password_file(args.password_file, "--password-file")
    if settings.password_file:
        return read_password_file(settings.password_file, "FERRY_PASSWORD_FILE")
    return None


async def _with_repo(
    args: argparse.Namespace, body: Callable[[Repository], Awaitable[int]], *, write: bool = False
) -> int:
    """Open the repository (``write``: to change it) and run ``body`` with it."""
    settings = repository_settings(args)
    password = _password(args, settings)
    storage = await open_storage(args.repo, s3_settings(args))
    async with storage:
        return await body(await open_repository(storage, settings, password, write=write))


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    sys.stdout.write((json.dumps(payload, indent=2) if args.json else text) + "\n")


def _problem_json(problem: Problem) -> dict[str, str]:
    """A path for machines: as text if it is UTF-8, else its bytes in base64 (``rawPath``)."""
    if is_utf8(problem.path):
        return {"path": problem.path, "reason": problem.reason}
    return {"rawPath": _raw(problem.path), "reason": problem.reason}


def _report(what: str, problems: Iterable[Problem]) -> None:
    for problem in problems:
        sys.stderr.write(f"ferry: {what} {problem}\n")


async def cmd_snapshot_create(args: argparse.Namespace) -> int:
    settings = SnapshotSettings(
        block_chunk_bytes=parse_size(args.chunk_size, "--chunk-size"),
        pack_bytes=parse_size(args.pack_size, "--pack-size"),
        compression_level=args.compression_level,
        threads=args.threads,
        uploads_in_flight=args.uploads,
    )

    async def body(repo: Repository) -> int:
        bar = ProgressBar("snapshot", sys.stderr)
        result = await create_snapshot(repo, args.source, settings, bar)
        rate = result.size / max(result.seconds, 1e-9)
        _report("skipped", result.skipped)
        _report("note:", result.notes)
        if not args.json:
            sys.stderr.write(
                f"{result.mode} snapshot of {human_bytes(result.size)} in {result.seconds:.2f} s "
                f"({human_bytes(rate)}/s): {result.new_chunks} new chunks ({human_bytes(result.new_stored_bytes)} "
                f"stored in {result.packs} packs), {result.reused_chunks} already in the repository, "
                f"{human_bytes(result.hole_bytes)} of zeros\n"
            )
            if result.skipped:
                sys.stderr.write(
                    f"ferry: the snapshot was saved without {len(result.skipped)} entries that could not be read "
                    "(listed above)\n"
                )
        payload = asdict(result)
        payload["skipped"] = [_problem_json(p) for p in result.skipped]
        payload["notes"] = [_problem_json(p) for p in result.notes]
        _emit(args, payload, result.snapshot_id)
        return EXIT_INCOMPLETE if result.skipped else 0

    repo_settings = repository_settings(args)
    password = _password(args, repo_settings)
    try:  # before a repository may be created for it
        os.stat(args.source)
    except OSError as e:
        raise SourceError(f"cannot open {args.source!r}: {e.strerror}") from e
    storage = await open_storage(args.repo, s3_settings(args))
    async with storage:
        opened = await open_or_init(storage, repo_settings, password)
        if opened.created:
            sys.stderr.write(f"ferry: created a new encrypted repository at {storage.describe()}\n")
        return await body(opened.repository)


def _summary(snapshot_id: str, m: Manifest) -> dict[str, Any]:
    return {"id": snapshot_id, **summary_of(m)}


def _source(source: dict[str, str]) -> str:
    """What a snapshot is of, in a word: the Velero backup and PVC it belongs to, else the path it read."""
    backup = source.get("velero.io/backup-name")
    if backup:
        return f"velero backup {backup}: PVC {source.get('namespace', '?')}/{source.get('pvc', '?')}"
    return source.get("path", "")


async def cmd_snapshot_list(args: argparse.Namespace) -> int:
    async def body(repo: Repository) -> int:
        rows: list[dict[str, Any]] = []
        unreadable = 0
        # Format 2: what each snapshot is comes from the index, without reading its manifest (`repo check`
        # reads every manifest); snapshots the index does not describe are read.
        known = (await read_index(repo)).snapshots if repo.config is not None else {}
        for snapshot_id in await repo.snapshot_ids():
            if snapshot_id in known:
                rows.append({"id": snapshot_id, **known[snapshot_id]})
                continue
            try:
                rows.append(_summary(snapshot_id, await repo.read_manifest(snapshot_id)))
            except FerryError as e:  # one bad manifest does not hide the others
                unreadable += 1
                sys.stderr.write(f"ferry: snapshot {snapshot_id} cannot be read: {logs.redact(str(e))}\n")
        rows.sort(key=lambda r: r["created"])
        lines = [f"{'ID':64}  {'MODE':10}  {'SIZE':>12}  CREATED               SOURCE"]
        lines += [
            f"{r['id']}  {r['mode']:10}  {human_bytes(r['size']):>12}  {shown(r['created']):20}  "
            f"{shown(_source(r['source']))}"
            for r in rows
        ]
        _emit(args, rows, "\n".join(lines))
        return EXIT_INCOMPLETE if unreadable else 0

    return await _with_repo(args, body)


async def cmd_snapshot_show(args: argparse.Namespace) -> int:
    check_reference(args.snapshot_id)  # bad input is said before anything is opened

    async def body(repo: Repository) -> int:
        snapshot_id = await repo.resolve(args.snapshot_id)
        info = _summary(snapshot_id, await repo.read_manifest(snapshot_id))
        text = "\n".join(f"{k + ':':14}{shown(v) if isinstance(v, str) else v}" for k, v in info.items())
        _emit(args, info, text)
        return 0

    return await _with_repo(args, body)


_TYPE_LETTERS = {"dir": "d", "file": "-", "symlink": "l", "hardlink": "h", "fifo": "p", "chardev": "c", "blockdev": "b"}


def _entry_json(entry: Entry) -> dict[str, Any]:
    where = {"path": entry.path} if is_utf8(entry.path) else {"rawPath": _raw(entry.path)}
    out: dict[str, Any] = where | {
        "type": entry.type,
        "mode": f"{entry.meta.mode:04o}",
        "uid": entry.meta.uid,
        "gid": entry.meta.gid,
        "size": entry.size,
        "mtimeNs": entry.meta.mtime_ns,
    }
    if entry.target:
        out |= {"target": entry.target} if is_utf8(entry.target) else {"rawTarget": _raw(entry.target)}
    return out


def _raw(text: str) -> str:
    return base64.b64encode(os.fsencode(text)).decode("ascii")


def _mtime(ns: int) -> str:
    try:
        return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # beyond what datetime holds (Linux stores more)
        return f"@{ns // 10**9}"


async def cmd_snapshot_ls(args: argparse.Namespace) -> int:
    check_reference(args.snapshot_id)
    under = args.path.strip("/")

    async def body(repo: Repository) -> int:
        snapshot_id = await repo.resolve(args.snapshot_id)
        m = await repo.read_manifest(snapshot_id)
        if m.mode != "filesystem":
            raise ConfigError(f"snapshot {snapshot_id} is of a block volume ({m.size} bytes): it holds no files")
        entries = [e for e in m.entries if not under or e.path == under or e.path.startswith(under + "/")]
        if under and not entries:
            raise ConfigError(f"snapshot {snapshot_id} has no {shown(under)}")
        lines = [
            f"{_TYPE_LETTERS[e.type]}{stat.filemode(e.meta.mode)[1:]} {e.meta.uid:>6} {e.meta.gid:>6} "
            f"{e.size:>12} {_mtime(e.meta.mtime_ns)}  {shown(e.path)}" + (f" -> {shown(e.target)}" if e.target else "")
            for e in entries
        ]
        _emit(args, [_entry_json(e) for e in entries], "\n".join(lines))
        return 0

    return await _with_repo(args, body)


async def cmd_repo_stats(args: argparse.Namespace) -> int:
    async def body(repo: Repository) -> int:
        st = await repository_stats(repo)
        for snapshot_id in st.unreadable:
            sys.stderr.write(f"ferry: snapshot {snapshot_id} cannot be read: not counted\n")
        payload = asdict(st) | {
            "unreadable": list(st.unreadable),
            "unreferenced_bytes": st.unreferenced_bytes,
            "dedup_ratio": round(st.dedup_ratio, 3),
            "compression_ratio": round(st.compression_ratio, 3),
        }
        text = "\n".join(
            [
                f"snapshots:            {st.snapshots}"
                + (f" ({len(st.unreadable)} unreadable)" if st.unreadable else ""),
                f"restore size:         {human_bytes(st.restore_bytes)}  (every snapshot restored)",
                f"distinct data:        {human_bytes(st.unique_bytes)} in {st.unique_chunks} chunks"
                f"  (deduplication {st.dedup_ratio:.2f}x)",
                f"stored:               {human_bytes(st.referenced_stored_bytes)}"
                f"  (compression {st.compression_ratio:.2f}x)",
                f"packs:                {human_bytes(st.pack_bytes)} in {st.packs} packs, "
                f"{human_bytes(st.unreferenced_bytes)} of it referenced by no snapshot",
            ]
        )
        _emit(args, payload, text)
        return EXIT_INCOMPLETE if st.unreadable else 0

    return await _with_repo(args, body)


async def cmd_repo_check(args: argparse.Namespace) -> int:
    async def body(repo: Repository) -> int:
        bar = ProgressBar("read data", sys.stderr)
        report = await check_repository(repo, read_data=args.read_data, progress=bar)
        lines = [f"damaged: {d}" for d in report.damage]
        read = (
            f", {report.chunks_read} chunks ({human_bytes(report.bytes_read)}) read and verified"
            if args.read_data
            else ""
        )
        lines.append(f"{report.snapshots} snapshots and {report.packs} packs checked{read}")
        if report.unreferenced_packs:
            lines.append(
                f"{len(report.unreferenced_packs)} packs ({human_bytes(report.unreferenced_bytes)}) are referenced by "
                "no snapshot (left by interrupted or forgotten snapshots; not damage)"
            )
        if report.transit_faults:
            lines.append(
                f"{report.transit_faults} reads came back corrupted and right when read again: the network path "
                "corrupts data, the stored objects are intact"
            )
        lines += [f"note: {n}" for n in report.notes]
        lines.append("no damage found" if report.ok else f"{len(report.damage)} problems found")
        payload = asdict(report) | {"damage": [str(d) for d in report.damage], "ok": report.ok}
        _emit(args, payload, "\n".join(lines))
        return 0 if report.ok else 1

    return await _with_repo(args, body)


async def cmd_snapshot_forget(args: argparse.Namespace) -> int:
    keeps = [args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly]
    policy = Policy(*(k or 0 for k in keeps))
    given = any(k is not None for k in keeps)
    if args.snapshots and given:
        raise ConfigError("give either snapshots to forget or a policy (--keep-*), not both")
    if not args.snapshots and not given:
        raise ConfigError("name the snapshots to forget, or give a policy (--keep-last/-daily/-weekly/-monthly)")
    if given and policy.empty:
        raise ConfigError("a policy that keeps nothing would forget every snapshot: give --keep-* counts of 1 or more")
    for reference in args.snapshots:
        check_reference(reference)

    async def body(repo: Repository) -> int:
        keep: dict[str, list[str]] = {}
        unreadable: list[str] = []
        if args.snapshots:
            doomed = sorted({await repo.resolve(ref) for ref in args.snapshots})
            present = set(await repo.snapshot_ids())
            for snapshot_id in doomed:  # a missing one is an error, not a silent no-op (a damaged one is forgotten)
                if snapshot_id not in present:
                    raise SnapshotNotFound(f"snapshot {snapshot_id} does not exist in {repo.describe()}")
            apply = not args.dry_run
        else:
            candidates: list[Candidate] = []
            for snapshot_id in await repo.snapshot_ids():
                try:
                    m = await repo.read_manifest(snapshot_id)
                except FerryError as e:  # no date to judge it by: kept
                    unreadable.append(snapshot_id)
                    sys.stderr.write(f"ferry: snapshot {snapshot_id} cannot be read, kept: {logs.redact(str(e))}\n")
                    continue
                candidates.append(Candidate(snapshot_id, created_at(m.created), group_of(m.source)))
            keep = kept(candidates, policy)
            doomed = sorted(c.snapshot_id for c in candidates if c.snapshot_id not in keep)
            apply = args.apply and not args.dry_run
        if apply:
            for snapshot_id in doomed:
                await repo.forget(snapshot_id)
        verb = "forgot" if apply else "would forget"
        lines = [f"keep    {i}  ({', '.join(rules)})" for i, rules in sorted(keep.items())]
        lines += [f"{'forget' if apply else 'forget?'} {i}" for i in doomed]
        summary = f"{verb} {len(doomed)} snapshot(s)"
        if not args.snapshots:
            summary += f", kept {len(keep) + len(unreadable)}"
        if not apply:
            summary += "; nothing was changed" + ("" if args.dry_run else " (--apply carries the policy out)")
        elif doomed:
            summary += "; their data stays in the repository's packs"
        lines.append(summary)
        payload = {"forget": doomed, "keep": keep, "unreadable": unreadable, "applied": apply}
        _emit(args, payload, "\n".join(lines))
        return EXIT_INCOMPLETE if unreadable else 0

    return await _with_repo(args, body, write=not args.dry_run)


async def cmd_restore(args: argparse.Namespace) -> int:
    check_reference(args.snapshot)
    settings = RestoreSettings(
        reads_in_flight=args.reads,
        max_range_bytes=parse_size(args.range_size, "--range-size"),
        memory_bytes=parse_size(args.memory, "--memory"),
        threads=args.threads,
        sparse=args.sparse,
        direct_io=args.direct_io,
    )

    async def body(repo: Repository) -> int:
        snapshot_id = await repo.resolve(args.snapshot)
        bar = ProgressBar("restore", sys.stderr)
        result = await restore(repo, snapshot_id, args.target, settings, bar, include=args.include)
        rate = result.total_bytes / max(result.seconds, 1e-9)
        _report("not restored:", result.problems)
        if not args.json:
            kept = (
                f", {human_bytes(result.kept_bytes)} already on the target and kept (checked chunk by chunk)"
                if result.kept_bytes
                else ""
            )
            sys.stderr.write(
                f"restored {human_bytes(result.total_bytes)} in {result.seconds:.2f} s ({human_bytes(rate)}/s), "
                f"{human_bytes(result.fetched_bytes)} fetched in {result.requests} requests{kept}, every chunk "
                "verified\n"
            )
        payload = asdict(result)
        payload["problems"] = [_problem_json(p) for p in result.problems]
        _emit(args, payload, f"restored {snapshot_id} to {shown(args.target)}")
        return EXIT_INCOMPLETE if result.problems else 0

    return await _with_repo(args, body)


async def cmd_agent(args: argparse.Namespace) -> int:
    from agent.app import Agent  # noqa: PLC0415 - the agent's dependencies load only for this command

    settings = agent_settings_from_env(
        os.environ,
        node_name=args.node_name,
        namespace=args.namespace,
        datamover=args.datamover,
        kubelet_root=args.kubelet_root,
        concurrency=args.concurrency,
        progress_interval_s=args.progress_interval,
        http_address=args.http_address,
        http_port=args.http_port,
        log_format=args.log_format,
        log_level=args.log_level,
        credentials_file=args.credentials_file,
        shutdown_grace_s=args.shutdown_grace,
        kubeconfig=args.kubeconfig,
    )
    logs.configure(settings.log_format, settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await Agent(settings).run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


async def cmd_repo_init(args: argparse.Namespace) -> int:
    settings = repository_settings(args)
    if args.no_encryption and args.password_file:
        raise ConfigError("--no-encryption and --password-file contradict each other")
    # --no-encryption wins over FERRY_PASSWORD_FILE: the flag is what this command was asked for.
    password = None if args.no_encryption else _password(args, settings)
    if not args.no_encryption and password is None:
        raise ConfigError(
            "a repository is encrypted with a password: give --password-file (or FERRY_PASSWORD_FILE), or "
            "--no-encryption for an unencrypted one"
        )
    storage = await open_storage(args.repo, s3_settings(args))
    async with storage:
        made = await init_repository(storage, settings, password)
    info = summary(made.repository)
    if not made.created:
        raise ConfigError(f"another writer created a repository at {info['location']} at the same time")
    if made.upgraded:
        done = "upgraded the format 1 repository (its snapshots stay unencrypted)"
    else:
        done = "created an unencrypted repository" if args.no_encryption else "created an encrypted repository"
    _emit(args, {**info, "upgraded": made.upgraded}, f"{done} at {info['location']} (ID {info['id'][:16]})")
    return 0


async def cmd_repo_prune(args: argparse.Namespace) -> int:
    grace = parse_duration(args.grace, "--grace")
    max_unused = parse_max_unused(args.max_unused, "--max-unused")

    async def body(repo: Repository) -> int:
        r = await prune(repo, grace_s=grace, dry_run=args.dry_run, max_unused=max_unused)
        would = "would " if r.dry_run else ""
        lines = [
            f"{r.snapshots} snapshots, {r.packs} packs, {human_bytes(r.stored_bytes)} stored",
            f"{would}delete {r.deleted_packs} packs ({human_bytes(r.deleted_bytes)}) marked earlier; "
            f"{r.kept_packs} marked packs are used again and kept",
            f"{would}repack {r.repacked_packs} mostly unused packs (copying {human_bytes(r.repacked_bytes)} "
            f"of live chunks into {r.written_packs} new packs)",
            f"{would}mark {r.marked_packs} packs ({human_bytes(r.marked_bytes)}) no snapshot needs: a prune at "
            f"least {args.grace} later deletes them; {r.pending_packs} packs of earlier marks wait their turn",
            f"{human_bytes(r.stored_bytes_after)} stored after this run ({human_bytes(r.unused_bytes)} of it "
            f"unused in packs kept); {r.writers} snapshots being written, {r.readers} being read",
        ]
        for note in r.notes:
            sys.stderr.write(f"ferry: {note}\n")
        payload = {**asdict(r), "stored_bytes_after": r.stored_bytes_after}
        _emit(args, payload, "\n".join(lines))
        return 0

    return await _with_repo(args, body, write=not args.dry_run)


async def cmd_repo_repair_index(args: argparse.Namespace) -> int:
    async def body(repo: Repository) -> int:
        r = await repair_index(repo)
        for problem in r.unreadable:
            sys.stderr.write(f"ferry: snapshot {problem}\n")
        text = (
            f"rebuilt the index: {r.chunks} chunks in {r.packs} packs, {r.snapshots} snapshots "
            f"(replacing {r.index_objects} index objects)"
        )
        _emit(args, asdict(r), text)
        return EXIT_INCOMPLETE if r.unreadable else 0

    return await _with_repo(args, body, write=True)


async def cmd_repo_key(args: argparse.Namespace) -> int:
    async def body(repo: Repository) -> int:
        if args.key_action == "add":
            new = read_password_file(args.new_password_file, "--new-password-file")
            key_id = await add_key(repo, new)
            _emit(args, {"id": key_id}, f"added key {key_id[:8]}")
        elif args.key_action == "remove":
            key_id = await remove_key(repo, args.key_id)
            _emit(args, {"id": key_id}, f"removed key {key_id[:8]}")
        else:
            keys = await list_keys(repo)
            lines = [f" {'ID':8}  {'CREATED':27}  HOST"] + [
                f"{'*' if k.current else ' '}{k.id[:8]}  {shown(k.created):27}  {shown(k.host)}" for k in keys
            ]
            _emit(args, [asdict(k) for k in keys], "\n".join(lines))
        return 0

    return await _with_repo(args, body, write=args.key_action != "list")


COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    ("agent", None): cmd_agent,
    ("snapshot", "create"): cmd_snapshot_create,
    ("snapshot", "list"): cmd_snapshot_list,
    ("snapshot", "show"): cmd_snapshot_show,
    ("snapshot", "forget"): cmd_snapshot_forget,
    ("snapshot", "ls"): cmd_snapshot_ls,
    ("repo", "stats"): cmd_repo_stats,
    ("repo", "check"): cmd_repo_check,
    ("repo", "init"): cmd_repo_init,
    ("repo", "key"): cmd_repo_key,
    ("repo", "prune"): cmd_repo_prune,
    ("repo", "repair-index"): cmd_repo_repair_index,
    ("restore", None): cmd_restore,
}


def _fail(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    sys.stderr.write("ferry: " + logs.redact(message).replace("\r", " ").replace("\n", " ") + "\n")


def interrupted() -> NoReturn:
    """Ctrl-C was handled (the event loop, its threads and the command's cleanup are done): say so in one
    line and exit 130 at once. Not through the interpreter's teardown: a SIGINT the event loop had noted
    could be raised again there, as a KeyboardInterrupt past every handler (exit by the signal, -2, or a
    traceback: both seen under load)."""
    sys.stderr.write("ferry: interrupted\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(130)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the event loop took over Ctrl-C (argument parsing, setting up)
        interrupted()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (args.log_level or os.environ.get("FERRY_LOG_LEVEL") or "warning").lower()
    if level not in ("debug", "info", "warning", "error"):
        parser.error(f"--log-level {level!r} must be debug, info, warning or error")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        logs.add_secret(os.environ.get(name))
    if args.command == "hold":  # `ferry --log-level info hold`: entry.py only short-cuts the bare form
        from agent.hold import hold  # noqa: PLC0415

        return hold()
    logs.configure("text", level, quiet_libraries=False)
    command = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(command(args))
    except ConfigError as e:
        _fail(str(e))
        return 2
    except FerryError as e:
        _fail(str(e))
        return 1
    except KeyboardInterrupt:
        interrupted()
    except OSError as e:  # a local file the command was given (a target, a source): say which and why
        where = f": {shown(os.fsdecode(e.filename))}" if e.filename is not None else ""
        log.debug("unexpected OS error", exc_info=True)
        _fail(f"{e.strerror or e}{where}")
        return 1
    except Exception as e:  # a bug: one line for the user, the traceback at --log-level debug
        log.debug("unexpected error", exc_info=True)
        _fail(
            f"internal error ({type(e).__name__}: {e}); this is a bug in Ferry, run with --log-level debug for details"
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
