"""Outbox and senders: real SCPs (pynetdicom), real Orthanc for STOW-RS, a real node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE

from l3node.cli import main
from l3node.config import DicomwebDestination, DimseDestination, SendingConfig
from l3node.node.audit import status_summary
from l3node.node.outbox import OutputFile, backoff_s
from l3node.node.send import send_dimse, send_stow
from l3node.service import Node
from tests.node_helpers import Pacs, free_port, make_config, make_series, secondary_capture_of, small_analysis, store, wait_for


def test_backoff_doubles_to_the_cap():
    sending = SendingConfig(backoff_initial_s=5, backoff_max_s=30, max_attempts=10)
    assert [backoff_s(n, sending) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def _objects(tmp_path: Path) -> list[OutputFile]:
    """An SC derived from a CT slice, plus SEG / Comprehensive SR / 3D SR SOP-class objects."""
    study = generate_uid()
    ct = make_series(study, 1)[0]
    ct_path = tmp_path / "ct.dcm"
    ct.save_as(ct_path, enforce_file_format=True)
    paths = [secondary_capture_of(ct_path, tmp_path)]
    for sop_class in (SegmentationStorage, ComprehensiveSRStorage, Comprehensive3DSRStorage):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, generate_uid(), "SEG" if sop_class == SegmentationStorage else "SR"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return [OutputFile.read(p) for p in paths]


def test_dimse_one_association_for_seg_sr_sc(tmp_path):
    pacs = Pacs(free_port()).start()
    try:
        outputs = _objects(tmp_path)
        dest = DimseDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        results = send_dimse(dest, "L3NODE", outputs)
        assert [r.ok for r in results] == [True] * 4 and results[0].answer == "0x0000"
        assert pacs.associations == 1
        assert dict(pacs.received) == {o.sop_instance_uid: 1 for o in outputs}
    finally:
        pacs.stop()


def test_dimse_refused_sop_class_is_permanent_and_down_is_transient(tmp_path):
    outputs = _objects(tmp_path)
    dest = DimseDestination(name="ct_only", ae_title="CTONLY", host="127.0.0.1", port=free_port())
    down = send_dimse(dest, "L3NODE", outputs, timeout_s=2)
    assert all(not r.ok and not r.permanent for r in down)
    ae = AE(ae_title="CTONLY")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", dest.port), block=False)
    try:
        refused = send_dimse(dest, "L3NODE", outputs, timeout_s=5)
    finally:
        server.shutdown()
    assert all(not r.ok for r in refused)
    assert all(r.permanent for r in refused), [r.answer for r in refused]


def _node(tmp_path, dest_port: int, **sending) -> Node:
    config = make_config(
        tmp_path / "var",
        free_port(),
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": dest_port}],
        sending={"max_attempts": 50, "backoff_initial_s": 0.1, "backoff_max_s": 0.4, **sending},
        node={"network_timeout_s": 2},
    )
    node = Node(config, analyse=small_analysis, poll_s=0.05)
    node.start()
    return node


def test_results_wait_while_destination_down_and_go_when_it_returns(tmp_path):
    pacs_port = free_port()
    node = _node(tmp_path, pacs_port)
    pacs = None
    try:
        study = generate_uid()
        assert store(node.receiver.port, make_series(study, 3)) == [0, 0, 0]
        assert wait_for(lambda: min((r["attempts"] for r in node.db.query("SELECT attempts FROM outbox")), default=0) >= 3)
        rows = node.db.query("SELECT * FROM outbox")
        assert len(rows) == 2 and {r["state"] for r in rows} == {"pending"}
        assert all("association" in r["last_error"] for r in rows)
        assert node.audit.studies(study)[0]["state"] == "analysed"
        pacs = Pacs(pacs_port).start()
        assert node.wait_idle(20)
        (record,) = node.audit.studies(study)
        assert record["state"] == "done" and record["reason"] == "delivered"
        expected = {o["sop_instance_uid"] for o in record["outputs"]}
        assert dict(pacs.received) == {uid: 1 for uid in expected}
        reason = json.loads((node.spool.final_dir(study, 0, failed=False) / "reason.json").read_text())
        assert reason["state"] == "done" and {s["state"] for s in reason["sends"]} == {"sent"}
        assert node.audit.status_summary()["done"] == 1 and node.audit.status_summary()["pending_sends"] == 0
    finally:
        node.stop()
        if pacs:
            pacs.stop()


def test_max_attempts_ends_in_failed(tmp_path):
    node = _node(tmp_path, free_port(), max_attempts=2, backoff_initial_s=0.05)
    try:
        study = generate_uid()
        store(node.receiver.port, make_series(study, 2))
        assert node.wait_idle(30)
        (record,) = node.audit.studies(study)
        assert record["state"] == "failed" and record["reason"].startswith("send_failed: pacs")
        rows = node.db.query("SELECT state, attempts FROM outbox")
        assert [(r["state"], r["attempts"]) for r in rows] == [("failed", 2)] * 2
        assert (node.spool.final_dir(study, 0, failed=True) / "reason.json").is_file()
        summary = node.audit.status_summary()
        assert summary["failed"] == 1 and summary["failed_sends"] == 2 and summary["pending_sends"] == 0
        assert status_summary(node.config.storage.root) == summary  # as `l3node status` reads it
    finally:
        node.stop()


def test_resend_delivers_what_failed_for_good_once_the_pacs_is_back(tmp_path, capsys):
    """The PACS was down longer than the retries last: the round ends failed. After it is
    back, `l3node resend` (another process, beside the running node) requeues the sends;
    the node delivers them and the round ends done, its spool moved from failed/ to done/."""
    pacs_port = free_port()
    node = _node(tmp_path, pacs_port, max_attempts=2, backoff_initial_s=0.05)
    pacs = None
    try:
        study, other = generate_uid(), generate_uid()
        store(node.receiver.port, make_series(study, 2))
        store(node.receiver.port, make_series(other, 2))
        assert node.wait_idle(30)
        assert {r["state"] for r in node.audit.studies()} == {"failed"}
        config = tmp_path / "node.yaml"
        config.write_text(yaml.safe_dump(json.loads(node.config.model_dump_json())))

        assert main(["status", "--config", str(config)]) == 0
        printed = capsys.readouterr().out
        assert "latest failed, declined and refused (newest first):" in printed
        lines = [line for line in printed.splitlines() if " failed " in line]
        assert {line.split()[2] for line in lines} == {study, other}
        assert all("from PACS: send_failed: pacs" in line for line in lines), lines
        assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2

        assert main(["resend", "--config", str(config), "--destination", "nowhere"]) == 2
        assert "no destination named 'nowhere' (configured: pacs)" in capsys.readouterr().err

        pacs = Pacs(pacs_port).start()
        assert main(["resend", "--config", str(config), "--study", study]) == 0
        assert f"{study} round 0: 2 send(s) requeued" in capsys.readouterr().out
        assert wait_for(lambda: node.audit.studies(study)[0]["state"] == "done", timeout_s=20)
        (record,) = node.audit.studies(study)
        assert record["reason"] == "delivered"
        assert dict(pacs.received) == {o["sop_instance_uid"]: 1 for o in record["outputs"]}
        assert (node.spool.final_dir(study, 0, failed=False) / "reason.json").is_file()
        assert not node.spool.final_dir(study, 0, failed=True).exists()
        assert node.audit.studies(other)[0]["state"] == "failed"  # not asked for: left alone

        assert main(["resend", "--config", str(config)]) == 0
        assert "2 send(s) of 1 round(s) requeued" in capsys.readouterr().out
        assert wait_for(lambda: node.audit.studies(other)[0]["state"] == "done", timeout_s=20)
        assert main(["resend", "--config", str(config)]) == 0
        assert "0 send(s) of 0 round(s) requeued" in capsys.readouterr().out
    finally:
        node.stop()
        if pacs:
            pacs.stop()


# -- STOW-RS against a real Orthanc with the DICOMweb plugin --------------------------------
ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not ORTHANC or not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc with the DICOMweb plugin is not installed")
    root = tmp_path_factory.mktemp("orthanc")
    http_port = free_port()
    config = {
        "Name": "test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http_port, "DicomPort": free_port(), "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {"l3": "secret"},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TCP_NODELAY": "1"})
    url = f"http://127.0.0.1:{http_port}"
    ok = wait_for(lambda: _answers(url), timeout_s=20, step_s=0.1)
    if not ok:
        proc.terminate()
        pytest.skip("Orthanc did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/system", auth=("l3", "secret"), timeout=1).ok
    except requests.RequestException:
        return False


@pytest.mark.orthanc
def test_stow_rs_to_orthanc(orthanc, tmp_path):
    outputs = _objects(tmp_path)[:1]  # the SC: a complete image object Orthanc indexes
    dest = DicomwebDestination(type="dicomweb", name="web", url=orthanc + "/dicom-web", username="l3", password="secret")
    results = send_stow(dest, outputs)
    assert [r.ok for r in results] == [True], [r.answer for r in results]
    found = requests.post(orthanc + "/tools/find", auth=("l3", "secret"), timeout=5,
                          json={"Level": "Instance", "Query": {"SOPInstanceUID": outputs[0].sop_instance_uid}}).json()
    assert len(found) == 1
    wrong_password = DicomwebDestination(type="dicomweb", name="web", url=orthanc + "/dicom-web", username="l3", password="nope")
    (refused,) = send_stow(wrong_password, outputs)
    assert not refused.ok and refused.permanent and refused.answer.startswith("HTTP 401")
    nobody = DicomwebDestination(type="dicomweb", name="web", url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    (down,) = send_stow(nobody, outputs)
    assert not down.ok and not down.permanent
