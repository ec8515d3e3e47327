"""A repository in a local directory: the embedded default, and what tests use beside S3."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import secrets

from agent.errors import ObjectNotFound, ObjectTruncated, StorageError
from agent.storage.base import Storage, check_key


class LocalStorage(Storage):
    """Objects are files under ``root``; a put writes a temporary file, fsyncs and renames it."""

    def __init__(self, root: str) -> None:
        self._root = os.path.abspath(root)

    def describe(self) -> str:
        return f"file://{self._root}"

    def _path(self, key: str) -> str:
        return os.path.join(self._root, *check_key(key).split("/"))

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    def _get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(key, self.describe()) from None
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.describe()}: {e.strerror}") from e

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._get_range, key, offset, length)

    def _get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(key, self.describe()) from None
        except OSError as e:
            raise StorageError(f"cannot open {key!r} in {self.describe()}: {e.strerror}") from e
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise ObjectTruncated(
                f"{key!r} in {self.describe()} ends before byte {offset + length} (read {len(data)} of "
                f"{length} bytes at {offset})"
            )
        return data

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise StorageError(f"cannot write {key!r} to {self.describe()}: {e.strerror}") from e

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} from {self.describe()}: {e.strerror}") from e

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[str]:
        keys: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(self._root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self._root)
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if not (base.startswith(prefix) or prefix.startswith(base)):
                dirnames.clear()
                continue
            keys.extend(
                base + name for name in filenames if not name.startswith(".tmp-") and (base + name).startswith(prefix)
            )
        return sorted(keys)

    async def aclose(self) -> None:
        return None
