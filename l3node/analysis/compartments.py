"""Muscle compartments of one axial slice: the patient's muscle HU, organs and fluid that
are not muscle, and psoas and quadratus lumborum beside the spine.

Slices are ``(row, col)`` in the convention of :mod:`l3node.analysis.volume`;
sizes are in mm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.body_wall import MUSCLE, PARASPINAL_HALF_WIDTH_MM
from l3node.analysis.masks import fill_holes, region_max, region_median
from l3node.analysis.slice_vertebra import SpinePlane
from l3node.analysis.split_bodies import split_at_necks

__all__ = [
    "BOWEL_WALL_MM", "FASCIA_BAND_MM", "GAS_HU", "GAS_MARGIN_MM", "WALL_FLUID_DELTA_HU", "back_muscle_hu",
    "fluid_bodies", "masked_mean", "muscle_compartments", "muscle_reference_hu", "organs_and_fluid", "smoothed_hu",
    "soft_tissue_hu",
]

GAS_HU = -400.0
"""Bowel gas; fat-range pixels within GAS_MARGIN_MM of it are partial volume or stool."""
GAS_MARGIN_MM = 3.0
BOWEL_WALL_MM = 4.0
"""Soft tissue within this of bowel gas is bowel wall (up to 3 mm, and a pixel of partial
volume), never muscle, even where the loop is pressed on the abdominal wall or psoas."""
ORGAN_DELTA_HU = 12.0
"""Smoothed soft tissue this much brighter than the back muscles is an organ (liver, spleen)."""
FLUID_DELTA_HU = 15.0
"""Smoothed soft tissue this much darker than the back muscles is fluid (bowel content), not
psoas. 20 HU let fluid-filled loops pressed on the psoas join it; 15 HU took phantom muscle
Dice from 0.9646 to 0.9661 and SMA error from 2.5 to 2.3 % (dev seeds 0-19), neutral at
512 px, 12 HU began to eat psoas at 512 px."""
EDGE_DELTA_HU = 10.0
"""... unless its soft-tissue neighbours (:func:`soft_tissue_hu`) are within this of the back
muscles': then only fat beside it darkened the mean, and it is a muscle edge. Without this
the edge pixels of every psoas and quadratus lumborum were fluid: 4-11 cm^2 of muscle per
phantom, 118 cm^2 over 20 phantoms."""
FLUID_BODY_MM = 5.0
"""Fluid pixels within this of a fluid core at least this deep (a region at least twice this
wide) are a body of fluid (a bowel loop, radius 9-17 mm), not the fat-darkened edge of a muscle."""
FAT_MEAN_HU = -30.0
"""A 5 mm mean below this is fat, not fluid."""
WALL_FLUID_DELTA_HU = 20.0
"""A body of fluid whose soft-tissue mean is this much darker than the muscle just inside the
fascia on its own ray is bowel content pressed on the wall (water-like content 0-20 HU, muscle
40-60 HU), and ends the wall walk. 15 HU also cut inner oblique layers darkened by blurred fat
planes (phantoms: 803 muscle pixels lost over 52 slices, 24 at 20 HU)."""
FASCIA_BAND_MM = 6.0
"""Depth below the fascia sampled for the patient's own muscle HU."""

# Psoas, quadratus lumborum (IMAT and fat pockets: l3node.analysis.fat_pockets).
NOISE_HOLE_MM2 = 2.0
"""Holes up to this size in the psoas candidates are noise (one or two pixels out of the muscle
range), filled before the opening that cuts thin contacts: the opening widened them until a
fatty psoas on a sharp-kernel, 1 mm slice fell apart (held-out seed 2410, 38 HU of noise:
-17.5 % muscle, -3.0 % with them filled)."""
PSOAS_REACH_MM = 70.0
"""Psoas, quadratus lumborum and crura are collected up to this far from the vertebra
(the quadratus lumborum's lateral edge lies 5-7 cm out; 40 mm cut it in half)."""
PSOAS_MEDIAL_FRACTION = 0.7
"""In front of the middle of the vertebra, psoas lies further from the midline than this
fraction of the vertebral body's half width (aorta and IVC lie nearer)."""
PSOAS_FRONT_MM = 6.0
"""Muscle components may reach this far in front of the vertebral body (bowel lies further).
The psoas bulges a few mm ahead of the body's front at L3. 3 mm was set while the front was
placed at enhanced aorta and IVC, ~17 mm too far forward on most contrast phantoms; with the
body's own front, 3 mm cut the psoas' front (808 muscle pixels over 32 dev slices), 10 mm took
bowel (2 338 wrong pixels), 6 mm: +532 right, +686 wrong, -181 right, -1 135 wrong."""


