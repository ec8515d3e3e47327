"""Logging for the agent: one line per event that matters, JSON by default.

Context goes in ``extra`` (``extra={"datadownload": "velero/dd-1"}``) and comes out as fields of the
JSON object, or as ``key=value`` after the text message.

Credentials never reach a log line: Ferry's own code never passes one (S3 keys live only in
``S3Settings`` fields excluded from ``repr``), and every handler has a ``Redactor`` that scrubs what
libraries log at debug level (botocore prints each signed request: its Authorization header holds the
access key and a signature, X-Amz-Security-Token the session token) and every value registered with
``add_secret`` (the S3 keys as they are resolved). The registry is process-wide because log records are:
a credential one client resolved must not appear in any line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_HEADERS = re.compile(
    r"(?i)((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature|aws_secret_access_key"
    r"|aws_session_token|aws_access_key_id|secret_key|access_key|token)['\"]?\s*[:=]\s*b?['\"]?)[^'\"&,}\s]+"
)
_SIGV4 = re.compile(r"(Credential=|Signature=|Signature:\s+)[^,\s'\"&]+")
"""SigV4 in an Authorization header or a presigned URL's query, and botocore's debug line "Signature:" with
the hex signature on the next line (a presigned URL's signature reads its object until it expires)."""
REDACTED = "***"


def add_secret(value: str | None) -> None:
    """Never log ``value`` (a key, a secret, a token): it is replaced wherever it appears."""
    if value and len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` without registered secrets and without the values of credential-bearing headers."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _SIGV4.sub(rf"\1{REDACTED}", text)
    return _HEADERS.sub(rf"\1{REDACTED}", text)


class Redactor(logging.Filter):
    """Scrubs each record's message, arguments, traceback and string extras (see ``redact``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_text:
            line["error"] = record.exc_text
        elif record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


def configure(log_format: str, level: str, *, quiet_libraries: bool = True) -> None:
    """Send the root logger to stderr in ``json`` or ``text`` at ``level``, credentials scrubbed.
    ``quiet_libraries`` keeps botocore, aiohttp and the Kubernetes client at warning or above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redactor())
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    if isinstance(formatter, JsonFormatter):
        formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiobotocore", "botocore", "aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level) if quiet_libraries else logging.NOTSET)
