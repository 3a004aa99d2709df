"""L3 location by counting vertebrae: real CT from ../shared/data and phantoms of every variant class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from l3node.analysis.locate_l3 import L3Status, Variant, inferior_endplate_z_from_labels, locate_l3
from l3node.analysis.spine import analyse_spine
from l3node.analysis.spine_column import VertebraFound, _half_width_mm
from l3node.analysis.spine_grid import WorkingGrid
from l3node.analysis.volume import Volume, read_label_nifti, read_nifti
from l3node.config import AnalysisConfig
from l3node.train.evaluate_l3 import L3Case, case_from_folder, evaluate_l3, main_evaluate_l3, score_case

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RIBS = AnalysisConfig(variant_convention="count_from_ribs")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT not available: {path} (shared/data beside the repository)")
    return path


# ----------------------------------------------------------------------------- real CT


def test_real_abdomen_ct_l3_within_10_mm():
    folder = _need(DATA / "ts_example_ct")
    volume = read_nifti(folder / "ct.nii.gz")
    labels = read_label_nifti(folder / "vertebrae.nii.gz")
    truth = inferior_endplate_z_from_labels(labels, volume, 29)  # 29 = L3 (TotalSegmentator)
    result = locate_l3(volume)
    assert result.status is not L3Status.NOT_IN_FIELD_OF_VIEW
    assert result.z_mm is not None and abs(result.z_mm - truth) < 10.0
    assert result.slice_index == volume.slice_index_at(result.z_mm)
    assert len(result.vertebrae) >= 5


def _resliced(volume: Volume, dz: float) -> Volume:
    """The volume resampled to ``dz`` mm slices (Gaussian slab profile when thicker): a derived
    variant for robustness, not a new patient."""
    old = volume.spacing_mm[0]
    hu = ndi.gaussian_filter1d(volume.hu, (dz / old) / 2.355, axis=0) if dz > old else volume.hu
    k = np.arange(int(np.floor((volume.shape[0] - 1) * old / dz)) + 1) * dz / old
    grid = np.meshgrid(k, np.arange(volume.shape[1]), np.arange(volume.shape[2]), indexing="ij")
    return Volume(ndi.map_coordinates(hu, grid, order=1).astype(np.float32),
                  (dz, *volume.spacing_mm[1:]), volume.origin_mm)


def _z_cropped(volume: Volume, z_lo: float, z_hi: float) -> Volume:
    k = np.nonzero((volume.z_mm >= z_lo) & (volume.z_mm <= z_hi))[0]
    return Volume(np.ascontiguousarray(volume.hu[k]), volume.spacing_mm,
                  (volume.origin_mm[0], volume.origin_mm[1], float(volume.z_mm[k[0]])))


@pytest.mark.parametrize("derive", ["5 mm slices", "1.5 mm slices", "no ribs: up to mid-L1", "from the top of S1"])
def test_real_abdomen_ct_resliced_or_cropped_keeps_l3(derive):
    """The real CT resliced, or cropped to one anchor. Its column runs off the bottom of the
    scan and pelvic pieces lie below the sacrum: the iliac bones were missed at 1.5 and 5 mm
    (their wings then read as ribs, no slice or one 95 mm off), and the sacrum was found at
    none of them (its top hidden behind those pieces)."""
    folder = _need(DATA / "ts_example_ct")
    volume = read_nifti(folder / "ct.nii.gz")
    truth = inferior_endplate_z_from_labels(read_label_nifti(folder / "vertebrae.nii.gz"), volume, 29)
    derived = {
        "5 mm slices": lambda: _resliced(volume, 5.0),
        "1.5 mm slices": lambda: _resliced(volume, 1.5),
        "no ribs: up to mid-L1": lambda: _z_cropped(volume, -1e9, 377.0),  # L1 spans 352-403 mm
        "from the top of S1": lambda: _z_cropped(volume, 240.0, 1e9),
    }[derive]()
    result = locate_l3(derived)
    assert result.z_mm is not None and abs(result.z_mm - truth) < 10.0, (result.method, result.notes)


def test_real_abdomen_ct_cut_anywhere_below_l3_never_names_a_wrong_level():
    """Scans that start anywhere from the sacrum to L4 (the real CT cut every 3 mm): each gives L3
    within 10 mm or no slice. Cut at 250 mm, T12 and L1 were read as one 59 mm "T12" and L4 was
    named L3 (25 mm off, confidence 0.75); a vertebra that tall now puts the count in doubt."""
    folder = _need(DATA / "ts_example_ct")
    volume = read_nifti(folder / "ct.nii.gz")
    truth = inferior_endplate_z_from_labels(read_label_nifti(folder / "vertebrae.nii.gz"), volume, 29)
    named = 0
    for z_lo in np.arange(205.0, 290.0, 3.0):
        result = locate_l3(_z_cropped(volume, z_lo, 1e9))
        if result.z_mm is not None:
            named += 1
            assert abs(result.z_mm - truth) < 10.0, (z_lo, result.z_mm, result.method, result.notes)
    assert named >= 20  # most cuts keep a countable column (measured: 22 of 29)


def test_real_abdomen_ct_counts_agree():
    """Both anchors are in view: the twelfth ribs and the sacrum (under pelvic pieces) agree."""
    volume = read_nifti(_need(DATA / "ts_example_ct") / "ct.nii.gz")
    result = locate_l3(volume)
    assert result.rib_count_z_mm is not None and result.rib_count_z_mm == result.sacrum_count_z_mm
    assert result.status is L3Status.FOUND


def test_real_chest_cta_is_not_in_field_of_view():
    volume = read_nifti(_need(DATA / "ts_chest_cta_no_l3") / "ct.nii.gz")
    result = locate_l3(volume)
    assert result.status is L3Status.NOT_IN_FIELD_OF_VIEW
    assert result.z_mm is None and result.slice_index is None


def test_real_t11_to_l2_crop_is_not_in_field_of_view():
    volume = read_nifti(_need(DATA / "ts_example_ct_sm") / "ct.nii.gz")
    result = locate_l3(volume)
    assert result.status is L3Status.NOT_IN_FIELD_OF_VIEW and result.z_mm is None


def test_endplate_from_labels_matches_references_and_orientation():
    ts = _need(DATA / "ts_example_ct")
    volume = read_nifti(ts / "ct.nii.gz")
    labels = read_label_nifti(ts / "vertebrae.nii.gz")
    bodies = read_label_nifti(ts / "vertebral_bodies_and_discs.nii.gz") == 1
    assert inferior_endplate_z_from_labels(labels, volume, 29) == pytest.approx(299.8, abs=0.1)
    assert inferior_endplate_z_from_labels(labels, volume, 29, bodies) == pytest.approx(299.8, abs=0.1)
    # TPTBox crop is stored PIR: the reader reorients it; posterior elements hang below the body.
    crop = _need(DATA / "tptbox_l3_crop")
    volume = read_nifti(crop / "sub-ct_label-22_ct.nii.gz")
    vert = read_label_nifti(crop / "sub-ct_seg-vert_label-22_msk.nii.gz")
    sub = read_label_nifti(crop / "sub-ct_seg-subreg_label-22_msk.nii.gz")
    assert np.all(np.diff(volume.z_mm) > 0)
    assert inferior_endplate_z_from_labels(vert, volume, 22, sub == 49) == pytest.approx(-81.4, abs=0.2)
    assert inferior_endplate_z_from_labels(vert, volume, 22) == pytest.approx(-81.4, abs=1.6)
    with pytest.raises(ValueError):
        inferior_endplate_z_from_labels(vert, volume, 99)


def test_crop_without_rib_or_sacrum_never_invents_a_level():
    """A 110 mm crop around L2-L4 has no counting anchor: no named L3 slice is claimed."""
    crop = _need(DATA / "tptbox_l3_crop")
    result = locate_l3(read_nifti(crop / "sub-ct_label-22_ct.nii.gz"))
    assert result.status is not L3Status.FOUND
    assert result.confidence <= 0.3


# ----------------------------------------------------------------------------- phantoms

phantom = pytest.importorskip("l3node.phantom")

# One phantom per variant class (and both thoracolumbar mechanisms that need rib lengths).
CLASS_CASES = [
    ("normal", 11, Variant.NORMAL),
    ("t12_rib_hypoplasia", 12, Variant.THORACOLUMBAR),
    ("t12_rib_aplasia", 13, Variant.THORACOLUMBAR),
    ("lumbarization", 14, Variant.LUMBOSACRAL),
    ("six_lumbar", 15, Variant.NUMERIC),
    ("four_lumbar", 16, Variant.NUMERIC),
    ("combined", 17, Variant.COMBINED),
]


def _phantom(variant: str, seed: int, **options):
    opts = dict(matrix=256, slice_thickness_mm=3.0, scan_range="abdomen_pelvis", arms="up", position="HFS")
    opts.update(options)
    return phantom.make_phantom(variant, seed, **opts)


def _with_fused_disc(seed: int, upper: str = "T12", lower: str = "L1") -> tuple[Volume, float]:
    """A phantom whose ``upper``/``lower`` disc is filled with bone (a block vertebra, or a disc
    the column reader misses): the disc voxels take the 90th percentile of the bodies' HU there."""
    p = phantom.make_phantom("normal", seed, matrix=256, slice_thickness_mm=3.0, scan_range="abdomen_pelvis")
    label = {name: value for value, name in p.vertebra_names.items()}
    ks_upper = np.nonzero((p.vertebra_labels == label[upper]).any(axis=(1, 2)))[0]
    ks_lower = np.nonzero((p.vertebra_labels == label[lower]).any(axis=(1, 2)))[0]
    near = slice(max(ks_lower.max() - 3, 0), ks_upper.min() + 4)
    hu = p.volume.hu.copy()
    bodies, disc = p.body_disc_labels[near] == 1, p.body_disc_labels[near] == 2
    hu[near][disc] = np.percentile(hu[near][bodies], 90)
    return Volume(hu, p.volume.spacing_mm, p.volume.origin_mm), p.ground_truth["l3_inferior_endplate_z_mm"]


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_a_fused_t12_l1_disc_never_gives_a_wrong_l3(seed):
    """With T12 and L1 fused the rib count runs one level low unless the reader splits the block.
    Measured: seed 0 still finds the disc (L3 0.1 mm off); seed 2 reads one 'vertebra' taller than
    any (before the tall-vertebra check: a slice 33.7 mm off); seed 5 a too-short one."""
    volume, truth = _with_fused_disc(seed)
    result = locate_l3(volume)
    assert result.z_mm is None or abs(result.z_mm - truth) < 10.0, (result.status, result.z_mm, truth, result.notes)


