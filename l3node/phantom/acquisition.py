"""Acquisition: protocol choices, the voxel grid, scanner blur, texture and noise, metal streaks.

Noise is stationary CT-like noise with a noise-power spectrum shaped by the reconstruction
kernel (smooth kernels: correlated, low-frequency grain; sharp: fine grain, higher SD). To
stay fast, a small bank of noise fields is made once per phantom and each slice takes a
shifted, flipped crop of one of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

SCAN_RANGES = ("abdomen_pelvis", "chest_abdomen_pelvis", "chest_only", "l3_edge")
POSITIONS = ("HFS", "FFS", "HFP", "FFP")
KERNELS = ("smooth", "standard", "sharp")
PHASES = ("noncontrast", "arterial", "portal")
ARMS = ("down", "up", "none")

_KERNEL = {
    # noise SD (HU) at 5 mm for an average body, NPS cut-off (cycles/mm), blur sigma (mm), edge gain
    "smooth": (11.0, 0.28, 0.8, 0.0),
    "standard": (15.0, 0.45, 0.6, 0.0),
    "sharp": (24.0, 0.85, 0.4, 0.6),
}
_KERNEL_NAMES = {"smooth": "B30f", "standard": "B40f", "sharp": "B70f"}

DEFAULTS: dict[str, Any] = {
    "matrix": None, "pixel_mm": None, "slice_thickness_mm": None, "spacing_mm": None,
    "scan_range": None, "position": None, "kernel": None, "phase": None, "arms": None,
    "metal": None, "gantry_tilt_deg": None, "oral_contrast": None, "kvp": None,
}


def random_acquisition(rng: np.random.Generator) -> dict[str, Any]:
    """Draw a clinically plausible protocol (matrix 512 mostly, 0.625-5 mm slices, ...).

    Gantry tilt is never drawn (0); ask for it explicitly. Every option is drawn whether or
    not the caller gives it, so giving one option does not change the others.
    """
    thickness = float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0],
                                 p=[0.08, 0.14, 0.1, 0.1, 0.1, 0.12, 0.16, 0.2]))
    overlap = bool(rng.random() < 0.2) and thickness >= 1.0
    return {
        "matrix": 512 if rng.random() < 0.85 else 256,
        "pixel_mm": None,  # chosen to fit the body (field of view) unless given
        "slice_thickness_mm": thickness,
        "spacing_mm": round(thickness * (0.8 if overlap else 1.0), 3),
        "scan_range": str(rng.choice(SCAN_RANGES, p=[0.6, 0.25, 0.08, 0.07])),
        "position": str(rng.choice(POSITIONS, p=[0.82, 0.1, 0.06, 0.02])),
        "kernel": str(rng.choice(KERNELS, p=[0.3, 0.5, 0.2])),
        "phase": str(rng.choice(PHASES, p=[0.35, 0.15, 0.5])),
        "arms": str(rng.choice(ARMS, p=[0.2, 0.75, 0.05])),
        "metal": bool(rng.random() < 0.06),
        "gantry_tilt_deg": 0.0,  # never random: a tilted series is rejected downstream
        "oral_contrast": bool(rng.random() < 0.25),
        "kvp": float(rng.choice([100.0, 120.0, 120.0, 140.0])),
    }


def resolve_acquisition(options: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Random protocol overridden by the caller's options; validates choices.

    Raises
    ------
    ValueError
        For an unknown option or an invalid value.
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown phantom option(s): {', '.join(sorted(unknown))}")
    acq = random_acquisition(rng)
    acq.update({k: v for k, v in options.items() if v is not None})
    if "slice_thickness_mm" in options and options["slice_thickness_mm"] and not options.get("spacing_mm"):
        acq["spacing_mm"] = float(options["slice_thickness_mm"])
    for key, allowed in (("scan_range", SCAN_RANGES), ("position", POSITIONS), ("kernel", KERNELS),
                         ("phase", PHASES), ("arms", ARMS)):
        if acq[key] not in allowed:
            raise ValueError(f"{key}={acq[key]!r}; choose one of {', '.join(allowed)}")
    if int(acq["matrix"]) < 32:
        raise ValueError(f"matrix={acq['matrix']} is too small")
    if float(acq["spacing_mm"]) <= 0 or float(acq["slice_thickness_mm"]) <= 0:
        raise ValueError("slice thickness and spacing must be positive")
    acq["matrix"] = int(acq["matrix"])
    acq["metal"] = bool(acq["metal"])
    acq["oral_contrast"] = bool(acq["oral_contrast"])
    acq["convolution_kernel"] = _KERNEL_NAMES[acq["kernel"]]
    return acq


def noise_sd(kernel: str, thickness_mm: float, body_half_width_mm: float) -> float:
    """Noise SD (HU): higher for sharp kernels, thin slices and big patients."""
    base = _KERNEL[kernel][0]
    return float(np.clip(base * (5.0 / thickness_mm) ** 0.3 * (body_half_width_mm / 150.0) ** 1.2, 6.0, 40.0))


def _shaped_bank(rng: np.random.Generator, n: int, size: int, transfer: np.ndarray) -> np.ndarray:
    white = rng.standard_normal((n, size, size), dtype=np.float32)
    shaped = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(size, size)).astype(np.float32)
    shaped /= shaped.std(axis=(1, 2), keepdims=True)
    return shaped


def _radial_freq(size: int, pixel_mm: float) -> np.ndarray:
    fy = np.fft.fftfreq(size, d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(size, d=pixel_mm)[None, :]
    return np.hypot(fx, fy)


class FieldBank:
    """Random fields reused across slices: CT noise, tissue texture and muscle fat streaks."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], pixel_mm: float, kernel: str,
                 n: int = 4):
        self.shape = shape
        self.size = int(64 * np.ceil((max(shape) + 48) / 64))
        f = _radial_freq(self.size, pixel_mm)
        cut = _KERNEL[kernel][1]
        self.noise = _shaped_bank(rng, n, self.size, f * np.exp(-((f / cut) ** 2)))
        self.texture = _shaped_bank(rng, 3, self.size, np.exp(-((f * 2.5) ** 2)))
        self.streaks = _shaped_bank(rng, 3, self.size, np.exp(-((f * 2.4) ** 2)) * (f > 0.01))
        self.streak_quantiles = np.quantile(self.streaks[0], np.linspace(0.0, 1.0, 201))
        self.rng = rng

    def threshold_for_fraction(self, fraction: float) -> float:
        """Streak field value above which ``fraction`` of pixels lie."""
        return float(np.interp(1.0 - fraction, np.linspace(0.0, 1.0, 201), self.streak_quantiles))

    def _crop(self, bank: np.ndarray, index: int, dy: int, dx: int) -> np.ndarray:
        rows, cols = self.shape
        return bank[index % len(bank), dy:dy + rows, dx:dx + cols]

    def smooth_in_z(self, bank: np.ndarray, z_mm: float, period_mm: float) -> np.ndarray:
        """A field that changes smoothly with z (blend of two bank entries)."""
        u = z_mm / period_mm
        i = int(np.floor(u))
        w = np.float32(u - i)
        rows, cols = self.shape
        a = bank[i % len(bank), :rows, :cols]
        b = bank[(i + 1) % len(bank), :rows, :cols]
        mixed = (1 - w) * a + w * b
        return mixed / np.float32(np.sqrt((1 - w) ** 2 + w**2))

    def noise_slice(self) -> np.ndarray:
        rows, cols = self.shape
        index = int(self.rng.integers(len(self.noise)))
        dy = int(self.rng.integers(self.size - rows + 1))
        dx = int(self.rng.integers(self.size - cols + 1))
        crop = self._crop(self.noise, index, dy, dx)
        flip = int(self.rng.integers(4))
        if flip & 1:
            crop = crop[::-1]
        if flip & 2:
            crop = crop[:, ::-1]
        return crop


