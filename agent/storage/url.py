"""Repository URLs: ``s3://bucket/prefix``, ``file:///path`` or a plain local path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from agent.errors import ConfigError
from agent.settings import S3Settings
from agent.storage.base import Storage
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class RepoLocation:
    scheme: Literal["s3", "file"]
    bucket: str
    """Empty for local repositories."""
    path: str
    """The prefix inside the bucket (no leading or trailing '/'), or the local directory."""


def parse_repo_url(url: str) -> RepoLocation:
    if url.startswith("s3://"):
        parts = urlsplit(url)
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise ConfigError(f"repository URL {url!r}: {bucket!r} is not a valid bucket name")
        if parts.query or parts.fragment:
            raise ConfigError(f"repository URL {url!r}: S3 options are flags or AWS_* variables, not a query")
        return RepoLocation("s3", bucket, unquote(parts.path).strip("/"))
    if url.startswith("file://"):
        path = unquote(urlsplit(url).path)
        if not path:
            raise ConfigError(f"repository URL {url!r} has no path")
        return RepoLocation("file", "", path)
    if "://" in url:
        raise ConfigError(f"repository URL {url!r}: only s3:// and file:// (or a plain path) are supported")
    if not url:
        raise ConfigError("the repository URL is empty")
    return RepoLocation("file", "", url)


def velero_repository_prefix(prefix: str, source_namespace: str) -> str:
    """Where Ferry keeps a namespace's repository inside a Velero BackupStorageLocation's bucket:
    ``<prefix>/ferry/<sourceNamespace>`` (Velero keeps its own under ``<prefix>/kopia/<namespace>``)."""
    if not source_namespace or "/" in source_namespace:
        raise ConfigError(f"source namespace {source_namespace!r} is not a namespace name")
    head = prefix.strip("/")
    return f"{head}/ferry/{source_namespace}" if head else f"ferry/{source_namespace}"


async def open_storage(url: str, s3: S3Settings | None = None) -> Storage:
    """Open the storage a repository URL names. S3 settings default to the AWS environment's."""
    location = parse_repo_url(url)
    if location.scheme == "file":
        return LocalStorage(location.path)
    return await S3Storage.open(s3 or S3Settings(), location.bucket, location.path)
