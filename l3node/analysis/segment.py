"""Classical segmentation of one axial slice into muscle, IMAT, VAT and SAT.

HU ranges (``config.muscle_hu``, ``config.fat_hu``) say *what* a pixel is made of;
compartment geometry says *where* it belongs. This module runs the steps; each
lives in the module named. The steps of :func:`segment_slice`:

0. Noise (:func:`~l3node.analysis.body.geometry_hu`) -- the fine-grain noise is
   measured in the patient's fat; where it exceeds ``NOISE_TARGET_HU`` (sharp kernels,
   thin slices: up to 40 HU) the slice is smoothed just enough, and compartment
   geometry (muscle wall, vertebra, psoas components, where fat is visceral) is traced
   on that image; every tissue label still comes from the slice's own HU.
1. Body (:func:`~l3node.analysis.body.body_mask`) -- the largest component above
   -500 HU after an opening that cuts table, mattress and arms off at narrow
   contacts; arms lying against the torso cut off where the depth map has a
   saddle between them; internal gas filled. Every later step (0 included) runs on
   the body's bounding box grown by ``BOX_MARGIN_MM`` (:func:`body_box`): the same
   labels as on the whole slice, at a third of the time.
2. Fascia (:func:`~l3node.analysis.body_wall.fascia_radii`) -- rays from the body
   centre, sampled every half pixel. Walking inward from the skin, the
   subcutaneous fat ends at the first soft-tissue run thicker than a septum;
   on a smoothed (noisy) slice, the smoothed slice's fascia where it lies further
   out, short of the skin (noise breaks a thin external oblique into septum-short
   runs). Radii that leave their angular neighbours' median are replaced by it.
   Everything inside is "inside".
3. Vertebra (:func:`~l3node.analysis.slice_vertebra.find_vertebra`) -- bone pieces
   (never contrast-filled bowel in front of the neural arch, nor beside the body),
   cancellous bone and disc, and the spinal canal (enclosed by the arch, or between
   body and arch near the midline).
4. Organs and fluid (:func:`~l3node.analysis.compartments.organs_and_fluid`) --
   smoothed soft tissue clearly brighter than the back muscles is an organ, clearly
   darker is fluid (bowel content) -- unless only fat beside it darkens the mean
   (a muscle edge: the mean of its soft-tissue neighbours is muscle-like).
5. Muscle wall (:func:`~l3node.analysis.body_wall.walk_walls`,
   :func:`~l3node.analysis.body_wall.wall_thickness`) -- continuing inward from the
   fascia, the wall lasts while pixels are muscle-range (thin fat planes crossed)
   and ends at fat, gas, bone or organ, or at a body of fluid (bowel content, at least
   ``2 * FLUID_BODY_MM`` wide) darker than the muscle just inside the fascia on its own
   ray by ``WALL_FLUID_DELTA_HU`` (a loop pressed on the wall over a wide arc thickens
   every ray there alike). Rays much thicker than their neighbours'
   typical wall, or than a wall can be, met an organ or bowel and take the
   neighbours' thickness -- except backward rays behind the spine (back muscles).
6. Psoas, quadratus lumborum, crura
   (:func:`~l3node.analysis.compartments.muscle_compartments`, split by
   :func:`~l3node.analysis.split_bodies.split_at_necks`) -- muscle-range
   components beside and behind the vertebral body that touch the vertebra, or
   the wall behind the vertebra's middle; split first where they narrow to a neck
   or bulge into two summits of their distance map (a bowel loop pressed on the psoas).
   A part whose deep core is darker than its own rim and than the back muscles is a
   bowel loop (content inside a wall), not muscle
   (:func:`~l3node.analysis.bowel_loops.loop_parts`).
7. Wall edges -- muscle-range pixels straddling the fascia or the wall's inner
   boundary, touching wall muscle, are muscle: ray samples place both boundaries
   only to within a pixel, which at 3 mm is a third of a thin wall.
   Muscle-range pixels of the vertebra's dense rim (``SpinePlane.rim``: muscle
   blurred by the cortex), and those up to ``CORTEX_BLUR_MM`` inside the vertebra's
   mask near its cortex, touching muscle are muscle too.
8. Labels: muscle-range pixels of the wall and those components are skeletal
   muscle, except within ``BOWEL_WALL_MM`` of bowel gas (the bowel wall);
   fat-range pixels between muscle pixels or in small pockets enclosed
   by muscle are IMAT (:func:`~l3node.analysis.fat_pockets.imat_compartment`), except
   pockets closed by muscle (and the vertebra) near the vertebra, which lie around the
   spine (:func:`~l3node.analysis.fat_pockets.paraspinal_pockets`); other
   fat-range pixels inside the fascia are VAT if fat on the smoothed image too (noise
   in bowel content is not), except in and right behind the
   vertebra, in those pockets and within ``GAS_MARGIN_MM`` of bowel gas (partial volume, stool);
   fat-range pixels outside the fascia, below the skin, are SAT. Skin, bone,
   organs, table and arms are 0. Fat straddling the fascia and touching SAT is SAT.
   With ``config.imat_edge`` = ``"outline"``, fat-range pixels touching muscle whose
   centre lies inside the muscle's outline (nearer the local muscle level than the fat
   level once lightly smoothed) are IMAT
   (:func:`~l3node.analysis.fat_pockets.muscle_rim_fat`), as a drawn outline counts them.

Slices are ``(row, col)`` in the convention of :mod:`l3node.analysis.volume`; all
sizes are in mm so the same rules hold from 0.6 mm to 3 mm pixels.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.body import SKIN_MM, body_mask, geometry_hu
from l3node.analysis.body_wall import (
    MUSCLE,
    ORGAN,
    PolarGrid,
    classify,
    fascia_radii,
    per_ray_mean,
    skin_radii,
    smooth_radii,
    walk_walls,
    wall_thickness,
)
from l3node.analysis.bowel_loops import loop_parts
from l3node.analysis.compartments import (
    BOWEL_WALL_MM,
    FASCIA_BAND_MM,
    GAS_HU,
    GAS_MARGIN_MM,
    WALL_FLUID_DELTA_HU,
    back_muscle_hu,
    fluid_bodies,
    muscle_compartments,
    muscle_reference_hu,
    organs_and_fluid,
    smoothed_hu,
    soft_tissue_hu,
)
from l3node.analysis.fat_pockets import imat_compartment, muscle_rim_fat, paraspinal_pockets
from l3node.analysis.slice_vertebra import BONE_HU, CORTEX_BLUR_MM, around_spine, find_vertebra
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume, axial_plane
from l3node.config import AnalysisConfig

__all__ = ["BOX_MARGIN_MM", "BOX_MARGIN_PX", "averaged_slices", "body_box", "body_mask", "segment_at_l3", "segment_slice"]

BOX_MARGIN_MM = 15.0
"""Everything after the body outline works on the body's bounding box grown by this margin:
the widest filter (5 mm means, a 1.5-pixel Gaussian) then sees the same pixels as on the
whole slice, so the labels are the same, at about a third of the time on a 512 x 512 slice."""
BOX_MARGIN_PX = 8
FASCIA_SKIN_GAP_MM = 3.0
"""A fascia found on the smoothed slice this close to the skin is not used: smoothed, a
table or mattress touching the skin looks like a muscle layer there (dev seed 155)."""


def segment_slice(hu: np.ndarray, pixel_mm: tuple[float, float], config: AnalysisConfig | None = None) -> np.ndarray:
    """Label the tissues of one axial slice.

    Parameters
    ----------
    hu:
        2D array ``(row, col)`` in Hounsfield units, anterior at the top, patient
        right on the image left.
    pixel_mm:
        ``(row spacing, column spacing)`` in mm.
    config:
        HU ranges; defaults to :class:`~l3node.config.AnalysisConfig`.

    Returns
    -------
    numpy.ndarray
        uint8 labels of the same shape, values of :class:`~l3node.analysis.tissues.Tissue`
        (0 = anything else).

    Raises
    ------
    ValueError
        If ``hu`` is not 2D or a pixel spacing is not positive.
    """
    config = config or AnalysisConfig()
    hu, (dy, dx) = axial_plane(hu, pixel_mm, "segment_slice")

    labels = np.zeros(hu.shape, np.uint8)
    body = body_mask(hu, (dy, dx))
    if body.sum() < 100:
        return labels
    box = body_box(body, (dy, dx))
    labels[box] = _segment_body(hu[box], body[box], (dy, dx), config)
    return labels


def body_box(body: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[slice, slice]:
    """The bounding box of ``body`` grown by ``BOX_MARGIN_MM`` (at least ``BOX_MARGIN_PX``),
    clipped to the slice.

    Parameters
    ----------
    body:
        Non-empty boolean body mask.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    tuple of slice
        ``(rows, columns)``.
    """
    rows, cols = np.nonzero(body.any(axis=1))[0], np.nonzero(body.any(axis=0))[0]
    margin = [max(BOX_MARGIN_PX, int(np.ceil(BOX_MARGIN_MM / spacing))) for spacing in pixel_mm]
    return (slice(max(0, rows[0] - margin[0]), rows[-1] + margin[0] + 1),
            slice(max(0, cols[0] - margin[1]), cols[-1] + margin[1] + 1))


def _segment_body(hu: np.ndarray, body: np.ndarray, pixel_mm: tuple[float, float], config: AnalysisConfig) -> np.ndarray:
    """Steps 0 and 2-8 of the module's list on the body's box (:func:`segment_slice`)."""
    dy, dx = pixel_mm
    labels = np.zeros(hu.shape, np.uint8)
    muscle_hu = (hu >= config.muscle_hu.min) & (hu <= config.muscle_hu.max) & body
    fat_hu = (hu >= config.fat_hu.min) & (hu <= config.fat_hu.max) & body

    # Compartment geometry is traced on a slice smoothed just below the noise target:
    # at 40 HU noise single muscle pixels fall in the bone or fat range, stopped the
    # wall walk and riddled psoas and back muscles (phantoms, sharp kernel, 0.6-1.5 mm:
    # 10-19 cm^2 of muscle lost). The fascia is found on the slice itself: its septum
    # tolerance already crosses noise, and on the smoothed slice a table touching the
    # skin put the fascia at the skin over an arc (dev seed 155: 7 cm^2 of SAT as VAT).
    ghu = geometry_hu(hu, body, (dy, dx))
    geometry = PolarGrid(body, (dy, dx))
    classes = classify(ghu, body, config)
    fascia_r = fascia_radii(classify(hu, body, config), body, geometry)
    if ghu is not hu:  # smoothed (geometry_hu returns the slice itself when it is quiet)
        # On a noisy slice a thin outer muscle layer (external oblique, 2-4 mm) falls apart
        # into runs shorter than a septum and the walk crosses it; the smoothed slice keeps
        # it whole. Its fascia is taken where it lies further out -- but not at the skin.
        smooth_r = fascia_radii(classes, body, geometry)
        further_out = (smooth_r > fascia_r) & (smooth_r < skin_radii(body, geometry) - FASCIA_SKIN_GAP_MM)
        fascia_r = np.where(further_out, smooth_r, fascia_r)
    fascia_r = smooth_radii(fascia_r, geometry.step_deg)
    fascia_at = geometry.at_angle(fascia_r)
    inside = body & (geometry.rho < fascia_at)
    bone = (ghu >= max(BONE_HU, config.muscle_hu.max)) & body
    spine = find_vertebra(np.where(inside, ghu, -1000.0), bone & inside, (dy, dx))
    fascia_band = inside & (geometry.rho >= fascia_at - FASCIA_BAND_MM)
    muscle_ref = muscle_reference_hu(ghu, classes, fascia_band)
    muscle_geo = (ghu >= config.muscle_hu.min) & (ghu <= config.muscle_hu.max) & body
    not_muscle = np.zeros_like(body)
    if muscle_ref is not None:
        # Organs brighter than the patient's muscle (liver, spleen, enhanced bowel or
        # kidney) stop the wall walk; fluid darker than it (bowel content, cysts)
        # is not collected as psoas.
        smooth = smoothed_hu(hu, (dy, dx))
        soft = soft_tissue_hu(hu, muscle_hu & inside, (dy, dx))
        # The wall's own level for the organ test: soft-tissue means average the noise
        # out that lifts an upper quartile of single pixels, and fat does not dilute them.
        # Same band and classes as muscle_ref, so never None here.
        wall_ref = muscle_reference_hu(soft, classes, fascia_band)
        assert wall_ref is not None
        stops_wall, not_muscle = organs_and_fluid(hu, muscle_hu & inside, inside, spine, wall_ref, (dy, dx),
                                                  smooth=smooth, soft=soft)
        classes[(classes == MUSCLE) & stops_wall] = ORGAN
        # Bowel content pressed on the wall over a wide arc thickens every ray there alike,
        # so the neighbours' thickness is no check; a body of fluid darker than the outer
        # wall on its own ray stops the walk (a fatty, fat-planed wall is dark all through).
        outer = fascia_band & (classes == MUSCLE)
        outer_hu = geometry.at_angle(per_ray_mean(geometry, soft, outer))
        dark = fluid_bodies(hu, not_muscle & ~stops_wall, (dy, dx), smooth) & (soft < outer_hu - WALL_FLUID_DELTA_HU)
        classes[(classes == MUSCLE) & dark] = ORGAN
    rays = walk_walls(classes, fascia_r, geometry)

    wall_t = wall_thickness(rays, fascia_r, spine, geometry)
    wall = inside & (geometry.rho >= geometry.at_angle(fascia_r - wall_t))

    # Components are found on the smoothed muscle range; the labels keep the slice's HU.
    # A bowel loop split off the psoas is content darker than its own wall and than the
    # patient's muscle (the back muscles' soft-tissue mean: fat does not darken it).
    is_loop = None
    if spine is not None and muscle_ref is not None:
        back_ref = back_muscle_hu(soft, muscle_hu & inside, spine, (dy, dx))
        is_loop = partial(loop_parts, hu=hu, soft=muscle_hu & inside,
                          muscle_ref_hu=back_ref if back_ref is not None else muscle_ref, pixel_mm=(dy, dx))
    muscle = muscle_compartments(muscle_geo & inside, wall, spine, not_muscle, (dy, dx), is_loop) & muscle_hu
    depth = ndi.distance_transform_edt(body, sampling=(dy, dx))
    # Ray samples place fascia and inner wall boundary to within a pixel; the
    # muscle-range pixels straddling either, touching the wall muscle, are the
    # wall's own partial-volume edges.
    wall_muscle = ndi.binary_dilation(muscle & wall)
    outer_edge = ~inside & (geometry.rho < fascia_at + max(dy, dx)) & (depth > max(SKIN_MM, dy, dx))
    inner_edge = inside & ~wall & (geometry.rho >= geometry.at_angle(fascia_r - wall_t) - max(dy, dx))
    inner_edge &= (classes != ORGAN) & ~not_muscle & (~spine.bone if spine is not None else True)
    muscle |= muscle_hu & wall_muscle & (outer_edge | inner_edge)
    if spine is not None and spine.rim is not None:
        # Muscle against the vertebra is blurred by the cortex: its edge pixels are in the
        # vertebra's dense rim, or (sharp kernels, fine pixels) inside the vertebra's mask
        # up to CORTEX_BLUR_MM deep, near cortex bright on the denoised slice (not the
        # disc's edge). Those in the muscle range are taken back from the muscle they
        # touch, one pixel at a time (not used to find components: a kidney touching a
        # crus would join through them).
        rr, cc = np.nonzero(spine.bone)
        margin = int(np.ceil(CORTEX_BLUR_MM / min(dy, dx))) + 3
        box = (slice(max(0, rr.min() - margin), rr.max() + margin + 1), slice(max(0, cc.min() - margin), cc.max() + margin + 1))
        bone = spine.bone[box]
        near_cortex = ndi.distance_transform_edt(ghu[box] < BONE_HU, sampling=(dy, dx)) <= CORTEX_BLUR_MM + max(dy, dx)
        mask_edge = bone & (ndi.distance_transform_edt(bone, sampling=(dy, dx)) <= CORTEX_BLUR_MM)
        blurred = muscle_hu[box] & (spine.rim[box] | mask_edge) & near_cortex
        grown = muscle[box]
        for _ in range(max(1, int(np.ceil(CORTEX_BLUR_MM / min(dy, dx))))):
            grown = grown | (blurred & ndi.binary_dilation(grown))
        muscle[box] = grown
    gas = (hu < GAS_HU) & inside
    gas_mm = ndi.distance_transform_edt(~gas, sampling=(dy, dx))
    # Between bowel gas and any muscle lies the bowel wall: soft tissue this close to
    # gas is bowel wall, also where the loop is pressed on the abdominal wall or psoas.
    muscle &= gas_mm > max(BOWEL_WALL_MM, dy, dx)
    compartment = imat_compartment(muscle, (dy, dx))
    imat = fat_hu & compartment & ~muscle
    near_gas = gas_mm <= max(GAS_MARGIN_MM, dy, dx)
    # A fat-range pixel in soft tissue that is not fat once the noise is smoothed
    # (bowel content, organs) is noise, not visceral fat; fat pixels at the edge of
    # fat are kept by one pixel of slack.
    fat_geo = (ghu >= config.fat_hu.min) & (ghu <= config.fat_hu.max)
    vat = fat_hu & inside & ~compartment & ~near_gas & ndi.binary_dilation(fat_geo)
    if spine is not None:
        paraspinal = paraspinal_pockets(muscle, spine, (dy, dx))
        paraspinal |= ndi.binary_dilation(paraspinal) & ~muscle
        vat &= ~around_spine(spine, inside, (dy, dx)) & ~spine.bone & ~paraspinal
        imat &= ~paraspinal
    # Skin: the outermost SKIN_MM, partial volume of air and dermis.
    sat = fat_hu & ~inside & (depth > max(SKIN_MM, dy, dx))
    # Fat straddling the fascia and touching SAT is SAT too (the fascia's ray
    # samples jitter by a pixel).
    sat_edge = fat_hu & inside & (geometry.rho >= fascia_at - max(dy, dx)) & ~compartment & ndi.binary_dilation(sat)
    sat |= sat_edge
    vat &= ~sat_edge
    if config.imat_edge == "outline":
        # The muscle's own edge pixels that partial volume put in the fat range are IMAT,
        # as inside a drawn outline (fat-infiltrated muscle: a whole ring of them).
        rim = muscle_rim_fat(hu, muscle, imat | vat | sat, vat | sat, (dy, dx))
        imat |= rim
        vat &= ~rim
        sat &= ~rim

    labels[sat] = Tissue.SAT
    labels[vat] = Tissue.VAT
    labels[imat] = Tissue.IMAT
    labels[muscle] = Tissue.SKELETAL_MUSCLE
    return labels


def averaged_slices(volume: Volume, slice_index: int, average_slices_mm: float) -> range:
    """Indices of the slices whose centres lie within ``± average_slices_mm`` of ``slice_index``
    (the slice alone at 0), clipped to the volume."""
    half = int(np.floor(average_slices_mm / volume.spacing_mm[0] + 1e-6))
    return range(max(0, slice_index - half), min(volume.shape[0], slice_index + half + 1))


def segment_at_l3(volume: Volume, slice_index: int, config: AnalysisConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment the L3 slice, optionally averaged over neighbouring slices.

    With ``config.average_slices_mm`` = 0 this is :func:`segment_slice` on slice
    ``slice_index``. Otherwise every slice whose centre lies within
    ``± average_slices_mm`` of the L3 slice is segmented on its own, and the
    returned label map is the per-pixel majority vote (ties go to the L3 slice's
    own label) with the per-pixel mean HU of those slices as the plane. Measuring
    that pair gives areas equal to the mean of the per-slice areas up to the vote,
    and mean HU over the averaged plane; one 2D result remains for SEG and overlay.

    Returns
    -------
    tuple of numpy.ndarray
        ``(labels, hu_plane)``, both ``(row, col)``.

    Raises
    ------
    ValueError
        If ``slice_index`` is outside the volume.
    """
    config = config or AnalysisConfig()
    n = volume.shape[0]
    if not 0 <= slice_index < n:
        raise ValueError(f"slice index {slice_index} outside 0..{n - 1}")
    pixel_mm = (volume.spacing_mm[1], volume.spacing_mm[2])
    indices = averaged_slices(volume, slice_index, config.average_slices_mm)
    if len(indices) == 1:
        plane = volume.hu[slice_index]
        return segment_slice(plane, pixel_mm, config), np.asarray(plane, np.float32)
    stack = np.stack([segment_slice(volume.hu[k], pixel_mm, config) for k in indices])
    votes = np.stack([(stack == value).sum(axis=0) for value in range(len(Tissue) + 1)])
    labels = votes.argmax(axis=0).astype(np.uint8)
    own = stack[list(indices).index(slice_index)]
    tie = votes[own, np.arange(own.shape[0])[:, None], np.arange(own.shape[1])] == votes.max(axis=0)
    labels[tie] = own[tie]
    plane = volume.hu[list(indices)].mean(axis=0).astype(np.float32)
    return labels, plane

