"""The service's registry: releases, device reports and API tokens, in SQLite (the embedded default).

One small SQL dialect (``?`` placeholders, ``INSERT ... ON CONFLICT``) that PostgreSQL also speaks
after a placeholder swap, so ``edgekit.ota.service.postgres`` only supplies the connection and the lock.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCOPES = ("read", "publish", "rollout", "admin")  # any scope reads; admin does everything

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS releases (
        model TEXT NOT NULL, channel TEXT NOT NULL, release INTEGER NOT NULL, version TEXT NOT NULL,
        files TEXT NOT NULL, basis_points INTEGER NOT NULL, halted INTEGER NOT NULL DEFAULT 0,
        halted_reason TEXT, stable_release INTEGER, rollback_of INTEGER, created_at TEXT NOT NULL,
        PRIMARY KEY (model, channel, release))""",
    """CREATE TABLE IF NOT EXISTS reports (
        model TEXT NOT NULL, channel TEXT NOT NULL, release INTEGER NOT NULL, device_id TEXT NOT NULL,
        outcome TEXT NOT NULL, detail TEXT, at TEXT NOT NULL,
        PRIMARY KEY (model, channel, release, device_id))""",
    """CREATE TABLE IF NOT EXISTS tokens (
        sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, scopes TEXT NOT NULL, created_at TEXT NOT NULL)""",
    # device identity: operators issue enrolment tokens (one per fleet batch, with a device cap);
    # a device enrols its id with one and gets its own device token, which authenticates its reports
    """CREATE TABLE IF NOT EXISTS enrolments (
        sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, max_devices INTEGER NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS devices (
        device_id TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, enrolment TEXT NOT NULL, enrolled_at TEXT NOT NULL)""",
    # the outcome counts when an operator resumed a halted release: halting counts what came after
    """CREATE TABLE IF NOT EXISTS halt_baselines (
        model TEXT NOT NULL, channel TEXT NOT NULL, release INTEGER NOT NULL, failed INTEGER NOT NULL,
        total INTEGER NOT NULL, PRIMARY KEY (model, channel, release))""",
]


def now_text() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Release:
    """One release of a channel (a row of ``releases``)."""

    model: str
    channel: str
    release: int
    version: str
    files: list[dict[str, Any]]
    basis_points: int
    halted: bool = False
    halted_reason: str | None = None
    stable_release: int | None = None
    rollback_of: int | None = None
    created_at: str = field(default_factory=now_text)
    already_published: bool = False  # not stored: set on the answer to a repeated publish of the same files

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


COLUMNS = ("model", "channel", "release", "version", "files", "basis_points", "halted", "halted_reason",
           "stable_release", "rollback_of", "created_at")


def _release(row: Any) -> Release:
    data = dict(zip(COLUMNS, row, strict=True))
    data["files"] = json.loads(data["files"])
    data["halted"] = bool(data["halted"])
    return Release(**data)