@pytest.mark.parametrize("variant,seed,expected", CLASS_CASES)
def test_phantom_variant_located_and_classified(variant, seed, expected):
    p = _phantom(variant, seed)
    truth = p.ground_truth["l3_inferior_endplate_z_mm"]
    result = locate_l3(p.volume, RIBS)
    assert result.z_mm is not None, result.method
    assert abs(result.z_mm - truth) < 10.0, (result.method, result.notes)
    assert result.variant is expected, (result.method, result.notes)
    if expected is Variant.NORMAL:
        assert result.status is L3Status.FOUND and result.confidence >= 0.9
    if expected in (Variant.LUMBOSACRAL, Variant.NUMERIC):
        # The counts disagree by a vertebra: both candidates reported, status uncertain.
        assert result.status is L3Status.UNCERTAIN and len(result.candidates_z_mm) == 2


def test_convention_picks_the_sacrum_count_when_asked():
    p = _phantom("six_lumbar", 15)
    by_ribs = locate_l3(p.volume, RIBS)
    by_sacrum = locate_l3(p.volume, AnalysisConfig(variant_convention="count_from_sacrum"))
    assert by_ribs.sacrum_count_z_mm == pytest.approx(by_sacrum.z_mm)
    assert by_ribs.rib_count_z_mm == pytest.approx(by_ribs.z_mm)
    assert abs(by_sacrum.z_mm - by_ribs.z_mm) > 15  # one vertebra apart


