"""Classical spine analysis: the column, vertebral bodies and discs, ribs, sacrum, iliac crests.

Everything here works on a *working grid*: the CT block-averaged to about 2.5 mm voxels
(:func:`working_grid`), which keeps a 512x512x300 study well under a second on two CPU
cores while keeping ribs (8-12 mm wide) and discs (>= 4 mm) visible. Axes follow
:mod:`l3node.analysis.volume` (``k`` inferior->superior, ``row`` anterior->posterior,
``col`` right->left); millimetre outputs are patient LPS coordinates.

The steps, as a radiologist would read a sagittal and an axial view:

1. :func:`track_canal` -- the spinal canal is a soft-tissue tube (CSF, cord) enclosed by
   bone (body in front, pedicles beside, laminae behind). A box-filter "enclosed soft
   tissue" score is followed along z by dynamic programming with a midline prior.
2. :func:`find_vertebrae` -- the mean bone signal of the region just anterior to the canal
   (the vertebral body) along z shows bodies (high) and discs (low); disc troughs cut the
   column into vertebrae with inferior and superior endplates at half-depth crossings.
3. :func:`find_ribs` -- bone components outside the vertebra that start next to it
   (costovertebral junction) and run laterally; each gets a path length and the vertebra
   whose body contains its head.
4. :func:`find_pelvis` -- the iliac bones (large lateral bone components reaching the
   bottom part of the spine), the top of the iliac crests, and the vertebrae fused with
   the ilia at the sacroiliac joints (the sacrum).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.volume import Volume

WORKING_MM = 2.5
"""Target voxel size (mm) of the working grid."""
NORMAL_RIB_MIN_MM = 38.0
"""A rib of at least 3.8 cm is a normal rib (L3SEG-net paper)."""
BONE_HU = 150.0
RIB_SPLIT_BIAS_MM = 20.0
RIB_HEAD_MIN_HU = 300.0
RIB_BONE_HU = 250.0


@dataclass(frozen=True)
class WorkingGrid:
    """The CT block-averaged to about :data:`WORKING_MM` voxels (same axis convention)."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]  # (dz, drow, dcol)
    origin_mm: tuple[float, float, float]  # LPS (x, y, z) of voxel [0, 0, 0] centre

    @property
    def z_mm(self) -> np.ndarray:
        return self.origin_mm[2] + self.spacing_mm[0] * np.arange(self.hu.shape[0])

    def voxels(self, mm: float, axis: int) -> int:
        """At least one voxel covering ``mm`` along ``axis`` (0 = z, 1 = row, 2 = col)."""
        return max(1, int(round(mm / self.spacing_mm[axis])))


@dataclass(frozen=True)
class CanalTrack:
    """The spinal canal centre per working slice (NaN where no spine is seen)."""

    row: np.ndarray  # float, working-grid row index
    col: np.ndarray  # float, working-grid col index
    valid: np.ndarray  # bool: a canal enclosed by bone is seen at this slice
    score: np.ndarray  # canal evidence along the path


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

    @property
    def height_mm(self) -> float:
        return self.z_superior_mm - self.z_inferior_mm

    @property
    def rib_mm(self) -> float:
        return max(self.rib_left_mm, self.rib_right_mm)


@dataclass(frozen=True)
class Rib:
    side: str  # "right" | "left" (patient)
    length_mm: float  # path length from the costovertebral end (chord for short ribs)
    z_head_mm: float
    vertebra: int  # index into SpineAnalysis.vertebrae


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


# ----------------------------------------------------------------------------- grid


