"""SEG, TID 1500 SR, overlay and declined SR: content read back from bytes, and dciodvfy-clean."""

from __future__ import annotations

import dataclasses
import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as dcm_codes

from l3node.analysis.locate_l3 import L3Status, Variant
from l3node.analysis.measure import PatientFacts
from l3node.analysis.tissues import Tissue
from l3node.config import OutputSeries, OutputsConfig
from l3node.outputs import (
    AlgorithmInfo,
    codes,
    fallback_algorithm_info,
    load_algorithm_info,
    make_declined_sr,
    make_overlay,
    make_seg,
    make_sr,
)
from l3node.outputs.validate import dataset_bytes, dciodvfy_available, dciodvfy_dataset
from l3node.outputs.write_overlay import MIN_WIDTH_PX
from outputs_fixtures import (
    PIXEL_MM,
    REAL_DICOM_DIR,
    hu_plane,
    make_ct_series,
    make_l3,
    make_labels,
    make_measurements,
    repair_anonymised,
)

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
HEIGHT_M = 1.65

needs_dciodvfy = pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy (Debian dicom3tools) not installed")

CONFIG = OutputsConfig(
    seg=OutputSeries(series_number=801, series_description="test SEG"),
    sr=OutputSeries(series_number=802, series_description="test SR"),
    overlay=OutputSeries(series_number=803, series_description="test overlay"),
    manufacturer="Test Manufacturer",
    institution_name="Test Hospital",
)
ALGORITHM = AlgorithmInfo(name="l3-tissue-net", version="2.1", source="unit test", neural_network=True)


def roundtrip(dataset: pydicom.Dataset) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(dataset_bytes(dataset)))


@pytest.fixture(scope="module")
def case():
    series = make_ct_series(n_slices=3)
    source = series[1]
    labels = make_labels()
    hu = hu_plane(source)
    measurements = make_measurements(labels, hu, (PIXEL_MM, PIXEL_MM), HEIGHT_M)
    l3 = make_l3(float(source.ImagePositionPatient[2]), 1)
    seg = make_seg(source, labels, CONFIG, ALGORITHM)
    sr = make_sr(series, source, seg, measurements, l3, PatientFacts("F", HEIGHT_M, 60.0), CONFIG, ALGORITHM)
    overlay = make_overlay(source, hu, labels, measurements, l3, CONFIG)
    declined = make_declined_sr(series, "not_in_field_of_view", "L3 is not in the field of view", CONFIG, ALGORITHM)
    return dict(
        series=series, source=source, labels=labels, hu=hu, measurements=measurements, l3=l3,
        seg=seg, sr=sr, overlay=overlay, declined=declined,
    )


# --- SEG ----------------------------------------------------------------------------------


def test_seg_is_binary_with_four_coded_segments(case):
    seg = hd.seg.segread(io.BytesIO(dataset_bytes(case["seg"])))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage, not label map
    assert seg.SegmentationType == "BINARY"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3, 4]
    for item in seg.SegmentSequence:
        tissue = Tissue(int(item.SegmentNumber))
        coding = codes.SEGMENT_CODINGS[tissue]
        assert item.SegmentLabel == tissue.label
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("85756007", "SCT")
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert kind.CodeValue == coding.property_type.value
        if coding.anatomic_region is None:
            assert "AnatomicRegionSequence" not in item
        else:
            assert item.AnatomicRegionSequence[0].CodeValue == coding.anatomic_region.value
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "l3-tissue-net"
        assert algorithm.AlgorithmVersion == "2.1"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    assert {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence} == {"127954009", "55603005"}
    assert seg.SeriesNumber == 801 and seg.SeriesDescription == "test SEG"
    assert seg.Manufacturer == "Test Manufacturer" and seg.InstitutionName == "Test Hospital"


