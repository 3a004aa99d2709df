"""Render the scene slice by slice: paint structures, average sub-slices, blur, add noise.

Thick slices (>= 2 mm) average three sub-slices across the slice thickness, so endplates,
ribs and organ edges show the partial-volume effect of real thick-slice CT; the label maps
are painted at the slice centre. Blur and noise are applied to everything alike; the tissue
labels are derived afterwards from this final image (see :mod:`l3node.phantom.truth`).
Two corrections of the centre's codes (:func:`settle_truth`) keep the compartments to the
paper's definition: soft tissue with bone elsewhere in the slab is partial volume, and fat
pockets enclosed by muscle (and the vertebra) are not visceral.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from l3node.phantom import acquisition as acq_mod
from l3node.phantom.anatomy import Spine, paint_vertebra
from l3node.phantom.body import (Habitus, Torso, paint_arms, paint_body, paint_imat, paint_posterior_muscles,
                                 paint_table)
from l3node.phantom.canvas import SliceCanvas, code_lut
from l3node.phantom.materials import Structure, hu_tables
from l3node.phantom.organs import Viscera, paint_abdomen, paint_thorax
from l3node.phantom.pelvis import Pelvis, paint_pelvis
from l3node.phantom.ribs import RibCage

_BONE = (int(Structure.CORTICAL), int(Structure.CANCELLOUS), int(Structure.THIN_CORTEX))
_FECES, _GAS = int(Structure.FECES), int(Structure.BOWEL_GAS)
_SOFT = (int(Structure.MUSCLE), int(Structure.BACK_MUSCLE), int(Structure.IMAT), int(Structure.VAT), int(Structure.SAT))
_MUSCLE_CODES = (int(Structure.MUSCLE), int(Structure.BACK_MUSCLE), int(Structure.IMAT))
_SPINE = (int(Structure.DISC), int(Structure.DISC_NUCLEUS), int(Structure.CANAL), int(Structure.EPIDURAL_FAT), int(Structure.SLAB_BONE))
_EIGHT = np.ones((3, 3), bool)
POCKET_MAX_MM2 = 500.0
"""Visceral fat enclosed by muscle in pockets up to this size is intermuscular; a larger
enclosure would be a cavity (the same limit as the segmentation's IMAT pockets)."""
SPINE_POCKET_MM = 10.0
"""A pocket this close to the spine lies around it (paraspinal), not between muscles."""


def settle_truth(codes: np.ndarray, bone_in_slab: np.ndarray, vertebra: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Correct the slice-centre structure codes where the centre alone misstates the compartment.

    * Muscle or fat at the centre with bone (cortex, cancellous bone) in another sub-slice of
      the slab is :attr:`~Structure.SLAB_BONE`: its voxel is partly bone (the blurred rings of
      articular processes that a thick slice grazes), in no compartment.
    * Visceral fat in a pocket (up to ``POCKET_MAX_MM2``) enclosed, 8-connected, by muscle
      and the spine is :attr:`~Structure.PARASPINAL_FAT` when it comes within
      ``SPINE_POCKET_MM`` of the spine (no compartment: fat around the spine, which visceral
      fat excludes -- the triangles between vertebra, psoas, quadratus lumborum and erector
      spinae), otherwise :attr:`~Structure.INTERMUSCULAR_FAT` (muscle compartment: IMAT,
      fat between muscles).

    Parameters
    ----------
    codes:
        Structure codes painted at the slice centre, ``(rows, cols)`` uint8.
    bone_in_slab:
        True where any sub-slice of the slab painted bone.
    vertebra:
        True on the vertebra's bone at the slice centre.
    pixel_mm:
        Pixel size (square pixels).

    Returns
    -------
    numpy.ndarray
        The corrected codes (a new array).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if not codes.shape == bone_in_slab.shape == vertebra.shape:
        raise ValueError(f"codes {codes.shape}, bone {bone_in_slab.shape} and vertebra {vertebra.shape} differ")
    out = codes.copy()
    out[bone_in_slab & code_lut(_SOFT)[codes]] = int(Structure.SLAB_BONE)
    vat = out == int(Structure.VAT)
    labelled, n = ndi.label(vat, structure=_EIGHT)
    if n == 0:
        return out
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    small = np.nonzero(sizes[1:] * pixel_mm**2 <= POCKET_MAX_MM2)[0] + 1
    if len(small) == 0:
        return out
    muscle = code_lut(_MUSCLE_CODES)[out]
    spine = code_lut(_SPINE)[out] | vertebra  # other bone (ribs) leaves a pocket visceral
    # The spine for "near": vertebra, canal and disc, and bone grazed by the slab beside
    # the vertebra (articular processes), not a rib crossing the wall.
    around = spine.copy()
    slab = out == int(Structure.SLAB_BONE)
    if slab.any():
        beside = np.zeros_like(slab)
        if vertebra.any():
            reach = int(np.ceil(2 * SPINE_POCKET_MM / pixel_mm))
            (rows, cols), = ndi.find_objects(vertebra.astype(np.uint8))
            beside[max(rows.start - reach, 0):rows.stop + reach, max(cols.start - reach, 0):cols.stop + reach] = True
        around &= ~slab | beside
    margin = int(np.ceil(SPINE_POCKET_MM / pixel_mm)) + 1
    boxes = ndi.find_objects(labelled)
    for i in small:
        # Each small component in its box, padded for the rim and the distance to the spine.
        rows, cols = boxes[i - 1]
        r0, c0 = max(rows.start - margin, 0), max(cols.start - margin, 0)
        window = (slice(r0, rows.stop + margin), slice(c0, cols.stop + margin))
        own = labelled[window] == i
        rim = ndi.binary_dilation(own, structure=_EIGHT) & ~own
        if not (muscle[window][rim] | spine[window][rim]).all():
            continue
        near = False
        if around[window].any():
            near = ndi.distance_transform_edt(~around[window], sampling=pixel_mm)[own].min() <= SPINE_POCKET_MM
        code = Structure.PARASPINAL_FAT if near else Structure.INTERMUSCULAR_FAT
        out[window][own] = int(code)
    return out


@dataclass(frozen=True)
class Scene:
    spine: Spine
    torso: Torso
    ribs: RibCage
    pelvis: Pelvis
    viscera: Viscera
    habitus: Habitus
    acquisition: dict
    disc_nucleus: bool = False  # discs with a darker nucleus (make_phantom's ``disc_nucleus``)


class _Painter:
    """Paints the structure map (and vertebra labels) of one slice at any z."""

    def __init__(self, scene: Scene, x_mm: np.ndarray, y_mm: np.ndarray, streaks: acq_mod.FieldBank):
        self.scene = scene
        self.canvas = SliceCanvas.for_grid(x_mm, y_mm)
        # A window round the spine where each vertebra is painted alone to record its label.
        self.c0, self.c1 = (int(v) for v in np.searchsorted(x_mm, [-120.0, 120.0]))
        ys = [v.y_centre_mm for v in scene.spine.vertebrae]
        self.r0, self.r1 = (int(v) for v in np.searchsorted(y_mm, [min(ys) - 45.0, max(ys) + 150.0]))
        self.window = SliceCanvas.for_grid(x_mm[self.c0:self.c1], y_mm[self.r0:self.r1])
        self.streaks = streaks
        fraction = 0.015 + 0.11 * scene.habitus.fat_infiltration
        self.threshold = streaks.threshold_for_fraction(fraction)
        self.bubble_threshold = streaks.threshold_for_fraction(0.07)
        self.bubble_scale = min(float(x_mm[1] - x_mm[0]) / 2.5, 1.0)  # bubbles ~2.5 mm+ across at any pixel size

    def paint(self, z: float, labels: np.ndarray | None, bodies: np.ndarray | None = None) -> np.ndarray:
        s = self.scene
        canvas = self.canvas
        canvas.clear()
        paint_table(canvas, s.torso, z)
        cavity = paint_body(canvas, s.torso, z)
        a, b_ant, _ = s.torso.core_axes(z)
        if z < s.pelvis.crest_z_mm:
            _pelvic_side_walls(canvas, s.pelvis, b_ant, z, cavity)
        paint_posterior_muscles(canvas, s.torso, z, cavity)
        paint_thorax(canvas, s.torso, z, cavity)
        paint_abdomen(canvas, s.torso, s.pelvis, s.viscera, z)
        self._stool_bubbles(z)
        paint_imat(canvas, self.streaks.smooth_in_z(self.streaks.streaks, z, 9.0), self.threshold)
        s.ribs.paint(canvas, s.torso, z)
        paint_pelvis(canvas, s.pelvis, s.spine, a, b_ant, z)
        rows, cols = slice(self.r0, self.r1), slice(self.c0, self.c1)
        vertebrae = s.spine.vertebrae
        for i, v in enumerate(vertebrae):
            below = vertebrae[i + 1] if i + 1 < len(vertebrae) else None
            lowest = (below.z_superior_mm if below is not None else v.z_inferior_mm) - 25.0
            if lowest <= z <= v.z_superior_mm + 8.0:
                self.window.clear()
                regions = np.zeros_like(self.window.image) if bodies is not None else None
                paint_vertebra(self.window, v, below, z, s.spine.y_centre_at(z), regions, s.disc_nucleus)
                painted = self.window.image > 0
                canvas.image[rows, cols][painted] = self.window.image[painted]
                if labels is not None:
                    labels[rows, cols][painted & code_lut(_BONE)[self.window.image]] = v.label
                if regions is not None:
                    bodies[rows, cols][regions > 0] = regions[regions > 0]
        paint_arms(canvas, s.torso, z, s.acquisition["arms"])
        return canvas.image


    def _stool_bubbles(self, z: float) -> None:
        """Mottle faeces with small gas bubbles (a streak field, mirrored and shifted in z, above a threshold)."""
        image = self.canvas.image
        rows, cols = np.nonzero(image == _FECES)
        if len(rows) == 0:
            return
        bank = self.streaks.streaks
        u = (z + 333.0) / 12.0
        i = int(np.floor(u))
        w = np.float32(u - i)
        # Mirrored, magnified crop of the field: uncorrelated with the IMAT streaks, bubbles a few mm across.
        r = ((image.shape[0] - 1 - rows) * self.bubble_scale).astype(np.intp)
        c = ((image.shape[1] - 1 - cols) * self.bubble_scale).astype(np.intp)
        field = (1 - w) * bank[(i + 1) % len(bank)][r, c] + w * bank[(i + 2) % len(bank)][r, c]
        field /= np.float32(np.sqrt((1 - w) ** 2 + w**2))
        gas = field > self.bubble_threshold
        image[rows[gas], cols[gas]] = _GAS


def _pelvic_side_walls(canvas: SliceCanvas, pelvis: Pelvis, b_ant: float, z: float, cavity: np.ndarray) -> None:
    """Below the crests the cavity is the true pelvis; lateral to it lie iliacus and gluteal muscle."""
    f = float(np.clip((pelvis.crest_z_mm - z) / (pelvis.crest_z_mm - pelvis.head_z_mm), 0.0, 1.0))
    half = (1 - f) * 0.84 * pelvis.crest_half_width_mm + f * (pelvis.head_x_mm - pelvis.head_radius_mm - 8.0)
    x = canvas.x_mm[None, :]
    y = canvas.y_mm[:, None]
    outside = cavity & ((x / half) ** 2 + ((y + 0.1 * b_ant) / (1.3 * b_ant)) ** 2 > 1.0)
    canvas.image[outside] = int(Structure.MUSCLE)


def render_volume(scene: Scene, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HU (float32, integer-valued), structure map, vertebra labels and body/disc map at ``z_mm``."""
    acq = scene.acquisition
    h = scene.habitus
    shape = (len(z_mm), len(y_mm), len(x_mm))
    pixel = float(x_mm[1] - x_mm[0])
    bank = acq_mod.FieldBank(np.random.default_rng(rng.integers(2**32)), shape[1:], pixel, acq["kernel"])
    painter = _Painter(scene, x_mm, y_mm, bank)
    mean, amp, lo, hi = hu_tables(age_years=h.age_years, muscle_fat_infiltration=h.fat_infiltration,
                                  phase=acq["phase"], oral_contrast=acq["oral_contrast"])
    l3 = scene.spine.by_name("L3")
    sd = acq_mod.noise_sd(acq["kernel"], float(acq["slice_thickness_mm"]), scene.torso.core_axes(l3.z_inferior_mm)[0])
    acq["noise_sd_hu"] = round(sd, 1)
    thickness = float(acq["slice_thickness_mm"])
    offsets = (-thickness / 3, 0.0, thickness / 3) if thickness >= 2.0 else (0.0,)
    hu = np.empty(shape, np.float32)
    structures = np.zeros(shape, np.uint8)
    vertebrae = np.zeros(shape, np.uint8)
    bodies = np.zeros(shape, np.uint8)
    metal_code = int(Structure.METAL)
    for k, z in enumerate(z_mm):
        z = float(z)
        texture = bank.smooth_in_z(bank.texture, z, 6.0)
        clean = np.zeros(shape[1:], np.float32)
        metal = None
        bone_in_slab = np.zeros(shape[1:], bool)
        for offset in offsets:
            centre = offset == 0.0
            codes = painter.paint(z + offset, vertebrae[k] if centre else None, bodies[k] if centre else None)
            clean += np.clip(mean[codes] + amp[codes] * texture, lo[codes], hi[codes])
            bone_in_slab |= code_lut(_BONE)[codes]
            if offset == 0.0:
                structures[k] = codes
            if acq["metal"]:
                metal = (codes == metal_code) if metal is None else metal | (codes == metal_code)
        clean /= np.float32(len(offsets))
        structures[k] = settle_truth(structures[k], bone_in_slab, vertebrae[k] > 0, pixel)
        img = acq_mod.apply_kernel(clean, acq["kernel"], pixel)
        img += np.float32(sd) * bank.noise_slice()
        if metal is not None:
            streaks = acq_mod.metal_streaks(metal, x_mm, y_mm, float(k) * 0.37)
            if streaks is not None:
                img += streaks
        hu[k] = img
    np.clip(hu, -1024.0, 3071.0, out=hu)
    np.round(hu, out=hu)
    return hu, structures, vertebrae, bodies
