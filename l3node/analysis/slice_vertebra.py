"""The vertebra on one axial slice: bone, disc, cancellous bone and canal.

Used by the tissue segmentation to keep bone out of muscle, to find psoas and
quadratus lumborum beside the vertebral body, and to keep fat around the spine
out of VAT. Slices are ``(row, col)`` in the convention of
:mod:`l3node.analysis.volume`; sizes are in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.masks import fill_holes, region_max, region_median, region_min

__all__ = ["BONE_HU", "CORTEX_BLUR_MM", "SpinePlane", "around_spine", "find_vertebra"]

BONE_HU = 150.0
"""Cortical and cancellous bone of the vertebra; also the top of the muscle range."""
CANCELLOUS_HU = 70.0
"""Smoothed HU above this, connected to the vertebra, is bone or disc, not muscle ..."""
DENSE_PIXEL_HU = 60.0
"""... if the pixel itself is above this too (muscle beside cortex is bright only once smoothed)."""
VERTEBRA_GATHER_MM = 30.0
"""Bone pieces this close to the main one, and in line with it, belong to the same vertebra."""
VERTEBRA_MIN_MM2 = 200.0
"""A bone piece smaller than this (2 cm^2) is a rib or a calcification, not a vertebra."""
AIR_HU = -900.0
"""At or below this a pixel is air: outside the fascia (set so by the caller) or bowel gas."""
FRONT_RUN_FRACTION = 0.6
"""In front of the vertebra's bone pieces, dense tissue still belongs to the body while it runs
across the midline, to the shorter side, at least this fraction of the body's width (real CT,
L1-L2 of an osteoporotic spine: the broken anterior cortex left the front 18-21 mm too far
back and the psoas beside the body's front half was lost)."""
FRONT_WIDTH_MM = 10.0
"""The body's width is the widest run across the midline this far behind its bone's front (the
first row may cross a narrow tip of the cortex)."""
ARCH_MIN_MM2 = 400.0
"""A bone piece wholly behind another, far from it and at least this large, is a neural arch
(the piece in front of it is not the vertebra) ..."""
ARCH_MIDLINE_MM = 40.0
"""... and centred within this of the middle of the abdomen (a bowel loop with an enhanced
wall far to the side, behind a small bright piece, is no arch)."""
BODY_ARCH_GAP_MM = 10.0
"""A piece this close in front of the arch is the body even when its centre lies beside the
arch's columns: contrast-filled bowel joined to the body's side through an enhancing wall
pulled it aside (phantom lumbarization:2001: gap 3.6 mm; the arch alone was taken, both psoas
lost). A loop 20 mm in front of an arch whose body is below the bone threshold is not
(phantom normal:36)."""
VERTEBRA_MIDLINE_MM = 40.0
"""The main piece is taken among those centred within this of the middle of the abdomen when
there are any: a cluster of oral-contrast loops 60 mm to the side, larger than the vertebral
body and with no arch behind it, was taken for the vertebra (phantom t12_rib_hypoplasia:1403,
the psoas and back muscles on the other side lost: -16 % muscle). A scoliotic spine further
out is still found when nothing else of a vertebra's size lies near the middle."""
DISC_GATHER_MM = 60.0
"""A disc blob is looked for this close to the vertebra's bone ..."""
DISC_MIN_MM2 = 600.0
"""... at least this large ..."""
DISC_OFFSET_MM = 12.0
"""... centred within this of the vertebra's midline (the aorta lies further out) ..."""
DISC_MAX_HU = 130.0
"""... and at most this bright once smoothed (enhanced vessels are brighter) ..."""
DISC_APART_MAX_HU = 200.0
"""... or at most this bright if it lies apart from the vertebra's bone (epidural fat between):
a thick slice through the disc takes in the endplates, 150-180 HU (phantoms; at 130 such
discs were missed, the arch alone was taken for the vertebra and both psoas were lost, seed
32). Touching the vertebral body, vessels and crura of that brightness are no disc (real CT:
the front moved 21 mm forward)."""
DISC_NUCLEUS_HU = 55.0
"""A disc's pixels of disc HU are not always one blob: its nucleus pulposus is darker than its
annulus, and noise puts single pixels under the dense-pixel limit. On the real CT in
``shared/data`` the middle of the L2/L3 disc fell apart into pieces of 390-530 mm^2, the arch
alone was taken for the vertebra (its front 60 mm too far back) and the psoas beside the disc
was lost (muscle 10 % under the slices around it); phantom discs are uniform, but with their
inner 60 % made 25 HU darker, 6 of the 62 development slices with a disc lost 14-19 % of their
muscle. Holes enclosed by the disc-HU pixels join them when their median is at least this
(smoothed) and no pixel of theirs is brighter than a disc: bowel gas or water inside a wall
of disc HU fails the first, oral contrast the second."""
CANAL_CLOSING_MM = 8.0
"""Gaps in the neural arch narrower than about twice this are bridged to find the canal."""
CANAL_HALF_WIDTH_MM = 8.0
"""Columns this close to the midline are searched for a canal between body and arch ..."""
CANAL_DEPTH_MM = 30.0
"""... bounded in front and behind by the vertebra no further apart than this ..."""
BODY_DEPTH_MIN_MM = 20.0
"""The canal starts at least this far behind the front of the vertebra."""
CANAL_WIDTH_MM = 30.0
"""... or, in a row, bounded by bone on both sides no further apart than this."""
CORTEX_BLUR_MM = 2.0
"""Muscle this close to the cortex is blurred by it into the vertebra's mask: muscle-range
pixels of the mask this deep (or one pixel), near cortex, that touch muscle are muscle
(phantoms, 0.6-1.5 mm pixels: 1.2 cm^2 of muscle per L3 slice was inside the mask)."""
BODY_SIDE_MARGIN_MM = 9.0
"""In the front ``BODY_DEPTH_MIN_MM`` of the vertebra, what lies further than this beyond the
body's half width is not vertebra: contrast-filled bowel joined to the body's side, and the
psoas the closings then enclosed with it (phantoms: 8 of 104 development slices changed,
muscle CSA error 1.65 -> 1.63 %). The half width runs short when an enhanced aorta joined to
the body pulls the region's midline aside; at 6 mm the body's own side was cut off and with
it the psoas' anterior bulge lost its contact with the vertebra (held-out
lumbarization:2205: muscle CSA error 1.8 -> 4.1 %; at 9 mm 1.2 %)."""
SPINE_FAT_MM = 5.0
"""Fat behind the middle of the vertebra and this close to it is not visceral."""