def test_thoracic_ribs_found_when_pelvic_bone_looks_like_ribs():
    """Dev seed 2004 (1 mm slices): the canal track leaves the column in the pelvis and iliac
    bone beside merged "vertebrae" measured as long ribs used to end the rib walk there, so
    no thoracic rib was found and the answer was a refusal."""
    p = phantom.make_phantom("combined", 2004, matrix=256)
    truth = p.ground_truth["vertebrae"]
    spine = analyse_spine(p.volume)
    t11 = [v for v in spine.vertebrae if abs(v.z_inferior_mm - truth["T11"]["z_inferior_mm"]) < 10]
    assert t11 and t11[0].rib_mm >= 38.0
    result = locate_l3(p.volume, RIBS)
    assert result.status is not L3Status.NOT_IN_FIELD_OF_VIEW, result.method
    t12 = [v for v in result.vertebrae if v.name == "T12"]
    assert t12 and abs(t12[0].z_inferior_mm - truth["T12"]["z_inferior_mm"]) < 10


def test_l3_without_a_measured_body_is_counted_but_not_given_a_slice():
    """Below L2 the canal track may run in front of the spine (no body measured there, half
    width at the floor): an endplate cut among those segments may be a level off, so no
    slice -- but not 'not in view' either."""
    from dataclasses import replace

    from l3node.analysis.locate_l3 import _decide
    from l3node.analysis.spine import SpineAnalysis
    from l3node.analysis.spine_column import MIN_HALF_WIDTH_MM

    volume = Volume(np.zeros((100, 4, 4), np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # z 0..198
    zs = [165.0, 132.0, 99.0, 66.0, 33.0, 2.0]
    vs = [_vertebra(z, rib=r, half_width_mm=20.0) for z, r in zip(zs, (150.0, 90.0, 0.0, 0.0, 0.0, 0.0))]
    spine = SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0))
    assert _decide(volume, spine, RIBS).z_mm == pytest.approx(33.0)
    vs[4] = replace(vs[4], half_width_mm=MIN_HALF_WIDTH_MM)
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0)), RIBS)
    assert result.status is L3Status.UNCERTAIN and result.confidence <= 0.3
    assert result.z_mm is None and result.slice_index is None


def test_a_split_body_between_t12_and_l3_stops_the_count():
    """Two 7 mm "vertebrae" where one body should be (a false disc in a low-density body, seen
    on the real T11-L2 crop): counting through them would name L1 or L2 "L3"."""
    from l3node.analysis.locate_l3 import _decide
    from l3node.analysis.spine import SpineAnalysis

    volume = Volume(np.zeros((100, 4, 4), np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # z 0..198
    vs = [_vertebra(165.0, rib=150.0), _vertebra(132.0, rib=90.0), _vertebra(115.0, height=7.0),
          _vertebra(99.0, height=7.0), _vertebra(66.0), _vertebra(33.0), _vertebra(2.0)]
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0)), RIBS)
    assert result.z_mm is None and result.status is L3Status.UNCERTAIN
    assert any("short" in n for n in result.notes)


