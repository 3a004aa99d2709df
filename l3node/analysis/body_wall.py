"""Fascia and muscle wall of one axial slice, found along rays from the body centre.

Walking inward from the skin, the subcutaneous fat ends at the fascia; walking on,
the muscle wall lasts while pixels are muscle-range and ends at fat, gas, bone or
organ. Slices are ``(row, col)`` in the convention of
:mod:`l3node.analysis.volume`; sizes are in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.slice_vertebra import SpinePlane
from l3node.config import AnalysisConfig

__all__ = [
    "BONE", "FAT", "GAS", "MUSCLE", "ORGAN", "OTHER", "PARASPINAL_HALF_WIDTH_MM",
    "PolarGrid", "WallRays", "classify", "fascia_radii", "per_ray_mean", "skin_radii", "smooth_radii", "walk_walls",
    "wall_thickness",
]

SEPTUM_MM = 2.5
"""Soft-tissue runs in the subcutaneous fat shorter than this (or 1.5 px) are septa, not fascia."""
SMOOTH_DEG = 15.0
"""Angular window of the outlier filter on fascia radii."""
FAT_PLANE_MM = 3.0
FAT_PLANE_PX = 1.5
"""Fat runs inside the muscle wall shorter than max(FAT_PLANE_MM, FAT_PLANE_PX px) are
intermuscular planes, crossed by the walk."""
WALL_MAX_MM = 35.0
"""An abdominal wall thicker than this is an organ pressed against it."""
WALL_RELATIVE = 1.25
"""A wall ray thicker than this times its neighbours' typical thickness (plus WALL_SLACK_PX)
has met an organ ..."""
WALL_SLACK_PX = 2.0
WALL_TYPICAL_PCT = 30.0
"""... the typical thickness being this percentile over WALL_TYPICAL_DEG: an organ or bowel
against the wall only ever thickens the run, so a low percentile stays on the true wall
where the contact spans much of the window (the median did not)."""
WALL_TYPICAL_DEG = 45.0
WALL_SMOOTH_DEG = 7.0
"""Angular window of the median filter on wall thickness."""
BACK_MAX_MM = 110.0
"""Paraspinal muscles behind the spine can run this deep from the fascia."""
PARASPINAL_HALF_WIDTH_MM = 50.0
"""The erector spinae and multifidus lie within this distance of the midline."""

OTHER, MUSCLE, FAT, GAS, BONE, ORGAN = 0, 1, 2, 3, 4, 5
"""Pixel classes of :func:`classify` (ORGAN is set by the caller from smoothed HU)."""
_STOP_NAMES = {FAT: "fat", GAS: "gas", BONE: "bone", ORGAN: "organ", OTHER: "fat", MUSCLE: "fat"}


class PolarGrid:
    """Angles and radii (mm) of every pixel around the body centre, and ray sampling.

    Rays are sampled every half pixel; there are about as many rays as pixels on
    the body's circumference (180 to 720).

    Parameters
    ----------
    body:
        Non-empty boolean body mask; its centroid is the centre of the rays.
    pixel_mm:
        ``(row, column)`` spacing in mm.
    """

    def __init__(self, body: np.ndarray, pixel_mm: tuple[float, float]):
        self.pixel_mm = pixel_mm
        rows, cols = np.nonzero(body)
        self.centre = (float(rows.mean()), float(cols.mean()))
        r = (np.arange(body.shape[0]) - self.centre[0])[:, None] * pixel_mm[0]
        c = (np.arange(body.shape[1]) - self.centre[1])[None, :] * pixel_mm[1]
        self.rho = np.hypot(r, c)
        self.theta = np.mod(np.degrees(np.arctan2(r, c)), 360.0)
        max_rho = float(self.rho[body].max()) + 2 * max(pixel_mm)
        self.step_mm = 0.5 * min(pixel_mm)
        self.radii = np.arange(0.0, max_rho, self.step_mm)
        n_angles = int(np.clip(np.ceil(2 * np.pi * max_rho / max(pixel_mm)), 180, 720))
        self.step_deg = 360.0 / n_angles
        self.angles = np.arange(n_angles) * self.step_deg

    def sample(self, image: np.ndarray) -> np.ndarray:
        """Nearest-pixel values along every ray: ``(angle, radius)``."""
        a = np.radians(self.angles)[:, None]
        rr = np.rint(self.centre[0] + np.sin(a) * self.radii[None, :] / self.pixel_mm[0]).astype(np.intp)
        cc = np.rint(self.centre[1] + np.cos(a) * self.radii[None, :] / self.pixel_mm[1]).astype(np.intp)
        valid = (rr >= 0) & (rr < image.shape[0]) & (cc >= 0) & (cc < image.shape[1])
        out = np.zeros(rr.shape, image.dtype)
        out[valid] = image[rr[valid], cc[valid]]
        return out

    def at_angle(self, per_ray: np.ndarray) -> np.ndarray:
        """A per-ray radius interpolated to every pixel's angle."""
        angles = np.concatenate([self.angles - 360.0, self.angles, self.angles + 360.0])
        values = np.concatenate([per_ray, per_ray, per_ray])
        return np.interp(self.theta, angles, values)


