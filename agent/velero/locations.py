"""From a BackupStorageLocation (velero.io/v1) to the S3 settings a restore needs.

Read: ``spec.provider`` (only AWS/S3-compatible is served), ``spec.objectStorage.bucket``/``prefix``,
``caCert`` (base64 PEM) or ``caCertRef`` (a Secret key), and ``spec.config``: ``region``, ``s3Url``,
``s3ForcePathStyle``, ``insecureSkipTLSVerify``, ``profile``. Credentials: the Secret key named by
``spec.credential`` if set, otherwise the node's credentials file (Velero's ``/credentials/cloud``); both
are AWS shared-credentials INI files, read for the profile ``config.profile`` (default ``default``).
When neither exists, the AWS SDK's default chain is used, as clusters on AWS provide credentials: the
environment, IRSA's web identity token (``AWS_WEB_IDENTITY_TOKEN_FILE``/``AWS_ROLE_ARN``), EKS Pod
Identity (``AWS_CONTAINER_CREDENTIALS_FULL_URI``) and the instance metadata service.

Key material only ever goes into ``S3Settings`` fields that are excluded from ``repr``; messages name
the Secret or file, never its content.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import hashlib
import os
from dataclasses import dataclass, field

from agent.errors import ConfigError, KubeNotFound, LocationError
from agent.kube.api import Kube, Obj
from agent.settings import S3Settings, check_endpoint, parse_bool
from agent.velero.objects import BACKUP_STORAGE_LOCATIONS

SERVED_PROVIDERS = frozenset({"aws", "velero.io/aws", "s3"})
_OTHER_CLOUDS = {"azure": "Azure Blob Storage", "gcp": "Google Cloud Storage"}


REPOSITORY_SECRET = "velero-repo-credentials"  # noqa: S105 - a Secret's name, not a password
REPOSITORY_SECRET_KEY = "repository-password"  # noqa: S105 - a key in that Secret
VELERO_DEFAULT_PASSWORD = b"static-passw0rd"
"""What Velero puts in its repository Secret when the Secret does not exist as its server starts
(``EnsureCommonRepositoryKey``, pkg/repository/keys/keys.go): the same in every cluster."""


@dataclass(frozen=True)
class StorageLocation:
    name: str
    bucket: str
    prefix: str
    s3: S3Settings
    repository_password: bytes = field(default=b"", repr=False)
    """The password of the repositories in this location: Velero's own (Secret ``velero-repo-credentials``
    key ``repository-password`` in Velero's namespace, which Velero uses for its kopia repositories)."""

    @property
    def default_password(self) -> bool:
        """The password is Velero's well-known default: the encryption then protects nothing."""
        return self.repository_password == VELERO_DEFAULT_PASSWORD

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.s3.endpoint_url}" if self.s3.endpoint_url else where


def _decode_secret_value(secret: Obj, key: str, what: str) -> bytes:
    data = secret.get("data") or {}
    if key not in data:
        raise LocationError(f"{what}: the Secret has no key {key!r}")
    try:
        return base64.b64decode(str(data[key]), validate=True)
    except (binascii.Error, ValueError) as e:
        raise LocationError(f"{what}: key {key!r} is not valid base64") from e


def _parse_credentials(text: str, profile: str, where: str) -> tuple[str, str, str | None]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        raise LocationError(f"{where} is not an AWS shared-credentials file (INI with [profile] sections)") from None
    if not parser.has_section(profile):
        raise LocationError(f"{where} has no [{profile}] profile")
    section = parser[profile]
    key_id, secret = section.get("aws_access_key_id", ""), section.get("aws_secret_access_key", "")
    if not key_id or not secret:
        raise LocationError(f"{where}: profile [{profile}] lacks aws_access_key_id or aws_secret_access_key")
    return key_id.strip(), secret.strip(), (section.get("aws_session_token") or "").strip() or None


