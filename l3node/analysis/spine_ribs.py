"""Ribs and their lengths (step 3 of :mod:`l3node.analysis.spine`).

Bone components outside the vertebra that start next to it (costovertebral junction) and run
laterally; each gets a path length (the 3.8 cm rule of the L3SEG-net paper decides normal
ribs) and the vertebra whose body contains its head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from l3node.analysis.spine_column import MIN_HALF_WIDTH_MM, VertebraFound
from l3node.analysis.spine_grid import WorkingGrid, k_range as _k_range

NORMAL_RIB_MIN_MM = 38.0
"""A rib of at least 3.8 cm is a normal rib (L3SEG-net paper)."""
RIB_SPLIT_BIAS_MM = 20.0
RIB_HEAD_MIN_HU = 300.0
RIB_THIN_HEAD_MIN_HU = 200.0
"""Second try for rib heads when fewer than two voxels reach :data:`RIB_HEAD_MIN_HU` (phantom
11th/12th rib necks at 3.3 mm working voxels: 200-290 HU; kidney and bowel components are
rejected by :func:`_bowel_like`)."""
RIB_BONE_HU = 250.0
RIB_CORTEX_HU = 380.0
RIB_MAX_RADIUS_MM = 6.5
"""A "rib" whose brightest tenth stays below RIB_CORTEX_HU *and* that is thicker than a rib
(inscribed radius >= RIB_MAX_RADIUS_MM) is contrast-filled bowel (:func:`_bowel_like`);
phantom bowel 340-344 HU / 6.7-8.7 mm, ribs >= 478 HU or (real, 3 mm) 345 HU / 4.2 mm."""
CAGE_LEVEL_MAX_HEIGHT_MM = 45.0
"""A "vertebra" higher than this is no single thoracic body (18-30 mm) but merged segments,
typically pelvic bone cut by a lost canal track; one whose half width sits at the floor
(:data:`~l3node.analysis.spine_column.MIN_HALF_WIDTH_MM`) has no body where it was sampled.
Their lateral bone (iliac wings, bowel contrast) is measured like a rib but never counts
towards reaching the thoracic cage."""


@dataclass(frozen=True)
class Rib:
    side: str  # "right" | "left" (patient)
    length_mm: float  # path length from the costovertebral end (chord for short ribs)
    z_head_mm: float
    vertebra: int  # index into SpineAnalysis.vertebrae


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


def _bowel_like(grid: WorkingGrid, hu: np.ndarray, comp: np.ndarray) -> bool:
    """True for a thick structure without cortex: a bowel loop or stomach full of oral
    contrast (~280-340 HU) beside a lumbar body, which the rib walk would measure as a rib.

    Either sign alone is not enough: thin osteoporotic ribs of real scans have little
    cortex left (90th percentile ~345 HU at 3 mm), and a rib that touches its neighbours or
    the costal cartilage is thick as a component.
    """
    if np.percentile(hu[comp], 90) >= RIB_CORTEX_HU:
        return False
    sub = comp[ndi.find_objects(comp.astype(np.int8))[0]]
    return float(ndi.distance_transform_edt(np.pad(sub, 1), sampling=grid.spacing_mm).max()) >= RIB_MAX_RADIUS_MM


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
    near = _rib_seed(grid, v, box.shape, k0, c0)
    seed = near & (grid.hu[k0 : k1 + 1, :, c0:c1] >= RIB_HEAD_MIN_HU)
    if seed.sum() < 2:
        # Thin lower ribs (6 mm) averaged into 3 mm working voxels fall below the cortical
        # level; the component they start must then pass the bowel/kidney test below alone.
        seed = near & (grid.hu[k0 : k1 + 1, :, c0:c1] >= RIB_THIN_HEAD_MIN_HU)
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
    if _bowel_like(grid, grid.hu[k0 : k1 + 1, :, c0:c1], comp):
        return 0.0, float("nan")
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


def find_ribs(grid: WorkingGrid, vertebrae: list[VertebraFound],
              crest_z_mm: float | None) -> tuple[list[VertebraFound], list[Rib]]:
    """Measure the ribs of each vertebra, from the lowest mobile one upwards.

    Stops after three consecutive levels with normal ribs on both sides (the thoracic cage is reached);
    nothing below the iliac crests carries a rib. Levels that cannot be a thoracic body (see
    :data:`CAGE_LEVEL_MAX_HEIGHT_MM`) neither extend nor break that run: when the crests are
    missed, iliac wings beside merged pelvic segments look like long ribs and would end the
    walk before the real cage. Returns the vertebrae with
    ``rib_left_mm``/``rib_right_mm`` filled and the ribs found (indices into ``vertebrae``).
    """
    # Above enhancing kidney cortex and organs (arterial phase ~190 HU), which touch the
    # lowest ribs; thin or osteoporotic ribs keep their continuity through weaker voxels
    # next to strong ones (one voxel of hysteresis: not enough to walk into a kidney).
    strong = grid.hu > RIB_BONE_HU
    rib_bone = strong | (ndi.binary_dilation(strong, np.ones((3, 3, 3), bool)) & (grid.hu > 180))
    out = list(vertebrae)
    ribs: list[Rib] = []
    normal_run = 0
    for i in range(len(out) - 1, -1, -1):
        v = out[i]
        if v.sacral or v.height_mm < 8 or (crest_z_mm is not None and v.z_inferior_mm < crest_z_mm):
            continue
        near = [out[j] for j in (i - 1, i + 1) if 0 <= j < len(out) and not out[j].sacral]
        left, z_left = _rib_on_side(grid, rib_bone, v, +1, near)
        right, z_right = _rib_on_side(grid, rib_bone, v, -1, near)
        for side, length, z_head in (("left", left, z_left), ("right", right, z_right)):
            if length > 0:
                ribs.append(Rib(side, length, z_head, i))
        out[i] = VertebraFound(**{**v.__dict__, "rib_left_mm": left, "rib_right_mm": right})
        if v.height_mm > CAGE_LEVEL_MAX_HEIGHT_MM or 0 < v.half_width_mm <= MIN_HALF_WIDTH_MM:
            continue
        # The cage's ribs come in pairs; a one-sided "rib" beside a lumbar body is bowel
        # contrast, kidney or vessel, and three of those must not end the walk.
        normal_run = normal_run + 1 if min(left, right) >= NORMAL_RIB_MIN_MM else 0
        if normal_run >= 3:
            break
    return out, ribs
