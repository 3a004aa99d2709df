"""Vertebral bodies and discs along the tracked canal (step 2 of :mod:`l3node.analysis.spine`).

The bone signal of the region just anterior to the canal (the vertebral body), sampled
perpendicular to the column's sagittal curve, shows bodies (high) and discs (low); disc troughs
cut the column into vertebrae with inferior and superior endplates at half-depth crossings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.spine_grid import CanalTrack, WorkingGrid, k_range as _k_range


@dataclass(frozen=True)
class VertebraFound:
    """One vertebral body (or the fused sacrum) found along the column.

    z values are patient mm (LPS, +superior); ``row``/``col``/``canal_row`` are working-grid
    indices of the body centre and canal centre at mid-height.
    """

    z_inferior_mm: float
    z_superior_mm: float
    disc_below_mm: float  # height of the disc under it; 0 = none seen (fused or out of view)
    row: float
    col: float
    canal_row: float
    inferior_seen: bool = True  # False: the body reaches the bottom of the scan
    superior_seen: bool = True  # False: the body reaches the top of the scan
    half_width_mm: float = 0.0
    tp_volume_cm3: float = 0.0  # bone lateral to the body at canal depth (transverse processes)
    rib_left_mm: float = 0.0
    rib_right_mm: float = 0.0
    sacral: bool = False  # the fused sacrum (below the last disc, long, between the ilia)
    disc_below_depth_hu: float = 0.0  # how far the body signal dips in the disc under it (0 = none)

    @property
    def height_mm(self) -> float:
        return self.z_superior_mm - self.z_inferior_mm

    @property
    def rib_mm(self) -> float:
        return max(self.rib_left_mm, self.rib_right_mm)


@dataclass(frozen=True)
class BodyProfile:
    """Bone signal along the column, sampled perpendicular to its sagittal curve.

    ``signal[i]`` belongs to the plane through the body centre ``(z_mm[i], row[i], col[i])``
    (row/col in working-grid indices) perpendicular to the local spine axis, so that tilted
    lower-lumbar discs still show as sharp troughs.
    """

    step_mm: float
    signal: np.ndarray
    z_mm: np.ndarray  # body-centre patient z at each sample
    row: np.ndarray
    col: np.ndarray


PROFILE_SMOOTH_MM = 8.0
"""Gaussian sigma (mm along z) smoothing the canal path before the sampling planes are tilted:
the tracked canal wobbles by a few voxels, and a kink turns a plane through a disc into one
that cuts bodies and discs alike (seen on lordotic, osteoporotic spines)."""
TILT_SMOOTH_MM = 25.0
MAX_TILT_DEG = 35.0
PROFILE_DEPTH_MM = (8.0, 46.0)
"""Depth range (mm anterior of the canal centre) of the body patch sampled by :func:`body_profile`."""
BODY_OFFSET_MM = 27.0
"""Distance from the canal centre to the vertebral-body centre (anterior)."""


def body_profile(grid: WorkingGrid, track: CanalTrack, k_lo: int, k_hi: int, step_mm: float = 1.5) -> BodyProfile:
    """Sample the vertebral bodies between working slices ``k_lo`` and ``k_hi`` along the column.

    The statistic is the 90th percentile of HU over a body-sized patch: a body plane
    contains its cortical ring or an endplate (high), a disc plane only disc and soft tissue
    (low), whatever the trabecular density (close to disc HU in old patients).
    """
    dz, dr, dc = grid.spacing_mm
    ks = np.arange(k_lo, k_hi + 1)
    z = ks * dz
    y = ndi.gaussian_filter1d(track.row[ks] * dr, max(1.0, PROFILE_SMOOTH_MM / dz), mode="nearest")
    x = ndi.gaussian_filter1d(track.col[ks] * dc, max(1.0, PROFILE_SMOOTH_MM / dz), mode="nearest")
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(z), np.diff(y)))])
    s = np.arange(0.0, arc[-1] + 1e-6, step_mm)
    zc, yc, xc = np.interp(s, arc, z), np.interp(s, arc, y), np.interp(s, arc, x)
    # The planes' tilt follows the column's broad curve only (a wobble of the tracked canal
    # would fan neighbouring planes and fold the body-centre path), and never exceeds
    # MAX_TILT_DEG (the steepest lumbosacral disc).
    y_broad = ndi.gaussian_filter1d(track.row[ks] * dr, max(1.0, TILT_SMOOTH_MM / dz), mode="nearest")
    slope = np.gradient(np.interp(zc, z, y_broad), zc) if len(zc) > 1 else np.zeros_like(zc)
    slope = np.clip(np.nan_to_num(slope), -np.tan(np.radians(MAX_TILT_DEG)), np.tan(np.radians(MAX_TILT_DEG)))
    norm = np.hypot(1.0, slope)
    tz, ty = 1.0 / norm, slope / norm
    nz, ny = ty, -tz  # anterior normal in the sagittal plane
    depth = np.arange(PROFILE_DEPTH_MM[0], PROFILE_DEPTH_MM[1], 2.0)
    lateral = np.arange(-25.0, 25.1, 2.5)
    pz = zc[:, None, None] + nz[:, None, None] * depth[None, :, None] + 0 * lateral[None, None, :]
    py = yc[:, None, None] + ny[:, None, None] * depth[None, :, None] + 0 * lateral[None, None, :]
    px = xc[:, None, None] + 0 * depth[None, :, None] + lateral[None, None, :]
    coords = np.stack([pz / dz, py / dr, px / dc]).reshape(3, -1)
    patch = ndi.map_coordinates(grid.hu, coords, order=1, mode="nearest").reshape(len(s), -1)
    signal = np.percentile(patch, 90, axis=1)
    zb = zc + nz * BODY_OFFSET_MM
    yb = yc + ny * BODY_OFFSET_MM
    return BodyProfile(step_mm, signal, grid.origin_mm[2] + zb, yb / dr, xc / dc)


def _crossing(profile: np.ndarray, start: int, stop: int, level: float) -> float:
    """First fractional index between ``start`` and ``stop`` where ``profile`` rises past ``level``."""
    step = 1 if stop > start else -1
    prev = start
    for k in range(start + step, stop + step, step):
        if not 0 <= k < len(profile):
            break
        if profile[k] >= level:
            lo, hi = profile[prev], profile[k]
            frac = 0.5 if hi == lo else (level - lo) / (hi - lo)
            return prev + step * float(np.clip(frac, 0, 1))
        prev = k
    return float(prev)


def find_discs(profile: np.ndarray, dz: float, k_lo: int, k_hi: int) -> list[tuple[float, float, float, float]]:
    """Disc troughs in ``profile[k_lo:k_hi+1]`` as (k_centre, k_lower_edge, k_upper_edge, depth).

    ``depth`` is how far the trough lies below the lower of its two neighbouring body peaks
    (HU): a thin, rudimentary disc (transitional vertebra) dips much less than the others,
    its partial volume with the endplates filling it in. A trough counts when it lies clearly
    below the body signal within 12 mm on both sides; troughs closer than 16 mm keep the
    deeper one (vertebral bodies are 18-40 mm high).
    """
    p = ndi.gaussian_filter1d(np.nan_to_num(profile, nan=np.nanmin(profile)), max(0.6, 1.5 / dz))
    reach = max(2, int(round(12 / dz)))
    candidates, weak = [], []
    for k in range(max(k_lo, 1), min(k_hi, len(p) - 2) + 1):
        if p[k] > p[k - 1] or p[k] > p[k + 1]:
            continue
        below = p[max(0, k - reach) : k]
        above = p[k + 1 : k + 1 + reach]
        if len(below) == 0 or len(above) == 0:
            continue
        lo_peak, hi_peak = float(below.max()), float(above.max())
        depth = min(lo_peak, hi_peak) - p[k]
        if depth >= max(18.0, 0.12 * max(lo_peak, hi_peak, 1.0)):
            candidates.append((depth, k, lo_peak, hi_peak))
        elif depth >= WEAK_DISC_HU:
            weak.append((depth, k, lo_peak, hi_peak))
    chosen = _fill_long_gaps(_regular_subset(candidates, dz), weak)
    discs = []
    for depth, k, lo_peak, hi_peak in sorted(chosen, key=lambda c: c[1]):
        upper = _crossing(p, k, k + reach, (p[k] + hi_peak) / 2)
        lower = _crossing(p, k, k - reach, (p[k] + lo_peak) / 2)
        discs.append((float(k), lower, upper, float(depth)))
    return discs


WEAK_DISC_HU = 6.0
"""A shallow trough (osteoporotic bodies: cancellous ~120 HU against disc ~85 HU) is taken as
a disc only where a 'vertebra' is about twice as high as its neighbours."""
LONG_GAP_RATIO = 1.55


def _fill_long_gaps(chosen: list, weak: list) -> list:
    """Add the deepest weak trough near the middle of any body about twice its neighbours' height.

    A body's height changes by a few mm from one level to the next; one of twice the height is
    two bodies whose disc was too faint for the strict threshold.
    """
    chosen = sorted(chosen, key=lambda c: c[1])
    for _ in range(8):
        ks = [c[1] for c in chosen]
        gaps = np.diff(ks)
        added = False
        for j, gap in enumerate(gaps):
            around = [gaps[i] for i in range(j - 4, j + 5) if i != j and 0 <= i < len(gaps)]
            # The lower third of the neighbours: several merged bodies in a row must not set the norm.
            if len(around) < 2 or gap < LONG_GAP_RATIO * float(np.percentile(around, 33)):
                continue
            lo, hi = ks[j] + 0.3 * gap, ks[j + 1] - 0.3 * gap
            inside = [w for w in weak if lo <= w[1] <= hi]
            if inside:
                chosen.append(max(inside))
                chosen.sort(key=lambda c: c[1])
                added = True
                break
        if not added:
            break
    return chosen


def _regular_subset(candidates: list[tuple[float, int, float, float]], dz: float) -> list:
    """Keep troughs spaced like vertebrae: the deepest first, then others not too close.

    The typical body height is estimated from the strongest troughs; a weaker trough closer
    than 0.65 of it to an accepted one is a mid-body dip (basivertebral vein, waist), not a disc.
    """
    if not candidates:
        return []
    ordered = sorted(candidates, reverse=True)
    strongest = ordered[0][0]
    strong = sorted(c[1] for c in ordered if c[0] >= 0.5 * strongest)
    gaps = [(b - a) * dz for a, b in zip(strong, strong[1:]) if 18 <= (b - a) * dz <= 45]
    min_gap = max(16.0, 0.65 * float(np.median(gaps))) if gaps else 16.0
    chosen: list[tuple[float, int, float, float]] = []
    for cand in ordered:
        if all(abs(cand[1] - c[1]) * dz >= min_gap for c in chosen):
            chosen.append(cand)
    # A body much shorter than both neighbours is a false cut: drop its shallower disc.
    changed = True
    while changed and len(chosen) >= 4:
        changed = False
        chosen.sort(key=lambda c: c[1])
        ks = [c[1] for c in chosen]
        heights = np.diff(ks) * dz
        for j in range(len(heights)):
            # Compared with the bodies around it (three each side): a body cut in two by a
            # false trough leaves two short pieces side by side.
            around = list(heights[max(0, j - 3) : j]) + list(heights[j + 1 : j + 4])
            if len(around) >= 2 and heights[j] < 0.6 * float(np.median(around)):
                weaker = j if chosen[j][0] < chosen[j + 1][0] else j + 1
                chosen.pop(weaker)
                changed = True
                break
    return chosen


# ----------------------------------------------------------------------------- vertebrae


def _at(profile: BodyProfile, index: float, values: np.ndarray) -> float:
    return float(np.interp(index, np.arange(len(values)), values))


def _segments(grid: WorkingGrid, track: CanalTrack, profile: BodyProfile,
              discs: list[tuple[float, float, float]]) -> tuple[list[VertebraFound], float | None]:
    """Cut the column at the discs; the long bony stretch under the last disc is the sacrum.

    Returns vertebrae superior -> inferior and the length of the sacrum (None if not seen).
    """
    z = profile.z_mm
    n = len(z)
    signal = ndi.gaussian_filter1d(profile.signal, 1.0)
    body_level = float(np.percentile(signal, 75)) if n else 0.0
    disc_level = float(np.median([signal[int(d[0])] for d in discs])) if discs else 0.0
    half = (body_level + disc_level) / 2

    def make(i_lo: float, i_hi: float, disc_mm: float, inf_seen: bool, sup_seen: bool,
             disc_depth: float = 0.0) -> VertebraFound:
        mid = (i_lo + i_hi) / 2
        zc = _at(profile, mid, z)
        k = int(np.clip(round((zc - grid.origin_mm[2]) / grid.spacing_mm[0]), 0, len(track.row) - 1))
        return VertebraFound(_at(profile, i_lo, z), _at(profile, i_hi, z), disc_mm, _at(profile, mid, profile.row),
                             _at(profile, mid, profile.col), float(track.row[k]), inf_seen, sup_seen,
                             disc_below_depth_hu=disc_depth)

    found: list[VertebraFound] = []
    edges = [(d[1], d[2]) for d in discs]  # (lower edge, upper edge) sample indices, inferior first
    for (lo_a, up_a), (lo_b, _), disc in zip(edges, edges[1:], discs):
        found.append(make(up_a, lo_b, _at(profile, up_a, z) - _at(profile, lo_a, z), True, True, disc[3]))
    sacrum_length = None
    if edges:
        top_lo, top_up = edges[-1]
        if (n - 1 - top_up) * profile.step_mm >= 10:
            found.append(make(top_up, n - 1, _at(profile, top_up, z) - _at(profile, top_lo, z), True, False,
                              discs[-1][3]))
        bottom = edges[0][0]
        # Follow the bone below the lowest disc while the body signal stays high.
        i = int(np.floor(bottom))
        gap = 0
        end = i
        while i > 0 and gap * profile.step_mm < 12:
            i -= 1
            if signal[i] >= half:
                end, gap = i, 0
            else:
                gap += 1
        length = (bottom - end) * profile.step_mm
        if length >= 10:
            reaches_edge = end <= 1
            seg = make(end, bottom, 0.0, not reaches_edge, True)
            if length >= 45:
                seg = VertebraFound(**{**seg.__dict__, "sacral": True})
                sacrum_length = None if reaches_edge else float(length)
            found.insert(0, seg)
    return found[::-1], sacrum_length


MIN_HALF_WIDTH_MM = 10.0
"""Floor of the measured body half width: a width at the floor means no body was seen there."""
CORTEX_RIDGE_HU = 40.0
"""The lateral cortex of a body stands at least this far above its cancellous centre (on the
median line of :func:`_half_width_mm`; phantoms +90-200 HU, blurred at 5 mm slices)."""


def _half_width_mm(grid: WorkingGrid, v: VertebraFound, rows_mm: tuple[float, float] = (-7.0, -1.0),
                   soft_mm: float = 5.0) -> float:
    """Half width of the body, measured on a left-right line through its anterior half.

    Walk out from the centre until more than 5 mm of soft tissue (< 60 HU: psoas, fat) and
    keep the last bone-like value (>= 90 HU; old cancellous bone is barely above muscle);
    the anterior half avoids rib heads, which articulate further back. Where organs of
    bone-like HU touch the body (portal-phase liver and spleen ~110 HU, crura, vessels at
    T11-L1), that walk runs on past the body: the body then ends at the steepest fall outside
    its lateral cortex (the outermost ridge standing :data:`CORTEX_RIDGE_HU` above the
    cancellous centre).
    """
    k0, k1 = _k_range(grid, v.z_inferior_mm + 0.3 * v.height_mm, v.z_superior_mm - 0.3 * v.height_mm)
    k1 = max(k0, k1)
    dr, dc = grid.spacing_mm[1:]
    r0, r1 = int(round(v.row + rows_mm[0] / dr)), int(round(v.row + rows_mm[1] / dr)) + 1
    # Median over the middle third of the body, then mean over the rows: noise-robust line.
    band = np.median(grid.hu[k0 : k1 + 1, max(r0, 0) : max(r1, 1)], axis=0)
    line = ndi.uniform_filter1d(band.mean(axis=0), 2)
    c = int(round(v.col))
    reach = int(round(36 / dc))
    centre = line[max(c - int(round(4 / dc)), 0) : c + int(round(4 / dc)) + 1]
    ridge_hu = max(float(np.median(centre)) if centre.size else 0.0, 110.0) + CORTEX_RIDGE_HU
    widths = []
    for step in (-1, 1):
        last, soft, ridge = 0, 0, None
        for j in range(0, reach):
            cc = c + step * j
            if not 0 <= cc < len(line):
                break
            if line[cc] >= 90:
                last = j
            if (j >= 2 and line[cc] >= ridge_hu and 0 <= cc + step < len(line)
                    and line[cc] >= line[cc - step] and line[cc] >= line[cc + step]):
                ridge = j
            soft = soft + 1 if line[cc] < 60 else 0
            if soft * dc > soft_mm:
                break
        edge = last + 0.5
        if ridge is not None:
            # The body ends at the steepest fall outside its cortex (half-way down a blurred step).
            js = np.arange(ridge, ridge + int(np.ceil(6 / dc)))
            js = js[(c + step * (js + 1) >= 0) & (c + step * (js + 1) < len(line))]
            if js.size:
                fall = line[c + step * js] - line[c + step * (js + 1)]
                edge = min(edge, float(js[int(np.argmax(fall))]) + 1.0)
        widths.append(edge * dc)
    return float(np.clip(min(widths) if widths else 20.0, MIN_HALF_WIDTH_MM, 34.0))


def _tp_volume_cm3(grid: WorkingGrid, bone: np.ndarray, v: VertebraFound) -> float:
    """Bone beside the posterior arch at canal depth: the transverse processes of ``v``."""
    k0, k1 = _k_range(grid, v.z_inferior_mm + 0.15 * v.height_mm, v.z_superior_mm - 0.15 * v.height_mm)
    dz, dr, dc = grid.spacing_mm
    r0, r1 = int(round(v.canal_row - 10 / dr)), int(round(v.canal_row + 14 / dr)) + 1
    inner = v.half_width_mm + 3
    outer = v.half_width_mm + 42
    c = v.col
    total = 0.0
    for lo, hi in ((c - outer / dc, c - inner / dc), (c + inner / dc, c + outer / dc)):
        box = bone[k0 : k1 + 1, max(r0, 0) : max(r1, 0), max(int(round(lo)), 0) : max(int(round(hi)) + 1, 0)]
        total += float(box.sum())
    return total * dz * dr * dc / 1000.0