def test_seg_pixels_decode_back_to_the_labels(case):
    seg = hd.seg.segread(io.BytesIO(dataset_bytes(case["seg"])))
    uid = case["source"].SOPInstanceUID
    per_segment = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2, 3, 4])
    assert per_segment.shape == (1, 128, 128, 4)
    for tissue in Tissue:
        np.testing.assert_array_equal(per_segment[0, :, :, int(tissue) - 1], case["labels"] == tissue)
    combined = seg.get_pixels_by_source_instance([uid], combine_segments=True)
    np.testing.assert_array_equal(combined[0], case["labels"])
    assert [(case["labels"] == t).sum() for t in Tissue] == [200, 60, 450, 550]


def test_seg_geometry_equals_the_source_image(case):
    seg, source = roundtrip(case["seg"]), case["source"]
    assert seg.NumberOfFrames == 4
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.PatientID == source.PatientID
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
        [float(v) for v in source.ImageOrientationPatient],
    )
    np.testing.assert_allclose(
        [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing], [float(v) for v in source.PixelSpacing]
    )
    for frame in seg.PerFrameFunctionalGroupsSequence:
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.ImagePositionPatient],
        )
        derivation = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert (int(seg.Rows), int(seg.Columns)) == (int(source.Rows), int(source.Columns))


def test_seg_keeps_an_empty_tissue_as_an_empty_frame(case):
    labels = case["labels"].copy()
    labels[labels == Tissue.IMAT] = 0
    seg = hd.seg.segread(io.BytesIO(dataset_bytes(make_seg(case["source"], labels, CONFIG, ALGORITHM))))
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3, 4]
    pixels = seg.get_pixels_by_source_instance([case["source"].SOPInstanceUID], segment_numbers=[1, 2, 3, 4])
    assert not pixels[0, :, :, 1].any()
    assert pixels[0, :, :, 0].sum() == 200


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((64, 128), np.uint8), "shape"),
        (np.full((128, 128), 7, np.uint8), "not tissues"),
        (np.zeros((128, 128), np.float32), "integer"),
    ],
)
def test_seg_rejects_bad_labels(case, labels, message):
    with pytest.raises(ValueError, match=message):
        make_seg(case["source"], labels, CONFIG, ALGORITHM)


# --- SR -----------------------------------------------------------------------------------


def _report(sr: pydicom.Dataset) -> hd.sr.MeasurementReport:
    return hd.sr.srread(io.BytesIO(dataset_bytes(sr))).content


def _value(group, name, derivation=None):
    found = [
        m for m in group.get_measurements(name=name)
        if derivation is None or (m.derivation is not None and m.derivation.value == derivation.value)
    ]
    assert len(found) == 1, f"{name} / {derivation}: {len(found)} items"
    return found[0]


def test_sr_reads_back_areas_mean_sd_and_units(case):
    sr = roundtrip(case["sr"])
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.StudyInstanceUID == case["source"].StudyInstanceUID
    assert sr.SeriesNumber == 802 and sr.SeriesDescription == "test SR"
    groups = _report(case["sr"]).get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [t.label for t in Tissue]
    for group in groups:
        tissue = Tissue(int(group.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber))
        expected = case["measurements"].tissues[tissue]
        area = _value(group, dcm_codes.SCT.Area)
        assert area.value == pytest.approx(expected.area_cm2, rel=1e-9)
        assert area.unit.value == "cm2"
        mean = _value(group, codes.ATTENUATION, codes.DERIVATION_MEAN)
        assert mean.value == pytest.approx(expected.mean_hu, abs=1e-6)
        assert mean.unit.value == "[hnsf'U]"
        sd = _value(group, codes.ATTENUATION, codes.DERIVATION_SD)
        assert sd.value == pytest.approx(expected.sd_hu, abs=1e-6)
        assert "36470004" in {site.value.value for site in group.finding_sites}
    # Known pixel counts x 0.64 mm2 = cm2
    areas = {
        g.tracking_identifier: _value(g, dcm_codes.SCT.Area).value for g in groups
    }
    assert areas["Skeletal muscle"] == pytest.approx(200 * 0.0064)
    assert areas["Subcutaneous adipose tissue"] == pytest.approx(550 * 0.0064)


