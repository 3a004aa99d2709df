"""Classical segmentation of one axial slice into muscle, IMAT, VAT and SAT.

HU ranges (``config.muscle_hu``, ``config.fat_hu``) say *what* a pixel is made of;
compartment geometry says *where* it belongs. The steps of :func:`segment_slice`:

1. :func:`body_mask` -- the patient: largest component above -500 HU after an
   opening that cuts the CT table, mattress and arms off at narrow contacts;
   internal gas filled.
2. Fascia (:func:`_fascia_radii`) -- rays from the body centre, sampled every half
   pixel. Walking inward from the skin, the subcutaneous fat ends at the first
   soft-tissue run thicker than a septum: the outer surface of the abdominal and
   back muscles. Radii that leave their angular neighbours' median (a thin linea
   alba, a vessel in the fat) are replaced by it. Everything inside is "inside".
3. Vertebra (:func:`_vertebra`) -- the largest bone component (>= 150 HU) and the
   pieces in line with it, plus cancellous bone and disc (dense on a smoothed
   image), a disc seen apart from its arch, and the canal enclosed by the arch.
4. The patient's own muscle HU is read just inside the fascia; smoothed soft
   tissue clearly brighter is an organ (liver, spleen, enhanced bowel), clearly
   darker is fluid (bowel content).
5. Muscle wall (:func:`_walk_walls`, :func:`_wall_thickness`) -- continuing
   inward from the fascia, the wall lasts while pixels are muscle-range (thin fat
   planes crossed) and ends at fat, gas, bone or organ. Rays much thicker than
   their neighbours, or than an abdominal wall can be, met an organ and take the
   neighbours' thickness -- except behind the spine, where the back muscles run deep.
6. Psoas, quadratus lumborum, crura (:func:`_muscle_compartments`) -- muscle-range
   components beside and behind the vertebral body that touch the vertebra, or
   the wall behind the vertebra's middle. Aorta, IVC and bowel lie in front.
7. Labels: muscle-range pixels of the wall and those components are skeletal
   muscle; fat-range pixels in the wall band or in small pockets enclosed by
   muscle are IMAT; other fat-range pixels inside the fascia are VAT, except in
   and right behind the vertebra and within ``GAS_MARGIN_MM`` of bowel gas
   (partial volume, stool); fat-range pixels outside the fascia, below the skin,
   are SAT. Skin, bone, organs, table and arms are 0.

Slices are ``(row, col)`` in the convention of :mod:`l3node.analysis.volume`; all
sizes are in mm so the same rules hold from 0.6 mm to 3 mm pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume
from l3node.config import AnalysisConfig

# Body and skin.
BODY_HU = -500.0
"""Above this a pixel is patient, table or clothing; below it air."""
ARM_BRIDGE_MM = 12.0
"""Body parts joined by a neck narrower than twice this (arms, table) are cut off."""
SKIN_MM = 2.0
"""Skin thickness excluded from SAT (at least one pixel)."""
GAS_HU = -400.0
"""Bowel gas; fat-range pixels within GAS_MARGIN_MM of it are partial volume or stool."""
GAS_MARGIN_MM = 3.0

# Fascia and muscle wall (rays).
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
"""A wall ray thicker than this times its neighbours' median (plus two pixels) has met an organ."""
WALL_SMOOTH_DEG = 7.0
"""Angular window of the median filter on wall thickness."""
BACK_MAX_MM = 110.0
"""Paraspinal muscles behind the spine can run this deep from the fascia."""
PARASPINAL_HALF_WIDTH_MM = 50.0
"""The erector spinae and multifidus lie within this distance of the midline."""
ORGAN_DELTA_HU = 12.0
"""Smoothed soft tissue this much brighter than the wall muscle is an organ (liver, spleen)."""
FLUID_DELTA_HU = 20.0
"""Smoothed soft tissue this much darker than the wall muscle is fluid (bowel content), not psoas."""
FASCIA_BAND_MM = 6.0
"""Depth below the fascia sampled for the patient's own muscle HU."""