def muscle_reference_hu(hu: np.ndarray, classes: np.ndarray, fascia_band: np.ndarray) -> float | None:
    """The patient's own muscle HU: upper quartile of muscle-range pixels just inside the fascia.

    Those are muscle on nearly every ray; thin wall muscle is diluted by fat at its
    edges, hence the upper quartile rather than the median.

    Parameters
    ----------
    hu:
        2D slice in HU.
    classes:
        Pixel classes of :func:`~l3node.analysis.body_wall.classify`.
    fascia_band:
        Pixels within ``FASCIA_BAND_MM`` inside the fascia.

    Returns
    -------
    float or None
        None when fewer than 20 muscle-range pixels lie in the band.
    """
    reference = classes[fascia_band] == MUSCLE
    if reference.sum() < 20:
        return None
    return float(np.percentile(hu[fascia_band][reference], 75))


def back_muscle_hu(smooth: np.ndarray, muscle_hu: np.ndarray, spine: SpinePlane, pixel_mm: tuple[float, float]) -> float | None:
    """Median smoothed HU of the back muscles (behind the vertebra, near the midline), away from their edges.

    Parameters
    ----------
    smooth:
        :func:`smoothed_hu` of the slice.
    muscle_hu:
        Muscle-range pixels inside the fascia.
    spine:
        The vertebra.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    float or None
        None when less than 3 cm^2 of back muscle core is found.
    """
    rows = np.arange(muscle_hu.shape[0])[:, None]
    cols = np.arange(muscle_hu.shape[1])[None, :]
    back = (rows > spine.centre[0]) & (np.abs(cols - spine.centre[1]) * pixel_mm[1] <= PARASPINAL_HALF_WIDTH_MM)
    # Single pixels pushed out of the muscle range by noise (sharp kernels, thin slices)
    # would riddle the core with holes that the erosion widens until nothing is left.
    solid = ndi.binary_closing(muscle_hu, iterations=1) | muscle_hu
    core = ndi.binary_erosion(solid & back & ~spine.bone, iterations=max(1, int(round(3.0 / min(pixel_mm)))))
    if core.sum() * pixel_mm[0] * pixel_mm[1] < 300.0:
        return None
    return float(np.median(smooth[core]))


