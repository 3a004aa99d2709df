"""The node's one SQLite database (``<storage.root>/audit.db``), in WAL mode.

Study records (:mod:`l3node.node.audit`) and the outbox (:mod:`l3node.node.outbox`)
live in the same file so that "analysis finished" and "these results must be sent"
are committed in ONE transaction: after a crash either both exist or neither does,
which is what makes every result go out exactly once.

One connection is shared by the threads of one process, serialised by a lock;
writes are short (one row), so the lock is never held for long.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    first_instance_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    instances_received INTEGER NOT NULL DEFAULT 0,
    instances INTEGER,
    series_count INTEGER,
    ready_at REAL,
    ready_reason TEXT,
    analysis_attempts INTEGER NOT NULL DEFAULT 0,
    analysis_started_at REAL,
    analysed_at REAL,
    finished_at REAL,
    outcome_status TEXT,
    selected_series TEXT,
    rejected_series TEXT,
    results TEXT,
    timings TEXT,
    outputs TEXT,
    UNIQUE (study_uid, round)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies (id),
    destination TEXT NOT NULL,
    file_path TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    answer TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (study_id, destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_try_at);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    peer TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


class Database:
    """A WAL-mode SQLite connection shared by threads under a lock.

    Parameters
    ----------
    path:
        The database file; created with the schema if missing.

    Raises
    ------
    sqlite3.Error
        If the file cannot be opened or is not a database.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk when it returns (the C-STORE success and the
        # analysed+outbox transaction must survive a power cut, not only kill -9).
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one IMMEDIATE transaction; rollback on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Run a read-only query and return all rows."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