class LocationResolver:
    def __init__(self, kube: Kube, credentials_file: str, state_dir: str) -> None:
        self._kube = kube
        self._credentials_file = credentials_file
        self._state_dir = state_dir

    async def resolve(self, name: str) -> StorageLocation:
        ns = self._kube.namespace
        what = f"BackupStorageLocation {ns}/{name}"
        try:
            bsl = await self._kube.get_object(BACKUP_STORAGE_LOCATIONS, name)
        except KubeNotFound:
            raise LocationError(f"{what} does not exist; create it or fix spec.backupStorageLocation") from None
        spec = bsl.get("spec") or {}
        provider = str(spec.get("provider", ""))
        if provider not in SERVED_PROVIDERS:
            cloud = next((label for key, label in _OTHER_CLOUDS.items() if key in provider.lower()), None)
            kind = f"{cloud} ({provider})" if cloud else f"provider {provider!r}"
            raise LocationError(
                f"{what} uses {kind}, which Ferry cannot read: Ferry serves S3-compatible storage only (provider aws)"
            )
        storage = spec.get("objectStorage") or {}
        bucket = str(storage.get("bucket") or "")
        if not bucket:
            raise LocationError(f"{what} has no spec.objectStorage.bucket")
        config = {str(k): str(v) for k, v in (spec.get("config") or {}).items()}
        try:
            path_style = parse_bool(config.get("s3ForcePathStyle", "false"), f"{what}: config.s3ForcePathStyle")
            skip_verify = parse_bool(
                config.get("insecureSkipTLSVerify", "false"), f"{what}: config.insecureSkipTLSVerify"
            )
        except ConfigError as e:
            raise LocationError(str(e)) from None
        endpoint = config.get("s3Url") or None
        if endpoint is not None:
            try:
                check_endpoint(endpoint, f"{what}: config.s3Url")
            except ConfigError as e:
                raise LocationError(str(e)) from None
        profile = config.get("profile") or "default"
        key_id, secret, token = await self._credentials(spec, profile, what)
        chain = key_id is None
        ca_bundle = await self._ca_bundle(storage, what)
        s3 = S3Settings(
            endpoint_url=endpoint.rstrip("/") if endpoint else None,
            region=config.get("region") or None,
            path_style=path_style,
            verify_tls=not skip_verify,
            ca_bundle=ca_bundle,
            access_key_id=key_id,
            secret_access_key=secret,
            session_token=token,
            profile=config.get("profile") or None if chain else None,
            credentials_hint=(
                f"{what} has no spec.credential, {self._credentials_file} does not exist on this node, and the "
                "AWS SDK's default chain (environment, IRSA web identity, EKS Pod Identity, instance metadata) "
                "found none: set spec.credential, mount Velero's cloud-credentials Secret there, or give the "
                "agent's service account an IAM role"
                if chain
                else ""
            ),
        )
        password, _ = await self._secret_value(
            {"name": REPOSITORY_SECRET, "key": REPOSITORY_SECRET_KEY},
            "the password of Velero's repositories, which Ferry's are encrypted with too; Velero's server creates it "
            "when it starts",
        )
        if not password:
            raise LocationError(
                f"Secret {self._kube.namespace}/{REPOSITORY_SECRET} key {REPOSITORY_SECRET_KEY!r} is empty"
            )
        return StorageLocation(name, bucket, str(storage.get("prefix") or "").strip("/"), s3, password)

    async def _secret_value(self, ref: Obj, role: str) -> tuple[bytes, str]:
        """The bytes of the Secret key ``ref`` names (``{name, key}``), and how to name it in messages."""
        secret_name, key = str(ref.get("name", "")), str(ref.get("key", ""))
        where = f"Secret {self._kube.namespace}/{secret_name} key {key!r} ({role})"
        try:
            secret = await self._kube.get_secret(secret_name)
        except KubeNotFound:
            raise LocationError(f"{where} does not exist") from None
        return _decode_secret_value(secret, key, where), where

    async def _credentials(self, spec: Obj, profile: str, what: str) -> tuple[str | None, str | None, str | None]:
        """Key id, secret and session token; all None: let the AWS SDK's default chain find them."""
        ref = spec.get("credential") or {}
        if ref:
            value, where = await self._secret_value(ref, f"spec.credential of {what}")
            return _parse_credentials(value.decode("utf-8", "replace"), profile, where)
        try:
            text = _read_text(self._credentials_file)
        except FileNotFoundError:
            return None, None, None
        return _parse_credentials(text, profile, f"credentials file {self._credentials_file}")

    async def _ca_bundle(self, storage: Obj, what: str) -> str | None:
        ref = storage.get("caCertRef") or {}
        if ref:
            pem, _ = await self._secret_value(ref, f"caCertRef of {what}")
        elif storage.get("caCert"):
            try:
                pem = base64.b64decode(str(storage["caCert"]), validate=True)
            except (binascii.Error, ValueError):
                raise LocationError(f"{what}: spec.objectStorage.caCert is not valid base64") from None
        else:
            return None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise LocationError(f"{what}: the CA certificate is not PEM")
        return _write_once(self._state_dir, pem)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _write_once(directory: str, pem: bytes) -> str:
    """A CA bundle file named by its content, written atomically."""
    path = os.path.join(directory, f"ca-{hashlib.sha256(pem).hexdigest()[:16]}.pem")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
    return path
