"""Files, the one way edgekit writes and hashes them (core: no converters, runtimes or CLI here).

Every file edgekit writes goes through :func:`write_atomic`: a temporary file in the same folder,
fsynced, renamed over the target, the folder fsynced. A reader, or a crash, sees the old bytes or
the new, never a part. New files get the process's umask like any other file (``mode`` overrides).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's file mode creation mask (read without changing it for good)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open()`` or ``mkdir()`` would give a new file or folder under the current umask."""
    return (0o777 if directory else 0o666) & ~umask()


def write_atomic(path: Path, data: bytes | str, *, mode: int | None = None) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically and durably; ``mode`` defaults to the umask's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder under ``parent`` with the umask's mode (``tempfile.mkdtemp`` makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, default_mode(directory=True))
    return path


def hash_path(path: Path) -> tuple[str, int]:
    """sha256 and size in bytes of a file, or of a directory hashed deterministically.

    A directory hashes the sorted list of its files' relative POSIX paths, each followed by the
    sha256 of its content, so the digest depends on names and bytes only (not on mtimes or the
    order the file system lists entries in).
    """
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest(), path.stat().st_size
    if path.is_dir():
        digest = hashlib.sha256()
        total = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            sub, size = hash_path(file)
            digest.update(f"{file.relative_to(path).as_posix()}\0{sub}\n".encode())
            total += size
        return digest.hexdigest(), total
    raise FileNotFoundError(path)


def human_size(n: float | None) -> str:
    """A byte count as people read it: 512 B, 1.5 KB, 3.2 MB ("-" for unknown)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
