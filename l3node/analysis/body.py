"""The patient's cross-section on one axial slice: body outline without table or arms,
and the image noise measured in its fat.

Slices are ``(row, col)`` in the convention of :mod:`l3node.analysis.volume`; sizes
are in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.masks import fill_holes, region_max

__all__ = [
    "ARM_BRIDGE_MM", "BODY_HU", "FOLD_MM", "LIMB_BONE_CUT_MM2", "LIMB_BONE_MM2", "LIMB_BONED_PROMINENCE_MM",
    "LIMB_MAX_FRACTION", "LIMB_PROMINENCE_MM",
    "NOISE_MAX_SIGMA_PX", "NOISE_TARGET_HU", "SKIN_MM",
    "body_mask", "drop_limbs", "geometry_hu", "largest_component", "noise_sd_hu",
]

BODY_HU = -500.0
"""Above this a pixel is patient, table or clothing; below it air."""
ARM_BRIDGE_MM = 12.0
"""Body parts joined by a neck narrower than twice this (arms, table) are cut off."""
SKIN_MM = 2.0
"""Skin thickness excluded from SAT (at least one pixel)."""
FOLD_MM = 3.0
"""Air enclosed this close to the outline (or one pixel) lies in a skin fold between arm and torso,
not in bowel or lung."""
LIMB_MIN_DEPTH_MM = 15.0
"""A part of the outline whose centre lies less deep than this is not an arm (too thin to matter) ..."""
LIMB_PROMINENCE_MM = 10.0
"""... nor is one whose depth falls by less than this on the way to the torso's centre:
an arm lying against the torso is joined by a neck narrower than itself."""
LIMB_BONED_PROMINENCE_MM = 5.0
"""... or by less than this when it holds an arm's bones at its centre (LIMB_BONE_MM2 within
its depth of its summit): a forearm pressed on the flank of a thin patient over a broad
contact (phantom combined seed 1210: 6.6 mm; kept, the arm's fat was SAT, SAT Dice 0.77)."""
LIMB_WINDOW_MM = 30.0
"""Depth maxima are looked for within this window."""
LIMB_BONE_HU = 200.0
"""Bone of an arm: cortex of the humerus, radius or ulna ..."""
LIMB_BONE_MM2 = 50.0
"""An arm holds at least this much bone of at least LIMB_BONE_HU (humerus, or radius and ulna) ..."""
LIMB_BONE_CUT_MM2 = 10.0
"""... or this much where the field of view cuts it: the edge of the image may cut off most of
the humerus (phantom seed 75: 13 mm^2 left; kept as a fat roll, the arm pressed on the flank
put the fascia on its far side over 40 degrees, and 16 cm^2 of wall muscle was lost)."""
NOISE_TARGET_HU = 15.0
"""Fine-grain noise SD above which the slice is smoothed before compartment geometry is
traced (wall walk, vertebra, muscle components): at 40 HU (sharp kernel, thin slice) single muscle pixels fall
in the bone or fat range and stop the wall walk."""
NOISE_MAX_SIGMA_PX = 1.5
"""The geometry image is never smoothed by more than this Gaussian sigma (pixels)."""
LIMB_MAX_FRACTION = 0.25
"""Arms are less than this fraction of the cross-section, alone or together; a larger lobe is
torso (a chest wall around a lung base, a flank), kept."""


def body_mask(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The patient's cross-section without table, mattress, arms or outside air.

    The largest component above ``BODY_HU``, opened by a disc of ``ARM_BRIDGE_MM``
    so that arms, table and mattress joined by narrow necks fall away, grown back
    inside the original outline; arms lying against the torso over a broad contact
    are cut off by :func:`drop_limbs`; internal gas is filled.

    Parameters
    ----------
    hu:
        2D slice ``(row, col)`` in HU.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the slice's shape; all False when nothing is above ``BODY_HU``.

    Raises
    ------
    RuntimeError
        Not raised for a 2D slice; a non-2D ``hu`` fails inside :mod:`scipy.ndimage`.
    """
    candidate = hu > BODY_HU
    largest = largest_component(candidate)
    if not largest.any():
        return largest
    # Opening by a disc of ARM_BRIDGE_MM (via distance transforms, which are fast
    # for large radii) removes necks narrower than the disc; the core is then
    # grown back within the original mask so the body outline is kept exactly.
    depth = ndi.distance_transform_edt(largest, sampling=pixel_mm)
    core = largest_component(depth > ARM_BRIDGE_MM)
    if core.any():
        reach = ndi.distance_transform_edt(~core, sampling=pixel_mm)
        largest = largest_component(largest & (reach <= ARM_BRIDGE_MM + max(pixel_mm)))
    # Air enclosed between an arm and the torso is not internal gas: it lies within a
    # skin fold of the outline. It stays out while arms are looked for.
    filled = fill_holes(largest)
    holes, n = ndi.label(filled & ~largest)
    if n:
        near_outside = ndi.distance_transform_edt(filled, sampling=pixel_mm) <= max(FOLD_MM, *pixel_mm)
        folds = np.isin(holes, np.unique(holes[near_outside & (holes > 0)]))
        filled &= ~folds
    return fill_holes(drop_limbs(largest_component(filled), pixel_mm, hu >= LIMB_BONE_HU))


def drop_limbs(body: np.ndarray, pixel_mm: tuple[float, float], bone: np.ndarray | None = None) -> np.ndarray:
    """The body without arms that lie against it over a broad contact.

    An arm joined by a neck wider than ``2 * ARM_BRIDGE_MM`` survives the opening of
    :func:`body_mask`. On the depth map (distance to the outline) an arm is a
    separate summit: at least ``LIMB_MIN_DEPTH_MM`` deep, beside (not in front of
    or behind) the torso's deepest point, and the depth on the best path to the
    torso falls by at least ``LIMB_PROMINENCE_MM`` below it (``LIMB_BONED_PROMINENCE_MM``
    when an arm's bones lie at its centre). Each pixel then goes
    to the nearest of the parts deeper than the saddles (torso or arm); the arms'
    shares are dropped, except a share with less than ``LIMB_BONE_MM2`` of ``bone``
    (a fat roll of the flank) or of ``LIMB_MAX_FRACTION`` of the section or more;
    nothing is dropped when the arms together would be that large. The edge of the
    image counts as outline, so an arm cut by the field of view is found as well.

    Parameters
    ----------
    body:
        Boolean mask of one connected body outline.
    pixel_mm:
        ``(row, column)`` spacing in mm.
    bone:
        Bone pixels (``LIMB_BONE_HU`` and above); without it any lobe that passes the
        other tests is an arm.

    Returns
    -------
    numpy.ndarray
        The mask without arms; ``body`` itself when no arm is found.
    """
    if not body.any():
        return body
    # Outside the field of view counts as outline: a lobe cut by it is no deeper than it shows.
    depth = ndi.distance_transform_edt(np.pad(body, 1), sampling=pixel_mm)[1:-1, 1:-1]
    size = max(3, int(round(LIMB_WINDOW_MM / min(pixel_mm))) | 1)
    summits = (depth >= ndi.maximum_filter(depth, size=size)) & (depth >= LIMB_MIN_DEPTH_MM)
    labelled, n = ndi.label(summits)
    if n < 2:
        return body
    index = np.arange(1, n + 1)
    heights = region_max(depth, labelled, n)
    centres = ndi.center_of_mass(summits, labelled, index)
    torso = int(np.argmax(heights))
    limbs = []
    rows, cols = np.indices(body.shape)
    for i in range(n):
        if i == torso:
            continue
        d_row = (centres[i][0] - centres[torso][0]) * pixel_mm[0]
        d_col = (centres[i][1] - centres[torso][1]) * pixel_mm[1]
        if abs(d_col) <= abs(d_row):
            continue  # in front of or behind the torso's centre: belly or back, never an arm
        saddle = _saddle(depth, labelled == i + 1, labelled == torso + 1, heights[i])
        prominence = LIMB_PROMINENCE_MM
        if bone is not None:
            # A lobe with an arm's bones at its centre is an arm even when pressed on the
            # flank over a broad contact (thin patients).
            near = np.hypot((rows - centres[i][0]) * pixel_mm[0], (cols - centres[i][1]) * pixel_mm[1]) <= heights[i]
            if (bone & near).sum() * pixel_mm[0] * pixel_mm[1] >= LIMB_BONE_MM2:
                prominence = LIMB_BONED_PROMINENCE_MM
        if heights[i] - saddle >= prominence:
            limbs.append((i + 1, saddle))
    if not limbs:
        return body
    # Above its saddle level each arm is apart from the torso; every pixel goes to
    # the nearest of those cores, which cuts each neck about halfway.
    cores = np.zeros(body.shape, np.int16)
    top_saddle = max(saddle for _, saddle in limbs)
    parts, _ = ndi.label(depth > top_saddle)
    cores[parts == parts[labelled == torso + 1].max()] = 1
    for k, (i, saddle) in enumerate(limbs, start=2):
        parts, _ = ndi.label(depth > saddle)
        cores[(parts == parts[labelled == i].max()) & (cores == 0)] = k
    nearest = ndi.distance_transform_edt(cores == 0, sampling=pixel_mm, return_distances=False, return_indices=True)
    owner = np.where(body, cores[nearest[0], nearest[1]], 0)
    total = float(body.sum())
    dropped = 0.0
    pixel_mm2 = pixel_mm[0] * pixel_mm[1]
    for k in range(2, len(limbs) + 2):
        share = owner == k
        # An arm has its humerus (or forearm bones); a fat roll of the flank has no bone.
        cut = share[[0, -1], :].any() or share[:, [0, -1]].any()  # by the field of view
        least_bone = LIMB_BONE_CUT_MM2 if cut else LIMB_BONE_MM2
        boneless = bone is not None and (share & bone).sum() * pixel_mm2 < least_bone
        if share.sum() > LIMB_MAX_FRACTION * total or boneless:
            owner[share] = 1
        else:
            dropped += share.sum()
    if dropped > LIMB_MAX_FRACTION * total:
        return body
    return largest_component(owner == 1)


def _saddle(depth: np.ndarray, summit: np.ndarray, torso: np.ndarray, top: float) -> float:
    """A depth level at which ``summit`` is apart from ``torso``, at most 1 mm above the highest
    at which they are joined."""
    low, high = 0.0, top
    while high - low > 1.0:
        level = (low + high) / 2
        labelled, _ = ndi.label(depth >= level)
        joined = np.intersect1d(labelled[summit], labelled[torso])
        if joined[joined > 0].size:
            low = level
        else:
            high = level
    return high


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask.

    Parameters
    ----------
    mask:
        Boolean array.

    Returns
    -------
    numpy.ndarray
        Boolean array, all False when ``mask`` is empty.
    """
    labelled, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask, bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def noise_sd_hu(hu: np.ndarray, body: np.ndarray, pixel_mm: tuple[float, float]) -> float | None:
    """Fine-grain noise of the slice: robust SD of HU about the local 5 mm mean inside fat.

    Fat (subcutaneous and visceral) is the one tissue every abdomen has in uniform
    patches; its pixels' spread about their neighbourhood mean is the image noise at
    the scale that decides single-pixel HU classes. Measured on the image, never
    inferred from the reconstruction kernel's name.

    Parameters
    ----------
    hu:
        2D slice in HU.
    body:
        The body mask.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    float or None
        1.4826 x the median absolute deviation, in HU; None when fewer than 200
        pixels of fat interior are found.
    """
    size = max(3, int(round(5.0 / min(pixel_mm))) | 1)
    local = ndi.uniform_filter(hu.astype(np.float32), size=size)
    interior = ndi.binary_erosion(body, iterations=3) & (local > -150.0) & (local < -60.0)
    interior = ndi.binary_erosion(interior, iterations=2)
    if interior.sum() < 200:
        return None
    residual = (hu - local)[interior]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def geometry_hu(hu: np.ndarray, body: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The slice smoothed just enough that its fine-grain noise is at most ``NOISE_TARGET_HU``.

    Compartment boundaries (muscle wall, vertebra, psoas) are traced on this image; tissue
    labels still come from the HU of the slice itself. The Gaussian sigma grows from
    half a pixel in quarter-pixel steps up to ``NOISE_MAX_SIGMA_PX``, the noise measured
    again after each step (:func:`noise_sd_hu`): fine-grain noise needs little, and the
    cap keeps thin fat planes (2-3 mm) from being smoothed away on coarse pixels.

    Parameters
    ----------
    hu:
        2D slice in HU.
    body:
        The body mask.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    numpy.ndarray
        float32 image of the slice's shape; ``hu`` itself when it is quiet enough or
        no fat is found to measure the noise on.
    """
    hu = np.asarray(hu, np.float32)
    noise = noise_sd_hu(hu, body, pixel_mm)
    if noise is None or noise <= NOISE_TARGET_HU:
        return hu
    smoothed = hu
    for sigma in np.arange(0.5, NOISE_MAX_SIGMA_PX + 1e-6, 0.25):
        smoothed = ndi.gaussian_filter(hu, sigma, truncate=3.0)
        noise = noise_sd_hu(smoothed, body, pixel_mm)
        if noise is None or noise <= NOISE_TARGET_HU:
            break
    return smoothed