def _share_of_slices_tracked_in_the_canal(p: phantom.Phantom) -> float:
    """Share of working slices whose canal track lies within 8 mm of the phantom's canal."""
    from l3node.analysis.spine_grid import track_canal, working_grid

    grid = working_grid(p.volume)
    track = track_canal(grid)
    f = [int(round(a / b)) for a, b in zip(grid.spacing_mm, p.volume.spacing_mm)]
    canal = p.structure_labels == next(k for k, v in p.structure_names.items() if v == "canal")
    errors = []
    for k in range(grid.hu.shape[0]):
        m = canal[min(k * f[0] + f[0] // 2, canal.shape[0] - 1)]
        if m.sum() > 3:
            r, c = np.argwhere(m).mean(axis=0) / (f[1], f[2])
            errors.append(np.hypot((track.row[k] - r) * grid.spacing_mm[1], (track.col[k] - c) * grid.spacing_mm[2]))
    return float(np.mean(np.array(errors) < 8.0))


@pytest.mark.parametrize("seed,nucleus", [(6006, False), (60006, True), (60017, False)])
def test_canal_tracked_in_osteoporotic_bone_beside_an_enhancing_aorta(seed, nucleus):
    """Portal phase, aged 78-87, cancellous bone about 120 HU. Fresh seed 6006 (1.25 mm, sharp
    kernel): that bone looked like canal content and the aorta in front of the body like its
    wall; the track left the canal for the gap between them and every variant was refused.
    Counted from 120 HU, half of the body in front of the canal was missing, and the track took
    the same gap (the canal within 8 mm on 67 and 74 % of the slices): seed 60006 with disc
    nuclei (5 mm slices) lost the sacrum and split L3 in two, no slice given; seed 60017 (3 mm)
    was "not in field of view" although L3 is in the scan."""
    p = phantom.make_phantom("normal", seed, matrix=256, disc_nucleus=nucleus)
    assert _share_of_slices_tracked_in_the_canal(p) > 0.97
    result = locate_l3(p.volume, RIBS)
    assert result.z_mm is not None and abs(result.z_mm - p.ground_truth["l3_inferior_endplate_z_mm"]) < 10


def test_a_contrast_filled_stomach_is_not_an_iliac_crest():
    """Fresh seed 6002 (chest only, 0.625 mm, oral contrast): the stomach passed every shape
    test of an ilium, the false crest ended the rib search above T10, and L3 was invented."""
    p = phantom.make_phantom("lumbarization", 6002, matrix=256)
    assert p.ground_truth["l3_inferior_endplate_z_mm"] is None
    spine = analyse_spine(p.volume)
    assert spine.iliac_crest_z_mm is None
    result = locate_l3(p.volume, RIBS)
    assert result.status is L3Status.NOT_IN_FIELD_OF_VIEW and result.z_mm is None


def test_thick_slices_ending_at_l3_get_its_slice():
    """Fresh seed 6000: 5 mm slices, the scan ends 3 mm below L3's endplate. The measured
    endplate sits up to a slice above the true one, which is not 'well inside the scan'."""
    p = phantom.make_phantom("normal", 6000, matrix=256)
    truth = p.ground_truth["l3_inferior_endplate_z_mm"]
    assert truth is not None and p.ground_truth["acquisition"]["spacing_mm"] == 5.0
    result = locate_l3(p.volume, RIBS)
    assert result.z_mm is not None and abs(result.z_mm - truth) < 10


def _vertebra(z_inf: float, height: float = 25.0, disc: float = 8.0, rib: float = 0.0, **kw):
    from l3node.analysis.spine import VertebraFound

    return VertebraFound(z_inf, z_inf + height, disc, 60.0, 64.0, 90.0, rib_left_mm=rib, rib_right_mm=rib, **kw)


def test_l3_cut_by_the_scan_edge_is_not_in_field_of_view():
    """Counted L3 is the lowest vertebra, shorter than L2 (the scan cut it): no slice.

    A lowest L3 as high as L2 (a scan ending at its endplate) gets its slice, uncertain.
    """
    from l3node.analysis.locate_l3 import _decide
    from l3node.analysis.spine import SpineAnalysis

    volume = Volume(np.zeros((100, 4, 4), np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # z 0..198
    # T11, T12 (ribs), L1, L2, and L3 whose lower part is cut away (16 of 25 mm seen).
    zs = [165.0, 132.0, 99.0, 66.0, 25.0]
    vs = [_vertebra(z, rib=r) for z, r in zip(zs, (150.0, 90.0, 0.0, 0.0, 0.0))]
    vs[-1] = _vertebra(1.0, height=16.0, disc=0.0, inferior_seen=False)
    spine = SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0))
    result = _decide(volume, spine, RIBS)
    assert result.status is L3Status.NOT_IN_FIELD_OF_VIEW and result.z_mm is None
    vs[-1] = _vertebra(1.0, height=25.0, disc=0.0, inferior_seen=False)
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0)), RIBS)
    assert result.status is L3Status.UNCERTAIN and result.z_mm == pytest.approx(1.0)
    assert result.confidence <= 0.4
    # The same L3 with L4 below it and its disc well inside: found, at L3's endplate.
    zs = [165.0, 132.0, 99.0, 66.0, 33.0, 2.0]
    vs = [_vertebra(z, rib=r) for z, r in zip(zs, (150.0, 90.0, 0.0, 0.0, 0.0, 0.0))]
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0)), RIBS)
    assert result.z_mm == pytest.approx(33.0) and result.slice_index is not None