@dataclass(frozen=True, eq=False)
class SpinePlane:
    """The vertebra on one slice: its mask and the extent of its body (pixel units)."""

    bone: np.ndarray
    """Bone, disc, cancellous bone and canal: never muscle."""
    centre: tuple[float, float]
    """``(row, col)`` median of ``bone``."""
    front_row: float
    """Anterior edge of the vertebral body."""
    half_width_px: float
    """Half width with the transverse processes."""
    body_half_width_px: float
    """Half width of the vertebral body (or disc) alone."""
    rim: np.ndarray | None = None
    """Pixels on the outer edge of ``bone`` that are not bone pieces themselves, taken in
    only because the smoothed image is dense there: muscle blurred by the cortex, or
    the edge of a disc. The segmentation gives those in the muscle range to muscle
    they touch (phantoms: 1092 such pixels right, 143 wrong over 20 slices)."""


def find_vertebra(hu: np.ndarray, bone: np.ndarray, pixel_mm: tuple[float, float]) -> SpinePlane | None:
    """The vertebra with its cancellous bone, disc and canal.

    The main bone piece (the largest one not in front of the spine: contrast-filled
    bowel can be larger) and the pieces in line with it; dense tissue touching
    them (cancellous bone and disc, judged on a smoothed image); a disc seen apart
    from its arch; and what closings of the arch enclose or what lies between body
    and arch near the midline (the canal); less what lies beside the vertebral body
    (:func:`_trim_beside_body`).

    Parameters
    ----------
    hu:
        2D slice in HU, outside the fascia set to air so ribs and arms are not found.
    bone:
        Pixels at or above the bone threshold inside the fascia.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    SpinePlane or None
        None when no bone piece is as large as a vertebra (2 cm^2).
    """
    # The middle of the abdomen: everything not set to air (outside the fascia).
    midline_col = float(np.nonzero(hu > AIR_HU)[1].mean()) if (hu > AIR_HU).any() else hu.shape[1] / 2
    vertebra = _vertebra_bone(bone, pixel_mm, midline_col)
    if vertebra is None:
        return None
    # Disc and osteoporotic cancellous bone fall below BONE_HU; on a smoothed image
    # they stay above muscle. Dense tissue touching the vertebra, not in front of
    # the body (an enhanced aorta lies there), is added.
    size = max(3, int(round(5.0 / min(pixel_mm))) | 1)
    smooth = ndi.uniform_filter(np.clip(hu, -200, 1000), size=size)
    rows = np.arange(hu.shape[0])[:, None]
    to_vertebra = ndi.distance_transform_edt(~vertebra, sampling=pixel_mm)
    # Muscle next to cortex is bright once smoothed; it must be dense itself too.
    dense = (smooth > CANCELLOUS_HU) & (hu > DENSE_PIXEL_HU) & (to_vertebra <= VERTEBRA_GATHER_MM)
    front_bone = _dense_front(vertebra, dense, pixel_mm[0])
    dense = (dense & (rows >= front_bone)) | vertebra
    dense_labels, _ = ndi.label(dense)
    region = np.isin(dense_labels, np.unique(dense_labels[vertebra]))
    # The outer rim of what was added may be muscle blurred by the cortex next to it.
    rim = region & ~vertebra & ~ndi.binary_erosion(region)
    # A slice through the disc may show it apart from the neural arch (epidural
    # fat between): a disc-sized blob of disc HU in line with the vertebra.
    region |= _disc_blobs(smooth, hu, vertebra, to_vertebra, DISC_MAX_HU, pixel_mm, apart=False)
    region |= _disc_blobs(smooth, hu, vertebra, to_vertebra, DISC_APART_MAX_HU, pixel_mm, apart=True)
    # Cancellous bone inside a broken cortex, and the spinal canal, are what a
    # closing encloses; the closing's own bridges are not added (psoas lies in
    # the concavities it would fill).
    for closing_mm in (5.0, CANAL_CLOSING_MM):
        closed = ndi.binary_closing(region, iterations=max(1, int(round(closing_mm / min(pixel_mm))))) | region
        region |= fill_holes(closed) & ~closed
    region |= _canal(region, pixel_mm)
    vr, vc = np.nonzero(region)
    centre = (float(np.median(vr)), float(np.median(vc)))
    front = _body_front(region, centre)
    body_half_width = _body_half_width(region, front, centre)
    if body_half_width is not None:
        region = _trim_beside_body(region, vertebra, front, centre[1], body_half_width, pixel_mm)
    half_width = float(np.percentile(np.abs(np.nonzero(region)[1] - centre[1]), 90))
    if body_half_width is None:
        body_half_width = half_width
    rim &= region & ~ndi.binary_erosion(region)
    return SpinePlane(region, centre, front, half_width, body_half_width, rim)


