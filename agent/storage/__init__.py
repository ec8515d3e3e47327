"""Object storage: one interface (``Storage``), two backends (local directory, S3).

Only this package imports aiobotocore/botocore; their exceptions are translated into ``agent.errors``
here. Keys are relative to the storage's root (the repository prefix), '/'-separated.
"""

from agent.storage.base import Storage
from agent.storage.url import open_storage, parse_repo_url

__all__ = ["Storage", "open_storage", "parse_repo_url"]
