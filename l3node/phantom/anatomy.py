"""Skeleton of the phantom: vertebrae (body, disc, posterior elements, canal) and sacrum.

The spine is laid out once in patient z (mm, +superior) from the sacral promontory upwards;
each axial slice then paints the cross-section that its z cuts. Ribs and the pelvis live in
:mod:`l3node.phantom.ribs` and :mod:`l3node.phantom.pelvis`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from l3node.phantom.canvas import SliceCanvas
from l3node.phantom.materials import Structure
from l3node.phantom.variants import SegmentSpec

C, K, T = int(Structure.CORTICAL), int(Structure.CANCELLOUS), int(Structure.THIN_CORTEX)
_TP_LUMBAR = {1: 16.0, 2: 21.0, 3: 28.0, 4: 23.0, 5: 20.0, 6: 18.0}


@dataclass(frozen=True)
class VertebraGeometry:
    """Where one vertebra (or the sacrum) is; distances in mm."""

    label: int  # value in Phantom.vertebra_labels
    spec: SegmentSpec
    z_inferior_mm: float
    z_superior_mm: float
    half_width_mm: float  # body, along x
    half_depth_mm: float  # body, along y
    y_centre_mm: float  # body centre (LPS y)
    tp_length_mm: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def height_mm(self) -> float:
        return self.z_superior_mm - self.z_inferior_mm


@dataclass(frozen=True)
class Spine:
    """The laid-out spine, top (T1) to bottom (sacrum)."""

    vertebrae: tuple[VertebraGeometry, ...]
    sacrum_length_mm: float

    def by_name(self, name: str) -> VertebraGeometry:
        for vertebra in self.vertebrae:
            if vertebra.name == name:
                return vertebra
        raise KeyError(name)

    @property
    def sacrum(self) -> VertebraGeometry:
        return self.vertebrae[-1]

    @cached_property
    def _knots(self) -> np.ndarray:
        """Rows z (mid-body), y centre, half width, half depth; bottom to top."""
        return np.array([[(v.z_inferior_mm + v.z_superior_mm) / 2, v.y_centre_mm, v.half_width_mm, v.half_depth_mm]
                         for v in self.vertebrae[::-1]])

    def y_centre_at(self, z_mm: float) -> float:
        """Body centre y, interpolated smoothly along the spine (sacrum: its upper end)."""
        return float(np.interp(z_mm, self._knots[:, 0], self._knots[:, 1]))

    def half_width_at(self, z_mm: float) -> float:
        return float(np.interp(z_mm, self._knots[:, 0], self._knots[:, 2]))

    def half_depth_at(self, z_mm: float) -> float:
        return float(np.interp(z_mm, self._knots[:, 0], self._knots[:, 3]))


def layout_spine(segments: list[SegmentSpec], *, scale: float, promontory_z_mm: float,
                 rng: np.random.Generator) -> Spine:
    """Stack the vertebrae from the sacrum upwards with sizes for their level.

    Body heights vary +-6 % per vertebra; lumbar lordosis brings L3 forward.
    """
    laid: list[VertebraGeometry] = []
    sacrum_length = 100.0 * scale * (0.8 if any(s.name == "S1" for s in segments) else 1.0)
    z_top = promontory_z_mm
    jitter = rng.uniform(0.94, 1.06, len(segments))
    n_lumbar_like = sum(1 for s in segments if s.kind in ("lumbar", "transitional"))
    lumbar_index = 0
    for index in range(len(segments) - 1, -1, -1):
        spec = segments[index]
        label = index + 1
        if spec.kind == "sacrum":
            laid.append(VertebraGeometry(label, spec, z_top - sacrum_length, z_top, 26.0 * scale, 17.0 * scale,
                                         22.0, 0.0))
            continue
        if spec.kind == "thoracic":
            t = int(spec.name[1:]) - 1
            height = (15.5 + 7.5 * t / 11) * scale * jitter[index]
            half_width = (13.0 + 7.0 * t / 11) * scale
            half_depth = (8.5 + 6.5 * t / 11) * scale
            tp = 18.0 * scale
            y = 30.0 - 14.0 * t / 11 + 6.0 * np.sin(np.pi * t / 11)
        else:
            lumbar_index += 1
            j = n_lumbar_like - lumbar_index  # 0 = top lumbar-type vertebra
            height = (25.0 + 1.0 * min(j, 3)) * scale * jitter[index]
            half_width = (21.0 + 1.4 * min(j, 4)) * scale
            half_depth = (15.0 + 0.6 * min(j, 4)) * scale
            number = int(spec.name[1:]) if spec.name.startswith("L") else 6
            tp = _TP_LUMBAR.get(number, 18.0) * scale * spec.tp_scale
            frac = j / max(n_lumbar_like - 1, 1)
            y = 20.0 - 24.0 * np.sin(np.pi * frac) - 4.0 * frac  # lordosis: mid-lumbar most anterior
        z_inf = z_top + spec.disc_below_mm * scale
        laid.append(VertebraGeometry(label, spec, z_inf, z_inf + height, half_width, half_depth, y, tp))
        z_top = z_inf + height
    return Spine(tuple(laid[::-1]), sacrum_length)


def _bone(canvas: SliceCanvas, cx: float, cy: float, a: float, b: float, shell: float = 1.8,
          angle: float = 0.0) -> None:
    canvas.ellipse(C, cx, cy, a, b, angle)
    canvas.ellipse(K, cx, cy, a - shell, b - shell, angle)


def _bone_capsule(canvas: SliceCanvas, p0: tuple[float, float], p1: tuple[float, float], r: float,
                  shell: float = 1.4) -> None:
    canvas.capsule(C, p0, p1, r)
    if r > shell + 0.5:
        canvas.capsule(K, p0, p1, r - shell)


def canal_geometry(v: VertebraGeometry) -> tuple[float, float, float]:
    """Canal centre y and semi-axes (x, y) behind the body of ``v``."""
    lumbar = v.spec.kind != "thoracic"
    a, b = (11.0, 8.5) if lumbar else (8.0, 7.5)
    return v.y_centre_mm + v.half_depth_mm + b - 0.5, a, b


def paint_vertebra(canvas: SliceCanvas, v: VertebraGeometry, below: VertebraGeometry | None, z: float,
                   y_centre_mm: float | None = None, regions: np.ndarray | None = None,
                   nucleus: bool = False) -> None:
    """Paint the parts of vertebra ``v`` (and the disc under it) that slice ``z`` cuts.

    ``y_centre_mm`` (the spine curve at ``z``) moves the vertebra along the lordosis; it
    defaults to the vertebra's own centre. ``regions`` (same shape as the canvas), if given,
    receives 1 on the vertebral body and 2 on the disc, as TotalSegmentator's
    ``vertebral_bodies_and_discs``. ``nucleus`` paints the disc's inner part as
    :attr:`~l3node.phantom.materials.Structure.DISC_NUCLEUS` (darker than the annulus).
    """
    if v.spec.kind == "sacrum":
        paint_sacrum(canvas, v, z, regions)
        return
    if y_centre_mm is not None:
        v = dataclasses.replace(v, y_centre_mm=y_centre_mm)
    h = v.height_mm
    t = (z - v.z_inferior_mm) / h
    cy, a_c, b_c = canal_geometry(v)
    lumbar = v.spec.kind != "thoracic"
    if 0.0 <= t <= 1.0:
        at_endplate = min(z - v.z_inferior_mm, v.z_superior_mm - z) < 0.8
        waist = 1.0 - 0.06 * np.sin(np.pi * t)  # concave waist of the body
        a, b = v.half_width_mm * waist, v.half_depth_mm * waist
        canvas.ellipse(C, 0.0, v.y_centre_mm, a, b)
        canvas.ellipse(T if at_endplate else K, 0.0, v.y_centre_mm, a - 1.6, b - 1.6)
        _mark(regions, canvas, 1, v.y_centre_mm, a, b)
    elif below is not None and t < 0 and z > below.z_superior_mm and v.spec.disc_below_mm > 0:
        ref = below if below.spec.kind != "sacrum" else v
        a = (v.half_width_mm + ref.half_width_mm) / 2 + 1.5
        b = (v.half_depth_mm + ref.half_depth_mm) / 2 + 1.0
        y = v.y_centre_mm
        canvas.ellipse(int(Structure.DISC), 0.0, y, a, b)
        if nucleus:  # the nucleus pulposus: the disc's inner part, a little behind its centre
            canvas.ellipse(int(Structure.DISC_NUCLEUS), 0.0, y + 0.1 * b, a * 0.6, b * 0.6)
        _mark(regions, canvas, 2, y, a, b)
    pedicle_x = a_c + 3.5
    if 0.3 <= t <= 0.95:
        for s in (-1, 1):
            _bone_capsule(canvas, (s * pedicle_x, v.y_centre_mm + v.half_depth_mm - 4), (s * pedicle_x, cy + 2), 5.0)
    transitional = v.spec.tp_scale >= 1.4
    if 0.35 <= t <= 0.75 or (transitional and -0.4 <= t <= 0.75):
        # Transitional vertebrae: broad, tall transverse processes reaching down to the sacral ala.
        tp = v.tp_length_mm
        ty = cy + (1.0 if lumbar else 6.0)
        back = 4.0 if lumbar else 16.0
        thick = 3.8 if not transitional else 6.5
        for s in (-1, 1):
            _bone_capsule(canvas, (s * pedicle_x, ty), (s * (v.half_width_mm + tp), ty + back), thick)
    if -0.3 <= t <= 0.8:
        for s in (-1, 1):
            _bone_capsule(canvas, (s * pedicle_x, cy + 1), (s * 3.0, cy + b_c + 5.0), 3.5)
    if -0.5 <= t <= 0.55:
        length = (30.0 if lumbar else 34.0) * (1.0 + (0.4 if not lumbar else 0.15) * (0.55 - t))
        _bone_capsule(canvas, (0.0, cy + b_c + 4.0), (0.0, cy + b_c + 4.0 + length), 4.0 if lumbar else 3.2)
    if -0.3 <= t <= 0.08 or 0.92 <= t <= 1.2:
        for s in (-1, 1):
            _bone(canvas, s * (a_c + 8.0), cy + 4.0, 6.0, 7.0, 1.4)
    paint_canal(canvas, cy, a_c, b_c)


def _mark(regions: np.ndarray | None, canvas: SliceCanvas, value: int, y: float, a: float, b: float) -> None:
    if regions is None:
        return
    found = canvas.ellipse_mask(0.0, y, a, b)
    if found is not None:
        window, mask = found
        regions[window][mask] = value


def paint_canal(canvas: SliceCanvas, cy: float, a: float, b: float) -> None:
    canvas.ellipse(int(Structure.EPIDURAL_FAT), 0.0, cy, a, b)
    canvas.ellipse(int(Structure.CANAL), 0.0, cy - 0.5, a - 2.5, b - 2.0)


def sacrum_shape(v: VertebraGeometry, z: float) -> tuple[float, float, float, float] | None:
    """Sacrum centre y, body half width, half depth and alar half width at ``z`` (None outside)."""
    u = (v.z_superior_mm - z) / (v.z_superior_mm - v.z_inferior_mm)
    if not 0.0 <= u <= 1.0:
        return None
    y = v.y_centre_mm + 72.0 * u**1.25
    body_a = v.half_width_mm * (1.0 - 0.55 * u)
    body_b = v.half_depth_mm * (1.0 - 0.5 * u)
    ala = (52.0 * (v.half_width_mm / 26.0)) * max(0.0, 1.0 - 1.25 * u) ** 0.5
    return y, body_a, body_b, ala


def paint_sacrum(canvas: SliceCanvas, v: VertebraGeometry, z: float, regions: np.ndarray | None = None) -> None:
    shape = sacrum_shape(v, z)
    if shape is None:
        return
    y, body_a, body_b, ala = shape
    if v.z_superior_mm - z < 0.8:
        canvas.ellipse(C, 0.0, y, body_a, body_b)
        canvas.ellipse(T, 0.0, y, body_a - 1.6, body_b - 1.6)
        _mark(regions, canvas, 1, y, body_a, body_b)
        return
    if ala > body_a:
        _bone(canvas, 0.0, y + 6.0, ala, body_b * 0.9, 2.0)
    _bone(canvas, 0.0, y, body_a, body_b, 1.8)
    _mark(regions, canvas, 1, y, body_a, body_b)
    canal_y = y + body_b + 5.0
    canvas.ellipse(C, 0.0, canal_y + 4.0, max(body_a * 0.9, 12.0), 10.0)
    canvas.ellipse(int(Structure.EPIDURAL_FAT), 0.0, canal_y, max(body_a * 0.5, 6.0), 4.5)
    if ala > body_a:
        for s in (-1, 1):  # sacral foramina
            canvas.ellipse(int(Structure.EPIDURAL_FAT), s * (body_a + 6.0), y + 4.0, 4.0, 4.0)
