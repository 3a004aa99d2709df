"""Train the tissue U-Net (:class:`~l3node.analysis.models.TissueUNet`) on axial slices.

Slices are resampled to the net's pixel size (2 mm) once, then each step takes a
``crop_px`` square around the body centre with random jitter, a random left-right flip and
an intensity gain. Each slice also has a coarse copy, as a reconstruction with 2.5-3.6 mm
pixels would show it (:func:`coarse_copy`), used for :data:`COARSE_FRACTION` of the steps:
the phantoms are made at 1.4-2 mm, and a net that never saw a coarser image took real 3 mm
organs for muscle. Loss: cross-entropy + soft Dice over the four tissues (IMAT is small;
Dice keeps it from being ignored). Optimiser: AdamW with a one-cycle learning rate; seeded.

Validation runs the same path as inference (:class:`~l3node.analysis.neural.TissueNet`):
whole slice at 2 mm, logits upsampled back to the slice's own pixel grid, Dice per tissue
against the native-resolution truth.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from l3node.analysis.models import TissueUNet
from l3node.analysis.neural import SEG_PREPROCESS, logits_to_slice, seg_input
from l3node.analysis.tissues import Tissue
from l3node.logs import get_logger

log = get_logger(__name__)

N_CLASSES = 1 + len(Tissue)
COARSE_PIXEL_MM = (2.5, 3.6)
"""Range of the pixel size of the coarse copy of each training slice."""
COARSE_FRACTION = 0.4
"""Share of training steps that see a slice's coarse copy instead of the slice."""


def coarse_copy(hu: np.ndarray, pixel_mm: tuple[float, float], coarse_mm: float) -> np.ndarray:
    """``hu`` as a reconstruction with ``coarse_mm`` square pixels would show it (same field of view).

    Each coarse pixel averages what it covers (Gaussian pre-filter of the size ratio, then linear
    resampling); the result is on the coarse grid.
    """
    ratio = np.array([coarse_mm / pixel_mm[0], coarse_mm / pixel_mm[1]])
    smoothed = ndimage.gaussian_filter(hu.astype(np.float32), sigma=0.42 * np.maximum(ratio, 1.0), mode="nearest")
    return ndimage.zoom(smoothed, 1.0 / ratio, order=1, mode="nearest", grid_mode=True)