# Vertebra.
BONE_HU = 150.0
"""Cortical and cancellous bone of the vertebra; also the top of the muscle range."""
CANCELLOUS_HU = 70.0
"""Smoothed HU above this, connected to the vertebra, is bone or disc, not muscle ..."""
DENSE_PIXEL_HU = 60.0
"""... if the pixel itself is above this too (muscle beside cortex is bright only once smoothed)."""
VERTEBRA_GATHER_MM = 30.0
"""Bone pieces this close to the largest one, and in line with it, belong to the same vertebra."""
DISC_GATHER_MM = 60.0
"""A disc blob is looked for this close to the vertebra's bone ..."""
DISC_MIN_MM2 = 600.0
"""... at least this large ..."""
DISC_OFFSET_MM = 12.0
"""... centred within this of the vertebra's midline (the aorta lies further out) ..."""
DISC_MAX_HU = 130.0
"""... and at most this bright once smoothed (enhanced vessels are brighter)."""
CANAL_CLOSING_MM = 8.0
"""Gaps in the neural arch narrower than about twice this are bridged to find the canal."""
SPINE_FAT_MM = 5.0
"""Fat behind the middle of the vertebra and this close to it is not visceral."""

# Psoas, quadratus lumborum, IMAT.
PSOAS_REACH_MM = 40.0
"""Psoas, quadratus lumborum and crura are collected up to this far from the vertebra."""
PSOAS_MEDIAL_FRACTION = 0.7
"""In front of the middle of the vertebra, psoas lies further from the midline than this
fraction of the vertebral body's half width (aorta and IVC lie nearer)."""
PSOAS_FRONT_MM = 3.0
"""Muscle components may reach this far in front of the vertebral body (bowel lies further)."""
IMAT_POCKET_MAX_MM2 = 500.0
"""Fat enclosed by muscle in pockets up to this size is IMAT; larger is a cavity (VAT)."""


