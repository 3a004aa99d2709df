"""Quality flags of the L3 slice: a body cut by the field of view, metal on the slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from l3node.analysis.body import body_mask
from l3node.analysis.slice_quality import BODY_CUT_BY_FOV, METAL_ON_SLICE, check_slice
from l3node.analysis.volume import read_nifti
from l3node.config import Config
from l3node.outputs.validate import dciodvfy_available, run_dciodvfy
from l3node.phantom import main_phantom, make_phantom
from l3node.pipeline import analyse_study

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ts_example_ct" / "ct.nii.gz"
OPTIONS = dict(matrix=256, slice_thickness_mm=5.0, scan_range="abdomen_pelvis", arms="up")


def _l3_slice(**options):
    p = make_phantom("normal", 3, **{**OPTIONS, **options})
    return p.volume.hu[p.ground_truth["l3_slice_index"]], p.volume.spacing_mm[1:]


@pytest.fixture(scope="module")
def whole():
    return _l3_slice()


def test_body_inside_the_field_of_view_and_without_metal_is_not_flagged(whole):
    assert check_slice(*whole).flags == ()


def test_body_cut_by_a_small_field_of_view(whole):
    hu, pixel_mm = _l3_slice(pixel_mm=1.0)  # 256 mm field of view, narrower than this patient
    quality = check_slice(hu, pixel_mm)
    assert quality.flags == (BODY_CUT_BY_FOV,)
    assert "subcutaneous fat" in quality.notes[0]


def test_body_cut_by_the_reconstruction_circle(whole):
    hu, pixel_mm = whole
    rows, cols = np.indices(hu.shape)
    r, c = np.nonzero(body_mask(hu, pixel_mm))  # the table is wider than the patient
    centre, half_width = ((r.min() + r.max()) / 2, (c.min() + c.max()) / 2), (c.max() - c.min()) / 2
    outside = np.hypot(rows - centre[0], cols - centre[1]) > 0.9 * half_width  # circle cuts both flanks
    padded = np.where(outside, -3024.0, hu).astype(np.float32)
    assert check_slice(padded, pixel_mm).flags == (BODY_CUT_BY_FOV,)


def test_metal_beside_the_spine_is_flagged_bone_is_not(whole):
    hu, pixel_mm = whole
    assert hu.max() < 2500  # cortical bone stays below the metal threshold
    screw = hu.copy()
    r, c = np.unravel_index(np.argmax(np.where(hu > 300, hu, 0)), hu.shape)  # a bright bone pixel
    screw[r - 2:r + 3, c - 2:c + 3] = 3071.0  # 5 x 5 pixels of 1.7 mm: 71 mm2
    quality = check_slice(screw, pixel_mm)
    assert quality.flags == (METAL_ON_SLICE,)
    assert "71 mm2" in quality.notes[0]


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_CT.is_file(), reason="../shared/data/ts_example_ct is absent")
def test_real_ct_left_flank_cut_at_l3_and_prosthesis_in_the_pelvis():
    volume = read_nifti(SHARED_CT)
    pixel_mm = volume.spacing_mm[1:]
    k_l3 = volume.slice_index_at(299.8 + 1.5)  # lowest slice of the L3 body (shared/data/README.md)
    assert check_slice(volume.hu[k_l3], pixel_mm).flags == (BODY_CUT_BY_FOV,)
    assert check_slice(volume.hu[60], pixel_mm).flags == ()  # L4: the flank is inside the image
    assert METAL_ON_SLICE in check_slice(volume.hu[5], pixel_mm).flags  # hip prosthesis


def test_cut_body_reaches_the_report_and_results(tmp_path):
    study = main_phantom("normal", 3, tmp_path / "study", **OPTIONS, pixel_mm=1.0)
    outcome = analyse_study(study, tmp_path / "out", Config())
    assert outcome.status == "done", outcome.reason
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["quality_flags"] == [BODY_CUT_BY_FOV]
    assert any("cut by the field of view" in note for note in results["notes"])
    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    items = {}

    def walk(sequence):
        for item in sequence:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else None
            if "ConceptCodeSequence" in item:
                items[name] = item.ConceptCodeSequence[0].CodeMeaning
            if item.get("ValueType") == "TEXT":
                items.setdefault("texts", []).append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert items["Needs review"] == "Yes"
    assert "quality flags: body_cut_by_fov" in items["texts"]
    if dciodvfy_available():
        for name in ("sr.dcm", "overlay.dcm"):
            assert run_dciodvfy(tmp_path / "out" / name) == [], name


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="check_slice needs a 2D slice"):
        check_slice(np.zeros((2, 4, 4)), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        check_slice(np.zeros((4, 4)), (1.0, -1.0))
