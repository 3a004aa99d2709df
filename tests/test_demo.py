"""The README's first command: `l3node demo` sends a synthetic study through a node and back."""

from __future__ import annotations

import json

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