def segment_slice(hu: np.ndarray, pixel_mm: tuple[float, float], config: AnalysisConfig | None = None) -> np.ndarray:
    """Label the tissues of one axial slice.

    Parameters
    ----------
    hu:
        2D array ``(row, col)`` in Hounsfield units, anterior at the top, patient
        right on the image left.
    pixel_mm:
        ``(row spacing, column spacing)`` in mm.
    config:
        HU ranges; defaults to :class:`~l3node.config.AnalysisConfig`.

    Returns
    -------
    numpy.ndarray
        uint8 labels of the same shape, values of :class:`~l3node.analysis.tissues.Tissue`
        (0 = anything else).

    Raises
    ------
    ValueError
        If ``hu`` is not 2D or a pixel spacing is not positive.
    """
    config = config or AnalysisConfig()
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 2:
        raise ValueError(f"segment_slice needs a 2D slice, got shape {hu.shape}")
    dy, dx = (float(v) for v in pixel_mm)
    if dy <= 0 or dx <= 0:
        raise ValueError(f"pixel spacing must be positive, got {pixel_mm}")

    labels = np.zeros(hu.shape, np.uint8)
    body = body_mask(hu, (dy, dx))
    if body.sum() < 100:
        return labels
    muscle_hu = (hu >= config.muscle_hu.min) & (hu <= config.muscle_hu.max) & body
    fat_hu = (hu >= config.fat_hu.min) & (hu <= config.fat_hu.max) & body
    bone = (hu >= max(BONE_HU, config.muscle_hu.max)) & body

    geometry = _PolarGrid(body, (dy, dx))
    classes = _classes(hu, body, config)
    fascia_r = _smooth_radii(_fascia_radii(classes, body, geometry), geometry.step_deg)
    fascia_at = geometry.at_angle(fascia_r)
    inside = body & (geometry.rho < fascia_at)
    spine = _vertebra(np.where(inside, hu, -1000.0), bone & inside, (dy, dx))
    organ_zone = inside.copy()
    if spine is not None:
        # Behind the vertebra, near the midline, lie only the back muscles, which are
        # brighter than the thin wall muscle that sets the reference.
        back_rows = slice(int(np.ceil(spine.centre[0])), None)
        cols = np.abs(np.arange(hu.shape[1]) - spine.centre[1]) * dx <= PARASPINAL_HALF_WIDTH_MM
        organ_zone[back_rows, cols] = False
    muscle_ref = _muscle_reference(hu, classes, inside & (geometry.rho >= fascia_at - FASCIA_BAND_MM))
    not_muscle = np.zeros_like(body)
    if muscle_ref is not None:
        # Organs brighter than the patient's muscle (liver, spleen, enhanced bowel or
        # kidney) stop the wall walk; fluid darker than it (bowel content, cysts)
        # is not collected as psoas.
        smooth = _smoothed(hu, (dy, dx))
        bright = organ_zone & (smooth > muscle_ref + ORGAN_DELTA_HU)
        classes[(classes == _MUSCLE) & bright] = _ORGAN
        # Darker-than-muscle is judged against the back muscles, whose smoothed HU
        # is neither diluted by fat (thin wall) nor inflated by noise (upper quartile).
        back_ref = _back_muscle_hu(smooth, muscle_hu & inside, spine, (dy, dx)) if spine is not None else None
        dark = organ_zone & (smooth < (back_ref if back_ref is not None else muscle_ref) - FLUID_DELTA_HU)
        not_muscle = bright | dark
    rays = _walk_walls(classes, fascia_r, geometry)

    wall_t = _wall_thickness(rays, fascia_r, spine, geometry)
    wall = inside & (geometry.rho >= geometry.at_angle(fascia_r - wall_t))

    muscle = _muscle_compartments(muscle_hu & inside, wall, spine, not_muscle, (dy, dx))
    compartment = _enclosed(muscle, wall, (dy, dx))
    imat = fat_hu & compartment & ~muscle
    gas = (hu < GAS_HU) & inside
    near_gas = ndi.distance_transform_edt(~gas, sampling=(dy, dx)) <= max(GAS_MARGIN_MM, dy, dx)
    vat = fat_hu & inside & ~compartment & ~near_gas
    if spine is not None:
        vat &= ~_around_spine(spine, inside, (dy, dx)) & ~spine.bone
    # Skin: the outermost SKIN_MM, partial volume of air and dermis.
    depth = ndi.distance_transform_edt(body, sampling=(dy, dx))
    sat = fat_hu & ~inside & (depth > max(SKIN_MM, dy, dx))

    labels[sat] = Tissue.SAT
    labels[vat] = Tissue.VAT
    labels[imat] = Tissue.IMAT
    labels[muscle] = Tissue.SKELETAL_MUSCLE
    return labels