def test_a_one_sided_rib_below_a_ribless_level_does_not_move_t12():
    """A short unilateral 'rib' two levels below the twelfth rib is not a rib (seen on prone scans)."""
    from l3node.analysis.locate_l3 import read_anatomy
    from l3node.analysis.spine import SpineAnalysis

    ribs = (240.0, 90.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    vs = [_vertebra(200.0 - 33 * i, rib=r) for i, r in enumerate(ribs)]
    vs[3] = _vertebra(200.0 - 99, rib=0.0)
    from dataclasses import replace

    vs[3] = replace(vs[3], rib_left_mm=50.0)
    spine = SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 300.0))
    assert read_anatomy(spine).t12 == 1
    vs[3] = replace(vs[3], rib_right_mm=80.0, rib_left_mm=80.0)  # bilateral: a missed level between
    assert read_anatomy(SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 300.0))).t12 == 3


def test_short_rib_pieces_above_the_cage_do_not_stop_the_walk_to_t12():
    """A short piece high up (first rib, cut rib) across missed levels is not the last rib."""
    from l3node.analysis.locate_l3 import read_anatomy
    from l3node.analysis.spine import SpineAnalysis

    ribs = (60.0, 0.0, 0.0, 250.0, 150.0, 0.0, 0.0, 0.0)
    vs = [_vertebra(250.0 - 33 * i, rib=r) for i, r in enumerate(ribs)]
    assert read_anatomy(SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 300.0))).t12 == 4


def test_lowest_endplate_well_inside_the_scan_with_nothing_below_is_not_answered():
    """Endplate and disc seen far above the scan's bottom but no vertebra below: the count
    is in doubt (a missed level), so no slice is given -- unlike a scan ending at the endplate."""
    from l3node.analysis.locate_l3 import _decide
    from l3node.analysis.spine import SpineAnalysis

    volume = Volume(np.zeros((100, 4, 4), np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # z 0..198
    zs = [165.0, 132.0, 99.0, 66.0, 25.0]
    vs = [_vertebra(z, rib=r) for z, r in zip(zs, (150.0, 90.0, 0.0, 0.0, 0.0))]
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0)), RIBS)
    assert result.status is L3Status.NOT_IN_FIELD_OF_VIEW and result.z_mm is None
    # Measured endplate 2 mm above the scan's edge (blurred last block): measured to the edge.
    vs[-1] = _vertebra(2.0, height=21.0, disc=0.0)
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, (0.0, 198.0), (0.0, 198.0)), RIBS)
    assert result.status is L3Status.UNCERTAIN and result.z_mm == pytest.approx(2.0)


def test_vertebrae_are_reported_with_names_and_z_ranges():
    p = _phantom("normal", 11)
    result = locate_l3(p.volume, RIBS)
    names = [v.name for v in result.vertebrae]
    assert {"T12", "L1", "L2", "L3", "L4", "L5"} <= set(names)
    l3 = result.vertebrae[names.index("L3")]
    assert l3.z_inferior_mm == pytest.approx(result.z_mm)
    assert all(v.z_superior_mm > v.z_inferior_mm for v in result.vertebrae)
    truth = p.ground_truth["vertebrae"]
    for name in ("L1", "L2", "L4"):
        assert abs(result.vertebrae[names.index(name)].z_inferior_mm - truth[name]["z_inferior_mm"]) < 10


# ----------------------------------------------------------------------------- metrics