def _trim_beside_body(region: np.ndarray, vertebra: np.ndarray, front: float, centre_col: float,
                      body_half_width: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """``region`` without what lies beside the vertebral body (see ``BODY_SIDE_MARGIN_MM``).

    Only the rows of the body's front ``BODY_DEPTH_MIN_MM`` are trimmed: the transverse
    processes lie further back. What the trim cuts off from the vertebra's bone goes too;
    the region is returned unchanged when nothing of that bone would be left.
    """
    rows = np.arange(region.shape[0])[:, None] < front + BODY_DEPTH_MIN_MM / pixel_mm[0]
    cols = np.abs(np.arange(region.shape[1]) - centre_col)[None, :] * pixel_mm[1] > (
        body_half_width * pixel_mm[1] + BODY_SIDE_MARGIN_MM)
    beside = rows & cols
    trimmed = region & ~beside
    if trimmed.sum() == region.sum() or not (trimmed & vertebra).any():
        return region
    labelled, _ = ndi.label(trimmed)
    return np.isin(labelled, np.unique(labelled[trimmed & vertebra]))


def _disc_blobs(smooth: np.ndarray, hu: np.ndarray, vertebra: np.ndarray, distance: np.ndarray, max_hu: float,
                pixel_mm: tuple[float, float], apart: bool) -> np.ndarray:
    """Disc-sized blobs of disc HU (smoothed up to ``max_hu``) in line with the vertebra, with
    the nucleus they enclose (``DISC_NUCLEUS_HU``).

    ``distance`` is each pixel's distance (mm) to the vertebra's bone. With ``apart``,
    only blobs none of whose pixels touch that bone.
    """
    disc_like = (smooth > CANCELLOUS_HU) & (smooth <= max_hu) & (hu > DENSE_PIXEL_HU)
    disc_like &= distance <= DISC_GATHER_MM
    if apart:
        disc_like &= ~vertebra
    holes, m = ndi.label(fill_holes(disc_like) & ~disc_like)
    if m:
        # Nucleus, or single pixels noise put under the dense-pixel limit: a hole whose median
        # is at least DISC_NUCLEUS_HU, with no pixel brighter than a disc.
        nucleus = (region_median(smooth, holes, m) >= DISC_NUCLEUS_HU) & (region_max(smooth, holes, m) <= max_hu)
        disc_like |= np.concatenate([[False], nucleus])[holes]
    labels, n = ndi.label(disc_like)
    if n == 0:
        return disc_like
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:] * pixel_mm[0] * pixel_mm[1]
    cols = ndi.mean(np.broadcast_to(np.arange(hu.shape[1]), hu.shape), labels, index)
    keep = (areas >= DISC_MIN_MM2) & (np.abs(cols - np.nonzero(vertebra)[1].mean()) * pixel_mm[1] <= DISC_OFFSET_MM)
    if apart:
        keep &= region_min(distance, labels, n) > 1.5 * max(pixel_mm)
    return np.concatenate([[False], keep])[labels]