def test_sr_skeletal_muscle_index_and_flag(case):
    groups = _report(case["sr"]).get_volumetric_roi_measurement_groups()
    muscle = groups[0]
    smi = _value(muscle, codes.SKELETAL_MUSCLE_INDEX)
    assert smi.value == pytest.approx(200 * 0.0064 / HEIGHT_M**2)
    assert smi.unit.value == "cm2/m2"
    # The fixture flags low muscle mass: the SMI carries Normality = Abnormally Low (CID 222).
    assert "low_muscle_mass" in case["measurements"].flags
    normality = [
        item.ConceptCodeSequence[0].CodeValue
        for item in smi[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.Normality.value
    ]
    assert normality == [codes.ABNORMALLY_LOW.value]
    for group in groups[1:]:
        assert group.get_measurements(name=codes.SKELETAL_MUSCLE_INDEX) == []
    # No attenuation cut-off was applied in the fixture: the muscle mean HU carries no normality.
    mean = _value(muscle, codes.ATTENUATION, codes.DERIVATION_MEAN)
    assert not any(
        item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.Normality.value
        for item in mean[0].ContentSequence
    )


def test_sr_smi_is_normal_when_the_rule_applied_and_did_not_flag(case):
    measurements = dataclasses.replace(case["measurements"], flags=())
    sr = make_sr(
        case["series"], case["source"], case["seg"], measurements, case["l3"],
        PatientFacts("F", HEIGHT_M), CONFIG, ALGORITHM,
    )
    smi = _value(_report(sr).get_volumetric_roi_measurement_groups()[0], codes.SKELETAL_MUSCLE_INDEX)
    normality = [
        item.ConceptCodeSequence[0].CodeValue
        for item in smi[0].ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.Normality.value
    ]
    assert normality == [codes.NORMAL.value]


def test_sr_references_the_seg_segments_and_the_source_image(case):
    sr, seg, source = roundtrip(case["sr"]), case["seg"], case["source"]
    groups = _report(case["sr"]).get_volumetric_roi_measurement_groups()
    for number, group in enumerate(groups, start=1):
        segment_item, source_item = group.referenced_segment[0], group.referenced_segment[1]
        ref = segment_item.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == seg.SOPClassUID
        assert ref["ReferencedSegmentNumber"].VM == 1 and int(ref.ReferencedSegmentNumber) == number
        assert "ReferencedFrameNumber" not in ref  # one of segment/frame number (dciodvfy)
        src = source_item.ReferencedSOPSequence[0]
        assert src.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "ReferencedFrameNumber" not in src  # CT image is single-frame
        assert group.tracking_uid == seg.SegmentSequence[number - 1].TrackingUID
        for measurement in group.get_measurements():
            image = measurement.referenced_images[0].ReferencedSOPSequence[0]
            assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID, source.SOPInstanceUID}


def test_sr_summary_has_level_variant_review_and_method(case):
    report = _report(case["sr"])
    [summary] = report.get_image_measurement_groups()
    assert summary.finding_sites[0].value.value == "36470004"
    assert _value(summary, codes.L3_CONFIDENCE).value == pytest.approx(0.83)
    evaluations = {e.name.value: e.value.value for e in summary.get_qualitative_evaluations()}
    assert evaluations[codes.ANATOMIC_VARIANT.value] == codes.NORMAL.value
    assert evaluations[codes.NEEDS_REVIEW.value] == codes.NO.value
    texts = {item.ConceptNameCodeSequence[0].CodeValue: [] for item in summary[0].ContentSequence}
    for item in summary[0].ContentSequence:
        if item.ValueType == "TEXT":
            texts[item.ConceptNameCodeSequence[0].CodeValue].append(item.TextValue)
    assert texts[codes.L3_METHOD.value] == ["count_from_sacrum"]
    assert any("rib count and sacrum count agree" in t for t in texts[codes.COMMENT.value])
    sr = roundtrip(case["sr"])
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99L3NODE"