def working_grid(volume: Volume, target_mm: float = WORKING_MM) -> WorkingGrid:
    """Block-average ``volume`` to voxels of about ``target_mm`` (never upsampled)."""
    dz, dr, dc = volume.spacing_mm
    f = [max(1, int(round(target_mm / s))) for s in (dz, dr, dc)]
    hu = volume.hu
    shape = [n // fi * fi for n, fi in zip(hu.shape, f)]
    if any(s == 0 for s in shape):
        f = [1, 1, 1]
        shape = list(hu.shape)
    small = np.asarray(hu[: shape[0], : shape[1], : shape[2]], dtype=np.float32)
    for axis, fi in ((1, f[1]), (2, f[2]), (0, f[0])):
        if fi > 1:
            # Summing strided views is several times faster than reshape().mean() here.
            parts = [small[(slice(None),) * axis + (slice(i, None, fi),)] for i in range(fi)]
            total = parts[0].copy()
            for part in parts[1:]:
                total += part
            small = total / np.float32(fi)
    spacing = (dz * f[0], dr * f[1], dc * f[2])
    x0, y0, z0 = volume.origin_mm
    origin = (x0 + dc * (f[2] - 1) / 2, y0 + dr * (f[1] - 1) / 2, z0 + dz * (f[0] - 1) / 2)
    return WorkingGrid(np.ascontiguousarray(small), spacing, origin)


# ----------------------------------------------------------------------------- canal


def _box(a: np.ndarray, grid: WorkingGrid, row_mm: float, col_mm: float) -> np.ndarray:
    return ndi.uniform_filter(a, (1, grid.voxels(row_mm, 1), grid.voxels(col_mm, 2)), mode="constant")


def _shift(a: np.ndarray, grid: WorkingGrid, row_mm: float = 0.0, col_mm: float = 0.0) -> np.ndarray:
    """Value at p becomes the value at p - (row_mm, col_mm): reads a box centred that far away."""
    r = int(round(row_mm / grid.spacing_mm[1]))
    c = int(round(col_mm / grid.spacing_mm[2]))
    return np.roll(a, (r, c), axis=(1, 2))


def canal_score(grid: WorkingGrid) -> np.ndarray:
    """Per-voxel evidence of a spinal canal: soft tissue inside, bone in front, beside, behind."""
    hu = grid.hu
    bone = (hu > BONE_HU).astype(np.float32)
    inner_bone = _box(bone, grid, 7, 7)
    inner_hu = _box(hu, grid, 7, 7)
    soft = ((inner_hu > -80) & (inner_hu < 130)).astype(np.float32)
    anterior = _shift(_box(bone, grid, 14, 14), grid, row_mm=22)
    posterior = _shift(_box(bone, grid, 10, 12), grid, row_mm=-14)
    side = _box(bone, grid, 10, 8)
    lateral = np.minimum(_shift(side, grid, col_mm=11), _shift(side, grid, col_mm=-11))
    return (1 - inner_bone) * soft * (anterior + posterior + lateral) / 3


def _midline_prior(grid: WorkingGrid) -> np.ndarray:
    """Weight (k, col) favouring the body's left-right centre (scoliosis allowed)."""
    body = grid.hu > -500
    counts = body.sum(axis=1).astype(np.float32)  # (k, col)
    cols = np.arange(grid.hu.shape[2], dtype=np.float32)
    total = counts.sum(axis=1)
    centre = np.where(total > 0, (counts * cols).sum(axis=1) / np.maximum(total, 1), grid.hu.shape[2] / 2)
    centre = ndi.median_filter(centre, size=grid.voxels(40, 0), mode="nearest")
    sigma = 40.0 / grid.spacing_mm[2]
    return np.exp(-0.5 * ((cols[None, :] - centre[:, None]) / sigma) ** 2)


def _track_dp(score: np.ndarray, max_step: int, penalty: float) -> np.ndarray:
    """Best path (row, col) per slice through ``score`` with bounded in-plane moves."""
    nk = score.shape[0]
    moves = [(a, b) for a in range(-max_step, max_step + 1) for b in range(-max_step, max_step + 1)]
    acc = score[0].astype(np.float32).copy()
    back = np.zeros(score.shape, np.int16)
    for k in range(1, nk):
        best = np.full(acc.shape, -np.inf, np.float32)
        arg = np.zeros(acc.shape, np.int16)
        for i, (a, b) in enumerate(moves):
            cand = np.roll(acc, (a, b), axis=(0, 1)) - penalty * (abs(a) + abs(b))
            better = cand > best
            best[better] = cand[better]
            arg[better] = i
        acc = best + score[k]
        back[k] = arg
    path = np.zeros((nk, 2), int)
    path[-1] = np.unravel_index(int(np.argmax(acc)), acc.shape)
    for k in range(nk - 1, 0, -1):
        a, b = moves[int(back[k][tuple(path[k])])]
        path[k - 1] = path[k] - (a, b)
    return path


def track_canal(grid: WorkingGrid) -> CanalTrack:
    """Follow the spinal canal through the volume (see module docstring, step 1)."""
    score = canal_score(grid) * _midline_prior(grid)[:, None, :]
    smooth = ndi.uniform_filter1d(score, grid.voxels(10, 0), axis=0)
    max_step = max(1, int(round(grid.spacing_mm[0] / min(grid.spacing_mm[1:]))))
    path = _track_dp(smooth, max_step, penalty=0.03)
    along = smooth[np.arange(len(path)), path[:, 0], path[:, 1]]
    evidence = ndi.uniform_filter1d(along, grid.voxels(20, 0), mode="nearest")
    reference = np.percentile(evidence, 90) if len(evidence) else 0.0
    valid = (evidence > max(0.08, 0.35 * reference))
    return CanalTrack(path[:, 0].astype(float), path[:, 1].astype(float), valid, evidence)


# ----------------------------------------------------------------------------- bodies and discs


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
    y = ndi.gaussian_filter1d(track.row[ks] * dr, max(1.0, 8.0 / dz), mode="nearest")
    x = ndi.gaussian_filter1d(track.col[ks] * dc, max(1.0, 8.0 / dz), mode="nearest")
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(z), np.diff(y)))])
    s = np.arange(0.0, arc[-1] + 1e-6, step_mm)
    zc, yc, xc = np.interp(s, arc, z), np.interp(s, arc, y), np.interp(s, arc, x)
    tz, ty = np.gradient(zc), np.gradient(yc)
    norm = np.maximum(np.hypot(tz, ty), 1e-6)
    tz, ty = tz / norm, ty / norm
    nz, ny = ty, -tz  # anterior normal in the sagittal plane
    depth = np.arange(8.0, 46.0, 2.0)
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