def _dense_front(vertebra: np.ndarray, dense: np.ndarray, row_mm: float) -> int:
    """First row of the vertebral body: the front of its bone pieces, or further forward
    while dense tissue runs across the midline at least ``FRONT_RUN_FRACTION`` as wide as
    the body is within ``FRONT_WIDTH_MM`` behind that front.

    An osteoporotic body's thin cortex falls apart into pieces that are not gathered (what
    lies in front of the main piece may be an enhanced aorta), but its cancellous bone stays
    dense and runs across the midline symmetrically; a vessel pressed on the body lies to
    one side.
    """
    # Only the neighbourhood of the vertebra (dense is gathered within reach of it) is searched.
    rr, cc = np.nonzero(dense | vertebra)
    box = (slice(max(0, rr.min() - 1), rr.max() + 2), slice(max(0, cc.min() - 1), cc.max() + 2))
    bone, near = vertebra[box], dense[box] | vertebra[box]
    solid = fill_holes(ndi.binary_closing(near) | near)
    labelled, _ = ndi.label(solid)
    solid = np.isin(labelled, np.unique(labelled[bone]))
    top = int(np.nonzero(bone)[0].min())
    # The midline of body and arch together: the bone pieces alone may be one side's.
    mid = int(round(float(np.median(np.nonzero(solid)[1]))))
    front = top
    if solid[top, mid]:
        behind = range(top, min(solid.shape[0], top + int(round(FRONT_WIDTH_MM / row_mm)) + 1))
        width = max(2 * _symmetric_reach(solid[row], mid) - 1 for row in behind if solid[row, mid])
        for row in range(top - 1, -1, -1):
            if not solid[row, mid] or 2 * _symmetric_reach(solid[row], mid) - 1 < FRONT_RUN_FRACTION * width:
                break
            front = row
    return front + box[0].start


def _body_half_width(region: np.ndarray, front: float, centre: tuple[float, float]) -> float | None:
    """Half width of the vertebral body, in pixels, over its front half.

    On each row, the run of ``region`` through the midline is measured to each side
    and only the part within the shorter side is kept: the body is symmetric about the
    midline, and what touches it on one side (bowel full of oral contrast, an enhanced
    vessel) widens only that side. The 95th percentile of the kept pixels' distance from
    the midline is returned; None when no row of the front half crosses the midline.
    """
    mid = int(round(centre[1]))
    offsets = []
    for row in range(max(0, int(np.ceil(front))), min(region.shape[0], int((front + centre[0]) / 2) + 1)):
        line = region[row]
        if not line[mid]:
            continue
        side = _symmetric_reach(line, mid)
        offsets.append(np.abs(np.arange(mid - side + 1, mid + side) - centre[1]))
    if not offsets:
        return None
    return float(np.percentile(np.concatenate(offsets), 95))


def _symmetric_reach(line: np.ndarray, mid: int) -> int:
    """Pixels from ``mid`` (counted) to the end of ``line``'s run through it, on the shorter side.

    The vertebral body is symmetric about the midline; what touches it on one side only
    (enhanced vessels, bowel full of oral contrast) lengthens one side of the run, not both.
    """
    left = int(np.argmin(line[mid::-1])) if not line[: mid + 1].all() else mid + 1
    right = int(np.argmin(line[mid:])) if not line[mid:].all() else line.size - mid
    return min(left, right)


