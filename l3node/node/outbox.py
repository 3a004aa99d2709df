"""Persistent per-destination outbox (a table in ``audit.db``).

One row per (study round, destination, output object): ``pending`` until the
destination acknowledged it (``sent``) or it failed for good (``failed``: a
permanent refusal, or ``sending.max_attempts`` reached). Rows are inserted in the
same transaction that marks the study ``analysed`` (:func:`enqueue` takes the open
connection), so a crash never leaves results analysed but unsent, nor enqueued
twice. Retries back off exponentially: ``backoff_initial_s * 2**(attempts-1)``,
capped at ``backoff_max_s``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from l3node.config import SendingConfig
from l3node.node.db import Database


@dataclass(frozen=True)
class OutputFile:
    """A DICOM object to send, with the header facts the senders need."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @classmethod
    def read(cls, path: Path) -> "OutputFile":
        """Read the header of a written output object.

        Raises
        ------
        pydicom.errors.InvalidDicomError, OSError, AttributeError
            If the file is not a DICOM file with SOP class and instance UIDs.
        """
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in ds.file_meta else pydicom.uid.ExplicitVRLittleEndian
        return cls(Path(path), str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ts))


@dataclass(frozen=True)
class OutboxItem:
    """One pending row."""

    id: int
    study_id: int
    destination: str
    output: OutputFile
    attempts: int


def backoff_s(attempts: int, sending: SendingConfig) -> float:
    """Wait before the next try after ``attempts`` failed tries (>= 1)."""
    return min(sending.backoff_max_s, sending.backoff_initial_s * 2 ** max(0, attempts - 1))


def enqueue(conn: sqlite3.Connection, study_id: int, outputs: list[OutputFile], destinations: list[str], now: float) -> int:
    """Insert one pending row per output and destination (inside the caller's transaction).

    Returns the number of rows inserted; a row that already exists is kept as is.
    """
    count = 0
    for dest in destinations:
        for out in outputs:
            cur = conn.execute(
                "INSERT OR IGNORE INTO outbox (study_id, destination, file_path, sop_class_uid, sop_instance_uid,"
                " transfer_syntax_uid, next_try_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (study_id, dest, str(out.path), out.sop_class_uid, out.sop_instance_uid, out.transfer_syntax_uid, now, now),
            )
            count += cur.rowcount
    return count


class Outbox:
    """Queries and updates of the outbox table."""

    def __init__(self, db: Database, sending: SendingConfig):
        self.db = db
        self.sending = sending

    def due_batches(self, now: float | None = None) -> list[list[OutboxItem]]:
        """Pending rows whose time has come, grouped by (destination, study round), oldest first."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM outbox WHERE state = 'pending' AND next_try_at <= ? ORDER BY study_id, destination, id", (now,)
        )
        batches: dict[tuple[str, int], list[OutboxItem]] = {}
        for r in rows:
            out = OutputFile(Path(r["file_path"]), r["sop_class_uid"], r["sop_instance_uid"], r["transfer_syntax_uid"])
            item = OutboxItem(r["id"], r["study_id"], r["destination"], out, r["attempts"])
            batches.setdefault((r["destination"], r["study_id"]), []).append(item)
        return list(batches.values())

    def next_due_at(self) -> float | None:
        """When the earliest pending row is due, or None if nothing is pending."""
        rows = self.db.query("SELECT MIN(next_try_at) AS t FROM outbox WHERE state = 'pending'")
        return rows[0]["t"] if rows and rows[0]["t"] is not None else None

    def mark_sent(self, item: OutboxItem, answer: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = ?, answer = ?, last_error = ''"
                " WHERE id = ?",
                (now, answer, item.id),
            )

    def mark_failed_try(self, item: OutboxItem, error: str, permanent: bool, now: float | None = None) -> str:
        """Record a failed try; returns the row's new state (``pending`` or ``failed``)."""
        now = time.time() if now is None else now
        attempts = item.attempts + 1
        state = "failed" if permanent or attempts >= self.sending.max_attempts else "pending"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_try_at = ?, last_error = ? WHERE id = ?",
                (state, attempts, now + backoff_s(attempts, self.sending), error[:1000], item.id),
            )
        return state

    def rows_for_study(self, study_id: int) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM outbox WHERE study_id = ? ORDER BY destination, id", (study_id,))


def failed_rounds(db: Database, study_uid: str | None = None, destination: str | None = None) -> list[dict]:
    """Rounds that ended ``failed`` because sends failed for good, with how many failed sends match.

    Each dict has ``study_id``, ``study_uid``, ``round`` and ``sends`` (count of failed rows,
    restricted to ``destination`` when given).
    """
    sql = ("SELECT s.id AS study_id, s.study_uid, s.round, COUNT(*) AS sends FROM outbox o "
           "JOIN studies s ON o.study_id = s.id WHERE o.state = 'failed' AND s.state = 'failed'")
    params: list[str] = []
    if study_uid is not None:
        sql += " AND s.study_uid = ?"
        params.append(study_uid)
    if destination is not None:
        sql += " AND o.destination = ?"
        params.append(destination)
    rows = db.query(sql + " GROUP BY s.id ORDER BY s.id", tuple(params))
    return [dict(r) for r in rows]


def requeue_failed(db: Database, rounds: list[dict], destination: str | None = None, now: float | None = None) -> int:
    """Give failed sends of ``rounds`` (from :func:`failed_rounds`) a fresh set of tries.

    In one transaction: the rows go back to ``pending`` with no attempts counted, due
    now, and each round back to ``analysed``, so that a running node's sender picks them
    up and finishes the round as it would have (``done``, or ``failed`` again). Rows
    already sent stay sent. Returns the number of rows requeued.
    """
    now = time.time() if now is None else now
    requeued = 0
    with db.transaction() as conn:
        for r in rounds:
            sql = "UPDATE outbox SET state = 'pending', attempts = 0, next_try_at = ? WHERE study_id = ? AND state = 'failed'"
            params: tuple = (now, r["study_id"])
            if destination is not None:
                sql += " AND destination = ?"
                params += (destination,)
            requeued += conn.execute(sql, params).rowcount
            conn.execute("UPDATE studies SET state = 'analysed', reason = '', finished_at = NULL "
                         "WHERE id = ? AND state = 'failed'", (r["study_id"],))
    return requeued