class SqlRegistry:
    """The registry's operations, in SQL that SQLite and PostgreSQL share. A backend supplies a
    connection per thread (``_connection``), its placeholder style (``_sql``), the statement that
    opens a write transaction (``begin``) and the writers' lock (``lock``): see
    :class:`SqliteRegistry` and :class:`edgekit.ota.service.postgres.PostgresRegistry`."""

    begin = "BEGIN"
    _local: threading.local  # this thread's connection, as .conn

    def _connection(self) -> Any:
        raise NotImplementedError

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer of the repository at a time."""
        raise NotImplementedError
        yield  # pragma: no cover

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _sql(self, sql: str) -> str:
        return sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self._connection()
        cur = conn.cursor()
        cur.execute(self.begin)
        try:
            yield _Cursor(cur, self._sql)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        """A read outside any write transaction (WAL readers do not block the writer)."""
        cur = self._connection().cursor()
        cur.execute(self._sql(sql), args)
        return list(cur.fetchall())

    # -- releases ------------------------------------------------------------------------------

    def add_release(self, r: Release) -> None:
        with self.transaction() as cur:
            cur.execute(f"INSERT INTO releases ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                        (r.model, r.channel, r.release, r.version, json.dumps(r.files), r.basis_points, int(r.halted),
                         r.halted_reason, r.stable_release, r.rollback_of, r.created_at))

    def update_release(self, r: Release) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE releases SET basis_points = ?, halted = ?, halted_reason = ? "
                        "WHERE model = ? AND channel = ? AND release = ?",
                        (r.basis_points, int(r.halted), r.halted_reason, r.model, r.channel, r.release))

    def releases(self, model: str | None = None, channel: str | None = None) -> list[Release]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM releases"
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if channel is not None:
            where.append("channel = ?")
            args.append(channel)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_release(row) for row in self._read(sql + " ORDER BY model, channel, release", tuple(args))]

    def release(self, model: str, channel: str, release: int) -> Release | None:
        rows = self._read(f"SELECT {', '.join(COLUMNS)} FROM releases WHERE model = ? AND channel = ? AND release = ?",
                          (model, channel, release))
        return _release(rows[0]) if rows else None

    def latest(self, model: str, channel: str) -> Release | None:
        rows = self._read(f"SELECT {', '.join(COLUMNS)} FROM releases WHERE model = ? AND channel = ? "
                          "ORDER BY release DESC LIMIT 1", (model, channel))
        return _release(rows[0]) if rows else None

    # -- reports -------------------------------------------------------------------------------

    def add_report(self, model: str, channel: str, release: int, device_id: str, outcome: str, detail: str) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT INTO reports (model, channel, release, device_id, outcome, detail, at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, channel, release, device_id) DO UPDATE "
                        "SET outcome = excluded.outcome, detail = excluded.detail, at = excluded.at",
                        (model, channel, release, device_id, outcome, detail[:2000], now_text()))

    def outcomes(self, model: str, channel: str, release: int) -> dict[str, int]:
        rows = self._read("SELECT outcome, COUNT(*) FROM reports WHERE model = ? AND channel = ? AND release = ? "
                          "GROUP BY outcome", (model, channel, release))
        return {str(k): int(v) for k, v in rows}

    # -- tokens --------------------------------------------------------------------------------

    def create_token(self, name: str, scopes: list[str]) -> str:
        """A new API token (shown once; only its SHA-256 is kept)."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            from edgekit.errors import UserError

            raise UserError(f"token scopes must be among {', '.join(SCOPES)} (got {', '.join(scopes) or 'none'})")
        token = "ek_" + secrets.token_urlsafe(32)
        with self.transaction() as cur:
            cur.execute("INSERT INTO tokens (sha256, name, scopes, created_at) VALUES (?, ?, ?, ?)",
                        (hashlib.sha256(token.encode()).hexdigest(), name, ",".join(scopes), now_text()))
        return token

    def token_scopes(self, token: str) -> tuple[str, set[str]] | None:
        rows = self._read("SELECT name, scopes FROM tokens WHERE sha256 = ?", (hashlib.sha256(token.encode()).hexdigest(),))
        return (str(rows[0][0]), set(str(rows[0][1]).split(","))) if rows else None

    def has_tokens(self) -> bool:
        return int(self._read("SELECT COUNT(*) FROM tokens")[0][0]) > 0

    # -- device identity -----------------------------------------------------------------------

    def create_enrolment(self, name: str, max_devices: int) -> str:
        """A new enrolment token for up to ``max_devices`` devices (shown once; only its SHA-256 is kept)."""
        if not 1 <= max_devices <= 100_000_000:
            from edgekit.errors import UserError

            raise UserError(f"--max-devices must be between 1 and 100000000, not {max_devices}")
        token = "eke_" + secrets.token_urlsafe(32)
        with self.transaction() as cur:
            cur.execute("INSERT INTO enrolments (sha256, name, max_devices, created_at) VALUES (?, ?, ?, ?)",
                        (_sha(token), name, max_devices, now_text()))
        return token

    def enrol(self, device_id: str, enrolment_token: str) -> str:
        """Enrol ``device_id`` with an enrolment token; the device's own token (shown once). Enrolling
        again with the same batch's token replaces the device's token (an app reinstalled).

        Raises:
            OtaRequestError: Unknown enrolment token (401), its devices all enrolled (403), or the id
                enrolled by another batch (409).
        """
        from edgekit.errors import OtaRequestError

        batch = _sha(enrolment_token)
        token = "ekd_" + secrets.token_urlsafe(32)
        with self.transaction() as cur:
            cur.execute("SELECT name, max_devices FROM enrolments WHERE sha256 = ?", (batch,))
            found = cur.fetchall()
            if not found:
                raise OtaRequestError("unknown enrolment token; the operator creates one with `edgekit ota enrolment`",
                                      status=401)
            cur.execute("SELECT enrolment FROM devices WHERE device_id = ?", (device_id,))
            existing = cur.fetchall()
            if existing and existing[0][0] != batch:
                raise OtaRequestError(f"device {device_id!r} is enrolled already (by another enrolment token)", status=409)
            if not existing:
                cur.execute("SELECT COUNT(*) FROM devices WHERE enrolment = ?", (batch,))
                if int(cur.fetchall()[0][0]) >= int(found[0][1]):
                    raise OtaRequestError(f"enrolment token {found[0][0]!r} has enrolled its {found[0][1]} devices; "
                                          "ask the operator for another", status=403)
            cur.execute("INSERT INTO devices (device_id, token_sha256, enrolment, enrolled_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (device_id) DO UPDATE SET token_sha256 = excluded.token_sha256, "
                        "enrolled_at = excluded.enrolled_at", (device_id, _sha(token), batch, now_text()))
        return token

    def device_of(self, device_token: str) -> str | None:
        """The enrolled device a device token belongs to."""
        rows = self._read("SELECT device_id FROM devices WHERE token_sha256 = ?", (_sha(device_token),))
        return str(rows[0][0]) if rows else None

    def devices(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM devices")[0][0])

    def set_halt_baseline(self, model: str, channel: str, release: int, failed: int, total: int) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT INTO halt_baselines (model, channel, release, failed, total) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (model, channel, release) DO UPDATE SET failed = excluded.failed, "
                        "total = excluded.total", (model, channel, release, failed, total))

    def halt_baseline(self, model: str, channel: str, release: int) -> tuple[int, int]:
        rows = self._read("SELECT failed, total FROM halt_baselines WHERE model = ? AND channel = ? AND release = ?",
                          (model, channel, release))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


class SqliteRegistry(SqlRegistry):
    """The registry in one SQLite file; ``lock()`` serializes writers across threads and processes."""

    begin = "BEGIN IMMEDIATE"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._thread_lock = threading.Lock()
        with self.transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer of the repository at a time (threads here; processes through a lock file)."""
        import fcntl

        with self._thread_lock, open(self.path.with_suffix(".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class _Cursor:
    """A cursor whose SQL is rewritten for the backend's placeholder style."""

    def __init__(self, cur: Any, rewrite: Any) -> None:
        self._cur = cur
        self._rewrite = rewrite

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        self._cur.execute(self._rewrite(sql), args)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())
