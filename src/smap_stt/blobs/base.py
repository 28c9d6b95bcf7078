"""The blob store contract: audio uploads and transcripts, by key."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["BlobStore"]


class BlobStore(ABC):
    """Objects by key. Every method may raise `BackendUnavailable`; reads of a missing key
    raise `BlobNotFound`. Files move through local paths so nothing is held in memory whole."""

    name: str

    async def open(self) -> None:
        """Connect and create the bucket/directory; idempotent."""

    async def close(self) -> None: ...

    @abstractmethod
    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store the file at `path` under `key`, streaming. `move`: the caller no longer needs
        the file, so a local store may rename it instead of copying; either way the file at
        `path` is gone once this returns (the upload path relies on it)."""

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes, *, content_type: str = "") -> None: ...

    @abstractmethod
    async def get_file(self, key: str, path: Path) -> None:
        """Write the object to `path` (creating its parent directories), streaming."""

    @abstractmethod
    async def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def list_keys(self, prefix: str) -> list[str]: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix`; returns how many."""
        keys = await self.list_keys(prefix)
        for key in keys:
            await self.delete(key)
        return len(keys)

    @abstractmethod
    async def presigned_url(self, key: str) -> str | None:
        """A URL a client can fetch the object from directly, or None if the store has no such
        thing (the API then serves it itself)."""

    # --- ranged reads (issue 13: the page's audio player seeks with HTTP Range) ----------------

    @abstractmethod
    async def size(self, key: str) -> int:
        """The object's size in bytes; `BlobNotFound` if there is none."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """Stream `length` bytes from `offset` in blocks of bounded size (fewer if the object
        ends first; nothing for `length` <= 0). `BlobNotFound` is raised on the first
        iteration, so callers that must answer before streaming check `size()` first."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise `BackendUnavailable` unless the store answers."""