def test_sr_uncertain_variant_needs_review_and_no_smi_without_height(case):
    series, source = case["series"], case["source"]
    measurements = make_measurements(case["labels"], case["hu"], (PIXEL_MM, PIXEL_MM), None)
    l3 = make_l3(float(source.ImagePositionPatient[2]), 1, status=L3Status.UNCERTAIN, variant=Variant.LUMBOSACRAL)
    sr = make_sr(series, source, case["seg"], measurements, l3, PatientFacts("F"), CONFIG, ALGORITHM)
    report = _report(sr)
    muscle = report.get_volumetric_roi_measurement_groups()[0]
    assert muscle.get_measurements(name=codes.SKELETAL_MUSCLE_INDEX) == []
    [summary] = report.get_image_measurement_groups()
    evaluations = {e.name.value: e.value.value for e in summary.get_qualitative_evaluations()}
    assert evaluations[codes.NEEDS_REVIEW.value] == codes.YES.value
    assert evaluations[codes.ANATOMIC_VARIANT.value] == codes.VARIANT_LUMBOSACRAL.value
    comments = [i.TextValue for i in summary[0].ContentSequence if i.ValueType == "TEXT"]
    assert any("height missing" in c for c in comments)
    assert any("uncertain" in c for c in comments)


def test_sr_comprehensive3d_is_selectable(case):
    config = CONFIG.model_copy(update={"sr_sop_class": "comprehensive3d"})
    sr = make_sr(
        case["series"], case["source"], case["seg"], case["measurements"], case["l3"],
        PatientFacts("F", HEIGHT_M), config, ALGORITHM,
    )
    assert roundtrip(sr).SOPClassUID == COMPREHENSIVE_3D_SR
    if dciodvfy_available():
        assert dciodvfy_dataset(sr).errors == ()


def test_sr_refuses_inconsistent_inputs(case):
    other = make_ct_series(n_slices=1, seed=1)[0]
    args = (case["measurements"], case["l3"], PatientFacts(), CONFIG, ALGORITHM)
    with pytest.raises(ValueError, match="different studies"):
        make_sr([*case["series"], other], case["source"], case["seg"], *args)
    with pytest.raises(ValueError, match="not one of the source images"):
        make_sr(case["series"][:1], case["source"], case["seg"], *args)
    not_found = make_l3(0.0, 0, status=L3Status.NOT_IN_FIELD_OF_VIEW)
    with pytest.raises(ValueError, match="declined"):
        make_sr(
            case["series"], case["source"], case["seg"], case["measurements"], not_found,
            PatientFacts(), CONFIG, ALGORITHM,
        )


# --- overlay and declined report ----------------------------------------------------------


def test_overlay_same_patient_and_study_burned_in(case):
    sc, source = roundtrip(case["overlay"]), case["source"]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.PatientID == source.PatientID and sc.PatientName == source.PatientName
    assert sc.SeriesInstanceUID not in {source.SeriesInstanceUID, case["seg"].SeriesInstanceUID}
    assert sc.SeriesNumber == 803 and sc.SeriesDescription == "test overlay"
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    pixels = sc.pixel_array
    scale = MIN_WIDTH_PX // 128
    assert pixels.shape[1] == 128 * scale and pixels.shape[0] > 128 * scale  # text panel below
    # The muscle rectangle (rows 30..49, cols 40..49) is outlined in its colour, not flipped.
    red = codes.SEGMENT_CODINGS[Tissue.SKELETAL_MUSCLE].rgb
    assert tuple(pixels[30 * scale, 45 * scale]) == red
    assert tuple(pixels[30 * scale, (128 - 45) * scale]) != red
    panel = pixels[128 * scale :]
    assert (panel > 0).sum() > 1000  # text was drawn


def test_declined_sr_says_why(case):
    sr = roundtrip(case["declined"])
    assert sr.StudyInstanceUID == case["source"].StudyInstanceUID
    assert sr.PatientID == case["source"].PatientID
    items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence}
    assert items[codes.DECLINED_REASON.value].TextValue == "not_in_field_of_view"
    assert items[codes.COMMENT.value].TextValue == "L3 is not in the field of view"
    assert items[codes.ANALYSIS_DECLINED.value].ConceptCodeSequence[0].CodeValue == codes.YES.value
    with pytest.raises(ValueError):
        make_declined_sr([], "no_eligible_series", "none", CONFIG, ALGORITHM)


