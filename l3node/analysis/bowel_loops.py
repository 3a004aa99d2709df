"""Bowel loops among psoas candidates: a body whose content is darker than its own rim.

A bowel loop is a wall (mucosa and muscularis, 2-3 mm, 30-50 HU without contrast, brighter
when enhanced) around content (water-like fluid, 0-20 HU). Pressed on a fat-infiltrated
psoas it has the muscle's mean HU and joins it in one component; split off
(:func:`~l3node.analysis.split_bodies.split_at_necks`), its deep core is still darker than
its rim. A muscle's rim is never brighter than its core: fat beside it darkens the rim by
partial volume.

Slices are ``(row, col)`` in the convention of :mod:`l3node.analysis.volume`; sizes are in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["CONTENT_UNDER_MUSCLE_HU", "LOOP_CORE_MM", "LOOP_CORE_MIN_MM2", "LOOP_RIM_MM", "WALL_OVER_CONTENT_HU", "loop_parts"]

LOOP_CORE_MM = 4.0
"""A part's core: its pixels at least this deep (a loop's wall is 2-3 mm, plus a pixel of blur)."""
LOOP_CORE_MIN_MM2 = 50.0
"""Cores smaller than this are too few pixels to compare at 40 HU of noise, and too small for
a loop's content (radius 6.5-14.5 mm)."""
LOOP_RIM_MM = 2.5
"""A part's rim: its pixels less than this deep (the wall of a loop)."""
WALL_OVER_CONTENT_HU = 12.0
"""A rim this much brighter than the core is a wall around content (wall 40 HU, content 15 HU:
17 HU measured after blur on phantoms; muscle parts at most 9 HU over 130 parts)."""
CONTENT_UNDER_MUSCLE_HU = 8.0
"""... and a core this much darker than the patient's back muscles is content, not muscle
darkened in its middle."""


def loop_parts(
    parts: np.ndarray, n: int, hu: np.ndarray, soft: np.ndarray, muscle_ref_hu: float, pixel_mm: tuple[float, float]
) -> np.ndarray:
    """Which labelled parts are bowel loops: core darker than both their rim and the muscle.

    Parameters
    ----------
    parts:
        Labelled parts (0 = background, 1..n), e.g. from
        :func:`~l3node.analysis.split_bodies.split_at_necks`.
    n:
        Number of parts.
    hu:
        2D slice in HU (the slice's own, not smoothed: a loop's wall is 2-3 mm thick).
    soft:
        Muscle-range pixels: only they enter the means (fat beside a part is not its rim).
    muscle_ref_hu:
        The patient's muscle HU (the back muscles' median).
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    numpy.ndarray
        Boolean of length ``n + 1`` (index 0 False): True for parts that are loops.

    Raises
    ------
    ValueError
        If ``parts``, ``hu`` and ``soft`` differ in shape.
    """
    if not parts.shape == hu.shape == soft.shape:
        raise ValueError(f"parts {parts.shape}, hu {hu.shape} and soft {soft.shape} differ")
    loop = np.zeros(n + 1, bool)
    if n == 0:
        return loop
    pixel_mm2 = pixel_mm[0] * pixel_mm[1]
    for label, window in enumerate(ndi.find_objects(parts), start=1):
        if window is None:
            continue
        # One pixel of margin so that the distance is measured to the part's own edge.
        window = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in window)
        part = parts[window] == label
        depth = ndi.distance_transform_edt(part, sampling=pixel_mm)
        counted = part & soft[window]
        core = counted & (depth >= LOOP_CORE_MM)
        rim = counted & (depth < LOOP_RIM_MM)
        if core.sum() * pixel_mm2 < LOOP_CORE_MIN_MM2 or not rim.any():
            continue
        core_hu = float(hu[window][core].mean())
        rim_hu = float(hu[window][rim].mean())
        loop[label] = rim_hu - core_hu >= WALL_OVER_CONTENT_HU and core_hu <= muscle_ref_hu - CONTENT_UNDER_MUSCLE_HU
    return loop
