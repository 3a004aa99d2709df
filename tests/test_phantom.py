"""Synthetic CT phantoms: ground-truth self-consistency, variants, DICOM validity, determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from l3node.analysis.locate_l3 import Variant
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import read_dicom_folder
from l3node.errors import SeriesRejected
from l3node.phantom import VARIANT_CLASS, VARIANTS, main_phantom, make_phantom, write_dicom_series
from l3node.config import AnalysisConfig
from l3node.phantom.materials import FAT_HU_RANGE, MUSCLE_HU_RANGE, Compartment, Structure, hu_tables
from l3node.phantom.truth import tissues_from_hu

SMALL = dict(matrix=128, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")


@pytest.fixture(scope="module")
def phantoms() -> dict[str, object]:
    return {variant: make_phantom(variant, seed=11, **SMALL) for variant in VARIANTS}


def test_variant_names_and_classes():
    assert VARIANTS == ("normal", "t12_rib_hypoplasia", "t12_rib_aplasia", "l1_rib", "sacralization",
                        "lumbarization", "four_lumbar", "six_lumbar", "combined")
    assert {VARIANT_CLASS[v] for v in VARIANTS} == {Variant.NORMAL, Variant.THORACOLUMBAR, Variant.LUMBOSACRAL,
                                                     Variant.NUMERIC, Variant.COMBINED}
    with pytest.raises(ValueError, match="unknown variant"):
        make_phantom("seven_lumbar", seed=0, **SMALL)
    with pytest.raises(ValueError, match="unknown phantom option"):
        make_phantom("normal", seed=0, colour="blue", **SMALL)


def test_areas_equal_label_counts(phantoms):
    for variant, p in phantoms.items():
        truth = p.ground_truth
        k = truth["l3_slice_index"]
        assert k is not None, variant
        pixel_cm2 = p.volume.pixel_area_mm2 / 100.0
        for tissue in Tissue:
            mask = p.tissue_labels[k] == int(tissue)
            assert truth["areas_cm2"][tissue.key] == pytest.approx(mask.sum() * pixel_cm2, abs=1e-3)
            assert truth["mean_hu"][tissue.key] == pytest.approx(float(p.volume.hu[k][mask].mean()), abs=0.01)
        assert truth["areas_cm2"]["skeletal_muscle"] > 40.0
        assert truth["areas_cm2"]["sat"] > 5.0


def test_l3_z_is_inferior_endplate_of_labelled_l3(phantoms):
    for variant, p in phantoms.items():
        truth = p.ground_truth
        label = {name: lab for lab, name in p.vertebra_names.items()}["L3"]
        entry = truth["vertebrae"]["L3"]
        assert entry["label"] == label
        z = p.volume.z_mm
        dz = p.volume.spacing_mm[0]
        # Slices where L3's body (bone at the body centre, not its posterior elements) is labelled.
        x_mm, y_mm = entry["body_centre_xy_mm"]
        row = int(round((y_mm - p.volume.origin_mm[1]) / p.volume.spacing_mm[1]))
        col = int(round((x_mm - p.volume.origin_mm[0]) / p.volume.spacing_mm[2]))
        column = p.vertebra_labels[:, row - 1:row + 2, col - 1:col + 2] == label
        body_slices = np.nonzero(column.any(axis=(1, 2)))[0]
        assert len(body_slices) >= 3, variant
        endplate = truth["l3_inferior_endplate_z_mm"]
        assert endplate == entry["z_inferior_mm"]
        assert endplate - 1e-6 <= z[body_slices.min()] < endplate + dz + 1e-6, variant
        assert entry["z_superior_mm"] - dz - 1e-6 < z[body_slices.max()] <= entry["z_superior_mm"] + 1e-6
        assert truth["l3_slice_index"] == int(np.argmin(np.abs(z - endplate)))
        # Body-only extent from vertebra labels x body/disc map gives the same endplate.
        body = ((p.vertebra_labels == label) & (p.body_disc_labels == 1)).any(axis=(1, 2))
        ks = np.nonzero(body)[0]
        assert endplate - 1e-6 <= z[ks.min()] < endplate + dz + 1e-6, variant


def test_variant_counts_and_ribs(phantoms):
    expected_lumbar = {"normal": 5, "t12_rib_hypoplasia": 5, "t12_rib_aplasia": 5, "l1_rib": 5,
                       "sacralization": 5, "lumbarization": 5, "four_lumbar": 4, "six_lumbar": 6}
    for variant, count in expected_lumbar.items():
        truth = phantoms[variant].ground_truth
        assert truth["lumbar_count"] == count, variant
        assert truth["variant_class"] == VARIANT_CLASS[variant].value
        names = list(phantoms[variant].vertebra_names.values())
        assert names[:12] == [f"T{i}" for i in range(1, 13)]
        assert names[-1] == "sacrum"
        assert sum(n.startswith("L") for n in names) == count
    t12 = {v: phantoms[v].ground_truth["twelfth_rib_length_mm"] for v in VARIANTS}
    assert t12["normal"] >= 38.0
    assert 0 < t12["t12_rib_hypoplasia"] < 38.0
    assert t12["t12_rib_aplasia"] == 0.0
    assert phantoms["t12_rib_aplasia"].ground_truth["rib_pairs"] == 11
    l1 = phantoms["l1_rib"].ground_truth["rib_lengths_mm"]
    assert 0 < l1["L1"] < 38.0 and phantoms["l1_rib"].ground_truth["rib_pairs"] == 13
    assert "S1" in phantoms["lumbarization"].vertebra_names.values()
    assert phantoms["lumbarization"].ground_truth["mobile_lumbar_type_count"] == 6
    assert phantoms["sacralization"].ground_truth["mobile_lumbar_type_count"] == 4
    assert len(phantoms["combined"].ground_truth["components"]) == 2


def test_hu_ranges_are_the_analysis_defaults():
    config = AnalysisConfig()
    assert MUSCLE_HU_RANGE == (config.muscle_hu.min, config.muscle_hu.max) == (-29.0, 150.0)
    assert FAT_HU_RANGE == (config.fat_hu.min, config.fat_hu.max) == (-190.0, -30.0)


def test_tissue_labels_are_compartments_thresholded_on_the_final_image(phantoms):
    for variant, p in phantoms.items():
        hu, tissues, comp = p.volume.hu, p.tissue_labels, p.compartment_labels
        muscle = hu[tissues == Tissue.SKELETAL_MUSCLE]
        assert muscle.size and muscle.min() >= MUSCLE_HU_RANGE[0] and muscle.max() <= MUSCLE_HU_RANGE[1], variant
        for fat in (Tissue.IMAT, Tissue.VAT, Tissue.SAT):
            values = hu[tissues == fat]
            assert values.size and values.min() >= FAT_HU_RANGE[0] and values.max() <= FAT_HU_RANGE[1], variant
        for tissue, compartment in ((Tissue.SKELETAL_MUSCLE, Compartment.MUSCLE), (Tissue.IMAT, Compartment.MUSCLE),
                                    (Tissue.VAT, Compartment.VISCERAL), (Tissue.SAT, Compartment.SUBCUTANEOUS)):
            assert np.all(comp[tissues == tissue] == compartment), (variant, tissue)
        # Conversely every compartment voxel in a tissue's HU range carries that tissue (the definition is exact).
        in_fat = (hu >= FAT_HU_RANGE[0]) & (hu <= FAT_HU_RANGE[1])
        in_muscle = (hu >= MUSCLE_HU_RANGE[0]) & (hu <= MUSCLE_HU_RANGE[1])
        assert np.all(tissues[(comp == Compartment.MUSCLE) & in_muscle] == Tissue.SKELETAL_MUSCLE)
        assert np.all(tissues[(comp == Compartment.MUSCLE) & in_fat] == Tissue.IMAT)
        assert np.all(tissues[(comp == Compartment.VISCERAL) & in_fat] == Tissue.VAT)
        assert np.all(tissues[(comp == Compartment.SUBCUTANEOUS) & in_fat] == Tissue.SAT)
        assert not tissues[comp == Compartment.NONE].any()
        # Compartments are the painted geometry; noise does not move them.
        structures = p.structure_labels
        assert np.all(comp[np.isin(structures, (Structure.MUSCLE, Structure.BACK_MUSCLE, Structure.IMAT))]
                      == Compartment.MUSCLE)
        assert np.all(comp[structures == Structure.VAT] == Compartment.VISCERAL)
        assert np.all(comp[structures == Structure.SAT] == Compartment.SUBCUTANEOUS)
        truth = p.ground_truth
        assert truth["tissue_definition"]["imat"] == {"compartment": "muscle", "hu": list(FAT_HU_RANGE)}
        k = truth["l3_slice_index"]
        pixel_cm2 = p.volume.pixel_area_mm2 / 100.0
        assert truth["compartment_areas_cm2"]["muscle"] == pytest.approx(
            (comp[k] == Compartment.MUSCLE).sum() * pixel_cm2, abs=1e-3)
        # Most of the compartment is labelled: thresholding loses only partial-volume/noise voxels.
        areas = truth["areas_cm2"]
        assert areas["skeletal_muscle"] + areas["imat"] >= 0.9 * truth["compartment_areas_cm2"]["muscle"]
        assert areas["sat"] >= 0.9 * truth["compartment_areas_cm2"]["subcutaneous"]


def test_settle_truth_fat_pockets_and_slab_bone():
    from l3node.phantom.render import settle_truth

    M, V, C = int(Structure.MUSCLE), int(Structure.VAT), int(Structure.CORTICAL)
    codes = np.full((24, 60), M, np.uint8)
    codes[:, 55:] = int(Structure.LIVER)
    codes[3:6, 3:6] = V  # enclosed by muscle alone, far from the spine: intermuscular (IMAT)
    codes[3:6, 30:32] = C  # vertebra ...
    codes[3:6, 32:35] = V  # ... and a pocket between it and muscle: around the spine
    codes[10:14, 50:56] = V  # open to an organ: still visceral
    codes[18:21, 22:24] = V  # a pocket beside the vertebra, grazed by bone in another sub-slice
    vertebra = codes == C
    slab_bone = np.zeros(codes.shape, bool)
    slab_bone[17, 22:24] = True  # the pocket's upper muscle edge
    slab_bone[8, 8] = True  # muscle
    out = settle_truth(codes, slab_bone, vertebra, pixel_mm=1.0)
    assert np.all(out[3:6, 3:6] == Structure.INTERMUSCULAR_FAT)
    assert np.all(out[3:6, 32:35] == Structure.PARASPINAL_FAT)
    assert np.all(out[10:14, 50:55] == V)
    assert np.all(out[18:21, 22:24] == Structure.PARASPINAL_FAT)  # within 10 mm of bone beside the vertebra
    assert out[8, 8] == Structure.SLAB_BONE and out[17, 22] == Structure.SLAB_BONE
    assert np.all(out[vertebra] == C) and codes[3, 3] == V  # input untouched
    # A pocket larger than an IMAT pocket (here 9 px of 100 mm^2) stays visceral (a cavity).
    assert np.all(settle_truth(codes, slab_bone, vertebra, pixel_mm=10.0)[3:6, 3:6] == V)
    with pytest.raises(ValueError, match="differ"):
        settle_truth(codes, slab_bone[:, :5], vertebra, pixel_mm=1.0)


def test_fat_around_the_spine_is_not_visceral(phantoms):
    """No visceral fat lies in a pocket closed by muscle and the vertebra; bone grazed by the
    slab carries no compartment (the articular processes' rings were muscle)."""
    from scipy import ndimage

    from l3node.phantom.materials import COMPARTMENT_OF_STRUCTURE

    seen = {"para": 0, "inter": 0, "slab": 0}
    for variant in ("normal", "combined", "six_lumbar"):
        p = phantoms[variant]
        k = p.ground_truth["l3_slice_index"]
        st = p.structure_labels[k]
        seen["para"] += int((st == Structure.PARASPINAL_FAT).sum())
        seen["inter"] += int((st == Structure.INTERMUSCULAR_FAT).sum())
        seen["slab"] += int((st == Structure.SLAB_BONE).sum())
        assert COMPARTMENT_OF_STRUCTURE[Structure.PARASPINAL_FAT] == Compartment.NONE
        assert COMPARTMENT_OF_STRUCTURE[Structure.INTERMUSCULAR_FAT] == Compartment.MUSCLE
        assert COMPARTMENT_OF_STRUCTURE[Structure.SLAB_BONE] == Compartment.NONE
        vat = st == Structure.VAT
        labelled, n = ndimage.label(vat, structure=np.ones((3, 3)))
        closed = np.isin(st, (Structure.MUSCLE, Structure.BACK_MUSCLE, Structure.IMAT, Structure.CORTICAL, Structure.CANCELLOUS,
                              Structure.THIN_CORTEX, Structure.SLAB_BONE, Structure.DISC,
                              Structure.DISC_NUCLEUS))
        for i in range(1, n + 1):
            ring = ndimage.binary_dilation(labelled == i, structure=np.ones((3, 3))) & ~(labelled == i)
            assert not (closed[ring].all() and (labelled == i).sum() * p.volume.pixel_area_mm2 <= 500.0), variant
    assert seen["inter"] + seen["para"] > 0 and seen["slab"] > 0


def test_tissues_from_hu_applies_the_ranges_inclusively():
    hu = np.array([[[-191, -190, -30, -29, 150, 151, -100, 40]]], np.float32)
    comp = np.array([[[1, 1, 1, 1, 1, 1, 2, 2]]], np.uint8)
    assert tissues_from_hu(hu, comp).tolist() == [[[0, 2, 2, 1, 1, 0, 3, 0]]]
    comp[...] = 3
    assert tissues_from_hu(hu, comp).tolist() == [[[0, 4, 4, 0, 0, 0, 4, 0]]]
    with pytest.raises(ValueError, match="shape"):
        tissues_from_hu(hu, comp[:, :, :4])


def test_noiseless_texture_stays_in_tissue_window():
    mean, amp, lo, hi = hu_tables(age_years=85, muscle_fat_infiltration=1.0, phase="portal", oral_contrast=True)
    for structure, (low, high) in ((Structure.MUSCLE, MUSCLE_HU_RANGE), (Structure.BACK_MUSCLE, MUSCLE_HU_RANGE),
                                   (Structure.IMAT, FAT_HU_RANGE),
                                   (Structure.VAT, FAT_HU_RANGE), (Structure.SAT, FAT_HU_RANGE)):
        assert low <= lo[structure] <= mean[structure] <= hi[structure] <= high


def test_muscle_and_bone_hu_fall_with_age():
    young = hu_tables(age_years=30, muscle_fat_infiltration=0.0, phase="noncontrast", oral_contrast=False)[0]
    old = hu_tables(age_years=85, muscle_fat_infiltration=0.8, phase="noncontrast", oral_contrast=False)[0]
    assert 45.0 <= young[Structure.MUSCLE] <= 60.0 and 12.0 <= old[Structure.MUSCLE] <= 28.0
    # The back muscles take up fat first (real CT at L3: back 11 HU, wall 30 HU).
    assert young[Structure.BACK_MUSCLE] == young[Structure.MUSCLE]
    assert old[Structure.MUSCLE] - 20.0 <= old[Structure.BACK_MUSCLE] <= old[Structure.MUSCLE] - 10.0
    assert 230.0 <= young[Structure.CANCELLOUS] <= 270.0 and 95.0 <= old[Structure.CANCELLOUS] <= 140.0


def test_bowel_content_is_rarely_fat_range(phantoms):
    from scipy import ndimage

    for variant in ("normal", "combined"):
        p = phantoms[variant]
        hu, structures = p.volume.hu, p.structure_labels
        feces = structures == Structure.FECES
        gas = structures == Structure.BOWEL_GAS
        assert feces.sum() > 200 and gas.sum() > 200
        away = feces & ~ndimage.binary_dilation(gas, iterations=2)
        fat = (hu >= FAT_HU_RANGE[0]) & (hu <= FAT_HU_RANGE[1])
        assert fat[away].mean() < 0.05, variant  # only partial volume with gas gives fat-range HU
        assert -10.0 < float(np.median(hu[away])) < 70.0


def test_bowel_content_never_touches_muscle():
    """A bowel loop is painted over visceral fat only, so a loop pressed on the psoas or the
    wall is cut where the muscle is; its wall must still go all round its content. Without
    that, fluid lay directly on muscle (seed 73 at 512: 145 pixels on the L3 slice)."""
    from scipy import ndimage

    p = make_phantom("normal", seed=73, matrix=256, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")
    structures = np.asarray(p.structure_labels)
    k = p.ground_truth["l3_slice_index"]
    content_codes = (Structure.BOWEL_FLUID, Structure.FECES, Structure.BOWEL_GAS)
    wall_on_muscle = 0
    for i, plane in enumerate(structures):  # the transverse colon (a capsule, at L2) too
        muscle_edge = ndimage.binary_dilation(np.isin(plane, (Structure.MUSCLE, Structure.BACK_MUSCLE)))
        assert not (np.isin(plane, content_codes) & muscle_edge).any(), i
        if abs(i - k) <= 4:
            wall_on_muscle += int(((plane == Structure.BOWEL_WALL) & muscle_edge).sum())
    assert wall_on_muscle > 100  # loops do lie on muscle at L3, with their wall between


def test_bowel_wall_enhances_with_contrast():
    """The normal small-bowel wall is 118-120 HU in the arterial and 107-111 HU in the portal
    phase; without contrast it has the muscle's HU. The wall between a loop and the psoas is
    what tells them apart on contrast CT (before: 40 HU in every phase)."""
    medians = {}
    for phase in ("noncontrast", "portal"):
        p = make_phantom("normal", seed=73, matrix=256, slice_thickness_mm=3.0, scan_range="abdomen_pelvis",
                         phase=phase)
        k = p.ground_truth["l3_slice_index"]
        structures, hu = np.asarray(p.structure_labels[k]), p.volume.hu[k]
        medians[phase] = [float(np.median(hu[structures == code])) for code in (Structure.BOWEL_WALL, Structure.MUSCLE)]
    wall, muscle = medians["portal"]
    assert wall > muscle + 30.0 and wall > 70.0, medians
    wall, muscle = medians["noncontrast"]
    assert abs(wall - muscle) < 25.0, medians


def test_disc_nucleus_option_paints_a_darker_core_inside_the_disc():
    """``disc_nucleus=True`` gives every disc a nucleus darker than its annulus, inside the
    disc; without it the discs are uniform and the phantom is the same as before the option."""
    from scipy import ndimage

    plain = make_phantom("normal", seed=7, matrix=128, slice_thickness_mm=3.0, scan_range="abdomen_pelvis")
    p = make_phantom("normal", seed=7, matrix=128, slice_thickness_mm=3.0, scan_range="abdomen_pelvis",
                     disc_nucleus=True)
    structures = np.asarray(p.structure_labels)
    nucleus, annulus = structures == Structure.DISC_NUCLEUS, structures == Structure.DISC
    assert not (np.asarray(plain.structure_labels) == Structure.DISC_NUCLEUS).any()
    assert plain.ground_truth["disc_nucleus"] is False and p.ground_truth["disc_nucleus"] is True
    assert nucleus.sum() > 50
    # Inside the disc (TotalSegmentator's body/disc map marks it as disc), darker than the annulus.
    assert (np.asarray(p.body_disc_labels)[nucleus] == 2).all()
    hu = np.asarray(p.volume.hu)
    assert np.median(hu[annulus]) - np.median(hu[nucleus]) > 10.0
    # Elsewhere (beyond the blur's reach) the volume is the plain phantom's, noise included.
    far = ~ndimage.binary_dilation(nucleus, iterations=3)
    assert np.array_equal(np.asarray(plain.volume.hu)[far], hu[far])


def test_quadratus_lumborum_abuts_transverse_process_and_back_muscles(phantoms):
    from scipy import ndimage

    p = phantoms["normal"]
    entry = p.ground_truth["vertebrae"]["L3"]
    v = p.volume
    z_mid = (entry["z_inferior_mm"] + entry["z_superior_mm"]) / 2
    k = v.slice_index_at(z_mid)
    structures = p.structure_labels[k]
    row_c = int(round((entry["body_centre_xy_mm"][1] - v.origin_mm[1]) / v.spacing_mm[1]))
    col_c = int(round((0.0 - v.origin_mm[0]) / v.spacing_mm[2]))
    muscle = np.isin(structures, (Structure.MUSCLE, Structure.BACK_MUSCLE, Structure.IMAT))
    labels, _ = ndimage.label(muscle)
    bone = (p.vertebra_labels[k] == entry["label"])
    for side in (-1, 1):
        # Lateral to the transverse process tip and behind the body: the QL belongs to the posterior muscle mass.
        x_mm = side * 62.0
        col = int(round((x_mm - v.origin_mm[0]) / v.spacing_mm[2]))
        rows = np.arange(row_c, min(row_c + int(45 / v.spacing_mm[1]), structures.shape[0]))
        hit = [r for r in rows if muscle[r, col]]
        assert hit, side
        ql = labels[hit[0], col]
        back_row = min(row_c + int(70 / v.spacing_mm[1]), structures.shape[0] - 1)
        back = labels[back_row, col_c + side * int(30 / v.spacing_mm[2])]  # erector spinae
        assert ql == back != 0, side
        touching = ndimage.binary_dilation(labels == ql, iterations=2) & bone
        assert touching.any(), side


def test_vertebra_z_is_the_body_inferior_endplate(phantoms):
    p = phantoms["normal"]
    z = p.volume.z_mm
    dz = p.volume.spacing_mm[0]
    assert "BODY" in p.ground_truth["vertebra_z_definition"]
    lowest_any = []
    for name in ("L1", "L2", "L3", "L4"):
        entry = p.ground_truth["vertebrae"][name]
        body = ((p.vertebra_labels == entry["label"]) & (p.body_disc_labels == 1)).any(axis=(1, 2))
        ks = np.nonzero(body)[0]
        assert entry["z_inferior_mm"] - 1e-6 <= z[ks.min()] < entry["z_inferior_mm"] + dz + 1e-6, name
        whole = np.nonzero((p.vertebra_labels == entry["label"]).any(axis=(1, 2)))[0]
        lowest_any.append(z[whole.min()] < z[ks.min()])
    assert all(lowest_any)  # posterior elements keep their label below the body


def test_rib_bones_match_variant():
    p = make_phantom("t12_rib_aplasia", seed=5, matrix=128, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")
    q = make_phantom("normal", seed=5, matrix=128, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")
    assert p.ground_truth["twelfth_rib_length_mm"] == 0.0 and q.ground_truth["twelfth_rib_length_mm"] > 38.0
    # Same seed, same person: the only difference is the twelfth rib pair, beside T12/L1.
    bone = (Structure.CORTICAL, Structure.CANCELLOUS)
    diff = np.isin(q.structure_labels, bone) & ~np.isin(p.structure_labels, bone)
    assert diff.sum() > 20
    ks = np.nonzero(diff.any(axis=(1, 2)))[0]
    t12 = q.ground_truth["vertebrae"]["T12"]
    z = q.volume.z_mm
    assert z[ks].max() <= t12["z_superior_mm"] + 10 and z[ks].min() >= t12["z_inferior_mm"] - 60


def test_chest_only_has_no_l3_and_l3_edge_has_it():
    chest = make_phantom("normal", seed=2, matrix=96, slice_thickness_mm=5.0, scan_range="chest_only")
    assert chest.ground_truth["l3_inferior_endplate_z_mm"] is None
    assert chest.ground_truth["l3_slice_index"] is None and chest.ground_truth["areas_cm2"] is None
    edge = make_phantom("normal", seed=2, matrix=96, slice_thickness_mm=5.0, scan_range="l3_edge")
    assert edge.ground_truth["l3_slice_index"] in (0, 1)


def test_determinism():
    a = make_phantom("sacralization", seed=4, **SMALL)
    b = make_phantom("sacralization", seed=4, **SMALL)
    c = make_phantom("sacralization", seed=5, **SMALL)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.tissue_labels, b.tissue_labels)
    assert np.array_equal(a.vertebra_labels, b.vertebra_labels)
    assert a.ground_truth == b.ground_truth
    assert a.volume.hu.shape != c.volume.hu.shape or not np.array_equal(a.volume.hu, c.volume.hu)
    assert a.patient != c.patient


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
def test_dicom_round_trip_geometry(tmp_path: Path, position: str):
    p = make_phantom("normal", seed=3, matrix=96, slice_thickness_mm=5.0, scan_range="l3_edge", position=position)
    paths = write_dicom_series(p, tmp_path / "dicom")
    assert len(paths) == p.volume.shape[0]
    v = read_dicom_folder(tmp_path / "dicom")
    assert v.shape == p.volume.shape
    assert np.allclose(v.z_mm, p.volume.z_mm, atol=1e-3)
    assert np.allclose(v.origin_mm, p.volume.origin_mm, atol=1e-3)
    assert np.allclose(v.spacing_mm, p.volume.spacing_mm, atol=1e-4)
    assert np.array_equal(v.hu, p.volume.hu)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_are_lossless(tmp_path: Path, syntax):
    p = make_phantom("normal", seed=3, matrix=64, slice_thickness_mm=5.0, scan_range="l3_edge")
    write_dicom_series(p, tmp_path, transfer_syntax=syntax)
    assert np.array_equal(read_dicom_folder(tmp_path).hu, p.volume.hu)


@pytest.mark.dciodvfy
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("syntax", [None, JPEG2000Lossless])
def test_dicom_passes_dciodvfy(tmp_path: Path, syntax):
    p = make_phantom("normal", seed=6, matrix=64, slice_thickness_mm=5.0, scan_range="l3_edge", phase="portal")
    kwargs = {"transfer_syntax": syntax} if syntax else {}
    paths = write_dicom_series(p, tmp_path, **kwargs)
    for path in (paths[0], paths[-1]):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
        assert not errors, errors


def test_main_phantom_writes_everything(tmp_path: Path):
    out = main_phantom("four_lumbar", 8, tmp_path / "case", matrix=64, slice_thickness_mm=5.0)
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["variant"] == "four_lumbar" and truth["lumbar_count"] == 4
    assert {"skeletal_muscle", "imat", "vat", "sat"} <= set(truth["areas_cm2"] or {})
    assert truth["tissue_definition"]["sat"]["compartment"] == "subcutaneous"
    assert truth["compartment_names"] == {"1": "muscle", "2": "visceral", "3": "subcutaneous"}
    assert sorted(p.name for p in (out / "nifti").iterdir()) == [
        "compartments.nii.gz", "ct.nii.gz", "structures.nii.gz", "tissues.nii.gz", "vertebrae.nii.gz",
        "vertebral_bodies_and_discs.nii.gz"]
    assert len(list((out / "dicom").iterdir())) == read_dicom_folder(out / "dicom").shape[0]


def test_gantry_tilt_is_written_and_rejected_downstream(tmp_path: Path):
    p = make_phantom("normal", seed=3, matrix=64, slice_thickness_mm=5.0, scan_range="l3_edge", gantry_tilt_deg=5.0)
    paths = write_dicom_series(p, tmp_path)
    import pydicom

    assert float(pydicom.dcmread(paths[0]).GantryDetectorTilt) == 5.0
    with pytest.raises(SeriesRejected):
        read_dicom_folder(tmp_path)


def test_arms_are_not_l3_tissue():
    down = make_phantom("normal", seed=9, matrix=128, slice_thickness_mm=5.0, scan_range="abdomen_pelvis", arms="down")
    k = down.ground_truth["l3_slice_index"]
    arm = np.isin(down.structure_labels[k], (Structure.ARM_MUSCLE, Structure.ARM_FAT))
    assert arm.sum() > 50
    assert not down.tissue_labels[k][arm].any()


def test_random_acquisition_is_seeded_and_valid():
    from l3node.phantom import random_acquisition
    from l3node.phantom.acquisition import KERNELS, PHASES, POSITIONS, SCAN_RANGES

    a = random_acquisition(np.random.default_rng(1))
    assert a == random_acquisition(np.random.default_rng(1))
    draws = [random_acquisition(np.random.default_rng(s)) for s in range(40)]
    assert all(d["scan_range"] in SCAN_RANGES and d["position"] in POSITIONS for d in draws)
    assert all(d["kernel"] in KERNELS and d["phase"] in PHASES for d in draws)
    assert all(0.625 <= d["slice_thickness_mm"] <= 5.0 and d["gantry_tilt_deg"] == 0.0 for d in draws)
    assert len({d["slice_thickness_mm"] for d in draws}) > 3
