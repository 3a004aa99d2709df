"""The node as a whole: faults, kill -9 at each stage, restart, exactly-once results.

The node runs as a real subprocess (tests/node_proc.py) with a real SCP; a real
pynetdicom SCP plays the PACS that receives the results. The analysis is the
small stand-in from node_helpers (the real pipeline is tested elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from l3node.service import Node
from tests.node_helpers import Pacs, free_port, make_config, make_series, small_analysis, store, wait_for

REPO = Path(__file__).resolve().parents[1]


class NodeProcess:
    """A node in a subprocess, killable with SIGKILL and restartable on the same storage."""

    def __init__(self, tmp_path: Path, pacs_port: int, quiet_s: float = 0.5):
        self.tmp = tmp_path
        self.port = free_port()
        config = make_config(
            tmp_path / "var",
            self.port,
            assembly={"quiet_period_s": quiet_s, "max_wait_s": 60},
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
            sending={"max_attempts": 100, "backoff_initial_s": 0.1, "backoff_max_s": 0.5},
        )
        self.config_path = tmp_path / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        self.markers = tmp_path / "markers"
        self.markers.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, analyse_s: float = 0.0) -> "NodeProcess":
        env = {**os.environ, "L3NODE_TEST_MARKERS": str(self.markers), "L3NODE_TEST_ANALYSE_S": str(analyse_s)}
        self.starts += 1
        log = open(self.tmp / f"node{self.starts}.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "node_proc.py"), str(self.config_path)],
                                     cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert wait_for(self._echo, timeout_s=30, step_s=0.1), (self.tmp / f"node{self.starts}.log").read_text()
        return self

    def _echo(self) -> bool:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 1
        assoc = ae.associate("127.0.0.1", self.port, ae_title="L3NODE")
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=30)
        return self.proc.returncode if self.proc else 0

    def db(self) -> list[dict]:
        conn = sqlite3.connect(self.tmp / "var" / "audit.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM studies ORDER BY id")]
        finally:
            conn.close()

    def idle(self) -> bool:
        rows = self.db()
        return bool(rows) and all(r["state"] in ("done", "declined", "failed") for r in rows)

    def finished(self) -> list[list[str]]:
        path = self.markers / "finished"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def started(self) -> list[str]:
        path = self.markers / "started"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def pacs():
    receiver = Pacs(free_port()).start()
    yield receiver
    receiver.stop()


def _assert_exactly_once(node: NodeProcess, pacs: Pacs, studies: set[str], analyses: int = 1) -> None:
    """Each study (round) analysed to completion once; PACS holds exactly those analyses' outputs."""
    rows = node.db()
    assert {r["study_uid"] for r in rows} == studies and len(rows) == len(studies) * analyses
    assert all(r["state"] == "done" for r in rows), [(r["state"], r["reason"]) for r in rows]
    finished = node.finished()
    assert sorted(line[0] for line in finished) == sorted(list(studies) * analyses)  # one completed analysis per round
    expected = {uid for line in finished for uid in line[1:]}
    recorded = {o["sop_instance_uid"] for r in rows for o in json.loads(r["outputs"])}
    assert recorded == expected
    assert set(pacs.received) == expected  # nothing from an interrupted analysis, nothing missing


@pytest.mark.slow
def test_kill9_while_receiving(tmp_path, pacs):
    node = NodeProcess(tmp_path, pacs.port, quiet_s=2.0).start()
    try:
        complete = generate_uid()
        assert store(node.port, make_series(complete, 4)) == [0] * 4
        partial = generate_uid()
        series = make_series(partial, 40)
        statuses: list = []
        sender = threading.Thread(target=_store_tolerant, args=(node.port, series, statuses))
        sender.start()
        incoming = tmp_path / "var" / "incoming" / partial
        assert wait_for(lambda: len(list(incoming.glob("*/*.dcm"))) >= 10, timeout_s=20, step_s=0.01)
        node.kill9()
        sender.join(timeout=30)
        acknowledged = [ds for ds, st in zip(series, statuses) if st == 0]
        assert 1 <= len(acknowledged) < 40
        # Durability: every instance answered with success is on disk after the kill
        # (one more may be there whose answer the kill cut off: the PACS resends it).
        on_disk = {p.stem for p in incoming.glob("*/*.dcm")}
        assert {str(ds.SOPInstanceUID) for ds in acknowledged} <= on_disk
        assert len(on_disk) <= len(acknowledged) + 1
        print(f"kill -9 while receiving: {len(acknowledged)} of 40 acknowledged before the kill")
        node.start()
        # The PACS resends what was not acknowledged; acknowledged instances survived the kill.
        unacknowledged = [ds for ds in series if ds not in acknowledged]
        assert store(node.port, unacknowledged) == [0] * len(unacknowledged)
        assert wait_for(node.idle, timeout_s=40)
        by_study = {r["study_uid"]: r for r in node.db()}
        assert len(node.db()) == 2  # one round per study: the resent instances joined the first 10
        assert by_study[partial]["instances"] == 40 and by_study[complete]["instances"] == 4
        _assert_exactly_once(node, pacs, {complete, partial})
    finally:
        node.stop()