@dataclass(frozen=True, eq=False)
class WallRays:
    """Per-ray results of the inward walk through the muscle wall."""

    wall_t: np.ndarray
    """Muscle wall thickness (mm) measured inward from the fascia."""
    wall_end: np.ndarray
    """``(row, col)`` of the deepest wall sample, shape ``(n_rays, 2)``."""
    stop: np.ndarray
    """Why the walk stopped: ``"fat"``, ``"gas"``, ``"bone"``, ``"organ"`` or ``"centre"``."""


def classify(hu: np.ndarray, body: np.ndarray, config: AnalysisConfig) -> np.ndarray:
    """Class of every pixel by HU alone: MUSCLE, FAT, GAS (also outside the body), BONE or OTHER.

    Parameters
    ----------
    hu:
        2D slice in HU.
    body:
        The body mask.
    config:
        Muscle and fat HU ranges.

    Returns
    -------
    numpy.ndarray
        uint8 classes of the slice's shape.
    """
    classes = np.full(hu.shape, OTHER, np.uint8)
    classes[(hu >= config.muscle_hu.min) & (hu <= config.muscle_hu.max)] = MUSCLE
    classes[(hu >= config.fat_hu.min) & (hu <= config.fat_hu.max)] = FAT
    classes[hu < config.fat_hu.min] = GAS
    classes[hu > config.muscle_hu.max] = BONE
    classes[~body] = GAS
    return classes


def fascia_radii(classes: np.ndarray, body: np.ndarray, grid: PolarGrid) -> np.ndarray:
    """Per ray, the radius (mm) where the subcutaneous fat ends, walking in from the skin.

    Soft-tissue runs shorter than a septum (``SEPTUM_MM``, at least 1.2 pixels) are
    crossed; the first longer one is the outer surface of the muscle wall. A ray with
    no fat under the skin puts the fascia at the skin.

    Parameters
    ----------
    classes:
        Output of :func:`classify`.
    body:
        The body mask.
    grid:
        Rays around the body centre.

    Returns
    -------
    numpy.ndarray
        One radius per ray of ``grid``.
    """
    sampled = grid.sample(classes)
    septum = int(np.ceil(max(SEPTUM_MM, 1.2 * max(grid.pixel_mm)) / grid.step_mm))
    fascia_r = np.zeros(len(grid.angles))
    for i, (cls, j) in enumerate(zip(sampled, _skin_samples(body, grid))):
        if j < 0:
            continue
        # Skin: soft tissue at the surface, up to the first fat sample.
        fat_start = j
        while fat_start > 0 and cls[fat_start] != FAT and j - fat_start < septum * 3:
            fat_start -= 1
        if cls[fat_start] != FAT:
            fascia_r[i] = grid.radii[j]  # no subcutaneous fat on this ray
        else:
            fascia_r[i] = grid.radii[_run_until(cls, fat_start, keep={FAT}, allowed_gap=septum)]
    return fascia_r


def skin_radii(body: np.ndarray, grid: PolarGrid) -> np.ndarray:
    """Per ray, the radius (mm) of its last sample inside ``body`` (0 for a ray that has none)."""
    last = _skin_samples(body, grid)
    return np.where(last >= 0, grid.radii[np.maximum(last, 0)], 0.0)


