"""A site's labelled cases as DICOM CT + DICOM SEG: read back into training samples.

The CT is a phantom exported as a real DICOM series, acquired head first prone so that the
reader must flip rows and columns; the SEGs are written by highdicom (vertebrae) and by the
node's own SEG writer (tissues), as a site would send them.
"""

from __future__ import annotations

import csv
import json
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from l3node.analysis.locate_l3 import inferior_endplate_z_from_labels
from l3node.analysis.segment import segment_slice
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import volume_from_files
from l3node.config import OutputsConfig
from l3node.outputs.algorithm import AlgorithmInfo
from l3node.outputs.write_seg import make_seg
from l3node.phantom import make_phantom
from l3node.phantom.dicom_export import write_dicom_series
from l3node.train import site_dicom
from l3node.train.datasets import site_l3_samples, site_seg_samples
from l3node.train.evaluate_l3 import case_from_folder, main_evaluate_l3
from l3node.train.evaluate_seg import evaluate_cases
from l3node.train.train_cli import main_train

TINY_L3 = {"channels": [4, 8], "z_channels": 8, "dilations": [1, 2, 4]}


@pytest.fixture(scope="module")
def prone_phantom():
    return make_phantom("normal", 7, matrix=128, slice_thickness_mm=5.0, scan_range="abdomen_pelvis",
                        arms="up", position="HFP")


def _write_ct(phantom, folder):
    paths = write_dicom_series(phantom, folder)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    volume, ordered = volume_from_files(paths, headers)
    assert volume.extra["flip_rows"] and volume.extra["flip_cols"]  # head first prone
    sources = [pydicom.dcmread(p) for p in paths]
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    return volume, [by_uid[h.SOPInstanceUID] for h in ordered]


def _vertebra_seg(phantom, volume, sources, names=("L2", "L3", "L4"), coded=("L2", "L3")):
    """A highdicom SEG with one segment per vertebra; ``coded`` ones carry their SCT code,
    the others only a label (as some tools write them)."""
    by_name = {name: label for label, name in phantom.vertebra_names.items()}
    frames = np.zeros(phantom.volume.hu.shape, np.uint8)
    descriptions = []
    for number, name in enumerate(names, start=1):
        frames[phantom.vertebra_labels == by_name[name]] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name if name in coded else f"vertebra {name}",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=getattr(codes.SCT, f"{name}Vertebra") if name in coded else codes.SCT.Vertebra,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
    source_frames = np.stack([volume.to_source_pixels(plane) for plane in frames])
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=source_frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="site", manufacturer_model_name="manual",
        software_versions="1", device_serial_number="1")