def _store_tolerant(port: int, datasets, statuses: list) -> None:
    """store() that appends each status (None once the association died)."""
    ae = AE(ae_title="PACS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="L3NODE")
    for ds in datasets:
        if not assoc.is_established:
            statuses.append(None)
            continue
        try:
            status = assoc.send_c_store(ds)
        except Exception:  # noqa: BLE001 - the peer vanished mid-send
            status = None
        statuses.append(int(status.Status) if status and "Status" in status else None)
    if assoc.is_established:
        assoc.release()


@pytest.mark.slow
def test_kill9_while_analysing(tmp_path, pacs):
    node = NodeProcess(tmp_path, pacs.port, quiet_s=0.3).start(analyse_s=30)
    try:
        study = generate_uid()
        assert store(node.port, make_series(study, 3)) == [0] * 3
        assert wait_for(lambda: node.started() == [study], timeout_s=20)
        # Late instances of the same study arrive during the analysis: they open round 1.
        assert store(node.port, make_series(study, 2)) == [0, 0]
        node.kill9()
        assert [r["state"] for r in node.db()] == ["analysing", "receiving"] and pacs.received == {}
        node.start(analyse_s=0)
        assert wait_for(node.idle, timeout_s=30)
        assert node.started() == [study, study, study]  # round 0 interrupted and redone, round 1
        rounds = node.db()
        assert [(r["round"], r["instances"], r["analysis_attempts"]) for r in rounds] == [(0, 3, 2), (1, 2, 1)]
        _assert_exactly_once(node, pacs, {study}, analyses=2)
        assert all(count == 1 for count in pacs.received.values())
    finally:
        node.stop()


@pytest.mark.slow
def test_kill9_while_sending(tmp_path):
    slow_pacs = Pacs(free_port(), delay_s=1.0).start()
    node = NodeProcess(tmp_path, slow_pacs.port, quiet_s=0.3).start()
    try:
        study = generate_uid()
        assert store(node.port, make_series(study, 3)) == [0] * 3
        # Kill while the PACS holds its answer to the first C-STORE.
        assert wait_for(lambda: slow_pacs.stores_begun >= 1, timeout_s=20, step_s=0.01)
        node.kill9()
        assert node.db()[0]["state"] == "analysed"
        slow_pacs.delay_s = 0.0
        node.start()
        assert wait_for(node.idle, timeout_s=30)
        assert wait_for(lambda: slow_pacs.stores_done == slow_pacs.stores_begun)  # the held answer too
        _assert_exactly_once(node, slow_pacs, {study})
        # DIMSE cannot be exactly-once on the wire: an object whose answer the kill cut
        # off is resent with the SAME SOP instance UID (the PACS overwrites it).
        print(f"kill -9 while sending: PACS got {sum(slow_pacs.received.values())} C-STOREs for {len(slow_pacs.received)} UIDs")
        assert sum(slow_pacs.received.values()) <= len(slow_pacs.received) + 1
    finally:
        node.stop()
        slow_pacs.stop()


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_pending_work_resumes(tmp_path, pacs):
    node = NodeProcess(tmp_path, free_port(), quiet_s=0.3).start()  # destination down
    study = generate_uid()
    assert store(node.port, make_series(study, 2)) == [0, 0]
    assert wait_for(lambda: bool(node.db()) and node.db()[0]["state"] == "analysed", timeout_s=20)
    assert node.stop() == 0
    node_up = NodeProcess(tmp_path, pacs.port, quiet_s=0.3)  # same storage, destination now reachable
    node_up.start()
    try:
        assert wait_for(node_up.idle, timeout_s=30)
        _assert_exactly_once(node_up, pacs, {study})
    finally:
        node_up.stop()


# -- in-process faults -----------------------------------------------------------------------
def _node(tmp_path, analyse, dest_port: int) -> Node:
    config = make_config(
        tmp_path / "var", free_port(),
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": dest_port}],
    )
    node = Node(config, analyse=analyse, poll_s=0.05)
    node.start()
    return node


def test_analysis_error_fails_study_with_reason_and_node_keeps_serving(tmp_path, pacs):
    bad_study = generate_uid()

    def analyse(study_dir, out_dir, config):
        if study_dir.parent.name == bad_study:
            raise RuntimeError("boom in segmentation")
        return small_analysis(study_dir, out_dir, config)

    node = _node(tmp_path, analyse, pacs.port)
    try:
        store(node.receiver.port, make_series(bad_study, 2))
        good_study = generate_uid()
        store(node.receiver.port, make_series(good_study, 2))
        assert node.wait_idle(20)
        states = {r["study_uid"]: (r["state"], r["reason"]) for r in node.audit.studies()}
        assert states[bad_study] == ("failed", "analysis_error: RuntimeError: boom in segmentation")
        assert states[good_study] == ("done", "delivered")
        reason = json.loads((node.spool.final_dir(bad_study, 0, failed=True) / "reason.json").read_text())
        assert reason["reason"].startswith("analysis_error")
        assert len(list(node.spool.final_dir(bad_study, 0, failed=True).glob("*/*.dcm"))) == 2  # inputs kept
        assert len(pacs.received) == 2
    finally:
        node.stop()


def test_late_instances_open_a_second_round(tmp_path, pacs):
    node = _node(tmp_path, small_analysis, pacs.port)
    try:
        study = generate_uid()
        first = make_series(study, 2)
        store(node.receiver.port, first)
        assert node.wait_idle(20)
        assert store(node.receiver.port, first) == [0, 0]  # resent as-is: acknowledged, dropped
        store(node.receiver.port, make_series(study, 3))  # a late series of the same study
        assert node.wait_idle(20)
        rounds = node.audit.studies(study)
        assert [(r["round"], r["state"], r["instances"]) for r in rounds] == [(0, "done", 2), (1, "done", 3)]
        assert len(pacs.received) == 4
    finally:
        node.stop()


def test_declined_outcome_and_no_destinations(tmp_path):
    from tests.node_helpers import StudyOutcome

    def decline(study_dir, out_dir, config):
        return StudyOutcome(status="declined", reason="no_eligible_series: all series rejected",
                            rejected_series={"1.2.3": "localizer: ImageType contains LOCALIZER"})

    config = make_config(tmp_path / "var", free_port())
    node = Node(config, analyse=decline, poll_s=0.05)
    node.start()
    try:
        study = generate_uid()
        store(node.receiver.port, make_series(study, 2))
        assert node.wait_idle(20)
        (record,) = node.audit.studies(study)
        assert record["state"] == "declined" and record["reason"].startswith("no_eligible_series")
        assert record["rejected_series"] == {"1.2.3": "localizer: ImageType contains LOCALIZER"}
        assert (node.spool.final_dir(study, 0, failed=False) / "reason.json").is_file()
        assert node.audit.status_summary()["declined"] == 1
    finally:
        node.stop()


def test_done_studies_purged_after_retention(tmp_path, pacs):
    node = _node(tmp_path, small_analysis, pacs.port)
    try:
        study = generate_uid()
        store(node.receiver.port, make_series(study, 2))
        assert node.wait_idle(20)
        final = node.spool.final_dir(study, 0, failed=False)
        results = node.spool.results_dir(study, 0)
        assert final.is_dir() and results.is_dir()
        assert node.purge_done() == 0  # within the 7 days kept by default
        assert node.purge_done(now=time.time() + 8 * 86400) == 2
        assert not final.exists() and not results.exists()
        assert node.audit.studies(study)[0]["state"] == "done"  # the record stays
    finally:
        node.stop()


def test_port_in_use_is_one_clear_error(tmp_path, capsys):
    """`l3node serve` on a port another program holds: exit 1 with the address, no traceback."""
    import socket

    from l3node.cli import main

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        path = tmp_path / "node.yaml"
        path.write_text(yaml.safe_dump({"node": {"bind_address": "127.0.0.1", "port": port},
                                        "storage": {"root": str(tmp_path / "var")},
                                        "logging": {"format": "console", "level": "WARNING"}}))
        assert main(["serve", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error: the node could not start:" in err
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err
    assert "Traceback" not in err


def test_reanalyse_after_a_fix_delivers_a_study_whose_analysis_failed(tmp_path, pacs, capsys):
    """An analysis bug fails a study (inputs kept in failed/). After the fix, `l3node
    reanalyse --study` beside the running node analyses it again and delivers."""
    from l3node.cli import main

    broken = {"yes": True}

    def analyse(study_dir, out_dir, config):
        if broken["yes"]:
            raise RuntimeError("boom in segmentation")
        return small_analysis(study_dir, out_dir, config)

    node = _node(tmp_path, analyse, pacs.port)
    try:
        study = generate_uid()
        store(node.receiver.port, make_series(study, 2))
        assert node.wait_idle(20)
        assert node.audit.studies(study)[0]["state"] == "failed"
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump(json.loads(node.config.model_dump_json())))

        broken["yes"] = False
        assert main(["reanalyse", "--config", str(config), "--study", study]) == 0
        printed = capsys.readouterr().out
        assert f"{study} round 0 (was: analysis_error: RuntimeError: boom in segmentation)" in printed
        assert wait_for(lambda: node.audit.studies(study)[0]["state"] == "done", timeout_s=20)
        (record,) = node.audit.studies(study)
        assert record["reason"] == "delivered" and record["analysis_attempts"] == 1
        assert set(pacs.received) == {o["sop_instance_uid"] for o in record["outputs"]}
        assert len(list(node.spool.final_dir(study, 0, failed=False).glob("*/*.dcm"))) == 2  # inputs kept
        assert not node.spool.final_dir(study, 0, failed=True).exists()

        assert main(["reanalyse", "--config", str(config), "--all"]) == 0
        assert "0 round(s) to analyse again" in capsys.readouterr().out
    finally:
        node.stop()


def test_reanalyse_declined_after_a_rule_change(tmp_path, pacs, capsys):
    """A study declined by the rules in force is analysed again with `reanalyse --declined`
    once the rules allow it (here, after an upgrade that reads what was declined), and
    delivered; without --declined it is left alone, and a round whose instances were
    purged is named, not reopened."""
    from l3node.cli import main
    from tests.node_helpers import StudyOutcome

    reads_it = {"yes": False}

    def analyse(study_dir, out_dir, config):
        if not reads_it["yes"]:
            return StudyOutcome(status="declined", reason="no_eligible_series: enhanced_ct: not analysed")
        return small_analysis(study_dir, out_dir, config)

    node = _node(tmp_path, analyse, pacs.port)
    try:
        study, purged = generate_uid(), generate_uid()
        store(node.receiver.port, make_series(study, 2))
        store(node.receiver.port, make_series(purged, 2))
        assert node.wait_idle(20)
        assert [node.audit.studies(s)[0]["state"] for s in (study, purged)] == ["declined", "declined"]
        shutil.rmtree(node.spool.final_dir(purged, 0, failed=False))  # as keep_done_studies_days does
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump(json.loads(node.config.model_dump_json())))
        reads_it["yes"] = True

        assert main(["reanalyse", "--config", str(config), "--all"]) == 0
        assert "0 round(s) to analyse again" in capsys.readouterr().out
        assert main(["reanalyse", "--config", str(config), "--all", "--declined"]) == 0
        printed = capsys.readouterr().out
        assert f"{study} round 0 (was: no_eligible_series: enhanced_ct: not analysed)" in printed
        assert f"{purged} round 0: its instances are no longer kept" in printed
        assert "1 round(s) to analyse again" in printed
        assert wait_for(lambda: node.audit.studies(study)[0]["state"] == "done", timeout_s=20)
        (record,) = node.audit.studies(study)
        assert record["reason"] == "delivered"
        assert {o["sop_instance_uid"] for o in record["outputs"]} <= set(pacs.received)
        assert node.audit.studies(purged)[0]["state"] == "declined"
    finally:
        node.stop()


def _phantom_slices_and_node(tmp_path: Path, pacs) -> tuple[list, Node]:
    """A phantom study's slices (256 matrix, 3 mm) and a started in-process node sending to ``pacs``."""
    import pydicom

    from l3node.phantom import main_phantom

    phantom = main_phantom("normal", 11, tmp_path / "phantom", matrix=256, slice_thickness_mm=3.0,
                           scan_range="abdomen_pelvis")
    slices = [pydicom.dcmread(p) for p in sorted((phantom / "dicom").glob("*.dcm"))]
    # A 139-slice C-STORE on a loaded 2-core machine can stall for more than the helpers'
    # 0.3 s quiet period (CI, 27 Nov: the series was cut at slice 34); these tests are about
    # rounds, not about the quiet period.
    config = make_config(tmp_path / "var", free_port(), assembly={"quiet_period_s": 2.0},
                         destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}])
    node = Node(config, poll_s=0.05)
    node.start()
    return slices, node