def _skin_samples(body: np.ndarray, grid: PolarGrid) -> np.ndarray:
    """Per ray, the index of its last sample inside ``body`` (-1 for a ray that has none)."""
    inside = grid.sample(body.astype(np.uint8)).astype(bool)
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    return np.where(inside.any(axis=1), last, -1)


def walk_walls(classes: np.ndarray, fascia_r: np.ndarray, grid: PolarGrid) -> WallRays:
    """Per ray, the muscle run inward from the fascia and what ended it.

    Fat, organ or other runs shorter than an intermuscular plane
    (``FAT_PLANE_MM``, at least ``FAT_PLANE_PX`` pixels) are crossed.

    Parameters
    ----------
    classes:
        Output of :func:`classify`, organs marked ORGAN.
    fascia_r:
        Fascia radius per ray (mm).
    grid:
        Rays around the body centre.

    Returns
    -------
    WallRays
        Thickness, deepest point and stop reason per ray.
    """
    sampled = grid.sample(classes)
    step = grid.step_mm
    plane = int(np.ceil(max(FAT_PLANE_MM, FAT_PLANE_PX * max(grid.pixel_mm)) / step))
    n_angles = len(grid.angles)
    wall_t = np.zeros(n_angles)
    stop = np.empty(n_angles, dtype=object)
    wall_end = np.zeros((n_angles, 2))
    start = np.clip(np.searchsorted(grid.radii, fascia_r) - 1, 0, len(grid.radii) - 1)
    for i, cls in enumerate(sampled):
        fascia = int(start[i])
        end = _run_until(cls, fascia, keep={MUSCLE}, allowed_gap=plane, gap_classes={FAT, ORGAN, OTHER})
        wall_t[i] = max(grid.radii[fascia] - grid.radii[min(end, fascia)] + step, 0.0) if end <= fascia else 0.0
        below = end - 1
        stop[i] = "centre" if below < 0 else _STOP_NAMES[int(cls[below])]
        a = np.radians(grid.angles[i])
        wall_end[i] = (
            grid.centre[0] + np.sin(a) * grid.radii[end] / grid.pixel_mm[0],
            grid.centre[1] + np.cos(a) * grid.radii[end] / grid.pixel_mm[1],
        )
    return WallRays(wall_t, wall_end, stop)


def _run_until(cls: np.ndarray, start: int, keep: set[int], allowed_gap: int, gap_classes: set[int] | None = None) -> int:
    """Walk inward (decreasing index) from ``start`` through ``keep`` samples.

    Interruptions shorter than ``allowed_gap`` samples (of ``gap_classes``, any
    class when None) are crossed. Returns the index of the last ``keep`` sample
    (``start + 1`` when ``start`` itself is not ``keep``).
    """
    last = start + 1
    gap = 0
    k = start
    while k >= 0:
        value = int(cls[k])
        if value in keep:
            last = k
            gap = 0
        elif gap_classes is not None and value not in gap_classes:
            break
        else:
            gap += 1
            if gap >= allowed_gap:
                break
        k -= 1
    return min(last, len(cls) - 1)


