"""Checks of the L3 slice that tell the reader when its measurements cannot be taken as they are.

* ``body_cut_by_fov`` -- the body (arms and table removed, :func:`~l3node.analysis.body.body_mask`)
  reaches the edge of the image, or of the reconstruction circle, over at least
  ``BODY_CUT_MIN_MM``: tissue outside the field of view is missing, so subcutaneous fat (and
  the wall muscle there) is measured too small. Large patients on a 500 mm field of view and
  cropped series are the usual cause. The real abdominal CT in ``shared/data`` is one: its
  left flank is cut at L3.
* ``metal_on_slice`` -- at least ``METAL_MIN_MM2`` of pixels at ``METAL_HU`` or more inside the
  body (spinal hardware, a prosthesis, a catheter with a metal tip): streaks shift the HU along
  their path, so attenuation and areas near them are unreliable.

Each flag comes with a note for the report. The checks read the slice itself; they never
change the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.body import body_mask
from l3node.analysis.volume import axial_plane

__all__ = ["BODY_CUT_BY_FOV", "METAL_ON_SLICE", "SliceQuality", "check_slice"]

BODY_CUT_BY_FOV = "body_cut_by_fov"
METAL_ON_SLICE = "metal_on_slice"

BODY_CUT_MIN_MM = 10.0
"""Body boundary on the image edge beyond a pixel or two of noise: the body was cut."""
PADDING_HU = -1500.0
"""Below any tissue or air reading: pixels outside the reconstruction circle (padding)."""
METAL_HU = 2500.0
"""Above cortical bone even in sharp kernels (L3 slices of 104 phantoms: at most 1060 HU; the
real CT in ``shared/data``: 1400 HU at most above its hip prosthesis); metal implants read
3000 HU and more (that prosthesis: up to 3382 HU)."""
METAL_MIN_MM2 = 10.0


@dataclass(frozen=True)
class SliceQuality:
    """Quality flags (``BODY_CUT_BY_FOV``, ``METAL_ON_SLICE``) and one note per flag."""

    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def check_slice(hu: np.ndarray, pixel_mm: tuple[float, float]) -> SliceQuality:
    """Check one axial slice for a body cut by the field of view and for metal.

    Parameters
    ----------
    hu:
        2D slice ``(row, col)`` in HU, as segmented (the L3 slice itself, not an average).
    pixel_mm:
        ``(row spacing, column spacing)`` in mm.

    Returns
    -------
    SliceQuality
        The flags raised, with a note for each saying how much and what it affects.

    Raises
    ------
    ValueError
        If ``hu`` is not 2D or a spacing is not positive.
    """
    hu, (dy, dx) = axial_plane(hu, pixel_mm, "check_slice")
    body = body_mask(hu, (dy, dx))
    flags: list[str] = []
    notes: list[str] = []

    cut_mm = _edge_contact_mm(body, hu < PADDING_HU, (dy, dx))
    if cut_mm >= BODY_CUT_MIN_MM:
        flags.append(BODY_CUT_BY_FOV)
        notes.append(f"body cut by the field of view over {cut_mm:.0f} mm of its outline: "
                     "subcutaneous fat (and wall muscle there) under-measured")

    metal = (hu >= METAL_HU) & ndi.binary_dilation(body, iterations=2)
    metal_mm2 = float(metal.sum()) * dy * dx
    if metal_mm2 >= METAL_MIN_MM2:
        flags.append(METAL_ON_SLICE)
        notes.append(f"metal on the L3 slice ({metal_mm2:.0f} mm2 at {METAL_HU:.0f} HU or more): "
                     "streaks make attenuation and areas near it unreliable")
    return SliceQuality(tuple(flags), tuple(notes))


def _edge_contact_mm(body: np.ndarray, padding: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """Length (mm) of the body's outline on the image border or next to padding pixels."""
    dy, dx = pixel_mm
    # Along the top and bottom rows the outline runs across columns (dx), along the sides down rows (dy).
    length = (body[0].sum() + body[-1].sum()) * dx + (body[:, 0].sum() + body[:, -1].sum()) * dy
    if padding.any():
        inner = body.copy()
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
        length += (inner & ndi.binary_dilation(padding)).sum() * min(dy, dx)
    return float(length)
