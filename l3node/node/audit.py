"""Per-study records in ``audit.db`` and the study state machine.

A study arrives in *rounds*: round 0 is what the PACS sends first; an instance that
arrives after the round was claimed for analysis opens round 1, analysed once complete
(the PACS sent more, so it gets a fresh analysis; earlier results are not withdrawn):
a late series on its own, late instances of a series already received together with
that series' earlier instances (:meth:`l3node.node.spool.Spool.complete_series`). An instance already part of a claimed
round (same study, series and SOP instance UID: a PACS retry or re-route) is
acknowledged and dropped by the receiver and opens no round. States of one round::

    receiving -> ready -> analysing -> analysed -> done | declined | failed

``ready``: quiet period elapsed or ``max_wait_s`` reached (:mod:`assemble`).
``analysed``: outputs written and every outbox row inserted, in one transaction.
Final: ``done`` (results delivered), ``declined`` (no result, reason given; any
declined report delivered), ``failed`` (analysis error or a send that failed for
good), each with ``reason``. Nothing here logs patient names or IDs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from l3node.node.db import Database
from l3node.node.outbox import OutputFile, enqueue

OPEN_STATES = ("receiving", "ready")
FINAL_STATES = ("done", "declined", "failed")


@dataclass(frozen=True)
class StudyRef:
    """One round of one study: the unit of analysis."""

    id: int
    study_uid: str
    round: int


def _ref(row) -> StudyRef:
    return StudyRef(row["id"], row["study_uid"], row["round"])


class Audit:
    """Study records; every method is one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    # -- receiving -----------------------------------------------------------------
    def note_instance(self, study_uid: str, calling_ae: str, now: float | None = None) -> StudyRef:
        """Record an instance stored in ``incoming/``: the open round, or a new one.

        A round still ``ready`` (not yet claimed) goes back to ``receiving``: its
        quiet period starts again, its ``max_wait_s`` bound (from the first
        instance) does not.
        """
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT * FROM studies WHERE study_uid = ? ORDER BY round DESC LIMIT 1", (study_uid,)
            ).fetchone()
            if row is not None and row["state"] in OPEN_STATES:
                conn.execute(
                    "UPDATE studies SET state = 'receiving', last_instance_at = ?, instances_received ="
                    " instances_received + 1, calling_ae = ? WHERE id = ?",
                    (now, calling_ae, row["id"]),
                )
                return _ref(row)
            round_ = 0 if row is None else row["round"] + 1
            cur = conn.execute(
                "INSERT INTO studies (study_uid, round, state, calling_ae, first_instance_at, last_instance_at,"
                " instances_received) VALUES (?, ?, 'receiving', ?, ?, ?, 1)",
                (study_uid, round_, calling_ae, now, now),
            )
            return StudyRef(cur.lastrowid, study_uid, round_)

    def note_refusal(self, calling_ae: str, peer: str, sop_uid: str, status: int, reason: str) -> None:
        """Record an instance the SCP refused (UIDs truncated: they may be hostile)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO refusals (at, calling_ae, peer, sop_instance_uid, status, reason) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), calling_ae[:16], peer[:64], sop_uid[:80], int(status), reason[:500]),
            )

    # -- queries -------------------------------------------------------------------
    def get(self, study_id: int) -> dict:
        rows = self.db.query("SELECT * FROM studies WHERE id = ?", (study_id,))
        return _decoded(rows[0]) if rows else {}

    def studies(self, study_uid: str | None = None) -> list[dict]:
        if study_uid is None:
            rows = self.db.query("SELECT * FROM studies ORDER BY id")
        else:
            rows = self.db.query("SELECT * FROM studies WHERE study_uid = ? ORDER BY round", (study_uid,))
        return [_decoded(r) for r in rows]

    def in_state(self, *states: str) -> list[StudyRef]:
        marks = ",".join("?" * len(states))
        return [_ref(r) for r in self.db.query(f"SELECT * FROM studies WHERE state IN ({marks}) ORDER BY id", states)]

    def finished_before(self, cutoff: float, states: tuple[str, ...]) -> list[dict]:
        """Rounds in ``states`` whose ``finished_at`` is before ``cutoff``."""
        marks = ",".join("?" * len(states))
        rows = self.db.query(
            f"SELECT id, study_uid, round FROM studies WHERE state IN ({marks}) AND finished_at < ? ORDER BY id",
            (*states, cutoff),
        )
        return [dict(r) for r in rows]

    def receiving_rows(self) -> list[dict]:
        return [dict(r) for r in self.db.query("SELECT * FROM studies WHERE state = 'receiving' ORDER BY id")]

    # -- transitions ---------------------------------------------------------------
    def mark_ready(self, study_id: int, why: str, now: float | None = None) -> bool:
        """receiving -> ready; False if the round is no longer receiving."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE studies SET state = 'ready', ready_at = ?, ready_reason = ? WHERE id = ? AND state = 'receiving'",
                (now, why, study_id),
            )
            return cur.rowcount == 1

    def restart_quiet_periods(self, now: float | None = None) -> int:
        """At start-up: open rounds (receiving, ready) wait a full quiet period again."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE studies SET state = 'receiving', last_instance_at = ? WHERE state IN ('receiving', 'ready')", (now,)
            )
            return cur.rowcount

    def start_analysis(self, study_id: int, instances: int, series_count: int, now: float | None = None) -> int:
        """ready|analysing -> analysing; returns the attempt number (1 for the first)."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE studies SET state = 'analysing', analysis_attempts = analysis_attempts + 1,"
                " analysis_started_at = ?, instances = ?, series_count = ? WHERE id = ?",
                (now, instances, series_count, study_id),
            )
            return conn.execute("SELECT analysis_attempts FROM studies WHERE id = ?", (study_id,)).fetchone()[0]

    def finish_analysis(
        self,
        study_id: int,
        outcome_status: str,
        reason: str,
        details: dict,
        outputs: list[OutputFile],
        destinations: list[str],
        now: float | None = None,
    ) -> int:
        """analysing -> analysed and every outbox row, in ONE transaction.

        ``details`` holds ``selected_series``, ``rejected_series``, ``results``,
        ``timings``. Returns the number of outbox rows inserted.
        """
        now = time.time() if now is None else now
        output_uids = [{"sop_class_uid": o.sop_class_uid, "sop_instance_uid": o.sop_instance_uid, "file": o.path.name} for o in outputs]
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE studies SET state = 'analysed', analysed_at = ?, outcome_status = ?, reason = ?,"
                " selected_series = ?, rejected_series = ?, results = ?, timings = ?, outputs = ? WHERE id = ?",
                (
                    now,
                    outcome_status,
                    reason,
                    json.dumps(details.get("selected_series")),
                    json.dumps(details.get("rejected_series", {})),
                    json.dumps(details.get("results", {}), default=str),
                    json.dumps(details.get("timings", {})),
                    json.dumps(output_uids),
                    study_id,
                ),
            )
            return enqueue(conn, study_id, outputs, destinations, now)

    def set_final(self, study_id: int, state: str, reason: str, now: float | None = None) -> None:
        """Any state -> done | declined | failed, with a reason."""
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state}")
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            conn.execute("UPDATE studies SET state = ?, reason = ?, finished_at = ? WHERE id = ?", (state, reason, now, study_id))

    def recent_problems(self, limit: int = 10) -> list[dict]:
        """The latest rounds that ended ``failed`` or ``declined`` and the latest refused
        instances, newest first, for ``l3node status``.

        Each dict has ``when`` (ISO time, UTC), ``what`` (``failed``, ``declined`` or
        ``refused``), ``study_uid`` (empty for refusals), ``from`` (calling AE) and ``reason``.
        """
        rows = self.db.query("SELECT finished_at AS at, state AS what, study_uid, calling_ae, reason FROM studies "
                             "WHERE state IN ('failed', 'declined') ORDER BY finished_at DESC LIMIT ?", (limit,))
        rows += self.db.query("SELECT at, 'refused' AS what, '' AS study_uid, calling_ae, reason FROM refusals "
                              "ORDER BY at DESC LIMIT ?", (limit,))
        rows = sorted(rows, key=lambda r: r["at"] or 0.0, reverse=True)[:limit]
        return [{"when": datetime.fromtimestamp(r["at"] or 0.0, timezone.utc).isoformat(timespec="seconds"),
                 "what": r["what"], "study_uid": r["study_uid"], "from": r["calling_ae"], "reason": r["reason"]}
                for r in rows]

    def failed_analyses(self, study_uid: str | None = None) -> list[dict]:
        """Rounds that ended ``failed`` before anything was enqueued (analysis errors,
        interrupted analyses): ``id``, ``study_uid``, ``round``, ``reason``. Failed sends are
        :func:`l3node.node.outbox.failed_rounds`."""
        return self._rounds("state = 'failed' AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.study_id = studies.id)",
                            study_uid)

    def declined_rounds(self, study_uid: str | None = None) -> list[dict]:
        """Rounds that ended ``declined`` (no result, a reason given): ``id``, ``study_uid``,
        ``round``, ``reason``. Analysed again after a change that may answer them (selection
        rules, an upgrade that reads what was declined)."""
        return self._rounds("state = 'declined'", study_uid)

    def _rounds(self, condition: str, study_uid: str | None) -> list[dict]:
        sql = f"SELECT id, study_uid, round, reason FROM studies WHERE {condition}"
        params: tuple = ()
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params = (study_uid,)
        return [dict(r) for r in self.db.query(sql + " ORDER BY id", params)]

    def reopen_for_analysis(self, study_ids: list[int]) -> int:
        """failed or declined -> analysing with no attempts counted, so that the worker
        analyses the round again from ``work/`` (as after an interrupted analysis). Returns
        the rounds reopened."""
        with self.db.transaction() as conn:
            return sum(conn.execute(
                "UPDATE studies SET state = 'analysing', reason = '', finished_at = NULL, analysis_attempts = 0 "
                "WHERE id = ? AND state IN ('failed', 'declined')", (study_id,)).rowcount for study_id in study_ids)

    def sends_settled(self, study_id: int) -> tuple[bool, list[dict]]:
        """Whether no outbox row of the round is pending, and the rows' answers."""
        rows = self.db.query(
            "SELECT destination, sop_instance_uid, state, attempts, last_error, answer FROM outbox WHERE study_id = ?",
            (study_id,),
        )
        return all(r["state"] != "pending" for r in rows), [dict(r) for r in rows]

    # -- reporting -----------------------------------------------------------------
    def status_summary(self) -> dict:
        """Counts for ``l3node status``: studies by state, sends by state, refusals."""
        by_state = {r["state"]: r["n"] for r in self.db.query("SELECT state, COUNT(*) AS n FROM studies GROUP BY state")}
        sends = {r["state"]: r["n"] for r in self.db.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")}
        refused = self.db.query("SELECT COUNT(*) AS n FROM refusals")[0]["n"]
        instances = self.db.query("SELECT COALESCE(SUM(instances_received), 0) AS n FROM studies")[0]["n"]
        return {
            "studies_received": sum(by_state.values()),
            "instances_received": instances,
            "receiving": by_state.get("receiving", 0) + by_state.get("ready", 0),
            "in_progress": by_state.get("analysing", 0) + by_state.get("analysed", 0),
            "done": by_state.get("done", 0),
            "declined": by_state.get("declined", 0),
            "failed": by_state.get("failed", 0),
            "pending_sends": sends.get("pending", 0),
            "sent": sends.get("sent", 0),
            "failed_sends": sends.get("failed", 0),
            "refused_instances": refused,
        }


def _decoded(row) -> dict:
    record = dict(row)
    for key in ("selected_series", "rejected_series", "results", "timings", "outputs"):
        if record.get(key):
            record[key] = json.loads(record[key])
    return record


def status_summary(source: Database | Path | str) -> dict:
    """``l3node status``: counts of :meth:`Audit.status_summary`.

    ``source`` is an open :class:`Database` or a ``storage.root`` folder (read from
    outside the running node; WAL lets it read while the node writes).

    Raises
    ------
    FileNotFoundError
        If ``source`` is a folder where no node has run yet.
    """
    if isinstance(source, Database):
        return Audit(source).status_summary()
    path = Path(source) / "audit.db"
    if not path.is_file():
        raise FileNotFoundError(f"no audit database at {path}")
    db = Database(path)
    try:
        return Audit(db).status_summary()
    finally:
        db.close()