def per_ray_mean(grid: PolarGrid, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the ``mask`` pixels of each ray's angular bin, over ``SMOOTH_DEG``.

    Parameters
    ----------
    grid:
        Rays around the body centre.
    values:
        Per-pixel values.
    mask:
        Pixels that count.

    Returns
    -------
    numpy.ndarray
        One value per ray; rays with no pixel within the window take their neighbours' by
        circular interpolation (``nan`` everywhere when ``mask`` is empty).
    """
    n = len(grid.angles)
    bins = np.rint(grid.theta[mask] / grid.step_deg).astype(np.intp) % n
    window = max(3, int(round(SMOOTH_DEG / grid.step_deg)) | 1)
    count = ndi.uniform_filter1d(np.bincount(bins, minlength=n).astype(float), window, mode="wrap")
    total = ndi.uniform_filter1d(np.bincount(bins, weights=values[mask], minlength=n), window, mode="wrap")
    known = count > 0
    if not known.any():
        return np.full(n, np.nan)
    return _fill_circular(np.where(known, total / np.maximum(count, 1e-9), 0.0), known)


def smooth_radii(radii: np.ndarray, step_deg: float, tolerance_mm: float = 6.0) -> np.ndarray:
    """Replace radii that leave their angular neighbourhood's median by that median.

    Parameters
    ----------
    radii:
        One radius per ray (mm), rays evenly spaced around the circle.
    step_deg:
        Angle between rays.
    tolerance_mm:
        Largest accepted departure from the median over ``SMOOTH_DEG``.

    Returns
    -------
    numpy.ndarray
        The radii with outliers replaced, then averaged over three rays.
    """
    window = max(3, int(round(SMOOTH_DEG / step_deg)) | 1)
    median = ndi.median_filter(radii, size=window, mode="wrap")
    out = np.where(np.abs(radii - median) > tolerance_mm, median, radii)
    return ndi.uniform_filter1d(out, size=3, mode="wrap")


def wall_thickness(rays: WallRays, fascia_r: np.ndarray, spine: SpinePlane | None, grid: PolarGrid) -> np.ndarray:
    """Muscle-wall thickness per ray, organs pressed on the wall replaced by neighbours.

    A run is unreliable when it is thicker than an abdominal wall can be
    (``WALL_MAX_MM``) or than ``WALL_RELATIVE`` times its neighbours' typical
    thickness plus ``WALL_SLACK_PX`` -- except on backward rays ending behind the
    vertebra, where the back muscles run deep (``BACK_MAX_MM``). Unreliable rays
    take the thickness interpolated from reliable ones.

    Parameters
    ----------
    rays:
        Output of :func:`walk_walls`.
    fascia_r:
        Fascia radius per ray (mm).
    spine:
        The vertebra, if found.
    grid:
        Rays around the body centre.

    Returns
    -------
    numpy.ndarray
        Thickness per ray (mm), median-filtered over ``WALL_SMOOTH_DEG``.
    """
    thickness = np.minimum(rays.wall_t, fascia_r)
    deep_ok = np.zeros(len(thickness), bool)
    if spine is not None:
        # Behind the front of the vertebral body the walk ends on bone or fat deep in
        # the paraspinal compartment; those long runs are muscle, not organs.
        lateral_mm = np.abs(rays.wall_end[:, 1] - spine.centre[1]) * grid.pixel_mm[1]
        # Only rays pointing backwards reach them; forward rays that run deep met bowel.
        backward = np.sin(np.radians(grid.angles)) > 0
        behind = backward & (rays.wall_end[:, 0] >= spine.centre[0] - spine.half_width_px)
        deep_ok = behind & ((rays.stop == "bone") | (lateral_mm <= PARASPINAL_HALF_WIDTH_MM))
    limit = np.where(deep_ok, BACK_MAX_MM, WALL_MAX_MM)
    reliable = (thickness <= limit) & (rays.stop != "centre")
    if not reliable.any():
        return np.minimum(thickness, WALL_MAX_MM)
    # Where an organ abuts the wall over a short arc, the run is longer than its
    # neighbours' even when under the hard limit.
    window = max(3, int(round(WALL_TYPICAL_DEG / grid.step_deg)) | 1)
    typical = ndi.percentile_filter(_fill_circular(thickness, reliable), WALL_TYPICAL_PCT, size=window, mode="wrap")
    reliable &= deep_ok | (thickness <= WALL_RELATIVE * typical + WALL_SLACK_PX * max(grid.pixel_mm))
    if not reliable.any():
        return np.minimum(thickness, WALL_MAX_MM)
    thickness = np.where(reliable, thickness, np.minimum(_fill_circular(thickness, reliable), WALL_MAX_MM))
    # Single rays stopped by a fat pixel inside a muscle would leave radial streaks.
    return ndi.median_filter(thickness, size=max(3, int(round(WALL_SMOOTH_DEG / grid.step_deg)) | 1), mode="wrap")


def _fill_circular(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Linear interpolation over a circular index of the values not ``known``."""
    n = len(values)
    idx = np.arange(n)
    good = idx[known]
    return np.interp(idx, np.concatenate([good - n, good, good + n]), np.tile(values[known], 3))