def find_discs(profile: np.ndarray, dz: float, k_lo: int, k_hi: int) -> list[tuple[float, float, float]]:
    """Disc troughs in ``profile[k_lo:k_hi+1]`` as (k_centre, k_lower_edge, k_upper_edge).

    A trough counts when it lies clearly below the body signal within 12 mm on both sides;
    troughs closer than 16 mm keep the deeper one (vertebral bodies are 18-40 mm high).
    """
    p = ndi.gaussian_filter1d(np.nan_to_num(profile, nan=np.nanmin(profile)), max(0.6, 1.5 / dz))
    reach = max(2, int(round(12 / dz)))
    candidates = []
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
    chosen = _regular_subset(candidates, dz)
    discs = []
    for depth, k, lo_peak, hi_peak in sorted(chosen, key=lambda c: c[1]):
        upper = _crossing(p, k, k + reach, (p[k] + hi_peak) / 2)
        lower = _crossing(p, k, k - reach, (p[k] + lo_peak) / 2)
        discs.append((float(k), lower, upper))
    return discs


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
            around = [heights[i] for i in (j - 1, j + 1) if 0 <= i < len(heights)]
            if around and heights[j] < 0.6 * min(around):
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

    def make(i_lo: float, i_hi: float, disc_mm: float, inf_seen: bool, sup_seen: bool) -> VertebraFound:
        mid = (i_lo + i_hi) / 2
        zc = _at(profile, mid, z)
        k = int(np.clip(round((zc - grid.origin_mm[2]) / grid.spacing_mm[0]), 0, len(track.row) - 1))
        return VertebraFound(_at(profile, i_lo, z), _at(profile, i_hi, z), disc_mm, _at(profile, mid, profile.row),
                             _at(profile, mid, profile.col), float(track.row[k]), inf_seen, sup_seen)

    found: list[VertebraFound] = []
    edges = [(d[1], d[2]) for d in discs]  # (lower edge, upper edge) sample indices, inferior first
    for (lo_a, up_a), (lo_b, _) in zip(edges, edges[1:]):
        found.append(make(up_a, lo_b, _at(profile, up_a, z) - _at(profile, lo_a, z), True, True))
    sacrum_length = None
    if edges:
        top_lo, top_up = edges[-1]
        if (n - 1 - top_up) * profile.step_mm >= 10:
            found.append(make(top_up, n - 1, _at(profile, top_up, z) - _at(profile, top_lo, z), True, False))
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


