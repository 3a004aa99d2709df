"""Durable instance storage: atomic renames, fsync, and the spool layout.

Layout under ``storage.root``::

    tmp/                               temp files, same filesystem as the rest
    incoming/<study>/<series>/<sop>.dcm   instances of a study still receiving
    work/<study>/r<round>/<series>/...    a claimed study (analysing / sending)
    results/<study>/r<round>/...          analysis outputs (results.json, DICOM)
    done/<study>/r<round>/                final: done or declined, reason.json
    failed/<study>/r<round>/              final: failed, reason.json

An instance is on disk when :meth:`Spool.store_instance` returns: written to
``tmp/``, fsynced, renamed into place (atomic on POSIX), directory fsynced.
Only then does the C-STORE SCP answer success. UIDs become path components only
after :func:`check_uid` accepted them, so ``../`` or a 10 kB "UID" never reaches
the filesystem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

# PS3.5 9.1: components of digits separated by '.', no leading zero in a
# multi-digit component, at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUID(ValueError):
    """A UID that must not be used (and never becomes a path)."""


def check_uid(value: object, what: str) -> str:
    """Return ``value`` as a valid DICOM UID string.

    Raises
    ------
    InvalidUID
        If the value is missing, longer than 64 characters (PS3.5 9.1) or holds
        anything but digits and dots (e.g. ``/`` or ``..``); the message never
        quotes more than 80 characters of the bad value.
    """
    text = "" if value is None else str(value).rstrip("\x00 ")
    if not text:
        raise InvalidUID(f"{what} missing")
    if len(text) > 64:
        raise InvalidUID(f"{what} too long ({len(text)} > 64 characters)")
    if not _UID_RE.match(text):
        raise InvalidUID(f"{what} is not a valid UID: {text[:80]!r}")
    return text


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or a new entry in it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(paths: list[Path]) -> None:
    """fsync files written by someone else (the pipeline) and their folders.

    Raises
    ------
    OSError
        If a file is missing or the disk fails.
    """
    folders = set()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.add(Path(path).parent)
    for folder in folders:
        fsync_dir(folder)


def write_atomic(target: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``target`` durably and atomically (temp + fsync + rename).

    Raises
    ------
    OSError
        If the disk is full or unwritable; nothing is left at ``target`` then.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)


class Spool:
    """The spool directories of one node.

    ``lock`` serialises "store an instance" against "claim a study" (moving its
    incoming folder away), so an instance never lands in a folder being moved.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.RLock()
        for name in ("tmp", "incoming", "work", "results", "done", "failed"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        # Leftover temp files are instances never acknowledged (no success was
        # answered), so the sending PACS still owns them and will retry.
        for leftover in (self.root / "tmp").glob("*.part"):
            leftover.unlink(missing_ok=True)

    # -- paths -------------------------------------------------------------------------
    def incoming_dir(self, study_uid: str) -> Path:
        return self.root / "incoming" / study_uid

    def work_dir(self, study_uid: str, round_: int) -> Path:
        return _round_dir(self.root, "work", study_uid, round_)

    def results_dir(self, study_uid: str, round_: int) -> Path:
        return self.root / "results" / study_uid / f"r{round_}"

    def final_dir(self, study_uid: str, round_: int, failed: bool) -> Path:
        return _round_dir(self.root, "failed" if failed else "done", study_uid, round_)

    # -- operations --------------------------------------------------------------------
    def store_instance(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably store one instance in ``incoming/``; same SOP instance UID overwrites.

        The UIDs must have passed :func:`check_uid`. Callers hold :attr:`lock`
        when they must also record the arrival atomically with respect to claims.

        Raises
        ------
        OSError
            Disk full or unwritable.
        """
        target = self.incoming_dir(study_uid) / series_uid / f"{sop_uid}.dcm"
        write_atomic(target, data, self.root / "tmp")
        return target

    def claimed_rounds(self, study_uid: str) -> list[Path]:
        """The study's round folders in ``work/``, ``done/`` and ``failed/`` (not yet purged)."""
        return [r for area in ("work", "done", "failed") if (self.root / area / study_uid).is_dir()
                for r in (self.root / area / study_uid).iterdir()]

    def claimed_copy(self, study_uid: str, series_uid: str, sop_uid: str) -> Path | None:
        """The newest copy of this instance in a round already claimed for analysis
        (in ``work/``, ``done/`` or ``failed/``; purged rounds are forgotten), or None."""
        found = [c for r in self.claimed_rounds(study_uid) if (c := r / series_uid / f"{sop_uid}.dcm").exists()]
        return max(found, key=lambda c: _round_number(c.parent.parent)) if found else None

    def incoming_studies(self) -> list[str]:
        """Study UIDs that have a folder in ``incoming/`` holding at least one instance."""
        return sorted(p.name for p in (self.root / "incoming").iterdir() if p.is_dir() and any(p.glob("*/*.dcm")))

    def claim(self, study_uid: str, round_: int) -> Path:
        """Move ``incoming/<study>`` to ``work/<study>/r<round>`` (atomic rename), then
        complete its series from earlier rounds (:meth:`complete_series`).

        Idempotent: if the move already happened (a crash after it), the work
        folder is completed and returned.

        Raises
        ------
        FileNotFoundError
            If neither the incoming nor the work folder exists.
        """
        source = self.incoming_dir(study_uid)
        target = self.work_dir(study_uid, round_)
        with self.lock:
            if source.is_dir():
                if target.exists():
                    # A partial earlier claim: merge by moving the newer files over.
                    for item in source.glob("*/*.dcm"):
                        (target / item.parent.name).mkdir(parents=True, exist_ok=True)
                        os.replace(item, target / item.parent.name / item.name)
                    shutil.rmtree(source)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
                fsync_dir(target.parent)
                fsync_dir(source.parent)
            elif not target.is_dir():
                raise FileNotFoundError(f"no instances for study {study_uid} round {round_}")
            self.complete_series(study_uid, round_)
        return target

    def complete_series(self, study_uid: str, round_: int) -> int:
        """Add to a claimed round the instances that earlier rounds hold of its series.

        The series is what is analysed: when more of a series arrives after its round was
        claimed (a slice whose C-STORE failed and was retried, the rest of an interrupted
        transfer, a PACS resending the series: its known instances are dropped on receipt),
        the new round must hold the whole series, not only its late part, or it is
        declined as incomplete again. Series new in this round are left as they are (a late
        series is analysed on its own). Hard links, a copy where the file system has none;
        idempotent. Returns the number of instances added.
        """
        target = self.work_dir(study_uid, round_)
        earlier = [r for r in self.claimed_rounds(study_uid) if _round_number(r) < round_]
        added = 0
        for series in (p for p in target.iterdir() if p.is_dir()):
            before = added
            for round_dir in earlier:
                for instance in (round_dir / series.name).glob("*.dcm"):
                    copy = series / instance.name
                    if copy.exists():
                        continue
                    try:
                        os.link(instance, copy)
                    except OSError:  # no hard links here: copy whole, then rename into place
                        partial = self.root / "tmp" / f"{instance.name}.part"
                        shutil.copy2(instance, partial)
                        os.replace(partial, copy)
                    added += 1
            if added > before:
                fsync_dir(series)
        return added

    def finish(self, study_uid: str, round_: int, failed: bool, reason: dict) -> Path:
        """Move the work folder to ``done/`` or ``failed/`` and write ``reason.json`` there.

        Idempotent, so that recovery can repeat it after a crash.

        Raises
        ------
        OSError
            If the disk is unwritable.
        """
        final = self.final_dir(study_uid, round_, failed)
        work = self.work_dir(study_uid, round_)
        final.parent.mkdir(parents=True, exist_ok=True)
        if work.is_dir() and not final.exists():
            os.replace(work, final)
            fsync_dir(final.parent)
        final.mkdir(parents=True, exist_ok=True)
        write_atomic(final / "reason.json", json.dumps(reason, indent=2, sort_keys=True).encode(), self.root / "tmp")
        study_work = work.parent
        if study_work.is_dir() and not any(study_work.iterdir()):
            study_work.rmdir()
        return final


def reopen_round(root: Path, study_uid: str, round_: int, area: str) -> bool:
    """Move a round from ``failed/`` or ``done/`` back to ``work/``, where its sends are
    retried or its analysis redone; idempotent. Returns whether the round is in ``work/``
    (False: its instances are no longer kept, e.g. purged after ``keep_done_studies_days``).

    A function of the storage root, not of :class:`Spool`: it runs from ``l3node resend``
    and ``l3node reanalyse`` beside a running node, and opening a :class:`Spool` clears ``tmp/``, where that node
    may be writing an instance.

    Raises
    ------
    OSError
        If the disk is unwritable.
    """
    if area not in ("failed", "done"):
        raise ValueError(f"rounds are reopened from failed/ or done/, not {area}/")
    final, work = _round_dir(root, area, study_uid, round_), _round_dir(root, "work", study_uid, round_)
    if final.is_dir() and not work.exists():
        work.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, work)
        fsync_dir(work.parent)
        if not any(final.parent.iterdir()):
            final.parent.rmdir()
    return work.is_dir()


def _round_number(round_dir: Path) -> int:
    """``r3`` -> 3; anything else sorts after every round."""
    name = round_dir.name
    return int(name[1:]) if name.startswith("r") and name[1:].isdigit() else 1 << 30


def _round_dir(root: Path, area: str, study_uid: str, round_: int) -> Path:
    return Path(root) / area / study_uid / f"r{round_}"
