"""Series selection rules: each rejection with its reason, and the ranking."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    SegmentationStorage,
)

from l3node.config import SelectionConfig
from l3node.node.select_series import select_series
from tests.node_helpers import make_series

STUDY = "1.2.826.0.1.3680043.10.511.7"
RULES = SelectionConfig(min_instances=3)


def _series(n: int = 4, **attrs):
    series = make_series(STUDY, n, size=8, **attrs)
    return str(series[0].SeriesInstanceUID), series


def _code(reason: str) -> str:
    return reason.split(":", 1)[0]


def test_single_good_series_selected():
    uid, series = _series()
    result = select_series({uid: series}, RULES)
    assert result.selected == (uid,) and result.rejected == {}
    assert "kernel 'Br38f' matches preference 1" in result.why_selected[uid]


@pytest.mark.parametrize(
    "attrs, code",
    [
        ({"SOPClassUID": ComprehensiveSRStorage, "Modality": "SR"}, "non_image_object"),
        ({"SOPClassUID": SegmentationStorage, "Modality": "SEG"}, "non_image_object"),
        ({"Modality": "MR"}, "modality"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "localizer"),
        ({"ImageType": ["DERIVED", "SECONDARY", "AXIAL", "MPR"]}, "image_type_excluded"),
        ({"ImageType": ["ORIGINAL", "PRIMARY"]}, "image_type_missing"),
        ({"SliceThickness": 10.0}, "slice_thickness"),
        ({"SeriesDescription": "Lung 1.0 Br60"}, "description_excluded"),
    ],
)
def test_each_rule_rejects_with_reason(attrs, code):
    good_uid, good = _series()
    bad_uid, bad = _series(**attrs)
    result = select_series({good_uid: good, bad_uid: bad}, RULES)
    assert result.selected == (good_uid,)
    assert _code(result.rejected[bad_uid]) == code, result.rejected[bad_uid]


@pytest.mark.parametrize("sop_class", [EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage])
def test_multi_frame_ct_is_eligible_and_not_mixed_with_single_frame(sop_class):
    uid, series = _series(SOPClassUID=sop_class)
    assert select_series({uid: series}, RULES).selected == (uid,)
    uid, series = _series()
    series[0].SOPClassUID = sop_class
    result = select_series({uid: series}, RULES)
    assert result.selected == () and _code(result.rejected[uid]) == "mixed_sop_classes", result.rejected[uid]


def test_enhanced_ct_volume_flavor_counts_as_axial_and_its_mip_is_excluded():
    """Enhanced CT's Image Type has no AXIAL flavour (PS3.3 C.8.16.1.3): an axial volume is
    ORIGINAL\\PRIMARY\\VOLUME\\NONE. Single-frame CT still needs AXIAL; a sagittal volume is
    still not axial; an Enhanced CT MIP (Derived Pixel Contrast MAXIMUM) is excluded."""
    volume = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    uid, series = _series(SOPClassUID=EnhancedCTImageStorage, ImageType=volume)
    assert select_series({uid: series}, RULES).selected == (uid,)
    uid, series = _series(ImageType=volume)
    assert _code(select_series({uid: series}, RULES).rejected[uid]) == "image_type_missing"
    uid, series = _series(SOPClassUID=EnhancedCTImageStorage, ImageType=volume,
                          ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    assert _code(select_series({uid: series}, RULES).rejected[uid]) == "not_axial"
    uid, series = _series(SOPClassUID=EnhancedCTImageStorage, ImageType=["DERIVED", "SECONDARY", "VOLUME", "MAXIMUM"])
    assert _code(select_series({uid: series}, RULES).rejected[uid]) == "image_type_excluded"


def test_too_few_instances():
    uid, series = _series(n=2)
    result = select_series({uid: series}, RULES)
    assert result.selected == () and _code(result.rejected[uid]) == "too_few_instances"
    assert "2 < 3" in result.rejected[uid]


def test_not_axial_and_mixed_orientation():
    rules = SelectionConfig(min_instances=3, image_type_required=())
    sag_uid, sagittal = _series(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    mixed_uid, mixed = _series()
    mixed[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice among axial ones
    result = select_series({sag_uid: sagittal, mixed_uid: mixed}, rules)
    assert result.selected == ()
    assert _code(result.rejected[sag_uid]) == "not_axial"
    assert _code(result.rejected[mixed_uid]) == "mixed_orientation"


def test_tilted_gantry_still_counts_as_axial():
    c, s = 0.9659258, 0.2588190  # 15 degrees
    uid, series = _series(ImageOrientationPatient=[1, 0, 0, 0, c, s])
    assert select_series({uid: series}, RULES).selected == (uid,)


def test_description_include_rule():
    rules = SelectionConfig(min_instances=3, description_include=r"(?i)abdomen")
    yes_uid, yes = _series()
    no_uid, no = _series(SeriesDescription="Pelvis 3.0")
    result = select_series({yes_uid: yes, no_uid: no}, rules)
    assert result.selected == (yes_uid,) and _code(result.rejected[no_uid]) == "description_not_included"


def test_ranking_kernel_then_thickness_then_instances():
    sharp_uid, sharp = _series(ConvolutionKernel="Br64f")  # matches no preferred kernel
    soft5_uid, soft5 = _series(SliceThickness=5.0)
    soft3_uid, soft3 = _series(SliceThickness=3.0)
    soft3_more_uid, soft3_more = _series(n=6, SliceThickness=3.0)
    series = {sharp_uid: sharp, soft5_uid: soft5, soft3_uid: soft3, soft3_more_uid: soft3_more}
    result = select_series(series, RULES)
    assert result.ranked == (soft3_more_uid, soft3_uid, soft5_uid, sharp_uid)
    assert result.selected == (soft3_more_uid,)
    assert {_code(result.rejected[u]) for u in (soft3_uid, soft5_uid, sharp_uid)} == {"not_best"}
    all_result = select_series(series, SelectionConfig(min_instances=3, analyse="all"))
    assert all_result.selected == result.ranked and all_result.rejected == {}


def test_thickness_from_positions_when_header_lacks_it():
    uid, series = _series()
    for ds in series:
        del ds.SliceThickness
    result = select_series({uid: series}, RULES)
    assert result.selected == (uid,) and "3 mm" in result.why_selected[uid]
    rules = SelectionConfig(min_instances=3, slice_thickness_mm={"min": 0.5, "max": 2.0})
    assert _code(select_series({uid: series}, rules).rejected[uid]) == "slice_thickness"


def test_no_series_at_all():
    result = select_series({}, RULES)
    assert result.selected == () and result.rejected == {}