def _half_width_mm(grid: WorkingGrid, v: VertebraFound, rows_mm: tuple[float, float] = (-7.0, -1.0),
                   soft_mm: float = 5.0) -> float:
    """Half width of the body, measured on a left-right line through its anterior half.

    Walk out from the centre until more than 5 mm of soft tissue (< 60 HU: psoas, fat) and
    keep the last bone-like value (>= 90 HU; old cancellous bone is barely above muscle);
    the anterior half avoids rib heads, which articulate further back.
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
    widths = []
    for step in (-1, 1):
        last, soft = 0, 0
        for j in range(0, reach):
            cc = c + step * j
            if not 0 <= cc < len(line):
                break
            if line[cc] >= 90:
                last = j
            soft = soft + 1 if line[cc] < 60 else 0
            if soft * dc > soft_mm:
                break
        widths.append((last + 0.5) * dc)
    return float(np.clip(min(widths) if widths else 20.0, 10.0, 34.0))


def _k_range(grid: WorkingGrid, z_lo: float, z_hi: float) -> tuple[int, int]:
    k0 = int(np.floor((z_lo - grid.origin_mm[2]) / grid.spacing_mm[0]))
    k1 = int(np.ceil((z_hi - grid.origin_mm[2]) / grid.spacing_mm[0]))
    return max(k0, 0), min(k1, grid.hu.shape[0] - 1)


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


# ----------------------------------------------------------------------------- ribs

_OFFSETS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)])
_DESCENDING = _OFFSETS[_OFFSETS[:, 0] <= 0]


def _geodesic_mm(mask: np.ndarray, seeds: np.ndarray, spacing: tuple[float, float, float],
                 descending: bool = True) -> np.ndarray:
    """Shortest path length (mm) inside ``mask`` from any seed voxel (inf where unreachable).

    With ``descending`` the path may only stay in its slice or go down (lower ``k``): ribs
    fall away from their heads, so a path that must climb has left its rib for another.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    coords = np.argwhere(mask)
    index = np.full(mask.shape, -1, np.int64)
    index[tuple(coords.T)] = np.arange(len(coords))
    src, dst, weight = [], [], []
    shape = np.array(mask.shape)
    for off in _DESCENDING if descending else _OFFSETS:
        nb = coords + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        j = np.full(len(coords), -1, np.int64)
        j[ok] = index[tuple(nb[ok].T)]
        keep = j >= 0
        src.append(np.nonzero(keep)[0])
        dst.append(j[keep])
        weight.append(np.full(int(keep.sum()), float(np.linalg.norm(off * np.array(spacing)))))
    n = len(coords)
    graph = coo_matrix((np.concatenate(weight), (np.concatenate(src), np.concatenate(dst))), shape=(n, n)).tocsr()
    seed_index = index[tuple(np.argwhere(seeds & mask).T)]
    out = np.full(mask.shape, np.inf)
    if len(seed_index) == 0:
        return out
    dist = dijkstra(graph, directed=True, indices=seed_index, min_only=True)
    out[tuple(coords.T)] = dist
    return out


def _rib_seed(grid: WorkingGrid, v: VertebraFound, shape: tuple[int, int, int], k0: int, c0: int) -> np.ndarray:
    """Voxels just lateral to the body of ``v`` at body depth (both sides), in a box at (k0, 0, c0)."""
    dr, dc = grid.spacing_mm[1:]
    seed = np.zeros(shape, bool)
    sk0, sk1 = _k_range(grid, v.z_inferior_mm + 0.2 * v.height_mm, v.z_superior_mm + 3)
    sr0, sr1 = int(round(v.row - 4 / dr)), int(round(v.row + 12 / dr)) + 1
    lateral = np.abs(np.arange(c0, c0 + shape[2]) - v.col) * dc
    width = v.half_width_mm
    # 5 mm clear of the measured body edge (measurement error ~ 3-4 mm; rib heads sit 2-10 mm out).
    seed_cols = (lateral >= width + 4) & (lateral <= width + 15)
    lo, hi = max(sk0 - k0, 0), max(sk1 - k0 + 1, 0)
    seed[lo:hi, max(sr0, 0) : max(sr1, 0)] = seed_cols[None, None, :]
    return seed


