"""The pelvis: iliac bones, crests and the fused sacrum (step 4 of :mod:`l3node.analysis.spine`).

The iliac bones are large lateral bone components reaching the bottom part of the spine; the
sacrum is the run of lowest segments that carry alae (bone lateral to the body at body depth).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.spine_column import MIN_HALF_WIDTH_MM, VertebraFound, _half_width_mm
from l3node.analysis.spine_grid import CanalTrack, WorkingGrid, k_range as _k_range

ALA_HU = 100.0
"""Bone-like on the working grid, even osteoporotic (cancellous >= ~120 HU); disc/psoas lower."""
ILIAC_CORTEX_HU = 365.0
"""The brightest tenth of an iliac bone (its cortex, on the working grid) is above this."""
ALA_REACH_MM = 20.0
"""How far below the top of a segment the alae are looked for: they flank the top of the
sacrum only, and its lower part (or what a lost canal track merged into it) has none."""
ALA_GAP_VOXELS = 1
"""For a segment whose top lies below the iliac crests, a gap this wide in the bone between
body and ala is bridged: old cancellous bone (80-140 HU) with noise, or a sacral foramen,
breaks the line there (phantom seeds 50014, 50090, 50115, 50183: sacrum missed on 1.5-3 mm
scans, class then "unknown"). Higher up no gap is allowed: bowel full of oral contrast beside
a lumbar body, behind a thin psoas, would join through it (phantom seed 50097, L4)."""


MAX_SEGMENT_HEIGHT_MM = 45.0
"""No vertebral body is this tall (lumbar bodies measure 18-35 mm): a taller segment at the
bottom of the column is pelvis or sacrum in which no disc was found ..."""
MIN_SEGMENT_HEIGHT_MM = 12.0
"""... and none this short: such a segment there is a piece of the sacrum."""


def _ala_fraction(grid: WorkingGrid, bone: np.ndarray, v: VertebraFound, bridge: int = 0) -> float:
    """Fraction of the segment's slices with bone well lateral to the body *at body depth*.

    That is where the sacral alae are; beside a lumbar body lies only psoas (transverse
    processes sit further back, at canal depth; rib heads stay within ~10 mm of the body).
    The ala must be *continuous* with the body (bone-like all the way out, :data:`ALA_HU`,
    across gaps of at most ``bridge`` voxels): bowel with oral contrast (~280 HU) lies beside
    lumbar bodies too, behind the psoas.
    """
    # The alae flank the top of the sacrum (S1-S2); a long segment (the sacrum under a
    # lumbarized S1, or merged with its lower, narrow part) is judged by its top.
    z_lo = max(v.z_inferior_mm, v.z_superior_mm - ALA_REACH_MM)
    k0, k1 = _k_range(grid, z_lo + 2, v.z_superior_mm - 2)
    if k1 < k0:
        return 0.0
    dr, dc = grid.spacing_mm[1:]
    r0, r1 = max(int(round(v.row - 8 / dr)), 0), max(int(round(v.row + 8 / dr)) + 1, 0)
    lateral = (np.arange(grid.hu.shape[2]) - v.col) * dc
    c = int(np.clip(round(v.col), 0, grid.hu.shape[2] - 1))
    bony = grid.hu[k0 : k1 + 1, r0:r1] >= ALA_HU
    if bridge:
        bony |= ndi.binary_closing(bony, structure=np.ones((1, 1, bridge + 2), bool))
    reach_cols = int(np.ceil((v.half_width_mm + 12) / dc))
    hits = []
    for sign in (-1, 1):
        cols = (sign * lateral >= v.half_width_mm + 12) & (sign * lateral <= v.half_width_mm + 28)
        far = bone[k0 : k1 + 1, r0:r1][:, :, cols].sum(axis=(1, 2)) >= 2
        line = bony[:, :, c::sign] if sign > 0 else bony[:, :, c::-1]
        run = np.logical_and.accumulate(line[:, :, : reach_cols + 1], axis=2)
        joined = run.shape[2] > reach_cols  # False when the body sits at the image edge
        joined_rows = run[:, :, -1].any(axis=1) if joined else np.zeros(len(far), bool)
        hits.append(far & joined_rows)
    return float(np.mean(hits[0] & hits[1]))


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
        # Beside the spine and down to (or below) its lower end: not scapula. When the column
        # runs off the bottom of the scan, a component cut there too reaches as low as it can
        # (real CT resliced to 1.5 or 5 mm: the sacrum's last segment ended half a slice
        # below the first slice, both iliac bones were missed and the iliac wings were read
        # as ribs).
        cut_with_column = sl[0].start == 0 and z_floor_mm <= grid.origin_mm[2] + dz
        if abs(offset) < 45 or (grid.origin_mm[2] + (sl[0].start - 1) * dz > z_floor_mm and not cut_with_column):
            continue
        if sl[0].stop >= grid.hu.shape[0]:
            continue  # runs to the top of the scan: table or arm, not pelvis
        # The ilium reaches the sacrum (sacroiliac joint); arm bones stay far lateral.
        ks, rs, cs = np.nonzero(sub)
        nearest = np.min(np.abs(cs + sl[2].start - track.col[ks + sl[0].start])) * dc
        if nearest > 80:
            continue  # the band around the canal is masked: "nearest" is at least its width
        # The iliac wing reaches well in front of the spine (anterior superior iliac spine);
        # a scapula lies behind the ribs.
        ahead = np.max(track.row[ks + sl[0].start] - (rs + sl[1].start)) * dr
        if ahead < 40:
            continue
        # Bone has a cortex; a stomach or bowel full of oral contrast is as large and as
        # placed, but uniform (phantoms: 90th percentile 270-340 HU vs >= 390 for the ilium).
        if np.percentile(grid.hu[sl][sub], 90) < ILIAC_CORTEX_HU:
            continue
        out.append((grid.origin_mm[2] + (sl[0].stop - 1) * dz, grid.origin_mm[2] + sl[0].start * dz,
                    float(np.sign(offset))))
    return out


def merge_sacrum(grid: WorkingGrid, bone: np.ndarray, vs: list[VertebraFound], length: float | None,
                 pelvis_seen: bool, notes: list[str],
                 crest_z_mm: float | None = None) -> tuple[list[VertebraFound], float | None]:
    """The sacrum: the lowest segments that carry alae, merged into one (top = S1's endplate).

    Sacral remnant discs can cut the fused sacrum into pieces; they are one bone here.
    Segments wholly below the iliac crests (``crest_z_mm``) get :data:`ALA_GAP_VOXELS` of
    slack in the line from body to ala.
    """
    def has_alae(v: VertebraFound) -> bool:
        # Own (unsmoothed) width: the sacrum narrows fast and must not borrow lumbar widths.
        own = VertebraFound(**{**v.__dict__, "half_width_mm": min(v.half_width_mm, _half_width_mm(grid, v))})
        below_crest = crest_z_mm is not None and v.z_superior_mm < crest_z_mm
        return _ala_fraction(grid, bone, own, ALA_GAP_VOXELS if below_crest else 0) >= 0.4

    sacral = [v.sacral or has_alae(v) for v in vs]

    def below_s1(j: int) -> bool:
        # Below S1 no mobile vertebra exists: the rest of the sacrum, and segments without a
        # body where they were sampled (half width at the floor: the canal track lost in the
        # pelvis), taller than any vertebra (no disc found in the pelvis) or, whole in the
        # scan, shorter than one (sacral segments cut apart by their remnant discs).
        v = vs[j]
        return (sacral[j] or _half_width_mm(grid, v) <= MIN_HALF_WIDTH_MM or v.height_mm > MAX_SEGMENT_HEIGHT_MM
                or (v.superior_seen and v.inferior_seen and v.height_mm < MIN_SEGMENT_HEIGHT_MM))

    # S1 is the highest segment with alae in the run of such segments at the bottom of the
    # column (real CT: pelvic bone with a body-like width, or pieces without one, lay below the
    # sacrum's top and hid it when only the lowest segments were searched for alae).
    top = None
    j = len(vs)
    while j > 0 and below_s1(j - 1):
        j -= 1
        if sacral[j]:
            top = j
    if top is None:
        return vs, None
    i, end = top, top + 1
    while end < len(vs) and sacral[end]:
        end += 1
    if not pelvis_seen:
        notes.append("sacrum-like bone without iliac bones beside it")
    run = vs[i:end]  # trailing pieces are dropped: pelvis or lower sacrum, never a vertebra
    top, bottom = run[0], run[-1]
    merged = VertebraFound(**{**top.__dict__, "z_inferior_mm": bottom.z_inferior_mm, "disc_below_mm": 0.0,
                              "disc_below_depth_hu": 0.0, "inferior_seen": bottom.inferior_seen, "sacral": True})
    if bottom.inferior_seen:
        length = merged.z_superior_mm - merged.z_inferior_mm if length is None or len(run) > 1 else length
    else:
        length = None
    return vs[:i] + [merged], length
