"""A repository in a local directory: the embedded default, and what tests use beside S3."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import secrets
import stat

from agent.errors import LocationMissing, ObjectNotFound, ObjectTooLarge, ObjectTruncated, StorageError
from agent.storage.base import ObjectInfo, Storage, check_key

_MAX_OFFSET = 2**63 - 1


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def _create_in(directory: str, path: str) -> int:
    """Create ``path`` (exclusively) in ``directory``, making the directory first. A delete of the last
    object in it removes the emptied directory (``_delete``), possibly between the two steps, and even in
    the middle of ``makedirs`` (which then raises FileExistsError for a directory that is gone): try again."""
    for attempt in range(8):
        try:
            os.makedirs(directory, exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except (FileNotFoundError, FileExistsError):
            if attempt == 7:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


class LocalStorage(Storage):
    """Objects are files under ``root``; a put writes a temporary file, fsyncs and renames it; a delete
    removes directories it empties. Reads open objects without blocking (a FIFO where an object should
    be never hangs a read) and refuse anything but a regular file; an empty directory is listed as a key,
    so that a directory where an object should be is reported when it is read."""

    def __init__(self, root: str) -> None:
        self._root = os.path.abspath(root)

    def describe(self) -> str:
        return f"file://{self._root}"

    def _path(self, key: str) -> str:
        return os.path.join(self._root, *check_key(key).split("/"))

    def _open(self, key: str) -> tuple[int, int]:
        """An object opened for reading, and its size."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key, self.describe()) from None
        except OSError as e:
            raise StorageError(f"cannot open {key!r} in {self.describe()}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(
                    f"{key!r} in {self.describe()} is {_kind(st.st_mode)}, not an object: the repository is damaged"
                )
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    async def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return await asyncio.to_thread(self._get, key, max_bytes)

    def _get(self, key: str, max_bytes: int | None) -> bytes:
        fd, size = self._open(key)
        try:
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(
                    f"{key!r} in {self.describe()} holds {size} bytes, more than the {max_bytes} this read takes"
                )
            chunks: list[bytes] = []
            while piece := os.read(fd, 1 << 20):
                chunks.append(piece)
            return b"".join(chunks)
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.describe()}: {e.strerror}") from e
        finally:
            os.close(fd)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        return await asyncio.to_thread(self._get_range, key, offset, length)

    def _get_range(self, key: str, offset: int, length: int) -> bytes:
        fd, size = self._open(key)
        try:
            past_end = offset < 0 or offset + length > min(size, _MAX_OFFSET)
            data = b"" if past_end else os.pread(fd, length, offset)
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.describe()}: {e.strerror}") from e
        finally:
            os.close(fd)
        if len(data) != length:
            raise ObjectTruncated(
                f"{key!r} in {self.describe()} holds {size} bytes; a read of {length} bytes at {offset} goes past "
                "its end"
            )
        return data

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _put(self, key: str, data: bytes, only_new: bool = False) -> bool:
        """Write a temporary file, fsync it, then rename it over ``key`` (or, ``only_new``, link it there:
        a link fails if the name exists, so of two writers one wins). Returns whether it was stored."""
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}")
        try:
            fd = _create_in(directory, tmp)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if not only_new:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            else:
                return True
            finally:
                os.unlink(tmp)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise StorageError(f"cannot write {key!r} to {self.describe()}: {e.strerror}") from e

    async def put_new(self, key: str, data: bytes) -> bool:
        return await asyncio.to_thread(self._put, key, data, True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {key!r} from {self.describe()}: {e.strerror}") from e
        # An object store has no empty directories: neither does this (an empty one is listed as damage).
        directory = os.path.dirname(path)
        while directory != self._root and directory.startswith(self._root):
            try:
                os.rmdir(directory)
            except OSError:
                break
            directory = os.path.dirname(directory)

    async def is_empty(self) -> bool:
        return await asyncio.to_thread(self._is_empty)

    def _is_empty(self) -> bool:
        try:
            with os.scandir(self._root) as entries:
                return next(entries, None) is None
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError as e:
            raise StorageError(f"cannot read {self.describe()}: {e.strerror}") from e

    async def check(self) -> None:
        await asyncio.to_thread(self._check)

    def _check(self) -> None:
        try:
            mode = os.stat(self._root).st_mode
        except FileNotFoundError:
            raise LocationMissing(
                f"there is no repository at {self.describe()}: the directory does not exist"
            ) from None
        except OSError as e:
            raise StorageError(f"cannot read the repository at {self.describe()}: {e.strerror}") from e
        if not stat.S_ISDIR(mode):
            kind = "a file" if stat.S_ISREG(mode) else _kind(mode)
            raise StorageError(f"there is no repository at {self.describe()}: it is {kind}, not a directory")

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
            if base and not dirnames and not filenames and base.rstrip("/").startswith(prefix):
                keys.append(base.rstrip("/"))  # an empty directory where an object may be: reading it says so
        return sorted(keys)

    async def sizes(self, prefix: str) -> dict[str, int]:
        return await asyncio.to_thread(self._sizes, prefix)

    def _sizes(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for key in self._list(prefix):
            try:
                st = os.stat(os.path.join(self._root, *key.split("/")))
            except FileNotFoundError:  # removed since it was listed
                continue
            found[key] = st.st_size if stat.S_ISREG(st.st_mode) else -1  # not a file: no object of any size
        return found

    async def info(self, prefix: str) -> dict[str, ObjectInfo]:
        return await asyncio.to_thread(self._info, prefix)

    def _info(self, prefix: str) -> dict[str, ObjectInfo]:
        found: dict[str, ObjectInfo] = {}
        for key in self._list(prefix):
            try:
                st = os.stat(os.path.join(self._root, *key.split("/")))
            except FileNotFoundError:  # removed since it was listed
                continue
            found[key] = ObjectInfo(st.st_size if stat.S_ISREG(st.st_mode) else -1, st.st_mtime)
        return found

    async def aclose(self) -> None:
        return None
