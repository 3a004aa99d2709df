"""Classical spine analysis: the column, vertebral bodies and discs, ribs, sacrum, iliac crests.

Everything works on a *working grid*: the CT block-averaged to about 2.5 mm voxels
(:mod:`l3node.analysis.spine_grid`). Axes follow :mod:`l3node.analysis.volume` (``k``
inferior->superior, ``row`` anterior->posterior, ``col`` right->left); millimetre outputs are
patient LPS coordinates.

The steps, as a radiologist would read a sagittal and an axial view, one module each:

1. :func:`~l3node.analysis.spine_grid.track_canal` -- the spinal canal.
2. :func:`~l3node.analysis.spine_column.body_profile` and
   :func:`~l3node.analysis.spine_column.find_discs` -- bodies and discs along the column.
3. :func:`~l3node.analysis.spine_ribs.find_ribs` -- ribs with lengths and their vertebrae.
4. :func:`~l3node.analysis.spine_pelvis.find_iliac_bones` and
   :func:`~l3node.analysis.spine_pelvis.merge_sacrum` -- iliac crests and the sacrum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from l3node.analysis.spine_column import (VertebraFound, _half_width_mm, _segments, _tp_volume_cm3, body_profile,
                                          find_discs)
from l3node.analysis.spine_grid import WORKING_MM, WorkingGrid, track_canal, working_grid
from l3node.analysis.spine_pelvis import find_iliac_bones, merge_sacrum
from l3node.analysis.spine_ribs import NORMAL_RIB_MIN_MM, Rib, find_ribs
from l3node.analysis.volume import Volume

ILIAC_BONE_HU = 150.0
"""Bone for the iliac-wing search on the working grid (block-averaged, so cortex is diluted)."""

__all__ = ["NORMAL_RIB_MIN_MM", "WORKING_MM", "Rib", "SpineAnalysis", "VertebraFound", "WorkingGrid",
           "analyse_spine", "working_grid"]


@dataclass(frozen=True)
class SpineAnalysis:
    """What the classical analysis saw; ``vertebrae`` are ordered superior -> inferior."""

    vertebrae: tuple[VertebraFound, ...]
    ribs: tuple[Rib, ...]
    iliac_crest_z_mm: float | None
    sacrum_length_mm: float | None
    spine_z_range_mm: tuple[float, float] | None
    scan_z_range_mm: tuple[float, float]
    notes: tuple[str, ...] = field(default=())


def analyse_spine(volume: Volume) -> SpineAnalysis:
    """Find the vertebrae, discs, ribs, sacrum and iliac crests of ``volume``.

    Parameters
    ----------
    volume:
        The CT in the package convention (:mod:`l3node.analysis.volume`).

    Returns
    -------
    SpineAnalysis
        Empty ``vertebrae`` (with a note) when no spinal canal is seen.

    Raises
    ------
    ValueError
        Not raised for odd content; only numpy/scipy errors on a malformed array propagate.
    """
    grid = working_grid(volume)
    z_scan = (float(volume.z_mm[0]), float(volume.z_mm[-1]))
    notes: list[str] = []
    if grid.hu.shape[0] < 4:
        return SpineAnalysis((), (), None, None, None, z_scan, ("too few slices",))
    track = track_canal(grid)
    valid = np.nonzero(track.valid)[0]
    if len(valid) < 3:
        return SpineAnalysis((), (), None, None, None, z_scan, ("no spinal canal found",))
    k_lo = max(0, int(valid.min()) - grid.voxels(60, 0))
    k_hi = int(valid.max())
    profile = body_profile(grid, track, k_lo, k_hi)
    discs = find_discs(profile.signal, profile.step_mm, 0, len(profile.signal) - 1)
    vertebrae, sacrum_length = _segments(grid, track, profile, discs)
    bone = grid.hu > 200
    z_floor = min((v.z_inferior_mm for v in vertebrae), default=z_scan[0])
    # Osteoporotic iliac wings (cancellous ~120 HU at 80 years, thin cortex) fall apart at 200 HU.
    iliac = find_iliac_bones(grid, grid.hu > ILIAC_BONE_HU, track, z_floor)
    crest = None
    if iliac:
        tops: dict[float, float] = {}
        for top, _bottom, side in iliac:
            tops[side] = max(tops.get(side, -np.inf), top)
        crest = float(np.mean(list(tops.values())))
    # Measured through the body centre, where it is widest; stopping at the first soft voxel
    # keeps rib heads (a joint space away) out.
    widths = np.array([_half_width_mm(grid, v, (-3.0, 3.0), soft_mm=2.5) for v in vertebrae])
    # One noisy line can cut a body short; neighbouring bodies differ by a few mm only.
    widths = np.array([float(np.median(widths[max(0, i - 1) : i + 2])) for i in range(len(widths))])
    out = [VertebraFound(**{**v.__dict__, "half_width_mm": float(w)}) for v, w in zip(vertebrae, widths)]
    out = [VertebraFound(**{**v.__dict__, "tp_volume_cm3": _tp_volume_cm3(grid, bone, v)}) for v in out]
    out, sacrum_length = merge_sacrum(grid, bone, out, sacrum_length, bool(iliac), notes, crest)
    measured, ribs = find_ribs(grid, out, crest)
    above = [v for v in measured if not v.sacral and v.height_mm >= 8 and crest is not None
             and v.z_inferior_mm >= crest]
    if above and above[-1].rib_mm >= NORMAL_RIB_MIN_MM:
        # The vertebra just above the iliac crests is L4 or L5 and never carries a normal rib:
        # this "crest" is a scapula, arm or rib cluster (chest scans), and stopping the rib
        # search there would hide the twelfth rib.
        notes.append("iliac-like bone above a rib-bearing vertebra ignored")
        crest = None
        measured, ribs = find_ribs(grid, out, None)
    out = measured
    z_valid = (float(grid.z_mm[valid.min()]), float(grid.z_mm[valid.max()]))
    return SpineAnalysis(tuple(out), tuple(ribs), crest, sacrum_length, z_valid, z_scan, tuple(notes))
