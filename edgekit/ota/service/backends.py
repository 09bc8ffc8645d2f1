"""Which storage and registry the service runs on: files and SQLite under one folder by default,
PostgreSQL and an S3 bucket for replicas."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import OtaRequestError
from edgekit.ota.service.database import SqliteRegistry, SqlRegistry
from edgekit.ota.service.storage import FileStorage, Storage


def open_backends(data_dir: str | Path | None, registry_url: str | None = None,
                  storage_url: str | None = None) -> tuple[Storage, SqlRegistry]:
    """The storage and registry: ``data_dir/files`` and ``data_dir/registry.sqlite3`` by default;
    ``registry_url`` ``postgresql://...`` and ``storage_url`` ``s3://bucket?endpoint=...`` for replicas."""
    if (registry_url is None or storage_url is None) and data_dir is None:
        raise OtaRequestError("give --data, or both --registry and --storage")
    data = Path(data_dir) if data_dir is not None else Path(".")
    if storage_url is None:
        storage: Storage = FileStorage(data / "files")
    elif storage_url.startswith("s3://"):
        from edgekit.ota.service.s3 import S3Storage

        storage = S3Storage.from_url(storage_url)
    else:
        raise OtaRequestError(f"--storage {storage_url!r}: use s3://BUCKET?endpoint=URL (or leave it out for files)")
    registry: SqlRegistry
    if registry_url is None:
        registry = SqliteRegistry(data / "registry.sqlite3")
    elif registry_url.startswith(("postgresql://", "postgres://")):
        from edgekit.ota.service.postgres import PostgresRegistry

        registry = PostgresRegistry(registry_url)
    else:
        raise OtaRequestError(f"--registry {registry_url!r}: use postgresql://... (or leave it out for SQLite)")
    return storage, registry