def _flat_volume() -> Volume:
    return Volume(np.zeros((10, 4, 4), np.float32), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def test_score_case_uses_slice_distance_and_not_in_view_rule():
    from l3node.analysis.locate_l3 import L3Location

    volume = _flat_volume()
    found = L3Location(L3Status.FOUND, 9.9, 5, 0.9, Variant.NORMAL, "test")
    case = L3Case("a", lambda: volume, 4.1, "normal")
    scored = score_case(case, volume, found)
    assert scored.error_mm == pytest.approx(6.0)  # slices 2 and 5, 2 mm apart
    assert scored.success and scored.variant_correct
    absent = L3Location(L3Status.NOT_IN_FIELD_OF_VIEW, None, None, 0.8, Variant.UNKNOWN, "test")
    assert score_case(L3Case("b", lambda: volume, None), volume, absent).success
    assert not score_case(L3Case("c", lambda: volume, 4.0), volume, absent).success
    assert not score_case(L3Case("d", lambda: volume, None), volume, found).success


def test_case_folders_from_shared_data_are_read_with_their_truth():
    ts = case_from_folder(_need(DATA / "ts_example_ct"))
    assert ts.truth_z_mm == pytest.approx(299.8, abs=0.1) and ts.source == "real"
    assert case_from_folder(_need(DATA / "ts_chest_cta_no_l3")).truth_z_mm is None
    assert case_from_folder(_need(DATA / "tptbox_l3_crop")).truth_z_mm == pytest.approx(-81.4, abs=0.2)
    with pytest.raises(ValueError):
        case_from_folder(_need(DATA / "ts_example_ct_sm"))  # no vertebra labels


def test_main_evaluate_l3_on_real_cases(tmp_path, capsys):
    folders = [_need(DATA / "ts_example_ct"), _need(DATA / "ts_chest_cta_no_l3"), DATA / "ts_example_ct_sm"]
    assert main_evaluate_l3(folders, tmp_path) == 0
    printed = capsys.readouterr().out
    assert "| all | 2 |" in printed  # the unlabelled crop is skipped
    import csv

    with (tmp_path / "l3_evaluation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["success"] for r in rows] == ["True", "True"]  # within 10 mm; not in view
    assert float(rows[0]["error_mm"]) < 10 and rows[1]["status"] == "not_in_field_of_view"
    assert (tmp_path / "l3_evaluation_boxplot.png").stat().st_size > 1000
    assert main_evaluate_l3([], tmp_path / "empty") == 2


def test_evaluate_writes_table_csv_and_box_plot(tmp_path):
    p = _phantom("normal", 11)
    truth = p.ground_truth
    cases = [L3Case("normal-11", lambda: p.volume, truth["l3_inferior_endplate_z_mm"], truth["variant_class"])]
    evaluation = evaluate_l3(cases)
    paths = evaluation.write(tmp_path)
    table = paths["markdown"].read_text()
    assert "| all | 1 |" in table and "| normal | 1 |" in table
    assert paths["csv"].read_text().count("\n") == 2
    assert paths["box_plot"].stat().st_size > 1000


@pytest.mark.parametrize("variant", ["normal", "t12_rib_aplasia"])
def test_lumbar_named_vertebra_with_a_long_rib_gets_no_slice(variant):
    """Chest-only scan at 0.625 mm (seed 6002): ribs misread put "L3" in the chest; a vertebra
    counted as lumbar that carries a rib-cage rib makes the count inconsistent, so no slice."""
    case = phantom.make_phantom(variant, 6002, matrix=256)
    assert case.ground_truth["l3_inferior_endplate_z_mm"] is None  # chest only
    result = locate_l3(case.volume)
    assert result.z_mm is None and result.slice_index is None


def test_phantom_specs_balance_the_variant_classes():
    from collections import Counter

    from l3node.phantom.variants import VARIANT_CLASS
    from l3node.train.evaluate_l3 import phantom_specs

    specs = phantom_specs(per_class=6, first_seed=50)
    per_class = Counter(VARIANT_CLASS[v].value for v, _ in specs)
    assert set(per_class.values()) == {6} and len(per_class) == 5
    thoracolumbar = [s for v, s in specs if VARIANT_CLASS[v].value == "thoracolumbar"]
    assert sorted(thoracolumbar) == list(range(50, 56))  # one acquisition (seed) per case
    assert len(phantom_specs(per_variant=2)) == 2 * len(VARIANT_CLASS)


def test_phantoms_evaluated_in_two_processes_match_one(tmp_path, capsys):
    """``--workers 2`` gives the same per-case results; the class is judged where the scan
    shows both junctions (T11-T12 and the top of the sacrum)."""
    from l3node.train.evaluate_l3 import evaluate_phantoms

    specs = [("normal", 11), ("sacralization", 12)]
    one = evaluate_phantoms(specs, workers=1, matrix=128)
    two = evaluate_phantoms(specs, workers=2, matrix=128)
    assert [(r.name, r.predicted_z_mm, r.status) for r in one] == [(r.name, r.predicted_z_mm, r.status) for r in two]
    assert all(r.class_in_view is not None for r in one)
    assert main_evaluate_l3([], tmp_path, phantoms_per_class=1, first_seed=11, workers=2) == 0
    printed = capsys.readouterr().out
    assert "| all | 5 |" in printed and "T11-sacrum in scan" in printed


@pytest.mark.parametrize("variant", ["six_lumbar", "lumbarization"])
def test_chest_scan_whose_cage_ribs_were_missed_gets_no_invented_l3(variant):
    """Seed 20021 (chest only, 3 mm, age 76): the ribs of T1-T11 were measured short, T7's
    was taken for the twelfth, and "L3" fell on T10 although the lowest level seen carries a
    pair of normal ribs. A rib pair from L2 down is impossible: every reading puts L3 below."""
    p = phantom.make_phantom(variant, 20021, matrix=256)
    assert p.ground_truth["l3_inferior_endplate_z_mm"] is None
    result = locate_l3(p.volume, RIBS)
    assert result.status is L3Status.NOT_IN_FIELD_OF_VIEW and result.z_mm is None


def test_a_short_one_sided_last_rib_is_settled_by_the_sacrum_count():
    """Seed 20012: bowel contrast beside L1 measured as a 45 mm rib on one side made L1 the
    "T12" (one level off); the sacrum count, one level higher, reads it as an L1 rib."""
    from l3node.analysis.locate_l3 import read_anatomy
    from l3node.analysis.spine import SpineAnalysis

    vs = [_vertebra(260.0 - 33 * i, rib=r) for i, r in enumerate((300.0, 200.0, 90.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))]
    from dataclasses import replace

    vs[3] = replace(vs[3], rib_left_mm=45.0)
    vs[-1] = replace(vs[-1], sacral=True)
    spine = SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 300.0))
    assert read_anatomy(spine).t12 == 3  # the walk alone stops at the one-sided rib
    volume = Volume(np.zeros((170, 4, 4), np.float32), (2.0, 1.0, 1.0), (-60.0, 0.0, 0.0))  # z -60..278
    from l3node.analysis.locate_l3 import _decide

    result = _decide(volume, spine, RIBS)
    assert result.z_mm == pytest.approx(260.0 - 33 * 5) and result.variant is Variant.THORACOLUMBAR
    vs[3] = replace(vs[3], rib_right_mm=45.0)  # a pair: a normal twelfth rib, the counts disagree
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 300.0)), RIBS)
    assert result.status is L3Status.UNCERTAIN and result.z_mm == pytest.approx(260.0 - 33 * 6)


