"""Classical L3 segmentation: a hand-drawn slice, the phantom, and real CT with silver masks."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from l3node.analysis.body import NOISE_TARGET_HU, geometry_hu, noise_sd_hu
from l3node.analysis.bowel_loops import loop_parts
from l3node.analysis.compartments import back_muscle_hu, muscle_compartments, organs_and_fluid, smoothed_hu
from l3node.analysis.segment import body_mask, segment_at_l3, segment_slice
from l3node.analysis.slice_vertebra import find_vertebra
from l3node.analysis.split_bodies import NECK_MM
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume, read_label_nifti, read_nifti
from l3node.config import AnalysisConfig
from l3node.train.evaluate_seg import dice, evaluate_labels, evaluate_reference_folder, write_report

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = DATA / "ts_example_ct_sm"

PIXEL_MM = 1.5


def _ellipse(shape, centre, axes):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / axes[0]) ** 2 + ((cols - centre[1]) / axes[1]) ** 2 <= 1.0


def _drawn_slice() -> tuple[np.ndarray, np.ndarray]:
    """A torso drawn by hand (1.5 mm pixels) with its true labels.

    Skin, a SAT ring, a 12-pixel muscle wall, a vertebra with paraspinal muscle,
    a liver-like organ and a gas-filled bowel loop in visceral fat, a table
    under the body and an arm beside it. Noise-free, so labels are exact.
    """
    shape = (240, 300)
    hu = np.full(shape, -1000.0)
    truth = np.zeros(shape, np.uint8)
    centre = (115, 150)
    skin = _ellipse(shape, centre, (95, 125))
    fascia = _ellipse(shape, centre, (80, 110))
    cavity = _ellipse(shape, centre, (68, 98))
    hu[skin] = 30.0
    sat = _ellipse(shape, centre, (93, 123)) & ~fascia
    hu[sat] = -100.0
    truth[sat] = Tissue.SAT
    wall = fascia & ~cavity
    hu[wall] = 45.0
    truth[wall] = Tissue.SKELETAL_MUSCLE
    hu[cavity] = -90.0
    truth[cavity] = Tissue.VAT
    # Paraspinal muscle behind the vertebra, joined to the wall.
    back = cavity & _ellipse(shape, (175, 150), (30, 55))
    hu[back] = 45.0
    truth[back] = Tissue.SKELETAL_MUSCLE
    imat = back & _ellipse(shape, (180, 125), (3, 6))
    hu[imat] = -80.0
    truth[imat] = Tissue.IMAT
    vertebra = _ellipse(shape, (140, 150), (14, 17))
    hu[vertebra] = 400.0
    truth[vertebra] = 0
    hu[_ellipse(shape, (140, 150), (10, 13))] = 200.0
    # Liver-like organ pressed against the right abdominal wall (image left), not muscle.
    organ = cavity & _ellipse(shape, (105, 70), (35, 30))
    hu[organ] = 58.0
    truth[organ] = 0
    # Bowel loop: wall, gas.
    bowel = _ellipse(shape, (80, 180), (14, 14))
    hu[bowel] = 40.0
    truth[bowel] = 0
    gas = _ellipse(shape, (80, 180), (11, 11))
    hu[gas] = -950.0
    # Table below the body, an arm beside it.
    hu[222:226, 20:280] = 300.0
    arm = _ellipse(shape, (115, 290), (25, 9))
    hu[arm] = 45.0
    return hu, truth


@pytest.fixture(scope="module")
def drawn() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hu, truth = _drawn_slice()
    return hu, truth, segment_slice(hu, (PIXEL_MM, PIXEL_MM))


def test_body_mask_drops_table_and_arm(drawn):
    hu, _, _ = drawn
    body = body_mask(hu, (PIXEL_MM, PIXEL_MM))
    assert not body[222:226].any()
    assert not body[115, 285:300].any()
    assert body[115, 150] and body[115, 40]


def test_drawn_slice_tissues(drawn):
    _, truth, labels = drawn
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    for tissue, minimum in ((Tissue.SKELETAL_MUSCLE, 0.95), (Tissue.SAT, 0.97), (Tissue.VAT, 0.95)):
        score = dice(labels == tissue, truth == tissue)
        assert score is not None and score >= minimum, (tissue.name, score)


def test_drawn_slice_exclusions(drawn):
    hu, truth, labels = drawn
    organ = ndi.binary_erosion(_ellipse(hu.shape, (105, 70), (35, 30)) & _ellipse(hu.shape, (115, 150), (68, 98)), iterations=2)
    assert (labels[organ] == Tissue.SKELETAL_MUSCLE).mean() < 0.02, "organ taken for abdominal wall"
    assert not labels[_ellipse(hu.shape, (140, 150), (14, 17))].any(), "vertebra labelled"
    assert not labels[_ellipse(hu.shape, (80, 180), (14, 14))].any(), "bowel labelled"
    assert not labels[_ellipse(hu.shape, (115, 290), (25, 9))].any(), "arm labelled"
    # Skin (outermost 2 mm) is not SAT.
    skin = _ellipse(hu.shape, (115, 150), (95, 125)) & ~_ellipse(hu.shape, (115, 150), (93, 123))
    assert (labels[skin] == Tissue.SAT).mean() < 0.05


def test_drawn_slice_imat_inside_back_muscle(drawn):
    hu, truth, labels = drawn
    imat = truth == Tissue.IMAT
    assert (labels[imat] == Tissue.IMAT).mean() > 0.8


def test_drawn_slice_fat_against_the_wall_is_visceral(drawn):
    _, truth, labels = drawn
    vat = truth == Tissue.VAT
    # Fat touching the inner side of the wall is outside the muscle: VAT, not IMAT.
    assert (labels[vat] == Tissue.IMAT).mean() < 0.02
    assert (labels[vat] == Tissue.VAT).mean() > 0.95


def _fatty_blurred_slice() -> tuple[np.ndarray, np.ndarray]:
    """The drawn slice with fat-infiltrated muscle (0 HU) blurred by the scanner (sigma
    1 pixel): the midpoint between muscle and fat (-50 HU) lies in the fat range, so the
    muscle's edge pixels whose centre is inside it read as fat."""
    hu, truth = _drawn_slice()
    muscle = truth == Tissue.SKELETAL_MUSCLE
    return ndi.gaussian_filter(np.where(muscle, 0.0, hu), 1.0), muscle


def test_muscle_edge_read_as_fat_follows_the_imat_edge_setting():
    hu, muscle = _fatty_blurred_slice()
    fat = (hu >= -190.0) & (hu <= -30.0)
    sat_side = ndi.binary_dilation(_ellipse(hu.shape, (115, 150), (93, 123)) & ~_ellipse(hu.shape, (115, 150), (80, 110)))
    inner_edge = muscle & fat & ~sat_side  # centre inside the muscle, against VAT
    outer_edge = muscle & fat & sat_side  # against SAT
    outside = fat & ~muscle & ndi.binary_dilation(muscle) & ~sat_side  # centre in the VAT
    assert inner_edge.sum() >= 100 and outer_edge.sum() >= 100 and outside.sum() >= 300
    depot = segment_slice(hu, (PIXEL_MM, PIXEL_MM), AnalysisConfig(imat_edge="fat_depot"))
    outline = segment_slice(hu, (PIXEL_MM, PIXEL_MM), AnalysisConfig(imat_edge="outline"))
    # fat_depot: the edge goes with the fat beside it.
    assert (depot[inner_edge] == Tissue.VAT).mean() > 0.9
    assert (depot[outer_edge] == Tissue.SAT).mean() > 0.9
    # outline: inside the muscle's outline it is IMAT, on both sides ...
    assert (outline[inner_edge] == Tissue.IMAT).mean() > 0.7, np.bincount(outline[inner_edge], minlength=5)
    assert (outline[outer_edge] == Tissue.IMAT).mean() > 0.7, np.bincount(outline[outer_edge], minlength=5)
    # ... and fat whose centre lies outside, touching the muscle, stays VAT.
    assert (outline[outside] == Tissue.IMAT).mean() < 0.1
    assert (outline[outside] == Tissue.VAT).mean() > 0.85
    # Muscle itself is the same either way.
    assert np.array_equal(depot == Tissue.SKELETAL_MUSCLE, outline == Tissue.SKELETAL_MUSCLE)


