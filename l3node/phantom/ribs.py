"""Ribs, costal cartilages and sternum.

Each rib is a tube following the inside of the chest wall from its costovertebral joint,
descending as it curves forward, cut to the rib length of its vertebra (see
:mod:`l3node.phantom.variants`). Ribs are sampled once as points; a slice paints the points
whose tube it cuts, which gives the oblique elongated rib sections of real axial CT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from l3node.phantom.body import Torso
from l3node.phantom.canvas import SliceCanvas
from l3node.phantom.materials import Structure

_STEP_MM = 1.5
_HALF_HEIGHT_MM = 5.0


@dataclass(frozen=True)
class RibCage:
    """Sampled rib (and cartilage) centre lines."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    radius: np.ndarray  # horizontal tube radius (mm)
    cartilage: np.ndarray  # bool: costal cartilage instead of bone
    sternum_z: tuple[float, float]
    lengths_mm: dict[str, float]

    def paint(self, canvas: SliceCanvas, torso: Torso, z: float) -> None:
        dz = np.abs(self.z - z)
        near = dz < _HALF_HEIGHT_MM
        if np.any(near):
            frac = np.sqrt(np.clip(1.0 - (dz[near] / _HALF_HEIGHT_MM) ** 2, 0.0, 1.0))
            r = self.radius[near] * frac
            x, y, cart = self.x[near], self.y[near], self.cartilage[near]
            canvas.splat(int(Structure.CARTILAGE), x[cart], y[cart], r[cart])
            bone = ~cart
            canvas.splat(int(Structure.CORTICAL), x[bone], y[bone], r[bone])
            canvas.splat(int(Structure.CANCELLOUS), x[bone], y[bone], r[bone] - 1.3)
        if self.sternum_z[0] <= z <= self.sternum_z[1]:
            _, b_ant, _ = torso.core_axes(z)
            canvas.ellipse(int(Structure.CORTICAL), 0.0, -b_ant + 9.0, 16.0, 6.5)
            canvas.ellipse(int(Structure.CANCELLOUS), 0.0, -b_ant + 9.0, 14.0, 4.5)


def build_rib_cage(torso: Torso) -> RibCage:
    """Sample both sides of every rib named in the spine plan."""
    spine = torso.spine
    xs, ys, zs, rs, cs = [], [], [], [], []
    lengths: dict[str, float] = {}
    for v in spine.vertebrae:
        length = v.spec.rib_length_mm
        lengths[v.name] = length
        if length <= 0:
            continue
        number = int(v.name[1:]) if v.name.startswith("T") else 13
        slope = 0.18 + 0.26 * (number - 1) / 11
        z0 = v.z_inferior_mm + 0.7 * v.height_mm
        a, b_ant, b_post = torso.core_axes(z0 - 0.4 * slope * length)
        a_r = a - 14.0
        b_front = b_ant - 12.0
        b_back = v.y_centre_mm + 34.0
        phi = np.arange(0.18, np.pi - 0.1, 0.004)
        px = a_r * np.sin(phi)
        py = np.where(np.cos(phi) >= 0, b_back, b_front) * np.cos(phi)
        seg = np.hypot(np.diff(px), np.diff(py))
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        # Joint-to-angle neck: from beside the body to the start of the arc.
        jx, jy = v.half_width_mm + 6.0, v.y_centre_mm + 0.3 * v.half_depth_mm
        neck = float(np.hypot(px[0] - jx, py[0] - jy))
        n_neck = max(int(neck / _STEP_MM), 1)
        t = np.linspace(0.0, 1.0, n_neck, endpoint=False)
        rib_arc = np.arange(0.0, max(length - neck, 0.0), _STEP_MM)
        bx = np.concatenate([jx + t * (px[0] - jx), np.interp(rib_arc, arc, px)])
        by = np.concatenate([jy + t * (py[0] - jy), np.interp(rib_arc, arc, py)])
        s_along = np.concatenate([t * neck, neck + rib_arc])[: len(bx)]
        bz = z0 - slope * s_along
        radius = 3.6 if number <= 10 else 3.2 if number <= 12 else 2.8
        cart_x = cart_y = cart_z = np.empty(0)
        if number <= 10 and length - neck < arc[-1]:
            end = length - neck
            c_arc = np.arange(end, arc[-1], _STEP_MM)
            cart_x, cart_y = np.interp(c_arc, arc, px), np.interp(c_arc, arc, py)
            rise = 0.0 if number <= 6 else 0.35
            cart_z = bz[-1] + rise * (c_arc - end) if len(bz) else np.empty(0)
        for side in (-1.0, 1.0):
            xs += [side * bx, side * cart_x]
            ys += [by, cart_y]
            zs += [bz, cart_z]
            rs += [np.full(len(bx), radius), np.full(len(cart_x), 3.8)]
            cs += [np.zeros(len(bx), bool), np.ones(len(cart_x), bool)]
    sternum = (spine.by_name("T9").z_inferior_mm, spine.by_name("T2").z_superior_mm)
    return RibCage(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32),
                   np.concatenate(zs).astype(np.float32), np.concatenate(rs).astype(np.float32),
                   np.concatenate(cs), sternum, lengths)
