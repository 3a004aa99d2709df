"""The offline pipeline (`l3node run`): phantoms with known truth, real DICOM, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SegmentationStorage, generate_uid

from l3node.cli import main
from l3node.config import Config, parse_config
from l3node.outputs.validate import dciodvfy_available, run_dciodvfy
from l3node.phantom import main_phantom
from l3node.pipeline import analyse_study

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_DICOM = SHARED_DATA / "ts_example_ct_dicom"


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> Path:
    return main_phantom("normal", 11, tmp_path_factory.mktemp("study"), matrix=256, slice_thickness_mm=3.0,
                        scan_range="abdomen_pelvis")


@pytest.fixture(scope="module")
def analysed(phantom_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return analyse_study(phantom_study, out, Config()), out


def test_phantom_study_gives_results_close_to_truth(phantom_study, analysed):
    outcome, out = analysed
    truth = json.loads((phantom_study / "ground_truth.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert outcome.status == "done", outcome.reason
    assert results["status"] == "done"
    assert results["l3"]["status"] in ("found", "uncertain")
    assert abs(results["l3"]["z_mm"] - truth["l3_inferior_endplate_z_mm"]) < 10
    for key in ("skeletal_muscle", "vat", "sat"):
        assert results["tissues"][key]["area_cm2"] == pytest.approx(truth["areas_cm2"][key], rel=0.10), key
    assert results["smi_cm2_m2"] == pytest.approx(
        results["tissues"]["skeletal_muscle"]["area_cm2"] / truth["patient"]["height_m"] ** 2, rel=1e-3)
    assert sorted(results["outputs"]) == ["overlay", "seg", "sr"]
    assert [p.name for p in outcome.output_files] == ["seg.dcm", "sr.dcm", "overlay.dcm"]


def test_averaged_measurements_say_so(phantom_study, analysed, tmp_path):
    """With analysis.average_slices_mm the report must not read as the L3 slice alone."""
    single = json.loads((analysed[1] / "results.json").read_text())
    config = parse_config({"analysis": {"average_slices_mm": 6}})
    assert analyse_study(phantom_study, tmp_path, config).status == "done"
    results = json.loads((tmp_path / "results.json").read_text())
    note = next(n for n in results["notes"] if n.startswith("measured on 5 slices within 6 mm of L3"))
    assert single["notes"] == [n for n in results["notes"] if n != note]  # nothing else said differently
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert note in _sr_texts(sr.ContentSequence)
    # Five 3 mm slices around L3: close to, not identical with, the slice alone.
    averaged, alone = results["tissues"]["skeletal_muscle"]["area_cm2"], single["tissues"]["skeletal_muscle"]["area_cm2"]
    assert averaged != alone and averaged == pytest.approx(alone, rel=0.08)


def test_network_segmentation_end_to_end(phantom_study, tmp_path):
    """`analysis.segmentation: network`: the SEG names the network, and its tissues keep the
    HU ranges (a muscle SD like the rules', not one inflated by fat or bone at the edges)."""
    truth = json.loads((phantom_study / "ground_truth.json").read_text())
    outcome = analyse_study(phantom_study, tmp_path, parse_config({"analysis": {"segmentation": "network"}}))
    assert outcome.status == "done", outcome.reason
    results = json.loads((tmp_path / "results.json").read_text())
    muscle = results["tissues"]["skeletal_muscle"]
    assert muscle["area_cm2"] == pytest.approx(truth["areas_cm2"]["skeletal_muscle"], rel=0.10)
    assert -29 <= muscle["mean_hu"] - 2 * muscle["sd_hu"] and muscle["sd_hu"] < 45
    assert pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence[0].SegmentAlgorithmName == "tissue_unet"


def _sr_texts(items) -> list[str]:
    texts = []
    for item in items:
        if item.ValueType == "TEXT":
            texts.append(str(item.TextValue))
        texts += _sr_texts(getattr(item, "ContentSequence", []))
    return texts


def test_outputs_reference_the_analysed_slice(analysed):
    outcome, out = analysed
    results = json.loads((out / "results.json").read_text())
    seg = pydicom.dcmread(out / "seg.dcm")
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == results["l3"]["sop_instance_uid"]
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == results["study_instance_uid"]


@pytest.mark.dciodvfy
@pytest.mark.skipif(not dciodvfy_available(), reason="dciodvfy not installed (apt-get install dicom3tools)")
def test_outputs_pass_dciodvfy(analysed):
    _, out = analysed
    for name in ("seg.dcm", "sr.dcm", "overlay.dcm"):
        assert run_dciodvfy(out / name) == [], name


def test_chest_only_study_is_declined_not_invented(tmp_path):
    study = main_phantom("normal", 5, tmp_path / "study", matrix=256, slice_thickness_mm=5.0, scan_range="chest_only")
    outcome = analyse_study(study, tmp_path / "out", Config())
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert outcome.status == "declined"
    assert results["reason"].startswith("l3_not_in_field_of_view")
    assert results["l3"]["z_mm"] is None
    assert "declined_sr" in results["outputs"]


@pytest.mark.skipif(not REAL_DICOM.is_dir(), reason="../shared/data/ts_example_ct_dicom not present")
def test_real_jpeg2000_slices_are_declined_cleanly(tmp_path):
    """20 real slices (JPEG 2000). As distributed their Study, Series and SOP Instance UIDs are
    empty: declined as unusable files, saying which UIDs. With the UIDs a PACS would hold, they
    are decoded and declined for the anatomy (40 mm of spine, no rib or sacrum to count from),
    also as one multi-frame instance (real Siemens headers through the frames path)."""
    assert main(["run", str(REAL_DICOM), "--out", str(tmp_path / "as_is")]) == 3
    results = json.loads((tmp_path / "as_is" / "results.json").read_text())
    assert results["status"] == "declined"
    assert results["reason"].startswith("no_images: no usable DICOM file in the study (20 file(s) unusable: "
                                        "StudyInstanceUID missing, SeriesInstanceUID missing, SOPInstanceUID missing")
    assert results["outputs"] == {}  # no study to file a declined report in

    study, series = tmp_path / "with_uids", (generate_uid(), generate_uid())
    study.mkdir()
    for path in sorted(REAL_DICOM.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = series
        ds.save_as(study / path.name)
    assert main(["run", str(study), "--out", str(tmp_path / "out")]) == 3
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "declined"
    assert results["reason"].split(":")[0] in {"l3_not_identified", "l3_not_in_field_of_view"}
    assert results["rejected_series"] == {series[1]: results["reason"]}
    assert "declined_sr" in results["outputs"]

    # The same real slices as one JPEG 2000 Legacy Converted Enhanced CT: the same answer.
    import highdicom as hd
    from pydicom.uid import JPEG2000Lossless

    slices = [pydicom.dcmread(p) for p in sorted(study.glob("*.dcm"))]
    for ds in slices:
        ds.decompress()
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(), instance_number=1)
    enhanced.compress(JPEG2000Lossless)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "enhanced.dcm")
    assert main(["run", str(tmp_path / "enhanced"), "--out", str(tmp_path / "out_enhanced")]) == 3
    as_frames = json.loads((tmp_path / "out_enhanced" / "results.json").read_text())
    assert as_frames["reason"] == results["reason"]