def test_counts_many_levels_apart_name_no_slice():
    """Seed 20039: the left ribs all missed, T12 read at T4; counting down from there and up
    from the sacrum disagreed by 8 levels and the configured rib count put "L3" in the chest.
    Variants shift a count by one or two levels; more is a misread anchor: no slice."""
    from dataclasses import replace

    from l3node.analysis.locate_l3 import _decide
    from l3node.analysis.spine import SpineAnalysis

    vs = [_vertebra(400.0 - 33 * i, rib=r) for i, r in enumerate([250.0, 90.0] + [0.0] * 10)]
    vs[-1] = replace(vs[-1], sacral=True)
    volume = Volume(np.zeros((260, 4, 4), np.float32), (2.0, 1.0, 1.0), (-120.0, 0.0, 0.0))
    result = _decide(volume, SpineAnalysis(tuple(vs), (), None, None, None, (-120.0, 400.0)), RIBS)
    assert result.z_mm is None and result.status is L3Status.UNCERTAIN
    assert result.rib_count_z_mm is not None and result.sacrum_count_z_mm is not None


def _body_grid(beside: str) -> tuple[WorkingGrid, VertebraFound]:
    """A blurred elliptical body (half width 18 mm, cortex 300 HU, cancellous 150 HU) in fat,
    with portal-phase liver (110 HU) on the patient's right and a 7 mm strip of crus/vessel
    (110 HU) on its left when ``beside == "organs"``."""
    d = 1.95
    rows, cols = np.mgrid[0:80, 0:80]
    x, y = (cols - 40) * d, (rows - 40) * d
    r = np.hypot(x / 18.0, y / 15.0)
    sl = np.full((80, 80), -90.0)
    if beside == "organs":
        sl[(x < 0) & (np.abs(y) < 35)] = 110.0
        sl[(x > 0) & (x < 25) & (np.abs(y) < 12)] = 110.0
    sl[r <= 1.0] = 300.0
    sl[r <= 1.0 - 2.0 / 18] = 150.0
    sl = ndi.gaussian_filter(sl, 0.8)
    grid = WorkingGrid(np.repeat(sl[None], 12, axis=0), (2.5, d, d), (0.0, 0.0, 0.0))
    return grid, VertebraFound(z_inferior_mm=2.5, z_superior_mm=25.0, disc_below_mm=8.0, row=40.0, col=40.0,
                               canal_row=52.0)


@pytest.mark.parametrize("beside", ["fat", "organs"])
def test_body_width_stops_at_the_cortex_when_organs_touch_it(beside):
    # Liver and crura of muscle-to-bone HU beside T11-L1 made bodies 8 mm too wide, which put
    # the rib seeds beyond the rib necks: the eleventh and twelfth ribs were never found.
    grid, v = _body_grid(beside)
    assert abs(_half_width_mm(grid, v, (-3.0, 3.0), soft_mm=2.5) - 18.0) <= 2.5


def test_thin_lower_ribs_in_coarse_working_voxels_are_found():
    # Sharp kernel, 1.5 mm slices, 3.3 mm working voxels: the eleventh rib neck (6.4 mm thick)
    # averages to 210-290 HU, below the cortical seed level; it was missed on both sides and
    # the normal spine was read as "T12 rib aplasia" with L3 one vertebra too low.
    p = phantom.make_phantom("normal", 30081, matrix=256)
    truth = p.ground_truth["vertebrae"]["T11"]
    spine = analyse_spine(p.volume)
    mid = (truth["z_inferior_mm"] + truth["z_superior_mm"]) / 2
    t11 = [v for v in spine.vertebrae if v.z_inferior_mm <= mid <= v.z_superior_mm]
    assert len(t11) == 1 and min(t11[0].rib_left_mm, t11[0].rib_right_mm) >= 38.0
    result = locate_l3(p.volume, RIBS)
    assert result.status is L3Status.FOUND and abs(result.z_mm - p.ground_truth["l3_inferior_endplate_z_mm"]) < 10


def test_scan_ending_at_the_l3_endplate_gets_its_last_slice():
    # The scan's last slice holds the L3 endplate (1.2 mm slices); the working grid measured
    # the endplate 1.3 mm below it, so the answer used to be "not in field of view".
    p = phantom.make_phantom("four_lumbar", 30106, matrix=256)
    truth = p.ground_truth["l3_inferior_endplate_z_mm"]
    assert p.ground_truth["l3_slice_index"] == 0
    result = locate_l3(p.volume, RIBS)
    assert result.status is L3Status.UNCERTAIN and result.slice_index is not None
    assert abs(result.z_mm - truth) < 10