def test_a_late_slice_completes_its_series(tmp_path, pacs):
    """A slice whose C-STORE came late (after the quiet period): round 0 is declined as
    incomplete; the slice opens round 1, which holds the whole series again and is measured.
    Without it, round 1 held the one slice and no resend could ever complete the study (the
    PACS's resent instances of round 0 are dropped on receipt)."""
    slices, node = _phantom_slices_and_node(tmp_path, pacs)
    study = str(slices[0].StudyInstanceUID)
    late = slices.pop(len(slices) // 2)
    try:
        assert store(node.receiver.port, slices) == [0] * len(slices)
        assert node.wait_idle(60)
        assert store(node.receiver.port, slices[:3] + [late]) == [0] * 4  # a resend: 3 known, 1 new
        assert node.wait_idle(60)
        rounds = node.audit.studies(study)
        assert [(r["round"], r["state"], r["instances"]) for r in rounds] == [
            (0, "declined", len(slices)), (1, "done", len(slices) + 1)]
        assert rounds[0]["reason"].startswith("no_usable_series") and "missing_slices" in rounds[0]["reason"]
        modalities = sorted(str(ds.Modality) for ds in pacs.datasets.values())
        assert modalities == ["OT", "SEG", "SR", "SR"]  # round 0's declined report; round 1's results
    finally:
        node.stop()


def _undecodable_copy(ds):
    """``ds`` as JPEG 2000 whose header is overwritten: it is received (the encapsulation is
    whole) but its pixels cannot be decoded."""
    import copy

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames

    broken = copy.deepcopy(ds)
    broken.compress(pydicom.uid.JPEG2000Lossless, generate_instance_uid=False)
    codestream = bytearray(next(generate_frames(broken.PixelData, number_of_frames=1)))
    codestream[4:40] = b"\xff" * 36  # the SIZ marker segment (image size, components)
    broken.PixelData = encapsulate([bytes(codestream)])
    return broken


def test_a_repaired_slice_resent_under_its_uid_is_analysed(tmp_path, pacs):
    """A slice whose pixels cannot be decoded: round 0 is declined (unreadable pixels). The
    PACS resends it repaired under the same SOP instance UID: it differs from the analysed
    copy, so it is kept and opens round 1, which holds the whole series and is measured.
    Before, every resend of an analysed instance was dropped, and the repair was lost. An
    unchanged resend, even in another transfer syntax, is still dropped."""
    import copy

    import pydicom

    slices, node = _phantom_slices_and_node(tmp_path, pacs)
    study, series = str(slices[0].StudyInstanceUID), str(slices[0].SeriesInstanceUID)
    middle = len(slices) // 2
    repaired = slices[middle]
    slices[middle] = _undecodable_copy(repaired)
    try:
        assert store(node.receiver.port, slices) == [0] * len(slices)
        assert node.wait_idle(60)
        unchanged = copy.deepcopy(slices[0])
        unchanged.compress(pydicom.uid.JPEG2000Lossless, generate_instance_uid=False)  # the same pixels
        assert store(node.receiver.port, [unchanged, slices[1], repaired]) == [0] * 3
        assert node.wait_idle(60)
        rounds = node.audit.studies(study)
        assert [(r["round"], r["state"]) for r in rounds] == [(0, "declined"), (1, "done")]
        assert "unreadable_pixels" in rounds[0]["reason"]
        analysed = node.config.storage.root / "done" / study / "r1" / series
        assert len(list(analysed.glob("*.dcm"))) == len(slices)
        kept = pydicom.dcmread(analysed / f"{slices[0].SOPInstanceUID}.dcm")
        assert kept.file_meta.TransferSyntaxUID == slices[0].file_meta.TransferSyntaxUID  # the resend was dropped
        assert pydicom.dcmread(analysed / f"{repaired.SOPInstanceUID}.dcm").pixel_array.shape == (256, 256)
    finally:
        node.stop()
