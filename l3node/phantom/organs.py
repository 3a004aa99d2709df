"""Viscera inside the body wall: lungs and heart above the diaphragm; liver, spleen, stomach,
pancreas, kidneys, aorta, IVC, colon, small bowel and bladder below it.

Organs are painted only over VAT (the cavity fill), so the wall, the muscles and the skeleton
painted before them are never cut; what VAT remains after the organs is the visceral fat.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from l3node.phantom.anatomy import sacrum_shape
from l3node.phantom.body import Torso
from l3node.phantom.canvas import SliceCanvas, code_lut
from l3node.phantom.materials import Structure
from l3node.phantom.pelvis import Pelvis

V = int(Structure.VAT)
_BOWEL = (V, int(Structure.BOWEL_WALL), int(Structure.BOWEL_FLUID), int(Structure.BOWEL_GAS))
_CONTENT = (int(Structure.BOWEL_FLUID), int(Structure.FECES), int(Structure.BOWEL_GAS))
BOWEL_WALL_MM = 2.5
"""Thickness of the bowel wall (mucosa to serosa) around every loop's content."""


@dataclass(frozen=True)
class Viscera:
    loops: np.ndarray  # (n, 8): x, y, z, radius, z half-length, gas fraction, aspect, angle
    liver_bottom_z_mm: float
    kidney_z_mm: tuple[float, float]  # centre z of right, left kidney
    aorta_radius_mm: float
    bifurcation_z_mm: float


def build_viscera(torso: Torso, pelvis: Pelvis, rng: np.random.Generator) -> Viscera:
    spine = torso.spine
    l1, l2, l4 = spine.by_name("L1"), spine.by_name("L2"), spine.by_name("L4")
    z_lo, z_hi = pelvis.head_z_mm + 35.0, l1.z_inferior_mm
    n = 130
    z = rng.uniform(z_lo, z_hi, n)
    a = np.array([torso.core_axes(v)[0] for v in z])
    b = np.array([torso.core_axes(v)[1] for v in z])
    x = rng.uniform(-0.6, 0.6, n) * a
    y = rng.uniform(-0.85, 0.1, n) * b
    radius = rng.uniform(9.0, 17.0, n)
    half = rng.uniform(12.0, 35.0, n)
    gas = np.where(rng.random(n) < 0.3, rng.uniform(0.1, 0.5, n), 0.0)
    aspect = rng.uniform(0.55, 1.0, n)
    angle = rng.uniform(0.0, np.pi, n)
    loops = np.stack([x, y, z, radius, half, gas, aspect, angle], axis=1)
    liver_bottom = (l2.z_inferior_mm + l2.z_superior_mm) / 2 - rng.uniform(0.0, 35.0)
    aorta = 9.5 + 0.04 * max(torso.habitus.age_years - 40.0, 0.0) + (1.0 if torso.habitus.sex == "M" else 0.0)
    return Viscera(loops, liver_bottom, (l1.z_inferior_mm - 15.0, l1.z_inferior_mm), aorta,
                   (l4.z_inferior_mm + l4.z_superior_mm) / 2)


def _profile(z: float, bottom: float, top: float) -> float:
    """0..1 size factor of an organ spanning [bottom, top] (rounded ends)."""
    if not bottom < z < top:
        return 0.0
    u = (z - bottom) / (top - bottom)
    return float(np.sqrt(np.sin(np.pi * u)))


def _gas_level(canvas: SliceCanvas, cx: float, cy: float, r: float, fraction: float, prone: bool) -> None:
    """Gas rises to the non-dependent side (anterior supine, posterior prone)."""
    if fraction <= 0:
        return
    found = canvas.ellipse_mask(cx, cy, r, r)
    if found is None:
        return
    window, mask = found
    level = r * (1.0 - 2.0 * fraction)
    dy = canvas.y_mm[window[0]][:, None] - cy
    mask &= (dy > level) if prone else (dy < -level)
    sub = canvas.image[window]
    mask &= code_lut((int(Structure.BOWEL_FLUID), int(Structure.FECES)))[sub]
    sub[mask] = int(Structure.BOWEL_GAS)


def _tube(canvas: SliceCanvas, x: float, y: float, r: float, content: int, gas: float, prone: bool,
          aspect: float = 1.0, angle: float = 0.0) -> None:
    wall = int(Structure.BOWEL_WALL)
    canvas.ellipse(wall, x, y, r, r * aspect, angle, only=_BOWEL)
    canvas.ellipse(content, x, y, r - BOWEL_WALL_MM, r * aspect - BOWEL_WALL_MM, angle, only=(wall,))
    half = max(r, r * aspect)  # the rotated ellipse lies within this square
    _keep_wall_around_content(canvas, x, y, half, half, wall, BOWEL_WALL_MM)
    _gas_level(canvas, x, y, min(r, r * aspect) - BOWEL_WALL_MM, gas, prone)