@needs_dciodvfy
@pytest.mark.parametrize("name", ["seg", "sr", "overlay", "declined"])
def test_dciodvfy_reports_no_errors(case, name):
    report = dciodvfy_dataset(case[name])
    assert report.errors == (), report.output


# --- real Siemens JPEG 2000 header --------------------------------------------------------


@pytest.fixture(scope="module")
def real_case():
    files = sorted(REAL_DICOM_DIR.glob("*.dcm"))
    if not files:
        pytest.skip(f"real CT slices not found in {REAL_DICOM_DIR}")
    # The anonymiser blanked Study/Series/SOP UIDs in the dataset body; the node must do
    # the same repair (or reject) before analysis.
    series = repair_anonymised([pydicom.dcmread(f) for f in files])
    source = series[len(series) // 2]
    hu = hu_plane(source)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > -29) & (hu < 150)] = Tissue.SKELETAL_MUSCLE
    labels[(hu > -190) & (hu < -30)] = Tissue.SAT
    spacing = tuple(float(v) for v in source.PixelSpacing)
    measurements = make_measurements(labels, hu, spacing, None)
    l3 = make_l3(float(source.ImagePositionPatient[2]), len(series) // 2)
    algorithm = fallback_algorithm_info()
    seg = make_seg(source, labels, OutputsConfig(), algorithm)
    return dict(
        source=source,
        seg=seg,
        sr=make_sr(series, source, seg, measurements, l3, PatientFacts(), OutputsConfig(), algorithm),
        overlay=make_overlay(source, hu, labels, measurements, l3, OutputsConfig()),
        declined=make_declined_sr(series, "no_l3", "L3 not in field of view", OutputsConfig(), algorithm),
    )


def test_real_header_outputs_round_trip(real_case):
    for name in ("seg", "sr", "overlay", "declined"):
        back = roundtrip(real_case[name])
        assert back.StudyInstanceUID == real_case["source"].StudyInstanceUID
    seg = hd.seg.segread(io.BytesIO(dataset_bytes(real_case["seg"])))
    assert seg.get_pixels_by_source_instance([real_case["source"].SOPInstanceUID]).shape == (1, 512, 512, 4)


@needs_dciodvfy
@pytest.mark.parametrize("name", ["seg", "sr", "overlay", "declined"])
def test_real_header_dciodvfy_reports_no_errors(real_case, name):
    report = dciodvfy_dataset(real_case[name])
    assert report.errors == (), report.output


# --- algorithm identification -------------------------------------------------------------


def test_algorithm_fallback_without_manifest(tmp_path):
    info = load_algorithm_info(tmp_path / "missing")
    assert info.name == "threshold+geometry" and not info.neural_network
    assert info.family.value == "123105"
    assert load_algorithm_info(tmp_path) == info


def test_algorithm_from_manifest(tmp_path):
    (tmp_path / "tissuenet").mkdir()
    (tmp_path / "tissuenet" / "manifest.json").write_text(
        json.dumps({"name": "TissueNet", "version": "1.3.0", "source": "run 42", "sha256": "ab"})
    )
    info = load_algorithm_info(tmp_path)
    assert info == AlgorithmInfo("TissueNet", "1.3.0", "run 42", neural_network=True)
    assert info.family.value == "123110"
    assert load_algorithm_info(tmp_path, "tissuenet") == info
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"version": "1"}))
    with pytest.raises(ValueError, match="several models"):
        load_algorithm_info(tmp_path)
    assert load_algorithm_info(tmp_path, "other").name == "other"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_algorithm_info(tmp_path, "broken")
    with pytest.raises(ValueError, match="no weights manifest"):
        load_algorithm_info(tmp_path, "absent")