def _canal(region: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """The spinal canal where the neural arch is open on this slice.

    Near the midline, a column that meets the vertebra, then a gap, then the
    vertebra again (body in front, lamina or spinous process behind) crosses the
    canal; so does a row whose gap between the two pedicles or laminae contains
    the midline and is no wider than a canal. Dura and CSF are muscle-range; the
    multifidus lies beside the spinous process, in gaps that leave the midline
    on bone, and is not filled.
    """
    canal = np.zeros_like(region)
    vr, vc = np.nonzero(region)
    if len(vc) == 0:
        return canal
    midline = int(round(float(np.median(vc))))
    half = int(np.floor(CANAL_HALF_WIDTH_MM / pixel_mm[1]))
    # The canal lies behind the vertebral body, never beside or in front of it.
    first = int(vr.min()) + int(np.ceil(BODY_DEPTH_MIN_MM / pixel_mm[0]))
    for col in range(max(0, midline - half), min(region.shape[1], midline + half + 1)):
        canal[first:, col] = _gaps(region[first:, col], CANAL_DEPTH_MM / pixel_mm[0])
    for row in range(first, region.shape[0]):
        gaps = _gaps(region[row], CANAL_WIDTH_MM / pixel_mm[1])
        if gaps[midline]:
            left = midline - int(np.argmin(gaps[midline::-1]))
            right = midline + int(np.argmin(gaps[midline:]))
            canal[row, left + 1 : right] = True
    return canal


def _gaps(line: np.ndarray, max_len: float) -> np.ndarray:
    """Runs of False between two True samples of ``line``, at most ``max_len`` long."""
    filled = np.zeros_like(line)
    hits = np.nonzero(line)[0]
    for a, b in zip(hits[:-1], hits[1:]):
        if 1 < b - a <= max_len + 1:
            filled[a + 1 : b] = True
    return filled


def _vertebra_bone(bone: np.ndarray, pixel_mm: tuple[float, float], midline_col: float) -> np.ndarray | None:
    """Bone pixels of the vertebra: the main vertebral piece and the pieces beside or behind it.

    Body, pedicles and processes fall apart into pieces on a slice through an
    endplate or a thin cortex; those are gathered. Pieces in front of the main
    one (an enhanced aorta) and far to the side (ribs) are left out. The main
    piece is chosen by :func:`_main_piece`: bowel full of oral contrast can be
    larger than the vertebra, but never lies behind it.
    """
    closed = fill_holes(ndi.binary_closing(bone, iterations=max(1, int(round(3.0 / min(pixel_mm))))))
    labelled, n = ndi.label(closed)
    sizes = np.bincount(labelled.ravel()) * pixel_mm[0] * pixel_mm[1]
    sizes[0] = 0
    if sizes.max() < VERTEBRA_MIN_MM2:  # a rib, not a vertebra
        return None
    best = _main_piece(labelled, sizes, pixel_mm, midline_col)
    near_best = ndi.distance_transform_edt(labelled != best, sampling=pixel_mm) <= VERTEBRA_GATHER_MM
    pieces = np.unique(labelled[near_best & (labelled > 0)])
    grid_rows, grid_cols = np.indices(bone.shape)
    cols_of = ndi.mean(grid_cols, labelled, index=pieces)
    rows_of = ndi.mean(grid_rows, labelled, index=pieces)
    best_rows, best_cols = np.nonzero(labelled == best)
    in_line = np.abs(cols_of - best_cols.mean()) * pixel_mm[1] <= VERTEBRA_GATHER_MM
    pieces = pieces[in_line & (rows_of >= best_rows.min())]
    return np.isin(labelled, pieces)


def _main_piece(
    labelled: np.ndarray, sizes_mm2: np.ndarray, pixel_mm: tuple[float, float], midline_col: float
) -> int:
    """Label of the vertebra's main bone piece: the largest one not in front of the spine.

    A piece is in front of the spine (bowel full of oral contrast) when the
    nearest piece of at least ``ARCH_MIN_MM2`` wholly behind it, overlapping its
    columns, is more than ``VERTEBRA_GATHER_MM`` away: that piece is a neural
    arch (on a slice through a disc it can be the only bone of the vertebra, and
    contrast-filled bowel in front of the disc larger than it) if it is centred
    within ``ARCH_MIDLINE_MM`` of ``midline_col`` and has no such piece behind it
    itself (a loop behind another loop, in front of the real arch). An enhanced aorta
    lies right in front of the vertebral body and is not affected. When some
    piece is in front, the main piece is the largest of the others centred
    within an arch's columns -- or, when only the arch itself is, also those lying
    within ``BODY_ARCH_GAP_MM`` in front of it (the body, its centre pulled aside by
    contrast-filled bowel joined to its side); of those, the largest centred within
    ``VERTEBRA_MIDLINE_MM`` of ``midline_col`` if any is.
    """
    labels = [int(i) for i in np.nonzero(sizes_mm2 >= VERTEBRA_MIN_MM2)[0]]
    boxes = ndi.find_objects(labelled)
    # (top row, bottom row, left column, right column) of each piece
    extent = {i: (boxes[i - 1][0].start, boxes[i - 1][0].stop - 1, boxes[i - 1][1].start, boxes[i - 1][1].stop - 1)
              for i in labels}
    in_front: set[int] = set()
    arches: set[int] = set()
    centre_cols = dict(zip(labels, (c for _, c in ndi.center_of_mass(labelled > 0, labelled, labels))))

    def wholly_behind(j: int, i: int) -> bool:
        """Piece ``j`` is an arch-sized piece wholly behind ``i``, overlapping its columns."""
        return (j != i and sizes_mm2[j] >= ARCH_MIN_MM2 and extent[j][0] > extent[i][1]
                and extent[j][2] <= extent[i][3] and extent[j][3] >= extent[i][2])

    # The arch is the rearmost bone: a piece with another wholly behind it is none (a
    # contrast-filled loop behind another loop, in front of the real arch).
    near_midline = [j for j in labels if abs(centre_cols[j] - midline_col) * pixel_mm[1] <= ARCH_MIDLINE_MM
                    and not any(wholly_behind(k, j) for k in labels)]
    gaps_behind: dict[int, dict[int, float]] = {}  # piece -> {arch candidate behind it: gap in mm}
    for i in labels:
        behind = [j for j in near_midline if wholly_behind(j, i)]
        if behind:
            away = ndi.distance_transform_edt(labelled != i, sampling=pixel_mm)
            gaps = gaps_behind[i] = {j: float(away[labelled == j].min()) for j in behind}
            nearest = min(gaps, key=gaps.get)
            if gaps[nearest] > VERTEBRA_GATHER_MM:
                in_front.add(i)
                arches.add(nearest)
    remaining = [i for i in labels if i not in in_front] or labels
    if arches:
        within = [i for i in remaining if any(extent[a][2] <= centre_cols[i] <= extent[a][3] for a in arches)]
        if not set(within) - arches:
            # The body lies right in front of its arch; bowel full of contrast joined to its
            # side (through an enhancing wall) can pull its centre off the arch's columns.
            within += [i for i in remaining if i not in within and any(
                gaps_behind.get(i, {}).get(a, np.inf) <= BODY_ARCH_GAP_MM for a in arches)]
        remaining = within or remaining
    central = [i for i in remaining if abs(centre_cols[i] - midline_col) * pixel_mm[1] <= VERTEBRA_MIDLINE_MM]
    remaining = central or remaining
    return max(remaining, key=lambda i: sizes_mm2[i])


def _body_front(region: np.ndarray, centre: tuple[float, float]) -> float:
    """Anterior edge of the vertebral body: the first row whose run through the midline,
    counted to the shorter side, is at least 60 % as wide as the body's.

    Vessels pressed on the front of the body (aorta on the left, IVC on the right, both
    above the bone threshold once enhanced) join the region; side by side they are as
    wide as the body, but neither crosses the midline symmetrically.
    """
    mid = int(round(centre[1]))
    widths = np.zeros(region.shape[0])
    for row in np.nonzero(region[:, mid])[0]:
        if row > centre[0]:
            break
        widths[row] = 2 * _symmetric_reach(region[row], mid) - 1
    if not widths.any():
        rows = np.nonzero(region.any(axis=1))[0]
        return float(rows.min())
    return float(np.nonzero(widths >= 0.6 * widths.max())[0].min())


def around_spine(spine: SpinePlane, inside: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """Fat posterior to the vertebral body (spinal canal, paraspinal), not visceral.

    Parameters
    ----------
    spine:
        The vertebra of the slice.
    inside:
        Pixels inside the fascia.
    pixel_mm:
        ``(row, column)`` spacing in mm.

    Returns
    -------
    numpy.ndarray
        Pixels inside, behind the vertebra's centre row and within ``SPINE_FAT_MM`` of it.
    """
    rows = np.arange(inside.shape[0])[:, None]
    behind = np.broadcast_to(rows >= spine.centre[0], inside.shape)
    reach = ndi.distance_transform_edt(~spine.bone, sampling=pixel_mm) <= SPINE_FAT_MM
    return inside & behind & reach