@pytest.fixture(scope="module")
def l3_site(prone_phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("site_l3")
    case = root / "case1"
    volume, sources = _write_ct(prone_phantom, case / "ct")
    _vertebra_seg(prone_phantom, volume, sources).save_as(case / "seg.dcm")
    return root


def test_vertebra_seg_gives_the_phantoms_l3_endplate(prone_phantom, l3_site):
    [sample] = site_l3_samples(l3_site)
    l3 = next(label for label, name in prone_phantom.vertebra_names.items() if name == "L3")
    expected = inferior_endplate_z_from_labels(prone_phantom.vertebra_labels, prone_phantom.volume, l3)
    assert sample["l3_z_mm"] == pytest.approx(expected, abs=0.01)
    assert abs(sample["l3_z_mm"] - prone_phantom.ground_truth["l3_inferior_endplate_z_mm"]) <= 5.0
    assert sample["source"].endswith("case1") and sample["coronal"].shape[1] == 128


def test_vertebra_named_by_label_only_and_mask_in_volume_orientation(prone_phantom, l3_site):
    volume, seg = site_dicom.read_dicom_case(l3_site / "case1")
    by_name = {name: label for label, name in prone_phantom.vertebra_names.items()}
    for name in ("L3", "L4"):  # L4 carries only the label "vertebra L4"
        mask = site_dicom.vertebra_mask(seg, volume, name)
        assert np.array_equal(mask, prone_phantom.vertebra_labels == by_name[name])
    with pytest.raises(ValueError, match="vertebra L5"):
        site_dicom.vertebra_mask(seg, volume, "L5")


def test_node_seg_of_tissues_gives_the_labelled_slice(prone_phantom, tmp_path):
    case = tmp_path / "site" / "case1"
    volume, sources = _write_ct(prone_phantom, case / "ct")
    k = prone_phantom.ground_truth["l3_slice_index"]
    truth = prone_phantom.tissue_labels[k]
    algorithm = AlgorithmInfo(name="reader", version="1")
    make_seg(sources[k], volume.to_source_pixels(truth).astype(np.uint8), OutputsConfig(), algorithm).save_as(
        case / "seg.dcm")
    [sample] = site_seg_samples(tmp_path / "site")
    assert sample["seg_hu"].shape == (1, 128, 128)
    assert np.array_equal(sample["seg_labels"][0], truth)
    assert np.array_equal(sample["seg_hu"][0], prone_phantom.volume.hu[k].astype(np.int16))
    # `l3node evaluate seg` compares our segmentation with the SEG's slice, tissue by tissue.
    [result] = evaluate_cases([str(case)])
    ours = segment_slice(prone_phantom.volume.hu[k], prone_phantom.volume.spacing_mm[1:])
    for tissue in Tissue:
        a, b = ours == tissue, truth == tissue
        assert result.dice[f"site_{tissue.key}"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert result.slice_index == k


def test_enhanced_ct_case_with_the_nodes_seg_of_one_frame(prone_phantom, tmp_path):
    """A site case whose CT is one Legacy Converted Enhanced CT instance (made by highdicom from
    the prone phantom's slices): the SEG of the L3 frame, written as the node writes it for
    such a CT, gives the phantom's labels of that slice."""
    from l3node.analysis.frames import frame_views

    case = tmp_path / "site" / "case1"
    volume, sources = _write_ct(prone_phantom, tmp_path / "slices")
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        sources, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(),
        instance_number=1)
    (case / "ct").mkdir(parents=True)
    enhanced.save_as(case / "ct" / "enhanced.dcm")
    k = prone_phantom.ground_truth["l3_slice_index"]
    truth = prone_phantom.tissue_labels[k]
    position = [float(v) for v in sources[k].ImagePositionPatient]
    [view] = [v for v in frame_views(pydicom.dcmread(case / "ct" / "enhanced.dcm", stop_before_pixels=True))
              if [float(x) for x in v.ImagePositionPatient] == position]
    make_seg(view, volume.to_source_pixels(truth).astype(np.uint8), OutputsConfig(),
             AlgorithmInfo(name="reader", version="1")).save_as(case / "seg.dcm")
    read, seg = site_dicom.read_dicom_case(case)
    labels = site_dicom.tissue_labels(seg, read)
    assert np.nonzero(labels.any(axis=(1, 2)))[0].tolist() == [k]
    assert np.array_equal(labels[k], truth)
    [result] = evaluate_cases([str(case)])
    assert result.slice_index == k and result.dice["site_skeletal_muscle"] > 0.9


def test_bad_dicom_cases_are_clear_errors(prone_phantom, l3_site, tmp_path):
    other = tmp_path / "other"  # the SEG of one series beside the CT of another
    shutil.copytree(l3_site / "case1", other)
    shutil.rmtree(other / "ct")
    write_dicom_series(prone_phantom, other / "ct", series_uid=generate_uid())
    with pytest.raises(ValueError, match="references series"):
        site_dicom.read_dicom_case(other)
    two = tmp_path / "two"
    shutil.copytree(l3_site / "case1", two)
    shutil.copy(two / "seg.dcm", two / "seg2.dcm")
    with pytest.raises(ValueError, match="exactly one SEG"):
        site_dicom.read_dicom_case(two)
    volume, seg = site_dicom.read_dicom_case(l3_site / "case1")
    with pytest.raises(ValueError, match="no segment coded or labelled as skeletal muscle"):
        site_dicom.tissue_labels(seg, volume)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="nor one with a DICOM SEG"):
        site_l3_samples(empty)


def test_train_l3_from_dicom_site_data_only(l3_site, tmp_path):
    out = main_train("l3", tmp_path / "l3", phantoms_per_variant=0, val_per_variant=1, epochs=1,
                     site_data=[l3_site], device="cpu", variants=["normal"], cache_dir=None, architecture=TINY_L3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_data"]["n_site_samples"] == 1
    assert manifest["training_data"]["site_data"] == [str(l3_site)]


def test_evaluate_l3_reads_a_dicom_case(prone_phantom, l3_site, tmp_path):
    case = case_from_folder(l3_site / "case1")
    l3 = next(label for label, name in prone_phantom.vertebra_names.items() if name == "L3")
    assert case.truth_z_mm == pytest.approx(
        inferior_endplate_z_from_labels(prone_phantom.vertebra_labels, prone_phantom.volume, l3), abs=0.01)
    assert main_evaluate_l3([l3_site / "case1"], tmp_path / "eval") == 0
    with open(tmp_path / "eval" / "l3_evaluation.csv") as fh:
        [row] = [r for r in csv.DictReader(fh) if r["name"] == "case1"]
    assert float(row["truth_z_mm"]) == pytest.approx(case.truth_z_mm, abs=0.1)