def _fit(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` cropped or edge-padded at the bottom and right to ``shape``."""
    x = x[:, :shape[0], :shape[1]]
    return np.pad(x, ((0, 0), (0, shape[0] - x.shape[1]), (0, shape[1] - x.shape[2])), mode="edge")


def _resampled(sample: dict[str, Any], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each slice of a sample as (input, coarse input, labels) at the net's pixel size.

    Inputs are ``(C, h, w)``, labels ``(h, w)``; the coarse input is :func:`coarse_copy` at a
    random pixel size in :data:`COARSE_PIXEL_MM`, brought back to the same grid.
    """
    pixel = tuple(float(v) for v in sample["seg_pixel_mm"])
    target = [float(v) for v in SEG_PREPROCESS["input_spacing_mm"]]
    zoom = (pixel[0] / target[0], pixel[1] / target[1])
    out = []
    for hu, labels in zip(sample["seg_hu"], sample["seg_labels"]):
        x = seg_input(hu, pixel, SEG_PREPROCESS)
        y = ndimage.zoom(labels, zoom, order=0, mode="nearest", grid_mode=True)[:x.shape[1], :x.shape[2]]
        coarse_mm = float(rng.uniform(*COARSE_PIXEL_MM))
        coarse = seg_input(coarse_copy(hu, pixel, coarse_mm), (coarse_mm, coarse_mm), SEG_PREPROCESS)
        out.append((x, _fit(coarse, y.shape), y))
    return out


def _crop(x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` square centred on the body (HU > -500 in the wide window) with jitter."""
    body = x[-1] > 0.25
    rows, cols = np.nonzero(body) if body.any() else (np.array([x.shape[1] // 2]), np.array([x.shape[2] // 2]))
    cy, cx = int(rows.mean()), int(cols.mean())
    if rng is not None:
        cy += int(rng.integers(-16, 17))
        cx += int(rng.integers(-16, 17))
    pad = size
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), constant_values=0.0)
    yp = np.pad(y, ((pad, pad), (pad, pad)))
    top, left = cy + pad - size // 2, cx + pad - size // 2
    return xp[:, top:top + size, left:left + size], yp[top:top + size, left:left + size]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, N_CLASSES).permute(0, 3, 1, 2).float()[:, 1:]
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1 - dice).mean()


def dice_per_tissue(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    """Dice of each tissue (None when absent from both)."""
    out: dict[str, float | None] = {}
    for t in Tissue:
        p, g = predicted == t, truth == t
        total = int(p.sum() + g.sum())
        out[t.key] = None if total == 0 else round(2.0 * float((p & g).sum()) / total, 4)
    return out


def predict_slice(model: TissueUNet, hu: np.ndarray, pixel_mm: tuple[float, float], device: torch.device) -> np.ndarray:
    """The inference path of :class:`~l3node.analysis.neural.TissueNet` for a bare model."""
    x = seg_input(hu, pixel_mm, SEG_PREPROCESS)
    _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, (-h) % model.stride), (0, (-w) % model.stride)), mode="edge")
    with torch.inference_mode():
        logits = model(torch.from_numpy(padded)[None].to(device))[0].float().cpu().numpy()
    return logits_to_slice(logits[:, :h, :w], hu.shape).argmax(axis=0).astype(np.uint8)


def evaluate(model: TissueUNet, samples: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Mean Dice per tissue over every validation slice, over the L3 slices alone (index 0), and
    over every slice's :func:`coarse_copy` at 3 mm pixels (truth resampled to its grid)."""
    model.eval()
    every: dict[str, list[float]] = {t.key: [] for t in Tissue}
    at_l3: dict[str, list[float]] = {t.key: [] for t in Tissue}
    coarse_3mm: dict[str, list[float]] = {t.key: [] for t in Tissue}

    def add(scores: dict[str, float | None], *into: dict[str, list[float]]) -> None:
        for key, value in scores.items():
            if value is not None:
                for d in into:
                    d[key].append(value)

    for s in samples:
        pixel = tuple(float(v) for v in s["seg_pixel_mm"])
        for i, (hu, truth) in enumerate(zip(s["seg_hu"], s["seg_labels"])):
            scores = dice_per_tissue(predict_slice(model, hu.astype(np.float32), pixel, device), truth)
            add(scores, every, *([at_l3] if i == 0 and s.get("source") == "phantom" else []))
            coarse = coarse_copy(hu, pixel, 3.0)
            zoom = (coarse.shape[0] / truth.shape[0], coarse.shape[1] / truth.shape[1])
            coarse_truth = ndimage.zoom(truth, zoom, order=0, mode="nearest", grid_mode=True)
            add(dice_per_tissue(predict_slice(model, coarse, (3.0, 3.0), device), coarse_truth), coarse_3mm)

    def mean(d: dict[str, list[float]]) -> dict[str, float | None]:
        return {k: (round(float(np.mean(v)), 4) if v else None) for k, v in d.items()}

    return {"dice_all_slices": mean(every), "dice_l3_slice": mean(at_l3),
            "dice_all_slices_at_3mm": mean(coarse_3mm),
            "n_slices": int(sum(len(s["seg_hu"]) for s in samples))}


def train_seg(train: list[dict[str, Any]], val: list[dict[str, Any]], *, epochs: int, device: torch.device,
              seed: int = 0, batch_size: int = 8, lr: float = 3e-3, crop_px: int = 160,
              architecture: dict[str, Any] | None = None) -> tuple[TissueUNet, dict[str, Any]]:
    """Train from samples with ``seg_hu``/``seg_labels``/``seg_pixel_mm``; returns the net and a history.

    Raises
    ------
    ValueError
        If ``train`` holds no slice.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    slices = [triple for s in train for triple in _resampled(s, rng)]
    if not slices:
        raise ValueError("no training slices")
    arch = architecture or {}
    model = TissueUNet(len(SEG_PREPROCESS["intensity_window_hu"]), N_CLASSES,
                       tuple(arch.get("channels", (12, 24, 48, 64)))).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(slices) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    history: dict[str, Any] = {"epochs": [], "n_train_slices": len(slices)}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        losses = []
        order = rng.permutation(len(slices))
        for b in range(0, len(order), batch_size):
            xs, ys = [], []
            for i in order[b:b + batch_size]:
                fine, coarse, labels = slices[i]
                x, y = _crop(coarse if rng.random() < COARSE_FRACTION else fine, labels, crop_px, rng)
                if rng.random() < 0.5:
                    x, y = x[:, :, ::-1], y[:, ::-1]
                xs.append(x * np.float32(rng.uniform(0.95, 1.05)))
                ys.append(y)
            x_t = torch.from_numpy(np.ascontiguousarray(np.stack(xs))).to(device)
            y_t = torch.from_numpy(np.ascontiguousarray(np.stack(ys)).astype(np.int64)).to(device)
            loss = _loss(model(x_t), y_t)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 4),
                 "elapsed_s": round(time.perf_counter() - t0, 1)}
        history["epochs"].append(entry)
        log.info("train_seg_epoch", **entry)
    history["validation"] = evaluate(model, val, device) if val else None
    history["train_time_s"] = round(time.perf_counter() - t0, 1)
    return model, history
