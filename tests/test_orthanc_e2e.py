"""End to end with a real Orthanc: a CT study stored in the PACS is auto-routed to the node
(deploy/orthanc Lua script), and the SEG, SR and overlay land back in the same study."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from l3node.config import parse_config
from l3node.demo import SC_SOP_CLASSES, SEG_SOP_CLASS, SR_SOP_CLASSES, free_port, sr_numbers
from l3node.phantom import main_phantom
from l3node.service import Node
from tests.orthanc_fixture import ORTHANC, Orthanc

pytestmark = [pytest.mark.orthanc, pytest.mark.skipif(ORTHANC is None, reason="Orthanc not installed (apt-get install orthanc)")]


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    return main_phantom("normal", 7, out, matrix=256, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")


def _node_config(root: Path, port: int, orthanc: Orthanc, destination: dict):
    return parse_config({
        "node": {"ae_title": "L3NODE", "bind_address": "127.0.0.1", "port": port, "allowed_calling_aes": ["ORTHANC"]},
        "storage": {"root": str(root)},
        "assembly": {"quiet_period_s": 1.0, "max_wait_s": 60},
        "destinations": [destination],
        "sending": {"max_attempts": 5, "backoff_initial_s": 0.5, "backoff_max_s": 2},
        "logging": {"format": "console", "level": "WARNING"},
    })


def _wait_for_results(orthanc: Orthanc, study_uid: str, timeout_s: float = 180) -> dict[str, list]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        series = orthanc.series_in_study(study_uid)
        by_modality = {s["MainDicomTags"].get("Modality"): s for s in series}
        if {"SEG", "SR"} <= by_modality.keys() and len(series) >= 4:
            found: dict[str, list] = {}
            for s in series:
                for ds in orthanc.instances(s["ID"]):
                    found.setdefault(str(ds.SOPClassUID), []).append(ds)
            if found.keys() & SC_SOP_CLASSES:
                return found
        time.sleep(0.5)
    pytest.fail(f"results did not reach Orthanc within {timeout_s} s; series: {orthanc.series_in_study(study_uid)}")


def _as_enhanced_ct(files: list[Path], out: Path) -> list[Path]:
    """The series as one Legacy Converted Enhanced CT instance (highdicom), as a PACS may store it."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    slices = [pydicom.dcmread(p) for p in files]
    hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(),
        instance_number=1).save_as(out)
    return [out]


@pytest.mark.parametrize("destination_type, enhanced", [("dimse", False), ("dicomweb", False), ("dimse", True)])
def test_ct_routed_by_orthanc_comes_back_as_seg_sr_overlay(tmp_path, phantom_study, destination_type, enhanced):
    node_port = free_port()
    (tmp_path / "orthanc").mkdir()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port).start()
    if destination_type == "dimse":
        destination = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
    else:
        destination = {"type": "dicomweb", "name": "pacs-web", "url": f"{orthanc.url}/dicom-web"}
    node = Node(_node_config(tmp_path / "var", node_port, orthanc, destination))
    node.start()
    try:
        files = sorted(phantom_study.rglob("*.dcm"))
        if enhanced:
            files = _as_enhanced_ct(files, tmp_path / "enhanced.dcm")
        truth = json.loads((phantom_study / "ground_truth.json").read_text())
        orthanc.upload(files)
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        found = _wait_for_results(orthanc, study_uid)
    finally:
        node.stop()
        orthanc.stop()

    seg = found[SEG_SOP_CLASS][0]
    sr = next(ds for uid, items in found.items() if uid in SR_SOP_CLASSES for ds in items)
    sc = next(ds for uid, items in found.items() if uid in SC_SOP_CLASSES for ds in items)
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    for result in (seg, sr, sc):
        assert result.StudyInstanceUID == study_uid
        assert result.PatientID == source.PatientID
    assert len(seg.SegmentSequence) == 4
    # The SEG frame lies on a source slice near the true L3 inferior endplate.
    seg_z = float(seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[2])
    assert abs(seg_z - truth["l3_inferior_endplate_z_mm"]) < 10
    if enhanced:  # the SEG names the multi-frame instance and its frame at that position
        ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        frame = source.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert float(frame.PlanePositionSequence[0].ImagePositionPatient[2]) == pytest.approx(seg_z)

    numbers = sr_numbers(sr)
    areas = {group: next(v for k, v in values.items() if k.lower().startswith("area"))
             for group, values in numbers.items() if any(k.lower().startswith("area") for k in values)}
    muscle = next(v for g, v in areas.items() if "skeletal muscle" in g.lower())
    sat = next(v for g, v in areas.items() if "subcutaneous" in g.lower())
    assert muscle == pytest.approx(truth["areas_cm2"]["skeletal_muscle"], rel=0.10)
    assert sat == pytest.approx(truth["areas_cm2"]["sat"], rel=0.10)
    assert np.asarray(sc.pixel_array).ndim >= 3  # RGB overlay