def segment_at_l3(volume: Volume, slice_index: int, config: AnalysisConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment the L3 slice, optionally averaged over neighbouring slices.

    With ``config.average_slices_mm`` = 0 this is :func:`segment_slice` on slice
    ``slice_index``. Otherwise every slice whose centre lies within
    ``± average_slices_mm`` of the L3 slice is segmented on its own, and the
    returned label map is the per-pixel majority vote (ties go to the L3 slice's
    own label) with the per-pixel mean HU of those slices as the plane. Measuring
    that pair gives areas equal to the mean of the per-slice areas up to the vote,
    and mean HU over the averaged plane; one 2D result remains for SEG and overlay.

    Returns
    -------
    tuple of numpy.ndarray
        ``(labels, hu_plane)``, both ``(row, col)``.

    Raises
    ------
    ValueError
        If ``slice_index`` is outside the volume.
    """
    config = config or AnalysisConfig()
    n = volume.shape[0]
    if not 0 <= slice_index < n:
        raise ValueError(f"slice index {slice_index} outside 0..{n - 1}")
    pixel_mm = (volume.spacing_mm[1], volume.spacing_mm[2])
    half = int(np.floor(config.average_slices_mm / volume.spacing_mm[0] + 1e-6))
    indices = range(max(0, slice_index - half), min(n, slice_index + half + 1))
    if len(indices) == 1:
        plane = volume.hu[slice_index]
        return segment_slice(plane, pixel_mm, config), np.asarray(plane, np.float32)
    stack = np.stack([segment_slice(volume.hu[k], pixel_mm, config) for k in indices])
    votes = np.stack([(stack == value).sum(axis=0) for value in range(len(Tissue) + 1)])
    labels = votes.argmax(axis=0).astype(np.uint8)
    own = stack[list(indices).index(slice_index)]
    tie = votes[own, np.arange(own.shape[0])[:, None], np.arange(own.shape[1])] == votes.max(axis=0)
    labels[tie] = own[tie]
    plane = volume.hu[list(indices)].mean(axis=0).astype(np.float32)
    return labels, plane


def body_mask(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The patient's cross-section without table, mattress, arms or outside air.

    Returns an all-False mask when nothing is above ``BODY_HU``.

    Raises
    ------
    ValueError
        Not raised for any 2D input; a non-2D ``hu`` fails in :func:`scipy.ndimage.label`.
    """
    candidate = hu > BODY_HU
    largest = _largest_component(candidate)
    if not largest.any():
        return largest
    # Opening by a disc of ARM_BRIDGE_MM (via distance transforms, which are fast
    # for large radii) removes necks narrower than the disc; the core is then
    # grown back within the original mask so the body outline is kept exactly.
    depth = ndi.distance_transform_edt(largest, sampling=pixel_mm)
    core = _largest_component(depth > ARM_BRIDGE_MM)
    if core.any():
        reach = ndi.distance_transform_edt(~core, sampling=pixel_mm)
        largest = _largest_component(largest & (reach <= ARM_BRIDGE_MM + max(pixel_mm)))
    return ndi.binary_fill_holes(largest)


class _PolarGrid:
    """Angles and radii (mm) of every pixel around the body centre, and ray sampling."""

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


class _Rays:
    """Per-ray results of the inward walk through the muscle wall."""

    def __init__(self, wall_t: np.ndarray, wall_end: np.ndarray, stop: np.ndarray):
        self.wall_t = wall_t  # muscle wall thickness (mm) measured inward from the fascia
        self.wall_end = wall_end  # (row, col) pixel of the deepest wall sample
        self.stop = stop  # why the walk stopped: "fat", "gas", "bone", "organ", "centre"


_OTHER, _MUSCLE, _FAT, _GAS, _BONE, _ORGAN = 0, 1, 2, 3, 4, 5
_STOP_NAMES = {_FAT: "fat", _GAS: "gas", _BONE: "bone", _ORGAN: "organ", _OTHER: "fat", _MUSCLE: "fat"}


def _classes(hu: np.ndarray, body: np.ndarray, config: AnalysisConfig) -> np.ndarray:
    classes = np.full(hu.shape, _OTHER, np.uint8)
    classes[(hu >= config.muscle_hu.min) & (hu <= config.muscle_hu.max)] = _MUSCLE
    classes[(hu >= config.fat_hu.min) & (hu <= config.fat_hu.max)] = _FAT
    classes[hu < config.fat_hu.min] = _GAS
    classes[hu > config.muscle_hu.max] = _BONE
    classes[~body] = _GAS
    return classes


def _fascia_radii(classes: np.ndarray, body: np.ndarray, grid: _PolarGrid) -> np.ndarray:
    """Per ray, the radius (mm) where the subcutaneous fat ends, walking in from the skin."""
    sampled = grid.sample(classes)
    inside = grid.sample(body.astype(np.uint8)).astype(bool)
    septum = int(np.ceil(max(SEPTUM_MM, 1.2 * max(grid.pixel_mm)) / grid.step_mm))
    fascia_r = np.zeros(len(grid.angles))
    for i, cls in enumerate(sampled):
        where_body = np.nonzero(inside[i])[0]
        if len(where_body) == 0:
            continue
        j = where_body[-1]
        # Skin: soft tissue at the surface, up to the first fat sample.
        fat_start = j
        while fat_start > 0 and cls[fat_start] != _FAT and j - fat_start < septum * 3:
            fat_start -= 1
        if cls[fat_start] != _FAT:
            fascia_r[i] = grid.radii[j]  # no subcutaneous fat on this ray
        else:
            fascia_r[i] = grid.radii[_run_until(cls, fat_start, keep={_FAT}, allowed_gap=septum)]
    return fascia_r


def _walk_walls(classes: np.ndarray, fascia_r: np.ndarray, grid: _PolarGrid) -> _Rays:
    """Per ray, the muscle run inward from the fascia and what ended it."""
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
        end = _run_until(cls, fascia, keep={_MUSCLE}, allowed_gap=plane, gap_classes={_FAT, _ORGAN, _OTHER})
        wall_t[i] = max(grid.radii[fascia] - grid.radii[min(end, fascia)] + step, 0.0) if end <= fascia else 0.0
        below = end - 1
        stop[i] = "centre" if below < 0 else _STOP_NAMES[int(cls[below])]
        a = np.radians(grid.angles[i])
        wall_end[i] = (
            grid.centre[0] + np.sin(a) * grid.radii[end] / grid.pixel_mm[0],
            grid.centre[1] + np.cos(a) * grid.radii[end] / grid.pixel_mm[1],
        )
    return _Rays(wall_t, wall_end, stop)


def _muscle_reference(hu: np.ndarray, classes: np.ndarray, fascia_band: np.ndarray) -> float | None:
    """The patient's own muscle HU: upper quartile of muscle-range pixels just inside the fascia.

    Those are muscle on nearly every ray; thin wall muscle is diluted by fat at its
    edges, hence the upper quartile rather than the median. None when too few.
    """
    reference = classes[fascia_band] == _MUSCLE
    if reference.sum() < 20:
        return None
    return float(np.percentile(hu[fascia_band][reference], 75))


def _back_muscle_hu(smooth: np.ndarray, muscle_hu: np.ndarray, spine: _Spine, pixel_mm: tuple[float, float]) -> float | None:
    """Median smoothed HU of the back muscles (behind the vertebra, near the midline), away from their edges."""
    rows = np.arange(muscle_hu.shape[0])[:, None]
    cols = np.arange(muscle_hu.shape[1])[None, :]
    back = (rows > spine.centre[0]) & (np.abs(cols - spine.centre[1]) * pixel_mm[1] <= PARASPINAL_HALF_WIDTH_MM)
    core = ndi.binary_erosion(muscle_hu & back & ~spine.bone, iterations=max(1, int(round(3.0 / min(pixel_mm)))))
    if core.sum() * pixel_mm[0] * pixel_mm[1] < 300.0:
        return None
    return float(np.median(smooth[core]))


def _smoothed(hu: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """HU averaged over about 5 mm: single pixels of muscle, liver and fluid overlap in HU, means do not."""
    size = max(3, int(round(5.0 / min(pixel_mm))) | 1)
    return ndi.uniform_filter(np.clip(hu, -200, 300), size=size)


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


def _smooth_radii(radii: np.ndarray, step_deg: float, tolerance_mm: float = 6.0) -> np.ndarray:
    """Replace radii that leave their angular neighbourhood's median by that median."""
    window = max(3, int(round(SMOOTH_DEG / step_deg)) | 1)
    median = ndi.median_filter(radii, size=window, mode="wrap")
    out = np.where(np.abs(radii - median) > tolerance_mm, median, radii)
    return ndi.uniform_filter1d(out, size=3, mode="wrap")


class _Spine:
    """The vertebra on the slice: its bone mask and the extent of its body."""

    def __init__(self, bone: np.ndarray, centre: tuple[float, float], front_row: float, half_width_px: float,
                 body_half_width_px: float):
        self.bone = bone  # bone, disc, cancellous bone and canal: never muscle
        self.centre = centre  # (row, col) median of that region
        self.front_row = front_row  # anterior edge of the vertebral body
        self.half_width_px = half_width_px  # with transverse processes
        self.body_half_width_px = body_half_width_px  # vertebral body (or disc) alone


def _vertebra(hu: np.ndarray, bone: np.ndarray, pixel_mm: tuple[float, float]) -> _Spine | None:
    """The vertebra with its cancellous bone, disc and canal; None when no bone is large enough."""
    vertebra = _vertebra_bone(bone, pixel_mm)
    if vertebra is None:
        return None
    front_bone = np.nonzero(vertebra)[0].min()
    # Disc and osteoporotic cancellous bone fall below BONE_HU; on a smoothed image
    # they stay above muscle. Dense tissue touching the vertebra, not in front of
    # its bone (an enhanced aorta lies there), is added.
    size = max(3, int(round(5.0 / min(pixel_mm))) | 1)
    smooth = ndi.uniform_filter(np.clip(hu, -200, 1000), size=size)
    rows = np.arange(hu.shape[0])[:, None]
    # Muscle next to cortex is bright once smoothed; it must be dense itself too.
    dense = ((smooth > CANCELLOUS_HU) & (hu > DENSE_PIXEL_HU) & (rows >= front_bone)) | vertebra
    dense &= ndi.distance_transform_edt(~vertebra, sampling=pixel_mm) <= VERTEBRA_GATHER_MM
    dense_labels, _ = ndi.label(dense)
    region = np.isin(dense_labels, np.unique(dense_labels[vertebra]))
    # A slice through the disc may show it apart from the neural arch (epidural
    # fat between): a disc-sized blob of disc HU in line with the vertebra.
    disc_like = (smooth > CANCELLOUS_HU) & (smooth <= DISC_MAX_HU) & (hu > DENSE_PIXEL_HU)
    disc_like &= ndi.distance_transform_edt(~vertebra, sampling=pixel_mm) <= DISC_GATHER_MM
    disc_labels, n_disc = ndi.label(disc_like)
    if n_disc:
        index = np.arange(1, n_disc + 1)
        areas = np.bincount(disc_labels.ravel())[1:] * pixel_mm[0] * pixel_mm[1]
        cols = ndi.mean(np.broadcast_to(np.arange(hu.shape[1]), hu.shape), disc_labels, index)
        centred = np.abs(cols - np.nonzero(vertebra)[1].mean()) * pixel_mm[1] <= DISC_OFFSET_MM
        keep = np.concatenate([[False], (areas >= DISC_MIN_MM2) & centred])
        region |= keep[disc_labels]
    # Cancellous bone inside a broken cortex, and the spinal canal, are what a
    # closing encloses; the closing's own bridges are not added (psoas lies in
    # the concavities it would fill).
    for closing_mm in (5.0, CANAL_CLOSING_MM):
        closed = ndi.binary_closing(region, iterations=max(1, int(round(closing_mm / min(pixel_mm))))) | region
        region |= ndi.binary_fill_holes(closed) & ~closed
    vr, vc = np.nonzero(region)
    centre = (float(np.median(vr)), float(np.median(vc)))
    front = _body_front(region, centre[0])
    half_width = float(np.percentile(np.abs(vc - centre[1]), 90))
    body_rows = (vr >= front) & (vr <= (front + centre[0]) / 2)
    body_half_width = float(np.percentile(np.abs(vc[body_rows] - centre[1]), 95)) if body_rows.any() else half_width
    return _Spine(region, centre, front, half_width, body_half_width)


def _vertebra_bone(bone: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray | None:
    """Bone pixels of the vertebra: the largest bone piece and the pieces beside or behind it.

    Body, pedicles and processes fall apart into pieces on a slice through an
    endplate or a thin cortex; those are gathered. Pieces in front of the largest
    one (an enhanced aorta) and far to the side (ribs) are left out.
    """
    closed = ndi.binary_fill_holes(ndi.binary_closing(bone, iterations=max(1, int(round(3.0 / min(pixel_mm))))))
    labelled, n = ndi.label(closed)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    if sizes[best] * pixel_mm[0] * pixel_mm[1] < 200.0:  # < 2 cm^2: a rib, not a vertebra
        return None
    near_best = ndi.distance_transform_edt(labelled != best, sampling=pixel_mm) <= VERTEBRA_GATHER_MM
    pieces = np.unique(labelled[near_best & (labelled > 0)])
    grid_rows, grid_cols = np.indices(bone.shape)
    cols_of = ndi.mean(grid_cols, labelled, index=pieces)
    rows_of = ndi.mean(grid_rows, labelled, index=pieces)
    best_rows, best_cols = np.nonzero(labelled == best)
    pieces = pieces[(np.abs(cols_of - best_cols.mean()) * pixel_mm[1] <= VERTEBRA_GATHER_MM) & (rows_of >= best_rows.min())]
    return np.isin(labelled, pieces)


def _body_front(region: np.ndarray, centre_row: float) -> float:
    """Anterior edge of the vertebral body: the first row at least 60 % as wide as the body.

    A vessel pressed on the front of the body (aorta, IVC) is narrower and is skipped.
    """
    widths = region.sum(axis=1)
    rows = np.arange(len(widths))
    anterior = rows <= centre_row
    if not widths[anterior].any():
        return float(np.nonzero(widths)[0].min())
    wide = anterior & (widths >= 0.6 * widths[anterior].max())
    return float(rows[wide].min())


def _wall_thickness(rays: _Rays, fascia_r: np.ndarray, spine: _Spine | None, grid: _PolarGrid) -> np.ndarray:
    """Muscle-wall thickness per ray, organs pressed on the wall replaced by neighbours."""
    thickness = np.minimum(rays.wall_t, fascia_r)
    deep_ok = np.zeros(len(thickness), bool)
    if spine is not None:
        # Behind the front of the vertebral body the walk ends on bone or fat deep in
        # the paraspinal compartment; those long runs are muscle, not organs.
        lateral_mm = np.abs(rays.wall_end[:, 1] - spine.centre[1]) * grid.pixel_mm[1]
        behind = rays.wall_end[:, 0] >= spine.centre[0] - spine.half_width_px
        deep_ok = behind & ((rays.stop == "bone") | (lateral_mm <= PARASPINAL_HALF_WIDTH_MM))
    limit = np.where(deep_ok, BACK_MAX_MM, WALL_MAX_MM)
    reliable = (thickness <= limit) & (rays.stop != "centre")
    if not reliable.any():
        return np.minimum(thickness, WALL_MAX_MM)
    # Where an organ abuts the wall over a short arc, the run is longer than its
    # neighbours' even when under the hard limit.
    window = max(3, int(round(3 * SMOOTH_DEG / grid.step_deg)) | 1)
    typical = ndi.median_filter(_fill_circular(thickness, reliable), size=window, mode="wrap")
    reliable &= deep_ok | (thickness <= WALL_RELATIVE * typical + 2 * max(grid.pixel_mm))
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


def _muscle_compartments(
    muscle_hu: np.ndarray, wall: np.ndarray, spine: _Spine | None, not_muscle: np.ndarray, pixel_mm: tuple[float, float]
) -> np.ndarray:
    """Muscle-range pixels of the wall, plus psoas, quadratus lumborum and crura.

    Those lie beside and behind the vertebral body: muscle-range components (after
    an opening that cuts thin contacts with organs) behind the front of the
    vertebral body that touch the vertebra, or touch the wall muscle in the
    posterior half of the body. Aorta, IVC and bowel lie in front of the vertebra.
    """
    muscle = muscle_hu & wall
    if spine is None:
        return muscle
    muscle &= ~spine.bone
    rows = np.arange(muscle_hu.shape[0])[:, None]
    posterior = np.broadcast_to(rows >= spine.front_row - PSOAS_FRONT_MM / pixel_mm[0], muscle_hu.shape)
    reach = ndi.distance_transform_edt(~spine.bone, sampling=pixel_mm)
    # In front of the middle of the vertebra only pixels beside the vertebral body
    # can be psoas; aorta and IVC lie in front of the body, touching it.
    cols = np.arange(muscle_hu.shape[1])[None, :]
    beside = (np.abs(cols - spine.centre[1]) >= PSOAS_MEDIAL_FRACTION * spine.body_half_width_px) | (rows >= spine.centre[0])
    candidates = muscle_hu & posterior & beside & ~wall & ~spine.bone & ~not_muscle & (reach <= PSOAS_REACH_MM)
    opened = ndi.binary_opening(candidates, iterations=max(1, int(round(2.0 / min(pixel_mm)))))
    labelled, n = ndi.label(opened)
    if n == 0:
        return muscle
    index = np.arange(1, n + 1)
    median_row = ndi.median(np.broadcast_to(rows, muscle_hu.shape), labelled, index)
    touches_bone = ndi.maximum(reach <= 4.0 + max(pixel_mm), labelled, index).astype(bool)
    touches_wall = ndi.maximum(ndi.binary_dilation(muscle, iterations=1), labelled, index).astype(bool)
    keep = np.zeros(n + 1, bool)
    # Muscle islands that touch neither are not collected: behind the vertebra's
    # middle they are as often a kidney's posterior half as a quadratus lumborum
    # (tried: matching the back muscles' mean HU within 3 HU still took a kidney
    # at L2 of the real CT for 8 cm²).
    keep[1:] = (touches_bone & (median_row >= spine.front_row)) | ((median_row >= spine.centre[0]) & touches_wall)
    grown = keep[labelled]
    # Give back the pixels the opening removed at the borders of kept components.
    grown = ndi.binary_dilation(grown, iterations=1) & candidates
    return muscle | grown


def _enclosed(muscle: np.ndarray, wall: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The compartments where fat is IMAT: the muscle wall band and pockets enclosed by muscle.

    The abdominal cavity is enclosed by the wall too; only pockets smaller than
    ``IMAT_POCKET_MAX_MM2`` count.
    """
    closed = ndi.binary_closing(muscle, iterations=1) | muscle
    holes = ndi.binary_fill_holes(closed) & ~closed
    labelled, n = ndi.label(holes)
    pockets = np.zeros_like(muscle)
    if n:
        areas = np.bincount(labelled.ravel())[1:] * pixel_mm[0] * pixel_mm[1]
        small = np.concatenate([[False], areas <= IMAT_POCKET_MAX_MM2])
        pockets = small[labelled]
    # Fat between muscle pixels that the closing bridged is IMAT as well.
    return (wall | closed | pockets) & ndi.binary_dilation(muscle | pockets, iterations=1)


def _around_spine(spine: _Spine, inside: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Fat posterior to the vertebral body (spinal canal, paraspinal), not visceral."""
    rows = np.arange(inside.shape[0])[:, None]
    behind = np.broadcast_to(rows >= spine.centre[0], inside.shape)
    reach = ndi.distance_transform_edt(~spine.bone, sampling=pixel_mm) <= SPINE_FAT_MM
    return inside & behind & reach


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask, bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))