def test_a_twelfth_rib_measured_into_the_eleventh_is_read_by_its_shorter_side():
    """Thick slices join a lower rib to the rib above through the transverse process; the
    joined side measures long, never the other side, so the shorter side names the rib."""
    from dataclasses import replace

    from l3node.analysis.locate_l3 import read_anatomy
    from l3node.analysis.spine import SpineAnalysis

    def reading(levels):
        vs = [_vertebra(250.0 - 33 * i) for i in range(8)]
        for i, (left, right) in levels.items():
            vs[i] = replace(vs[i], rib_left_mm=left, rib_right_mm=right)
        return read_anatomy(SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 300.0)))

    cage = {0: (300.0, 300.0), 1: (220.0, 216.0)}
    # T12 (truth 90 mm) measured 103 / 208: a twelfth rib, not an eleventh above a rib-less T12.
    r = reading({**cage, 2: (103.0, 208.0)})
    assert (r.t12, r.thoracolumbar) == (2, None)
    # L1 stub (30 mm) measured 30 / 119 below a twelfth-rib pair: a rudimentary L1 rib.
    r = reading({**cage, 2: (134.0, 130.0), 3: (30.0, 119.0)})
    assert (r.t12, r.thoracolumbar) == (2, "l1_rib")
    # L1 stubs measured along the twelfth rib to its tip: nearly as long as the pair above.
    r = reading({**cage, 2: (76.0, 76.0), 3: (63.0, 63.0)})
    assert (r.t12, r.thoracolumbar) == (2, "l1_rib")
    r = reading({**cage, 2: (102.0, 101.0), 3: (0.0, 96.0)})
    assert (r.t12, r.thoracolumbar) == (2, "l1_rib")
    # A twelfth pair well short of the eleventh above is a twelfth pair.
    r = reading({0: (300.0, 300.0), 1: (300.0, 290.0), 2: (190.0, 195.0), 3: (140.0, 138.0)})
    assert (r.t12, r.thoracolumbar) == (3, None)
    # The same stub below an eleventh-rib pair is a hypoplastic twelfth rib.
    r = reading({**cage, 2: (30.0, 119.0)})
    assert (r.t12, r.thoracolumbar) == (2, "t12_rib_hypoplasia")


def test_a_thin_disc_dips_less_in_the_body_profile_than_normal_discs():
    """A rudimentary 3 mm disc, blurred by 5 mm slices, dips much less than 10 mm discs:
    its trough depth (not its measured height) is the sign of a transitional level."""
    from l3node.analysis.spine_column import find_discs

    dz = 1.5
    z = np.arange(0.0, 200.0, dz)
    signal = np.full_like(z, 300.0)
    for top, height in ((40.0, 10.0), (75.0, 10.0), (110.0, 10.0), (145.0, 3.0)):
        signal[(z >= top) & (z < top + height)] = 100.0
    blurred = ndi.gaussian_filter1d(signal, 5.0 / 2.355 / dz)  # 5 mm slice profile (FWHM)
    discs = find_discs(blurred, dz, 0, len(z) - 1)
    assert len(discs) == 4
    depths = [d[3] for d in discs]
    assert depths[3] < 0.5 * float(np.median(depths[:3]))
    assert min(depths[:3]) > 0.9 * max(depths[:3])


@pytest.mark.parametrize("junction_depth,expected", [(60.0, "thin_disc"), (140.0, None)])
def test_a_shallow_disc_above_the_sacrum_is_a_lumbosacral_sign(junction_depth, expected):
    """Lumbarised S1 whose transverse processes look ordinary and whose thin disc was
    measured as tall as the others (phantom lumbarization-50014): the shallow trough alone
    names the transition; a junction disc as deep as the others names none."""
    from dataclasses import replace

    from l3node.analysis.locate_l3 import read_anatomy
    from l3node.analysis.spine import SpineAnalysis

    ribs = [250.0, 200.0, 90.0] + [0.0] * 7
    vs = [_vertebra(400.0 - 33 * i, rib=r, disc_below_depth_hu=150.0 + 5 * i, tp_volume_cm3=3.0)
          for i, r in enumerate(ribs)]
    vs[-2] = replace(vs[-2], disc_below_depth_hu=junction_depth)  # the disc above the sacrum
    vs[-1] = replace(vs[-1], sacral=True, disc_below_mm=0.0, disc_below_depth_hu=0.0)
    reading = read_anatomy(SpineAnalysis(tuple(vs), (), None, None, None, (0.0, 450.0)))
    assert reading.mobile_lumbar == 6
    assert reading.lumbosacral == expected


@pytest.mark.parametrize("variant,seed", [("normal", 50183), ("normal", 50090)])
def test_sacrum_found_when_noise_or_old_bone_breaks_the_line_to_the_alae(variant, seed):
    """1.5 mm sharp (50183) and 3 mm smooth osteoporotic (50090) scans: single voxels under
    100 HU between the sacral body and its alae hid the sacrum, so the class was "unknown".
    Below the iliac crests a one-voxel gap is bridged."""
    p = phantom.make_phantom(variant, seed, matrix=256)
    result = locate_l3(p.volume, RIBS)
    assert result.sacrum_count_z_mm is not None, result.notes
    assert result.variant is Variant.NORMAL, (result.method, result.notes)
    assert abs(result.z_mm - p.ground_truth["l3_inferior_endplate_z_mm"]) < 10.0
