"""The README's first command: `l3node demo` sends a synthetic study through a node and back."""

from __future__ import annotations

import json

import pytest

from l3node.analysis.volume import read_nifti, read_label_nifti
from l3node.demo import run_demo


def test_demo_brings_back_seg_sr_and_overlay(tmp_path, capsys):
    assert run_demo(tmp_path, variant="normal", seed=2, matrix=256, timeout_s=120) == 0
    printed = capsys.readouterr().out
    assert "Segmentation Storage" in printed
    assert "Comprehensive SR Storage" in printed
    assert "Secondary Capture Image Storage" in printed
    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    results = json.loads(next((tmp_path / "var").rglob("results.json")).read_text())
    truth = json.loads((tmp_path / "study" / "ground_truth.json").read_text())
    assert results["status"] == "done"
    assert abs(results["l3"]["z_mm"] - truth["l3_inferior_endplate_z_mm"]) < 10
    # The table printed the measured muscle area read back from the returned SR.
    muscle_line = next(line for line in printed.splitlines() if line.strip().startswith("Skeletal muscle "))
    assert float(muscle_line.split()[2]) == results["tissues"]["skeletal_muscle"]["area_cm2"]
    # Its truth column is the phantom's truth on the slice the node measured (the nearest
    # slice to the node's endplate estimate may be the truth L3 slice's neighbour).
    k = results["l3"]["slice_index"]
    tissues = read_label_nifti(tmp_path / "study" / "nifti" / "tissues.nii.gz")
    cm2 = read_nifti(tmp_path / "study" / "nifti" / "ct.nii.gz").pixel_area_mm2 / 100
    assert float(muscle_line.split()[3]) == pytest.approx(float((tissues[k] == 1).sum()) * cm2, abs=0.006)
    assert "truth areas below are of that same slice" in printed
