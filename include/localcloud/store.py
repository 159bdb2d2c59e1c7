"""Durable state of the services the local cloud implements itself: one SQLite file, one row per
resource (kind, name) holding its description as JSON. Writes are atomic; readers see either the
old or the new description."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Resource = dict[str, Any]


def connect(path: Path) -> sqlite3.Connection:
    """A connection its owner shares between threads behind its own lock: autocommit (transactions
    are explicit), write-ahead log, synced at checkpoints."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the caller holds its lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = 0  # counts writes, so readers can cache what they derive from the store
        self._lock = threading.RLock()
        self._db = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS resources ("
            " kind TEXT NOT NULL, name TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (kind, name))"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several reads and writes as one atomic step (re-entrant)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            with immediate_transaction(self._db):
                yield

    def get(self, kind: str, name: str) -> Resource | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, kind: str, name: str, body: Resource) -> None:
        with self._lock:
            self.version += 1
            self._db.execute(
                "INSERT INTO resources (kind, name, seq, body) VALUES (?, ?,"
                " (SELECT COALESCE(MAX(seq), 0) + 1 FROM resources), ?)"
                " ON CONFLICT (kind, name) DO UPDATE SET body = excluded.body",
                (kind, name, json.dumps(body)),
            )

    def insert(self, kind: str, name: str, body: Resource) -> bool:
        """Add a resource unless one of that kind and name exists; True when added."""
        with self.transaction():
            if self.get(kind, name) is not None:
                return False
            self.put(kind, name, body)
            return True

    def update(self, kind: str, name: str, change: Callable[[Resource], None]) -> Resource | None:
        """Apply `change` to the stored description atomically; None when it does not exist."""
        with self.transaction():
            body = self.get(kind, name)
            if body is None:
                return None
            change(body)
            self.put(kind, name, body)
            return body

    def delete(self, kind: str, name: str) -> bool:
        with self._lock:
            self.version += 1
            cursor = self._db.execute("DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name))
        return cursor.rowcount > 0

    def list(self, kind: str) -> list[Resource]:
        """All resources of a kind, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM resources WHERE kind = ? ORDER BY seq", (kind,)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]