def _rib_on_side(grid: WorkingGrid, bone: np.ndarray, v: VertebraFound, side: int,
                 neighbours: list[VertebraFound]) -> tuple[float, float]:
    """Length (mm) and head z of the rib leaving ``v`` on ``side`` (+1 = patient left); (0, nan) if none.

    The seed is bone just lateral to the body at body depth, where ribs articulate and where
    lumbar vertebrae have nothing but psoas. The rib is the bone connected to it outside the
    body, split from neighbouring levels' ribs by geodesic distance (ribs may touch).

    * A rib is *normal-length* when it reaches well lateral of the body (>= 14 mm beyond it)
      while descending (>= 8 mm below its head), as every rib does once past its neck;
      transverse processes and facets stay level and close. Its length is the path length
      to its point farthest from the head.
    * Otherwise it is a short (hypoplastic or rudimentary) rib: its length is the chord from
      the head to its farthest point in front of the posterior arch (the transverse process
      behind it is not rib), capped just below the 3.8 cm rule.
    """
    dz, dr, dc = grid.spacing_mm
    top = max([v.z_superior_mm + 8] + [u.z_superior_mm + 3 for u in neighbours])
    k0, k1 = _k_range(grid, v.z_inferior_mm - 90, top)
    c = v.col
    inner = (v.half_width_mm - 1) / dc
    if side > 0:
        c0, c1 = int(round(c + inner)), grid.hu.shape[2]
    else:
        c0, c1 = 0, int(round(c - inner)) + 1
    c0, c1 = max(c0, 0), max(c1, 0)
    box = bone[k0 : k1 + 1, :, c0:c1]
    if box.size == 0:
        return 0.0, float("nan")
    # Rib heads are cortical bone; contrast-filled vessels beside the spine are not.
    seed = _rib_seed(grid, v, box.shape, k0, c0) & (grid.hu[k0 : k1 + 1, :, c0:c1] >= RIB_HEAD_MIN_HU)
    if seed.sum() < 2:
        return 0.0, float("nan")
    # The posterior arch column below this level (facets, pedicles, lower transverse
    # processes) links every vertebra; a rib below its own vertebra is already far lateral.
    lateral_cols = np.abs(np.arange(c0, c1) - c) * dc
    k_cut = _k_range(grid, v.z_inferior_mm - 5, v.z_inferior_mm - 5)[0] - k0
    if k_cut > 0:
        box = box.copy()
        box[:k_cut, :, lateral_cols < v.half_width_mm + 12] = False
    labels, _ = ndi.label(box, structure=np.ones((3, 3, 3)))
    hit = np.bincount(labels[seed], minlength=labels.max() + 1)
    hit[0] = 0
    comp = labels == int(np.argmax(hit))
    seed &= comp
    own = _geodesic_mm(comp, seed, grid.spacing_mm)
    comp &= np.isfinite(own)
    for u in neighbours:
        theirs = _rib_seed(grid, u, box.shape, k0, c0) & comp & ~seed
        if theirs.any():
            # Ribs descend: where two touch, the lower stretch belongs to the upper rib
            # unless it is clearly nearer the lower head (RIB_SPLIT_BIAS_MM).
            # The advantage grows along the rib (capped), so a head always keeps its own neck.
            bias = np.minimum(RIB_SPLIT_BIAS_MM, 0.3 * own)
            bias = bias if u.z_inferior_mm > v.z_inferior_mm else -bias
            comp &= own < _geodesic_mm(comp, theirs, grid.spacing_mm) - bias
    head = np.argwhere(seed).mean(axis=0)
    z_head = grid.origin_mm[2] + (head[0] + k0) * dz
    pts = np.argwhere(comp)
    rel = (pts - head) * np.array([dz, dr, dc])
    chord = np.linalg.norm(rel, axis=1)
    lateral = np.abs(pts[:, 2] + c0 - c) * dc
    away = (lateral >= v.half_width_mm + 14) & (rel[:, 0] <= -8)
    if away.any():
        far = int(np.argmax(np.where(away, chord, -1)))
        if chord[far] >= NORMAL_RIB_MIN_MM:
            return float(max(own[tuple(pts[far])], chord[far])), z_head
    front = (pts[:, 1] <= v.canal_row + 3 / dr) & (rel[:, 0] >= -25)
    length = float(chord[front].max()) if front.any() else 0.0
    return min(length, NORMAL_RIB_MIN_MM - 0.5), z_head