def _open_arch(gap_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vertebra at 3 mm pixels whose arch is open: body, two pedicles, a spinous
    process ``gap_px`` behind the canal, muscle-range canal content, muscle around."""
    hu = np.full((60, 60), 40.0)
    hu[_ellipse(hu.shape, (20, 30), (5, 6))] = 250.0
    hu[25:31, 24:26] = 400.0
    hu[25:31, 35:37] = 400.0
    hu[31 + gap_px : 40 + gap_px, 29:32] = 400.0
    canal = np.zeros(hu.shape, bool)
    canal[26:31, 26:35] = True
    hu[canal] = 15.0
    multifidus = np.zeros(hu.shape, bool)
    multifidus[33 + gap_px : 40 + gap_px, 24:28] = True
    multifidus[33 + gap_px : 40 + gap_px, 33:37] = True
    return hu, canal, multifidus


@pytest.mark.parametrize("gap_px", [0, 4])
def test_canal_of_an_open_arch_is_vertebra_not_muscle(gap_px):
    hu, canal, multifidus = _open_arch(gap_px)
    spine = find_vertebra(hu, hu >= 150.0, (3.0, 3.0))
    assert spine is not None
    assert spine.bone[canal].mean() > 0.9, "canal content left for the muscle"
    assert not spine.bone[multifidus].any(), "multifidus beside the spinous process taken as canal"


def test_bowel_loop_pressed_on_the_wall_is_not_muscle():
    hu, truth = _drawn_slice()
    loop = _ellipse(hu.shape, (60, 120), (12, 12))  # overlaps the anterior wall's inner edge
    gas = _ellipse(hu.shape, (60, 120), (9, 9))
    hu[loop] = 40.0
    hu[gas] = -950.0
    truth[loop] = 0
    labels = segment_slice(hu, (PIXEL_MM, PIXEL_MM))
    assert (labels[loop & ~gas] == Tissue.SKELETAL_MUSCLE).mean() < 0.12, "bowel wall taken for muscle"
    assert dice(labels == Tissue.SKELETAL_MUSCLE, truth == Tissue.SKELETAL_MUSCLE) > 0.98


def _spine_with_contrast_bowel(level: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A vertebra at 1.5 mm pixels with contrast-filled bowel (300 HU) larger than its bone.

    ``"disc"``: a disc (90 HU) with its neural arch behind it, the bowel far in front.
    ``"body"``: a vertebral body with a separate arch, the bowel against the body's side.
    ``"side"``: the same vertebra, the bowel 77 mm to the side at the body's level, no
    bone behind it.
    ``"stacked"``: the disc and a wider arch; beside the disc a smaller loop 28 mm in front
    of the arch, and a loop 42 mm in front of that one (the first was taken for the arch).
    """
    shape = (200, 200)
    hu = np.full(shape, 40.0)
    arch = np.zeros(shape, bool)
    arch[118:124, 80:121] = True  # laminae
    arch[124:150, 97:104] = True  # spinous process
    if level == "disc":
        front = _ellipse(shape, (100, 100), (14, 20))
        hu[front] = 90.0
        bowel = _ellipse(shape, (50, 100), (18, 24))
    elif level == "stacked":
        front = _ellipse(shape, (100, 100), (14, 16))
        hu[front] = 90.0
        arch[118:124, 75:127] = True
        bowel = _ellipse(shape, (91, 126), (8, 8)) | _ellipse(shape, (45, 126), (10, 12))
    else:
        front = _ellipse(shape, (95, 100), (15, 20))
        hu[front] = 250.0
        if level == "body":
            bowel = _ellipse(shape, (70, 140), (20, 26)) & ~front
        else:
            bowel = _ellipse(shape, (90, 48), (20, 24))
    hu[arch] = 500.0
    hu[bowel] = 300.0
    return hu, {"front": front, "arch": arch, "bowel": bowel}


@pytest.mark.parametrize("level", ["disc", "body", "side", "stacked"])
def test_contrast_bowel_larger_than_the_vertebra_is_not_the_vertebra(level):
    hu, parts = _spine_with_contrast_bowel(level)
    spine = find_vertebra(hu, hu >= 150.0, (1.5, 1.5))
    assert spine is not None
    assert not spine.bone[parts["bowel"]].any(), "bowel taken for the vertebra"
    assert spine.bone[parts["arch"]].all()
    assert spine.bone[parts["front"]].mean() > 0.9, "disc or vertebral body missed"


def test_disc_brightened_by_its_endplates_is_part_of_the_vertebra():
    """A thick slice through a disc takes in its endplates: the disc reads 140 HU, not
    bone, and apart from the arch behind it. At a 130 HU limit it was missed, the arch
    alone was the vertebra, its front 40 mm too far back, and both psoas were lost
    (phantom seed 32)."""
    hu, parts = _spine_with_contrast_bowel("disc")
    hu[parts["bowel"]] = 40.0
    hu[parts["front"]] = 140.0
    spine = find_vertebra(hu, hu >= 150.0, (1.5, 1.5))
    assert spine is not None
    assert spine.bone[parts["front"]].mean() > 0.9, "disc missed"
    disc_front = np.nonzero(parts["front"].any(axis=1))[0].min()
    assert abs(spine.front_row - disc_front) <= 3


def _disc_apart_from_arch(inside_hu: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A disc in front of its neural arch at 3 mm pixels, epidural fat between: an annulus
    (95 HU) around an inner ellipse of ``inside_hu`` (a nucleus; or, with water-like HU, a
    bowel loop's content inside its wall), and a diagonal line of pixels at 50 HU, noise
    under the dense-pixel limit, through the annulus on both sides."""
    shape = (80, 80)
    hu = np.full(shape, 40.0)
    disc = _ellipse(shape, (28, 40), (5, 8))
    hu[disc] = 95.0
    rows = np.arange(22, 35)
    crack = np.zeros(shape, bool)
    crack[rows, rows + 12] = True
    hu[crack & disc] = 50.0
    inner = _ellipse(shape, (28, 40), (2, 4))
    hu[inner] = inside_hu
    hu[33:37, 30:51] = -80.0  # epidural fat
    arch = np.zeros(shape, bool)
    arch[37:40, 30:51] = True
    arch[40:52, 38:42] = True
    hu[arch] = 500.0
    return hu, {"disc": disc, "arch": arch}


def test_disc_split_by_noise_pixels_is_part_of_the_vertebra():
    """A nucleus darker than the annulus (62 HU) leaves a ring of disc HU; cut by noise, its
    halves (432 and 369 mm^2) were each too small for a disc and the arch alone was the
    vertebra (real CT, the L2/L3 disc: the vertebra's front 60 mm too far back, the psoas
    beside the disc lost, muscle 10 % under the slices around it). The enclosed nucleus
    joins them."""
    hu, parts = _disc_apart_from_arch(inside_hu=62.0)
    spine = find_vertebra(hu, hu >= 150.0, (3.0, 3.0))
    assert spine is not None
    assert spine.bone[parts["disc"]].mean() > 0.8, "disc missed"
    disc_front = np.nonzero(parts["disc"].any(axis=1))[0].min()
    assert abs(spine.front_row - disc_front) <= 3, (spine.front_row, disc_front)


def test_phantom_disc_nucleus_keeps_the_psoas():
    """A real disc's nucleus is darker than its annulus (real CT: 60-68 against 70-90 HU once
    smoothed) and the phantom paints it so when asked. The L3 slice of ``normal:21`` lies in the L3/L4
    disc: before the nucleus rule the disc was missed there and the psoas beside it with it
    (3.9 % of the true muscle less than with a uniform disc; 18.6 % with a nucleus 25 HU
    darker over the inner 60 % of the disc). The slice's muscle must not depend on the
    nucleus: raised to the annulus's mean HU, the muscle area stays within 1 %."""
    phantom_module = pytest.importorskip("l3node.phantom")
    from l3node.phantom.materials import Structure

    phantom = phantom_module.make_phantom("normal", seed=21, scan_range="abdomen_pelvis", disc_nucleus=True)
    k = int(phantom.ground_truth["l3_slice_index"])
    hu = np.array(phantom.volume.hu[k], np.float32)
    structures = np.asarray(phantom.structure_labels[k])
    nucleus, annulus = structures == Structure.DISC_NUCLEUS, structures == Structure.DISC
    assert nucleus.sum() > 300, "the slice no longer lies in the disc"
    truth = np.asarray(phantom.tissue_labels[k]) == Tissue.SKELETAL_MUSCLE
    pixel_mm = (phantom.volume.spacing_mm[1], phantom.volume.spacing_mm[2])
    uniform = hu.copy()
    uniform[nucleus] += np.median(hu[annulus]) - np.median(hu[nucleus])
    areas = [(segment_slice(x, pixel_mm) == Tissue.SKELETAL_MUSCLE).sum() for x in (hu, uniform)]
    assert abs(areas[1] - areas[0]) <= 0.01 * truth.sum(), (areas, truth.sum())


def test_disc_like_ring_around_water_is_not_a_disc():
    """A bowel wall of disc HU around water-like content, cut the same way, stays two halves
    too small for a disc: what lies between them is content open to the cut, not a nucleus
    enclosed by disc HU (tried: bridging the halves by a closing took bowel walls and IVC
    into the vertebra on phantoms)."""
    hu, parts = _disc_apart_from_arch(inside_hu=15.0)
    spine = find_vertebra(hu, hu >= 150.0, (3.0, 3.0))
    assert spine is not None
    assert not spine.bone[parts["disc"]].any(), "bowel loop taken for a disc"
    assert spine.bone[parts["arch"]].all()


def test_bright_piece_in_front_of_a_bowel_loop_does_not_make_the_loop_an_arch():
    """A loop with an enhanced wall far to the side, a small bright piece (vessel, bowel
    wall) more than 30 mm in front of it: the loop is no neural arch, the vertebra is the
    large piece in the middle (phantom seed 7: the loop was taken, both psoas lost)."""
    shape = (200, 320)
    hu = np.full(shape, -1000.0)
    inside = _ellipse(shape, (100, 160), (95, 150))
    hu[inside] = -100.0
    body = _ellipse(shape, (120, 160), (15, 20))
    hu[body] = 250.0
    arch = np.zeros(shape, bool)
    arch[140:146, 140:181] = True
    arch[146:170, 157:164] = True
    hu[arch] = 500.0
    loop = _ellipse(shape, (110, 50), (12, 12))
    hu[loop] = 250.0  # enhanced wall ...
    hu[_ellipse(shape, (110, 50), (9, 9))] = 20.0  # ... around content
    small = _ellipse(shape, (65, 50), (6, 6))  # 27 px (40 mm) in front of the loop
    hu[small] = 300.0
    spine = find_vertebra(hu, (hu >= 150.0) & inside, (1.5, 1.5))
    assert spine is not None
    assert spine.bone[body].mean() > 0.9, "vertebral body missed"
    assert not spine.bone[loop].any(), "bowel loop taken for the vertebra"


def test_contrast_bowel_joined_to_the_side_of_the_body_leaves_it_the_vertebra():
    """Bowel full of contrast joined to the body's side (through an enhancing wall) pulls the
    joined piece's centre off the arch's columns; with another loop far in front of the arch
    the body was then dropped and the arch alone was the vertebra (phantom
    lumbarization:2001, arterial, 0.625 mm: both psoas lost, muscle Dice 0.911)."""
    shape = (200, 200)
    hu = np.full(shape, 40.0)
    arch = np.zeros(shape, bool)
    arch[118:124, 80:121] = True
    arch[124:150, 97:104] = True
    body = _ellipse(shape, (98, 100), (15, 20))  # 7.5 mm in front of the arch
    hu[body] = 250.0
    hu[_ellipse(shape, (95, 140), (18, 24)) & ~body] = 300.0  # joined to the body's side
    far = _ellipse(shape, (40, 92), (10, 14))  # 100 mm in front of the arch
    hu[far] = 300.0
    hu[arch] = 500.0
    spine = find_vertebra(hu, hu >= 150.0, (1.5, 1.5))
    assert spine is not None
    assert spine.bone[body].mean() > 0.9, "vertebral body missed"
    assert not spine.bone[far].any()
    assert abs(spine.front_row - 83) <= 8


def test_muscle_blurred_against_the_vertebra_is_muscle():
    hu, truth = _drawn_slice()
    vertebra = _ellipse(hu.shape, (140, 150), (14, 17))
    psoas = (_ellipse(hu.shape, (138, 126), (12, 10)) | _ellipse(hu.shape, (138, 174), (12, 10))) & ~vertebra
    hu[psoas] = 45.0
    blurred = ndi.gaussian_filter(hu, 0.8)
    # Psoas pixels touching the cortex, brightened by it but still in the muscle range.
    against = psoas & ndi.binary_dilation(vertebra) & (blurred <= 150.0)
    assert against.sum() >= 10
    labels = segment_slice(blurred, (PIXEL_MM, PIXEL_MM))
    assert (labels[against] == Tissue.SKELETAL_MUSCLE).mean() > 0.8
    assert (labels[psoas] == Tissue.SKELETAL_MUSCLE).mean() > 0.9
    assert not labels[vertebra & (blurred > 150.0)].any(), "bone labelled"


def _slice_with_psoas() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The drawn slice with psoas and quadratus muscle around the vertebra, joined to the
    back muscles; returns HU, the vertebra and that muscle."""
    hu, _ = _drawn_slice()
    vertebra = _ellipse(hu.shape, (140, 150), (14, 17))
    cavity = _ellipse(hu.shape, (115, 150), (68, 98))
    around = cavity & _ellipse(hu.shape, (150, 150), (26, 40)) & ~vertebra
    hu[around] = 45.0
    return hu, vertebra, around


def test_fat_pocket_between_vertebra_and_muscles_is_not_visceral():
    """Fat closed in by the vertebra and the muscles around it lies around the spine: it
    is neither VAT (the phantom called it so before) nor IMAT."""
    hu, vertebra, _ = _slice_with_psoas()
    pocket = _ellipse(hu.shape, (135, 130), (4, 4)) & ~vertebra  # against the side of the vertebral body
    hu[pocket] = -90.0
    assert (ndi.binary_dilation(pocket) & vertebra).any()
    labels = segment_slice(hu, (PIXEL_MM, PIXEL_MM))
    assert not np.isin(labels[pocket], (Tissue.VAT, Tissue.IMAT)).any(), np.bincount(labels[pocket])
    # The IMAT pocket deep in the back muscle, 3 cm from the vertebra, stays IMAT.
    imat = _ellipse(hu.shape, (180, 125), (3, 6)) & (hu == -80.0)
    assert imat.sum() >= 20
    assert (labels[imat] == Tissue.IMAT).mean() > 0.8


def test_bowel_loop_joined_to_the_psoas_by_a_neck_is_not_muscle():
    """A loop of muscle HU touching the psoas over a few pixels joins its component (the
    whole component touches the vertebra); split at the neck, the loop touches neither
    vertebra nor wall. Before the split the loop was kept whole."""
    shape = (200, 240)
    hu = np.full(shape, -100.0)
    vertebra = _ellipse(shape, (110, 120), (14, 17))
    hu[vertebra] = 400.0
    psoas = _ellipse(shape, (112, 90), (14, 12)) & ~vertebra
    hu[psoas] = 45.0
    loop = _ellipse(shape, (106, 68), (10, 10)) & ~ndi.binary_dilation(psoas)
    hu[loop] = 40.0
    neck = ndi.binary_dilation(loop) & ndi.binary_dilation(psoas) & ~loop & ~psoas
    hu[neck] = 42.0
    assert 3 <= neck.sum() <= 8
    muscle_hu = (hu >= -29) & (hu <= 150)
    spine = find_vertebra(hu, hu >= 150, (1.5, 1.5))
    muscle = muscle_compartments(muscle_hu, np.zeros(shape, bool), spine, np.zeros(shape, bool), (1.5, 1.5))
    assert muscle[loop].mean() < 0.05, "bowel loop kept with the psoas"
    assert muscle[psoas].mean() > 0.98


def test_psoas_edge_next_to_fat_is_not_fluid():
    shape = (200, 240)
    hu = np.full(shape, -100.0)
    inside = _ellipse(shape, (100, 120), (95, 115))
    hu[_ellipse(shape, (160, 120), (30, 60))] = 45.0  # back muscles
    vertebra = _ellipse(shape, (110, 120), (14, 17))
    hu[vertebra] = 400.0
    psoas = (_ellipse(shape, (108, 90), (12, 10)) | _ellipse(shape, (108, 150), (12, 10))) & ~vertebra
    hu[psoas] = 45.0
    fluid = _ellipse(shape, (50, 70), (12, 12))  # bowel content, darker than muscle
    hu[fluid] = 5.0
    hu[~inside] = -1000.0
    muscle_hu = (hu >= -29) & (hu <= 150) & inside
    spine = find_vertebra(hu, (hu >= 150) & inside, (1.5, 1.5))
    _, not_muscle = organs_and_fluid(hu, muscle_hu, inside, spine, 45.0, (1.5, 1.5))
    edge = psoas & ~ndi.binary_erosion(psoas) & ~ndi.binary_dilation(vertebra)
    assert not_muscle[edge].mean() < 0.05, "fat beside the psoas made its edge fluid"
    assert not_muscle[ndi.binary_erosion(fluid, iterations=2)].all(), "bowel content not fluid"


def test_bowel_content_slightly_darker_than_muscle_is_fluid():
    """Fluid-filled bowel 17 HU darker than the back muscles (15 HU in bowel, 32 in the
    muscle of an older patient) is fluid; the psoas edge beside fat stays muscle. A 20 HU
    margin let such loops pressed on the psoas join it."""
    shape = (200, 240)
    hu = np.full(shape, -100.0)
    inside = _ellipse(shape, (100, 120), (95, 115))
    hu[_ellipse(shape, (160, 120), (30, 60))] = 32.0  # back muscles
    vertebra = _ellipse(shape, (110, 120), (14, 17))
    hu[vertebra] = 400.0
    psoas = (_ellipse(shape, (108, 90), (12, 10)) | _ellipse(shape, (108, 150), (12, 10))) & ~vertebra
    hu[psoas] = 32.0
    fluid = _ellipse(shape, (50, 70), (12, 12))
    hu[fluid] = 15.0
    hu[~inside] = -1000.0
    muscle_hu = (hu >= -29) & (hu <= 150) & inside
    spine = find_vertebra(hu, (hu >= 150) & inside, (1.5, 1.5))
    _, not_muscle = organs_and_fluid(hu, muscle_hu, inside, spine, 32.0, (1.5, 1.5))
    assert not_muscle[ndi.binary_erosion(fluid, iterations=2)].all(), "bowel content not fluid"
    edge = psoas & ~ndi.binary_erosion(psoas) & ~ndi.binary_dilation(vertebra)
    assert not_muscle[edge].mean() < 0.05
    assert not not_muscle[ndi.binary_erosion(psoas, iterations=2)].any()


def _arm_against_torso(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A torso and a boneless arm at column 222 pressed on it over 48 mm (2 mm pixels):
    wider than any neck the opening cuts. Returns ``(hu, torso, arm_core)``."""
    hu = np.full(shape, -1000.0)
    torso = _ellipse(shape, (80, 120), (55, 80))
    hu[torso] = -100.0
    hu[_ellipse(shape, (80, 120), (40, 62))] = 40.0
    arm = _ellipse(shape, (85, 222), (24, 24))
    hu[arm] = -100.0
    arm_core = _ellipse(shape, (85, 222), (14, 14))
    hu[arm_core] = 40.0
    contact = np.zeros(shape, bool)
    contact[73:97, 190:205] = True
    hu[contact & ~torso & ~arm] = -100.0
    return hu, torso, arm_core


def test_arm_lying_against_the_torso_is_cut_off():
    pixel = 2.0
    shape = (160, 260)
    hu, torso, arm_core = _arm_against_torso(shape)
    hu[_ellipse(shape, (85, 222), (4, 4))] = 700.0  # humerus
    body = body_mask(hu, (pixel, pixel))
    assert not body[arm_core].any(), "arm kept"
    assert body[torso].all()
    # The same lobe without a bone is a roll of fat on the flank: kept.
    hu[_ellipse(shape, (85, 222), (4, 4))] = 40.0
    assert body_mask(hu, (pixel, pixel))[arm_core].all(), "boneless flank roll dropped"
    # A lobe in front of the torso (a pannus) is belly, never an arm.
    belly = np.full(shape, -1000.0)
    belly[torso] = -100.0
    lobe = _ellipse(shape, (30, 120), (25, 45))
    belly[lobe] = -100.0
    assert body_mask(belly, (pixel, pixel))[lobe].all()


def test_arm_cut_by_the_field_of_view_is_cut_off():
    """An arm pressed on the flank and cut by the image edge shows only a sliver of its
    humerus (24 mm^2 here, 13 mm^2 on phantom seed 75): still an arm, not a fat roll.
    Kept, it put the fascia on its far side and the flank's wall muscle was lost."""
    pixel = 2.0
    shape = (160, 236)  # the edge cuts the arm at column 235
    hu, torso, arm_core = _arm_against_torso(shape)
    humerus = _ellipse(shape, (85, 238), (4, 4))  # mostly beyond the edge
    hu[humerus] = 700.0
    assert 3 <= humerus.sum() <= 12
    body = body_mask(hu, (pixel, pixel))
    assert not body[arm_core].any(), "arm kept"
    assert body[torso].all()
    hu[humerus] = 40.0
    assert body_mask(hu, (pixel, pixel))[arm_core].all(), "boneless flank roll at the edge dropped"


def test_forearm_pressed_on_a_thin_flank_is_cut_off():
    """A forearm (radius and ulna) pressed on the flank over a broad contact rises only
    7.5 mm above its neck, under the 10 mm an arm without bone must rise; with its bones it
    is an arm (phantom combined seed 1210: kept, its fat was counted as SAT, Dice 0.77)."""
    pixel = 2.0
    shape = (160, 280)
    hu = np.full(shape, -1000.0)
    torso = _ellipse(shape, (80, 120), (45, 90))
    hu[torso] = -100.0
    hu[_ellipse(shape, (80, 120), (32, 75))] = 40.0
    arm = _ellipse(shape, (85, 216), (20, 20))
    hu[arm & ~torso] = -100.0
    hu[_ellipse(shape, (85, 216), (12, 12))] = 40.0
    bones = _ellipse(shape, (85, 211), (3, 3)) | _ellipse(shape, (85, 221), (3, 3))
    hu[bones] = 700.0
    outer_arm = arm & ~torso
    assert body_mask(hu, (pixel, pixel))[outer_arm].mean() < 0.3, "forearm kept"
    hu[bones] = 40.0
    assert body_mask(hu, (pixel, pixel))[outer_arm].all(), "boneless flank bulge dropped"


def test_rejects_non_2d():
    with pytest.raises(ValueError, match="2D"):
        segment_slice(np.zeros((2, 4, 4)), (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        segment_slice(np.zeros((4, 4)), (0.0, 1.0))


def test_empty_slice_gives_no_labels():
    assert not segment_slice(np.full((64, 64), -1000.0), (1.0, 1.0)).any()


def test_segment_at_l3_single_and_averaged(drawn):
    hu, _, labels = drawn
    noise = np.random.default_rng(0).normal(0, 3, size=(3, *hu.shape))
    volume = Volume(hu=(hu[None] + noise).astype(np.float32), spacing_mm=(2.0, PIXEL_MM, PIXEL_MM), origin_mm=(0.0, 0.0, 0.0))
    single, plane = segment_at_l3(volume, 1, AnalysisConfig())
    assert np.array_equal(plane, volume.hu[1])
    assert np.array_equal(single, segment_slice(volume.hu[1], (PIXEL_MM, PIXEL_MM)))
    averaged, mean_plane = segment_at_l3(volume, 1, AnalysisConfig(average_slices_mm=2.0))
    np.testing.assert_allclose(mean_plane, volume.hu.mean(axis=0), atol=1e-4)
    assert dice(averaged == Tissue.SAT, labels == Tissue.SAT) > 0.97
    with pytest.raises(ValueError, match="outside"):
        segment_at_l3(volume, 3, AnalysisConfig())


# Measured 2026-11-26 07:30 on ts_example_ct_sm lumbar slices k=0..14 (L2-L1), 3 mm pixels: muscle
# Dice mean 0.866 (min 0.837), SAT mean 0.932 (min 0.914); the same reference within our HU ranges:
# muscle 0.888 (0.865), SAT 0.943. (05:30: muscle 0.868 (0.843); the vertebra rim, psoas-edge and
# bowel-wall changes since then add 507 muscle pixels here of which TotalSegmentator has 148, and
# remove 77 of which it has 1: it draws muscle tighter than "compartment within -29..150 HU" at
# 3 mm, while on phantoms, whose truth is exact, 76 % of what they add is right.) The target
# is 0.90 for both; muscle misses it against this silver reference (5 % of its muscle pixels are
# below -29 HU, and it leaves out the diaphragm and crura that line the wall and spine at T12-L2).
# 10:05, same figures (0.866 / 0.932). Where the masks differ (3 mm pixels, slices 0-14): of 2100
# reference pixels we miss, 1014 are below -29 HU (definition) and 1759 lie within a pixel of our
# mask; of 3340 we add, 2345 lie within a pixel of the reference (edge pixels of median 22 HU, as
# our true positives) and 994 are whole structures it leaves out, 515 of them lining the wall
# inside the ribs (diaphragm) and 317 behind and beside the spine (posterior diaphragm, crura).
# Thresholds sit just below the measurement. Since the osteoporotic body's front is found
# (slice_vertebra.FRONT_RUN_FRACTION), L2's psoas beside the body's front half is muscle (36 pixels
# the reference has too, slices 3-4) and so is the posterior diaphragm reached through it (91 it
# leaves out): mean 0.866, min 0.830 (slice 3, was 0.836). At L3-L4 of ts_example_ct the same
# change adds only psoas (3 of 24 slices, 2-3.5 cm^2 each).
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CT reference data not found at {REAL}")
def test_real_ct_against_silver_masks():
    results = evaluate_reference_folder(REAL, range(0, 15))
    muscle = np.array([r.dice["silver_skeletal_muscle"] for r in results])
    sat = np.array([r.dice["silver_sat"] for r in results])
    assert muscle.mean() >= 0.86, muscle.round(3)
    assert muscle.min() >= 0.82, muscle.round(3)
    assert sat.mean() >= 0.92, sat.round(3)
    assert sat.min() >= 0.90, sat.round(3)
    # The same reference within our HU ranges (our tissue definition) agrees better.
    in_hu = np.array([r.dice["silver_skeletal_muscle_in_hu"] for r in results])
    assert in_hu.mean() >= 0.88 and (in_hu > muscle).all(), in_hu.round(3)
    assert np.mean([r.dice["silver_sat_in_hu"] for r in results]) >= sat.mean()


FULL = DATA / "ts_example_ct"


# Measured 28 Nov (the 14 slices, k 48-105, where the silver mask is mostly disc): front within
# 1-4 pixels of the reference's, 0.84-0.99 of the disc covered; before DISC_NUCLEUS_HU the L2/L3
# disc (k 80) was missed (front 20 pixels back, none covered) and covered 0.68-0.97 elsewhere.
# Muscle on k 80 against the mean of k 78 and 82: 0.97 (0.90 before).
@pytest.mark.skipif(not FULL.is_dir(), reason=f"real CT reference data not found at {FULL}")
def test_real_discs_are_part_of_the_vertebra():
    volume = read_nifti(FULL / "ct.nii.gz")
    reference = read_label_nifti(FULL / "vertebral_bodies_and_discs.nii.gz")  # 1 body, 2 disc (silver)
    pixel_mm = (volume.spacing_mm[1], volume.spacing_mm[2])
    discs = [k for k in range(48, 106) if (reference[k] == 2).sum() > (reference[k] == 1).sum()]
    assert len(discs) >= 10
    for k in discs:
        hu = volume.hu[k]
        body = body_mask(hu, pixel_mm)
        spine = find_vertebra(np.where(body, hu, -1000.0), (hu >= 150.0) & body, pixel_mm)
        assert spine is not None, k
        silver = reference[k] > 0
        front = np.nonzero(silver[:, int(round(spine.centre[1]))])[0].min()
        assert abs(spine.front_row - front) <= 4, (k, spine.front_row, front)
        assert spine.bone[silver].mean() >= 0.8, (k, spine.bone[silver].mean())
    muscle = [(segment_slice(volume.hu[k], pixel_mm) == Tissue.SKELETAL_MUSCLE).sum() for k in (78, 80, 82)]
    assert muscle[1] >= 0.95 * (muscle[0] + muscle[2]) / 2, muscle


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CT reference data not found at {REAL}")
def test_real_ct_orientation_matches_masks():
    volume = read_nifti(REAL / "ct.nii.gz")
    sat = read_label_nifti(REAL / "subcutaneous_fat.nii.gz")
    assert sat.shape == volume.shape
    labels = segment_slice(volume.hu[5], (volume.spacing_mm[1], volume.spacing_mm[2]))
    flipped = dice(labels[:, ::-1] == Tissue.SAT, sat[5] > 0)
    assert dice(labels == Tissue.SAT, sat[5] > 0) > flipped + 0.05 or flipped < 0.9


def _phantom_result(seed: int):
    phantom_module = pytest.importorskip("l3node.phantom")
    phantom = phantom_module.make_phantom("normal", seed=seed, matrix=256, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")
    k = phantom.ground_truth["l3_slice_index"]
    volume = phantom.volume
    labels = segment_slice(volume.hu[k], (volume.spacing_mm[1], volume.spacing_mm[2]))
    return evaluate_labels(f"phantom:{seed}", k, labels, np.asarray(phantom.tissue_labels[k]), volume.pixel_area_mm2)


# Measured 2026-11-26 10:05 (matrix 256, 5 mm; phantom truth = compartment within the HU range, fat
# pockets closed by muscle and spine not visceral, bone grazed by the slab in no compartment):
# seed 0 muscle/IMAT/VAT/SAT Dice 0.964/0.884/0.984/0.988, CSA error SMA 2.6 %, IMAT 0.0 %,
# VAT 0.5 %, SAT 2.3 %; seed 3 0.978/0.894/0.990/0.991, SMA 1.3 %, IMAT 9.2 %, VAT 0.5 %, SAT 1.6 %.
# Over 20 development phantoms (seeds 0-19, variants in turn): Dice 0.966/0.899/0.989/0.995, mean
# CSA error SMA 2.3 %, IMAT 10.2 %, VAT 1.3 %, SAT 0.8 %; over 10 never tuned on (seeds 1000-1009):
# 0.970/0.875/0.987/0.993, SMA 1.0 %, IMAT 9.9 %, VAT 1.2 %, SAT 1.0 %.
# Not reached: 0.97 Dice on the development set and 1 % SMA error -- bowel loops of muscle HU
# pressed broadly on the psoas or the wall are taken for muscle; IMAT Dice 0.97 is out of reach
# of a rule that sees only the image: 13 % of IMAT pixels touch VAT or SAT fat directly.
@pytest.mark.parametrize("seed", [0, 3])
def test_phantom_l3_slice(seed):
    result = _phantom_result(seed)
    assert result.dice["sat"] >= 0.98, result.dice
    assert result.dice["skeletal_muscle"] >= 0.93, result.dice
    assert result.dice["vat"] >= 0.96, result.dice
    assert result.dice["imat"] >= 0.83, result.dice
    assert result.csa_error_pct["sat"] <= 3.0, result.csa_error_pct
    assert result.csa_error_pct["vat"] <= 3.0, result.csa_error_pct
    assert result.csa_error_pct["skeletal_muscle"] <= 5.0, result.csa_error_pct
    assert result.csa_error_pct["imat"] <= 10.0, result.csa_error_pct


def test_evaluation_metrics_and_report(tmp_path):
    truth = np.zeros((20, 20), np.uint8)
    truth[:10] = Tissue.SKELETAL_MUSCLE
    truth[10:15] = Tissue.SAT
    predicted = truth.copy()
    predicted[9] = Tissue.SAT  # 20 muscle pixels become SAT
    result = evaluate_labels("hand", 0, predicted, truth, 4.0)
    assert result.dice["skeletal_muscle"] == pytest.approx(2 * 180 / (180 + 200))
    assert result.area_gt_cm2["skeletal_muscle"] == pytest.approx(200 * 4.0 / 100)
    assert result.csa_error_pct["skeletal_muscle"] == pytest.approx(10.0)
    assert result.csa_error_pct["sat"] == pytest.approx(20.0)
    assert result.dice["vat"] is None and result.csa_error_pct["vat"] is None
    written = write_report([result, evaluate_labels("same", 1, truth, truth, 4.0)], tmp_path)
    names = {p.name for p in written}
    assert {"segmentation_eval.csv", "segmentation_eval.md", "bland_altman_skeletal_muscle.png"} <= names
    text = (tmp_path / "segmentation_eval.md").read_text()
    assert "| skeletal_muscle | 2 |" in text
    assert all(p.stat().st_size > 0 for p in written)


def test_phantom_case_specs_start_at_the_first_seed():
    from l3node.phantom import VARIANTS
    from l3node.train.evaluate_seg import phantom_case_specs

    specs = phantom_case_specs(2, first_seed=1000)
    assert len(specs) == 2 * len(VARIANTS)
    assert f"phantom:{VARIANTS[0]}:1000" in specs and f"phantom:{VARIANTS[-1]}:1001" in specs
    assert not any(spec.endswith(":0") or spec.endswith(":1") for spec in specs)


# Noise: sharp kernels on thin slices (issue 5, helper 15). Truth on a noisy slice is what the
# phantom's is: compartment within the HU range of the noisy image itself.
NOISE_SD_HU = 40.0


FINE_MM = PIXEL_MM / 2


def _noisy_drawn_slice(sd_hu: float = NOISE_SD_HU, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The hand-drawn torso at ``FINE_MM`` pixels (a 512 matrix) with white noise of ``sd_hu`` (a
    sharp kernel at 0.6 mm slices: 40 HU), its truth relabelled from the compartments and the noisy HU."""
    hu, truth = _drawn_slice()
    hu, truth = (np.repeat(np.repeat(a, 2, axis=0), 2, axis=1) for a in (hu, truth))
    rng = np.random.default_rng(seed)
    body = hu > -500
    noisy = np.where(body, hu + rng.normal(0.0, sd_hu, hu.shape), hu).astype(np.float32)
    config = AnalysisConfig()
    muscle_range = (noisy >= config.muscle_hu.min) & (noisy <= config.muscle_hu.max)
    fat_range = (noisy >= config.fat_hu.min) & (noisy <= config.fat_hu.max)
    compartment_muscle = (truth == Tissue.SKELETAL_MUSCLE) | (truth == Tissue.IMAT)
    relabelled = np.zeros_like(truth)
    relabelled[compartment_muscle & muscle_range] = Tissue.SKELETAL_MUSCLE
    relabelled[compartment_muscle & fat_range] = Tissue.IMAT
    relabelled[(truth == Tissue.VAT) & fat_range] = Tissue.VAT
    relabelled[(truth == Tissue.SAT) & fat_range] = Tissue.SAT
    return noisy, relabelled


def test_noise_is_measured_from_the_image():
    hu, _ = _drawn_slice()
    body = body_mask(hu, (PIXEL_MM, PIXEL_MM))
    assert noise_sd_hu(hu, body, (PIXEL_MM, PIXEL_MM)) == pytest.approx(0.0, abs=0.5)
    noisy, _ = _noisy_drawn_slice()
    fine = (FINE_MM, FINE_MM)
    noisy_body = body_mask(noisy, fine)
    measured = noise_sd_hu(noisy, noisy_body, fine)
    assert measured == pytest.approx(NOISE_SD_HU, rel=0.15)
    # A quiet slice is traced as it is; a noisy one is smoothed until its noise is below the target.
    np.testing.assert_array_equal(geometry_hu(hu, body, (PIXEL_MM, PIXEL_MM)), hu.astype(np.float32))
    smoothed = geometry_hu(noisy, noisy_body, fine)
    assert noise_sd_hu(smoothed, noisy_body, fine) <= NOISE_TARGET_HU


def test_noisy_slice_keeps_its_muscle():
    """Old code: single noise pixels above 150 HU stopped the wall walk and riddled the psoas and
    back muscle masks, so streaks of back muscle and whole muscle edges were lost."""
    noisy, truth = _noisy_drawn_slice()
    labels = segment_slice(noisy, (FINE_MM, FINE_MM))
    muscle = truth == Tissue.SKELETAL_MUSCLE
    # Measured: Dice 0.986, 1.2 % of muscle lost (old code 0.974, 4.5 %).
    assert dice(labels == Tissue.SKELETAL_MUSCLE, muscle) >= 0.98
    lost = (muscle & (labels != Tissue.SKELETAL_MUSCLE)).sum() / muscle.sum()
    assert lost <= 0.025, lost


def test_thin_outer_wall_layer_on_a_noisy_slice_is_muscle():
    """A 3 mm external oblique outside a 1.5 mm fat plane, at 40 HU of grainy noise (a sharp
    kernel's, correlated over a pixel or so): noise splits the layer into runs shorter than a
    septum, and the fascia found on the slice itself fell through it over arcs (phantom
    normal:70: 4 % of the muscle lost as neither muscle nor SAT). The smoothed slice's
    fascia keeps it. Measured: 0.93-0.95 of the layer kept (seeds 1-3), before 0.81-0.83."""
    hu, truth = _drawn_slice()
    centre, front = (115, 150), np.arange(hu.shape[0])[:, None] < 115
    plane = _ellipse(hu.shape, centre, (78, 108)) & ~_ellipse(hu.shape, centre, (77, 107)) & front
    hu[plane] = -100.0
    truth[plane] = Tissue.IMAT
    layer = _ellipse(hu.shape, centre, (80, 110)) & ~_ellipse(hu.shape, centre, (78, 108)) & front
    hu, truth, layer = (np.repeat(np.repeat(a, 2, axis=0), 2, axis=1) for a in (hu, truth, layer))
    grain = ndi.gaussian_filter(np.random.default_rng(1).normal(0.0, 1.0, hu.shape), 0.6)
    noisy = np.where(hu > -500, hu + NOISE_SD_HU * grain / grain.std(), hu).astype(np.float32)
    config = AnalysisConfig()
    muscle_range = (noisy >= config.muscle_hu.min) & (noisy <= config.muscle_hu.max)
    muscle = np.isin(truth, (Tissue.SKELETAL_MUSCLE, Tissue.IMAT)) & muscle_range
    labels = segment_slice(noisy, (FINE_MM, FINE_MM))
    kept = (labels[layer & muscle] == Tissue.SKELETAL_MUSCLE).mean()
    assert kept >= 0.88, kept
    assert dice(labels == Tissue.SKELETAL_MUSCLE, muscle) >= 0.97


def test_noise_in_bowel_content_is_not_visceral_fat():
    """Fat-range noise pixels inside a fluid-filled loop (15 HU) are bowel, not VAT."""
    hu, truth = _drawn_slice()
    loop = _ellipse(hu.shape, (100, 200), (14, 14))
    hu[loop] = 15.0
    truth[loop] = 0
    rng = np.random.default_rng(7)
    noisy = np.where(hu > -500, hu + rng.normal(0.0, NOISE_SD_HU, hu.shape), hu).astype(np.float32)
    labels = segment_slice(noisy, (PIXEL_MM, PIXEL_MM))
    core = ndi.binary_erosion(loop, iterations=2)
    fat_range = (noisy >= -190) & (noisy <= -30)
    assert (core & fat_range).sum() >= 5  # the test needs noise pixels there
    assert (labels[core] == Tissue.VAT).sum() <= 1


def test_back_muscle_reference_survives_noise():
    """The back muscles' HU is found in a noisy slice (old: the noise holes eroded the core away,
    the reference fell back on the wall's upper quartile and psoas was taken for fluid)."""
    noisy, _ = _noisy_drawn_slice(sd_hu=50.0)
    fine = (FINE_MM, FINE_MM)
    body = body_mask(noisy, fine)
    spine = find_vertebra(np.where(body, noisy, -1000.0), (noisy >= 150) & body, fine)
    assert spine is not None
    muscle_range = (noisy >= -29) & (noisy <= 150) & body
    reference = back_muscle_hu(smoothed_hu(noisy, fine), muscle_range, spine, fine)
    assert reference is not None and reference == pytest.approx(45.0, abs=8.0)


def test_bowel_loop_pressed_broadly_on_the_psoas_is_not_muscle():
    """A loop of muscle HU overlapping the psoas over a contact wider than any neck: the
    union has no narrow neck but two summits on its distance map, and is split between them
    (old code: the loop was kept whole with the psoas)."""
    shape = (200, 240)
    hu = np.full(shape, -100.0)
    vertebra = _ellipse(shape, (110, 120), (14, 17))
    hu[vertebra] = 400.0
    psoas = _ellipse(shape, (112, 88), (16, 13)) & ~vertebra
    loop = _ellipse(shape, (114, 68), (11, 11)) & ~psoas
    hu[psoas] = 45.0
    hu[loop] = 40.0
    # The contact is wider than 2 * NECK_MM: no neck to cut at.
    contact = ndi.binary_dilation(loop) & psoas
    assert np.ptp(np.nonzero(contact)[0]) * 1.5 > 2 * NECK_MM
    muscle_hu = (hu >= -29) & (hu <= 150)
    spine = find_vertebra(hu, hu >= 150, (1.5, 1.5))
    muscle = muscle_compartments(muscle_hu, np.zeros(shape, bool), spine, np.zeros(shape, bool), (1.5, 1.5))
    assert muscle[loop].mean() < 0.05, muscle[loop].mean()
    assert muscle[psoas].mean() > 0.95, muscle[psoas].mean()


def test_fluid_loop_pressed_on_the_wall_over_a_wide_arc_is_not_muscle():
    # Bowel content (12 HU) lying against the anterior wall over ~90 degrees thickens every
    # ray there alike, so the neighbours' thickness is no check; the content is darker than
    # the wall's own muscle on those rays (phantom dev seed 18: +10 cm^2 of muscle).
    hu, truth = _drawn_slice()
    cavity = _ellipse(hu.shape, (115, 150), (68, 98))
    loop = cavity & _ellipse(hu.shape, (62, 150), (16, 75))
    hu[loop] = 12.0
    truth[loop] = 0
    labels = segment_slice(hu, (PIXEL_MM, PIXEL_MM))
    assert (labels[loop] == Tissue.SKELETAL_MUSCLE).mean() < 0.1, "bowel content taken for abdominal wall"
    assert dice(labels == Tissue.SKELETAL_MUSCLE, truth == Tissue.SKELETAL_MUSCLE) > 0.97


def test_fatty_wall_darker_than_the_back_muscles_is_kept():
    # The wall of a patient with fatty obliques (25 HU) beside dense back muscles (45 HU):
    # the wall is dark on its own rays all through, so no part of it is cut as fluid.
    hu, truth = _drawn_slice()
    wall = _ellipse(hu.shape, (115, 150), (80, 110)) & ~_ellipse(hu.shape, (115, 150), (68, 98))
    hu[wall & (np.arange(hu.shape[0])[:, None] < 150)] = 25.0
    labels = segment_slice(hu, (PIXEL_MM, PIXEL_MM))
    assert dice(labels == Tissue.SKELETAL_MUSCLE, truth == Tissue.SKELETAL_MUSCLE) > 0.95


def test_bowel_touching_one_side_of_the_body_is_not_vertebra_and_does_not_widen_it():
    # Oral-contrast bowel against one side of the vertebral body joins its bone pieces; the
    # body's half width, which says where psoas may lie in front of the vertebra's middle,
    # stays the body's own (phantom seed 107: both psoas lost, -11.6 cm^2), and what lies
    # beyond it in the body's rows is not vertebra (before: the loop was, and psoas closed
    # in between such bowel and the body went with it).
    hu, parts = _spine_with_contrast_bowel("body")
    hu[parts["bowel"]] = 40.0
    loop = _ellipse(hu.shape, (86, 127), (9, 9)) & ~parts["front"]
    hu[loop] = 300.0
    spine = find_vertebra(hu, hu >= 150.0, (1.5, 1.5))
    assert spine is not None
    assert 15.0 <= spine.body_half_width_px <= 21.0, spine.body_half_width_px
    beyond = loop & (np.abs(np.arange(hu.shape[1]) - spine.centre[1]) > spine.body_half_width_px + 6)[None, :]
    assert beyond.sum() >= 100
    assert spine.bone[beyond].mean() < 0.1, spine.bone[beyond].mean()
    assert spine.bone[parts["front"]].mean() > 0.9, "vertebral body lost"


def test_muscle_blurred_deep_into_the_vertebra_mask_on_fine_pixels_is_muscle():
    # At 0.75 mm pixels the cortex blurs muscle 2 mm deep into the vertebra's dense mask;
    # the muscle-range pixels there are muscle (phantoms: 1.2 cm^2 per slice was lost).
    hu, _ = _drawn_slice()
    vertebra = _ellipse(hu.shape, (140, 150), (14, 17))
    psoas = (_ellipse(hu.shape, (138, 126), (12, 10)) | _ellipse(hu.shape, (138, 174), (12, 10))) & ~vertebra
    hu[psoas] = 45.0
    fine = np.kron(hu, np.ones((2, 2)))
    vertebra, psoas = np.kron(vertebra, np.ones((2, 2), bool)), np.kron(psoas, np.ones((2, 2), bool))
    blurred = ndi.gaussian_filter(fine, 1.6)
    near = ndi.distance_transform_edt(~vertebra, sampling=0.75) <= 2.0
    against = psoas & near & (blurred >= -29.0) & (blurred <= 150.0)
    assert against.sum() >= 40
    labels = segment_slice(blurred, (0.75, 0.75))
    assert (labels[against] == Tissue.SKELETAL_MUSCLE).mean() > 0.8
    assert not labels[vertebra & (blurred > 150.0)].any(), "bone labelled"


def _loop_beside_the_vertebra(muscle_hu_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A psoas of ``muscle_hu_value`` left of a vertebra, and on its right a bowel loop touching
    it: a 3 mm wall of 40 HU around content of 15 HU (1.5 mm pixels, noise-free)."""
    shape = (200, 240)
    hu = np.full(shape, -100.0)
    vertebra = _ellipse(shape, (110, 120), (14, 17))
    hu[vertebra] = 400.0
    psoas = _ellipse(shape, (112, 90), (14, 12)) & ~vertebra
    hu[psoas] = muscle_hu_value
    loop = _ellipse(shape, (110, 149), (12, 12)) & ~vertebra
    hu[loop] = 40.0
    hu[_ellipse(shape, (110, 149), (10, 10)) & ~vertebra] = 15.0
    return hu, psoas, loop


def test_noise_holes_do_not_break_the_psoas_and_quadratus_apart():
    """2 % single pixels out of the muscle range (a fatty muscle under a sharp kernel's noise):
    the opening that cuts thin contacts widened each into a hole, and the quadratus-like band
    beside the psoas fell apart into pieces touching neither vertebra nor wall (phantom seed
    2410, 38 HU of noise: -17.5 % muscle). Before: 0-27 % of the band's far end kept (seeds
    1-3); now 99 %."""
    shape = (200, 200)
    hu = np.full(shape, -100.0)
    body = _ellipse(shape, (100, 100), (15, 20))
    hu[body] = 400.0
    hu[118:124, 80:121] = 500.0  # laminae
    hu[124:150, 97:104] = 500.0  # spinous process
    psoas = _ellipse(shape, (104, 133), (13, 14)) & ~body
    band = np.zeros(shape, bool)
    band[108:120, 140:185] = True
    muscle_hu = (psoas | band) & ~(np.random.default_rng(1).random(shape) < 0.02)
    hu[muscle_hu] = 30.0
    spine = find_vertebra(hu, hu >= 150.0, (1.0, 1.0))
    assert spine is not None
    muscle = muscle_compartments(muscle_hu, np.zeros(shape, bool), spine, np.zeros(shape, bool), (1.0, 1.0))
    far_end = band & muscle_hu & (np.arange(shape[1]) > 160)[None, :]
    assert muscle[far_end].mean() > 0.9, muscle[far_end].mean()
    assert muscle[psoas & muscle_hu].mean() > 0.95


def test_bowel_loop_whose_content_is_darker_than_its_wall_is_not_psoas():
    """Pressed on the vertebra where the psoas lies, a loop whose mean HU is that of a
    fat-infiltrated psoas was kept (phantom sharp seed 104: +11 cm^2); its core is darker
    than its rim and than the patient's muscle. The psoas, whose rim is not brighter than its
    core, stays."""
    hu, psoas, loop = _loop_beside_the_vertebra(25.0)
    muscle_hu = (hu >= -29) & (hu <= 150)
    spine = find_vertebra(hu, hu >= 150, (1.5, 1.5))
    assert spine is not None
    none = np.zeros(hu.shape, bool)
    is_loop = partial(loop_parts, hu=hu, soft=muscle_hu, muscle_ref_hu=25.0, pixel_mm=(1.5, 1.5))
    muscle = muscle_compartments(muscle_hu, none, spine, none, (1.5, 1.5), is_loop)
    assert muscle[loop].mean() < 0.05, muscle[loop].mean()
    assert muscle[psoas].mean() > 0.95, muscle[psoas].mean()
    # Without the loop test the same loop is collected as psoas (the old behaviour).
    assert muscle_compartments(muscle_hu, none, spine, none, (1.5, 1.5))[loop].mean() > 0.9


def test_loop_parts_keeps_muscle_with_a_dark_rim_and_loops_of_muscle_content():
    hu, psoas, loop = _loop_beside_the_vertebra(25.0)
    parts, n = ndi.label(psoas | loop)
    muscle_hu = (hu >= -29) & (hu <= 150)
    flags = loop_parts(parts, n, hu, muscle_hu, 25.0, (1.5, 1.5))
    assert flags[parts[loop][0]] and not flags[parts[psoas][0]] and not flags[0]
    # Content as bright as the patient's muscle is not content darker than muscle.
    assert not loop_parts(parts, n, hu, muscle_hu, 20.0, (1.5, 1.5)).any()
    # A muscle whose rim is darkened by fat (partial volume) is not a loop.
    hu[psoas & ~ndi.binary_erosion(psoas, iterations=2)] = 5.0
    assert not loop_parts(parts, n, hu, muscle_hu, 25.0, (1.5, 1.5))[parts[psoas][0]]
    with pytest.raises(ValueError, match="differ"):
        loop_parts(parts, n, hu[:10], muscle_hu, 25.0, (1.5, 1.5))


def test_vertebral_body_front_is_not_the_enhanced_vessels_pressed_on_it():
    """An enhanced aorta (left) and IVC (right), both above the bone threshold, pressed on
    the front of the vertebral body join its mask; side by side they are as wide as the body,
    and its front was placed at theirs, 17 mm too far forward in most contrast-enhanced
    phantoms. Neither crosses the midline, so the body's front stays at the bone's."""
    shape = (200, 240)
    hu = np.full(shape, -100.0)
    body = _ellipse(shape, (110, 120), (14, 17))
    hu[body] = 400.0
    hu[_ellipse(shape, (150, 120), (12, 5))] = 400.0  # arch and spinous process behind
    hu[_ellipse(shape, (126, 120), (4, 4))] = 10.0  # canal
    aorta = _ellipse(shape, (89, 131), (8, 8)) & ~body
    ivc = _ellipse(shape, (90, 108), (7, 9)) & ~body
    hu[aorta | ivc] = 170.0
    spine = find_vertebra(hu, hu >= 150, (1.5, 1.5))
    assert spine is not None
    # Most of each joins the mask (what lies beside the body is trimmed off).
    assert spine.bone[aorta].mean() > 0.8 and spine.bone[ivc].mean() > 0.8, "vessels not in the vertebra's mask"
    body_front = np.nonzero(body.any(axis=1))[0].min()
    assert abs(spine.front_row - body_front) <= 3, (spine.front_row, body_front)


def _osteoporotic_vertebra() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The drawn torso with an osteoporotic vertebra: a thin cortex broken into pieces
    around 140 HU cancellous bone with fatty marrow spots, a dense arch behind it, and
    psoas beside the body's front half. Returns HU, the body and the psoas."""
    hu, _ = _drawn_slice()
    shape = hu.shape
    hu[_ellipse(shape, (140, 150), (14, 17))] = -90.0  # remove the drawn vertebra
    body = _ellipse(shape, (132, 150), (13, 17))
    inner = _ellipse(shape, (132, 150), (11, 15))
    rows, cols = np.indices(shape)
    # The cortex is whole behind, joined to the pedicles; in front it is dots 40 degrees apart.
    angle = np.degrees(np.arctan2(rows - 132, cols - 150)) % 40.0
    hu[body] = np.where((rows >= 132) | (angle < 6.0), 250.0, 140.0)[body]
    hu[inner] = 140.0  # above a disc's HU, below the bone threshold
    hu[_ellipse(shape, (148, 136), (6, 3)) | _ellipse(shape, (148, 164), (6, 3))] = 400.0  # pedicles
    rng = np.random.default_rng(3)
    spots = inner & (rng.random(shape) < 0.08)
    hu[spots] = 40.0  # fatty marrow
    hu[_ellipse(shape, (152, 150), (4, 6))] = 10.0  # canal
    arch = (_ellipse(shape, (158, 150), (4, 16)) | _ellipse(shape, (172, 150), (12, 3))) & ~_ellipse(shape, (152, 150), (4, 6))
    hu[arch] = 450.0
    psoas = (_ellipse(shape, (126, 122), (9, 11)) | _ellipse(shape, (126, 178), (9, 11))) & ~body
    hu[psoas] = 45.0
    return hu, body, psoas


def test_osteoporotic_body_in_pieces_keeps_its_front_and_the_psoas_beside_it():
    """A thin cortex that falls apart into pieces is not gathered with the arch (what lies in
    front of the main piece may be an enhanced aorta); the cancellous bone still runs across
    the midline, so the body's front is found there and the psoas beside its front half is
    muscle (real CT, L1-L4 of an osteoporotic spine: front 18-21 mm too far back, up to
    4 cm^2 of psoas lost per slice)."""
    hu, body, psoas = _osteoporotic_vertebra()
    inside = np.where(_ellipse(hu.shape, (115, 150), (80, 110)), hu, -1000.0)  # within the fascia, as segmented
    spine = find_vertebra(inside, inside >= 150, (PIXEL_MM, PIXEL_MM))
    assert spine is not None
    body_front = np.nonzero(body.any(axis=1))[0].min()
    assert abs(spine.front_row - body_front) <= 4, (spine.front_row, body_front)  # 60 % of the width: 4 rows in
    labels = segment_slice(hu, (PIXEL_MM, PIXEL_MM))
    assert (labels[psoas] == Tissue.SKELETAL_MUSCLE).mean() > 0.8
    assert not (labels[body] == Tissue.SKELETAL_MUSCLE).any()


@pytest.mark.parametrize("seed", [1, 2])
def test_wall_kept_when_the_back_muscles_are_fattier_than_the_wall(seed):
    """Older patients' erector spinae carry more fat than their psoas and abdominal wall
    (real ``ts_example_ct`` at L3: back muscles 11 HU, wall 30 HU). The wall walk's organ
    test was made against the back muscles alone and stopped at the wall's own inner
    layers (real L3 at k 68: 112 instead of 136 cm^2 of muscle); an organ against the wall
    must be brighter than the wall too. Back muscles darkened by 20 HU more than the phantom
    draws: before, 85 % and 66 % of the wall kept, muscle Dice 0.929 and 0.892 (seeds 1, 2);
    after, 99 % and 99 %, 0.958 and 0.952."""
    phantom_module = pytest.importorskip("l3node.phantom")
    from l3node.phantom.materials import Structure
    from l3node.phantom.truth import tissues_from_hu

    phantom = phantom_module.make_phantom("normal", seed=seed, matrix=256, slice_thickness_mm=5.0, scan_range="abdomen_pelvis")
    k = phantom.ground_truth["l3_slice_index"]
    volume = phantom.volume
    pixel = (volume.spacing_mm[1], volume.spacing_mm[2])
    hu = np.array(volume.hu[k], np.float32)
    structures = np.asarray(phantom.structure_labels[k])
    rows, cols = np.nonzero(hu > 250)
    centre_row, centre_col = np.median(rows), np.median(cols)
    rr, cc = np.mgrid[: hu.shape[0], : hu.shape[1]]
    back = (rr > centre_row) & (np.abs(cc - centre_col) * pixel[1] < 50.0) & np.isin(structures, (Structure.MUSCLE, Structure.BACK_MUSCLE))
    hu[back] -= 20.0
    truth = tissues_from_hu(hu[None], np.asarray(phantom.compartment_labels[k])[None])[0]
    labels = segment_slice(hu, pixel)
    muscle, true_muscle = labels == Tissue.SKELETAL_MUSCLE, truth == Tissue.SKELETAL_MUSCLE
    wall = true_muscle & (np.hypot(rr - centre_row, cc - centre_col) * pixel[1] > 80.0)
    assert (muscle & wall).sum() >= 0.95 * wall.sum(), ((muscle & wall).sum(), wall.sum())
    assert dice(muscle, true_muscle) >= 0.94


def test_body_box_gives_the_labels_of_the_whole_slice(drawn):
    """Everything after the outline runs on the body's box (:func:`body_box`); the labels must
    be those of the same steps on the whole slice. A noisy phantom with the arms against the
    torso, and the drawn slice (its table and arm at the box's edge)."""
    from l3node.analysis.segment import _segment_body, body_box

    phantom_module = pytest.importorskip("l3node.phantom")
    phantom = phantom_module.make_phantom("four_lumbar", seed=2003, matrix=256, slice_thickness_mm=5.0,
                                          scan_range="abdomen_pelvis")
    k = phantom.ground_truth["l3_slice_index"]
    pixel = (phantom.volume.spacing_mm[1], phantom.volume.spacing_mm[2])
    # float32, as segment_slice reads every slice (float64 means differ in the last bits and
    # may flip a pixel at a threshold).
    cases = [(np.asarray(phantom.volume.hu[k], np.float32), pixel), (drawn[0].astype(np.float32), (PIXEL_MM, PIXEL_MM))]
    for hu, spacing in cases:
        body = body_mask(hu, spacing)
        box = body_box(body, spacing)
        assert box[0].stop - box[0].start < hu.shape[0] or box[1].stop - box[1].start < hu.shape[1]
        whole = _segment_body(hu, body, spacing, AnalysisConfig())
        assert whole.any()
        assert np.array_equal(segment_slice(hu, spacing), whole)
