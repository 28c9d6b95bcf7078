"""The embedded blob store: files in a directory, one file per key.

Every write goes to a temporary file in the target's directory and is renamed into place with
`os.replace`, so a reader sees the old object or the new one, never half a file. All file I/O
runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from smap_stt.blobs.base import BlobStore
from smap_stt.errors import BackendUnavailable, BlobNotFound

__all__ = ["LocalBlobStore"]

_PARTIAL = ".part"
_COPY_BUFFER = 1024 * 1024
_RANGE_BLOCK = 256 * 1024


@contextmanager
def _written_atomically(target: Path) -> Iterator[Path]:
    """A temporary path next to `target` that replaces it on success and vanishes on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}{_PARTIAL}")
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _unavailable_on_os_error(root: Path) -> Iterator[None]:
    """A failing disk (full, read-only, gone) is the store being unavailable."""
    try:
        yield
    except OSError as exc:
        raise BackendUnavailable("local", f"{root}: {exc}") from exc


class LocalBlobStore(BlobStore):
    """Objects as files under `root`. A key is a relative "/"-separated path; no part may be
    empty or start with "." (which rules out "..", absolute paths, one file under two keys,
    and our own temporary files)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root.joinpath(*parts)

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        with _unavailable_on_os_error(self.root):
            self.root.mkdir(parents=True, exist_ok=True)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        await asyncio.to_thread(self._put_file, self._path(key), Path(path), move)

    def _put_file(self, target: Path, source: Path, move: bool) -> None:
        source.stat()  # the caller's file missing is the caller's FileNotFoundError
        with _unavailable_on_os_error(self.root):
            if move:
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
                    return
                except OSError as exc:
                    if exc.errno != errno.EXDEV:  # only "another filesystem" falls back to a copy
                        raise
            with _written_atomically(target) as partial:
                shutil.copyfile(source, partial)
            if move:
                source.unlink()

    async def put_bytes(self, key: str, data: bytes, *, content_type: str = "") -> None:
        await asyncio.to_thread(self._put_bytes, self._path(key), data)

    def _put_bytes(self, target: Path, data: bytes) -> None:
        with _unavailable_on_os_error(self.root), _written_atomically(target) as partial:
            partial.write_bytes(data)

    async def get_file(self, key: str, path: Path) -> None:
        await asyncio.to_thread(self._get_file, key, Path(path))

    def _get_file(self, key: str, target: Path) -> None:
        with _unavailable_on_os_error(self.root):
            try:
                source = self._path(key).open("rb")
            except (FileNotFoundError, IsADirectoryError) as exc:
                raise BlobNotFound(key) from exc
            with source, _written_atomically(target) as partial, partial.open("wb") as copy:
                shutil.copyfileobj(source, copy, _COPY_BUFFER)

    async def get_bytes(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get_bytes, key)

    def _get_bytes(self, key: str) -> bytes:
        with _unavailable_on_os_error(self.root):
            try:
                return self._path(key).read_bytes()
            except (FileNotFoundError, IsADirectoryError) as exc:
                raise BlobNotFound(key) from exc

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._path(key))

    def _delete(self, path: Path) -> None:
        with _unavailable_on_os_error(self.root):
            path.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_keys, prefix)

    def _list_keys(self, prefix: str) -> list[str]:
        # Walk only the directory the prefix names, not the whole store.
        prefix_dir = prefix.rpartition("/")[0]
        top = self._path(prefix_dir) if prefix_dir else self.root
        keys = []
        with _unavailable_on_os_error(self.root):
            for directory, subdirs, files in os.walk(top):
                subdirs[:] = [name for name in subdirs if not name.startswith(".")]
                relative = PurePosixPath(Path(directory).relative_to(self.root))
                for name in files:
                    key = str(relative / name) if relative.parts else name
                    if not name.startswith(".") and key.startswith(prefix):
                        keys.append(key)
        return sorted(keys)

    async def presigned_url(self, key: str) -> str | None:
        return None

    async def size(self, key: str) -> int:
        return await asyncio.to_thread(self._size, key)

    def _size(self, key: str) -> int:
        with _unavailable_on_os_error(self.root):
            try:
                info = self._path(key).stat()
            except FileNotFoundError as exc:
                raise BlobNotFound(key) from exc
            if not stat.S_ISREG(info.st_mode):
                raise BlobNotFound(key)
            return info.st_size

    async def read_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        file = await asyncio.to_thread(self._open_for_reading, key)
        try:
            file.seek(offset)
            remaining = length
            while remaining > 0:
                with _unavailable_on_os_error(self.root):
                    block = await asyncio.to_thread(file.read, min(_RANGE_BLOCK, remaining))
                if not block:
                    return
                remaining -= len(block)
                yield block
        finally:
            file.close()  # not awaited: a generator dropped mid-stream closes synchronously

    def _open_for_reading(self, key: str) -> io.BufferedReader:
        with _unavailable_on_os_error(self.root):
            try:
                return self._path(key).open("rb")
            except (FileNotFoundError, IsADirectoryError) as exc:
                raise BlobNotFound(key) from exc

    async def ping(self) -> None:
        await asyncio.to_thread(self._ping)

    def _ping(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BackendUnavailable("local", f"{self.root} is not a writable directory")