def _keep_wall_around_content(canvas: SliceCanvas, x: float, y: float, half_x: float, half_y: float,
                              wall: int, thickness_mm: float) -> None:
    """A loop (or the stomach) pressed on muscle, an organ or bone is cut where they are (it is
    painted over VAT only); its wall still goes all round its content: within the box
    ``x ± half_x``, ``y ± half_y`` (mm) that holds the loop, content nearer than ``thickness_mm``
    to anything but bowel and visceral fat becomes ``wall``."""
    window = canvas.window(x, y, half_x, half_y)
    if window is None:
        return
    sub = canvas.image[window]
    other = ~code_lut(_BOWEL + (int(Structure.FECES), int(Structure.STOMACH_WALL)))[sub]
    contents = code_lut(_CONTENT)[sub]
    if not other.any() or not contents.any():
        return
    spacing = (float(abs(canvas.y_mm[1] - canvas.y_mm[0])), float(abs(canvas.x_mm[1] - canvas.x_mm[0])))
    # At least one pixel of wall where the pixels are coarser than the wall.
    near = ndimage.distance_transform_edt(~other, sampling=spacing) < thickness_mm
    near |= ndimage.binary_dilation(other, structure=np.ones((3, 3), bool))
    sub[near & contents] = wall


def paint_thorax(canvas: SliceCanvas, torso: Torso, z: float, cavity: np.ndarray) -> None:
    """Lungs above the diaphragm (dome highest in front, recesses low at the back) and heart."""
    a, b_ant, b_post = torso.core_axes(z)
    dome = torso.diaphragm_z_mm
    if z < dome - 70.0:
        return
    x = canvas.x_mm[None, :]
    y = canvas.y_mm[:, None]
    surface = dome - 18.0 * (x / a) ** 2 - 55.0 * np.clip(y / b_post, 0.0, 1.0) ** 1.5 + np.where(x < 0, 8.0, 0.0)
    lung = cavity & (z > surface)
    canvas.image[lung] = int(Structure.LUNG)
    spine_y = torso.spine.y_centre_at(z)
    hd = torso.spine.half_depth_at(z)
    heart = _profile(z, dome - 25.0, torso.spine.by_name("T5").z_superior_mm)
    if heart > 0:
        canvas.ellipse(int(Structure.THORACIC_FAT), 0.0, (spine_y - b_ant) / 2, 28.0, (spine_y + b_ant) / 2,
                       only=(int(Structure.LUNG), V))
        canvas.ellipse(int(Structure.THORACIC_FAT), 0.15 * a, -0.3 * b_ant, 0.46 * a * heart, 0.5 * b_ant * heart,
                       only=(int(Structure.LUNG), V))
        canvas.ellipse(int(Structure.HEART), 0.15 * a, -0.3 * b_ant, 0.42 * a * heart, 0.45 * b_ant * heart,
                       only=(int(Structure.THORACIC_FAT),))
    if z > dome:
        canvas.ellipse(int(Structure.AORTA), 22.0, spine_y - 0.2 * hd, 12.0, 12.0)


def paint_abdomen(canvas: SliceCanvas, torso: Torso, pelvis: Pelvis, viscera: Viscera, z: float) -> None:
    """Solid organs, vessels, colon, small bowel and bladder at slice ``z``."""
    spine = torso.spine
    a, b_ant, b_post = torso.core_axes(z)
    y_c, hw, hd = spine.y_centre_at(z), spine.half_width_at(z), spine.half_depth_at(z)
    prone = torso.prone
    dome = torso.diaphragm_z_mm
    g = _profile(z, viscera.liver_bottom_z_mm, dome + 8.0)
    if g > 0:
        canvas.ellipse(int(Structure.LIVER), -0.38 * a, 0.05 * b_post - 0.1 * b_ant, 0.55 * a * g, 0.78 * b_ant * g,
                       -0.3, only=(V,))
        left = _profile(z, (viscera.liver_bottom_z_mm + dome) / 2, dome + 4.0)
        canvas.ellipse(int(Structure.LIVER), -0.05 * a, -0.55 * b_ant, 0.4 * a * left, 0.3 * b_ant * left, only=(V,))
    t12 = spine.by_name("T12")
    s = _profile(z, t12.z_inferior_mm - 15.0, dome - 5.0)
    if s > 0:
        canvas.ellipse(int(Structure.SPLEEN), 0.6 * a, 0.4 * b_post, 0.22 * a * s, 0.28 * b_post * s, 0.6, only=(V,))
    st = _profile(z, spine.by_name("L1").z_inferior_mm, dome)
    if st > 0:
        cx, cy, r = 0.28 * a, -0.35 * b_ant, 0.3 * b_ant * st + 6.0
        canvas.ellipse(int(Structure.STOMACH_WALL), cx, cy, r * 1.2, r, only=(V,))
        canvas.ellipse(int(Structure.BOWEL_FLUID), cx, cy, r * 1.2 - 4.0, r - 4.0,
                       only=(int(Structure.STOMACH_WALL),))
        _keep_wall_around_content(canvas, cx, cy, r * 1.2, r, int(Structure.STOMACH_WALL), 4.0)
        _gas_level(canvas, cx, cy, r - 4.0, 0.35, prone)
    l1 = spine.by_name("L1")
    if l1.z_inferior_mm - 15.0 < z < l1.z_superior_mm + 10.0:
        canvas.capsule(int(Structure.PANCREAS), (-25.0, y_c - hd - 28.0), (0.45 * a, y_c - hd - 5.0), 9.0, only=(V,))
    for side, kz in zip((-1, 1), viscera.kidney_z_mm):
        k = _profile(z, kz - 55.0, kz + 55.0)
        if k > 0:
            kx, ky = side * (hw + 48.0), y_c + 22.0
            canvas.ellipse(int(Structure.KIDNEY_CORTEX), kx, ky, 30.0 * k, 22.0 * k, side * 0.55, only=(V,))
            canvas.ellipse(int(Structure.KIDNEY_MEDULLA), kx, ky, 19.0 * k, 13.0 * k, side * 0.55,
                           only=(int(Structure.KIDNEY_CORTEX),))
    _paint_vessels(canvas, torso, pelvis, viscera, z, y_c, hd)
    if pelvis.head_z_mm - 25.0 < z < pelvis.head_z_mm + 40.0:
        bl = _profile(z, pelvis.head_z_mm - 25.0, pelvis.head_z_mm + 40.0)
        canvas.ellipse(int(Structure.BLADDER), 0.0, -0.45 * b_ant, 48.0 * bl, 36.0 * bl, only=(V,))
    _paint_colon(canvas, torso, pelvis, z, a, b_ant)
    for x, y, lz, r, half, gas, aspect, angle in viscera.loops:
        dz = (z - lz) / half
        if abs(dz) < 1.0:
            content = int(Structure.FECES) if gas > 0.4 else int(Structure.BOWEL_FLUID)
            _tube(canvas, x, y, r * np.sqrt(1.0 - dz * dz) + BOWEL_WALL_MM, content, gas, prone, aspect, angle + 0.01 * z)


