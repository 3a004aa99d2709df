"""Mask and label-map operations that ``scipy.ndimage`` does slowly on a 512 x 512 slice; each
gives the same result as its ``scipy.ndimage`` counterpart.

* ``maximum``, ``minimum`` and ``median`` over a label map sort the whole image (262 144
  values, about 20 ms each on the 2-core CPU) even when the regions cover a few thousand
  pixels. The segmentation called them some forty times per slice, a third of its time.
  :func:`region_max`, :func:`region_min` and :func:`region_median` work on the labelled
  pixels only.
* ``binary_fill_holes`` dilates from the border until nothing changes (about 7 ms a call,
  nine calls a slice). :func:`fill_holes` labels the background once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["fill_holes", "region_max", "region_median", "region_min"]


def fill_holes(mask: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """``mask`` with every background region that does not reach the image border filled
    (4-connected background, as ``scipy.ndimage.binary_fill_holes`` with its default structure),
    or only those of at most ``max_pixels`` pixels.

    Parameters
    ----------
    mask:
        2D boolean mask.
    max_pixels:
        Largest hole filled; None fills every hole.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the same shape.
    """
    mask = np.asarray(mask, bool)
    background, n = ndi.label(~mask)
    is_hole = np.ones(n + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        is_hole[edge] = False  # background reaching the border is outside, not a hole
    is_hole[0] = False
    if max_pixels is not None:
        is_hole &= np.bincount(background.ravel(), minlength=n + 1) <= max_pixels
    return mask | is_hole[background]


def _labelled(values: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.broadcast_to(values, labels.shape)
    inside = (labels >= 1) & (labels <= n)
    return values[inside], labels[inside]


def region_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Maximum of ``values`` in each region ``1..n`` of ``labels``.

    Parameters
    ----------
    values:
        Image (any numeric or boolean dtype), or an array that broadcasts to ``labels``.
    labels:
        Integer label map, 0 for background.
    n:
        Number of regions; regions ``1..n`` are reported.

    Returns
    -------
    numpy.ndarray
        Shape ``(n,)``, float64; 0 for a region without pixels (as ``scipy.ndimage.maximum``).
    """
    picked, owner = _labelled(values, labels, n)
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, owner, picked.astype(np.float64))
    out[np.isneginf(out)] = 0.0
    return out[1:]


def region_min(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Minimum of ``values`` in each region ``1..n`` of ``labels`` (see :func:`region_max`)."""
    picked, owner = _labelled(values, labels, n)
    out = np.full(n + 1, np.inf)
    np.minimum.at(out, owner, picked.astype(np.float64))
    out[np.isposinf(out)] = 0.0
    return out[1:]


def region_median(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Median of ``values`` in each region ``1..n`` of ``labels``; the mean of the two middle
    values for an even count, as ``numpy.median`` (see :func:`region_max`)."""
    picked, owner = _labelled(values, labels, n)
    order = np.lexsort((picked, owner))
    picked, owner = picked[order].astype(np.float64), owner[order]
    counts = np.bincount(owner, minlength=n + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.zeros(n)
    has = counts > 0
    lower = starts[has] + (counts[has] - 1) // 2
    upper = starts[has] + counts[has] // 2
    out[has] = (picked[lower] + picked[upper]) / 2.0
    return out
