"""The node: receiver + one analysis worker + one sender, and crash recovery.

Threads: pynetdicom's association threads only store instances (see
:mod:`l3node.node.receive`); one worker analyses ready studies one at a time; one
sender empties the outbox. All state is in ``<storage.root>/audit.db`` and the
spool, so ``kill -9`` at any moment loses nothing:

* killed while receiving: instances answered with success are on disk; files
  without a record are recorded at start-up; the PACS resends unanswered ones;
* killed while analysing: the round is still ``analysing`` with nothing enqueued,
  so it is analysed again (at most :data:`MAX_ANALYSIS_ATTEMPTS` times, then
  failed) and its results are sent once;
* killed while sending: pending rows are resent after restart. The destination
  may receive an object twice with the SAME SOP instance UID (DIMSE has no
  exactly-once delivery); PACS store that idempotently.

Run as ``python -m l3node.service config.yaml`` (the CLI's ``l3node serve`` is the
supported entry point).
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from l3node.config import Config, DicomwebDestination
from l3node.logs import get_logger
from l3node.node.assemble import count_instances, promote_ready
from l3node.node.audit import Audit, StudyRef
from l3node.node.db import Database
from l3node.node.outbox import Outbox, OutboxItem, OutputFile
from l3node.node.receive import Receiver
from l3node.node.send import SendResult, send_dimse, send_stow
from l3node.node.spool import Spool, fsync_files

log = get_logger(__name__)

MAX_ANALYSIS_ATTEMPTS = 3  # an analysis that kills the process this often is given up
Analyse = Callable[[Path, Path, Config], object]  # (study_dir, out_dir, config) -> StudyOutcome


def _default_analyse(study_dir: Path, out_dir: Path, config: Config):
    from l3node.pipeline import analyse_study

    return analyse_study(study_dir, out_dir, config)


class Node:
    """One running node.

    Parameters
    ----------
    config:
        The validated configuration.
    analyse:
        ``analyse(study_dir, out_dir, config) -> StudyOutcome``; default
        :func:`l3node.pipeline.analyse_study`.
    poll_s:
        How often the worker and sender look for work when idle.

    Raises
    ------
    OSError, sqlite3.Error
        If the storage root or the database cannot be opened.
    """

    def __init__(self, config: Config, analyse: Analyse | None = None, poll_s: float | None = None):
        self.config = config
        self.analyse = analyse or _default_analyse
        self.spool = Spool(config.storage.root)
        self.db = Database(Path(config.storage.root) / "audit.db")
        self.audit = Audit(self.db)
        self.outbox = Outbox(self.db, config.sending)
        self.receiver = Receiver(config, self.spool, self.audit)
        self.poll_s = poll_s if poll_s is not None else min(0.5, max(0.05, config.assembly.quiet_period_s / 4))
        self._destinations = {d.name: d for d in config.destinations}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_purge = 0.0
        self._finalize_lock = threading.Lock()

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Recover, then start the receiver, the worker and the sender.

        Raises
        ------
        OSError
            If the listening port cannot be bound.
        """
        self.recover()
        if self.analyse is _default_analyse:
            from l3node.pipeline import warm_up

            warm_up(self.config)
        self.receiver.start()
        for name, step in (("worker", self.worker_step), ("sender", self.sender_step)):
            thread = threading.Thread(target=self._run_loop, args=(name, step), name=f"l3node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("node_started", ae_title=self.config.node.ae_title, port=self.receiver.port)

    def stop(self, analysis_wait_s: float = 30.0) -> None:
        """Stop accepting, let the current send finish, and close.

        An analysis still running after ``analysis_wait_s`` is abandoned (its
        daemon thread dies with the process); the study stays ``analysing`` and is
        analysed again at the next start.
        """
        self.receiver.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=analysis_wait_s if thread.name.endswith("worker") else None)
        self._threads.clear()
        log.info("node_stopped")

    def is_idle(self) -> bool:
        """No round receiving, waiting or in progress and no send pending."""
        busy = self.audit.in_state("receiving", "ready", "analysing", "analysed")
        return not busy and self.outbox.next_due_at() is None

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until :meth:`is_idle` (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_idle():
                return True
            time.sleep(0.05)
        return self.is_idle()

    # -- recovery ------------------------------------------------------------------
    def recover(self) -> None:
        """Bring spool and database into agreement after an unclean stop."""
        for study_uid in self.spool.incoming_studies():
            rounds = self.audit.studies(study_uid)
            if not rounds or rounds[-1]["state"] not in ("receiving", "ready"):
                ref = self.audit.note_instance(study_uid, calling_ae="")
                log.warning("recovered_unrecorded_instances", study_uid=study_uid, round=ref.round)
        # Rounds still open restart their quiet period now: the PACS resends what the
        # stop left unacknowledged, and those instances belong to the same round.
        self.audit.restart_quiet_periods()
        for ref in self.audit.in_state("analysing"):
            log.warning("analysis_interrupted", study_uid=ref.study_uid, round=ref.round)
        for ref in self.audit.in_state("analysed"):
            self._finalize_if_settled(ref)

    def _run_loop(self, name: str, step) -> None:
        """Call ``step`` until stopped; idle for ``poll_s`` when it found nothing to do."""
        while not self._stop.is_set():
            try:
                worked = step()
            except Exception as exc:  # noqa: BLE001 - the loop must survive; the cause is logged
                log.exception(f"{name}_error", error=repr(exc))
                worked = False
            if not worked:
                self._stop.wait(self.poll_s)

    # -- worker --------------------------------------------------------------------

    def purge_done(self, now: float | None = None) -> int:
        """Delete the spool and results of rounds ``done``/``declined`` longer than
        ``storage.keep_done_studies_days`` ago (failed rounds are kept for review).

        The database record stays. Returns the number of rounds purged.
        """
        now = time.time() if now is None else now
        cutoff = now - self.config.storage.keep_done_studies_days * 86400
        purged = 0
        for record in self.audit.finished_before(cutoff, ("done", "declined")):
            for folder in (
                self.spool.final_dir(record["study_uid"], record["round"], failed=False),
                self.spool.results_dir(record["study_uid"], record["round"]),
            ):
                if folder.is_dir():
                    shutil.rmtree(folder)
                    if not any(folder.parent.iterdir()):
                        folder.parent.rmdir()
                    purged += 1
        if purged:
            log.info("purged_done_studies", folders=purged)
        return purged

    def worker_step(self) -> bool:
        """Promote complete rounds, then analyse one (interrupted ones first)."""
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + 3600
            self.purge_done()
        promote_ready(self.audit, self.config.assembly)
        for ref in self.audit.in_state("analysing") + self.audit.in_state("ready"):
            if self._stop.is_set():
                return False
            self._analyse_round(ref)
            return True
        return False

    def _analyse_round(self, ref: StudyRef) -> None:
        record = self.audit.get(ref.id)
        if record["state"] == "analysing" and record["analysis_attempts"] >= MAX_ANALYSIS_ATTEMPTS:
            self._fail(ref, f"analysis_interrupted: the node stopped during analysis {record['analysis_attempts']} times")
            return
        with self.spool.lock:  # no instance may join the round between the move and the state change
            state = self.audit.get(ref.id)["state"]
            if state == "ready":
                try:
                    study_dir = self.spool.claim(ref.study_uid, ref.round)
                except FileNotFoundError:
                    self._fail(ref, "no_instances: the study folder is missing")
                    return
            elif state == "analysing":
                # Interrupted analysis: its instances were moved to work/ before the state
                # changed; incoming/<study> now belongs to the NEXT round, never to this one.
                study_dir = self.spool.work_dir(ref.study_uid, ref.round)
                if not study_dir.is_dir():
                    self._fail(ref, "no_instances: the work folder is missing")
                    return
            else:
                return
            instances, series = count_instances(study_dir)
            attempt = self.audit.start_analysis(ref.id, instances, series)
        out_dir = self.spool.results_dir(ref.study_uid, ref.round)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a partial earlier attempt: nothing of it was enqueued
        out_dir.mkdir(parents=True)
        log.info("analysis_started", study_uid=ref.study_uid, round=ref.round, attempt=attempt, instances=instances, series=series)
        started = time.monotonic()
        try:
            outcome = self.analyse(study_dir, out_dir, self.config)
            outputs = [OutputFile.read(Path(p)) for p in outcome.output_files]
            # On disk before the outbox rows that point at them are committed.
            fsync_files([o.path for o in outputs] + [p for p in (out_dir / "results.json",) if p.is_file()])
        except Exception as exc:  # noqa: BLE001 - any analysis failure ends the study as failed
            log.exception("analysis_failed", study_uid=ref.study_uid, round=ref.round)
            self._fail(ref, f"analysis_error: {type(exc).__name__}: {str(exc)[:300]}")
            return
        timings = dict(getattr(outcome, "timings_s", {}) or {})
        timings["analysis_total_s"] = round(time.monotonic() - started, 3)
        details = {
            "selected_series": getattr(outcome, "selected_series_uid", None),
            "rejected_series": getattr(outcome, "rejected_series", {}),
            "results": getattr(outcome, "results", {}),
            "timings": timings,
        }
        rows = self.audit.finish_analysis(
            ref.id, outcome.status, outcome.reason, details, outputs, list(self._destinations)
        )
        log.info(
            "analysis_finished",
            study_uid=ref.study_uid,
            round=ref.round,
            status=outcome.status,
            reason=outcome.reason,
            outputs=len(outputs),
            sends=rows,
            elapsed_s=timings["analysis_total_s"],
        )
        self._finalize_if_settled(ref)

    def _fail(self, ref: StudyRef, reason: str) -> None:
        """End a claimed round as failed (its instances move from work/ to failed/)."""
        self.spool.finish(ref.study_uid, ref.round, True, {"state": "failed", "reason": reason})
        self.audit.set_final(ref.id, "failed", reason)
        log.warning("study_failed", study_uid=ref.study_uid, round=ref.round, reason=reason)

    def _finalize_if_settled(self, ref: StudyRef) -> None:
        """analysed -> done | declined | failed once no send of the round is pending.

        Called by the worker (rounds with nothing to send) and the sender; the lock
        makes the move to done/ or failed/ happen once.
        """
        with self._finalize_lock:
            settled, rows = self.audit.sends_settled(ref.id)
            record = self.audit.get(ref.id)
            if settled and record.get("state") == "analysed":
                self._finalize(ref, record, rows)

    def _finalize(self, ref: StudyRef, record: dict, rows: list[dict]) -> None:
        failed = [r for r in rows if r["state"] == "failed"]
        if failed:
            state = "failed"
            reason = "send_failed: " + "; ".join(f"{r['destination']} {r['sop_instance_uid']}: {r['last_error']}" for r in failed)
        else:
            state = record["outcome_status"] if record["outcome_status"] in ("done", "declined") else "failed"
            reason = record["reason"] or ("delivered" if rows else "no destinations configured")
        self.spool.finish(
            ref.study_uid,
            ref.round,
            state == "failed",
            {"state": state, "reason": reason, "outcome": record["outcome_status"], "sends": rows},
        )
        self.audit.set_final(ref.id, state, reason)
        log.info("study_finished", study_uid=ref.study_uid, round=ref.round, state=state, reason=reason[:300])

    # -- sender --------------------------------------------------------------------

    def sender_step(self) -> bool:
        """Send every due batch (one association / request per destination and study)."""
        batches = self.outbox.due_batches()
        for batch in batches:
            if self._stop.is_set():
                break  # the batch in flight finished; the rest waits for the next start
            self._send_batch(batch)
            first = batch[0]
            record = self.audit.get(first.study_id)
            self._finalize_if_settled(StudyRef(first.study_id, record["study_uid"], record["round"]))
        return bool(batches)

    def _send_batch(self, batch: list[OutboxItem]) -> None:
        dest_name = batch[0].destination
        dest = self._destinations.get(dest_name)
        outputs = [item.output for item in batch]
        if dest is None:
            results = [SendResult(False, True, "destination no longer configured")] * len(batch)
        elif isinstance(dest, DicomwebDestination):
            results = send_stow(dest, outputs)
        else:
            results = send_dimse(dest, self.config.node.ae_title, outputs, self.config.node.network_timeout_s)
        for item, result in zip(batch, results):
            if result.ok:
                self.outbox.mark_sent(item, result.answer)
                log.info("sent", dest=dest_name, sop_instance_uid=item.output.sop_instance_uid, answer=result.answer)
            else:
                state = self.outbox.mark_failed_try(item, result.answer, result.permanent)
                log.warning(
                    "send_failed", dest=dest_name, sop_instance_uid=item.output.sop_instance_uid,
                    error=result.answer, attempts=item.attempts + 1, gave_up=state == "failed",
                )


def serve(config: Config, analyse: Analyse | None = None, stop_event: threading.Event | None = None) -> None:
    """Run a node until ``stop_event`` is set or SIGTERM/SIGINT arrives (main thread).

    Raises
    ------
    OSError
        If the listening port cannot be bound or the storage root is unwritable.
    """
    stop_event = stop_event or threading.Event()
    node = Node(config, analyse)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop_event.set())
    node.start()
    try:
        while not stop_event.wait(0.5):
            pass
    finally:
        node.stop()
        node.db.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m l3node.service CONFIG.yaml", file=sys.stderr)
        return 2
    from l3node.cli import main as cli_main

    return cli_main(["serve", args[0]])


if __name__ == "__main__":
    sys.exit(main())
