"""The L3 network checks the anatomy's answer: agreement keeps, disagreement halves confidence."""

from __future__ import annotations

import dataclasses

import pytest

from l3node.analysis.locate_l3 import L3Location, L3Status, Variant
from l3node.analysis.neural import WEIGHTS_DIR
from l3node.analysis.second_opinion import weigh_second_opinion
from l3node.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom("normal", 31337, matrix=256, slice_thickness_mm=4.0, scan_range="abdomen_pelvis")


def _anatomy(z_mm: float) -> L3Location:
    return L3Location(status=L3Status.FOUND, z_mm=z_mm, slice_index=0, confidence=0.9, variant=Variant.NORMAL,
                      method="counted")


@pytest.mark.skipif(not (WEIGHTS_DIR / "l3_mip" / "manifest.json").is_file(), reason="shipped L3 weights absent")
def test_agreement_keeps_and_disagreement_halves_confidence(phantom):
    true_z = phantom.ground_truth["l3_inferior_endplate_z_mm"]
    agreed = weigh_second_opinion(_anatomy(true_z), phantom.volume, WEIGHTS_DIR)
    assert agreed.confidence == 0.9
    assert "agrees" in agreed.notes[-1] and agreed.z_mm == true_z

    one_vertebra_off = weigh_second_opinion(_anatomy(true_z + 35.0), phantom.volume, WEIGHTS_DIR)
    assert one_vertebra_off.confidence == pytest.approx(0.45)
    assert "disagrees" in one_vertebra_off.notes[-1]
    assert one_vertebra_off.z_mm == true_z + 35.0  # the network never replaces the anatomy's answer


def test_missing_weights_leave_the_answer_with_a_note(phantom, tmp_path):
    l3 = weigh_second_opinion(_anatomy(0.0), phantom.volume, tmp_path)
    assert l3.confidence == 0.9 and "not available" in l3.notes[-1]


def test_no_slice_means_nothing_to_check(phantom):
    none = dataclasses.replace(_anatomy(0.0), status=L3Status.NOT_IN_FIELD_OF_VIEW, z_mm=None, slice_index=None)
    assert weigh_second_opinion(none, phantom.volume, WEIGHTS_DIR) is none