def _paint_vessels(canvas: SliceCanvas, torso: Torso, pelvis: Pelvis, viscera: Viscera, z: float,
                   y_c: float, hd: float) -> None:
    r = viscera.aorta_radius_mm
    bif = viscera.bifurcation_z_mm
    if z > torso.diaphragm_z_mm:
        return
    if z >= bif:
        canvas.ellipse(int(Structure.AORTA), 14.0, y_c - hd - r - 1.0, r, r, only=(V,))
        canvas.ellipse(int(Structure.IVC), -24.0, y_c - hd - 9.0, 14.0, 9.5, only=(V,))
    elif z > pelvis.head_z_mm - 10.0:
        spread = 14.0 + 0.45 * (bif - z)
        for side in (-1, 1):
            canvas.ellipse(int(Structure.AORTA), side * spread, y_c - hd - 8.0, 6.5, 6.5, only=(V,))
            canvas.ellipse(int(Structure.IVC), side * (spread - 6.0), y_c - hd - 1.0, 8.0, 7.0, only=(V,))


def _paint_colon(canvas: SliceCanvas, torso: Torso, pelvis: Pelvis, z: float, a: float, b_ant: float) -> None:
    spine = torso.spine
    prone = torso.prone
    feces = int(Structure.FECES)
    top = spine.by_name("L1").z_superior_mm
    if pelvis.crest_z_mm - 40.0 < z < top:
        _tube(canvas, -0.6 * a, -0.05 * b_ant, 22.0, feces, 0.4, prone)
    if pelvis.crest_z_mm - 20.0 < z < spine.by_name("T12").z_superior_mm:
        _tube(canvas, 0.66 * a, 0.05 * b_ant, 15.0, feces, 0.6, prone)
    zt = spine.by_name("L2").z_superior_mm
    if abs(z - zt) < 16.0:
        # Transverse colon: a gas-filled capsule under the anterior wall.
        r = float(np.sqrt(16.0**2 - (z - zt) ** 2))
        ends = (-0.55 * a, -0.62 * b_ant), (0.55 * a, -0.55 * b_ant)
        canvas.capsule(int(Structure.BOWEL_WALL), *ends, r, only=_BOWEL)
        if r > 3.0:
            canvas.capsule(int(Structure.BOWEL_GAS), *ends, r - BOWEL_WALL_MM, only=(int(Structure.BOWEL_WALL),))
            _keep_wall_around_content(canvas, 0.0, -0.585 * b_ant, 0.55 * a + r, 0.035 * b_ant + r,
                                      int(Structure.BOWEL_WALL), BOWEL_WALL_MM)
    sac = spine.sacrum
    if pelvis.head_z_mm - 40.0 < z < (sac.z_inferior_mm + sac.z_superior_mm) / 2:
        shape = sacrum_shape(sac, z)
        y = (shape[0] - shape[2] - 20.0) if shape is not None else sac.y_centre_mm + 30.0
        _tube(canvas, 0.0, y, 16.0, feces, 0.3, prone)