def test_a_truncated_slice_is_named_in_the_decline(phantom_study, tmp_path):
    """`l3node run` on a copied series with one file cut short (the SCP refuses such files;
    a folder on disk can still hold one): declined, naming the instance and the file."""
    study = tmp_path / "study"
    shutil.copytree(phantom_study / "dicom", study)
    victim = sorted(study.glob("*.dcm"))[10]
    number = pydicom.dcmread(victim, stop_before_pixels=True).InstanceNumber
    victim.write_bytes(victim.read_bytes()[:-3000])
    outcome = analyse_study(study, tmp_path / "out", Config())
    assert outcome.status == "declined"
    assert f"unreadable_pixels: instance {number} (file {victim.name}): ValueError" in outcome.reason


def test_values_not_in_hu_are_declined_as_such(phantom_study, tmp_path):
    """A series without RescaleIntercept/Slope (air stored as 0) is refused for its HU scale,
    not analysed into "no vertebral column found"."""
    study = tmp_path / "study"
    study.mkdir()
    for path in sorted((phantom_study / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert ds.RescaleIntercept == -1024 and ds.pixel_array.min() >= 0
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(study / path.name)
    outcome = analyse_study(study, tmp_path / "out", Config())
    assert outcome.status == "declined"
    assert "hu_scale: the lowest value is 0, where air should read about -1000 HU " \
           "(RescaleIntercept missing, RescaleSlope missing)" in outcome.reason


def _as_enhanced_ct(phantom_study: Path, study: Path) -> Path:
    """The phantom's slices as one Legacy Converted Enhanced CT instance (made by highdicom)."""
    import highdicom as hd

    slices = [pydicom.dcmread(p) for p in sorted((phantom_study / "dicom").iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(), instance_number=1)
    study.mkdir()
    enhanced.save_as(study / "enhanced.dcm")
    return study / "enhanced.dcm"


def test_enhanced_ct_is_measured_as_its_slices(phantom_study, analysed, tmp_path):
    """A multi-frame CT gives the measurements of the same slices sent one instance each, and
    the SEG and the SR reference the instance and its L3 frame (the one at the L3 slice's position)."""
    path = _as_enhanced_ct(phantom_study, tmp_path / "study")
    outcome = analyse_study(tmp_path / "study", tmp_path / "out", Config())
    assert outcome.status == "done", outcome.reason
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    single = json.loads((analysed[1] / "results.json").read_text())
    assert results["tissues"] == single["tissues"]
    assert (results["l3"]["z_mm"], results["l3"]["slice_index"]) == (single["l3"]["z_mm"], single["l3"]["slice_index"])
    assert single["l3"]["frame_number"] is None

    enhanced = pydicom.dcmread(path, stop_before_pixels=True)
    frame = results["l3"]["frame_number"]
    assert results["l3"]["sop_instance_uid"] == enhanced.SOPInstanceUID
    l3_slice = next(pydicom.dcmread(p) for p in (phantom_study / "dicom").iterdir()
                    if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == single["l3"]["sop_instance_uid"])
    frame_position = enhanced.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in frame_position] == pytest.approx([float(v) for v in l3_slice.ImagePositionPatient])

    seg = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert (source.ReferencedSOPInstanceUID, int(source.ReferencedFrameNumber)) == (enhanced.SOPInstanceUID, frame)
    assert pydicom.dcmread(analysed[1] / "seg.dcm").pixel_array.tolist() == seg.pixel_array.tolist()
    sr_frames = _sr_image_frames(pydicom.dcmread(tmp_path / "out" / "sr.dcm").ContentSequence)
    # Every measurement, segment and group source names the frame; the image library lists the instance.
    assert sr_frames.count(None) == 1 and set(sr_frames) == {None, frame} and len(sr_frames) > 5
    if dciodvfy_available():
        for name in ("seg.dcm", "sr.dcm", "overlay.dcm"):
            assert run_dciodvfy(tmp_path / "out" / name) == [], name


def _assert_measured_as_its_slices(study: Path, out: Path, single_out: Path) -> None:
    """The study is measured, with the tissues and L3 of the same slices sent one instance each."""
    outcome = analyse_study(study, out, Config())
    assert outcome.status == "done", outcome.reason
    results = json.loads((out / "results.json").read_text())
    single = json.loads((single_out / "results.json").read_text())
    assert results["tissues"] == single["tissues"] and results["l3"]["z_mm"] == single["l3"]["z_mm"]


def test_compressed_enhanced_ct_is_measured_the_same(phantom_study, analysed, tmp_path):
    """Enhanced CT is often archived JPEG 2000 lossless: all frames decoded, same answer."""
    from pydicom.uid import JPEG2000Lossless

    path = _as_enhanced_ct(phantom_study, tmp_path / "study")
    enhanced = pydicom.dcmread(path)
    enhanced.compress(JPEG2000Lossless)
    enhanced.save_as(path)
    _assert_measured_as_its_slices(tmp_path / "study", tmp_path / "out", analysed[1])


def test_standard_enhanced_ct_volume_is_measured_the_same(phantom_study, analysed, tmp_path):
    """Enhanced CT Image Storage as a scanner writes it: Image Type ORIGINAL\\PRIMARY\\VOLUME\\NONE
    (no AXIAL flavour exists for it), the same in the frames' CT Image Frame Type. Before, the
    series was declined for lacking AXIAL."""
    from pydicom.uid import EnhancedCTImageStorage

    path = _as_enhanced_ct(phantom_study, tmp_path / "study")
    enhanced = pydicom.dcmread(path)
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    enhanced.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    [frame_type] = enhanced.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    enhanced.save_as(path)
    _assert_measured_as_its_slices(tmp_path / "study", tmp_path / "out", analysed[1])


def _sr_image_frames(items) -> list[int | None]:
    frames = []
    for item in items:
        if item.ValueType == "IMAGE" and item.ReferencedSOPSequence[0].ReferencedSOPClassUID != SegmentationStorage:
            number = item.ReferencedSOPSequence[0].get("ReferencedFrameNumber")
            frames.append(int(number) if number is not None else None)
        frames += _sr_image_frames(getattr(item, "ContentSequence", []))
    return frames


def test_enhanced_ct_without_its_frames_geometry_is_declined(phantom_study, tmp_path):
    path = _as_enhanced_ct(phantom_study, tmp_path / "study")
    enhanced = pydicom.dcmread(path)
    del enhanced.PerFrameFunctionalGroupsSequence[-1]
    enhanced.save_as(path)
    outcome = analyse_study(tmp_path / "study", tmp_path / "out", Config())
    assert outcome.status == "declined"
    assert f"missing_geometry: multi-frame CT with NumberOfFrames {enhanced.NumberOfFrames!r} and " \
           f"{enhanced.NumberOfFrames - 1} per-frame functional group item(s)" in outcome.reason


def test_folder_without_dicom_is_declined(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    outcome = analyse_study(tmp_path / "study", tmp_path / "out", Config())
    assert outcome.status == "declined"
    assert outcome.reason.startswith("no_images")
    assert outcome.output_files == []


def test_missing_slice_is_rejected_with_reason(phantom_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(phantom_study, study)
    files = sorted(study.rglob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    files[len(files) // 2].unlink()
    outcome = analyse_study(study, tmp_path / "out", Config())
    assert outcome.status == "declined"
    assert any(reason.startswith("missing_slices") for reason in outcome.rejected_series.values())


def test_corrupt_file_does_not_stop_the_analysis(phantom_study, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(phantom_study, study)
    (study / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10")
    outcome = analyse_study(study, tmp_path / "out", Config())
    assert outcome.status == "done"
    assert "file:garbage.dcm" in outcome.rejected_series


def _second_series(phantom_study: Path, study: Path) -> None:
    """Copy the phantom's series as a second series (new UIDs, thicker description) of the same study."""
    shutil.copytree(phantom_study / "dicom", study / "first")
    second = study / "second"
    second.mkdir()
    series_uid = pydicom.uid.generate_uid()
    for path in sorted((phantom_study / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesNumber = 3
        ds.save_as(second / path.name, enforce_file_format=True)


def test_analyse_best_or_all_eligible_series(phantom_study, tmp_path):
    _second_series(phantom_study, tmp_path / "study")
    best = analyse_study(tmp_path / "study", tmp_path / "best", Config())
    assert best.status == "done"
    assert [p.name for p in best.output_files] == ["seg.dcm", "sr.dcm", "overlay.dcm"]
    assert len(best.rejected_series) == 1  # the other series, with the reason it was not the best

    config = Config.model_validate({"selection": {"analyse": "all"}})
    every = analyse_study(tmp_path / "study", tmp_path / "all", config)
    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [p.name for p in every.output_files] == [
        "seg.dcm", "sr.dcm", "overlay.dcm", "seg_1.dcm", "sr_1.dcm", "overlay_1.dcm"]
    assert len(results["other_series"]) == 1
    assert results["other_series"][0]["series_instance_uid"] != results["series_instance_uid"]
    assert every.rejected_series == {}
