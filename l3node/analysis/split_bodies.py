"""Split a mask into the bodies it is made of: at narrow necks, or between two summits.

Used for the psoas and quadratus components (:mod:`l3node.analysis.compartments`): a bowel
loop of muscle HU pressed on the psoas joins it in one connected component, but keeps a
thick core of its own.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.masks import fill_holes, region_max

__all__ = ["NECK_MM", "PEAK_PROMINENCE_MM", "SPLIT_STEP_MM", "split_at_necks"]

NECK_MM = 5.0
"""A psoas component narrowing to less than twice this is split there: bowel loops
(radius 9-17 mm) pressed on the psoas keep a core of their own."""
SPLIT_STEP_MM = 1.0
PEAK_PROMINENCE_MM = 1.5
"""Two summits of a kept component's distance map, each this much above the level where
they part, are two bodies: a bowel loop pressed on the psoas over a broad contact."""


def split_at_necks(mask: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[np.ndarray, int]:
    """Label ``mask`` split where it narrows below ``2 * NECK_MM``, or between two bulges.

    The holes-filled mask's distance map is thresholded at ``NECK_MM`` and then at
    every further ``SPLIT_STEP_MM``: a core that falls apart into pieces each rising
    ``PEAK_PROMINENCE_MM`` above the level where they parted is two bodies (a bowel
    loop pressed broadly on the psoas, with a waist but no narrow neck), and each piece
    is followed on up. Each final core claims the mask pixels nearest to it. Parts
    thinner than ``NECK_MM`` everywhere (the quadratus lumborum's band) have no core of
    their own and join the nearest one.

    Parameters
    ----------
    mask:
        2D boolean mask (a kept muscle component, or several).
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    tuple
        ``(labels, n)``, labels 0 outside ``mask``.
    """
    solid = fill_holes(ndi.binary_closing(mask, iterations=1) | mask)
    depth = ndi.distance_transform_edt(solid, sampling=pixel_mm)
    cores = _summits(depth, depth > NECK_MM, NECK_MM)
    if len(cores) <= 1:
        labelled, n = ndi.label(mask)
        return labelled, n
    marked = np.zeros(mask.shape, np.int32)
    for label, core in enumerate(cores, start=1):
        marked[core] = label
    nearest = ndi.distance_transform_edt(marked == 0, sampling=pixel_mm, return_distances=False, return_indices=True)
    owner = marked[nearest[0], nearest[1]]
    return np.where(mask, owner, 0), len(cores)


def _summits(depth: np.ndarray, region: np.ndarray, level: float) -> list[np.ndarray]:
    """Cores of ``region`` (pixels deeper than ``level``), split where the distance map has
    separate summits at least ``PEAK_PROMINENCE_MM`` above the level at which they part.
    Each piece is worked on inside its bounding box: the full slice is 20-100 times larger."""
    labelled, n = ndi.label(region)
    cores: list[np.ndarray] = []
    for i, box in enumerate(ndi.find_objects(labelled), start=1):
        for core in _piece_summits(depth[box], labelled[box] == i, level):
            full = np.zeros(region.shape, bool)
            full[box] = core
            cores.append(full)
    return cores


def _piece_summits(depth: np.ndarray, piece: np.ndarray, level: float) -> list[np.ndarray]:
    """:func:`_summits` for one connected ``piece``, on arrays cropped to it."""
    top = float(depth[piece].max())
    current = level
    while True:
        current += SPLIT_STEP_MM
        if current >= top:
            return [piece]
        parts, m = ndi.label(piece & (depth > current))
        if m < 2:
            continue
        heights = region_max(depth, parts, m)
        summits = np.nonzero(heights >= current + PEAK_PROMINENCE_MM)[0]
        if len(summits) < 2:
            continue
        cores: list[np.ndarray] = []
        for j in summits:
            cores.extend(_summits(depth, parts == j + 1, current))
        return cores
