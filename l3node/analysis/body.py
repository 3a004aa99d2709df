"""The patient's cross-section on one axial slice: body outline without table or arms.

Slices are ``(row, col)`` in the convention of :mod:`l3node.analysis.volume`; sizes
are in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["ARM_BRIDGE_MM", "BODY_HU", "SKIN_MM", "body_mask", "largest_component"]

BODY_HU = -500.0
"""Above this a pixel is patient, table or clothing; below it air."""
ARM_BRIDGE_MM = 12.0
"""Body parts joined by a neck narrower than twice this (arms, table) are cut off."""
SKIN_MM = 2.0
"""Skin thickness excluded from SAT (at least one pixel)."""


def body_mask(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The patient's cross-section without table, mattress, arms or outside air.

    The largest component above ``BODY_HU``, opened by a disc of ``ARM_BRIDGE_MM``
    so that arms, table and mattress joined by narrow necks fall away, grown back
    inside the original outline, with internal gas filled.

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
    return ndi.binary_fill_holes(largest)


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