def _ala_fraction(grid: WorkingGrid, bone: np.ndarray, v: VertebraFound) -> float:
    """Fraction of the segment's slices with bone well lateral to the body *at body depth*.

    That is where the sacral alae are; beside a lumbar body lies only psoas (transverse
    processes sit further back, at canal depth; rib heads stay within ~10 mm of the body).
    """
    k0, k1 = _k_range(grid, v.z_inferior_mm + 2, v.z_superior_mm - 2)
    if k1 < k0:
        return 0.0
    dr, dc = grid.spacing_mm[1:]
    r0, r1 = max(int(round(v.row - 8 / dr)), 0), max(int(round(v.row + 8 / dr)) + 1, 0)
    lateral = (np.arange(grid.hu.shape[2]) - v.col) * dc
    hits = []
    for sign in (-1, 1):
        cols = (sign * lateral >= v.half_width_mm + 12) & (sign * lateral <= v.half_width_mm + 28)
        hits.append(bone[k0 : k1 + 1, r0:r1][:, :, cols].sum(axis=(1, 2)) >= 2)
    return float(np.mean(hits[0] & hits[1]))


# ----------------------------------------------------------------------------- pelvis


def find_iliac_bones(grid: WorkingGrid, bone: np.ndarray, track: CanalTrack,
                     z_floor_mm: float) -> list[tuple[float, float, float]]:
    """Large bone masses beside the spine (iliac wings with acetabula and femurs).

    Returns (z_top_mm, z_bottom_mm, side) per component, side -1 right / +1 left. The spine
    is masked out by a 35 mm band around the canal; ribs are too thin (< 40 cm3) or end
    higher: a pelvic component reaches below ``z_floor_mm`` (the low end of the column).
    """
    dz, dr, dc = grid.spacing_mm
    lateral = bone.copy()
    band = int(round(35 / dc))
    cols = np.arange(grid.hu.shape[2])
    for k in range(grid.hu.shape[0]):
        lateral[k, :, np.abs(cols - track.col[k]) < band] = False
    labels, n = ndi.label(lateral)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * dz * dr * dc / 1000.0
    out = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or sizes[i] < 40:
            continue
        z_extent = (sl[0].stop - sl[0].start) * dz
        if z_extent < 40:
            continue
        sub = labels[sl] == i
        col_mean = float(np.nonzero(sub.any(axis=(0, 1)))[0].mean() + sl[2].start)
        k_mid = (sl[0].start + sl[0].stop) // 2
        offset = (col_mean - track.col[min(k_mid, len(track.col) - 1)]) * dc
        if abs(offset) < 45 or grid.origin_mm[2] + sl[0].start * dz > z_floor_mm:
            continue  # beside the spine and down to (or below) its lower end: not scapula
        if sl[0].stop >= grid.hu.shape[0]:
            continue  # runs to the top of the scan: table or arm, not pelvis
        # The ilium reaches the sacrum (sacroiliac joint); arm bones stay far lateral.
        ks, rs, cs = np.nonzero(sub)
        nearest = np.min(np.abs(cs + sl[2].start - track.col[ks + sl[0].start])) * dc
        if not 35 <= nearest <= 80:
            continue  # rib heads touch the vertebral body (< 35 mm from the canal)
        # The iliac wing reaches well in front of the spine (anterior superior iliac spine);
        # a scapula lies behind the ribs.
        ahead = np.max(track.row[ks + sl[0].start] - (rs + sl[1].start)) * dr
        if ahead < 40:
            continue
        out.append((grid.origin_mm[2] + (sl[0].stop - 1) * dz, grid.origin_mm[2] + sl[0].start * dz,
                    float(np.sign(offset))))
    return out


