"""Every tunable of Ferry: frozen, documented dataclasses, parsed in this module and nowhere else.

Each module is handed only its group: storage gets ``S3Settings``, the snapshot writer
``SnapshotSettings``, the restore pipeline ``RestoreSettings``, the node agent ``AgentSettings``. Sizes are
bytes, durations seconds. ``parse_size``, ``parse_bool``, ``parse_duration``, ``s3_settings_from_env`` and
``agent_settings_from_env`` are the only parsers; the command line and the controller call them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal
from urllib.parse import urlsplit

from agent.errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str, what: str) -> int:
    """Parse '4194304', '4MiB', '4M' or '512k' (binary units) into bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"{what}: {text!r} is not a size (examples: 4194304, 4MiB, 512KiB)")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _SIZE_UNITS[unit]


MAX_PASSWORD_BYTES = 4096


def read_password_file(path: str, what: str) -> bytes:
    """A repository password from a file: its bytes without one trailing newline (``\\n`` or ``\\r\\n``,
    as restic's --password-file). Raises ConfigError if it cannot be read, is empty, or is larger than
    4 KiB (not a password file)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD_BYTES + 2)
    except OSError as e:
        raise ConfigError(f"{what}: cannot read the password file {path!r}: {e.strerror}") from None
    if data.endswith(b"\n"):
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
    if not data:
        raise ConfigError(f"{what}: the password file {path!r} is empty")
    if len(data) > MAX_PASSWORD_BYTES:
        raise ConfigError(f"{what}: {path!r} holds more than {MAX_PASSWORD_BYTES} bytes: it is not a password file")
    return data


def parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{what}: {text!r} is not a boolean (use true or false)")


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str) -> float:
    """Seconds from a Go duration string as Kubernetes objects carry them ('10m0s', '1h30m', '1.5s', '0')."""
    value = text.strip()
    if value == "0":
        return 0.0
    if not value or _GO_DURATION.sub("", value) != "":
        raise ConfigError(f"{what}: {text!r} is not a duration (examples: 10m0s, 1h, 90s)")
    return sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_DURATION.findall(value))


def parse_max_unused(text: str, what: str) -> float | None:
    """How much unused data a prune tolerates in the packs it keeps (restic's ``--max-unused``): a
    percentage of the used data ("5%", "0.5%", "5") as a fraction, or None for "unlimited" (never
    repack). Raises ConfigError."""
    value = text.strip().lower()
    if value == "unlimited":
        return None
    try:
        percent = float(value.removesuffix("%"))
    except ValueError:
        percent = -1.0
    if not 0 <= percent <= 100:  # NaN fails this too
        raise ConfigError(f"{what}: {text!r} is not a percentage from 0% to 100%, or 'unlimited'")
    return percent / 100


def parse_positive_int(text: str, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{what}: {text!r} must be at least 1")
    return value


def parse_seconds(text: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{what}: {text!r} must be a positive number of seconds")
    return value


def parse_seconds_or_zero(text: str, what: str) -> float:
    """``parse_seconds``, with "0" accepted too (meaning off, or no wait). Raises ConfigError."""
    return 0.0 if text.strip() == "0" else parse_seconds(text, what)


def redact_url(url: str) -> str:
    """A URL fit for messages: any user and password in it replaced by ``***`` (RFC 3986 userinfo)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@", r"\1***@", url.strip())


def check_endpoint(url: str, what: str) -> str:
    """``url`` if it is an http(s) endpoint without credentials in it; else ConfigError (which never
    repeats a credential)."""
    if redact_url(url) != url.strip():
        raise ConfigError(
            f"{what} {redact_url(url)!r} carries credentials: they do not belong in a URL (they end up in logs "
            "and process lists); give them as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a credentials file or a profile"
        )
    if not re.match(r"^https?://[^/]+", url):
        raise ConfigError(f"{what} {url!r} must be an http:// or https:// URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as e:
        raise ConfigError(f"{what} {url!r} is not a URL: {e}") from None
    if not parts.hostname or "\x00" in url or parts.query or parts.fragment:
        raise ConfigError(f"{what} {url!r} must be http(s)://HOST[:PORT][/PATH], without a query")
    return url


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible object store.

    Credentials are never printed: the key fields are excluded from ``repr``.
    When the explicit keys are unset, botocore's chain applies (environment, shared credentials file,
    profile), exactly as for the AWS CLI.
    """

    endpoint_url: str | None = None
    """Full URL of the endpoint (``http://`` turns TLS off). None: AWS's endpoint for the region."""
    region: str | None = None
    """Signing region. None: ``us-east-1`` unless the environment or profile says otherwise."""
    path_style: bool = False
    """Address buckets as ``endpoint/bucket/key`` instead of ``bucket.endpoint/key``."""
    verify_tls: bool = True
    """Check the server's certificate (False is ``insecureSkipTLSVerify``)."""
    ca_bundle: str | None = None
    """PEM file of CA certificates to trust instead of the system's."""
    profile: str | None = None
    """Profile in the shared credentials/config files."""
    credentials_file: str | None = None
    """AWS shared-credentials INI file (default ``~/.aws/credentials``)."""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    credentials_hint: str = ""
    """What to tell the operator when no credentials are found at all ("": the command line's advice)."""
    connect_timeout_s: float = 10.0
    """Seconds to establish a connection."""
    request_timeout_s: float = 120.0
    """Seconds one request may take, body included, before it is abandoned and retried."""
    max_attempts: int = 5
    """Attempts per request for transient failures (1 = no retry)."""
    backoff_base_s: float = 0.2
    """First retry delay; doubles each attempt, with full jitter."""
    backoff_max_s: float = 10.0
    """Upper bound of one retry delay."""
    max_connections: int = 64
    """Connection pool size; must exceed the reads and uploads in flight."""

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            check_endpoint(self.endpoint_url, "S3 endpoint")
        if self.max_attempts < 1:
            raise ConfigError("S3 max_attempts must be at least 1")
        if self.connect_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise ConfigError("S3 timeouts must be positive")
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise ConfigError(f"CA bundle {self.ca_bundle!r} does not exist")


def s3_settings_from_env(env: Mapping[str, str], **overrides: object) -> S3Settings:
    """S3 settings from the standard AWS variables, then explicit overrides (flags) on top.

    Honoured: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION, AWS_PROFILE,
    AWS_SHARED_CREDENTIALS_FILE, AWS_CA_BUNDLE. Keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN) are left to botocore's credential chain, which reads them itself.
    Overrides whose value is None are ignored.
    """
    values: dict[str, object] = {
        "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        "profile": env.get("AWS_PROFILE") or None,
        "credentials_file": env.get("AWS_SHARED_CREDENTIALS_FILE") or None,
        "ca_bundle": env.get("AWS_CA_BUNDLE") or None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["endpoint_url"] is not None:
        check_endpoint(str(values["endpoint_url"]), "S3 endpoint")
    return S3Settings(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RepositorySettings:
    """How manifests are read (by every command and the agent)."""

    manifest_memory_bytes: int = 1 * GiB
    """Most memory one parsed manifest may take (its entries, chunk table and slots, estimated as they
    are read) and the largest stored manifest fetched: a manifest describing more is refused in one line
    instead of exhausting the process. A filesystem of a million files takes about 500 MiB."""
    manifest_fetch_attempts: int = 5
    """Fetches of a manifest whose bytes do not match its ID before it is called damaged (the same
    wrong bytes twice) or corrupted in transit (different bytes every time)."""
    password_file: str = ""
    """The command line's repository password file (``--password-file``, ``FERRY_PASSWORD_FILE``); the
    agent takes its password from Velero's Secret instead."""

    def __post_init__(self) -> None:
        if self.manifest_memory_bytes < 1 * MiB:
            raise ConfigError("the manifest memory limit must be at least 1 MiB")
        if self.manifest_fetch_attempts < 2:
            raise ConfigError("manifest fetch attempts must be at least 2 (one to compare with)")


def repository_settings_from_env(env: Mapping[str, str], **overrides: object) -> RepositorySettings:
    """Repository settings from ``FERRY_MANIFEST_MEMORY`` (a size, e.g. ``256MiB``) and
    ``FERRY_PASSWORD_FILE``, then overrides."""
    values: dict[str, object] = {}
    text = env.get("FERRY_MANIFEST_MEMORY", "").strip()
    if text:
        values["manifest_memory_bytes"] = parse_size(text, "FERRY_MANIFEST_MEMORY")
    if env.get("FERRY_PASSWORD_FILE", ""):
        values["password_file"] = env["FERRY_PASSWORD_FILE"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return RepositorySettings(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SnapshotSettings:
    """How ``ferry snapshot create`` cuts, compresses and packs data."""

    block_chunk_bytes: int = 4 * MiB
    """Chunk size for block volumes and images: fixed, aligned chunks. A power of two, 64 KiB–16 MiB."""
    cdc_min_bytes: int = 256 * KiB
    """Content-defined chunking of files: smallest chunk (files smaller than this are one chunk)."""
    cdc_avg_bytes: int = 1 * MiB
    """Content-defined chunking: target average (FastCDC normalised chunking level 1)."""
    cdc_max_bytes: int = 4 * MiB
    """Content-defined chunking: largest chunk."""
    pack_bytes: int = 32 * MiB
    """A pack is sealed and uploaded once it holds at least this many stored bytes."""
    compression_level: int = 3
    """zstd level, 1–19."""
    uploads_in_flight: int = 3
    """Packs uploading at once (each held in memory until stored)."""
    threads: int = 0
    """Hashing/compression threads; 0 means one per CPU."""

    def __post_init__(self) -> None:
        cs = self.block_chunk_bytes
        if cs & (cs - 1) or not 64 * KiB <= cs <= 16 * MiB:
            raise ConfigError(f"block chunk size {cs} must be a power of two between 64 KiB and 16 MiB")
        if not 64 * KiB <= self.cdc_min_bytes <= self.cdc_avg_bytes <= self.cdc_max_bytes <= 16 * MiB:
            raise ConfigError("chunking sizes must satisfy 64 KiB <= min <= avg <= max <= 16 MiB")
        if self.cdc_avg_bytes & (self.cdc_avg_bytes - 1):
            raise ConfigError("the average chunk size must be a power of two")
        if not MiB <= self.pack_bytes <= 1 * GiB:
            raise ConfigError("pack size must be between 1 MiB and 1 GiB")
        if not 1 <= self.compression_level <= 19:
            raise ConfigError("compression level must be between 1 and 19")
        if self.uploads_in_flight < 1 or self.threads < 0:
            raise ConfigError("uploads in flight must be >= 1 and threads >= 0")

    @property
    def worker_threads(self) -> int:
        return self.threads or cpu_count()


@dataclass(frozen=True)
class RestoreSettings:
    """How a restore fetches, verifies and writes. Memory does not grow with the volume: ``memory_bytes``
    holds every buffer, the receive buffers of the reads in flight (``max_range_bytes`` each, or a single
    larger chunk) and each decoding thread's output buffer and zstd window (twice the snapshot's largest
    chunk); a restore runs fewer threads than ``threads`` if the limit holds no more."""

    reads_in_flight: int = 32
    """The most ranged GETs in flight at once; how many are (up to this and to what ``memory_bytes``
    holds) follows the link (``agent.pipeline.pacing``)."""
    max_range_bytes: int = 8 * MiB
    """Neighbouring chunks of a pack are coalesced into one GET of at most this many stored bytes
    (a single larger chunk is still fetched whole); smaller ranges are fetched where the link's latency
    makes that faster (``agent.pipeline.pacing``)."""
    max_gap_bytes: int = 1 * MiB
    """Coalescing reads through gaps (chunks this restore does not need) up to this size."""
    memory_bytes: int = 96 * MiB
    """Every buffer a restore holds: receive buffers and decode buffers."""
    threads: int = 0
    """Decompress/verify/write threads; 0 means one per CPU."""
    fetch_attempts: int = 5
    """Fetches of a chunk that fails decompression or verification: the same wrong bytes twice mean it is
    damaged in storage; different wrong bytes every time, that the path to storage corrupts data."""
    direct_io: bool = True
    """Write restored data with O_DIRECT where it lines up (whole 4 KiB blocks), bypassing the page cache:
    less CPU per GB and no cache pressure on the node. Falls back to plain writes where the filesystem
    refuses it."""
    sparse: bool = False
    """The block target is known to read as zeros (a fresh volume): holes are skipped instead of
    zeroed. Velero's WriteSparseFiles. Regular-file targets always keep holes as holes."""

    def __post_init__(self) -> None:
        if self.reads_in_flight < 1:
            raise ConfigError("reads in flight must be at least 1")
        if self.max_range_bytes < 64 * KiB or self.max_gap_bytes < 0:
            raise ConfigError("max range must be >= 64 KiB and max gap >= 0")
        if self.memory_bytes < self.max_range_bytes:
            raise ConfigError(
                f"the restore memory limit ({self.memory_bytes} bytes: --memory, FERRY_RESTORE_MEMORY, ferry.memory) "
                f"must hold at least one range ({self.max_range_bytes} bytes: --range-size, FERRY_RESTORE_MAX_RANGE, "
                "ferry.maxRangeBytes)"
            )
        if self.threads < 0 or self.fetch_attempts < 2:
            raise ConfigError("threads must be >= 0 and fetch attempts >= 2 (one to compare with)")

    @property
    def worker_threads(self) -> int:
        return self.threads or cpu_count()


@dataclass(frozen=True)
class AgentSettings:
    """How ``ferry agent`` (the DaemonSet's process) runs. Each field has an environment variable
    ``FERRY_<FIELD>`` (e.g. ``FERRY_NODE_NAME``) and a flag (``--node-name``); flags win."""

    node_name: str
    """This node's name, from the downward API (``spec.nodeName``). Required."""
    namespace: str = "velero"
    """Velero's namespace: where DataUploads, DataDownloads, BackupStorageLocations and their Secrets live."""
    datamover: str = "ferry"
    """``spec.datamover`` value this agent handles; every other DataUpload and DataDownload is left untouched."""
    kubelet_root: str = "/var/lib/kubelet"
    """The kubelet's root directory as seen by the agent (the DaemonSet mounts it at the same path)."""
    concurrency: int = 1
    """Backups and restores running at once on this node (Velero's ``loadConcurrency``); the rest wait Prepared."""
    progress_interval_s: float = 5.0
    """Seconds between ``status.progress`` writes while a restore runs."""
    http_address: str = "0.0.0.0"  # noqa: S104 - a pod's probes and Prometheus reach it from outside
    """Address of the /healthz, /readyz and /metrics server."""
    http_port: int = 8080
    """Port of the /healthz, /readyz and /metrics server (0: any free port, for tests)."""
    log_format: Literal["json", "text"] = "json"
    """``json``: one JSON object per line; ``text``: human-readable lines."""
    log_level: str = "info"
    """debug, info, warning or error."""
    credentials_file: str = "/credentials/cloud"
    """AWS shared-credentials file used when a BackupStorageLocation has no ``spec.credential``
    (Velero mounts Secret ``cloud-credentials`` there)."""
    shutdown_grace_s: float = 20.0
    """After SIGTERM, seconds in-flight restores get to stop and record their state; keep it below the
    pod's ``terminationGracePeriodSeconds``."""
    volume_poll_interval_s: float = 2.0
    """Seconds between checks for a target volume that is not mounted on the node yet."""
    watch_timeout_s: float = 300.0
    """Server-side timeout of one watch request; the agent then watches again from where it was."""
    kubeconfig: str | None = None
    """Path of a kubeconfig file; None: the in-cluster service account."""
    pod_name: str = ""
    """This agent's pod, from the downward API (``metadata.name``): restore pods run its image."""
    pod_image: str = ""
    """Image of the restore pods that hold a volume on a node (``ferry hold``); "" means the agent's own
    image, read from its pod (``pod_name``)."""
    prepare_timeout_s: float = 1800.0
    """Seconds from acceptance until the restore pod must run with its volume (Velero's default 30 min);
    then the DataDownload fails."""
    unschedulable_grace_s: float = 300.0
    """Seconds a restore pod may stay unschedulable (a cluster autoscaler may still add a node) before the
    DataDownload fails with the scheduler's reason."""
    orphan_grace_s: float = 60.0
    """Seconds another node's agent gets to stop a canceled or deleted restore it holds, or to clean up one
    that ended, before any agent does it instead: that agent or its node is gone."""
    maintenance_interval_s: float = 3600.0
    """Seconds between repository maintenance passes (forgetting the snapshots of deleted Velero backups,
    prune, check), run by one agent of the cluster (Lease ``ferry-maintenance``). 0: no maintenance."""
    maintenance_grace_s: float = 3600.0
    """Seconds a snapshot's Velero backup must have been missing (and the snapshot made) before it is
    forgotten; also the prune's grace period."""
    restore: RestoreSettings = field(default_factory=RestoreSettings)
    """Defaults for every restore; a DataDownload's ``spec.dataMoverConfig`` may override some."""
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings)
    """Defaults for every backup; a DataUpload's ``spec.dataMoverConfig`` may override some."""
    repository: RepositorySettings = field(default_factory=RepositorySettings)
    """How manifests are read (``FERRY_MANIFEST_MEMORY``): keep the limit below the pod's memory limit."""

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ConfigError("the node name is required: set FERRY_NODE_NAME from the downward API (spec.nodeName)")
        if not self.namespace or not self.datamover:
            raise ConfigError("the namespace and the datamover name must not be empty")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be at least 1")
        for name in (
            "progress_interval_s",
            "shutdown_grace_s",
            "volume_poll_interval_s",
            "watch_timeout_s",
            "prepare_timeout_s",
            "unschedulable_grace_s",
            "orphan_grace_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.maintenance_interval_s < 0 or self.maintenance_grace_s < 0:
            raise ConfigError("the maintenance interval and grace period cannot be negative")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log format {self.log_format!r} must be json or text")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log level {self.log_level!r} must be debug, info, warning or error")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"HTTP port {self.http_port} is out of range")


_AGENT_PARSERS: dict[str, Callable[[str, str], object]] = {
    "concurrency": parse_positive_int,
    "http_port": lambda text, what: parse_positive_int(text, what) if text.strip() != "0" else 0,
    "progress_interval_s": parse_seconds,
    "shutdown_grace_s": parse_seconds,
    "volume_poll_interval_s": parse_seconds,
    "watch_timeout_s": parse_seconds,
    "prepare_timeout_s": parse_seconds,
    "unschedulable_grace_s": parse_seconds,
    "orphan_grace_s": parse_seconds,
    "maintenance_interval_s": parse_seconds_or_zero,
    "maintenance_grace_s": parse_seconds_or_zero,
}


def _env_name(field_name: str) -> str:
    return "FERRY_" + field_name.removesuffix("_s").upper()


# The restore tuning a node's agent applies to every restore (a DataDownload's dataMoverConfig may still
# override it): FERRY_RESTORE_<NAME>.
_RESTORE_ENV: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "FERRY_RESTORE_READS_IN_FLIGHT": ("reads_in_flight", parse_positive_int),
    "FERRY_RESTORE_MAX_RANGE": ("max_range_bytes", parse_size),
    "FERRY_RESTORE_MEMORY": ("memory_bytes", parse_size),
    "FERRY_RESTORE_THREADS": ("threads", parse_positive_int),
    "FERRY_RESTORE_DIRECT_IO": ("direct_io", parse_bool),
}


def agent_env_names() -> set[str]:
    """Every environment variable ``ferry agent`` reads (for checking deployments against it)."""
    names = {"KUBECONFIG" if f.name == "kubeconfig" else _env_name(f.name) for f in fields(AgentSettings)}
    names -= {_env_name("restore"), _env_name("repository")}
    return names | set(_RESTORE_ENV) | {"FERRY_MANIFEST_MEMORY"}


def restore_settings_from_env(env: Mapping[str, str]) -> RestoreSettings:
    """Restore defaults from ``FERRY_RESTORE_*`` variables (sizes in binary units, e.g. ``16MiB``)."""
    values = {name: parse(env[var], var) for var, (name, parse) in _RESTORE_ENV.items() if env.get(var, "").strip()}
    return RestoreSettings(**values)  # type: ignore[arg-type]


def agent_settings_from_env(env: Mapping[str, str], **overrides: object) -> AgentSettings:
    """Agent settings from ``FERRY_*`` variables (``KUBECONFIG`` for the kubeconfig), then overrides (flags)
    on top; overrides whose value is None are ignored. Durations are seconds, e.g. FERRY_PROGRESS_INTERVAL=5."""
    values: dict[str, object] = {}
    for f in fields(AgentSettings):
        if f.name in ("restore", "repository"):
            continue
        name = "KUBECONFIG" if f.name == "kubeconfig" else _env_name(f.name)
        text = env.get(name)
        if text is None or text == "":
            continue
        parser = _AGENT_PARSERS.get(f.name)
        values[f.name] = parser(text, name) if parser is not None else text
    values["restore"] = restore_settings_from_env(env)
    values["repository"] = repository_settings_from_env(env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "node_name" not in values:
        raise ConfigError("the node name is required: set FERRY_NODE_NAME from the downward API (spec.nodeName)")
    return AgentSettings(**values)  # type: ignore[arg-type]
