"""Painting primitives for one axial slice of the structure map.

Coordinates are patient LPS millimetres: ``x`` grows along columns (right -> left), ``y``
along rows (anterior -> posterior), as in :mod:`l3node.analysis.volume`. Shapes are painted
inside their bounding box only, which keeps a 512x512 slice at a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

N_ANGLES = 720


@lru_cache(maxsize=256)
def code_lut(codes: tuple[int, ...]) -> np.ndarray:
    """Boolean look-up table: True for the codes a shape may paint over (faster than np.isin)."""
    lut = np.zeros(256, bool)
    lut[list(codes)] = True
    return lut


@dataclass
class SliceCanvas:
    """A uint8 structure image plus the pixel geometry needed to paint on it."""

    image: np.ndarray  # (rows, cols) uint8 structure codes
    x_mm: np.ndarray  # column centre x (mm), float32[cols]
    y_mm: np.ndarray  # row centre y (mm), float32[rows]
    radius_mm: np.ndarray  # distance from (0, 0), float32[rows, cols]
    angle_bin: np.ndarray  # int16[rows, cols] index into N_ANGLES bins, 0 = anterior, increasing to patient left

    @classmethod
    def for_grid(cls, x_mm: np.ndarray, y_mm: np.ndarray) -> "SliceCanvas":
        yy, xx = np.meshgrid(y_mm, x_mm, indexing="ij")
        radius = np.hypot(xx, yy).astype(np.float32)
        angle = np.arctan2(xx, -yy)  # 0 anterior, +pi/2 patient left, pi posterior
        bins = np.round((angle % (2 * np.pi)) / (2 * np.pi) * N_ANGLES).astype(np.int16) % N_ANGLES
        return cls(np.zeros(yy.shape, np.uint8), x_mm.astype(np.float32), y_mm.astype(np.float32), radius, bins)

    def clear(self) -> None:
        self.image[...] = 0

    def window(self, cx: float, cy: float, half_x: float, half_y: float):
        """Row and column slices of the box ``cx ± half_x``, ``cy ± half_y`` (mm); None if empty."""
        c0 = int(np.searchsorted(self.x_mm, cx - half_x))
        c1 = int(np.searchsorted(self.x_mm, cx + half_x))
        r0 = int(np.searchsorted(self.y_mm, cy - half_y))
        r1 = int(np.searchsorted(self.y_mm, cy + half_y))
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse_mask(self, cx: float, cy: float, a: float, b: float, angle_rad: float = 0.0):
        """Window and boolean mask of an ellipse (semi-axes ``a`` along x, ``b`` along y, rotated)."""
        if a <= 0 or b <= 0:
            return None
        half = max(a, b)
        window = self.window(cx, cy, half, half) if angle_rad else self.window(cx, cy, a, b)
        if window is None:
            return None
        dx = self.x_mm[window[1]][None, :] - cx
        dy = self.y_mm[window[0]][:, None] - cy
        if angle_rad:
            c, s = np.cos(angle_rad), np.sin(angle_rad)
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        return window, (dx / a) ** 2 + (dy / b) ** 2 <= 1.0

    def ellipse(self, code: int, cx: float, cy: float, a: float, b: float, angle_rad: float = 0.0,
                only: tuple[int, ...] | None = None) -> None:
        """Paint an ellipse with ``code``; with ``only``, paint over those codes only."""
        found = self.ellipse_mask(cx, cy, a, b, angle_rad)
        if found is None:
            return
        window, mask = found
        sub = self.image[window]
        if only is not None:
            mask &= code_lut(tuple(only))[sub]
        sub[mask] = code

    def rectangle(self, code: int, x0: float, x1: float, y0: float, y1: float,
                  only: tuple[int, ...] | None = None) -> None:
        window = self.window((x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2)
        if window is None:
            return
        sub = self.image[window]
        if only is None:
            sub[...] = code
        else:
            sub[code_lut(tuple(only))[sub]] = code

    def capsule(self, code: int, p0: tuple[float, float], p1: tuple[float, float], radius: float,
                only: tuple[int, ...] | None = None) -> None:
        """Paint a thick segment (stadium) from ``p0`` to ``p1``."""
        (x0, y0), (x1, y1) = p0, p1
        window = self.window((x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2 + radius, abs(y1 - y0) / 2 + radius)
        if window is None:
            return
        px = self.x_mm[window[1]][None, :] - x0
        py = self.y_mm[window[0]][:, None] - y0
        vx, vy = x1 - x0, y1 - y0
        length2 = vx * vx + vy * vy
        t = np.clip((px * vx + py * vy) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        mask = (px - t * vx) ** 2 + (py - t * vy) ** 2 <= radius * radius
        sub = self.image[window]
        if only is not None:
            mask &= code_lut(tuple(only))[sub]
        sub[mask] = code

    def splat(self, code: int, xs: np.ndarray, ys: np.ndarray, radii: np.ndarray) -> None:
        """Paint many small discs at once (points ``xs``, ``ys`` in mm, radii in mm)."""
        keep = radii > 0
        if not np.any(keep):
            return
        xs, ys, radii = xs[keep], ys[keep], radii[keep]
        dx = float(self.x_mm[1] - self.x_mm[0])
        dy = float(self.y_mm[1] - self.y_mm[0])
        cols = (xs - self.x_mm[0]) / dx
        rows = (ys - self.y_mm[0]) / dy
        reach = int(np.ceil(radii.max() / min(dx, dy))) + 1
        off = np.arange(-reach, reach + 1)
        oi, oj = (v.ravel() for v in np.meshgrid(off, off, indexing="ij"))
        ri = np.round(rows)[:, None] + oi[None, :]
        cj = np.round(cols)[:, None] + oj[None, :]
        inside = ((ri - rows[:, None]) * dy) ** 2 + ((cj - cols[:, None]) * dx) ** 2 <= (radii**2)[:, None]
        inside &= (ri >= 0) & (ri < self.image.shape[0]) & (cj >= 0) & (cj < self.image.shape[1])
        self.image[ri[inside].astype(np.intp), cj[inside].astype(np.intp)] = code

    def polar_inside(self, radius_by_angle: np.ndarray) -> np.ndarray:
        """Boolean image of pixels inside a star-shaped outline ``r < R(angle)`` about (0, 0)."""
        return self.radius_mm < radius_by_angle.astype(np.float32)[self.angle_bin]


def angles() -> np.ndarray:
    """Bin centre angles (rad): 0 anterior, pi/2 patient left, pi posterior, 3pi/2 right."""
    return np.arange(N_ANGLES) * (2 * np.pi / N_ANGLES)