# ----------------------------------------------------------------------------- all together


def analyse_spine(volume: Volume) -> SpineAnalysis:
    """Find the vertebrae, discs, ribs, sacrum and iliac crests of ``volume``."""
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
    iliac = find_iliac_bones(grid, bone, track, z_floor)
    crest = None
    if iliac:
        tops = {}
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
    out, sacrum_length = _merge_sacrum(grid, bone, out, sacrum_length, bool(iliac), notes)
    # Above enhancing kidney cortex and organs (arterial phase ~190 HU), which touch the
    # lowest ribs; thin or osteoporotic ribs keep their continuity through weaker voxels
    # next to strong ones (one voxel of hysteresis: not enough to walk into a kidney).
    strong = grid.hu > RIB_BONE_HU
    rib_bone = strong | (ndi.binary_dilation(strong, np.ones((3, 3, 3), bool)) & (grid.hu > 180))
    ribs: list[Rib] = []
    normal_run = 0
    for i in range(len(out) - 1, -1, -1):
        v = out[i]
        if v.sacral or v.height_mm < 8 or (crest is not None and v.z_inferior_mm < crest):
            continue  # no rib arises below the iliac crests
        near = [out[j] for j in (i - 1, i + 1) if 0 <= j < len(out) and not out[j].sacral]
        left, z_left = _rib_on_side(grid, rib_bone, v, +1, near)
        right, z_right = _rib_on_side(grid, rib_bone, v, -1, near)
        for side, length, z_head in (("left", left, z_left), ("right", right, z_right)):
            if length > 0:
                ribs.append(Rib(side, length, z_head, i))
        out[i] = VertebraFound(**{**v.__dict__, "rib_left_mm": left, "rib_right_mm": right})
        normal_run = normal_run + 1 if max(left, right) >= NORMAL_RIB_MIN_MM else 0
        if normal_run >= 3:
            break  # three consecutive rib-bearing levels: the thoracic cage is reached
    z_valid = (float(grid.z_mm[valid.min()]), float(grid.z_mm[valid.max()]))
    return SpineAnalysis(tuple(out), tuple(ribs), crest, sacrum_length, z_valid, z_scan, tuple(notes))


def _merge_sacrum(grid: WorkingGrid, bone: np.ndarray, vs: list[VertebraFound], length: float | None,
                  pelvis_seen: bool, notes: list[str]) -> tuple[list[VertebraFound], float | None]:
    """The sacrum: the lowest segments that carry alae, merged into one (top = S1's endplate).

    Sacral remnant discs can cut the fused sacrum into pieces; they are one bone here.
    """
    # Own (unsmoothed) width: the sacrum narrows fast and must not borrow lumbar widths.
    sacral = [v.sacral or _ala_fraction(grid, bone, VertebraFound(**{
        **v.__dict__, "half_width_mm": min(v.half_width_mm, _half_width_mm(grid, v))})) >= 0.4 for v in vs]
    i = len(vs)
    while i > 0 and sacral[i - 1]:
        i -= 1
    if i == len(vs):
        return vs, None
    if not pelvis_seen:
        notes.append("sacrum-like bone without iliac bones beside it")
    run = vs[i:]
    top, bottom = run[0], run[-1]
    merged = VertebraFound(**{**top.__dict__, "z_inferior_mm": bottom.z_inferior_mm, "disc_below_mm": 0.0,
                              "inferior_seen": bottom.inferior_seen, "sacral": True})
    if bottom.inferior_seen:
        length = merged.z_superior_mm - merged.z_inferior_mm if length is None or len(run) > 1 else length
    else:
        length = None
    return vs[:i] + [merged], length
