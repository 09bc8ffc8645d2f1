"""Where the OTA service keeps files: TUF metadata, release files and its own state.

Keys are relative POSIX paths (``metadata/timestamp.json``, ``targets/digits/stable/3/<sha>.bundle.json``).
``FileStorage`` is the embedded default, a directory; ``S3Storage`` (in ``edgekit.ota.service.s3``) keeps the
same keys in any S3-compatible bucket, so several service replicas can share one store. Every write
is atomic: a reader sees the old bytes or the new, never a part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from edgekit._files import hash_path, write_atomic
from edgekit.errors import NotFoundError


@dataclass(frozen=True)
class Stat:
    """A stored object's size and a strong ETag (quoted)."""

    size: int
    etag: str


def check_key(key: str) -> str:
    """A storage key: a relative POSIX path without '.', '..' or empty parts.

    Raises:
        NotFoundError: A path traversal or an absolute path (the object cannot exist).
    """
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts) or "//" in key:
        raise NotFoundError(f"no such file: {key!r}")
    return key


class Storage(Protocol):
    """The few operations the service needs from a store."""

    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def get(self, key: str) -> bytes: ...
    def stat(self, key: str) -> Stat | None: ...
    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]: ...
    def delete(self, key: str) -> None: ...


class FileStorage:
    """A directory. ETags are the SHA-256 of the content, kept beside each object."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._etags: dict[tuple[str, int, int], str] = {}
        self._paths: dict[str, str] = {}  # key -> file path, for version() on the hot path

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        # public files (mode 0644): nginx or a CDN sync may serve the same directory
        write_atomic(self._path(key), data, mode=0o644)

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, path.read_bytes())

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def stat(self, key: str) -> Stat | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        cache_key = (key, st.st_size, st.st_mtime_ns)
        etag = self._etags.get(cache_key)
        if etag is None:
            etag = f'"{hash_path(path)[0][:32]}"'
            self._etags[cache_key] = etag
        return Stat(st.st_size, etag)

    def version(self, key: str) -> tuple[int, int] | None:
        """A cheap token that changes when the object does (size and mtime; one stat call)."""
        path = self._paths.get(key)
        if path is None:
            path = str(self._path(key))
            if len(self._paths) < 64:  # the few mutable files asked for again and again
                self._paths[key] = path
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` inclusive, in chunks."""
        with self._path(key).open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(1 << 20, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
