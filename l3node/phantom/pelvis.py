"""Pelvis and proximal femurs: iliac wings and crests, sacroiliac joints, acetabula, pubis,
ischium, femoral heads, necks, trochanters and shafts; an optional hip prosthesis (metal).

Positions are tied to the sacrum, not to vertebra names, so the iliac crests stay where the
pelvis is in lumbosacral and numeric variants (as in patients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l3node.phantom.anatomy import Spine, sacrum_shape
from l3node.phantom.canvas import SliceCanvas
from l3node.phantom.materials import Structure

C, K, T = int(Structure.CORTICAL), int(Structure.CANCELLOUS), int(Structure.THIN_CORTEX)
MET = int(Structure.METAL)


@dataclass(frozen=True)
class Pelvis:
    head_z_mm: float
    head_x_mm: float  # |x| of each femoral head centre
    head_y_mm: float
    head_radius_mm: float
    crest_z_mm: float  # highest point of the iliac crests
    roof_z_mm: float  # acetabular roof: bottom of the iliac wing
    crest_half_width_mm: float  # |x| of the widest point of the crests
    prosthesis_side: int  # -1 right, +1 left, 0 none

    @property
    def trochanter_half_width_mm(self) -> float:
        return self.head_x_mm + 62.0


def build_pelvis(spine: Spine, *, scale: float, female: bool, metal: bool,
                 rng: np.random.Generator) -> Pelvis:
    sacrum = spine.sacrum
    top = sacrum.z_superior_mm
    head_z = top - 108.0 * scale
    head_x = 88.0 * scale * (1.06 if female else 1.0)
    side = int(rng.choice([-1, 1])) if metal else 0
    crest_w = 126.0 * scale * (1.05 if female else 1.0) * float(rng.uniform(0.95, 1.05))
    return Pelvis(head_z, head_x, -8.0, 24.0 * scale * (0.92 if female else 1.0),
                  top + 44.0 * scale, head_z + 30.0, crest_w, side)


def _wing_points(pelvis: Pelvis, spine: Spine, b_ant: float, z: float, side: int):
    f = float(np.clip((pelvis.crest_z_mm - z) / (pelvis.crest_z_mm - pelvis.roof_z_mm), 0.0, 1.0))
    hx, hy = pelvis.head_x_mm, pelvis.head_y_mm
    shape = sacrum_shape(spine.sacrum, z)
    if shape is not None and shape[3] > shape[1]:  # sacroiliac joint beside the sacral ala
        y_s, body_a, _, ala = shape
        p = (ala + 5.0, y_s + 10.0)
    else:  # below the joint: the greater sciatic notch, then the posterior acetabulum
        sac = spine.sacrum
        y_s = sac.y_centre_mm + 30.0
        below = float(np.clip((sac.z_superior_mm - 0.45 * (sac.z_superior_mm - sac.z_inferior_mm) - z) / 40.0, 0, 1))
        p = ((1 - below) * 60.0 + below * (hx - 12.0), (1 - below) * y_s + below * (hy + 22.0))
    w = pelvis.crest_half_width_mm
    g = f**0.7
    ant = ((1 - g) * 0.86 * w + g * (hx - 4.0), (1 - g) * (-0.45 * b_ant) + g * (hy - 14.0))
    ctl = ((1 - g) * 1.12 * w + g * (hx + 16.0), (1 - g) * (0.25 * p[1]) + g * (p[1] + hy) / 2)
    u = np.linspace(0.0, 1.0, 22)[:, None]
    p0, p1, p2 = np.array([side * p[0], p[1]]), np.array([side * ctl[0], ctl[1]]), np.array([side * ant[0], ant[1]])
    points = (1 - u) ** 2 * p0 + 2 * u * (1 - u) * p1 + u**2 * p2
    uu = u.ravel()
    # Thin iliac fossa, thick posterior (sacroiliac) and anterior (spine) ends; thicker low down.
    radius = (2.0 + 5.5 * f**2) * (1.0 + 1.0 * np.clip(1 - 5 * uu, 0, 1) + 1.0 * np.clip(5 * uu - 4, 0, 1))
    return points, uu, radius


def paint_pelvis(canvas: SliceCanvas, pelvis: Pelvis, spine: Spine, a: float, b_ant: float, z: float) -> None:
    """Paint every pelvic and femoral bone that slice ``z`` cuts."""
    if pelvis.roof_z_mm - 12.0 <= z <= pelvis.crest_z_mm:
        for side in (-1, 1):
            points, u, radius = _wing_points(pelvis, spine, b_ant, z, side)
            crest = pelvis.crest_z_mm - 170.0 * (u - 0.55) ** 2 - 10.0 * u**3
            keep = z <= crest
            rim = np.clip(1.0 - (crest - z) / 8.0, 0.0, 1.0)  # the crest itself is a thick rim
            r = radius + 2.0 * rim
            for i in range(len(u) - 1):
                if keep[i] and keep[i + 1]:
                    rad = 0.5 * (r[i] + r[i + 1])
                    p0, p1 = tuple(points[i]), tuple(points[i + 1])
                    if rad < 3.0:  # thin iliac fossa: partial-volumed plate
                        canvas.capsule(T, p0, p1, rad)
                    else:
                        canvas.capsule(C, p0, p1, rad)
                        canvas.capsule(K, p0, p1, rad - 1.3)
    hz, hx, hy, hr = pelvis.head_z_mm, pelvis.head_x_mm, pelvis.head_y_mm, pelvis.head_radius_mm
    dz = z - hz
    for side in (-1, 1):
        x = side * hx
        metal = side == pelvis.prosthesis_side
        if -hr - 6.0 <= dz <= hr + 10.0:  # acetabular cup, medial and above the head
            rr = float(np.sqrt(max((hr + 8.0) ** 2 - (dz - 2.0) ** 2, 0.0)))
            if rr > 3.0:
                _bone(canvas, x - side * 7.0, hy, rr, rr, 2.0)
        if abs(dz) < hr + 1.5:
            rj = float(np.sqrt(max((hr + 1.5) ** 2 - dz**2, 0.0)))
            canvas.ellipse(int(Structure.CARTILAGE), x, hy, rj, rj)
            rh = float(np.sqrt(max(hr**2 - dz**2, 0.0)))
            if metal:
                canvas.ellipse(MET, x, hy, rj, rj)
            elif rh > 0.5:
                _bone(canvas, x, hy, rh, rh, 1.6)
        if -42.0 <= dz <= -4.0:  # neck
            f = -dz / 42.0
            _bone(canvas, x + side * 32.0 * f, hy + 4.0, 14.0, 12.0, 1.8)
            if metal:
                canvas.ellipse(MET, x + side * 32.0 * f, hy + 4.0, 6.0, 6.0)
        troch = _profile(dz, -64.0, 4.0)
        if troch > 0:  # greater trochanter
            _bone(canvas, x + side * 44.0, hy + 10.0, 17.0 * troch, 21.0 * troch, 1.5)
        if dz < -50.0:  # shaft
            canvas.ellipse(C, x + side * 32.0, hy + 6.0, 14.0, 14.0)
            canvas.ellipse(int(Structure.MARROW), x + side * 32.0, hy + 6.0, 7.5, 7.5)
            if metal and dz > -170.0:
                canvas.ellipse(MET, x + side * 32.0, hy + 6.0, 6.0, 6.0)
        ramus = _profile(dz, -24.0, 12.0)
        if ramus > 0:  # superior pubic ramus
            canvas.capsule(C, (x - side * 18.0, hy - 14.0), (side * 10.0, -0.78 * b_ant), 7.5 * ramus)
            canvas.capsule(K, (x - side * 18.0, hy - 14.0), (side * 10.0, -0.78 * b_ant), 7.5 * ramus - 1.6)
        sym = _profile(dz, -50.0, -6.0)
        if sym > 0:
            _bone(canvas, side * 10.0, -0.78 * b_ant + 4.0, 8.0 * sym, 14.0 * sym, 1.6)
        isch = _profile(dz, -80.0, -12.0)
        if isch > 0:
            _bone(canvas, x - side * 8.0, hy + 36.0, 13.0 * isch, 20.0 * isch, 1.8)


def _profile(value: float, low: float, high: float) -> float:
    if not low < value < high:
        return 0.0
    return float(np.sin(np.pi * (value - low) / (high - low)) ** 0.4)


def _bone(canvas: SliceCanvas, cx: float, cy: float, a: float, b: float, shell: float) -> None:
    canvas.ellipse(C, cx, cy, a, b)
    if a > shell and b > shell:
        canvas.ellipse(K, cx, cy, a - shell, b - shell)
