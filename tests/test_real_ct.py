"""The whole pipeline on real anatomy (../shared/data, exported to DICOM)."""

from __future__ import annotations

import json

import pytest

from l3node.config import Config
from l3node.pipeline import analyse_study
from real_ct import SHARED_DATA, nifti_to_dicom

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "ts_example_ct").is_dir(), reason="../shared/data not present")

L3_ENDPLATE_Z_MM = 299.8  # ../shared/data/README.md


def test_real_abdominal_ct_l3_within_10_mm(tmp_path):
    nifti_to_dicom(SHARED_DATA / "ts_example_ct" / "ct.nii.gz", tmp_path / "study")
    outcome = analyse_study(tmp_path / "study", tmp_path / "out", Config())
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert outcome.status == "done", outcome.reason
    assert abs(results["l3"]["z_mm"] - L3_ENDPLATE_Z_MM) < 10
    # An adult's L3 muscle and subcutaneous fat areas lie in these wide ranges.
    assert 60 < results["tissues"]["skeletal_muscle"]["area_cm2"] < 250
    assert 20 < results["tissues"]["sat"]["area_cm2"] < 600
    assert results["smi_cm2_m2"] == pytest.approx(results["tissues"]["skeletal_muscle"]["area_cm2"] / 1.70**2, rel=1e-2)


def test_real_chest_cta_is_declined_as_not_in_field_of_view(tmp_path):
    nifti_to_dicom(SHARED_DATA / "ts_chest_cta_no_l3" / "ct.nii.gz", tmp_path / "study")
    outcome = analyse_study(tmp_path / "study", tmp_path / "out", Config())
    assert outcome.status == "declined"
    assert outcome.reason.startswith("l3_not_in_field_of_view")
