"""The registry in PostgreSQL, for several service replicas behind a load balancer (``psycopg`` 3).

The same tables and SQL as the SQLite registry; writers are serialized across replicas with a
PostgreSQL advisory lock, held while a change is recorded and its metadata re-signed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgekit.errors import MissingDependencyError, UserError
from edgekit.ota.service.database import SCHEMA, SqlRegistry

LOCK_KEY = 0x6564_6765_6B69_74  # "edgekit"


class PostgresRegistry(SqlRegistry):
    """The registry's operations on a PostgreSQL database given by URL."""

    begin = "BEGIN"

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("the PostgreSQL registry needs psycopg: pip install 'edgekit[ota-postgres]'",
                                         extra="ota-postgres", package="psycopg") from exc
        self.url = url
        self._local = threading.local()
        self._thread_lock = threading.Lock()
        with self.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)" % LOCK_KEY)  # noqa: UP031 (a constant)
            for statement in SCHEMA:
                cur.execute(statement)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg

            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as exc:
                raise UserError(f"cannot connect to the PostgreSQL registry {self.url} ({exc}); check --registry") from exc
            self._local.conn = conn
        return conn

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer across every replica: a session advisory lock on this thread's connection."""
        with self._thread_lock:
            conn = self._connection()
            conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
