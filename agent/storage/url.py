"""Repository URLs: ``s3://bucket/prefix``, ``file:///path`` or a plain local path.

Anything that looks like a URL (a scheme and a colon) but is not one of these is refused with a hint,
never taken as a local directory: ``s3:/bucket`` or restic's ``s3:http://host/bucket`` would otherwise
quietly create a directory named ``s3:`` and write a repository into it. A local directory whose name
holds a colon is written ``./name:with:colon``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from agent.errors import ConfigError
from agent.settings import S3Settings, redact_url
from agent.storage.base import Storage
from agent.storage.local import LocalStorage
from agent.storage.s3 import S3Storage

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


@dataclass(frozen=True)
class RepoLocation:
    scheme: Literal["s3", "file"]
    bucket: str
    """Empty for local repositories."""
    path: str
    """The prefix inside the bucket (no leading or trailing '/'), or the local directory."""


def _refuse(url: str, why: str, hint: str) -> ConfigError:
    return ConfigError(f"repository URL {redact_url(url)!r} {why}: {hint}")


def _split(url: str, rest: str, scheme: str) -> SplitResult:
    try:
        return urlsplit(f"{scheme}:{rest}")
    except ValueError as e:  # e.g. an unbalanced '[' (an IPv6 literal that does not end)
        raise _refuse(url, "is not a URL", str(e)) from None


def parse_repo_url(url: str) -> RepoLocation:
    """Raises ConfigError (with a hint) for anything that is not a repository URL or a local path."""
    if not url.strip():
        raise ConfigError("the repository URL is empty")
    if "\x00" in url:
        raise ConfigError("the repository URL holds a NUL byte")
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match.group(1).lower() if scheme_match else ""
    rest = url[len(scheme) + 1 :] if scheme_match else url
    if scheme == "s3":
        if not rest.startswith("//"):
            inner = rest.lstrip("/")
            if _SCHEME.match(inner):  # restic's s3:http://host/bucket
                hint = "write s3://BUCKET/PREFIX and give the endpoint with --s3-endpoint (or AWS_ENDPOINT_URL_S3)"
                raise _refuse(url, "is restic's form", hint)
            raise _refuse(url, "needs two slashes", f"write s3://{inner}")
        parts = _split(url, rest, "s3")
        if "@" in parts.netloc:
            raise _refuse(
                url,
                "carries credentials",
                "give them as AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a "
                "credentials file or a profile, never in the URL",
            )
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise _refuse(
                url,
                f"names {bucket!r}, which is not a valid bucket name",
                "bucket names are 3-63 lower-case letters, digits, dots and hyphens",
            )
        if parts.query or parts.fragment:
            raise _refuse(url, "has a query or fragment", "S3 options are flags or AWS_* variables")
        return RepoLocation("s3", bucket, unquote(parts.path).strip("/"))
    if scheme == "file":
        if not rest.startswith("//"):
            raise _refuse(url, "is not a file URL", f"write file:///ABSOLUTE/PATH or ./{rest}")
        parts = _split(url, rest, "file")
        if "@" in parts.netloc:
            raise _refuse(url, "carries credentials", "a file URL names a local path: file:///PATH")
        if parts.netloc not in ("", "localhost"):
            raise _refuse(url, f"names host {parts.netloc!r}", "a file URL names a local path: file:///PATH")
        path = unquote(parts.path)
        if not path:
            raise _refuse(url, "has no path", "write file:///ABSOLUTE/PATH")
        if "\x00" in path:
            raise _refuse(url, "holds a NUL byte (%00)", "a path cannot hold one")
        return RepoLocation("file", "", path)
    if scheme_match:
        hint = "Ferry reads s3://BUCKET/PREFIX, file:///PATH or a local directory"
        if not rest.startswith("//"):
            hint += f" (one whose name holds a colon is written ./{url})"
        raise _refuse(url, f"has the scheme {scheme!r}", hint)
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