def apply_kernel(hu: np.ndarray, kernel: str, pixel_mm: float) -> np.ndarray:
    """Scanner blur (point spread) and, for sharp kernels, edge overshoot on one slice."""
    _, _, sigma_mm, gain = _KERNEL[kernel]
    sigma_px = max(sigma_mm / pixel_mm, 0.45)  # the detector and pixel footprint blur at least this
    blurred = ndimage.gaussian_filter(hu, sigma_px, mode="nearest", truncate=2.5)
    if gain:
        blurred += gain * (blurred - ndimage.gaussian_filter(blurred, 1.2 / pixel_mm, truncate=2.0))
    return blurred


def metal_streaks(metal: np.ndarray, x_mm: np.ndarray, y_mm: np.ndarray, phase: float) -> np.ndarray | None:
    """Bright and dark streaks radiating from metal in one slice (None when there is none)."""
    rows, cols = np.nonzero(metal)
    if len(rows) < 3:
        return None
    cy, cx = float(y_mm[rows].mean()), float(x_mm[cols].mean())
    strength = min(len(rows) / 50.0, 1.0)
    dy = y_mm[:, None] - cy
    dx = x_mm[None, :] - cx
    theta = np.arctan2(dy, dx)
    r = np.hypot(dx, dy)
    rays = np.cos(12.0 * theta + phase) ** 15 - 0.6 * np.cos(7.0 * theta + 2.0 * phase) ** 21
    horizontal = -np.exp(-(dy / 6.0) ** 2)  # dark band along the beam through the metal
    return (strength * (380.0 * rays + 250.0 * horizontal) * np.exp(-r / 110.0)).astype(np.float32)