def smoothed_hu(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """HU averaged over about 5 mm: single pixels of muscle, liver and fluid overlap in HU, means do not.

    Parameters
    ----------
    hu:
        2D slice in HU.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    numpy.ndarray
        The mean of HU clipped to ``[-200, 300]`` over an odd window of about 5 mm.
    """
    size = max(3, int(round(5.0 / min(pixel_mm))) | 1)
    return ndi.uniform_filter(np.clip(hu, -200, 300), size=size)


def soft_tissue_hu(hu: np.ndarray, soft: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Mean HU of the soft-tissue (muscle-range) pixels within about 5 mm.

    Unlike :func:`smoothed_hu`, fat next to a muscle does not darken its edge:
    only ``soft`` pixels enter the mean (normalised convolution).

    Parameters
    ----------
    hu:
        2D slice in HU.
    soft:
        Muscle-range pixels.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    numpy.ndarray
        The mean over ``soft`` pixels of an odd window of about 5 mm; ``nan``-free,
        with the plain HU where no soft pixel is near.
    """
    size = max(3, int(round(5.0 / min(pixel_mm))) | 1)
    return masked_mean(hu, soft, size, fallback=hu)


def masked_mean(values: np.ndarray, mask: np.ndarray, size: int, fallback: np.ndarray | float) -> np.ndarray:
    """Mean of ``values`` over the ``mask`` pixels of a ``size`` x ``size`` window around
    every pixel (normalised convolution); ``fallback`` where the window holds none.

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``values``.
    """
    weight = ndi.uniform_filter(mask.astype(np.float32), size=size)
    total = ndi.uniform_filter(np.where(mask, values, 0.0).astype(np.float32), size=size)
    # One mask pixel in the window weighs at least 1 / size^2; less is rounding residue.
    covered = weight > 1e-3
    return np.where(covered, total / np.maximum(weight, 1e-6), fallback).astype(np.float32)


def organs_and_fluid(
    hu: np.ndarray,
    muscle_hu: np.ndarray,
    inside: np.ndarray,
    spine: SpinePlane | None,
    wall_ref_hu: float,
    pixel_mm: tuple[float, float],
    smooth: np.ndarray | None = None,
    soft: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft tissue that is not muscle: organs brighter than it, fluid darker than it.

    Single pixels of muscle, liver and fluid overlap in HU; their means over about
    5 mm (:func:`smoothed_hu`) do not. The reference is the brighter of the back
    muscles' smoothed HU (:func:`back_muscle_hu`) and the wall's level ``wall_ref_hu``:
    older patients' back muscles often carry more fat than their psoas and abdominal
    wall (real CT at L3: back 11 HU, wall 30 HU), and against the back muscles alone
    the wall's own inner layers read as organ and ended the wall, and bowel content was
    not darker than the reference. Behind the vertebra near the midline lie
    only back muscles: nothing there is an organ or fluid. A muscle-range pixel whose
    plain mean is dark only because fat lies beside it -- its soft-tissue mean
    (:func:`soft_tissue_hu`) is within ``EDGE_DELTA_HU`` of the back muscles' -- is a
    muscle edge, not fluid.

    Parameters
    ----------
    hu:
        2D slice in HU.
    muscle_hu:
        Muscle-range pixels inside the fascia.
    inside:
        Pixels inside the fascia.
    spine:
        The vertebra, if found.
    wall_ref_hu:
        The wall's level: :func:`muscle_reference_hu` of the slice's soft-tissue means
        (:func:`soft_tissue_hu`) in the fascia band.
    pixel_mm:
        ``(row, column)`` spacing in mm.
    smooth, soft:
        :func:`smoothed_hu` of ``hu`` and :func:`soft_tissue_hu` of ``hu`` over
        ``muscle_hu``, when the caller has them already; computed otherwise.

    Returns
    -------
    tuple of numpy.ndarray
        ``(stops_wall, not_muscle)``: organ pixels that end the wall walk, and organ
        or fluid pixels never collected as psoas or quadratus lumborum.
    """
    zone = inside.copy()
    back_ref = None
    smooth = smoothed_hu(hu, pixel_mm) if smooth is None else smooth
    if spine is not None:
        back_rows = slice(int(np.ceil(spine.centre[0])), None)
        cols = np.abs(np.arange(hu.shape[1]) - spine.centre[1]) * pixel_mm[1] <= PARASPINAL_HALF_WIDTH_MM
        zone[back_rows, cols] = False
        back_ref = back_muscle_hu(smooth, muscle_hu, spine, pixel_mm)
    # Psoas, crura and wall are often denser than fatty back muscles: the brighter of
    # the two levels is the patient's muscle.
    reference = wall_ref_hu if back_ref is None else max(back_ref, wall_ref_hu)
    soft = soft_tissue_hu(hu, muscle_hu, pixel_mm) if soft is None else soft
    bright = zone & (smooth > reference + ORGAN_DELTA_HU)
    # The smoothing spreads an organ by half its window over the wall muscle against
    # it; at the organ's rim only pixels bright themselves are organ.
    organ = bright & (ndi.binary_erosion(bright) | (hu > reference + ORGAN_DELTA_HU))
    # Fat beside muscle would darken a plain mean at every muscle edge; fluid is
    # judged on the mean of the soft-tissue neighbours only.
    soft_ref = back_muscle_hu(soft, muscle_hu, spine, pixel_mm) if spine is not None else None
    soft_ref = soft_ref if soft_ref is not None else reference
    fluid = zone & (smooth < reference - FLUID_DELTA_HU) & ~(muscle_hu & (soft >= soft_ref - EDGE_DELTA_HU))
    return organ, organ | fluid


def fluid_bodies(
    hu: np.ndarray, fluid: np.ndarray, pixel_mm: tuple[float, float], smooth: np.ndarray | None = None
) -> np.ndarray:
    """The parts of ``fluid`` that are bodies of fluid: at least ``2 * FLUID_BODY_MM`` wide.

    A bowel loop's content is such a body; the fat-darkened edge of a muscle, or a thin
    fatty wall layer between fat planes, is not.

    Parameters
    ----------
    hu:
        2D slice in HU.
    fluid:
        Fluid (and fat) pixels of :func:`organs_and_fluid`'s ``not_muscle``.
    pixel_mm:
        ``(row, column)`` spacing in mm.
    smooth:
        :func:`smoothed_hu` of ``hu``, when the caller has it; computed otherwise.

    Returns
    -------
    numpy.ndarray
        Boolean mask: the opening of the non-fat part of ``fluid`` by a disc of ``FLUID_BODY_MM``.
    """
    mask = fluid & ((smoothed_hu(hu, pixel_mm) if smooth is None else smooth) > FAT_MEAN_HU)
    core = ndi.distance_transform_edt(mask, sampling=pixel_mm) >= FLUID_BODY_MM
    if not core.any():
        return core
    return mask & (ndi.distance_transform_edt(~core, sampling=pixel_mm) <= FLUID_BODY_MM)


def muscle_compartments(
    muscle_hu: np.ndarray,
    wall: np.ndarray,
    spine: SpinePlane | None,
    not_muscle: np.ndarray,
    pixel_mm: tuple[float, float],
    is_loop: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Muscle-range pixels of the wall, plus psoas, quadratus lumborum and crura.

    Those lie beside and behind the vertebral body: muscle-range components (after
    an opening that cuts thin contacts with organs) behind the front of the
    vertebral body that touch the vertebra, or touch the wall muscle in the
    posterior half of the body. Aorta, IVC and bowel lie in front of the vertebra.
    Kept components take back one pixel all round, also where ``not_muscle`` marked
    it: their edge is partial volume, darkened by fat or brightened by an organ.

    Parameters
    ----------
    muscle_hu:
        Muscle-range pixels inside the fascia.
    wall:
        The muscle wall band (fascia to the wall's inner boundary).
    spine:
        The vertebra; without it only the wall is returned.
    not_muscle:
        Organ and fluid pixels (:func:`organs_and_fluid`).
    pixel_mm:
        ``(row, column)`` spacing in mm.
    is_loop:
        Given the labelled parts and their number, True (array of length n + 1) for parts
        that are bowel loops (:func:`~l3node.analysis.bowel_loops.loop_parts`); those are
        not collected.

    Returns
    -------
    numpy.ndarray
        Skeletal muscle pixels.
    """
    muscle = muscle_hu & wall
    if spine is None:
        return muscle
    muscle &= ~spine.bone
    rows = np.arange(muscle_hu.shape[0])[:, None]
    posterior = np.broadcast_to(rows >= spine.front_row - PSOAS_FRONT_MM / pixel_mm[0], muscle_hu.shape)
    reach = ndi.distance_transform_edt(~spine.bone, sampling=pixel_mm)
    # In front of the middle of the vertebra only pixels beside the vertebral body
    # can be psoas; aorta and IVC lie in front of the body, touching it.
    cols = np.arange(muscle_hu.shape[1])[None, :]
    beside = (np.abs(cols - spine.centre[1]) >= PSOAS_MEDIAL_FRACTION * spine.body_half_width_px) | (rows >= spine.centre[0])
    candidates = muscle_hu & posterior & beside & ~wall & ~spine.bone & ~not_muscle & (reach <= PSOAS_REACH_MM)
    # Single pixels that noise put out of the muscle range (sharp kernel, fine pixels) are
    # holes the opening would widen until the psoas falls apart into pieces that touch
    # nothing: filled for the opening only.
    solid = fill_holes(candidates, max(1, int(NOISE_HOLE_MM2 / (pixel_mm[0] * pixel_mm[1]))))
    opened = ndi.binary_opening(solid, iterations=max(1, int(round(2.0 / min(pixel_mm))))) & candidates
    labelled, n = ndi.label(opened)
    if n == 0:
        return muscle
    median_row = region_median(rows, labelled, n)
    touches_bone = region_max(reach <= 4.0 + max(pixel_mm), labelled, n).astype(bool)
    touches_wall = region_max(ndi.binary_dilation(muscle, iterations=1), labelled, n).astype(bool)
    keep = np.zeros(n + 1, bool)
    # Muscle islands that touch neither are not collected: behind the vertebra's
    # middle they are as often a kidney's posterior half as a quadratus lumborum
    # (tried: matching the back muscles' mean HU within 3 HU still took a kidney
    # at L2 of the real CT for 8 cm²).
    keep[1:] = (touches_bone & (median_row >= spine.front_row)) | ((median_row >= spine.centre[0]) & touches_wall)
    grown = keep[labelled]
    # Bowel loops of muscle HU pressed on the psoas join it across a neck; split kept
    # components at necks and keep only the parts that pass the same test (phantoms:
    # 0.5 cm^2 less bowel per slice taken for psoas, seeds 0-19).
    parts, n_parts = split_at_necks(grown, pixel_mm)
    if n_parts:
        median_row = region_median(rows, parts, n_parts)
        touches_bone = region_max(reach <= 4.0 + max(pixel_mm), parts, n_parts).astype(bool)
        touches_wall = region_max(ndi.binary_dilation(muscle, iterations=1), parts, n_parts).astype(bool)
        keep_part = np.zeros(n_parts + 1, bool)
        keep_part[1:] = (touches_bone & (median_row >= spine.front_row)) | (
            (median_row >= spine.centre[0]) & touches_wall)
        if is_loop is not None:
            keep_part &= ~is_loop(parts, n_parts)
        grown &= keep_part[parts]
    # Give back the pixels the opening removed at the borders of kept components,
    # and their edge pixels that fat beside them made look like fluid.
    edge = muscle_hu & posterior & beside & ~wall & ~spine.bone & (reach <= PSOAS_REACH_MM)
    grown = ndi.binary_dilation(grown, iterations=1) & (candidates | edge)
    return muscle | grown
